package api

import (
	"bufio"
	"bytes"
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
	// Manager serves every route; *instances.Manager in the daemon.
	Manager Manager
	// Metrics serves /metrics (a promhttp handler); nil leaves it out.
	Metrics http.Handler
	// Token, when set, is the bearer token the TCP handler requires.
	Token string
	// Images serves /images; nil answers those routes 501 not_supported.
	Images ImageStore
	// UploadDir stages archives POST /images/import receives (removed
	// once converted); os.TempDir() when empty. Put it on a disk, not a
	// tmpfs: archives are as large as images.
	UploadDir string
	// MaxImportBytes bounds an uploaded archive (413 past it);
	// DefaultMaxImportBytes when zero.
	MaxImportBytes int64
	Logger         *slog.Logger
}

// Server is the HTTP API: it decodes requests, calls the manager, and
// maps error classes to statuses. It holds no state of its own.
type Server struct {
	cfg ServerConfig
	m   Manager
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
	h("GET /spec.json", s.specJSON)
	if s.cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", s.cfg.Metrics)
	}
	h("GET /instances", s.listInstances)
	h("POST /instances", s.createInstance)
	h("GET /instances/{id}", s.getInstance)
	h("DELETE /instances/{id}", s.deleteInstance)
	h("POST /instances/{id}/start", s.instanceOp(s.m.Start, checkStart))
	h("POST /instances/{id}/stop", s.instanceOp(s.m.Stop, noBody))
	h("POST /instances/{id}/standby", s.instanceOp(s.m.Standby, checkStandby))
	h("POST /instances/{id}/restore", s.instanceOp(s.m.Restore, noBody))
	h("GET /instances/{id}/wait", s.waitInstance)
	h("GET /instances/{id}/logs", s.logs)
	h("GET /instances/{id}/exec", s.exec)
	h("GET /instances/{id}/cp", s.cp)
	h("GET /instances/{id}/stat", s.statPath)
	h("GET /instances/{id}/stats", s.instanceStats)
	h("GET /resources", s.resources)
	s.snapshotRoutes()
	s.forkRoutes()
	s.imageRoutes()
	s.volumeRoutes()
	s.mux.HandleFunc("/", s.noRoute)
}

// noRoute answers a path no route serves with 404, and a path served for
// other methods only with 405 and an Allow header.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, withCode(http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Errorf("%s is not allowed on %s (allowed: %s): %w", r.Method, r.URL.Path, strings.Join(allow, ", "), errdefs.ErrInvalidArgument)))
		return
	}
	writeError(w, fmt.Errorf("no route for %s %s: %w", r.Method, r.URL.Path, errdefs.ErrNotFound))
}

// Handler serves the API without authentication (the unix socket, whose
// file mode is the access control).
func (s *Server) Handler() http.Handler { return s.logged(s.mux) }

// openRoutes need no token (hypeman leaves them open too).
var openRoutes = map[string]bool{"/health": true, "/spec": true, "/spec.yaml": true, "/spec.json": true}

// TokenHandler serves the API and requires the bearer token on every
// route but /health and the spec.
func (s *Server) TokenHandler() http.Handler {
	want := []byte("Bearer " + s.cfg.Token)
	return s.logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !openRoutes[r.URL.Path] {
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
	err    error // what writeError answered, for the log
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
		id := newRequestID()
		w.Header().Set(requestIDHeader, id)
		rec := &statusRecorder{ResponseWriter: w, status: 200}
		next.ServeHTTP(rec, r)
		attrs := []any{"request_id", id, "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(begin)}
		switch {
		case rec.err != nil && rec.status == http.StatusInternalServerError:
			s.log.Error("api", append(attrs, "err", rec.err)...)
		case rec.err != nil:
			s.log.Info("api", append(attrs, "err", rec.err)...)
		default:
			s.log.Debug("api", attrs...)
		}
	})
}

func (s *Server) spec(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(specYAML)
}

func (s *Server) specJSON(w http.ResponseWriter, r *http.Request) {
	raw, err := SpecJSON()
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw)
}

// decode reads an optional JSON body into v; an empty body leaves v zero.
// A field v does not know is a 400 naming it.
func decode(r *http.Request, v any) error { return decodeRequest(r, v, nil) }

