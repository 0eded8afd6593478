package initd

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"github.com/zygote/zygote/guest/agentproto"
)

// Provisioner prepares what the workload runs on: the guest NIC and the
// workload's root filesystem. zygote-init uses LinuxProvisioner; without
// one (in-process tests) a Configure that asks for a network or a root
// fails with not_implemented.
type Provisioner interface {
	// Network configures the NIC found by cfg.MAC (defaults applied) and
	// writes /etc/resolv.conf when cfg.DNS is set. It is idempotent.
	Network(cfg agentproto.NetworkConfig) error
	// Root assembles the workload root (root disk read-only, overlay,
	// /proc /sys /dev, volumes, /etc/hosts, /etc/hostname and
	// /etc/resolv.conf bound from the agent's own) and returns its path.
	Root(root agentproto.RootFS, vols []agentproto.Volume) (string, error)
}

// workloadState is the boot's workload environment, set by Configure:
// every exec runs in the same root, with the workload's environment and
// working directory as defaults.
type workloadState struct {
	root string   // "" : the initramfs
	env  []string // exec's base environment
	cwd  string
	// rootReq is the root a Configure assembled; a retried Configure (the
	// workload failed to start) must ask for the same one.
	rootReq string
}

// execDefaults returns the root, base environment and working directory
// of an exec.
func (a *Agent) execDefaults() (root string, env []string, cwd string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.wl.env == nil {
		return a.wl.root, a.cfg.Env, "/"
	}
	return a.wl.root, a.wl.env, a.wl.cwd
}

// WorkloadRoot returns the directory execs and file operations resolve
// guest paths in: the assembled image root, or "" (the initramfs) before a
// Configure with a root.
func (a *Agent) WorkloadRoot() string {
	root, _, _ := a.execDefaults()
	return root
}

func invalid(format string, args ...any) error {
	return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// validateConfigure checks a ConfigureRequest before anything changes.
func validateConfigure(req *agentproto.ConfigureRequest) error {
	if req.Process != nil && len(req.Command) > 0 {
		return invalid("configure: command and process are exclusive")
	}
	if p := req.Process; p != nil {
		if len(p.Args) == 0 || p.Args[0] == "" {
			return invalid("configure: process has no args (the image has neither entrypoint nor cmd?)")
		}
		for _, kv := range p.Env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return invalid("configure: env entry %q is not KEY=VALUE", kv)
			}
		}
		if p.WorkingDir != "" && !path.IsAbs(p.WorkingDir) {
			return invalid("configure: working dir %q is not absolute", p.WorkingDir)
		}
	}
	if r := req.Root; r != nil {
		if r.Serial == "" {
			return invalid("configure: root disk has no serial")
		}
		switch r.FSType {
		case "ext4", "erofs":
		default:
			return invalid("configure: root fstype %q: want ext4 or erofs", r.FSType)
		}
		if r.OverlaySerial == r.Serial {
			return invalid("configure: root and overlay are the same disk %q", r.Serial)
		}
	}
	if len(req.Volumes) > 0 && req.Root == nil {
		return invalid("configure: volumes need a root filesystem")
	}
	for _, v := range req.Volumes {
		if v.Serial == "" || !path.IsAbs(v.Path) || path.Clean(v.Path) == "/" || strings.Contains(v.Path, "/../") || strings.HasSuffix(v.Path, "/..") {
			return invalid("configure: volume %q at %q: want a serial and an absolute path below /", v.Serial, v.Path)
		}
		switch v.FSType {
		case "", "ext4", "erofs", "xfs":
		default:
			return invalid("configure: volume %s: fstype %q not supported", v.Serial, v.FSType)
		}
	}
	if n := req.Network; n != nil {
		if _, _, err := net.ParseCIDR(n.Address); err != nil {
			return invalid("configure: network address %q: %v", n.Address, err)
		}
		if n.Gateway != "" && net.ParseIP(n.Gateway) == nil {
			return invalid("configure: gateway %q is not an IP address", n.Gateway)
		}
		if n.MAC != "" {
			if _, err := net.ParseMAC(n.MAC); err != nil {
				return invalid("configure: MAC %q: %v", n.MAC, err)
			}
		}
		if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65535) {
			return invalid("configure: MTU %d out of range", n.MTU)
		}
		for _, d := range n.DNS {
			if net.ParseIP(d) == nil {
				return invalid("configure: DNS server %q is not an IP address", d)
			}
		}
	}
	return nil
}

// networkDefaults fills in the fixed guest network.
func networkDefaults(n agentproto.NetworkConfig) agentproto.NetworkConfig {
	if n.Interface == "" {
		n.Interface = agentproto.GuestInterface
	}
	if n.MAC == "" {
		n.MAC = agentproto.GuestMAC
	}
	if n.MTU == 0 {
		n.MTU = agentproto.DefaultMTU
	}
	return n
}

// ResolvConf is the content of /etc/resolv.conf for servers.
func ResolvConf(servers []string) string {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.String()
}

// user is a resolved Process.User.
type user struct {
	uid, gid uint32
	groups   []uint32
	home     string
}

