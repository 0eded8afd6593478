package api

import (
	"bufio"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/internal/bytesize"
)

//go:embed openapi.yaml
var specYAML []byte

// Spec returns the OpenAPI document.
func Spec() []byte { return specYAML }

// ServerConfig wires a Server.
type ServerConfig struct {
	Manager *instances.Manager
	// Metrics serves /metrics (a promhttp handler); nil leaves it out.
	Metrics http.Handler
	// Token, when set, is the bearer token the TCP handler requires.
	Token  string
	Logger *slog.Logger
}

// Server is the HTTP API: it decodes requests, calls the manager, and
// maps error classes to statuses. It holds no state of its own.
type Server struct {
	cfg ServerConfig
	m   *instances.Manager
	log *slog.Logger
	mux *http.ServeMux
}

// NewServer builds the routes.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, m: cfg.Manager, log: cfg.Logger, mux: http.NewServeMux()}
	s.routes()
	return s
}

func (s *Server) routes() {
	h := s.mux.HandleFunc
	h("GET /health", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, Health{Status: "ok"}) })
	h("GET /spec", s.spec)
	h("GET /spec.yaml", s.spec)
	if s.cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", s.cfg.Metrics)
	}
	h("GET /instances", s.listInstances)
	h("POST /instances", s.createInstance)
	h("GET /instances/{id}", s.getInstance)
	h("DELETE /instances/{id}", s.deleteInstance)
	h("POST /instances/{id}/start", s.instanceOp(s.m.Start))
	h("POST /instances/{id}/stop", s.instanceOp(s.m.Stop))
	h("POST /instances/{id}/standby", s.instanceOp(s.m.Standby))
	h("POST /instances/{id}/restore", s.instanceOp(s.m.Restore))
	h("GET /instances/{id}/wait", s.waitInstance)
	h("GET /instances/{id}/logs", s.logs)
	h("GET /instances/{id}/exec", s.exec)
	s.snapshotRoutes()
	s.forkRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("no route for %s %s: %w", r.Method, r.URL.Path, errdefs.ErrNotFound))
	})
}

// Handler serves the API without authentication (the unix socket, whose
// file mode is the access control).
func (s *Server) Handler() http.Handler { return s.logged(s.mux) }

// TokenHandler serves the API and requires the bearer token on every
// route but /health.
func (s *Server) TokenHandler() http.Handler {
	want := []byte("Bearer " + s.cfg.Token)
	return s.logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			got := []byte(r.Header.Get("Authorization"))
			if s.cfg.Token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
				writeError(w, fmt.Errorf("missing or invalid bearer token: %w", errdefs.ErrUnauthorized))
				return
			}
		}
		s.mux.ServeHTTP(w, r)
	}))
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) { r.status = code; r.ResponseWriter.WriteHeader(code) }

// Unwrap lets http.ResponseController reach Flush (logs).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack serves exec's WebSocket upgrade, which asks for http.Hijacker
// directly.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	r.status = http.StatusSwitchingProtocols
	return http.NewResponseController(r.ResponseWriter).Hijack()
}

func (s *Server) logged(next http.Handler) http.Handler {
	next = limitBodies(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		begin := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: 200}
		next.ServeHTTP(rec, r)
		s.log.Debug("api", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(begin))
	})
}

func (s *Server) spec(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(specYAML)
}

