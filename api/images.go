package api

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images"
)

// ImageStore is everything the image routes ask of the image store;
// *images.Store implements it. ServerConfig.Images nil turns the routes
// into 501 not_supported.
type ImageStore interface {
	// Pull starts a background pull and returns the image's state.
	Pull(ref string, opts images.PullOptions) (images.Image, error)
	Get(ref string) (images.Image, error)
	List() ([]images.Image, error)
	// Delete refuses (ErrConflict) while the image is used or pulled.
	Delete(ctx context.Context, ref string) error
	// Import converts the archive at path and waits for the result.
	Import(ctx context.Context, path, name string) (images.Image, error)
}

var _ ImageStore = (*images.Store)(nil)

// DefaultMaxImportBytes bounds an uploaded archive when
// ServerConfig.MaxImportBytes is zero.
const DefaultMaxImportBytes = 16 << 30

func (s *Server) imageRoutes() {
	h := s.mux.HandleFunc
	h("GET /images", s.listImages)
	h("POST /images", s.pullImage)
	h("POST /images/import", s.importImage)
	h("GET /images/{name}", s.getImage)
	h("DELETE /images/{name}", s.deleteImage)
}

// imageStore returns the configured store, or the 501 every image route
// answers without one.
func (s *Server) imageStore() (ImageStore, error) {
	if s.cfg.Images == nil {
		return nil, fmt.Errorf("this daemon has no image store: %w", errdefs.ErrNotImplemented)
	}
	return s.cfg.Images, nil
}

// invalidName answers an unparsable reference with hypeman's code.
func invalidName(err error) error {
	if errdefs.IsInvalidArgument(err) {
		return withCode(http.StatusBadRequest, "invalid_name", err)
	}
	return err
}

func toImage(img images.Image) Image {
	out := Image{
		Name: img.Name, Digest: img.Digest, Status: string(img.Status), QueuePosition: img.QueuePosition,
		Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env, Platform: img.Platform,
		Format: img.Format, User: img.User, CreatedAt: img.CreatedAt,
	}
	if img.Error != "" {
		msg := redactPaths(img.Error)
		out.Error = &msg
	}
	if img.Status == images.StatusReady {
		size := img.SizeBytes
		out.SizeBytes = &size
	}
	if img.WorkingDir != "" {
		wd := img.WorkingDir
		out.WorkingDir = &wd
	}
	switch img.Status {
	case images.StatusPending, images.StatusPulling, images.StatusConverting:
		p := img.Progress
		out.Progress = &ImageProgress{LayersDone: p.LayersDone, LayersTotal: p.LayersTotal, BytesDone: p.BytesDone, BytesTotal: p.BytesTotal}
	}
	return out
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	st, err := s.imageStore()
	if err != nil {
		writeError(w, err)
		return
	}
	list, err := st.List()
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Image, 0, len(list))
	for _, img := range list {
		out = append(out, toImage(img))
	}
	writeJSON(w, http.StatusOK, out)
}

// unsupportedPullFields are hypeman's POST /images fields zygote does not
// implement: 501 unless zero.
var unsupportedPullFields = []string{"tags"}

func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) {
	st, err := s.imageStore()
	if err != nil {
		writeError(w, err)
		return
	}
	var req PullImageRequest
	if err := decodeRequest(r, &req, unsupportedPullFields); err != nil {
		writeError(w, err)
		return
	}
	if req.Name == "" {
		writeError(w, invalidf("invalid_name", "name: an image reference is required"))
		return
	}
	if err := checkPlatform(req.Platform); err != nil {
		writeError(w, err)
		return
	}
	var opts images.PullOptions
	if c := req.Credentials; c != nil && (c.Username != "" || c.Password != "" || c.RegistryToken != "") {
		opts.Auth = authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, RegistryToken: c.RegistryToken})
	}
	img, err := st.Pull(req.Name, opts)
	if err != nil {
		writeError(w, invalidName(err))
		return
	}
	writeJSON(w, http.StatusAccepted, toImage(img))
}

