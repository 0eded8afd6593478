package api

import (
	"net/http"

	"github.com/zygote/zygote/instances"
)

func (s *Server) forkRoutes() {
	s.mux.HandleFunc("POST /instances/{id}/fork", s.forkInstance)
	s.mux.HandleFunc("POST /snapshots/{snapshotId}/fork", s.forkSnapshot)
}

// writeForks answers a single fork with an Instance and a batch with an
// array, as the spec says.
func writeForks(w http.ResponseWriter, batch bool, forks []instances.Instance) {
	if !batch {
		writeJSON(w, http.StatusCreated, toInstance(forks[0]))
		return
	}
	out := make([]Instance, len(forks))
	for i, f := range forks {
		out[i] = toInstance(f)
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) forkInstance(w http.ResponseWriter, r *http.Request) {
	var req ForkInstanceRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	target, err := targetState(req.TargetState)
	if err != nil {
		writeError(w, err)
		return
	}
	forks, err := s.m.Fork(r.Context(), r.PathValue("id"), instances.ForkRequest{
		Name: req.Name, NamePrefix: req.NamePrefix, Count: req.Count, FromRunning: req.FromRunning, TargetState: target,
		Memory: instances.MemoryMode(req.Memory),
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeForks(w, req.Count > 0 || req.NamePrefix != "", forks)
}

func (s *Server) forkSnapshot(w http.ResponseWriter, r *http.Request) {
	var req ForkSnapshotRequest
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
	forks, err := s.m.ForkSnapshot(r.Context(), r.PathValue("snapshotId"), instances.ForkRequest{
		Name: req.Name, NamePrefix: req.NamePrefix, Count: req.Count, TargetState: target,
		Memory: instances.MemoryMode(req.Memory),
	})
	if err != nil {
		writeError(w, snapshotConflict(err))
		return
	}
	writeForks(w, req.Count > 0 || req.NamePrefix != "", forks)
}
