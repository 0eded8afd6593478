// Command zygote-init is PID 1 of a zygote guest: a static binary
// (CGO_ENABLED=0) that the initramfs carries as /init. All logic is in
// package guest/initd.
package main

import "github.com/zygote/zygote/guest/initd"

func main() { initd.Main() }
