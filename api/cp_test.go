package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances/instancestest"
)

// guestRoot is the fake agent's guest filesystem of the instance.
func (e *env) guestRoot(t *testing.T, in api.Instance) string {
	root := instancestest.FakeGuestRoot(e.h.VM(in.ID).Spec().Dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func wsURL(base, path string) string { return "ws" + strings.TrimPrefix(base, "http") + path }

func TestStatEndpoint(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	root := e.guestRoot(t, in)
	os.WriteFile(filepath.Join(root, "f"), []byte("hello"), 0o640)
	os.Symlink("f", filepath.Join(root, "l"))

	got, err := e.c.Stat(ctx, "web", "/f", false)
	if err != nil || !got.Exists || !got.IsFile || got.Mode != 0o640 || got.Size != 5 || got.Error != nil {
		t.Fatalf("stat /f = %+v, %v", got, err)
	}
	if got, err = e.c.Stat(ctx, "web", "/l", false); err != nil || !got.IsSymlink || got.LinkTarget == nil || *got.LinkTarget != "f" {
		t.Fatalf("stat /l = %+v, %v", got, err)
	}
	if got, err = e.c.Stat(ctx, "web", "/l", true); err != nil || got.IsSymlink || !got.IsFile {
		t.Fatalf("stat /l following = %+v, %v", got, err)
	}
	if got, err = e.c.Stat(ctx, "web", "/nope", false); err != nil || got.Exists {
		t.Fatalf("stat /nope = %+v, %v", got, err)
	}
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/instances/web/stat", 400},
		{"/instances/web/stat?path=/f&follow_links=maybe", 400},
		{"/instances/nope/stat?path=/f", 404},
	} {
		if resp, body := rawDo(t, "GET", e.url+tc.path, "", nil); resp.StatusCode != tc.status {
			t.Errorf("GET %s = %d %s, want %d", tc.path, resp.StatusCode, body, tc.status)
		}
	}
	e.c.StopInstance(ctx, "web")
	if _, err := e.c.Stat(ctx, "web", "/f", false); !errdefs.IsInvalidState(err) {
		t.Errorf("stat on a stopped instance: %v, want invalid_state", err)
	}
}

// hostTree makes a tree with modes, mtimes and symlinks.
func hostTree(t *testing.T, dir string) {
	t.Helper()
	mt := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	for _, err := range []error{
		os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o755),
		os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\n"), 0o755),
		os.WriteFile(filepath.Join(dir, "sub", "secret"), []byte("s3cret"), 0o600),
		os.WriteFile(filepath.Join(dir, "sub", "deep", "data"), bytes.Repeat([]byte{7}, 300_000), 0o644),
		os.Symlink("/etc", filepath.Join(dir, "etc")),
		os.Symlink("../run.sh", filepath.Join(dir, "sub", "rel")),
		os.Chmod(filepath.Join(dir, "sub"), 0o750),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"run.sh", "sub/secret", "sub/deep/data", "sub/deep", "sub", "."} {
		os.Chtimes(filepath.Join(dir, p), mt, mt)
	}
}

// describe lists a tree: type, mode, mtime, size or link target.
func describe(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "link " + target
		case fi.IsDir():
			out[rel] = fmt.Sprintf("dir %o %d", fi.Mode().Perm(), fi.ModTime().UnixNano())
		default:
			out[rel] = fmt.Sprintf("file %o %d %d", fi.Mode().Perm(), fi.ModTime().UnixNano(), fi.Size())
		}
		return nil
	})
	return out
}

func sameTree(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s (%s)", what, k, got[k])
		}
	}
}

