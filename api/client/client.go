// Package client is the Go client of zygote's REST API, used by the CLI.
// It speaks to the daemon over its unix socket or, with a bearer token,
// over TCP.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/zygote/zygote/api"
)

// Client calls one daemon.
type Client struct {
	http   *http.Client
	base   string // http://host[:port], or http://zygote for a unix socket
	token  string
	dialer func(ctx context.Context) (net.Conn, error)
}

// New returns a client for endpoint: a unix socket path ("/run/zygote/
// zygote.sock" or "unix:///run/…") or an http(s) URL, which needs a token.
func New(endpoint, token string) (*Client, error) {
	c := &Client{token: token}
	switch {
	case strings.HasPrefix(endpoint, "http://"), strings.HasPrefix(endpoint, "https://"):
		c.base = strings.TrimRight(endpoint, "/")
		c.http = &http.Client{}
		var d net.Dialer
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
		}
		host := u.Host
		if u.Port() == "" {
			host += map[string]string{"http": ":80", "https": ":443"}[u.Scheme]
		}
		c.dialer = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", host) }
	default:
		path := strings.TrimPrefix(endpoint, "unix://")
		var d net.Dialer
		c.dialer = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		c.base = "http://zygote"
		c.http = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dialer(ctx) },
		}}
	}
	return c, nil
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the zygote daemon (is `zygote serve` running?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func decodeError(resp *http.Response) error {
	var body api.Error
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(raw, &body) != nil {
		body.Message = strings.TrimSpace(string(raw))
	}
	return api.FromHTTP(resp.StatusCode, body)
}

func esc(s string) string { return url.PathEscape(s) }

// Health checks the daemon.
func (c *Client) Health(ctx context.Context) error {
	var h api.Health
	return c.do(ctx, "GET", "/health", nil, &h)
}

// ListOptions filter ListInstances.
type ListOptions struct {
	State string
	Tags  map[string]string
}

// ListInstances lists instances.
func (c *Client) ListInstances(ctx context.Context, opt ListOptions) ([]api.Instance, error) {
	q := url.Values{}
	if opt.State != "" {
		q.Set("state", opt.State)
	}
	for k, v := range opt.Tags {
		q.Set("tags["+k+"]", v)
	}
	path := "/instances"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out []api.Instance
	return out, c.do(ctx, "GET", path, nil, &out)
}

// CreateInstance creates and boots an instance.
func (c *Client) CreateInstance(ctx context.Context, req api.CreateInstanceRequest) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "POST", "/instances", req, &out)
}

// GetInstance resolves an id, name or id prefix.
func (c *Client) GetInstance(ctx context.Context, ref string) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "GET", "/instances/"+esc(ref), nil, &out)
}

// DeleteInstance deletes an instance; force skips the graceful shutdown.
func (c *Client) DeleteInstance(ctx context.Context, ref string, force bool) error {
	path := "/instances/" + esc(ref)
	if force {
		path += "?force=true"
	}
	return c.do(ctx, "DELETE", path, nil, nil)
}

func (c *Client) instanceOp(ctx context.Context, ref, op string) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "POST", "/instances/"+esc(ref)+"/"+op, struct{}{}, &out)
}

// StartInstance boots a stopped instance.
func (c *Client) StartInstance(ctx context.Context, ref string) (api.Instance, error) {
	return c.instanceOp(ctx, ref, "start")
}

// StopInstance stops an instance.
func (c *Client) StopInstance(ctx context.Context, ref string) (api.Instance, error) {
	return c.instanceOp(ctx, ref, "stop")
}

// StandbyInstance parks a running instance.
func (c *Client) StandbyInstance(ctx context.Context, ref string) (api.Instance, error) {
	return c.instanceOp(ctx, ref, "standby")
}

// RestoreInstance resumes a standby instance.
func (c *Client) RestoreInstance(ctx context.Context, ref string) (api.Instance, error) {
	return c.instanceOp(ctx, ref, "restore")
}

