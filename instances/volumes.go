package instances

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Volumes (hypeman's): named data disks kept by a VolumeStore, attached
// at create (CreateRequest.Volumes) by a hard link vol<i>.ext4 in the
// instance directory, so a writable attachment writes the volume itself.
// Rules, checked under Manager.volMu together with the create's intent
// (so two creates cannot both take a writable volume, and a delete cannot
// pass a create that is attaching):
//   - a writable volume is attached to one instance at a time; read-only
//     attachments are shared, never alongside a writable one;
//   - an instance with a writable volume cannot be forked or snapshotted
//     (409): a copy would either write the volume from two instances or
//     silently detach it; hypeman refuses both too;
//   - a volume is deleted only when no instance attaches it (409).
// Volumes need an image instance (they are mounted into its root).

// Volume is a named data disk.
type Volume struct {
	ID        string
	Name      string
	SizeBytes int64
	Tags      map[string]string
	CreatedAt string
}

// VolumeStore keeps volumes; nil in Config.Volumes turns them off (501).
type VolumeStore interface {
	Create(ctx context.Context, name string, sizeBytes int64, id string, tags map[string]string) (Volume, error)
	Get(ref string) (Volume, error)
	List() ([]Volume, error)
	Delete(ref string) error
	// DiskPath is the volume's disk file.
	DiskPath(id string) string
}

// VolumeMount asks for a volume in a create.
type VolumeMount struct {
	// Volume is an id or a name.
	Volume    string
	MountPath string
	ReadOnly  bool
}

// MaxVolumes bounds the volumes of one instance.
const MaxVolumes = 8

func volumeDiskName(i int) string { return fmt.Sprintf("vol%d.ext4", i) }
func volumeSerial(i int) string   { return fmt.Sprintf("zygote-vol%d", i) }

func (m *Manager) volumeStore() (VolumeStore, error) {
	if m.cfg.Volumes == nil {
		return nil, fmt.Errorf("this daemon has no volume store: %w", errdefs.ErrNotImplemented)
	}
	return m.cfg.Volumes, nil
}

// CreateVolume makes a volume (POST /volumes).
func (m *Manager) CreateVolume(ctx context.Context, name string, sizeBytes int64, id string, tags map[string]string) (Volume, error) {
	vs, err := m.volumeStore()
	if err != nil {
		return Volume{}, err
	}
	if err := ValidateTags(tags); err != nil {
		return Volume{}, err
	}
	return vs.Create(ctx, name, sizeBytes, id, tags)
}

// GetVolume returns a volume by id or name.
func (m *Manager) GetVolume(_ context.Context, ref string) (Volume, error) {
	vs, err := m.volumeStore()
	if err != nil {
		return Volume{}, err
	}
	return vs.Get(ref)
}

// ListVolumes returns every volume.
func (m *Manager) ListVolumes(context.Context) ([]Volume, error) {
	vs, err := m.volumeStore()
	if err != nil {
		return nil, err
	}
	return vs.List()
}

// DeleteVolume removes a volume no instance attaches (409 otherwise).
func (m *Manager) DeleteVolume(_ context.Context, ref string) error {
	vs, err := m.volumeStore()
	if err != nil {
		return err
	}
	m.volMu.Lock()
	defer m.volMu.Unlock()
	return vs.Delete(ref)
}

// VolumeUsers names the instances (and creates in flight) that attach
// volume id: the volume store's InUse callback.
func VolumeUsers(st *store.Store) func(id string) []string {
	return func(id string) []string {
		users, _ := volumeUsers(st, id)
		var out []string
		for _, u := range users {
			out = append(out, u.name)
		}
		return out
	}
}

type volumeUser struct {
	name     string
	readOnly bool
}

func volumeUsers(st *store.Store, id string) ([]volumeUser, error) {
	var users []volumeUser
	err := st.View(func(tx *store.Tx) error {
		insts, err := tx.Instances()
		if err != nil {
			return err
		}
		intents, err := tx.Intents()
		if err != nil {
			return err
		}
		for _, in := range intents {
			if in.Pending != nil {
				insts = append(insts, *in.Pending)
			}
		}
		seen := map[string]bool{}
		for _, in := range insts {
			if seen[in.ID] {
				continue
			}
			seen[in.ID] = true
			for _, v := range in.Spec.Volumes {
				if v.VolumeID == id {
					users = append(users, volumeUser{name: "instance " + in.Name, readOnly: v.ReadOnly})
				}
			}
		}
		return nil
	})
	return users, err
}

var systemDirs = []string{"/", "/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/boot", "/var"}

// validateVolumes checks a create's volume requests (no I/O).
func (m *Manager) validateVolumes(req *CreateRequest) error {
	if len(req.Volumes) == 0 {
		return nil
	}
	if _, err := m.volumeStore(); err != nil {
		return &FieldError{Field: "volumes", Err: err}
	}
	if req.Image == "" {
		return &FieldError{Field: "volumes", Err: fmt.Errorf("volumes are mounted into an image's root: give an image: %w", errdefs.ErrInvalidArgument)}
	}
	if len(req.Volumes) > MaxVolumes {
		return &FieldError{Field: "volumes", Err: fmt.Errorf("%d volumes, at most %d: %w", len(req.Volumes), MaxVolumes, errdefs.ErrInvalidArgument)}
	}
	paths := map[string]bool{}
	for i, v := range req.Volumes {
		p := v.MountPath
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || slices.Contains(systemDirs, p) || strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/") || strings.HasPrefix(p, "/dev/") {
			return &FieldError{Field: "volumes", Err: fmt.Errorf("volumes[%d]: mount_path %q must be a clean absolute path outside the system directories: %w", i, p, errdefs.ErrInvalidArgument)}
		}
		if paths[p] {
			return &FieldError{Field: "volumes", Err: fmt.Errorf("volumes[%d]: mount_path %q used twice: %w", i, p, errdefs.ErrInvalidArgument)}
		}
		paths[p] = true
	}
	return nil
}