// resolveUser resolves spec (OCI config.User) against passwd and group
// (the image's files; either may be nil when the image has none).
func resolveUser(spec string, passwd, group io.Reader) (user, error) {
	type pwEnt struct {
		name     string
		uid, gid uint32
		home     string
	}
	var pws []pwEnt
	if passwd != nil {
		sc := bufio.NewScanner(passwd)
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) < 7 || strings.HasPrefix(f[0], "#") {
				continue
			}
			uid, err1 := strconv.ParseUint(f[2], 10, 32)
			gid, err2 := strconv.ParseUint(f[3], 10, 32)
			if err1 != nil || err2 != nil {
				continue
			}
			pws = append(pws, pwEnt{f[0], uint32(uid), uint32(gid), f[5]})
		}
	}
	type grEnt struct {
		name    string
		gid     uint32
		members []string
	}
	var grs []grEnt
	if group != nil {
		sc := bufio.NewScanner(group)
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) < 4 || strings.HasPrefix(f[0], "#") {
				continue
			}
			gid, err := strconv.ParseUint(f[2], 10, 32)
			if err != nil {
				continue
			}
			var members []string
			if f[3] != "" {
				members = strings.Split(f[3], ",")
			}
			grs = append(grs, grEnt{f[0], uint32(gid), members})
		}
	}

	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	u := user{home: "/"}
	name := ""
	switch {
	case userPart == "":
		u.uid, u.gid, name = 0, 0, "root"
		u.home = "/root"
		for _, p := range pws {
			if p.uid == 0 {
				name, u.home = p.name, p.home
				break
			}
		}
	default:
		found := false
		if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
			u.uid, u.gid = uint32(n), uint32(n)
			for _, p := range pws {
				if p.uid == u.uid {
					u.gid, u.home, name, found = p.gid, p.home, p.name, true
					break
				}
			}
			if !found {
				u.gid = 0 // a uid unknown to the image: group root, like runc
			}
		} else {
			for _, p := range pws {
				if p.name == userPart {
					u.uid, u.gid, u.home, name, found = p.uid, p.gid, p.home, p.name, true
					break
				}
			}
			if !found {
				return user{}, fmt.Errorf("user %q: no such user in the image's /etc/passwd", userPart)
			}
		}
	}
	if hasGroup {
		if groupPart == "" {
			return user{}, fmt.Errorf("user %q: empty group", spec)
		}
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			u.gid = uint32(n)
		} else {
			found := false
			for _, g := range grs {
				if g.name == groupPart {
					u.gid, found = g.gid, true
					break
				}
			}
			if !found {
				return user{}, fmt.Errorf("group %q: no such group in the image's /etc/group", groupPart)
			}
		}
	} else if name != "" {
		// Supplementary groups only when no explicit group was given
		// (runc's rule).
		for _, g := range grs {
			for _, m := range g.members {
				if m == name && g.gid != u.gid {
					u.groups = append(u.groups, g.gid)
				}
			}
		}
	}
	if u.home == "" {
		u.home = "/"
	}
	return u, nil
}

// workloadEnv builds the workload's environment: a default PATH, the
// image's env, HOME from passwd unless the env sets it.
func workloadEnv(env []string, home string) []string {
	out := make([]string, 0, len(env)+2)
	has := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		has[k] = true
	}
	if !has["PATH"] {
		out = append(out, DefaultEnv[0])
	}
	if !has["HOME"] {
		out = append(out, "HOME="+home)
	}
	// Later duplicates win, as in a shell; keep the last of each key.
	last := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if last[k] == i {
			out = append(out, kv)
		}
	}
	return out
}

// startError is a workload that could not start: Configure fails with it
// and the shell's exit code (127 not found, 126 not executable).
func startError(argv0 string, err error) error {
	code := 126
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, errNotFound) {
		code = 127
	}
	return &agentproto.Error{Code: agentproto.CodeInvalidArgument, ExitCode: code,
		Message: fmt.Sprintf("start workload %q: %v", argv0, err)}
}

// errNotFound: a command name found in no PATH directory.
var errNotFound = errors.New("command not found")

// sameRoot reports whether a root request equals the one already assembled.
func rootKey(r *agentproto.RootFS, vols []agentproto.Volume) string {
	b, _ := json.Marshal(struct {
		R *agentproto.RootFS
		V []agentproto.Volume
	}{r, vols})
	return string(b)
}

// waitWorkload answers OpWaitWorkload once the workload exited, or gives
// up when the host closes the stream or the session ends.
func (s *session) waitWorkload(st io.ReadWriter) {
	a := s.a
	a.mu.Lock()
	w := a.workload
	a.mu.Unlock()
	if w == nil {
		replyErr(st, &agentproto.Error{Code: agentproto.CodeNotFound, Message: "no workload in this boot"})
		return
	}
	gone := make(chan struct{})
	s.wg.Go(func() {
		// The host sends nothing more; a read ends when it closes the
		// stream (cancelled wait) or the stream is reset.
		io.Copy(io.Discard, st)
		close(gone)
	})
	select {
	case <-w.done:
	case <-gone:
		return
	case <-s.closed:
		return
	}
	// The exit watcher may not have recorded the status yet.
	code, sig := exitCode(w.ws)
	a.mu.Lock()
	status := a.workloadStatusLocked()
	a.mu.Unlock()
	status.Exited = &agentproto.ExitStatus{Code: code, Signal: sig}
	reply(st, agentproto.Response{Workload: status})
}
