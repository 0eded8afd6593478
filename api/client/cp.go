package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gorilla/websocket"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/errdefs"
)

// Stat describes a path in the guest (GET /instances/{id}/stat).
func (c *Client) Stat(ctx context.Context, ref, guestPath string, followLinks bool) (api.PathInfo, error) {
	var out api.PathInfo
	q := url.Values{"path": {guestPath}}
	if followLinks {
		q.Set("follow_links", "true")
	}
	return out, c.do(ctx, "GET", "/instances/"+esc(ref)+"/stat?"+q.Encode(), nil, &out)
}

// CopyOptions tune CopyToGuest and CopyFromGuest.
type CopyOptions struct {
	// Archive keeps owners (uid/gid) as docker cp -a does. Without it,
	// files copied into the guest belong to root and files copied out
	// belong to the caller.
	Archive bool
	// FollowLinks copies what a source symlink points to instead of the
	// link (docker cp -L).
	FollowLinks bool
	// Progress, when set, is called after each entry with its path (on
	// the destination side) and its size.
	Progress func(path string, size int64)
}

// CopyStats sums up a copy.
type CopyStats struct {
	Entries int
	Bytes   int64
}

// cpConn is one cp WebSocket.
type cpConn struct {
	ws *websocket.Conn
}

func (c *Client) dialCp(ctx context.Context, ref string) (*cpConn, error) {
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dialer(ctx) },
		ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
	u := "ws" + strings.TrimPrefix(c.base, "http") + "/instances/" + esc(ref) + "/cp"
	hdr := http.Header{}
	if c.token != "" {
		hdr.Set("Authorization", "Bearer "+c.token)
	}
	ws, resp, err := d.DialContext(ctx, u, hdr)
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			defer resp.Body.Close()
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("cannot reach the zygote daemon: %w", err)
	}
	return &cpConn{ws: ws}, nil
}

func (cc *cpConn) sendJSON(v any) error {
	b, _ := json.Marshal(v)
	return cc.ws.WriteMessage(websocket.TextMessage, b)
}

// readMsg reads the next text frame.
func (cc *cpConn) readMsg() (api.CpMessage, error) {
	var m api.CpMessage
	mt, raw, err := cc.ws.ReadMessage()
	if err != nil {
		return m, fmt.Errorf("cp stream: %w", err)
	}
	if mt != websocket.TextMessage || json.Unmarshal(raw, &m) != nil {
		return m, fmt.Errorf("cp stream: unexpected %d-byte frame", len(raw))
	}
	return m, nil
}

// splitDotSuffix reports whether p ends with "/." (docker cp: copy the
// directory's contents, not the directory) and returns p without it.
func splitDotSuffix(p string) (string, bool) {
	if p != "/." && strings.HasSuffix(p, "/.") {
		return strings.TrimSuffix(p, "/."), true
	}
	if p == "/." {
		return "/", true
	}
	return p, false
}

