package e2e

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/images/imagestest"
)

// TestNetworkImageForks: an OCI image's program serving HTTP on a
// networked daemon (the image imported as a docker-save archive: the
// daemon's namespace reaches no registry). The instance answers on its
// address and its published port; a sharing fork from running answers on
// its own address (the same guest, its own slot), and so does the
// source; deleting both leaves no slot.
func TestNetworkImageForks(t *testing.T) {
	topo := newNetTopo(t)
	d := newNetDaemon(t, topo)

	img, err := mutate.AppendLayers(imagestest.BusyboxImage(t), imagestest.Layer(t, []imagestest.Entry{
		{Name: "bin/httpd", Type: tar.TypeSymlink, Linkname: "busybox"},
		{Name: "www/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "www/index.html", Mode: 0o644, Body: []byte(guestPage + "\n")},
	}))
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("zygote.test/site:1")
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := tarball.Write(tag, img, &archive); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.ImportImage(ctx, &archive, ""); err != nil {
		t.Fatalf("import: %v", err)
	}

	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "site", Image: "zygote.test/site:1", OverlaySize: "64MB",
		Cmd: []string{"-c", "exec httpd -f -p 80 -h /www"}, Publish: []api.PublishedPort{{HostPort: 8081, GuestPort: 80}}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	site := d.waitRunning(in.ID)
	ip := slotIP(t, site)
	waitHTTP(t, topo.host, "http://"+ip+":80/")
	waitHTTP(t, topo.outside, "http://"+hostIP+":8081/")
	if got := guestAddrs(d, "site"); got != guestSees {
		t.Fatalf("the image guest sees %q, want %q", got, guestSees)
	}

	forks, err := d.c.ForkInstance(ctx, "site", api.ForkInstanceRequest{Name: "site-2", FromRunning: true, TargetState: "Running", Memory: "shared"})
	if err != nil {
		t.Fatalf("sharing fork of a networked image instance: %v", err)
	}
	f := d.waitRunning(forks.ID)
	if f.Memory != "shared" || f.ImageDigest != site.ImageDigest || len(f.Network.Publish) != 0 {
		t.Fatalf("fork: memory %q, image %q (source %q), publish %+v", f.Memory, f.ImageDigest, site.ImageDigest, f.Network.Publish)
	}
	fip := slotIP(t, f)
	if fip == ip {
		t.Fatalf("the fork has its source's address %s", ip)
	}
	waitHTTP(t, topo.host, "http://"+fip+":80/")
	waitHTTP(t, topo.host, "http://"+ip+":80/")
	waitHTTP(t, topo.outside, "http://"+hostIP+":8081/")

	for _, ref := range []string{"site-2", "site"} {
		if err := d.c.DeleteInstance(ctx, ref, true); err != nil {
			t.Fatalf("delete %s: %v", ref, err)
		}
	}
	if n := ownedSlots(t, d); n != 0 {
		t.Fatalf("%d slots still owned after deleting both", n)
	}
}