// WaitForState waits (server side, at most 5 minutes a call) for a state.
func (c *Client) WaitForState(ctx context.Context, ref, state string, timeout time.Duration) (api.WaitForStateResponse, error) {
	var out api.WaitForStateResponse
	q := url.Values{"state": {state}, "timeout": {timeout.String()}}
	return out, c.do(ctx, "GET", "/instances/"+esc(ref)+"/wait?"+q.Encode(), nil, &out)
}

// LogOptions select a log stream.
type LogOptions struct {
	Follow bool
	Tail   int // < 0: the server's default
	Source string
}

// Logs writes log lines to w until the stream ends (or ctx, when following).
func (c *Client) Logs(ctx context.Context, ref string, opt LogOptions, w io.Writer) error {
	q := url.Values{}
	if opt.Follow {
		q.Set("follow", "true")
	}
	if opt.Tail >= 0 {
		q.Set("tail", fmt.Sprint(opt.Tail))
	}
	if opt.Source != "" {
		q.Set("source", opt.Source)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/instances/"+esc(ref)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the zygote daemon: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var line string
		if err := json.Unmarshal([]byte(data), &line); err != nil {
			return fmt.Errorf("decode log event: %w", err)
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// Spec returns the daemon's OpenAPI document.
func (c *Client) Spec(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/spec", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// CreateSnapshot snapshots an instance.
func (c *Client) CreateSnapshot(ctx context.Context, ref string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	var out api.Snapshot
	return out, c.do(ctx, "POST", "/instances/"+esc(ref)+"/snapshots", req, &out)
}

// SnapshotListOptions filter ListSnapshots.
type SnapshotListOptions struct {
	SourceInstanceID, Kind, Name string
	Tags                         map[string]string
}

// ListSnapshots lists snapshots.
func (c *Client) ListSnapshots(ctx context.Context, opt SnapshotListOptions) ([]api.Snapshot, error) {
	q := url.Values{}
	for k, v := range map[string]string{"source_instance_id": opt.SourceInstanceID, "kind": opt.Kind, "name": opt.Name} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for k, v := range opt.Tags {
		q.Set("tags["+k+"]", v)
	}
	var out []api.Snapshot
	return out, c.do(ctx, "GET", "/snapshots?"+q.Encode(), nil, &out)
}

// GetSnapshot gets a snapshot by id, name or unique id prefix.
func (c *Client) GetSnapshot(ctx context.Context, id string) (api.Snapshot, error) {
	var out api.Snapshot
	return out, c.do(ctx, "GET", "/snapshots/"+esc(id), nil, &out)
}

// DeleteSnapshot deletes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/snapshots/"+esc(id), nil, nil)
}

// RestoreSnapshot restores an instance in place from one of its snapshots.
func (c *Client) RestoreSnapshot(ctx context.Context, ref, snapshotID string, req api.RestoreSnapshotRequest) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "POST", "/instances/"+esc(ref)+"/snapshots/"+esc(snapshotID)+"/restore", req, &out)
}

// ForkInstance forks an instance (one fork; see ForkInstanceBatch).
func (c *Client) ForkInstance(ctx context.Context, ref string, req api.ForkInstanceRequest) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "POST", "/instances/"+esc(ref)+"/fork", req, &out)
}

// ForkInstanceBatch makes req.Count forks named <NamePrefix>-<i>.
func (c *Client) ForkInstanceBatch(ctx context.Context, ref string, req api.ForkInstanceRequest) ([]api.Instance, error) {
	var out []api.Instance
	return out, c.do(ctx, "POST", "/instances/"+esc(ref)+"/fork", req, &out)
}

// ForkSnapshot forks a snapshot (one fork).
func (c *Client) ForkSnapshot(ctx context.Context, id string, req api.ForkSnapshotRequest) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, "POST", "/snapshots/"+esc(id)+"/fork", req, &out)
}

// ForkSnapshotBatch makes req.Count forks of a snapshot.
func (c *Client) ForkSnapshotBatch(ctx context.Context, id string, req api.ForkSnapshotRequest) ([]api.Instance, error) {
	var out []api.Instance
	return out, c.do(ctx, "POST", "/snapshots/"+esc(id)+"/fork", req, &out)
}
