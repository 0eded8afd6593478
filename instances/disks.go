package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Disks of an instance made from an image (DESIGN invariants 1 and 7):
//
//	rootfs.<fstype>  the image's root disk: a hard link to the images
//	                 store's immutable (0444) file, attached read-only;
//	                 forks and snapshots hard-link it again (clone's
//	                 LinkReadOnly), so N instances share one inode
//	overlay.ext4     the instance's own writable overlay disk, a sparse
//	                 ext4 file; forks and snapshots copy it reflink-first
//	                 with the memory file while the VM is paused (QEMU's
//	                 stop flushes the guest's writes to it first)
//
// A stop keeps both: a start boots the same overlay again.

// ImageSource is what the manager needs from the image store; nil in
// Config.Images turns image support off (a create with an image is 501).
type ImageSource interface {
	// Ensure returns the ready image ref, pulling it first and waiting
	// when it is not in the store.
	Ensure(ctx context.Context, ref string) (ImageConfig, error)
	// RootDisk is the path of digest's read-only root disk (0444, never
	// rewritten).
	RootDisk(digest string) (string, error)
}

// ImageConfig is a ready image: its identity and the OCI config that
// makes the default workload.
type ImageConfig struct {
	Name   string
	Digest string
	// Format is the root disk's filesystem: "ext4" or "erofs".
	Format     string
	Entrypoint []string
	Cmd        []string
	Env        map[string]string
	WorkingDir string
	User       string
}

// DefaultOverlayBytes is an image instance's overlay disk size when the
// request gives none (hypeman's default, 10 GiB, sparse).
const DefaultOverlayBytes = 10 << 30

const overlayDiskName = "overlay.ext4"

func rootDiskName(fstype string) string { return "rootfs." + fstype }

// hasImage says whether inst boots an image (disks + workload) rather
// than the built-in initramfs guest.
func hasImage(s store.Spec) bool { return s.ImageDigest != "" }

// disksOf is the hypervisor's view of an instance's disks, in the order
// that is part of its device signature: root, then overlay.
func disksOf(s store.Spec) []hypervisor.Disk {
	if !hasImage(s) {
		return nil
	}
	return append([]hypervisor.Disk{
		{Path: rootDiskName(s.RootFSType), ReadOnly: true, Serial: agentproto.RootDiskSerial},
		{Path: overlayDiskName, Serial: agentproto.OverlayDiskSerial},
	}, volumeDisks(s)...)
}

// workloadConfig fills an agent configuration's image part: the root
// filesystem from the disks and the image's program.
func workloadConfig(s store.Spec) (*agentproto.RootFS, *agentproto.Process) {
	if !hasImage(s) {
		return nil, nil
	}
	root := &agentproto.RootFS{Serial: agentproto.RootDiskSerial, FSType: s.RootFSType, OverlaySerial: agentproto.OverlayDiskSerial}
	w := s.Workload
	if w == nil {
		return root, nil
	}
	args := append(slices.Clone(w.Entrypoint), w.Cmd...)
	return root, &agentproto.Process{Args: args, Env: w.Env, WorkingDir: w.WorkingDir, User: w.User}
}

// resolveWorkload applies docker's rules to an image's config and the
// request's overrides: an entrypoint given replaces the image's and drops
// its cmd; a cmd given replaces the image's cmd; the request's env is
// laid over the image's.
func resolveWorkload(img ImageConfig, req CreateRequest) (*store.Workload, error) {
	w := &store.Workload{Entrypoint: img.Entrypoint, Cmd: img.Cmd, WorkingDir: img.WorkingDir, User: img.User}
	if req.Entrypoint != nil {
		w.Entrypoint, w.Cmd = req.Entrypoint, nil
	}
	if req.Cmd != nil {
		w.Cmd = req.Cmd
	}
	if len(w.Entrypoint)+len(w.Cmd) == 0 {
		return nil, &FieldError{Field: "cmd", Err: fmt.Errorf("image %s has neither entrypoint nor cmd: give a command to run: %w",
			img.Name, errdefs.ErrInvalidArgument)}
	}
	env := map[string]string{}
	for k, v := range img.Env {
		env[k] = v
	}
	for k, v := range req.Env {
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		w.Env = append(w.Env, k+"="+env[k])
	}
	return w, nil
}

// validateImage checks a create's image fields (no I/O).
func (m *Manager) validateImage(req *CreateRequest) error {
	if req.Image == "" {
		if req.OverlayBytes != 0 {
			return &FieldError{Field: "overlay_size", Err: fmt.Errorf("overlay_size sizes an image's writable disk; an instance without image has none: %w", errdefs.ErrInvalidArgument)}
		}
		if req.Entrypoint != nil || req.Cmd != nil {
			req.Command = append(slices.Clone(req.Entrypoint), req.Cmd...)
			req.Entrypoint, req.Cmd = nil, nil
		}
		return nil
	}
	if m.cfg.Images == nil {
		return &FieldError{Field: "image", Err: fmt.Errorf("image %q: this daemon has no image store; omit image to boot the built-in guest: %w",
			req.Image, errdefs.ErrNotImplemented)}
	}
	if req.Command != nil {
		return &FieldError{Field: "cmd", Err: fmt.Errorf("an image instance's program is entrypoint and cmd, not command: %w", errdefs.ErrInvalidArgument)}
	}
	if req.OverlayBytes == 0 {
		req.OverlayBytes = DefaultOverlayBytes
	}
	req.OverlayBytes = (req.OverlayBytes + 4095) &^ 4095
	if req.OverlayBytes < guest.MinOverlaySize {
		return &FieldError{Field: "overlay_size", Err: fmt.Errorf("overlay_size must be at least %d MiB: %w", guest.MinOverlaySize>>20, errdefs.ErrInvalidArgument)}
	}
	return nil
}

