// Command zygote-init is PID 1 of a zygote guest: a static binary
// (CGO_ENABLED=0) that the initramfs carries as /init. All logic is in
// package guest/initd; see docs/guest.md.
//
// Build: CGO_ENABLED=0 go build -o bin/zygote-init ./cmd/zygote-init
// (next to bin/zygote, where the daemon looks for it first).
package main