// CopyToGuest copies the host path src into the guest of ref at dst with
// docker cp's rules: a file goes to dst, or into dst when dst is a
// directory; a directory becomes dst when dst does not exist, else goes
// into it, or only its contents with a "/." suffix on src. Modes, mtimes
// and symlinks (as links) are kept; owners with Archive. The whole tree
// goes over one connection, one entry at a time; a file's bytes are read
// and sent a chunk at a time.
func (c *Client) CopyToGuest(ctx context.Context, ref, src, dst string, opt CopyOptions) (CopyStats, error) {
	var stats CopyStats
	src, contentsOnly := splitDotSuffix(src)
	stat := os.Lstat
	if opt.FollowLinks {
		stat = os.Stat
	}
	fi, err := stat(src)
	if err != nil {
		return stats, fmt.Errorf("cp: %w", err)
	}
	base := filepath.Base(src)
	if opt.FollowLinks && fi.IsDir() {
		// A link to a directory: walk the directory, under the link's name.
		if src, err = filepath.EvalSymlinks(src); err != nil {
			return stats, fmt.Errorf("cp: %w", err)
		}
	}
	if !strings.HasPrefix(dst, "/") {
		return stats, fmt.Errorf("cp: guest path %q must be absolute: %w", dst, errdefs.ErrInvalidArgument)
	}
	di, err := c.Stat(ctx, ref, dst, true)
	if err != nil {
		return stats, fmt.Errorf("cp: stat %s in the guest: %w", dst, err)
	}
	if di.Error != nil {
		return stats, fmt.Errorf("cp: stat %s in the guest: %s", dst, *di.Error)
	}
	target := path.Clean(dst)
	switch {
	case !di.Exists:
		if !fi.IsDir() && strings.HasSuffix(dst, "/") {
			return stats, fmt.Errorf("cp: destination directory %s does not exist in the guest: %w", dst, errdefs.ErrNotFound)
		}
		pi, err := c.Stat(ctx, ref, path.Dir(target), true)
		if err != nil {
			return stats, err
		}
		if !pi.Exists || !pi.IsDir {
			return stats, fmt.Errorf("cp: %s: no such directory in the guest: %w", path.Dir(target), errdefs.ErrNotFound)
		}
	case di.IsDir:
		if !fi.IsDir() || !contentsOnly {
			target = path.Join(target, base)
		}
	default: // an existing file
		if fi.IsDir() {
			return stats, fmt.Errorf("cp: cannot copy a directory over the file %s: %w", dst, errdefs.ErrInvalidArgument)
		}
	}
	cc, err := c.dialCp(ctx, ref)
	if err != nil {
		return stats, err
	}
	defer cc.ws.Close()
	stop := context.AfterFunc(ctx, func() { cc.ws.Close() })
	defer stop()
	fail := func(err error) (CopyStats, error) {
		if ctx.Err() != nil {
			return stats, ctx.Err()
		}
		return stats, err
	}

	var dirs []api.CpRequest // re-sent last, deepest first: their mtimes
	send := func(hostPath, guestPath string, fi fs.FileInfo) error {
		req := api.CpRequest{Direction: "to", GuestPath: guestPath, Mtime: fi.ModTime().Unix(), MtimeNsec: int64(fi.ModTime().Nanosecond())}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil {
			req.Mode = st.Mode & 0o7777
			if opt.Archive {
				req.UID, req.GID = st.Uid, st.Gid
			}
		}
		var f *os.File
		switch {
		case fi.IsDir():
			req.IsDir = true
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(hostPath)
			if err != nil {
				return err
			}
			req.LinkTarget = t
		case fi.Mode().IsRegular():
			var err error
			if f, err = os.Open(hostPath); err != nil {
				return err
			}
			defer f.Close()
		default:
			return nil // devices, fifos, sockets: nothing to copy
		}
		var r io.Reader
		if f != nil {
			r = f
		}
		n, err := cc.put(req, r)
		if err != nil {
			return err
		}
		stats.Entries++
		stats.Bytes += n
		if opt.Progress != nil {
			opt.Progress(guestPath, n)
		}
		if req.IsDir {
			dirs = append(dirs, req)
		}
		return nil
	}
	if !fi.IsDir() {
		if err := send(src, target, fi); err != nil {
			return fail(err)
		}
		return stats, nil
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		efi, err := d.Info()
		if p == src {
			efi = fi // with FollowLinks, the directory a link names
		}
		if err != nil {
			return err
		}
		return send(p, path.Join(target, filepath.ToSlash(rel)), efi)
	})
	if err != nil {
		return fail(err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := cc.put(dirs[i], nil); err != nil {
			return fail(err)
		}
	}
	return stats, nil
}

// put sends one "to" request (and the file's bytes) and waits for its
// result.
func (cc *cpConn) put(req api.CpRequest, r io.Reader) (int64, error) {
	if err := cc.sendJSON(req); err != nil {
		return 0, fmt.Errorf("cp stream: %w", err)
	}
	if r != nil {
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if werr := cc.ws.WriteMessage(websocket.BinaryMessage, buf[:n]); werr != nil {
					return 0, fmt.Errorf("cp stream: %w", werr)
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return 0, fmt.Errorf("cp: read %s: %w", req.GuestPath, err)
			}
		}
	}
	if err := cc.sendJSON(api.CpMessage{Type: "end"}); err != nil {
		return 0, fmt.Errorf("cp stream: %w", err)
	}
	m, err := cc.readMsg()
	if err != nil {
		return 0, err
	}
	switch {
	case m.Type == "error":
		return 0, fmt.Errorf("cp %s: %s", req.GuestPath, m.Message)
	case m.Type != "result":
		return 0, fmt.Errorf("cp %s: unexpected %q message", req.GuestPath, m.Type)
	case !m.Success:
		return 0, fmt.Errorf("cp %s: %s", req.GuestPath, m.Error)
	}
	return m.BytesWritten, nil
}

