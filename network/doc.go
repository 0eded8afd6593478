// Package network gives every VM a slot: a network namespace holding the
// CNI interface (the slot's address, what users connect to) and a TAP whose
// fd QEMU gets as `-netdev tap,fd=N`. The guest side is the same in every
// VM and every fork — GuestIP/GuestPrefixLen, gateway GatewayIP (the TAP,
// with GatewayMAC), NIC GuestMAC — and the slot NATs it: SNAT of the guest
// to the slot's address on the way out, DNAT of the slot's address to the
// guest on the way in (nftables table "zygote" inside the slot). A fork
// gets a new slot, so a new address, and needs no change inside the guest.
//
// # Lifecycle
//
//	m, err := network.New(ctx, network.Config{StateDir: ...})   // writes the default conflist, checks the subnet, loads slots, starts the pool
//	m.Reconcile(ctx, liveInstanceIDs)                            // after a restart: release slots of gone instances, rebuild lost namespaces
//	s, err := m.Acquire(ctx, instanceID, network.SlotOptions{Publish: ports})
//	s, err = m.Get(instanceID)                                   // later, or after a restart (slots are loaded by New)
//	tap, err := s.OpenTAP()                                      // each boot / restore; hand to QEMU via ExtraFiles
//	st, err := m.Stats(instanceID)                               // TAP counters, guest's view
//	err = m.Release(ctx, instanceID)                             // instance delete
//	m.Close()                                                    // daemon exit: slots stay
//	network.Cleanup(ctx, cfg)                                    // `zygote serve --cleanup-network`: remove all of it
//
// QEMU gets the TAP as
//
//	-netdev tap,id=net0,fd=3 -device virtio-net-pci,netdev=net0,mac=02:5a:79:67:00:02
//
// with the OpenTAP file in cmd.ExtraFiles[0]. QEMU probes IFF_VNET_HDR on
// the fd and uses it; do not pass vnet_hdr=off.
//
// A slot belongs to its owner (an instance id) from Acquire to Release.
// The instance keeps it through standby/restore and stop/start: the TAP is
// persistent, QEMU exits and a later QEMU opens it again, so the address
// never changes while the instance exists (see README.md for why the slot
// is kept rather than re-requested from the IPAM). Delete releases it. An
// instance with networking off simply never acquires one.
//
// Acquire without published ports takes a ready slot from the pool (no CNI
// ADD on the fork/restore path); with published ports it runs CNI ADD
// itself, because portmap takes its mappings at ADD. A host port published
// by another slot or bound by a socket of the daemon's namespace is
// errdefs.ErrConflict. A second Acquire for an owner that has a slot is
// errdefs.ErrAlreadyExists. Release of an owner without a slot is a no-op.
//
// # Idempotence and crash safety
//
// Every slot has a record in StateDir/slots written before its namespace
// exists (state creating) and rewritten when it is whole (ready); the
// namespace is a bind mount under StateDir/netns, so it survives the
// daemon. Teardown is CNI DEL, then the namespace, then the record — DEL
// always before the namespace goes, or the bridge's masquerade rules leak.
// Each step is idempotent; a failure leaves a record that the next Release,
// Reconcile or start repeats. New finishes half-made slots and removes
// namespaces without a record. A failed Acquire leaves nothing behind.
//
// # Concurrency
//
// Manager methods are safe for concurrent use. One mutex guards the slot
// tables and is never held across CNI, netlink or nftables calls; an owner
// with an operation in flight is marked busy, and a second operation on it
// fails with ErrAlreadyExists (Acquire) or ErrConflict (Release). The pool
// goroutine is owned by the Manager; Close stops it and waits.
//
// # Namespaces and threads
//
// CNI plugins run as children of the daemon from the daemon's own
// namespace (libcni never runs on a switched thread) and reach the slot by
// CNI_NETNS. Work inside a slot uses netlink and nftables sockets opened in
// the slot, or a locked OS thread that switches into it and is never
// handed back to the scheduler (inNS).
//
// ConnectTestGuest is a test double for a VM: a namespace joined by a veth
// where the TAP would carry a guest. Package tests use it; the TAP path is
// what QEMU gets.
package network