func TestCpRoundTrip(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	root := e.guestRoot(t, in)
	src := filepath.Join(t.TempDir(), "tree")
	hostTree(t, src)
	want := describe(t, src)

	// Into a guest directory that does not exist: it becomes the tree.
	os.MkdirAll(filepath.Join(root, "srv"), 0o755)
	st, err := e.c.CopyToGuest(ctx, "web", src, "/srv/app", client.CopyOptions{})
	if err != nil || st.Entries != 8 || st.Bytes != 300_000+10+6 {
		t.Fatalf("copy to: %+v, %v", st, err)
	}
	sameTree(t, "in the guest", want, describe(t, filepath.Join(root, "srv", "app")))
	// Into an existing directory: the tree goes inside; with /. only its contents.
	if _, err := e.c.CopyToGuest(ctx, "web", src, "/srv/app", client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "srv", "app", "tree", "sub", "secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("copy into an existing directory: %v %v", fi, err)
	}
	os.MkdirAll(filepath.Join(root, "flat"), 0o755)
	if _, err := e.c.CopyToGuest(ctx, "web", src+"/.", "/flat", client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "flat", "run.sh")); err != nil {
		t.Fatalf("/. copy: %v", err)
	}
	// A file into a directory keeps its name; to a new name takes it.
	if _, err := e.c.CopyToGuest(ctx, "web", filepath.Join(src, "run.sh"), "/srv", client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CopyToGuest(ctx, "web", filepath.Join(src, "run.sh"), "/srv/renamed", client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"srv/run.sh", "srv/renamed"} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != "#!/bin/sh\n" {
			t.Errorf("%s: %q %v", p, b, err)
		}
	}
	// -L: a link to a directory copies the directory, under the link's name.
	os.Symlink(src, filepath.Join(filepath.Dir(src), "tree-link"))
	if _, err := e.c.CopyToGuest(ctx, "web", filepath.Join(filepath.Dir(src), "tree-link"), "/srv", client.CopyOptions{FollowLinks: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "srv", "tree-link", "sub", "secret")); err != nil || string(b) != "s3cret" {
		t.Errorf("-L copy of a link to a directory: %q %v", b, err)
	}
	// docker cp's refusals.
	if _, err := e.c.CopyToGuest(ctx, "web", filepath.Join(src, "run.sh"), "/nodir/", client.CopyOptions{}); !errdefs.IsNotFound(err) {
		t.Errorf("file to a missing directory: %v", err)
	}
	if _, err := e.c.CopyToGuest(ctx, "web", src, "/srv/renamed", client.CopyOptions{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("directory over a file: %v", err)
	}

	// Out again: to a new host directory, then into it.
	out := filepath.Join(t.TempDir(), "out")
	if st, err = e.c.CopyFromGuest(ctx, "web", "/srv/app/tree", out, client.CopyOptions{}); err != nil || st.Entries != 8 {
		t.Fatalf("copy from: %+v %v", st, err)
	}
	sameTree(t, "back on the host", want, describe(t, out))
	if _, err := e.c.CopyFromGuest(ctx, "web", "/srv/app/tree", out, client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, "copied into an existing directory", want, describe(t, filepath.Join(out, "tree")))
	flat := t.TempDir()
	if _, err := e.c.CopyFromGuest(ctx, "web", "/srv/app/tree/.", flat, client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(flat, "run.sh")); err != nil {
		t.Errorf("/. copy out: %v", err)
	}
	one := filepath.Join(t.TempDir(), "one")
	if _, err := e.c.CopyFromGuest(ctx, "web", "/srv/app/sub/secret", one, client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(one); string(b) != "s3cret" {
		t.Errorf("single file out: %q", b)
	}
	if _, err := e.c.CopyFromGuest(ctx, "web", "/no/such", one, client.CopyOptions{}); !errdefs.IsNotFound(err) {
		t.Errorf("missing source: %v", err)
	}
}

// hypeman's client refuses symlinks that are absolute or climb: without
// keep_links the server leaves them out.
func TestCpFromWithoutKeepLinks(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	root := e.guestRoot(t, in)
	hostTree(t, filepath.Join(root, "tree"))
	ws, _, err := websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/web/cp"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteJSON(api.CpRequest{Direction: "from", GuestPath: "/tree"})
	var paths []string
	for {
		mt, raw, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v (got %v)", err, paths)
		}
		if mt != websocket.TextMessage {
			continue
		}
		var m api.CpMessage
		json.Unmarshal(raw, &m)
		if m.Type == "header" {
			paths = append(paths, m.Path)
		}
		if m.Type == "end" && m.Final {
			break
		}
	}
	got := strings.Join(paths, " ")
	if strings.Contains(got, "tree/etc") || strings.Contains(got, "tree/sub/rel") || !strings.Contains(got, "tree/sub/deep/data") {
		t.Fatalf("headers %v: want the escaping links left out and the rest sent", paths)
	}
}