// ensureImage pulls the request's image if needed and fills inst's image
// facts (digest, root disk format, workload). It touches no instance file.
func (m *Manager) ensureImage(ctx context.Context, req CreateRequest, inst *store.Instance) error {
	if req.Image == "" {
		return nil
	}
	img, err := m.cfg.Images.Ensure(ctx, req.Image)
	if err != nil {
		return &FieldError{Field: "image", Err: fmt.Errorf("image %s: %w", req.Image, err)}
	}
	w, err := resolveWorkload(img, req)
	if err != nil {
		return err
	}
	if img.Format == "" {
		img.Format = "ext4"
	}
	inst.Spec.ImageDigest, inst.Spec.RootFSType, inst.Spec.OverlayBytes, inst.Spec.Workload = img.Digest, img.Format, req.OverlayBytes, w
	return nil
}

// makeDisks gives a new instance directory its disks: its own link to the
// image's root disk and a fresh overlay. On error the caller removes the
// directory (nothing else is made).
func (m *Manager) makeDisks(ctx context.Context, inst store.Instance, dir string) error {
	if !hasImage(inst.Spec) {
		return nil
	}
	src, err := m.cfg.Images.RootDisk(inst.Spec.ImageDigest)
	if err != nil {
		return fmt.Errorf("root disk of %s: %w", inst.Spec.Image, err)
	}
	if err := m.shareImmutable(ctx, src, filepath.Join(dir, rootDiskName(inst.Spec.RootFSType))); err != nil {
		return fmt.Errorf("root disk of %s: %w", inst.Spec.Image, err)
	}
	if err := guest.FormatOverlay(ctx, filepath.Join(dir, overlayDiskName), inst.Spec.OverlayBytes); err != nil {
		return classifyNoSpace(err)
	}
	return m.linkVolumes(inst, dir)
}

func linkErr(src, dst string) error { return classifyNoSpace(os.Link(src, dst)) }

// shareImmutable puts an immutable file into an instance directory: a
// hard link (same filesystem), else a reflink or a copy, read-only.
func (m *Manager) shareImmutable(ctx context.Context, src, dst string) error {
	err := os.Link(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		return classifyNoSpace(err)
	}
	fc, ok := m.cfg.Clone.(interface {
		File(ctx context.Context, src, dst string) (clone.Stats, error)
	})
	if !ok {
		return fmt.Errorf("link %s: %w (and the clone seam cannot copy a file)", src, err)
	}
	if _, err := fc.File(ctx, src, dst); err != nil {
		return err
	}
	return os.Chmod(dst, 0o444)
}

// classifyNoSpace classes a full disk as ErrResourceExhausted (507).
func classifyNoSpace(err error) error {
	if err == nil || errdefs.IsResourceExhausted(err) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || strings.Contains(err.Error(), "No space left on device") {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}

// ImageUsers reports the instances and snapshots (by name) that use the
// root disk of digest, creates in flight included: the images store's
// InUse callback (DELETE /images/x is 409 naming them). It reads only st,
// so it never calls back into the image store.
func ImageUsers(st *store.Store) func(digest string) []string {
	return func(digest string) []string {
		var users []string
		st.View(func(tx *store.Tx) error {
			insts, err := tx.Instances()
			if err != nil {
				return err
			}
			for _, in := range insts {
				if in.Spec.ImageDigest == digest {
					users = append(users, "instance "+in.Name)
				}
			}
			snaps, err := tx.Snapshots()
			if err != nil {
				return err
			}
			for _, s := range snaps {
				if s.Spec.ImageDigest == digest {
					name := s.Name
					if name == "" {
						name = s.ID
					}
					users = append(users, "snapshot "+name)
				}
			}
			intents, err := tx.Intents()
			if err != nil {
				return err
			}
			for _, in := range intents {
				if in.Pending != nil && in.Pending.Spec.ImageDigest == digest && !slices.Contains(users, "instance "+in.Pending.Name) {
					users = append(users, "instance "+in.Pending.Name+" (being created)")
				}
			}
			return nil
		})
		return users
	}
}

// ImageUsers names the users of digest's root disk (see the function
// ImageUsers): the daemon's images-store seam asks the manager this.
func (m *Manager) ImageUsers(digest string) []string { return ImageUsers(m.store)(digest) }
