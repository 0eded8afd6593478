// Package agent is the host's client of the guest agent (zygote-init),
// reached through the host end of the VM's virtio-serial port: a unix
// socket QEMU serves with
//
//	-device virtio-serial-pci,id=vser0
//	-chardev socket,id=agent,path=<instance>/agent.sock,server=on,wait=off
//	-device virtserialport,bus=vser0.0,chardev=agent,name=zygote.agent
//
// # Lifecycle
//
// Dial connects and returns once the agent said Hello; it waits for a
// guest that is still booting, and for QEMU to create the socket. A boot
// is configured once (Configure) when Hello().Configured is false. After a
// restore, the host Dials the new VMM's socket and calls Restored; the
// guest has already dropped whatever the previous connection left running.
// Shutdown powers the VM off; the VMM exits by itself.
//
// A workload from an image: Configure with Network (the fixed guest
// network of agentproto), Root (the root and overlay disks' serials, as the
// driver attached them), Volumes and Process. A workload that cannot
// start fails Configure with a *RemoteError whose ExitCode is 127 or 126:
// fail the run at once. WaitWorkload returns its exit status; after a
// reconnect, Hello().Workload.Exited reports an exit that happened while
// no host was connected.
//
// A Client is one connection. When it breaks (VMM exit, Close, keepalive
// failure), Done is closed, calls in flight and later calls fail with
// ErrConnectionLost, and the guest SIGKILLs the process groups of that
// connection's execs. Dial again for a new connection: QEMU serves one
// client at a time, so Close the old Client first.
//
// Errors carry errdefs classes: ErrConnectionLost is Unavailable,
// ErrAlreadyConfigured is InvalidState, ErrVersionMismatch is
// NotImplemented; RemoteError unwraps to InvalidArgument, NotFound or
// NotImplemented by the guest's code.
//
// Every method takes a context; cancelling it abandons the call (for Exec:
// kills the command). Methods are safe for concurrent use.
package agent
