package pagerclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// Client speaks the pager's control API over its unix socket. Errors carry
// the errdefs class the pager gave them (errors.Is); a pager that cannot
// be reached is errdefs.ErrUnavailable.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the pager at socketPath.
func New(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socketPath, hc: &http.Client{Transport: tr}}
}

// SocketPath is the control socket the client dials.
func (c *Client) SocketPath() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, in, out any, want int) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("pager %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://pager"+path, body)
	if err != nil {
		return fmt.Errorf("pager %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pager %s %s: %w", method, path, ctx.Err())
		}
		return fmt.Errorf("pager %s %s: %v: %w", method, path, err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var e pagerapi.Error
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e); err != nil || e.Code == "" {
			return fmt.Errorf("pager %s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return e.Err()
	}
	if out == nil {
		return nil
	}
	if s, ok := out.(*string); ok {
		b, err := io.ReadAll(resp.Body)
		*s = string(b)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("pager %s %s: decode: %w", method, path, err)
	}
	return nil
}

// Health probes the pager.
func (c *Client) Health(ctx context.Context) (pagerapi.Health, error) {
	var h pagerapi.Health
	err := c.do(ctx, http.MethodGet, pagerapi.PathHealth, nil, &h, http.StatusOK)
	return h, err
}

// CreateSession asks for a session; the returned SocketPath is what the VMM
// (Firecracker's mem_backend.backend_path) connects to. Errors:
// ErrInvalidArgument (bad request), ErrNotFound (no memory file),
// ErrAlreadyExists (live session with that id), ErrConflict (the cache key
// already names content of another size).
func (c *Client) CreateSession(ctx context.Context, req pagerapi.CreateSessionRequest) (pagerapi.Session, error) {
	var s pagerapi.Session
	err := c.do(ctx, http.MethodPost, pagerapi.PathSessions, req, &s, http.StatusCreated)
	return s, err
}

// CloseSession ends a session (ErrNotFound if the pager does not know it).
func (c *Client) CloseSession(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, pagerapi.SessionPath(id), nil, nil, http.StatusNoContent)
}

// Session describes one session.
func (c *Client) Session(ctx context.Context, id string) (pagerapi.Session, error) {
	var s pagerapi.Session
	err := c.do(ctx, http.MethodGet, pagerapi.SessionPath(id), nil, &s, http.StatusOK)
	return s, err
}

// Sessions lists every session.
func (c *Client) Sessions(ctx context.Context) ([]pagerapi.Session, error) {
	var s []pagerapi.Session
	err := c.do(ctx, http.MethodGet, pagerapi.PathSessions, nil, &s, http.StatusOK)
	return s, err
}

// Stats returns the cache's and every session's counters.
func (c *Client) Stats(ctx context.Context) (pagerapi.Stats, error) {
	var s pagerapi.Stats
	err := c.do(ctx, http.MethodGet, pagerapi.PathStats, nil, &s, http.StatusOK)
	return s, err
}

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	var s string
	err := c.do(ctx, http.MethodGet, pagerapi.PathMetrics, nil, &s, http.StatusOK)
	return s, err
}

// WaitHandshake polls a session until it leaves StateWaiting: nil once it
// serves (or already ended well), the session's error if the handshake
// failed. Call it after asking the VMM to load the snapshot.
func (c *Client) WaitHandshake(ctx context.Context, id string) (pagerapi.Session, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s, err := c.Session(ctx, id)
		if err != nil {
			return s, err
		}
		switch s.State {
		case pagerapi.StateWaiting:
		case pagerapi.StateFailed:
			return s, fmt.Errorf("pager: session %q: %s: %w", id, s.Error, errdefs.ErrInvalidArgument)
		default:
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("pager: session %q still waiting for its VMM: %w", id, ctx.Err())
		case <-t.C:
		}
	}
}