// resolveVolumes fills inst's volume mounts from the request.
func (m *Manager) resolveVolumes(req CreateRequest, inst *store.Instance) error {
	for i, v := range req.Volumes {
		vol, err := m.cfg.Volumes.Get(v.Volume)
		if err != nil {
			return &FieldError{Field: "volumes", Err: fmt.Errorf("volumes[%d]: %w", i, err)}
		}
		for _, prev := range inst.Spec.Volumes {
			if prev.VolumeID == vol.ID {
				return &FieldError{Field: "volumes", Err: fmt.Errorf("volume %s attached twice: %w", vol.Name, errdefs.ErrInvalidArgument)}
			}
		}
		inst.Spec.Volumes = append(inst.Spec.Volumes, store.VolumeMount{VolumeID: vol.ID, MountPath: v.MountPath, ReadOnly: v.ReadOnly})
	}
	return nil
}

// claimVolumes checks inst's attachments against every other instance's
// and holds volMu: the caller journals its intent (which makes the claim
// visible) and then calls the returned func.
func (m *Manager) claimVolumes(inst store.Instance) (func(), error) {
	if len(inst.Spec.Volumes) == 0 {
		return func() {}, nil
	}
	m.volMu.Lock()
	for _, v := range inst.Spec.Volumes {
		users, err := volumeUsers(m.store, v.VolumeID)
		if err != nil {
			m.volMu.Unlock()
			return nil, err
		}
		for _, u := range users {
			if !v.ReadOnly || !u.readOnly {
				m.volMu.Unlock()
				return nil, fmt.Errorf("volume %s is attached to %s (a writable volume has one user; read-only attachments are shared): %w",
					v.VolumeID, u.name, errdefs.ErrConflict)
			}
		}
	}
	return m.volMu.Unlock, nil
}

// linkVolumes hard-links each volume's disk into a new instance directory.
func (m *Manager) linkVolumes(inst store.Instance, dir string) error {
	for i, v := range inst.Spec.Volumes {
		if err := linkErr(m.cfg.Volumes.DiskPath(v.VolumeID), filepath.Join(dir, volumeDiskName(i))); err != nil {
			return fmt.Errorf("attach volume %s: %w", v.VolumeID, err)
		}
	}
	return nil
}

// relinkVolumes replaces a fork's copies of its read-only volumes with
// links to the volumes (writable ones never fork).
func (m *Manager) relinkVolumes(inst store.Instance, dir string) error {
	for i, v := range inst.Spec.Volumes {
		if !v.ReadOnly || m.cfg.Volumes == nil {
			continue
		}
		p := filepath.Join(dir, volumeDiskName(i))
		tmp := p + ".link"
		if err := linkErr(m.cfg.Volumes.DiskPath(v.VolumeID), tmp); err != nil {
			return fmt.Errorf("attach volume %s to the fork: %w", v.VolumeID, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("attach volume %s to the fork: %w", v.VolumeID, err)
		}
	}
	return nil
}

func volumeDisks(s store.Spec) []hypervisor.Disk {
	var out []hypervisor.Disk
	for i, v := range s.Volumes {
		out = append(out, hypervisor.Disk{Path: volumeDiskName(i), ReadOnly: v.ReadOnly, Serial: volumeSerial(i)})
	}
	return out
}

func volumeConfig(s store.Spec) []agentproto.Volume {
	var out []agentproto.Volume
	for i, v := range s.Volumes {
		out = append(out, agentproto.Volume{Serial: volumeSerial(i), Path: v.MountPath, ReadOnly: v.ReadOnly, FSType: "ext4"})
	}
	return out
}

// refuseWritableVolumes is the fork and snapshot rule.
func refuseWritableVolumes(op string, inst store.Instance) error {
	for _, v := range inst.Spec.Volumes {
		if !v.ReadOnly {
			return fmt.Errorf("cannot %s %s: writable volume %s is attached at %s (its disk has one writer; a copy would detach it): %w",
				op, inst.Name, v.VolumeID, v.MountPath, errdefs.ErrConflict)
		}
	}
	return nil
}
