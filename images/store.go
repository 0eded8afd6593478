package images

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// Status is an image's state (hypeman's vocabulary).
type Status string

const (
	// StatusPending: accepted; resolving the manifest or waiting in the
	// conversion queue (QueuePosition says where).
	StatusPending Status = "pending"
	// StatusPulling: downloading, verifying and flattening layers.
	StatusPulling Status = "pulling"
	// StatusConverting: building the root disk from the flattened tree.
	StatusConverting Status = "converting"
	// StatusReady: the root disk is committed; RootDisk returns it.
	StatusReady Status = "ready"
	// StatusFailed: the last pull of this name failed; Error says why.
	StatusFailed Status = "failed"
)

// Progress counts a pull's work: layers applied and compressed bytes read.
type Progress struct {
	LayersDone, LayersTotal int
	BytesDone, BytesTotal   int64
}

// Image is one named image as the API shows it.
type Image struct {
	// Name is the normalized reference (see ParseRef).
	Name string
	// Digest is the manifest digest ("sha256:…"), empty until resolved.
	Digest string
	Status Status
	// QueuePosition is the 1-based place in the conversion queue while
	// pending behind other conversions, else nil.
	QueuePosition *int
	// Error is set when Status is failed.
	Error string
	// Err is the classed error behind Error (errdefs classes), nil unless
	// failed.
	Err error
	// SizeBytes is the root disk's size; 0 until ready.
	SizeBytes int64
	// Format is the root disk's format (FormatExt4 or FormatErofs).
	Format     string
	Platform   string
	Entrypoint []string
	Cmd        []string
	Env        map[string]string
	WorkingDir string
	User       string
	Progress   Progress
	CreatedAt  time.Time
}

// Config configures a Store.
type Config struct {
	// Root is the store's directory (conventionally <data>/images). It
	// must be on one filesystem (staging is renamed into place).
	Root string
	// Format is the root-disk format; FormatExt4 when empty.
	Format string
	// InsecureRegistries may be reached over plain http (host or
	// host:port); loopback registries always may.
	InsecureRegistries []string
	// MaxConversions bounds concurrent pulls/conversions; 2 when zero.
	MaxConversions int
	// InUse reports who uses an image's root disk (instance or snapshot
	// names); Delete refuses while it returns any. Nil means unused.
	InUse func(digest string) []string
	// Platform to select from multi-platform indexes; linux/amd64 when
	// empty.
	Platform string
	Logger   *slog.Logger
}

// PullOptions are per-call options of Pull.
type PullOptions struct {
	// Auth is used for this pull only and never stored; anonymous when
	// nil.
	Auth authn.Authenticator
	// OnProgress, if set, is called as bytes arrive (from the pull's
	// goroutine; keep it cheap).
	OnProgress func(Image)
}

// Store is the content-addressed image store. See the package doc for
// its lifecycle and concurrency contract.
type Store struct {
	cfg   Config
	root  string
	log   *slog.Logger
	queue *queue
	lock  *os.File

	ctx    context.Context // cancelled by Close; parent of every job
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// jobs are pulls/imports running or failed, by normalized name.
	// +checklocks:mu
	jobs map[string]*job
	// converting de-duplicates conversions of one digest under two names.
	// +checklocks:mu
	converting map[string]chan struct{}
}

// job is one pull or import of a name.
type job struct {
	img    Image // guarded by Store.mu
	ticket *ticket
	who    string        // credential fingerprint or import source; see start
	done   chan struct{} // closed when img is ready or failed
}

// Open opens (creating if needed) the store at cfg.Root, takes its lock,
// and reconciles it: staging left by a crashed daemon is removed, digest
// directories without a complete record are removed, and tags pointing at
// missing digests are dropped. Close releases it.
func Open(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, fmt.Errorf("open image store: no root: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Format == "" {
		cfg.Format = FormatExt4
	}
	if cfg.Format != FormatExt4 && cfg.Format != FormatErofs {
		return nil, fmt.Errorf("open image store: format %q: %w", cfg.Format, errdefs.ErrInvalidArgument)
	}
	if cfg.MaxConversions == 0 {
		cfg.MaxConversions = 2
	}
	if cfg.Platform == "" {
		cfg.Platform = "linux/amd64"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []string{"", "blobs/sha256", "tags", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cfg.Root, d), 0o755); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Root, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if err := lockWithin(lock, lockWait); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open image store %s: held by another process: %w: %v", cfg.Root, errdefs.ErrUnavailable, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg: cfg, root: cfg.Root, log: cfg.Logger.With("component", "images"),
		queue: newQueue(cfg.MaxConversions), lock: lock, ctx: ctx, cancel: cancel,
		jobs: make(map[string]*job), converting: make(map[string]chan struct{}),
	}
	if err := s.reconcile(); err != nil {
		s.Close()
		return nil, fmt.Errorf("open image store: reconcile: %w", err)
	}
	return s, nil
}