// decode reads an optional JSON body into v; an empty body leaves v zero.
func decode(r *http.Request, v any) error {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read request body: %w", errors.Join(err, errdefs.ErrInvalidArgument))
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

func toInstance(v instances.Instance) Instance {
	out := Instance{
		ID: v.ID, Name: v.Name, Image: v.Spec.Image, State: string(v.State),
		Size: bytesize.Format(v.Spec.MemoryBytes), MemoryBytes: v.Spec.MemoryBytes, VCPUs: v.Spec.VCPUs,
		Hypervisor: v.Spec.Hypervisor, Accelerator: v.Accelerator, Hostname: v.Hostname,
		Env: v.Spec.Env, Tags: v.Tags, Cmd: v.Spec.Command, KernelArgs: v.Spec.KernelArgs,
		CreatedAt: v.CreatedAt, StartedAt: v.StartedAt, StoppedAt: v.StoppedAt,
		ExitCode: v.ExitCode, ExitMessage: v.ExitMessage, HasSnapshot: v.HasSavedState,
	}
	if v.StateError != "" {
		out.StateError = &v.StateError
	}
	if o := v.ForkedFrom; o != nil {
		out.ForkedFrom = &Origin{InstanceID: o.InstanceID, InstanceName: o.InstanceName, SnapshotID: o.SnapshotID}
	}
	return out
}

// parseTags reads hypeman's tags[key]=value query parameters.
func parseTags(r *http.Request) map[string]string {
	tags := map[string]string{}
	for k, vs := range r.URL.Query() {
		if strings.HasPrefix(k, "tags[") && strings.HasSuffix(k, "]") && len(vs) > 0 {
			tags[k[len("tags["):len(k)-1]] = vs[0]
		}
	}
	return tags
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	f := instances.ListFilter{Tags: parseTags(r)}
	if st := r.URL.Query().Get("state"); st != "" {
		state, err := instances.ParseState(st)
		if err != nil {
			writeError(w, err)
			return
		}
		f.State = state
	}
	list, err := s.m.List(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Instance, 0, len(list))
	for _, v := range list {
		out = append(out, toInstance(v))
	}
	writeJSON(w, 200, out)
}

func (s *Server) createInstance(w http.ResponseWriter, r *http.Request) {
	var req CreateInstanceRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	creq := instances.CreateRequest{
		Name: req.Name, Hypervisor: req.Hypervisor, VCPUs: req.VCPUs, KernelArgs: req.KernelArgs,
		Command: append(append([]string{}, req.Entrypoint...), req.Cmd...), Env: req.Env, Tags: req.Tags, Image: req.Image,
	}
	if len(creq.Command) == 0 {
		creq.Command = nil
	}
	if req.Size != "" {
		n, err := bytesize.Parse(req.Size)
		if err != nil {
			writeError(w, err)
			return
		}
		creq.MemoryBytes = n
	}
	if req.VCPUs < 0 {
		writeError(w, fmt.Errorf("vcpus must be positive: %w", errdefs.ErrInvalidArgument))
		return
	}
	v, err := s.m.Create(r.Context(), creq)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, toInstance(v))
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request) {
	v, err := s.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, toInstance(v))
}

func (s *Server) deleteInstance(w http.ResponseWriter, r *http.Request) {
	force, err := boolParam(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.m.Delete(r.Context(), r.PathValue("id"), force); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// instanceOp serves the bodiless (or `{}`) lifecycle verbs.
func (s *Server) instanceOp(op func(ctx context.Context, ref string) (instances.Instance, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := decode(r, &body); err != nil {
			writeError(w, err)
			return
		}
		v, err := op(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, 200, toInstance(v))
	}
}

func (s *Server) waitInstance(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, err := instances.ParseState(q.Get("state"))
	if err != nil {
		writeError(w, err)
		return
	}
	if state == instances.StateUnknown {
		writeError(w, fmt.Errorf("cannot wait for state Unknown: %w", errdefs.ErrInvalidArgument))
		return
	}
	timeout := 60 * time.Second
	if t := q.Get("timeout"); t != "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout <= 0 {
			writeError(w, fmt.Errorf("timeout %q: want a positive Go duration such as 30s: %w", t, errdefs.ErrInvalidArgument))
			return
		}
	}
	timeout = min(timeout, 5*time.Minute)
	res, err := s.m.Wait(r.Context(), r.PathValue("id"), state, timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	out := WaitForStateResponse{State: string(res.State), TimedOut: res.TimedOut}
	if res.StateError != "" {
		out.StateError = &res.StateError
	}
	writeJSON(w, 200, out)
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("query parameter %s=%q: want true or false: %w", name, v, errdefs.ErrInvalidArgument)
	}
	return b, nil
}