// isDigest says whether ref is a bare manifest digest ("sha256:<64 hex>").
func isDigest(ref string) bool {
	hex, ok := strings.CutPrefix(ref, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	return strings.Trim(hex, "0123456789abcdef") == ""
}

// findImage resolves {name}: a reference (short names allowed), or a bare
// digest, which names the first image (by name) holding it.
func findImage(st ImageStore, ref string) (images.Image, error) {
	if !isDigest(ref) {
		img, err := st.Get(ref)
		return img, invalidName(err)
	}
	list, err := st.List()
	if err != nil {
		return images.Image{}, err
	}
	for _, img := range list {
		if img.Digest == ref {
			return img, nil
		}
	}
	return images.Image{}, fmt.Errorf("image with digest %s: %w", ref, errdefs.ErrNotFound)
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	st, err := s.imageStore()
	if err != nil {
		writeError(w, err)
		return
	}
	img, err := findImage(st, r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toImage(img))
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	st, err := s.imageStore()
	if err != nil {
		writeError(w, err)
		return
	}
	ref := r.PathValue("name")
	if isDigest(ref) {
		img, err := findImage(st, ref)
		if err != nil {
			writeError(w, err)
			return
		}
		ref = img.Name
	}
	if err := st.Delete(r.Context(), ref); err != nil {
		writeError(w, invalidName(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// importImage takes an archive (docker save, or an OCI layout as a tar)
// streamed as application/x-tar, stages it in ServerConfig.UploadDir,
// converts it and answers once it is ready. The body is bounded by
// ServerConfig.MaxImportBytes (413 past it). The conversion is not tied
// to the client's connection: a client that goes away does not cut a
// conversion short (the image still becomes ready, or failed).
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) {
	st, err := s.imageStore()
	if err != nil {
		writeError(w, err)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-tar" {
		writeError(w, fmt.Errorf("import: the body must be an archive sent as Content-Type application/x-tar, not %q: %w",
			r.Header.Get("Content-Type"), errdefs.ErrInvalidArgument))
		return
	}
	name := r.URL.Query().Get("name")
	if name != "" {
		if _, err := images.ParseRef(name); err != nil {
			writeError(w, invalidName(err))
			return
		}
	}
	limit := s.cfg.MaxImportBytes
	if limit <= 0 {
		limit = DefaultMaxImportBytes
	}
	if r.ContentLength > limit {
		importTooLarge(w, r.ContentLength, limit)
		return
	}
	dir := s.cfg.UploadDir
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		writeError(w, fmt.Errorf("import: upload directory: %w", err))
		return
	}
	f, err := os.CreateTemp(dir, "import-*.tar")
	if err != nil {
		writeError(w, fmt.Errorf("import: %w", err))
		return
	}
	path := f.Name()
	defer os.Remove(path)
	n, err := io.Copy(f, io.LimitReader(r.Body, limit+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		writeError(w, fmt.Errorf("import: receive the archive: %w", err))
		return
	}
	if n > limit {
		importTooLarge(w, -1, limit)
		return
	}
	if n == 0 {
		writeError(w, fmt.Errorf("import: the body is empty; send the archive: %w", errdefs.ErrInvalidArgument))
		return
	}
	begin := time.Now()
	img, err := st.Import(context.WithoutCancel(r.Context()), path, name)
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("image imported", "name", img.Name, "digest", img.Digest, "bytes", n, "duration", time.Since(begin))
	writeJSON(w, http.StatusCreated, toImage(img))
}

// importTooLarge answers 413 for an archive past the import limit; the
// connection is closed so the rest of the body is never read.
func importTooLarge(w http.ResponseWriter, size, limit int64) {
	msg := "import: the archive is larger than " + strconv.FormatInt(limit, 10) + " bytes, the daemon's import limit"
	if size >= 0 {
		msg = fmt.Sprintf("import: the archive is %d bytes, more than the daemon's import limit of %d", size, limit)
	}
	w.Header().Set("Connection", "close")
	writeJSON(w, http.StatusRequestEntityTooLarge, Error{Code: "payload_too_large", Message: msg})
}
