package api

import (
	"fmt"
	"net/http"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

func (s *Server) snapshotRoutes() {
	h := s.mux.HandleFunc
	h("POST /instances/{id}/snapshots", s.createSnapshot)
	h("POST /instances/{id}/snapshots/{snapshotId}/restore", s.restoreSnapshot)
	h("GET /snapshots", s.listSnapshots)
	h("GET /snapshots/{snapshotId}", s.getSnapshot)
	h("DELETE /snapshots/{snapshotId}", s.deleteSnapshot)
}

func toSnapshot(sn instances.Snapshot) Snapshot {
	out := Snapshot{
		ID: sn.ID, Kind: string(sn.Kind), Tags: sn.Tags, SourceInstanceID: sn.SourceInstanceID,
		SourceInstanceName: sn.SourceInstanceName, SourceHypervisor: sn.Spec.Hypervisor, CreatedAt: sn.CreatedAt,
		SizeBytes: sn.SizeBytes, MemoryBytes: sn.Spec.MemoryBytes, CompressionState: "none", CacheKey: sn.CacheKey,
	}
	if sn.Name != "" {
		out.Name = &sn.Name
	}
	return out
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req CreateSnapshotRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if c := req.Compression; c != nil && (c.Level != nil && (*c.Level < 0 || *c.Level > 19) || c.Algorithm != "" && c.Algorithm != "zstd" && c.Algorithm != "lz4") {
		writeError(w, fmt.Errorf("compression: algorithm zstd or lz4, level 0-19: %w", errdefs.ErrInvalidArgument))
		return
	}
	if req.Compression != nil && req.Compression.Enabled {
		writeError(w, fmt.Errorf("snapshot compression is not supported: %w", errdefs.ErrNotImplemented))
		return
	}
	kind, err := instances.ParseSnapshotKind(req.Kind)
	if err != nil {
		writeError(w, err)
		return
	}
	sn, err := s.m.CreateSnapshot(r.Context(), r.PathValue("id"), instances.SnapshotRequest{Kind: kind, Name: req.Name, Tags: req.Tags})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, toSnapshot(sn))
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := instances.SnapshotFilter{SourceInstanceID: q.Get("source_instance_id"), Name: q.Get("name"), Tags: parseTags(r)}
	if k := q.Get("kind"); k != "" {
		kind, err := instances.ParseSnapshotKind(k)
		if err != nil {
			writeError(w, err)
			return
		}
		f.Kind = kind
	}
	list, err := s.m.ListSnapshots(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Snapshot, 0, len(list))
	for _, sn := range list {
		out = append(out, toSnapshot(sn))
	}
	writeJSON(w, 200, out)
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, err := s.m.GetSnapshot(r.Context(), r.PathValue("snapshotId"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, toSnapshot(sn))
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.m.DeleteSnapshot(r.Context(), r.PathValue("snapshotId")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// targetState parses an optional target_state.
func targetState(v string) (instances.State, error) {
	if v == "" {
		return "", nil
	}
	switch st := instances.State(v); st {
	case instances.StateRunning, instances.StateStandby, instances.StateStopped:
		return st, nil
	}
	return "", fmt.Errorf("target_state %q: want Running, Standby or Stopped: %w", v, errdefs.ErrInvalidArgument)
}

func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) {
	var req RestoreSnapshotRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	target, err := targetState(req.TargetState)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.sameHypervisor(r, req.TargetHypervisor); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.m.RestoreSnapshot(r.Context(), r.PathValue("id"), r.PathValue("snapshotId"), target)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, toInstance(v))
}

// sameHypervisor refuses a target_hypervisor other than the snapshot's:
// a saved machine restores only into the VMM that saved it.
func (s *Server) sameHypervisor(r *http.Request, target string) error {
	if target == "" {
		return nil
	}
	sn, err := s.m.GetSnapshot(r.Context(), r.PathValue("snapshotId"))
	if err != nil {
		return err
	}
	if target != sn.Spec.Hypervisor {
		return fmt.Errorf("a %s snapshot cannot be used by %s: %w", sn.Spec.Hypervisor, target, errdefs.ErrNotImplemented)
	}
	return nil
}
