// Package guesttest gives tests in any package the assets to boot a real
// zygote guest: the cached kernel, a freshly built zygote-init and the
// initramfs made of them (Assets), and the QEMU binary (QEMU).
//
// Without a cached kernel, busybox-static or qemu, they skip with a message
// saying what to run or install, unless ZYGOTE_REQUIRE_VM_TESTS=1, which
// turns every such skip into a failure (machines that must run VM tests set
// it).
//
// zygote-init is built once per test binary (go build, CGO_ENABLED=0,
// -trimpath, so the initramfs cache key is stable) into
// <cache>/test/zygote-init, atomically.
package guesttest