// A hostile or broken server cannot make CopyFromGuest write outside the
// destination, through a symlink it sent or a path that climbs.
func TestCpFromNeverWritesOutsideDestination(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name    string
		entries []api.CpMessage // headers; files get 4 bytes of data
	}{
		{"through a symlink it sent", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: "x/evil", IsSymlink: true, LinkTarget: outside},
			{Path: "x/evil/pwned", Size: 4, Mode: 0o644},
		}},
		{"through a symlink to a parent", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: "x/up", IsSymlink: true, LinkTarget: ".."},
			{Path: "x/up/pwned", Size: 4, Mode: 0o644},
		}},
		{"a climbing path", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: "x/../../pwned", Size: 4, Mode: 0o644},
		}},
		{"an absolute path", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: outside + "/pwned", Size: 4, Mode: 0o644},
		}},
		{"a path outside the first entry", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: "y/pwned", Size: 4, Mode: 0o644},
		}},
		{"a file over a symlink it sent", []api.CpMessage{
			{Path: "x", IsDir: true, Mode: 0o755},
			{Path: "x/link", IsSymlink: true, LinkTarget: outside + "/pwned"},
			{Path: "x/link", Size: 4, Mode: 0o644},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := hostileServer(t, tc.entries)
			c, _ := client.New(srv.URL, "")
			dst := filepath.Join(t.TempDir(), "dst")
			_, err := c.CopyFromGuest(ctx, "vm", "/x", dst, client.CopyOptions{})
			if _, serr := os.Lstat(filepath.Join(outside, "pwned")); serr == nil {
				t.Fatalf("the copy wrote %s outside its destination (err %v)", filepath.Join(outside, "pwned"), err)
			}
			if tc.name == "a file over a symlink it sent" {
				// Allowed, but the link is replaced, not written through.
				if fi, lerr := os.Lstat(filepath.Join(dst, "link")); err != nil || lerr != nil || !fi.Mode().IsRegular() {
					t.Fatalf("file over link: %v %v %v", err, fi, lerr)
				}
				return
			}
			if err == nil {
				t.Fatal("the copy succeeded")
			}
			t.Logf("refused: %v", err)
		})
	}
}

