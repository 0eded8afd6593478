package api

import (
	"fmt"
	"net/http"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// Volumes: hypeman's /volumes (create, list, get, delete). A volume is a
// sparse ext4 disk attached at instance create (`volumes` field).

func (s *Server) volumeRoutes() {
	h := s.mux.HandleFunc
	h("GET /volumes", s.listVolumes)
	h("POST /volumes", s.createVolume)
	h("GET /volumes/{id}", s.getVolume)
	h("DELETE /volumes/{id}", s.deleteVolume)
}

func toVolume(v instances.Volume) Volume {
	return Volume{ID: v.ID, Name: v.Name, SizeGB: v.SizeBytes >> 30, SizeBytes: v.SizeBytes, Tags: v.Tags, CreatedAt: v.CreatedAt}
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	var req CreateVolumeRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.SizeGB < 1 || req.SizeGB > 16<<10 {
		writeError(w, fmt.Errorf("size_gb must be between 1 and 16384, got %d: %w", req.SizeGB, errdefs.ErrInvalidArgument))
		return
	}
	v, err := s.m.CreateVolume(r.Context(), req.Name, req.SizeGB<<30, req.ID, req.Tags)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, toVolume(v))
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	list, err := s.m.ListVolumes(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Volume, 0, len(list))
	for _, v := range list {
		out = append(out, toVolume(v))
	}
	writeJSON(w, 200, out)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	v, err := s.m.GetVolume(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, toVolume(v))
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	if err := s.m.DeleteVolume(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
