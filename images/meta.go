package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// On-disk layout under Config.Root (conventionally <data>/images):
//
//	lock                       flock held by the open Store
//	blobs/sha256/<hex>/        one committed image, named by manifest digest;
//	    rootfs.ext4|rootfs.erofs   the read-only root disk (0444, never rewritten)
//	    image.json                 record (digest, config, size, format)
//	tags/<sha256(name)>.json   {name, digest}: a tag pointing at a digest
//	tmp/<id>/                  staging for one conversion; anything here at
//	                           Open is half-done work and is removed
//
// A digest directory is built entirely inside tmp/ and renamed into blobs/
// in one step, so it either exists complete or not at all. Tags are written
// to a temporary file and renamed.

const recordFile = "image.json"

// record is image.json: what a committed image directory holds.
type record struct {
	Digest     string            `json:"digest"`
	Format     string            `json:"format"`
	Disk       string            `json:"disk"`
	SizeBytes  int64             `json:"size_bytes"`
	Platform   string            `json:"platform,omitempty"`
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	User       string            `json:"user,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// tagRecord is tags/<sha256(name)>.json.
type tagRecord struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Store) blobDir(digest string) string {
	return filepath.Join(s.root, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func (s *Store) tagPath(name string) string {
	h := sha256.Sum256([]byte(name))
	return filepath.Join(s.root, "tags", hex.EncodeToString(h[:])+".json")
}

func readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, recordFile), err)
	}
	return &r, nil
}

// writeFileSync writes data to path via a temporary file in the same
// directory, fsyncs it, renames it into place and fsyncs the directory.
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