// hostileServer answers stat (a directory) and cp "from" with entries.
func hostileServer(t *testing.T, entries []api.CpMessage) *httptest.Server {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/stat") {
			json.NewEncoder(w).Encode(api.PathInfo{Exists: true, IsDir: true, Mode: 0o755})
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		var req api.CpRequest
		ws.ReadJSON(&req)
		for i, h := range entries {
			h.Type = "header"
			ws.WriteJSON(h)
			if !h.IsDir && !h.IsSymlink {
				ws.WriteMessage(websocket.BinaryMessage, []byte("evil"))
			}
			ws.WriteJSON(api.CpMessage{Type: "end", Final: i == len(entries)-1})
		}
		ws.ReadMessage() // until the client closes
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestExecTTYOverWebSocket(t *testing.T) {
	e := newEnv(t)
	e.run(t, "web")
	stdinR, stdinW := io.Pipe()
	resize := make(chan api.ExecResize, 1)
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		code, err := e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"tty-echo"}, TTY: true, Rows: 24, Cols: 80,
			Resize: resize, Stdin: stdinR, Stdout: out})
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code)
		}
		done <- err
	}()
	out.waitFor(t, "24 80\r\n")
	resize <- api.ExecResize{Rows: 30, Cols: 100}
	out.waitFor(t, "30 100\r\n")
	stdinW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// hypeman's client: no stream tags, resize as a control frame, any
	// other text frame is stdin.
	ws, _, err := websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/web/exec"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteJSON(map[string]any{"command": []string{"tty-echo"}, "tty": true, "rows": 10, "cols": 20})
	ws.WriteJSON(map[string]any{"resize": map[string]int{"rows": 11, "cols": 22}})
	var got string
	for !strings.Contains(got, "11 22") {
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		mt, raw, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v (got %q)", err, got)
		}
		if mt == websocket.BinaryMessage {
			got += string(raw)
		}
	}
	if !strings.HasPrefix(got, "10 20\r\n") {
		t.Fatalf("hypeman-style tty exec output %q", got)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		ok := strings.Contains(l.b.String(), s)
		got := l.b.String()
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("output %q never contained %q", got, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// More than DefaultMaxSessions exec/cp sessions on one instance: 429
// before the upgrade, and a slot frees when a session ends.
func TestSessionLimit(t *testing.T) {
	e := newEnv(t)
	e.run(t, "web")
	dial := func(path string) (*websocket.Conn, *http.Response, error) {
		return websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/web/"+path), nil)
	}
	var open []*websocket.Conn
	for i := 0; i < 16; i++ {
		ws, _, err := dial("exec")
		if err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
		ws.WriteJSON(map[string]any{"command": []string{"cat"}, "stream_tags": true})
		open = append(open, ws)
	}
	for _, path := range []string{"exec", "cp"} {
		_, resp, err := dial(path)
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s session 17: %v %+v, want 429 with Retry-After", path, err, resp)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `"code":"too_many_sessions"`) {
			t.Fatalf("429 body %s", body)
		}
	}
	// Another instance is not affected.
	e.run(t, "other")
	if ws, _, err := websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/other/exec"), nil); err != nil {
		t.Fatalf("exec on another instance: %v", err)
	} else {
		ws.Close()
	}
	open[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws, _, err := dial("exec")
		if err == nil {
			ws.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after a session ended: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, ws := range open[1:] {
		ws.Close()
	}
}

// The cp WebSocket as hypeman's client speaks it: one request per
// connection, uid/gid 0, no extensions.
func TestCpHypemanProtocol(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	root := e.guestRoot(t, in)
	put := func(req map[string]any, data ...[]byte) api.CpMessage {
		t.Helper()
		ws, _, err := websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/web/cp"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		ws.WriteJSON(req)
		for _, d := range data {
			ws.WriteMessage(websocket.BinaryMessage, d)
		}
		ws.WriteJSON(map[string]string{"type": "end"})
		var m api.CpMessage
		if err := ws.ReadJSON(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := put(map[string]any{"direction": "to", "guest_path": "/app", "is_dir": true, "mode": 0o755, "uid": 0, "gid": 0}); m.Type != "result" || !m.Success {
		t.Fatalf("mkdir: %+v", m)
	}
	if m := put(map[string]any{"direction": "to", "guest_path": "/app/f.txt", "mode": 0o640, "uid": 0, "gid": 0},
		[]byte("hello "), []byte("world")); m.Type != "result" || !m.Success || m.BytesWritten != 11 {
		t.Fatalf("file: %+v", m)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "app", "f.txt")); string(b) != "hello world" {
		t.Fatalf("guest file %q", b)
	}
	if m := put(map[string]any{"direction": "to", "guest_path": "relative"}, []byte("x")); m.Type != "result" || m.Success || m.Error == "" {
		t.Fatalf("relative path: %+v", m)
	}

	// from, a single file: one header with path "", its bytes, a final end.
	ws, _, err := websocket.DefaultDialer.Dial(wsURL(e.url, "/instances/web/cp"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteJSON(map[string]any{"direction": "from", "guest_path": "/app/f.txt"})
	var got []string
	for {
		mt, raw, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if mt == websocket.BinaryMessage {
			got = append(got, "data:"+string(raw))
			continue
		}
		var m map[string]any
		json.Unmarshal(raw, &m)
		switch m["type"] {
		case "header":
			got = append(got, fmt.Sprintf("header:%q:%v:%v", m["path"], m["mode"], m["size"]))
		case "end":
			got = append(got, fmt.Sprintf("end:%v", m["final"]))
		}
		if m["type"] == "end" && m["final"] == true {
			break
		}
	}
	if s := strings.Join(got, " "); s != `header:"":416:11 data:hello world end:true` {
		t.Fatalf("from stream: %s", s)
	}
}

// -a keeps owners both ways (needs root to chown).
func TestCpArchiveKeepsOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	e := newEnv(t)
	in := e.run(t, "web")
	root := e.guestRoot(t, in)
	src := filepath.Join(t.TempDir(), "owned")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "f"), []byte("x"), 0o644)
	os.Symlink("f", filepath.Join(src, "d", "l"))
	for _, p := range []string{"d/f", "d", "."} {
		os.Chown(filepath.Join(src, p), 1234, 5678)
	}
	os.Lchown(filepath.Join(src, "d", "l"), 1234, 5678)
	owner := func(p string) string {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
	}
	if _, err := e.c.CopyToGuest(ctx, "web", src, "/plain", client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := owner(filepath.Join(root, "plain", "d", "f")); got != "0:0" {
		t.Errorf("without -a the guest file belongs to %s, want root", got)
	}
	if _, err := e.c.CopyToGuest(ctx, "web", src, "/kept", client.CopyOptions{Archive: true}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d/f", "d/l", "d", "."} {
		if got := owner(filepath.Join(root, "kept", p)); got != "1234:5678" {
			t.Errorf("-a into the guest: %s belongs to %s", p, got)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := e.c.CopyFromGuest(ctx, "web", "/kept", out, client.CopyOptions{Archive: true}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d/f", "d/l", "d", "."} {
		if got := owner(filepath.Join(out, p)); got != "1234:5678" {
			t.Errorf("-a out of the guest: %s belongs to %s", p, got)
		}
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if _, err := e.c.CopyFromGuest(ctx, "web", "/kept", plain, client.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := owner(filepath.Join(plain, "d", "f")); got != "0:0" {
		t.Errorf("without -a the host file belongs to %s, want the caller", got)
	}
}
