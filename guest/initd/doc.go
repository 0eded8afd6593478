// Package initd is zygote-init, the guest agent: PID 1 of every zygote
// guest (cmd/zygote-init is a thin main around Main).
//
// # What PID 1 does (Main, Linux only)
//
// Mounts proc, sysfs, devtmpfs, devpts, tmpfs on /dev/shm, /tmp and /run,
// and cgroup2; loads the kernel modules listed in the initramfs
// (agentproto.InitramfsModuleOrder) with finit_module, tolerating EEXIST;
// brings up lo; finds the virtio-serial port named agentproto.AgentPortName
// and opens it once, for both directions; then serves the host forever. It
// catches the signals the kernel would deliver to init, reaps every child,
// and powers the machine off when it cannot serve.
//
// # The workload root and network (Configure)
//
// Configure applies, in order: hostname; the network (Provisioner.Network:
// the NIC found by MAC, renamed, MTU, address, default route, resolv.conf,
// all with netlink, idempotent); the root (Provisioner.Root: root disk by
// virtio serial read-only, overlay disk read-write, overlayfs at
// agentproto.WorkloadRoot, /proc /sys /dev bound in, volumes, the agent's
// /etc/hosts, /etc/hostname, /etc/resolv.conf bound over the image's);
// then the workload, chrooted there with the user resolved in the image's
// /etc/passwd and /etc/group (workload.go). Commands resolve inside the
// root with openat2(RESOLVE_IN_ROOT). A workload that cannot start fails
// Configure with ExitCode 127/126; the agent stays unconfigured, the
// network and root stay (a retry must ask for the same root). Execs run in
// the same root with the workload's env and working dir as defaults;
// Agent.WorkloadRoot tells other operations (file copy) where guest paths
// live. zygote-init itself stays PID 1 in the initramfs. Filesystem
// modules (agentproto.InitramfsFSModules) are loaded on first use.
// OpWaitWorkload answers when the workload exits; Hello carries its status.
//
// # The Agent
//
// Agent serves the protocol of package agentproto over a Port. Its state:
// configured (once per boot), the workload, the restore count, and at most
// one session. Session rules:
//   - a Hello with a new epoch ends the current session, whatever it was
//     doing, and starts a new one; a repeated Hello of the current epoch is
//     answered with another Welcome;
//   - end of stream on the port (the host disconnected), a Bye, or the
//     multiplexer failing ends the session;
//   - ending a session SIGKILLs the process group of each of its execs;
//     the workload is not touched.
//
// Exec: each exec runs in its own process group (its own session with a
// controlling terminal in TTY mode); its stdout/stderr are forwarded until
// end of file, or until they stay silent for a second after the process
// exited (a background child holding them); then MsgExit is sent. The host
// closing the stream before MsgExit kills the process group.
//
// Processes are started with syscall.ForkExec and waited for by procTable,
// never by os/exec: as PID 1 the agent reaps every child (orphans
// included) and a second waiter would steal exit statuses.
//
// Concurrency: Run's goroutine reads the port and dispatches frames; each
// session has an accept loop and one goroutine per stream plus helpers.
// Agent.mu guards the boot state and the current session; session.mu
// guards its exec table. Neither is held across I/O. Every goroutine is
// tracked by the Agent's or the session's WaitGroup and ends when Run's
// context ends (sessions closed, processes killed, port closed).
//
// Must never: import host-side packages (it runs in the guest), use
// os/exec after Run started, or Ignore signals (children would inherit
// SIG_IGN).
package initd
