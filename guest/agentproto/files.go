package agentproto

// File operations: stat, copy out of the guest, copy into the guest.
//
// OpStat: Request{Stat} → Response{Stat}.
//
// OpCopyFrom (guest → host): Request{CopyFrom} → Response (Error set when
// the source cannot be opened), then per entry of the tree, depth first,
// parents before children:
//
//	MsgFileHeader (JSON FileHeader)
//	MsgFileData*  (a regular file's bytes, in order, Size in total)
//	MsgFileEnd
//
// and finally MsgCopyDone (JSON CopyResult). An entry that cannot be read
// after its header went out ends the stream with a CopyResult carrying the
// error. Symlinks are sent as themselves (LinkTarget verbatim) unless
// FollowLinks; they are never followed while walking.
//
// OpCopyTo (host → guest): Request{CopyTo} → Response (Error set when the
// destination cannot be created), then for a regular file the host sends
// MsgFileData* and MsgFileEnd; for a directory or a symlink just
// MsgFileEnd. The guest answers MsgCopyDone. A regular file is written to a
// temporary name beside the destination and renamed over it at the end, so
// an interrupted copy never leaves a half-written file under the
// destination name.
//
// Flow control is yamux's per-stream window: neither side buffers more
// than a window of a file, whatever its size.
const (
	OpStat     = "stat"
	OpCopyFrom = "copy_from"
	OpCopyTo   = "copy_to"
)

// Messages on copy streams.
const (
	// MsgFileHeader (guest → host) starts an entry: a JSON FileHeader.
	MsgFileHeader MsgType = 8
	// MsgFileData carries a regular file's bytes (either direction).
	MsgFileData MsgType = 9
	// MsgFileEnd ends an entry (either direction).
	MsgFileEnd MsgType = 10
	// MsgCopyDone (guest → host) ends a copy: a JSON CopyResult.
	MsgCopyDone MsgType = 11
)

// StatRequest asks about one path in the guest.
type StatRequest struct {
	Path        string `json:"path"`
	FollowLinks bool   `json:"follow_links,omitempty"`
}

// PathInfo describes a guest path (hypeman's PathInfo, plus owner and
// mtime).
type PathInfo struct {
	Exists bool `json:"exists"`
	// Error is set when the path could not be examined (not for a path
	// that does not exist).
	Error      string `json:"error,omitempty"`
	IsDir      bool   `json:"is_dir,omitempty"`
	IsFile     bool   `json:"is_file,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	// Mode is the permission bits plus setuid, setgid and sticky (07777).
	Mode  uint32 `json:"mode,omitempty"`
	Size  int64  `json:"size,omitempty"`
	Mtime int64  `json:"mtime,omitempty"` // unix seconds
	UID   uint32 `json:"uid,omitempty"`
	GID   uint32 `json:"gid,omitempty"`
}

// CopyFromRequest asks for the tree at Path.
type CopyFromRequest struct {
	Path string `json:"path"`
	// FollowLinks sends what symlinks point to instead of the links.
	FollowLinks bool `json:"follow_links,omitempty"`
}

// FileHeader describes one entry of a copy out of the guest.
//
// Path is slash-separated and relative: "" when the source is not a
// directory; otherwise the source directory's base name, then
// base/child/... for what is inside (hypeman's layout). It never is
// absolute and never contains "..".
type FileHeader struct {
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"` // 07777 bits
	IsDir      bool   `json:"is_dir,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	Size       int64  `json:"size,omitempty"`
	Mtime      int64  `json:"mtime"`                // unix seconds
	MtimeNsec  int64  `json:"mtime_nsec,omitempty"` // nanoseconds within Mtime
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
}

// CopyToRequest creates one entry in the guest: a regular file (bytes
// follow), a directory (IsDir) or a symlink (LinkTarget).
type CopyToRequest struct {
	Path       string `json:"path"`
	IsDir      bool   `json:"is_dir,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	// Mode is applied (07777 bits); 0 means 0644 for a file, 0755 for a
	// directory.
	Mode uint32 `json:"mode,omitempty"`
	// UID and GID, when either is not zero, are applied with lchown.
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
	// Mtime (unix seconds) and MtimeNsec, when Mtime is not zero, set the
	// modification time (of the link itself for a symlink).
	Mtime     int64 `json:"mtime,omitempty"`
	MtimeNsec int64 `json:"mtime_nsec,omitempty"`
}

// CopyResult is the payload of MsgCopyDone.
type CopyResult struct {
	// BytesWritten (copy to) or BytesSent (copy from) counts file bytes.
	Bytes int64  `json:"bytes"`
	Error *Error `json:"error,omitempty"`
	// Path names the guest path the error is about.
	Path string `json:"path,omitempty"`
}
