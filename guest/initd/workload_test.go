package initd

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zygote/zygote/guest/agentproto"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
nohome:x:1001:1001:::/bin/sh
`

const testGroup = `root:x:0:
daemon:x:1:
app:x:1000:
staff:x:50:app,other
wheel:x:10:app
audio:x:29:other
`

func TestResolveUser(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		want    user
		wantErr string
	}{
		{"", user{uid: 0, gid: 0, home: "/root"}, ""},
		{"root", user{uid: 0, gid: 0, home: "/root"}, ""},
		{"app", user{uid: 1000, gid: 1000, groups: []uint32{50, 10}, home: "/home/app"}, ""},
		{"1000", user{uid: 1000, gid: 1000, groups: []uint32{50, 10}, home: "/home/app"}, ""},
		{"app:staff", user{uid: 1000, gid: 50, home: "/home/app"}, ""},
		{"app:7", user{uid: 1000, gid: 7, home: "/home/app"}, ""},
		{"4242", user{uid: 4242, gid: 0, home: "/"}, ""},
		{"4242:4243", user{uid: 4242, gid: 4243, home: "/"}, ""},
		{"nohome", user{uid: 1001, gid: 1001, home: "/"}, ""},
		{"nobody", user{}, "no such user"},
		{"app:nogroup", user{}, "no such group"},
		{"app:", user{}, "empty group"},
	} {
		got, err := resolveUser(tc.spec, strings.NewReader(testPasswd), strings.NewReader(testGroup))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.spec, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.uid != tc.want.uid || got.gid != tc.want.gid || got.home != tc.want.home || !slices.Equal(got.groups, tc.want.groups) {
			t.Errorf("%q: %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
	// An image without /etc/passwd: numeric users work, names do not.
	if u, err := resolveUser("1234:5", nil, nil); err != nil || u.uid != 1234 || u.gid != 5 {
		t.Errorf("no passwd, numeric: %+v %v", u, err)
	}
	if _, err := resolveUser("app", nil, nil); err == nil {
		t.Error("no passwd: a name resolved")
	}
}

func TestWorkloadEnv(t *testing.T) {
	got := workloadEnv([]string{"A=1", "PATH=/app/bin", "A=2"}, "/home/app")
	if want := []string{"HOME=/home/app", "PATH=/app/bin", "A=2"}; !slices.Equal(got, want) {
		t.Errorf("workloadEnv = %v, want %v", got, want)
	}
	got = workloadEnv([]string{"HOME=/x"}, "/root")
	if want := []string{DefaultEnv[0], "HOME=/x"}; !slices.Equal(got, want) {
		t.Errorf("workloadEnv = %v, want %v", got, want)
	}
}

func TestValidateConfigure(t *testing.T) {
	ok := []*agentproto.ConfigureRequest{
		{},
		{Command: []string{"sh"}},
		{Root: &agentproto.RootFS{Serial: "r", FSType: "erofs", OverlaySerial: "o"}, Process: &agentproto.Process{Args: []string{"/app"}, Env: []string{"A=", "B=x=y"}, WorkingDir: "/srv"},
			Volumes: []agentproto.Volume{{Serial: "v", Path: "/data", ReadOnly: true}}},
		{Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, Gateway: agentproto.GatewayIP, DNS: []string{"1.1.1.1"}, MTU: 1400}},
	}
	for i, req := range ok {
		if err := validateConfigure(req); err != nil {
			t.Errorf("ok %d: %v", i, err)
		}
	}
	root := &agentproto.RootFS{Serial: "r", FSType: "ext4"}
	bad := map[string]*agentproto.ConfigureRequest{
		"command and process":  {Command: []string{"sh"}, Process: &agentproto.Process{Args: []string{"sh"}}},
		"no args":              {Process: &agentproto.Process{}},
		"env without =":        {Process: &agentproto.Process{Args: []string{"x"}, Env: []string{"A"}}},
		"relative working dir": {Process: &agentproto.Process{Args: []string{"x"}, WorkingDir: "srv"}},
		"root without serial":  {Root: &agentproto.RootFS{FSType: "ext4"}},
		"root fstype":          {Root: &agentproto.RootFS{Serial: "r", FSType: "ntfs"}},
		"root is overlay":      {Root: &agentproto.RootFS{Serial: "r", FSType: "ext4", OverlaySerial: "r"}},
		"volume without root":  {Volumes: []agentproto.Volume{{Serial: "v", Path: "/data"}}},
		"volume on /":          {Root: root, Volumes: []agentproto.Volume{{Serial: "v", Path: "/"}}},
		"volume with ..":       {Root: root, Volumes: []agentproto.Volume{{Serial: "v", Path: "/a/../../b"}}},
		"volume relative":      {Root: root, Volumes: []agentproto.Volume{{Serial: "v", Path: "data"}}},
		"bad address":          {Network: &agentproto.NetworkConfig{Address: "169.254.0.2"}},
		"bad gateway":          {Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, Gateway: "gw"}},
		"bad DNS":              {Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, DNS: []string{"dns.example"}}},
		"bad MAC":              {Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, MAC: "zz"}},
		"bad MTU":              {Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, MTU: 100}},
	}
	for name, req := range bad {
		var pe *agentproto.Error
		if err := validateConfigure(req); !errors.As(err, &pe) || pe.Code != agentproto.CodeInvalidArgument {
			t.Errorf("%s: %v, want invalid_argument", name, err)
		}
	}
}

// TestLookPathInRoot: commands resolve inside the image root, following
// the image's absolute symlinks inside it, never into the agent's root.
func TestLookPathInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "opt/app", "etc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), []byte("\x7fELF"), 0o755)
	os.Symlink("/bin/busybox", filepath.Join(root, "bin/sh")) // absolute: inside the image
	os.WriteFile(filepath.Join(root, "opt/app/data"), []byte("x"), 0o644)
	os.Symlink("/etc/passwd-of-the-host", filepath.Join(root, "usr/bin/escape"))
	os.Symlink("../../../../../../bin/busybox", filepath.Join(root, "usr/bin/dotdot"))
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(testPasswd), 0o644)

	env := []string{"PATH=/usr/bin:/bin"}
	for _, tc := range []struct{ file, want, wantErr string }{
		{"sh", "/bin/sh", ""},
		{"busybox", "/bin/busybox", ""},
		{"/bin/sh", "/bin/sh", ""},
		{"dotdot", "/usr/bin/dotdot", ""}, // .. stops at the image root
		{"escape", "", "not found"},
		{"nosuch", "", "not found"},
		{"/opt/app/data", "", "permission denied"},
		{"/opt/app", "", "is a directory"},
		{"bin/sh", "", "ambiguous"},
	} {
		got, err := lookPathIn(root, tc.file, env)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) && !(tc.wantErr == "not found" && os.IsNotExist(err)) {
				t.Errorf("%q: %q, %v; want error %q", tc.file, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.file, got, err, tc.want)
		}
	}
	if se := startError("nosuch", func() error { _, err := lookPathIn(root, "nosuch", env); return err }()); se.(*agentproto.Error).ExitCode != 127 {
		t.Errorf("not found: exit code %d, want 127", se.(*agentproto.Error).ExitCode)
	}
	if se := startError("/opt/app/data", func() error { _, err := lookPathIn(root, "/opt/app/data", env); return err }()); se.(*agentproto.Error).ExitCode != 126 {
		t.Errorf("not executable: exit code %d, want 126", se.(*agentproto.Error).ExitCode)
	}
	f, err := openInRoot(root, "/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
