package e2e

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/internal/testutil"
)

// TestImages runs OCI images from a real registry on 127.0.0.1 through the
// real CLI and daemon, on XFS: a Debian python program, the image config's
// entrypoint/cmd/env/workdir/user and their overrides, exit codes and
// logs, a file surviving stop/start, and forks from running, standby and a
// snapshot, each owning its overlay while sharing the image's root disk.
func TestImages(t *testing.T) {
	testutil.RequirePrivileged(t, "loop-mounted XFS, VMs", "mkfs.ext4")
	reg := imagestest.StartRegistry(t)
	d := newDaemon(t, testutil.XFS(t))
	d.start()

	bbRef := reg + "/busybox:1"
	bb := imagestest.BusyboxImage(t)
	imagestest.PushImage(t, bbRef, bb)

	// An image whose config sets every workload field.
	cfgImg, err := mutate.AppendLayers(bb, imagestest.Layer(t, []imagestest.Entry{
		{Name: "srv/", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
		{Name: "etc/passwd", Body: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n")},
		{Name: "etc/group", Body: []byte("root:x:0:\napp:x:1000:\n")},
	}))
	if err != nil {
		t.Fatal(err)
	}
	cfgImg, err = mutate.Config(cfgImg, v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{`echo "out E=$FOO W=$(pwd) U=$(id -u) H=$HOME"`},
		Env:        []string{"PATH=/bin", "FOO=image"},
		WorkingDir: "/srv",
		User:       "app",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgRef := reg + "/config:1"
	imagestest.PushImage(t, cfgRef, cfgImg)

	t.Run("debian python prints 42", func(t *testing.T) {
		debRef := reg + "/debian:bookworm"
		imagestest.PushImage(t, debRef, imagestest.DebianPython(t))
		out, code := d.cli("run", "--name", "py", debRef, "--", "python3", "-c", "print(6*7)")
		if code != 0 || !hasLine(out, "42") {
			t.Fatalf("run = %d, output:\n%s", code, out)
		}
		if strings.TrimSpace(out) != "42" {
			t.Errorf("run printed more than the program's output:\n%s", out)
		}
		in, err := d.c.GetInstance(ctx, "py")
		if err != nil || in.State != "Stopped" || in.ExitCode == nil || *in.ExitCode != 0 || in.Image != debRef || in.ImageDigest == "" {
			t.Fatalf("after the program: %+v %v", in, err)
		}
	})

	t.Run("image config and overrides", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--name", "cfg1", cfgRef}, "out E=image W=/srv U=1000 H=/srv"},
			{[]string{"--name", "cfg2", "-e", "FOO=request", cfgRef, "--", `echo "over E=$FOO U=$(id -u)"`}, "over E=request U=1000"},
			{[]string{"--name", "cfg3", "--entrypoint", "/bin/echo", cfgRef, "--", "hi", "there"}, "hi there"},
		} {
			out, code := d.cli(append([]string{"run"}, tc.args...)...)
			if code != 0 || !hasLine(out, tc.want) {
				t.Errorf("run %q = %d, want line %q; output:\n%s", tc.args, code, tc.want, out)
			}
		}
		in, err := d.c.GetInstance(ctx, "cfg3")
		if err != nil || strings.Join(in.Entrypoint, " ") != "/bin/echo" || strings.Join(in.Cmd, " ") != "hi there" {
			t.Errorf("cfg3 entrypoint/cmd: %q %q %v", in.Entrypoint, in.Cmd, err)
		}
		// The program's output is in the app log.
		out, code := d.cli("logs", "cfg1")
		if code != 0 || !strings.Contains(out, "out E=image") {
			t.Errorf("logs cfg1 = %d:\n%s", code, out)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		out, code := d.cli("run", "--name", "ex7", bbRef, "--", "-c", "echo bye; exit 7")
		if code != 7 || !hasLine(out, "bye") {
			t.Fatalf("run exit 7 = %d:\n%s", code, out)
		}
		in, _ := d.c.GetInstance(ctx, "ex7")
		if in.State != "Stopped" || in.ExitCode == nil || *in.ExitCode != 7 || in.ExitMessage != "exited with code 7" {
			t.Errorf("ex7: state %s exit %v %q", in.State, in.ExitCode, in.ExitMessage)
		}
		begin := time.Now()
		out, code = d.cli("run", "--name", "ex127", "--entrypoint", "/no/such/program", bbRef)
		if code != 127 || !strings.Contains(out, "could not start") {
			t.Fatalf("run of a missing program = %d:\n%s", code, out)
		}
		t.Logf("a program that cannot start fails the run in %v", time.Since(begin).Round(time.Millisecond))
		in, _ = d.c.GetInstance(ctx, "ex127")
		if in.State != "Stopped" || in.ExitCode == nil || *in.ExitCode != 127 {
			t.Errorf("ex127: state %s exit %v %q", in.State, in.ExitCode, in.ExitMessage)
		}
	})

	t.Run("stop start keeps the overlay", func(t *testing.T) {
		in := d.runImage("keep", bbRef, "-c", "sleep 1000000")
		d.sh("keep", "echo persisted > /root/f; echo etc > /etc/new") // no sync: stop shuts the guest down cleanly
		// cp resolves guest paths in the image's root, not the initramfs.
		host := t.TempDir()
		if err := os.WriteFile(filepath.Join(host, "in.txt"), []byte("copied in\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.CopyToGuest(ctx, "keep", filepath.Join(host, "in.txt"), "/root/in.txt", client.CopyOptions{}); err != nil {
			t.Fatalf("cp into the image root: %v", err)
		}
		if _, err := d.c.CopyFromGuest(ctx, "keep", "/etc/passwd", filepath.Join(host, "passwd"), client.CopyOptions{}); err != nil {
			t.Fatalf("cp from the image root: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(host, "passwd")); string(b) != "root:x:0:0:root:/root:/bin/sh\n" {
			t.Errorf("cp of /etc/passwd got %q, want the image's", b)
		}
		if _, err := d.c.StopInstance(ctx, "keep"); err != nil {
			t.Fatal(err)
		}
		// A Stopped snapshot keeps the disk: a fork of it boots with it.
		snap, err := d.c.CreateSnapshot(ctx, "keep", api.CreateSnapshotRequest{Kind: "Stopped", Name: "disk"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.ForkSnapshot(ctx, snap.ID, api.ForkSnapshotRequest{Name: "from-stopped", TargetState: "Running"}); err != nil {
			t.Fatal(err)
		}
		d.waitRunning("from-stopped")
		if got := d.sh("from-stopped", "cat /root/f"); got != "persisted" {
			t.Errorf("a fork of a Stopped snapshot reads %q", got)
		}
		if _, err := d.c.StartInstance(ctx, "keep"); err != nil {
			t.Fatal(err)
		}
		d.waitRunning("keep")
		if got := d.sh("keep", "cat /root/f /etc/new /root/in.txt"); got != "persisted\netc\ncopied in" {
			t.Errorf("after stop/start: %q", got)
		}
		root := filepath.Join(d.instanceDir(in.ID), "rootfs.ext4")
		if !sameInode(t, root, d.imageDisk(in.ImageDigest)) {
			t.Error("the instance's root disk is not a hard link to the image store's")
		}
	})

	t.Run("forks own their overlay", func(t *testing.T) {
		src := d.runImage("src", bbRef, "-c", "sleep 1000000")
		d.sh("src", "echo src > /root/m") // no sync: the fork's pause flushes
		fork := func(name string, req api.ForkInstanceRequest) api.Instance {
			req.Name = name
			f, err := d.c.ForkInstance(ctx, "src", req)
			if err != nil {
				t.Fatalf("fork %s: %v", name, err)
			}
			return d.waitRunning(f.ID)
		}
		f1 := fork("f1", api.ForkInstanceRequest{FromRunning: true, TargetState: "Running"})
		if _, err := d.c.StandbyInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		f2 := fork("f2", api.ForkInstanceRequest{TargetState: "Running"})
		snap, err := d.c.CreateSnapshot(ctx, "src", api.CreateSnapshotRequest{Kind: "Standby", Name: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		f3, err := d.c.ForkSnapshot(ctx, snap.ID, api.ForkSnapshotRequest{Name: "f3", TargetState: "Running"})
		if err != nil {
			t.Fatal(err)
		}
		d.waitRunning(f3.ID)
		if _, err := d.c.RestoreInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		d.waitRunning("src")
		all := []string{"src", "f1", "f2", "f3"}
		for _, n := range all {
			if got := d.sh(n, "cat /root/m"); got != "src" {
				t.Errorf("%s sees %q, want the source's file", n, got)
			}
		}
		for _, n := range all {
			d.sh(n, "echo "+n+" > /root/m; echo "+n+" > /root/only-"+n)
		}
		for _, n := range all {
			if got := d.sh(n, "cat /root/m; ls /root | grep only- | tr '\\n' ' '"); got != n+"\nonly-"+n {
				t.Errorf("%s after everyone wrote: %q (another instance's write leaked in)", n, got)
			}
		}
		// The root disk and every other read-only file are shared by
		// inode; the overlay and the memory file are each fork's own.
		for _, f := range []api.Instance{f1, f2, f3} {
			if shared := shareReadOnly(t, d.instanceDir(src.ID), d.instanceDir(f.ID)); len(shared) < 3 {
				t.Errorf("%s shares %q with its source; want the root disk, the kernel and the initramfs", f.Name, shared)
			}
			if !sameInode(t, filepath.Join(d.instanceDir(f.ID), "rootfs.ext4"), d.imageDisk(src.ImageDigest)) {
				t.Errorf("%s: root disk not shared with the image store", f.Name)
			}
		}
		// The source and its snapshot go; the forks do not care.
		if err := d.c.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
		if err := d.c.DeleteInstance(ctx, "src", true); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"f1", "f2", "f3"} {
			if got := d.sh(n, "cat /root/m /root/only-"+n); got != n+"\n"+n {
				t.Errorf("%s after the source's deletion: %q", n, got)
			}
		}
		// A stopped fork keeps its overlay too.
		if _, err := d.c.StopInstance(ctx, "f2"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.StartInstance(ctx, "f2"); err != nil {
			t.Fatal(err)
		}
		d.waitRunning("f2")
		if got := d.sh("f2", "cat /root/m"); got != "f2" {
			t.Errorf("f2 after stop/start: %q", got)
		}
	})
}

// TestVolumes: a writable volume keeps what one instance wrote after the
// instance is gone; read-only attachments share it; an instance with a
// writable volume refuses forks and snapshots (409); a volume in use
// cannot be deleted.
func TestVolumes(t *testing.T) {
	testutil.RequirePrivileged(t, "loop-mounted XFS, VMs", "mkfs.ext4")
	reg := imagestest.StartRegistry(t)
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	bbRef := reg + "/busybox:1"
	imagestest.PushImage(t, bbRef, imagestest.BusyboxImage(t))

	if out, code := d.cli("volume", "create", "data", "--size-gb", "1"); code != 0 {
		t.Fatalf("volume create: %d %s", code, out)
	}
	out, code := d.cli("run", "--name", "w", "-v", "data:/data", bbRef, "--", "-c", "echo kept > /data/f; mount | grep ' /data '")
	if code != 0 || !strings.Contains(out, "/data type ext4 (rw") {
		t.Fatalf("writer = %d:\n%s", code, out)
	}
	if out, code := d.cli("volume", "rm", "data"); code == 0 || !strings.Contains(out, "instance w") {
		t.Errorf("rm of an attached volume = %d: %s", code, out)
	}
	if err := d.c.DeleteInstance(ctx, "w", true); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"r1", "r2"} {
		in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: n, Image: bbRef, Cmd: []string{"-c", "sleep 1000000"},
			OverlaySize: "64MB", Volumes: []api.VolumeMount{{VolumeID: "data", MountPath: "/data", ReadOnly: true}}})
		if err != nil {
			t.Fatalf("read-only attach %s: %v", n, err)
		}
		d.waitRunning(in.ID)
		if got := d.sh(n, "cat /data/f"); got != "kept" {
			t.Errorf("%s reads %q from the volume", n, got)
		}
		if _, c := d.shCode(n, "echo x > /data/g"); c == 0 {
			t.Errorf("%s wrote a read-only volume", n)
		}
	}
	if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "w2", Image: bbRef, Cmd: []string{"-c", "true"},
		Volumes: []api.VolumeMount{{VolumeID: "data", MountPath: "/data"}}}); !errdefs.IsConflict(err) {
		t.Errorf("writable attach of a shared volume: %v", err)
	}
	// Forks of read-only attachments work.
	if _, err := d.c.ForkInstance(ctx, "r1", api.ForkInstanceRequest{Name: "r1-fork", FromRunning: true, TargetState: "Running"}); err != nil {
		t.Errorf("fork with a read-only volume: %v", err)
	} else if got := d.sh("r1-fork", "cat /data/f"); got != "kept" {
		t.Errorf("the fork reads %q", got)
	}
	for _, n := range []string{"r1", "r2", "r1-fork"} {
		if err := d.c.DeleteInstance(ctx, n, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "solo", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	d.runImage("holder", bbRef, "-c", "sleep 1000000")
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "solo-user", Image: bbRef, Cmd: []string{"-c", "sleep 1000000"},
		OverlaySize: "64MB", Volumes: []api.VolumeMount{{VolumeID: "solo", MountPath: "/solo"}}})
	if err != nil {
		t.Fatal(err)
	}
	d.waitRunning(in.ID)
	if _, err := d.c.ForkInstance(ctx, "solo-user", api.ForkInstanceRequest{Name: "nope", FromRunning: true}); !errdefs.IsConflict(err) {
		t.Errorf("fork with a writable volume: %v", err)
	}
	if _, err := d.c.CreateSnapshot(ctx, "solo-user", api.CreateSnapshotRequest{Kind: "Standby"}); !errdefs.IsConflict(err) {
		t.Errorf("snapshot with a writable volume: %v", err)
	}
}

// runImage creates an instance of image running args as its cmd and
// waits until it is Running.
func (d *daemon) runImage(name, image string, cmd ...string) api.Instance {
	d.t.Helper()
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Image: image, Cmd: cmd, OverlaySize: "1GB"})
	if err != nil {
		d.t.Fatalf("create %s: %v", name, err)
	}
	return d.waitRunning(in.ID)
}

// imageDisk is the image store's root disk of digest.
func (d *daemon) imageDisk(digest string) string {
	return filepath.Join(d.dataDir, "images", "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"), "rootfs.ext4")
}

// shareReadOnly checks that every read-only file of a (kernel, initramfs,
// root disk) is the same inode in b, and every writable file is not; it
// returns the shared names.
func shareReadOnly(t *testing.T, a, b string) (shared []string) {
	t.Helper()
	entries, err := os.ReadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		other := filepath.Join(b, e.Name())
		if _, err := os.Stat(other); err != nil {
			continue
		}
		same := sameInode(t, filepath.Join(a, e.Name()), other)
		if ro := fi.Mode().Perm()&0o222 == 0; ro != same {
			t.Errorf("%s (mode %v): shared %v, want %v", e.Name(), fi.Mode().Perm(), same, ro)
		}
		if same {
			shared = append(shared, e.Name())
		}
	}
	return shared
}

func hasLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}
