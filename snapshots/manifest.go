// Package snapshots owns the on-disk format of a snapshot: a directory
// that is a full, owned copy of an instance's files plus manifest.json,
// which makes the snapshot self-describing and self-checking. The store
// indexes snapshots; the manifest is what a restore or fork verifies before
// it trusts the files.
//
// Contract:
//   - Write publishes the manifest atomically (temp file, fsync, rename,
//     fsync of the directory); a directory without a valid manifest is not
//     a snapshot.
//   - Read refuses a manifest with the wrong magic, a newer version than
//     this binary understands, a checksum mismatch, or payload files that
//     are missing or have changed size, each with a clear error
//     (errdefs.ErrInvalidState: the snapshot is unusable, not the request).
//   - A snapshot never references another directory: Files lists names
//     inside its own directory only.
//   - The format is this package's own: Manifest, Spec and Kind are
//     declared here, not borrowed from the store, so a change to a store
//     record cannot change the bytes on disk. Changing the JSON encoding of
//     any of them is a format change: bump Version and teach Read the old
//     one (testdata/v1 holds a manifest as version 1 wrote it; the tests
//     read it and re-encode it byte for byte).
package snapshots

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/zygote/zygote/errdefs"
)

// ManifestName is the manifest's file name in a snapshot directory.
const ManifestName = "manifest.json"

const (
	magic = "zygote-snapshot"
	// Version is the manifest format this binary writes. Readers accept
	// this version and older ones.
	Version = 1
)

// File is one payload file of a snapshot.
type File struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// External is a host resource a snapshot refers to that a restore or fork
// must rebind (a tap device, a vsock path). The QEMU driver keeps every
// endpoint inside the instance directory, so its snapshots list none; the
// field is part of the format so drivers that do need rebinding can record
// them.
type External struct {
	Kind  string `json:"kind"`
	Value string `json:"value"`
}

// Kind says what a snapshot holds.
type Kind string

const (
	// KindStandby holds memory, device state and disks.
	KindStandby Kind = "Standby"
	// KindStopped holds disks only.
	KindStopped Kind = "Stopped"
)

// Spec is the machine a snapshot's files belong to: what a restore or a
// fork of it must reproduce. Field order and JSON names are part of the
// format (the checksum is computed over this encoding).
type Spec struct {
	Hypervisor  string            `json:"hypervisor"`
	VCPUs       int               `json:"vcpus"`
	MemoryBytes int64             `json:"memory_bytes"`
	KernelArgs  string            `json:"kernel_args,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Image       string            `json:"image,omitempty"`
	// Disk facts of an image instance (optional fields, added in wave 2;
	// an older manifest has none, as an instance without image).
	ImageDigest  string `json:"image_digest,omitempty"`
	RootFSType   string `json:"rootfs_type,omitempty"`
	OverlayBytes int64  `json:"overlay_bytes,omitempty"`
	// Network: the machine has a NIC (optional field, added in wave 2;
	// older manifests without it describe machines without a NIC).
	Network bool `json:"network,omitempty"`
	// AllowPeers: its slot may talk to other slots that allow peers
	// (optional field, added with network.allow_peers).
	AllowPeers bool `json:"allow_peers,omitempty"`
	// DriverState is the driver's opaque state, carried byte for byte.
	DriverState json.RawMessage `json:"driver_state,omitempty"`
}

// Manifest describes a snapshot.
type Manifest struct {
	Magic              string     `json:"magic"`
	Version            int        `json:"version"`
	ID                 string     `json:"id"`
	Name               string     `json:"name,omitempty"`
	Kind               Kind       `json:"kind"`
	SourceInstanceID   string     `json:"source_instance_id"`
	SourceInstanceName string     `json:"source_instance_name"`
	Spec               Spec       `json:"spec"`
	CacheKey           string     `json:"cache_key,omitempty"`
	Hostname           string     `json:"hostname,omitempty"`
	BootID             string     `json:"boot_id,omitempty"`
	CreatedAt          time.Time  `json:"created_at"`
	Files              []File     `json:"files"`
	Externals          []External `json:"externals"`
	// Checksum is the SHA-256 of the manifest encoded with Checksum empty.
	Checksum string `json:"checksum"`
}

func (m Manifest) sum() (string, error) {
	m.Checksum = ""
	raw, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(raw)
	return hex.EncodeToString(h[:]), nil
}

// Write lists the payload files of dir, and publishes the manifest.
// It returns the payload's size on disk (allocated bytes).
func Write(dir string, m Manifest) (int64, error) {
	m.Magic, m.Version = magic, Version
	m.Files = nil
	if m.Externals == nil {
		m.Externals = []External{}
	}
	var allocated int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if e.Name() == ManifestName || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		m.Files = append(m.Files, File{Name: e.Name(), Size: fi.Size()})
		allocated += allocatedBytes(fi)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Name < m.Files[j].Name })
	if m.Checksum, err = m.sum(); err != nil {
		return 0, err
	}
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, err
	}
	tmp := filepath.Join(dir, ManifestName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	_, werr := f.Write(raw)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("write snapshot manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestName)); err != nil {
		return 0, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	return allocated + int64(len(raw)), d.Sync()
}

// Read loads and verifies the manifest of dir.
func Read(dir string) (Manifest, error) {
	var m Manifest
	raw, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return m, fmt.Errorf("snapshot %s has no manifest: %w", dir, errdefs.ErrInvalidState)
		}
		return m, err
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, fmt.Errorf("snapshot manifest %s is corrupt: %v: %w", dir, err, errdefs.ErrInvalidState)
	}
	if m.Magic != magic {
		return m, fmt.Errorf("snapshot manifest %s: not a zygote snapshot (magic %q): %w", dir, m.Magic, errdefs.ErrInvalidState)
	}
	if m.Version > Version {
		return m, fmt.Errorf("snapshot %s has format version %d; this zygote reads up to %d: %w", dir, m.Version, Version, errdefs.ErrNotImplemented)
	}
	want, err := m.sum()
	if err != nil {
		return m, err
	}
	if want != m.Checksum {
		return m, fmt.Errorf("snapshot manifest %s: checksum mismatch (the manifest was modified or damaged): %w", dir, errdefs.ErrInvalidState)
	}
	var problems []string
	for _, f := range m.Files {
		if strings.ContainsRune(f.Name, os.PathSeparator) || f.Name == ".." {
			return m, fmt.Errorf("snapshot manifest %s names a file outside its directory: %q: %w", dir, f.Name, errdefs.ErrInvalidState)
		}
		fi, err := os.Stat(filepath.Join(dir, f.Name))
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s is missing", f.Name))
		case fi.Size() != f.Size:
			problems = append(problems, fmt.Sprintf("%s is %d bytes, the manifest says %d", f.Name, fi.Size(), f.Size))
		}
	}
	if len(problems) > 0 {
		return m, fmt.Errorf("snapshot %s is damaged: %s: %w", dir, strings.Join(problems, "; "), errdefs.ErrInvalidState)
	}
	return m, nil
}

// HasFile reports whether the manifest lists name.
func (m Manifest) HasFile(name string) bool {
	for _, f := range m.Files {
		if f.Name == name {
			return true
		}
	}
	return false
}