// Close cancels running pulls, waits for them to clean up, and releases
// the store's lock.
func (s *Store) Close() error {
	s.cancel()
	s.wg.Wait()
	return s.lock.Close()
}

// reconcile removes half-done work. It runs in Open, before any job.
func (s *Store) reconcile() error {
	var errs []error
	tmps, err := os.ReadDir(filepath.Join(s.root, "tmp"))
	if err != nil {
		return err
	}
	for _, e := range tmps {
		p := filepath.Join(s.root, "tmp", e.Name())
		s.log.Info("removing staging left by an interrupted pull", "path", p)
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	blobs, err := os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
	if err != nil {
		return err
	}
	for _, e := range blobs {
		dir := filepath.Join(s.root, "blobs", "sha256", e.Name())
		rec, err := readRecord(dir)
		if err == nil {
			_, err = os.Stat(filepath.Join(dir, rec.Disk))
		}
		if err != nil {
			s.log.Warn("removing incomplete image directory", "path", dir, "err", err)
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	tags, err := s.readTags()
	if err != nil {
		return err
	}
	for path, t := range tags {
		if _, err := os.Stat(filepath.Join(s.blobDir(t.Digest), recordFile)); err != nil {
			s.log.Warn("dropping tag of a missing image", "name", t.Name, "digest", t.Digest)
			if err := os.Remove(path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// readTags returns every tag record by file path; unreadable or stray
// files (a crashed tag write's temporary) are removed.
func (s *Store) readTags() (map[string]tagRecord, error) {
	dir := filepath.Join(s.root, "tags")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]tagRecord)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			os.Remove(p)
			continue
		}
		t, err := readTag(p)
		if err != nil {
			s.log.Warn("ignoring unreadable tag", "path", p, "err", err)
			continue
		}
		out[p] = t
	}
	return out, nil
}

// Get returns the image named ref: a running or failed pull, else the
// committed image its tag points at. ErrNotFound when neither exists.
func (s *Store) Get(ref string) (Image, error) {
	n, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	s.mu.Lock()
	if j, ok := s.jobs[n]; ok {
		img := s.snapshot(j)
		s.mu.Unlock()
		return img, nil
	}
	s.mu.Unlock()
	return s.committed(n)
}

// committed reads the ready image tagged n from disk.
func (s *Store) committed(n string) (Image, error) {
	t, err := readTag(s.tagPath(n))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("image %s: %w", n, errdefs.ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", n, err)
	}
	rec, err := readRecord(s.blobDir(t.Digest))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("image %s: digest %s: %w", n, t.Digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", n, err)
	}
	return recordImage(n, rec, t.CreatedAt), nil
}

func recordImage(n string, rec *record, created time.Time) Image {
	return Image{
		Name: n, Digest: rec.Digest, Status: StatusReady, SizeBytes: rec.SizeBytes,
		Format: rec.Format, Platform: rec.Platform, Entrypoint: rec.Entrypoint, Cmd: rec.Cmd,
		Env: rec.Env, WorkingDir: rec.WorkingDir, User: rec.User, CreatedAt: created,
	}
}

// snapshot copies a job's image, with its live queue position.
//
// Preconditions: s.mu held.
func (s *Store) snapshot(j *job) Image {
	img := j.img
	if j.ticket != nil {
		if p := s.queue.position(j.ticket); p > 0 {
			img.QueuePosition = &p
		}
	}
	return img
}

// List returns every image: committed tags plus running and failed pulls,
// sorted by name.
func (s *Store) List() ([]Image, error) {
	tags, err := s.readTags()
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	byName := make(map[string]Image)
	for _, t := range tags {
		rec, err := readRecord(s.blobDir(t.Digest))
		if err != nil {
			continue // deleted meanwhile
		}
		byName[t.Name] = recordImage(t.Name, rec, t.CreatedAt)
	}
	s.mu.Lock()
	for n, j := range s.jobs {
		byName[n] = s.snapshot(j)
	}
	s.mu.Unlock()
	out := make([]Image, 0, len(byName))
	for _, img := range byName {
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RootDisk returns the path of the committed root disk of digest: a
// read-only (0444) file that is never rewritten. ErrNotFound unless the
// image is ready.
func (s *Store) RootDisk(digest string) (string, error) {
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 || strings.ContainsAny(digest[7:], "/.") {
		return "", fmt.Errorf("root disk of %q: %w", digest, errdefs.ErrInvalidArgument)
	}
	dir := s.blobDir(digest)
	rec, err := readRecord(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("root disk of %s: %w", digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("root disk of %s: %w", digest, err)
	}
	return filepath.Join(dir, rec.Disk), nil
}

// Delete removes the tag ref and, when no other tag points at its digest,
// the image directory with its root disk. It refuses with ErrConflict
// while Config.InUse names users of the digest or while a pull of ref is
// running; a failed pull's record is simply forgotten.
func (s *Store) Delete(ctx context.Context, ref string) error {
	n, err := ParseRef(ref)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if j, ok := s.jobs[n]; ok {
		if j.img.Status != StatusFailed {
			return fmt.Errorf("delete image %s: a pull is %s: %w", n, j.img.Status, errdefs.ErrConflict)
		}
		delete(s.jobs, n)
		if _, err := os.Stat(s.tagPath(n)); err != nil {
			return nil // only the failed record existed
		}
	}
	t, err := readTag(s.tagPath(n))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete image %s: %w", n, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete image %s: %w", n, err)
	}
	if s.cfg.InUse != nil {
		if users := s.cfg.InUse(t.Digest); len(users) > 0 {
			return fmt.Errorf("delete image %s: used by %s: %w", n, strings.Join(users, ", "), errdefs.ErrConflict)
		}
	}
	if _, busy := s.converting[t.Digest]; busy {
		return fmt.Errorf("delete image %s: digest %s is being converted: %w", n, t.Digest, errdefs.ErrConflict)
	}
	if err := os.Remove(s.tagPath(n)); err != nil {
		return fmt.Errorf("delete image %s: %w", n, err)
	}
	tags, err := s.readTags()
	if err != nil {
		return fmt.Errorf("delete image %s: %w", n, err)
	}
	for _, other := range tags {
		if other.Digest == t.Digest {
			return nil // another name still points at it
		}
	}
	for _, j := range s.jobs {
		if j.img.Digest == t.Digest && j.img.Status != StatusFailed {
			return nil // a pull under another name is about to tag it
		}
	}
	if err := s.removeBlob(t.Digest); err != nil {
		return fmt.Errorf("delete image %s: %w", n, err)
	}
	s.log.Info("image deleted", "name", n, "digest", t.Digest)
	return nil
}

// removeBlob removes a committed image directory: renamed into tmp first,
// so a crash mid-removal leaves staging that Open sweeps, never a digest
// directory without its disk.
func (s *Store) removeBlob(digest string) error {
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "delete-")
	if err != nil {
		return err
	}
	if err := os.Rename(s.blobDir(digest), filepath.Join(tmp, "img")); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.RemoveAll(tmp)
}

// Wait blocks until the pull of ref finishes and returns the image: ready,
// or the pull's classed error when it failed. With no pull running it
// returns the committed image (or ErrNotFound).
func (s *Store) Wait(ctx context.Context, ref string) (Image, error) {
	n, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	s.mu.Lock()
	j, ok := s.jobs[n]
	s.mu.Unlock()
	if !ok {
		return s.committed(n)
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		return Image{}, fmt.Errorf("wait for image %s: %w", n, ctx.Err())
	}
	s.mu.Lock()
	img := s.snapshot(j)
	s.mu.Unlock()
	if img.Status == StatusFailed {
		return img, img.Err
	}
	return img, nil
}

// Ensure returns the ready image ref, pulling it first (and waiting) when
// it is not in the store: what creating an instance from an image needs.
// A failed earlier pull is retried.
func (s *Store) Ensure(ctx context.Context, ref string, opts PullOptions) (Image, error) {
	n, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	s.mu.Lock()
	j, running := s.jobs[n]
	running = running && j.img.Status != StatusFailed
	s.mu.Unlock()
	if !running {
		if img, err := s.committed(n); err == nil {
			return img, nil
		}
		if _, err := s.Pull(ref, opts); err != nil {
			return Image{}, err
		}
	}
	return s.Wait(ctx, ref)
}

func readTag(p string) (tagRecord, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return tagRecord{}, err
	}
	var t tagRecord
	if err := jsonUnmarshal(b, &t); err != nil {
		return tagRecord{}, fmt.Errorf("%s: %w", p, err)
	}
	return t, nil
}

// lockWait is how long Open waits for the store's lock. A daemon killed a
// moment ago may still have it held, for an instant, by a child that was
// between fork and exec, or by a dying mkfs (Pdeathsig): waiting briefly
// lets a restart succeed; a live daemon holds it longer and is refused.
const lockWait = 3 * time.Second

func lockWithin(f *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil || !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
