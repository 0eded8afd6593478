package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/zygote/zygote/errdefs"
)

var jsonUnmarshal = json.Unmarshal

// source opens the v1.Image a job converts.
type source func(ctx context.Context) (v1.Image, error)

// Pull starts pulling ref from its registry in the background and returns
// the image's state (pending). A pull of the same name already running is
// not started again: its state is returned (the same pull requested twice
// at once is done once). Follow it with Get or Wait.
func (s *Store) Pull(ref string, opts PullOptions) (Image, error) {
	r, err := parse(ref, s.cfg.InsecureRegistries)
	if err != nil {
		return Image{}, err
	}
	platform, err := v1.ParsePlatform(s.cfg.Platform)
	if err != nil {
		return Image{}, fmt.Errorf("platform %q: %w", s.cfg.Platform, errdefs.ErrInvalidArgument)
	}
	auth := opts.Auth
	if auth == nil {
		auth = authn.Anonymous
	}
	open := func(ctx context.Context) (v1.Image, error) {
		return remote.Image(r, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithPlatform(*platform))
	}
	who, err := credentialKey(auth)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: credentials: %w: %v", ref, errdefs.ErrInvalidArgument, err)
	}
	img, _, err := s.start(normalized(r), who, open, opts)
	return img, err
}

// credentialKey fingerprints credentials (never stored, only compared), so
// a pull that joins a running one must bring the same credentials.
func credentialKey(auth authn.Authenticator) (string, error) {
	if auth == authn.Anonymous {
		return "", nil
	}
	cfg, err := auth.Authorization()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// start registers a job for name and runs it, unless one is running: then
// that one is returned, or ErrConflict when it was started with other
// credentials (who) or from another source.
func (s *Store) start(n, who string, open source, opts PullOptions) (Image, *job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return Image{}, nil, fmt.Errorf("pull %s: image store closed: %w", n, errdefs.ErrUnavailable)
	}
	if j, ok := s.jobs[n]; ok && j.img.Status != StatusFailed {
		if j.who != who {
			return Image{}, nil, fmt.Errorf("pull %s: a pull of it with other credentials or from another source is running: %w", n, errdefs.ErrConflict)
		}
		return s.snapshot(j), j, nil
	}
	j := &job{img: Image{Name: n, Status: StatusPending, CreatedAt: time.Now().UTC()}, who: who, done: make(chan struct{})}
	s.jobs[n] = j
	s.wg.Add(1)
	go s.run(j, open, opts)
	return s.snapshot(j), j, nil
}

