package pager

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// A working set is the order in which a restore first faulted its pages,
// as memory-file offsets, recorded per cache key. Later sessions with the
// key stream it in that order right after the handshake.
//
// File format (little endian), one file per key named by the key's SHA-256:
//
//	"ZWS1" | u32 key length | key | u64 count | count × u64 offset | u32 CRC-32 (IEEE) of all before
const wsMagic = "ZWS1"

// maxWorkingSet bounds a recording (4 GiB of 4 KiB pages).
const maxWorkingSet = 1 << 20

type wsStore struct {
	dir string
	log *slog.Logger
	wg  sync.WaitGroup // in-flight SaveAsync
}

func (w *wsStore) path(key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(w.dir, hex.EncodeToString(sum[:16])+".ws")
}

// Exists reports whether key has a recorded working set.
func (w *wsStore) Exists(key string) bool {
	_, err := os.Stat(w.path(key))
	return err == nil
}

// Load returns key's working set, or nil if none was recorded. A corrupt
// or foreign file is an error (the caller logs it and goes without).
func (w *wsStore) Load(key string) ([]int64, error) {
	b, err := os.ReadFile(w.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pager: working set: %w", err)
	}
	return decodeWorkingSet(b, key)
}

func decodeWorkingSet(b []byte, key string) ([]int64, error) {
	bad := func(why string) error { return fmt.Errorf("pager: working set of %q: %s", key, why) }
	if len(b) < 4+4+8+4 || string(b[:4]) != wsMagic {
		return nil, bad("not a working-set file")
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, bad("checksum mismatch")
	}
	kl := int(binary.LittleEndian.Uint32(body[4:]))
	if 8+kl+8 > len(body) {
		return nil, bad("truncated")
	}
	if string(body[8:8+kl]) != key {
		return nil, bad("recorded for another key")
	}
	rest := body[8+kl:]
	n := binary.LittleEndian.Uint64(rest)
	rest = rest[8:]
	if n > maxWorkingSet || uint64(len(rest)) != n*8 {
		return nil, bad("bad length")
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(rest[8*i:]))
	}
	return out, nil
}

func encodeWorkingSet(key string, offs []int64) []byte {
	var b bytes.Buffer
	b.WriteString(wsMagic)
	b.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(key))))
	b.WriteString(key)
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(offs))))
	for _, o := range offs {
		b.Write(binary.LittleEndian.AppendUint64(nil, uint64(o)))
	}
	b.Write(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(b.Bytes())))
	return b.Bytes()
}

// Save writes key's working set atomically (temp file, fsync, rename). An
// existing recording is kept: the first restore of a key is the one that
// faulted without help, so its order is the honest one.
func (w *wsStore) Save(key string, offs []int64) error {
	dst := w.path(key)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	f, err := os.CreateTemp(w.dir, ".ws-*")
	if err != nil {
		return fmt.Errorf("pager: save working set: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(encodeWorkingSet(key, offs))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pager: save working set: %w", err)
	}
	return nil
}

// SaveAsync saves in the background (fsync must not stall a fault loop);
// Wait waits for every save.
func (w *wsStore) SaveAsync(key, session string, offs []int64) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		if err := w.Save(key, offs); err != nil {
			w.log.Warn("working set not saved", "session", session, "cache_key", key, "err", err)
			return
		}
		w.log.Info("working set recorded", "session", session, "cache_key", key, "pages", len(offs))
	}()
}

func (w *wsStore) Wait() { w.wg.Wait() }
