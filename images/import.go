package images

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/zygote/zygote/errdefs"
)

// refNameAnnotation names an image inside an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Import converts an image from a local file: an OCI layout directory, an
// OCI layout packed in a tar (oci-archive), or a `docker save` tar. name
// (a reference) is what it is stored as; when empty, the name recorded in
// the file is used (docker save RepoTags, or the OCI ref.name annotation
// when it is a full reference). Import waits until the image is ready or
// failed; the conversion runs in the store's queue like a pull.
func (s *Store) Import(ctx context.Context, path, name string) (Image, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w: %v", path, errdefs.ErrInvalidArgument, err)
	}
	var img v1.Image
	var recorded string
	var cleanup func()
	switch {
	case st.IsDir():
		img, recorded, err = fromLayout(path, s.cfg.Platform)
	default:
		img, recorded, cleanup, err = s.fromTar(path)
	}
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", path, err)
	}
	if name == "" {
		name = recorded
	}
	if name == "" {
		if cleanup != nil {
			cleanup()
		}
		return Image{}, fmt.Errorf("import %s: the file names no image; give a name: %w", path, errdefs.ErrInvalidArgument)
	}
	n, err := ParseRef(name)
	if err != nil {
		if cleanup != nil {
			cleanup()
		}
		return Image{}, fmt.Errorf("import %s: %w", path, err)
	}
	open := func(context.Context) (v1.Image, error) { return img, nil }
	_, j, err := s.start(n, "import:"+path, open, PullOptions{})
	if err != nil {
		if cleanup != nil {
			cleanup()
		}
		return Image{}, err
	}
	if cleanup != nil {
		go func() { <-j.done; cleanup() }()
	}
	return s.Wait(ctx, n)
}

// fromLayout picks the image of an OCI layout: the only manifest, or the
// one for platform.
func fromLayout(dir, platform string) (v1.Image, string, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, "", fmt.Errorf("%w: not an OCI layout: %v", errdefs.ErrInvalidArgument, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, "", fmt.Errorf("%w: OCI layout index: %v", errdefs.ErrInvalidArgument, err)
	}
	return pickImage(idx, platform)
}

func pickImage(idx v1.ImageIndex, platform string) (v1.Image, string, error) {
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, "", err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, "", err
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return nil, "", fmt.Errorf("%w: the layout holds no image", errdefs.ErrInvalidArgument)
	}
	if len(found) > 1 {
		var match []v1.Descriptor
		for _, d := range found {
			if d.Platform != nil && d.Platform.Satisfies(*want) {
				match = append(match, d)
			}
		}
		if len(match) != 1 {
			return nil, "", fmt.Errorf("%w: the layout holds %d images; import one at a time", errdefs.ErrInvalidArgument, len(found))
		}
		found = match
	}
	d := found[0]
	name := d.Annotations[refNameAnnotation]
	if _, err := ParseRef(name); err != nil || name == "" || !containsSlashOrColon(name) {
		name = "" // a bare tag like "latest" is not a reference
	}
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, "", err
		}
		img, _, err := pickImage(child, platform)
		return img, name, err
	}
	img, err := idx.Image(d.Digest)
	return img, name, err
}

func containsSlashOrColon(s string) bool {
	for _, c := range s {
		if c == '/' || c == ':' {
			return true
		}
	}
	return false
}

// fromTar opens a docker-save tar in place, or unpacks an OCI archive
// (a tar holding an oci-layout file) into staging first.
func (s *Store) fromTar(path string) (v1.Image, string, func(), error) {
	isOCI, err := tarHas(path, "oci-layout")
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	if !isOCI {
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
		if err != nil {
			return nil, "", nil, fmt.Errorf("%w: not a docker save or OCI archive: %v", errdefs.ErrInvalidArgument, err)
		}
		if len(m) != 1 {
			return nil, "", nil, fmt.Errorf("%w: the archive holds %d images; import one at a time", errdefs.ErrInvalidArgument, len(m))
		}
		img, err := tarball.ImageFromPath(path, nil)
		if err != nil {
			return nil, "", nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
		}
		name := ""
		if len(m[0].RepoTags) > 0 {
			name = m[0].RepoTags[0]
		}
		return img, name, nil, nil
	}
	dir, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "import-")
	if err != nil {
		return nil, "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	if err := untarPlain(path, dir); err != nil {
		cleanup()
		return nil, "", nil, err
	}
	img, name, err := fromLayout(dir, s.cfg.Platform)
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	// Read everything the conversion needs now; layers stay on disk
	// until cleanup.
	if _, err := partial.Descriptor(img); err != nil {
		cleanup()
		return nil, "", nil, err
	}
	return img, name, cleanup, nil
}

func tarHas(path, member string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if n, _ := cleanName(h.Name); n == member {
			return true, nil
		}
	}
}

// untarPlain unpacks an OCI archive (directories and regular files only),
// refusing names that escape dir.
func untarPlain(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: read archive: %v", errdefs.ErrInvalidArgument, err)
		}
		rel, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, rel)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return classify(err)
			}
		default:
			return fmt.Errorf("%w: OCI archive entry %q of type %q", errdefs.ErrInvalidArgument, h.Name, h.Typeflag)
		}
	}
}