// run is the job's goroutine; the Store owns it (Close waits for it).
func (s *Store) run(j *job, open source, opts PullOptions) {
	defer s.wg.Done()
	defer close(j.done)
	n := j.img.Name
	start := time.Now()
	err := s.pull(s.ctx, j, open, opts)
	if err != nil && s.ctx.Err() != nil {
		// Close interrupted it; the read error alone would hide that.
		err = fmt.Errorf("%w: image store closed (%w): %w", errdefs.ErrUnavailable, s.ctx.Err(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j.ticket = nil
	if err != nil {
		err = classify(fmt.Errorf("pull %s: %w", n, err))
		j.img.Status, j.img.Error, j.img.Err = StatusFailed, err.Error(), err
		s.log.Warn("image pull failed", "name", n, "err", err, "duration", time.Since(start))
		return
	}
	j.img.Status = StatusReady
	delete(s.jobs, n) // committed: Get reads it from disk now
	s.log.Info("image ready", "name", n, "digest", j.img.Digest, "size", j.img.SizeBytes, "duration", time.Since(start))
}

// update changes a job's image under the lock and reports progress.
func (s *Store) update(j *job, opts PullOptions, f func(*Image)) {
	s.mu.Lock()
	f(&j.img)
	img := s.snapshot(j)
	s.mu.Unlock()
	if opts.OnProgress != nil {
		opts.OnProgress(img)
	}
}

// pull runs the phases: resolve, (dedupe by digest), queue, flatten,
// build disk, commit, tag.
func (s *Store) pull(ctx context.Context, j *job, open source, opts PullOptions) error {
	img, err := open(ctx)
	if err != nil {
		return classifyRemote(err)
	}
	d, err := img.Digest()
	if err != nil {
		return classifyRemote(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", classifyRemote(err))
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", classifyRemote(err))
	}
	var total int64
	for _, l := range layers {
		sz, err := l.Size()
		if err != nil {
			return classifyRemote(err)
		}
		total += sz
	}
	digest := d.String()
	s.update(j, opts, func(i *Image) {
		i.Digest = digest
		i.Platform = platformString(cf)
		i.Entrypoint, i.Cmd = cf.Config.Entrypoint, cf.Config.Cmd
		i.Env, i.WorkingDir, i.User = envMap(cf.Config.Env), cf.Config.WorkingDir, cf.Config.User
		i.Progress = Progress{LayersTotal: len(layers), BytesTotal: total}
	})

	release, err := s.claimDigest(ctx, digest)
	if err != nil {
		return err
	}
	defer release()
	if _, err := readRecord(s.blobDir(digest)); err != nil {
		if err := s.convert(ctx, j, img, cf, layers, opts); err != nil {
			return err
		}
	}
	return s.tag(j, digest)
}

// claimDigest makes this job the only one converting digest; a job that
// finds another converting it waits, then sees the committed result.
func (s *Store) claimDigest(ctx context.Context, digest string) (release func(), err error) {
	for {
		s.mu.Lock()
		ch, busy := s.converting[digest]
		if !busy {
			ch = make(chan struct{})
			s.converting[digest] = ch
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.converting, digest)
				close(ch)
				s.mu.Unlock()
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// convert builds and commits the image directory of one digest.
func (s *Store) convert(ctx context.Context, j *job, img v1.Image, cf *v1.ConfigFile, layers []v1.Layer, opts PullOptions) error {
	release, err := s.queue.acquire(ctx, func(tk *ticket) {
		s.mu.Lock()
		j.ticket = tk
		s.mu.Unlock()
	})
	if err != nil {
		return err
	}
	defer release()
	digest := j.img.Digest
	short := strings.TrimPrefix(digest, "sha256:")[:12]
	staging, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), short+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging) // after a commit only the emptied shell is left

	// Phase 1: fetch, verify and flatten every layer, bottom first.
	s.update(j, opts, func(i *Image) { i.Status = StatusPulling })
	rootfs := filepath.Join(staging, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return err
	}
	fl := newFlattener(rootfs)
	phase := time.Now()
	for idx, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := applyVerified(l, fl, func(n int64) {
			s.update(j, opts, func(i *Image) { i.Progress.BytesDone += n })
		})
		if err != nil {
			return classifyRemote(err)
		}
		s.update(j, opts, func(i *Image) { i.Progress.LayersDone = idx + 1 })
	}

	s.log.Debug("layers flattened", "digest", digest, "layers", len(layers), "duration", time.Since(phase))

	// Phase 2: build the root disk from the tree.
	s.update(j, opts, func(i *Image) { i.Status = StatusConverting })
	phase = time.Now()
	out := filepath.Join(staging, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}
	disk := filepath.Join(out, diskName(s.cfg.Format))
	if err := buildDisk(ctx, s.cfg.Format, rootfs, disk); err != nil {
		return fmt.Errorf("build %s root disk: %w", s.cfg.Format, err)
	}
	s.log.Debug("root disk built", "digest", digest, "format", s.cfg.Format, "duration", time.Since(phase))
	if err := os.RemoveAll(rootfs); err != nil {
		return err
	}
	st, err := finishDisk(disk)
	if err != nil {
		return err
	}

	// Phase 3: commit: record, then one rename makes the image exist.
	rec := record{
		Digest: digest, Format: s.cfg.Format, Disk: diskName(s.cfg.Format), SizeBytes: st.Size(),
		Platform: platformString(cf), Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd,
		Env: envMap(cf.Config.Env), WorkingDir: cf.Config.WorkingDir, User: cf.Config.User,
		CreatedAt: time.Now().UTC(),
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(out, recordFile), b, 0o444); err != nil {
		return err
	}
	if err := os.Rename(out, s.blobDir(digest)); err != nil {
		return fmt.Errorf("commit %s: %w", digest, err)
	}
	if err := syncDir(filepath.Dir(s.blobDir(digest))); err != nil {
		return err
	}
	s.update(j, opts, func(i *Image) { i.SizeBytes = st.Size(); i.Format = s.cfg.Format })
	return nil
}

// finishDisk makes the disk read-only (0444) and durable.
func finishDisk(disk string) (os.FileInfo, error) {
	f, err := os.Open(disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Chmod(0o444); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return f.Stat()
}

// tag points j's name at digest and fills j's image from the record.
func (s *Store) tag(j *job, digest string) error {
	rec, err := readRecord(s.blobDir(digest))
	if err != nil {
		return err
	}
	t := tagRecord{Name: j.img.Name, Digest: digest, CreatedAt: time.Now().UTC()}
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := writeFileSync(s.tagPath(j.img.Name), b, 0o644); err != nil {
		return fmt.Errorf("tag %s: %w", j.img.Name, err)
	}
	s.mu.Lock()
	j.img = recordImage(j.img.Name, rec, t.CreatedAt)
	s.mu.Unlock()
	return nil
}

// classifyRemote maps registry errors to errdefs classes, keeping the
// registry's own message.
func classifyRemote(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", errdefs.ErrUnauthorized, err)
		case http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
			return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
		}
	}
	return err
}

func platformString(cf *v1.ConfigFile) string {
	p := cf.OS + "/" + cf.Architecture
	if cf.Variant != "" {
		p += "/" + cf.Variant
	}
	return p
}

func envMap(env []string) map[string]string {
	if len(env) == 0 {
		return nil
	}
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}
