package api

import (
	"fmt"
	"net/http"

	"github.com/zygote/zygote/errdefs"
)

// PathInfo is GET /instances/{id}/stat: hypeman's PathInfo, plus mtime,
// uid and gid (zygote extensions).
type PathInfo struct {
	Exists bool `json:"exists"`
	// Error is set when the path could not be examined (permission
	// denied); a path that does not exist is exists=false without error.
	Error      *string `json:"error,omitempty"`
	IsDir      bool    `json:"is_dir"`
	IsFile     bool    `json:"is_file"`
	IsSymlink  bool    `json:"is_symlink"`
	LinkTarget *string `json:"link_target,omitempty"`
	// Mode holds the permission, set-id and sticky bits (07777).
	Mode  uint32 `json:"mode"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime,omitempty"` // unix seconds
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
}

func (s *Server) statPath(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		writeError(w, fmt.Errorf("query parameter path is required: %w", errdefs.ErrInvalidArgument))
		return
	}
	follow, err := boolParam(r, "follow_links")
	if err != nil {
		writeError(w, err)
		return
	}
	info, err := s.m.Stat(r.Context(), r.PathValue("id"), p, follow)
	if err != nil {
		writeError(w, err)
		return
	}
	out := PathInfo{Exists: info.Exists, IsDir: info.IsDir, IsFile: info.IsFile, IsSymlink: info.IsSymlink,
		Mode: info.Mode, Size: info.Size, Mtime: info.Mtime, UID: info.UID, GID: info.GID}
	if info.Error != "" {
		out.Error = &info.Error
	}
	if info.IsSymlink {
		out.LinkTarget = &info.LinkTarget
	}
	writeJSON(w, http.StatusOK, out)
}
