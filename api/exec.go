package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/zygote/zygote/guest/agent"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  32 << 10,
	WriteBufferSize: 32 << 10,
	// Access is controlled by the socket's file mode or the bearer token;
	// browsers are not clients of this API.
	CheckOrigin: func(*http.Request) bool { return true },
}

// defaultWaitForAgent is how long exec waits for a booting guest's agent
// when the request does not say.
const defaultWaitForAgent = 30 * time.Second

// exec serves hypeman's exec WebSocket protocol (see openapi.yaml).
func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("id")
	_, release, err := s.m.OpenSession(r.Context(), ref)
	if err != nil {
		writeError(w, err) // before the upgrade: a plain 404/409/429
		return
	}
	defer release()
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	defer conn.Close()
	out := &wsWriter{conn: conn}

	var req ExecRequest
	if mt, raw, err := conn.ReadMessage(); err != nil || mt != websocket.TextMessage || json.Unmarshal(raw, &req) != nil {
		out.text(map[string]string{"error": "the first message must be a JSON text frame {command, env, cwd, ...}"})
		return
	}
	if len(req.Command) == 0 {
		req.Command = []string{"/bin/sh"}
	}
	out.tags = req.StreamTags

	// A hijacked connection's request context is not cancelled when the
	// client leaves: the reader cancels this one, which kills the guest
	// process (^C on `zygote exec` must not leave it running).
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stdinR, stdinW := io.Pipe()
	resize := make(chan agent.WindowSize, 1)
	readerDone := make(chan struct{})
	go func() { // owner: this handler; ends when the connection closes
		defer close(readerDone)
		for {
			mt, raw, err := conn.ReadMessage()
			if err != nil {
				stdinW.CloseWithError(fmt.Errorf("exec client went away: %w", err))
				cancel()
				return
			}
			if mt == websocket.TextMessage {
				var ctl ExecControl
				isCtl := json.Unmarshal(raw, &ctl) == nil
				if isCtl && ctl.Resize != nil {
					if req.TTY && ctl.Resize.Rows > 0 && ctl.Resize.Cols > 0 {
						latest(resize, agent.WindowSize{Rows: clampSize(ctl.Resize.Rows), Cols: clampSize(ctl.Resize.Cols)})
					}
					continue
				}
				if req.StreamTags {
					if isCtl && ctl.StdinEOF {
						stdinW.Close()
					}
					continue
				}
				// hypeman: any other text frame is stdin.
			}
			if _, err := stdinW.Write(raw); err != nil {
				continue // stdin closed: drain until the client leaves
			}
		}
	}()
	wait := defaultWaitForAgent
	if req.WaitForAgent > 0 {
		wait = time.Duration(req.WaitForAgent) * time.Second
	}
	code, err := s.m.Exec(ctx, ref, agent.ExecRequest{
		Command: req.Command, Env: req.Env, Cwd: req.Cwd, TTY: req.TTY,
		Rows: clampSize(req.Rows), Cols: clampSize(req.Cols), Resize: resize,
		Timeout: time.Duration(req.Timeout) * time.Second,
		Stdin:   stdinR, Stdout: out.stream(StreamStdout), Stderr: out.stream(StreamStderr),
	}, wait)
	stdinR.Close()
	if err != nil {
		s.log.Info("exec failed", "instance", ref, "err", err)
		out.stream(StreamStderr).Write([]byte("Error: " + redactPaths(err.Error()) + "\r\n")) // the log has the path
		code = 127
	}
	out.text(ExecExit{ExitCode: code})
	conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	conn.Close()
	<-readerDone
}

// clampSize fits a terminal dimension into the guest's 16 bits.
func clampSize(n uint32) uint16 { return uint16(min(n, 0xffff)) }

// latest puts v in the one-slot channel c, replacing a value not yet
// taken: only the newest terminal size matters.
func latest(c chan agent.WindowSize, v agent.WindowSize) {
	for {
		select {
		case c <- v:
			return
		default:
		}
		select {
		case <-c:
		default:
		}
	}
}

// wsWriter serialises frames onto one WebSocket (gorilla allows one
// concurrent writer).
type wsWriter struct {
	mu   sync.Mutex
	conn *websocket.Conn
	tags bool
}

func (w *wsWriter) text(v any) {
	raw, _ := json.Marshal(v)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn.WriteMessage(websocket.TextMessage, raw)
}

type wsStream struct {
	w   *wsWriter
	tag byte
}

func (w *wsWriter) stream(tag byte) io.Writer { return wsStream{w: w, tag: tag} }

func (s wsStream) Write(p []byte) (int, error) {
	frame := p
	if s.w.tags {
		frame = append([]byte{s.tag}, p...)
	}
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if err := s.w.conn.WriteMessage(websocket.BinaryMessage, frame); err != nil {
		return 0, err
	}
	return len(p), nil
}