// CopyFromGuest copies the guest path src of ref to the host path dst with
// docker cp's rules (see CopyToGuest). Symlinks are created as links with
// their targets verbatim (an absolute target such as /etc too) and are
// never followed while writing: every entry is created beneath dst
// through directories this copy resolved without symlinks, so no entry
// the guest sends can make the copy write outside dst.
func (c *Client) CopyFromGuest(ctx context.Context, ref, src, dst string, opt CopyOptions) (CopyStats, error) {
	var stats CopyStats
	src, contentsOnly := splitDotSuffix(src)
	if !strings.HasPrefix(src, "/") {
		return stats, fmt.Errorf("cp: guest path %q must be absolute: %w", src, errdefs.ErrInvalidArgument)
	}
	si, err := c.Stat(ctx, ref, src, opt.FollowLinks)
	if err != nil {
		return stats, fmt.Errorf("cp: stat %s in the guest: %w", src, err)
	}
	if si.Error != nil {
		return stats, fmt.Errorf("cp: stat %s in the guest: %s", src, *si.Error)
	}
	if !si.Exists {
		return stats, fmt.Errorf("cp: %s: no such file or directory in the guest: %w", src, errdefs.ErrNotFound)
	}
	target := filepath.Clean(dst)
	di, err := os.Stat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !si.IsDir && strings.HasSuffix(dst, "/") {
			return stats, fmt.Errorf("cp: destination directory %s does not exist: %w", dst, errdefs.ErrNotFound)
		}
		if pi, err := os.Stat(filepath.Dir(target)); err != nil || !pi.IsDir() {
			return stats, fmt.Errorf("cp: %s: no such directory: %w", filepath.Dir(target), errdefs.ErrNotFound)
		}
	case err != nil:
		return stats, fmt.Errorf("cp: %w", err)
	case di.IsDir():
		if !si.IsDir || !contentsOnly {
			target = filepath.Join(target, path.Base(src))
		}
	default:
		if si.IsDir {
			return stats, fmt.Errorf("cp: cannot copy a directory over the file %s: %w", dst, errdefs.ErrInvalidArgument)
		}
	}

	cc, err := c.dialCp(ctx, ref)
	if err != nil {
		return stats, err
	}
	defer cc.ws.Close()
	stop := context.AfterFunc(ctx, func() { cc.ws.Close() })
	defer stop()
	if err := cc.sendJSON(api.CpRequest{Direction: "from", GuestPath: src, FollowLinks: opt.FollowLinks, KeepLinks: true}); err != nil {
		return stats, fmt.Errorf("cp stream: %w", err)
	}
	x, err := newExtractor(target, si.IsDir, opt.Archive)
	if err != nil {
		return stats, err
	}
	defer x.close()
	stats, err = x.run(cc, opt.Progress)
	if err != nil && ctx.Err() != nil {
		return stats, ctx.Err()
	}
	return stats, err
}

// run receives entries until the final end marker.
func (x *extractor) run(cc *cpConn, progress func(string, int64)) (CopyStats, error) {
	var stats CopyStats
	var prefix *string // the first header's path: every other path is beneath it
	for {
		m, err := cc.readMsg()
		if err != nil {
			return stats, err
		}
		switch m.Type {
		case "header":
		case "error":
			return stats, fmt.Errorf("cp %s: %s", m.Path, m.Message)
		case "result":
			if !m.Success {
				return stats, fmt.Errorf("cp: %s", m.Error)
			}
			continue
		default:
			return stats, fmt.Errorf("cp: unexpected %q message", m.Type)
		}
		if prefix == nil {
			prefix = &m.Path
		}
		rel, err := relPath(*prefix, m.Path)
		if err != nil {
			return stats, err
		}
		n, err := x.entry(rel, m, cc)
		if err != nil {
			return stats, err
		}
		stats.Entries++
		stats.Bytes += n
		if progress != nil {
			progress(filepath.Join(x.root, rel), n)
		}
		end, err := cc.readMsg()
		if err != nil {
			return stats, err
		}
		if end.Type == "error" {
			return stats, fmt.Errorf("cp %s: %s", end.Path, end.Message)
		}
		if end.Type != "end" {
			return stats, fmt.Errorf("cp: got %q after %s's bytes, want end", end.Type, m.Path)
		}
		if end.Final {
			return stats, x.finish()
		}
	}
}

// relPath maps a header path to a path relative to the copy's target,
// refusing anything absolute, climbing, or outside the first entry.
func relPath(prefix, p string) (string, error) {
	bad := func() (string, error) {
		return "", fmt.Errorf("cp: the server sent the entry path %q, which is not beneath %q: refused", p, prefix)
	}
	if path.IsAbs(p) || p != path.Clean(p) && p != "" || strings.Contains("/"+p+"/", "/../") {
		return bad()
	}
	if p == prefix {
		return ".", nil
	}
	if prefix == "" {
		return p, nil
	}
	rel, ok := strings.CutPrefix(p, prefix+"/")
	if !ok {
		return bad()
	}
	return rel, nil
}
