// Package agentproto is the wire format between the zygote daemon (host)
// and zygote-init, the guest agent. Both sides import it; it has no other
// zygote dependency.
//
// # Layers
//
// The transport is one virtio-serial port: inside the guest a character
// device, on the host a unix socket served by QEMU (one client at a time).
// Neither end can tell reliably when the other end changed: a guest
// restored from a snapshot resumes in the middle of a conversation with a
// host that no longer exists, and QEMU only tells the guest about a new
// host connection when the connection state it migrated differs from the
// current one. So the stream carries three layers:
//
//  1. Link frames (link.go): magic, kind, epoch, length, CRC-32C. Each
//     host connection picks a random epoch and sends FrameHello (repeated
//     every HelloRetry until answered); the guest answers FrameWelcome with
//     its Hello. A Hello with a new epoch ends the guest's previous session
//     at once, whatever state it was in. Frames of any other epoch are
//     dropped. The reader skips garbage (the tail of a frame cut by a
//     snapshot or a disconnect) by scanning for the magic and checking the
//     CRC, which covers the payload too.
//  2. A yamux session per epoch over the FrameData payloads (SessionConn):
//     streams, per-stream flow control (256 KiB windows), half-close.
//  3. On each stream, length-prefixed messages (msg.go): a JSON Request,
//     a JSON Response, and for exec the stdio messages and MsgExit.
//
// # Versioning
//
// Version is carried in HostHello and Hello. The guest refuses a session
// with another version (its Welcome carries Error); the host refuses a
// Welcome with another version. Both errors name the two versions.
package agentproto
