package volumes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
)

// DiskName is a volume's disk file inside its directory.
const DiskName = "volume.ext4"

const metaName = "volume.json"

// MaxSize bounds a volume (sparse: it costs what is written).
const MaxSize = 16 << 40

// Volume is a named data disk.
type Volume struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	SizeBytes int64             `json:"size_bytes"`
	Tags      map[string]string `json:"tags,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
}

// Config wires a Store.
type Config struct {
	// Root is <data>/volumes.
	Root string
	// InUse names the users of a volume (instances attaching it); Delete
	// refuses while it names any.
	InUse  func(id string) []string
	Logger *slog.Logger
}

// Store keeps the volumes of one data directory.
type Store struct {
	cfg Config
	mu  sync.Mutex
}

// Open opens (creating) the store and removes staging leftovers.
func Open(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, errors.New("volumes: Config needs Root")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.RemoveAll(filepath.Join(cfg.Root, "tmp")); err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Root, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	return &Store{cfg: cfg}, nil
}

// CreateRequest describes a new volume.
type CreateRequest struct {
	Name      string
	SizeBytes int64
	// ID is optional (hypeman lets a client choose it).
	ID   string
	Tags map[string]string
}

// Create makes a volume: a sparse ext4 disk of SizeBytes.
func (s *Store) Create(ctx context.Context, req CreateRequest) (Volume, error) {
	if err := names.Validate("volume name", req.Name); err != nil {
		return Volume{}, err
	}
	if req.SizeBytes < guest.MinOverlaySize || req.SizeBytes > MaxSize {
		return Volume{}, fmt.Errorf("volume size %d: want %d MiB to %d TiB: %w", req.SizeBytes, guest.MinOverlaySize>>20, MaxSize>>40, errdefs.ErrInvalidArgument)
	}
	req.SizeBytes = (req.SizeBytes + 4095) &^ 4095
	if req.ID == "" {
		req.ID = ids.New()
	} else if err := names.Validate("volume id", req.ID); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	all, err := s.list()
	if err != nil {
		return Volume{}, err
	}
	for _, v := range all {
		if v.Name == req.Name || v.ID == req.ID {
			return Volume{}, fmt.Errorf("volume %s: a volume with this name or id exists: %w", req.Name, errdefs.ErrAlreadyExists)
		}
	}
	v := Volume{ID: req.ID, Name: req.Name, SizeBytes: req.SizeBytes, Tags: req.Tags, CreatedAt: time.Now().UTC()}
	stage, err := os.MkdirTemp(filepath.Join(s.cfg.Root, "tmp"), "create-")
	if err != nil {
		return Volume{}, classify(err)
	}
	defer os.RemoveAll(stage) // after the rename: gone already
	if err := guest.FormatOverlay(ctx, filepath.Join(stage, DiskName), v.SizeBytes); err != nil {
		return Volume{}, classify(fmt.Errorf("volume %s: %w", v.Name, err))
	}
	b, _ := json.Marshal(v)
	if err := writeSync(filepath.Join(stage, metaName), b); err != nil {
		return Volume{}, classify(err)
	}
	if err := os.Rename(stage, s.dir(v.ID)); err != nil {
		return Volume{}, classify(err)
	}
	syncDir(s.cfg.Root)
	s.cfg.Logger.Info("volume created", "volume", v.ID, "name", v.Name, "size", v.SizeBytes)
	return v, nil
}

func (s *Store) dir(id string) string { return filepath.Join(s.cfg.Root, id) }

// DiskPath is the disk file of volume id.
func (s *Store) DiskPath(id string) string { return filepath.Join(s.dir(id), DiskName) }

// Get returns the volume with id or name ref.
func (s *Store) Get(ref string) (Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.get(ref)
}

func (s *Store) get(ref string) (Volume, error) {
	all, err := s.list()
	if err != nil {
		return Volume{}, err
	}
	for _, v := range all {
		if v.ID == ref || v.Name == ref {
			return v, nil
		}
	}
	return Volume{}, fmt.Errorf("volume %s: %w", ref, errdefs.ErrNotFound)
}

// List returns every volume, by name.
func (s *Store) List() ([]Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.list()
}

func (s *Store) list() ([]Volume, error) {
	entries, err := os.ReadDir(s.cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	var out []Volume
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "tmp" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.cfg.Root, e.Name(), metaName))
		if err != nil {
			continue // not a committed volume
		}
		var v Volume
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("volume %s: %w", e.Name(), err)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes a volume nobody attaches.
func (s *Store) Delete(ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.get(ref)
	if err != nil {
		return err
	}
	if s.cfg.InUse != nil {
		if users := s.cfg.InUse(v.ID); len(users) > 0 {
			return fmt.Errorf("delete volume %s: attached to %s: %w", v.Name, strings.Join(users, ", "), errdefs.ErrConflict)
		}
	}
	// Renamed into tmp first: a crash mid-removal leaves staging Open sweeps.
	tmp, err := os.MkdirTemp(filepath.Join(s.cfg.Root, "tmp"), "delete-")
	if err != nil {
		return err
	}
	if err := os.Rename(s.dir(v.ID), filepath.Join(tmp, "v")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("delete volume %s: %w", v.Name, err)
	}
	s.cfg.Logger.Info("volume deleted", "volume", v.ID, "name", v.Name)
	return os.RemoveAll(tmp)
}

func writeSync(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(p string) {
	if d, err := os.Open(p); err == nil {
		d.Sync()
		d.Close()
	}
}

func classify(err error) error {
	if err == nil || errdefs.IsResourceExhausted(err) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || strings.Contains(err.Error(), "No space left on device") {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}
