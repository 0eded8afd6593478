// Package testutil holds helpers for zygote's tests: real filesystems on
// loop devices (XFS with reflink, btrfs, small ext4 images), small tmpfs
// mounts, the ext4 work disk, and skip-with-a-reason guards for tests that
// need root or a host tool.
//
// Only _test.go files import it. Every helper registers its own teardown
// with t.Cleanup (unmount, loop detach, image removal) and touches only the
// mounts and loop devices it created itself.
//
// Privileged helpers skip the test with a message that says what is missing
// and how to install it; with ZYGOTE_REQUIRE_PRIVILEGED=1 in the environment
// they fail it instead, so CI cannot go green by skipping.
//
// Mounts live under os.TempDir() in directories named
// zygote-testfs-<pid>-*; a test binary that died without cleaning up (a
// timeout panic, kill -9) leaves one behind, and the next binary that mounts
// anything sweeps mounts and loop devices whose pid is no longer alive.
package testutil
