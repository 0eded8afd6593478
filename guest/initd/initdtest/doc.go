// Package initdtest runs the guest agent (initd) in the test process,
// against test doubles of the virtio-serial port and of the machine, so
// that the agent protocol can be tested without booting a VM.
//
// SocketPort is a test double of the guest end of a virtio-serial port
// whose host end is QEMU's `-chardev socket,server=on`: a unix socket that
// accepts one host at a time. FakeSystem records what the agent would have
// done to the machine (clock, RNG, hostname, kill, power) and does none of
// it. Start and Serve run an Agent until the test ends.
package initdtest
