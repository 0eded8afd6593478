package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsfsMagic is statfs's f_type of a namespace file (NSFS_MAGIC).
const nsfsMagic = 0x6e736673

// createNS makes a new network namespace and pins it with a bind mount at
// path, so it outlives every process in it (the daemon restarts, slots
// stay). The namespace is made on a locked OS thread that is never handed
// back to the Go scheduler: the goroutine exits still locked, and the
// runtime kills that thread.
func createNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create namespace file %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount namespace at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNS unmounts and removes a namespace pinned by createNS. It is
// idempotent: a path that is not mounted or does not exist is fine.
func removeNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace file %s: %w", path, err)
	}
	return nil
}

// nsAlive reports whether path is a pinned namespace (after a host reboot
// the file is there but the mount is gone).
func nsAlive(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == nsfsMagic
}

// inNS runs fn on a locked OS thread switched into the namespace at path.
// The thread is never switched back or unlocked: the goroutine exits
// locked and the runtime discards the thread, so no goroutine ever runs in
// a namespace it did not ask for. Child processes forked by fn (none in
// zygote: CNI plugins run from the daemon's namespace) would inherit it.
func inNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		h, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", path, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// writeSysctl writes a /proc/sys value; called inside inNS it sets the
// namespace's own value (net.* sysctls are per namespace).
func writeSysctl(name, value string) error {
	p := "/proc/sys/" + name
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
