package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/zygote/zygote/guest/agentproto"
)

// CpRequest is the first text frame of a cp WebSocket (hypeman's fields,
// then zygote extensions).
type CpRequest struct {
	Direction   string `json:"direction"` // "to" (into the guest) or "from"
	GuestPath   string `json:"guest_path"`
	IsDir       bool   `json:"is_dir,omitempty"`
	Mode        uint32 `json:"mode,omitempty"`
	FollowLinks bool   `json:"follow_links,omitempty"`
	UID         uint32 `json:"uid,omitempty"`
	GID         uint32 `json:"gid,omitempty"`
	// Extensions (to): create a symlink instead of a file; set the mtime.
	LinkTarget string `json:"link_target,omitempty"`
	Mtime      int64  `json:"mtime,omitempty"`
	MtimeNsec  int64  `json:"mtime_nsec,omitempty"`
	// KeepLinks (from) sends every symlink with its target verbatim, as
	// docker cp does. Without it, symlinks whose target is absolute or
	// climbs out with ".." are left out: hypeman's client refuses them.
	KeepLinks bool `json:"keep_links,omitempty"`
}

// CpMessage decodes every text frame of a cp WebSocket (clients use it);
// Type says which fields are set: "header" (an entry of a copy from the guest),
// "end" (the entry's bytes are complete; Final on the last), "result",
// "error".
type CpMessage struct {
	Type string `json:"type"`
	// header
	Path       string `json:"path,omitempty"`
	Mode       uint32 `json:"mode,omitempty"`
	IsDir      bool   `json:"is_dir,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	Size       int64  `json:"size,omitempty"`
	Mtime      int64  `json:"mtime,omitempty"`
	MtimeNsec  int64  `json:"mtime_nsec,omitempty"`
	UID        uint32 `json:"uid,omitempty"`
	GID        uint32 `json:"gid,omitempty"`
	// end
	Final bool `json:"final,omitempty"`
	// result
	Success      bool   `json:"success,omitempty"`
	BytesWritten int64  `json:"bytes_written,omitempty"`
	Error        string `json:"error,omitempty"`
	// error
	Message string `json:"message,omitempty"`
}

// CpHeader, CpEnd and CpResult are what the server writes, with every
// field hypeman's client reads present (CpMessage omits empty ones).
type CpHeader struct {
	Type       string `json:"type"` // "header"
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"`
	IsDir      bool   `json:"is_dir"`
	IsSymlink  bool   `json:"is_symlink"`
	LinkTarget string `json:"link_target"`
	Size       int64  `json:"size"`
	Mtime      int64  `json:"mtime"`
	MtimeNsec  int64  `json:"mtime_nsec"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
}

// CpEnd ends an entry of a copy out of the guest; Final on the last.
type CpEnd struct {
	Type  string `json:"type"` // "end"
	Final bool   `json:"final"`
}

// CpResult answers a "to" transfer, and closes a "from" one.
type CpResult struct {
	Type         string `json:"type"` // "result"
	Success      bool   `json:"success"`
	BytesWritten int64  `json:"bytes_written"`
	Error        string `json:"error,omitempty"`
}

// cpChunk is the largest binary frame the server sends.
const cpChunk = 32 << 10

// cpWriteTimeout bounds one frame write: a client that stops reading ends
// its session instead of holding it forever.
const cpWriteTimeout = 2 * time.Minute

// cp serves hypeman's cp WebSocket (see openapi.yaml's description): one
// transfer per request frame. zygote extension: after a "to" transfer's
// result the client may send the next request on the same connection.
func (s *Server) cp(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("id")
	_, release, err := s.m.OpenSession(r.Context(), ref)
	if err != nil {
		writeError(w, err) // before the upgrade: a plain 404/409/429
		return
	}
	defer release()
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	// A hijacked connection's context does not end when the client leaves;
	// a failed read or write does.
	ctx := context.WithoutCancel(r.Context())
	out := &wsWriter{conn: conn}
	for first := true; ; first = false {
		mt, raw, err := conn.ReadMessage()
		if err != nil {
			return // the client is done (or gone)
		}
		var req CpRequest
		if mt != websocket.TextMessage || json.Unmarshal(raw, &req) != nil {
			out.text(CpMessage{Type: "error", Message: "the first message must be a JSON text frame {direction, guest_path, ...}"})
			return
		}
		switch req.Direction {
		case "from":
			if first {
				s.cpFrom(ctx, ref, req, out)
			}
			return // one per connection
		case "to":
			if !s.cpTo(ctx, ref, req, conn, out) {
				return
			}
		default:
			out.text(CpMessage{Type: "error", Message: fmt.Sprintf("direction %q: want to or from", req.Direction), Path: req.GuestPath})
			return
		}
	}
}

// frame writes one frame, giving up after cpWriteTimeout.
func (w *wsWriter) frame(mt int, raw []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn.SetWriteDeadline(time.Now().Add(cpWriteTimeout))
	return w.conn.WriteMessage(mt, raw)
}

func (w *wsWriter) msg(m any) error {
	raw, _ := json.Marshal(m)
	return w.frame(websocket.TextMessage, raw)
}

// linkEscapes is hypeman's client-side test for a symlink it refuses: an
// absolute target, or one that starts by climbing with "..".
func linkEscapes(target string) bool {
	return path.IsAbs(target) || strings.HasPrefix(path.Clean(target), "..")
}

func (s *Server) cpFrom(ctx context.Context, ref string, req CpRequest, out *wsWriter) {
	pendingEnd := false
	buf := make([]byte, cpChunk)
	var clientGone error
	_, err := s.m.CopyFrom(ctx, ref, agentproto.CopyFromRequest{Path: req.GuestPath, FollowLinks: req.FollowLinks},
		func(h agentproto.FileHeader, r io.Reader) error {
			if h.IsSymlink && !req.KeepLinks && linkEscapes(h.LinkTarget) {
				s.log.Info("cp: symlink left out (target outside the copy; the client did not ask for keep_links)",
					"instance", ref, "path", h.Path, "target", h.LinkTarget)
				return nil
			}
			if pendingEnd {
				if err := out.msg(CpEnd{Type: "end"}); err != nil {
					clientGone = err
					return err
				}
			}
			if err := out.msg(CpHeader{Type: "header", Path: h.Path, Mode: h.Mode, IsDir: h.IsDir, IsSymlink: h.IsSymlink,
				LinkTarget: h.LinkTarget, Size: h.Size, Mtime: h.Mtime, MtimeNsec: h.MtimeNsec, UID: h.UID, GID: h.GID}); err != nil {
				clientGone = err
				return err
			}
			pendingEnd = true
			for {
				n, rerr := r.Read(buf)
				if n > 0 {
					if err := out.frame(websocket.BinaryMessage, buf[:n]); err != nil {
						clientGone = err
						return err
					}
				}
				if rerr == io.EOF {
					return nil
				}
				if rerr != nil {
					return rerr
				}
			}
		})
	if clientGone != nil {
		return
	}
	if err == nil && !pendingEnd {
		err = fmt.Errorf("%s is a symlink pointing outside the copy; ask with keep_links to receive it", req.GuestPath)
	}
	if err != nil {
		s.log.Info("cp from failed", "instance", ref, "path", req.GuestPath, "err", err)
		out.msg(CpMessage{Type: "error", Message: err.Error(), Path: req.GuestPath})
		return
	}
	out.msg(CpEnd{Type: "end", Final: true})
	out.msg(CpResult{Type: "result", Success: true})
}

// cpTo runs one "to" transfer and reports whether the connection can take
// another request.
func (s *Server) cpTo(ctx context.Context, ref string, req CpRequest, conn *websocket.Conn, out *wsWriter) bool {
	in := &wsFileReader{conn: conn}
	n, err := s.m.CopyTo(ctx, ref, agentproto.CopyToRequest{
		Path: req.GuestPath, IsDir: req.IsDir, LinkTarget: req.LinkTarget, Mode: req.Mode & 0o7777,
		UID: req.UID, GID: req.GID, Mtime: req.Mtime, MtimeNsec: req.MtimeNsec,
	}, in)
	// Read up to the client's end marker, so that the result answers it.
	if derr := in.drain(); derr != nil {
		return false
	}
	if err != nil {
		s.log.Info("cp to failed", "instance", ref, "path", req.GuestPath, "err", err)
		return out.msg(CpResult{Type: "result", Success: false, Error: err.Error()}) == nil
	}
	return out.msg(CpResult{Type: "result", Success: true, BytesWritten: n}) == nil
}

// wsFileReader reads a file's binary frames up to the text {"type":"end"}.
type wsFileReader struct {
	conn  *websocket.Conn
	cur   io.Reader
	ended bool
	err   error
}

var errCpProtocol = errors.New(`cp: a text frame other than {"type":"end"} inside a file`)

func (r *wsFileReader) Read(p []byte) (int, error) {
	for {
		if r.ended {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		if r.cur != nil {
			n, err := r.cur.Read(p)
			if err == io.EOF {
				r.cur = nil
				if n == 0 {
					continue
				}
				return n, nil
			}
			if err != nil {
				r.err = fmt.Errorf("cp client went away: %w", err)
			}
			return n, r.err
		}
		mt, rd, err := r.conn.NextReader()
		if err != nil {
			r.err = fmt.Errorf("cp client went away: %w", err)
			return 0, r.err
		}
		if mt == websocket.BinaryMessage {
			r.cur = rd
			continue
		}
		raw, err := io.ReadAll(io.LimitReader(rd, 4096))
		var m CpMessage
		if err != nil || json.Unmarshal(raw, &m) != nil || m.Type != "end" {
			r.err = errCpProtocol
			return 0, r.err
		}
		r.ended = true
	}
}

// drain reads what is left of the file; it fails when the client went
// away or broke the protocol.
func (r *wsFileReader) drain() error {
	_, err := io.Copy(io.Discard, r)
	return err
}
