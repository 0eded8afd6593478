package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/logfile"
)

// maxTailRead bounds how much of a log file a tail reads; maxLine how much
// of a line without a newline a follow buffers before sending it.
const (
	maxTailRead = 8 << 20
	maxLine     = 64 << 10
)

// logs streams a log as server-sent events, one JSON string per line, the
// wire format hypeman's SDK decodes.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tail := 100
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, fmt.Errorf("tail=%q: want a whole number ≥ 0: %w", v, errdefs.ErrInvalidArgument))
			return
		}
		tail = n
	}
	follow, err := boolParam(r, "follow")
	if err != nil {
		writeError(w, err)
		return
	}
	source := q.Get("source")
	switch source {
	case "":
		source = "app"
	case "hypeman":
		writeError(w, withCode(http.StatusNotImplemented, "not_supported",
			fmt.Errorf("log source hypeman: zygote keeps no per-instance operations log (the daemon's own log has them): %w", errdefs.ErrNotImplemented)))
		return
	}
	ref := r.PathValue("id")
	inst, path, err := s.m.LogPath(r.Context(), ref, source)
	if err != nil {
		writeError(w, err)
		return
	}
	// Just after a rotation the live file may not exist yet while the
	// previous one does: only when neither exists is there no log.
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(logfile.Rotated(path, 1)); serr != nil {
			writeError(w, withCode(http.StatusNotFound, "log_not_found",
				fmt.Errorf("instance %s has no %s log yet: %w", inst.Name, source, errdefs.ErrNotFound)))
			return
		}
		f = nil
	} else if err != nil {
		writeError(w, err)
		return
	}
	var offset int64
	var lines []string
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	if f != nil {
		lines, offset, err = lastLines(f, tail)
		if err != nil {
			writeError(w, err)
			return
		}
	}
	if len(lines) < tail {
		// Just after a rotation the live file is short: the rest of the
		// tail is at the end of the previous file.
		if old, err := os.Open(logfile.Rotated(path, 1)); err == nil {
			more, _, _ := lastLines(old, tail-len(lines))
			old.Close()
			lines = append(more, lines...)
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	send := func(line string) error {
		raw, _ := json.Marshal(strings.TrimRight(line, "\r"))
		_, err := fmt.Fprintf(w, "data: %s\n\n", raw)
		return err
	}
	for _, l := range lines {
		if send(l) != nil {
			return
		}
	}
	rc.Flush()
	if !follow {
		return
	}
	var partial []byte
	buf := make([]byte, 64<<10)
	for {
		wrote := false
		if f == nil {
			f, _ = os.Open(path) // the live file reappears after a rotation
		}
		for f != nil {
			n, err := f.ReadAt(buf, offset)
			offset += int64(n)
			data := append(partial, buf[:n]...)
			for {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					break
				}
				if send(string(data[:i])) != nil {
					return
				}
				wrote = true
				data = data[i+1:]
			}
			partial = append([]byte(nil), data...)
			if len(partial) > maxLine { // a guest printing without newlines
				if send(string(partial)) != nil {
					return
				}
				wrote, partial = true, nil
			}
			if err != nil || n == 0 {
				break
			}
		}
		if wrote {
			rc.Flush()
		}
		if f != nil {
			// The log is capped (internal/logfile): a rotation puts a new
			// file at path once the old one is complete, and a cap of a
			// file another process appends to truncates it in place.
			if cur, err := os.Stat(path); err == nil {
				if old, err := f.Stat(); err == nil && !os.SameFile(cur, old) {
					f.Close()
					f, offset = nil, 0
					continue // read the new file at once
				} else if cur.Size() < offset {
					offset = 0
				}
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := s.m.Get(r.Context(), inst.ID); errdefs.IsNotFound(err) {
			return // deleted: the stream ends
		}
	}
}

// lastLines returns the last n complete lines of f and the offset just
// past them, where following continues.
func lastLines(f *os.File, n int) ([]string, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := fi.Size()
	start := max(size-maxTailRead, 0)
	raw := make([]byte, size-start)
	if _, err := f.ReadAt(raw, start); err != nil && err != io.EOF {
		return nil, 0, err
	}
	end := bytes.LastIndexByte(raw, '\n') + 1 // keep a trailing partial line for follow
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(raw[:end]))
	sc.Buffer(make([]byte, 64<<10), maxTailRead)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if start > 0 && len(lines) > 0 {
		lines = lines[1:] // the first line was cut by the read window
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, start + int64(end), nil
}