// decodeRequest is decode for a body that may carry fields of hypeman's
// that zygote does not implement: such a field, unless it holds its zero
// value (null, false, "", 0, [] or {}), is a 501 not_supported naming it.
func decodeRequest(r *http.Request, v any, unsupported []string) error {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read request body: %w", errors.Join(err, errdefs.ErrInvalidArgument))
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	if len(unsupported) > 0 {
		var fields map[string]json.RawMessage
		if json.Unmarshal(raw, &fields) == nil && fields != nil { // not an object: the strict decode says why
			for _, name := range unsupported {
				val, ok := fields[name]
				if !ok {
					continue
				}
				if !zeroJSON(val) {
					return withCode(http.StatusNotImplemented, "not_supported",
						fmt.Errorf("field %s: zygote does not implement it; leave it out: %w", name, errdefs.ErrNotImplemented))
				}
				delete(fields, name)
			}
			raw, _ = json.Marshal(fields)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("invalid JSON body: data after the value: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// zeroJSON reports whether a JSON value is its type's zero value.
func zeroJSON(v json.RawMessage) bool {
	var buf bytes.Buffer
	if json.Compact(&buf, v) != nil {
		return false
	}
	switch buf.String() {
	case "null", "false", `""`, "0", "[]", "{}":
		return true
	}
	return false
}

func toInstance(v instances.Instance) Instance {
	out := Instance{
		ID: v.ID, Name: v.Name, Image: v.Spec.Image, State: string(v.State),
		Size: bytesize.Format(v.Spec.MemoryBytes), MemoryBytes: v.Spec.MemoryBytes, VCPUs: v.Spec.VCPUs,
		Hypervisor: v.Spec.Hypervisor, Accelerator: v.Accelerator, Hostname: v.Hostname,
		Env: v.Spec.Env, Tags: v.Tags, Cmd: v.Spec.Command, KernelArgs: v.Spec.KernelArgs,
		CreatedAt: v.CreatedAt, StartedAt: v.StartedAt, StoppedAt: v.StoppedAt,
		ExitCode: v.ExitCode, ExitMessage: v.ExitMessage, HasSnapshot: v.HasSavedState, HotplugSize: bytesize.Format(0),
	}
	if v.StateError != "" {
		out.StateError = &v.StateError
	}
	out.Memory, out.MemoryGroup, out.MemoryLinks = string(v.Memory), v.MemoryGroup, v.MemoryLinks
	if v.Spec.ImageDigest != "" {
		out.Entrypoint, out.Cmd = v.Spec.Entrypoint, v.Spec.Cmd
		out.ImageDigest = v.Spec.ImageDigest
		out.OverlaySize = bytesize.Format(v.Spec.OverlayBytes)
	}
	for _, m := range v.Spec.Volumes {
		out.Volumes = append(out.Volumes, VolumeMount{VolumeID: m.Volume, MountPath: m.MountPath, ReadOnly: m.ReadOnly})
	}
	if o := v.ForkedFrom; o != nil {
		out.ForkedFrom = &Origin{InstanceID: o.InstanceID, InstanceName: o.InstanceName, SnapshotID: o.SnapshotID}
	}
	out.Network = toNetwork(v.Network)
	return out
}

func toNetwork(n instances.Network) InstanceNetwork {
	out := InstanceNetwork{Enabled: n.Enabled}
	if !n.Enabled {
		return out
	}
	out.Name, out.MAC, out.AllowPeers = n.Name, &n.MAC, n.AllowPeers
	if n.IP != "" {
		out.IP = &n.IP
	}
	for _, p := range n.Publish {
		out.Publish = append(out.Publish, PublishedPort{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
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
	if err := decodeRequest(r, &req, unsupportedCreateFields); err != nil {
		writeError(w, err)
		return
	}
	creq, err := createRequest(req)
	if err != nil {
		writeError(w, err)
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

// instanceOp serves a lifecycle verb; check reads and checks its body.
func (s *Server) instanceOp(op func(ctx context.Context, ref string) (instances.Instance, error), check func(*http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := check(r); err != nil {
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
		writeError(w, withCode(http.StatusBadRequest, "invalid_state", err))
		return
	}
	if state == instances.StateUnknown {
		writeError(w, invalidf("invalid_state", "cannot wait for state Unknown"))
		return
	}
	timeout := 60 * time.Second
	if t := q.Get("timeout"); t != "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout <= 0 {
			writeError(w, invalidf("invalid_timeout", "timeout %q: want a positive Go duration such as 30s", t))
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
