package api

import (
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/internal/bytesize"
)

// Request rules that are about the wire, not the manager: hypeman's
// fields zygote does not implement, size strings, enums. The rule for
// every field: it works, or it is refused with a 400 or 501 naming it;
// none is decoded and dropped.

// unsupportedCreateFields are hypeman's create fields zygote does not
// implement: 501 not_supported unless they hold their zero value.
var unsupportedCreateFields = []string{
	"credentials", "devices", "gpu", "disk_io_bps", "snapshot_policy",
	"auto_standby", "health_check", "restart_policy", "skip_kernel_headers", "skip_guest_agent",
}

// hypervisors is the spec's Hypervisor enum (hypeman's); which of them
// this host runs is the manager's business.
var hypervisors = []string{"cloud-hypervisor", "firecracker", "qemu", "qemu-microvm", "vz"}

func checkHypervisor(field, v string) error {
	if v != "" && !slices.Contains(hypervisors, v) {
		return fmt.Errorf("%s %q: want one of %v: %w", field, v, hypervisors, errdefs.ErrInvalidArgument)
	}
	return nil
}

// parseSize reads a size field ("1GB", "512MB", binary units; plain
// digits are bytes); "" is 0 (the default). Zero, negative and
// unparsable sizes are 400 invalid_<field>.
func parseSize(field, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := bytesize.Parse(v)
	if err != nil {
		if field != "size" {
			err = fmt.Errorf("%s: %w", field, err)
		}
		return 0, withCode(http.StatusBadRequest, "invalid_"+field, err)
	}
	if n <= 0 {
		return 0, invalidf("invalid_"+field, "%s %q: must be more than 0", field, v)
	}
	return n, nil
}

var platformPattern = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9]+(/[a-z0-9.]+)?$`)

// checkPlatform accepts hypeman's platforms (400 invalid_platform
// otherwise) and, of them, the host's own (404 platform_not_available
// otherwise): the guest runs on the host's CPU.
func checkPlatform(v string) error {
	if v == "" {
		return nil
	}
	if !platformPattern.MatchString(v) || (v != "linux/amd64" && v != "linux/arm64") {
		return invalidf("invalid_platform", "platform %q: want linux/amd64 or linux/arm64", v)
	}
	if host := "linux/" + runtime.GOARCH; v != host {
		return withCode(http.StatusNotFound, "platform_not_available",
			fmt.Errorf("platform %s: this host runs %s guests only: %w", v, host, errdefs.ErrNotFound))
	}
	return nil
}

// createRequest turns a create body into the manager's request.
func createRequest(req CreateInstanceRequest) (instances.CreateRequest, error) {
	creq := instances.CreateRequest{
		Name: req.Name, Hypervisor: req.Hypervisor, VCPUs: req.VCPUs, KernelArgs: req.KernelArgs,
		Env: req.Env, Tags: req.Tags, Image: req.Image,
	}
	if req.Image != "" {
		// Overrides of the image's config: given (even empty) replaces.
		creq.Entrypoint, creq.Cmd = req.Entrypoint, req.Cmd
	} else if creq.Command = append(append([]string{}, req.Entrypoint...), req.Cmd...); len(creq.Command) == 0 {
		creq.Command = nil
	}
	if err := networkRequest(req, &creq); err != nil {
		return creq, err
	}
	if err := checkHypervisor("hypervisor", req.Hypervisor); err != nil {
		return creq, err
	}
	if err := checkPlatform(req.Platform); err != nil {
		return creq, err
	}
	if req.VCPUs < 0 {
		return creq, fmt.Errorf("vcpus must be positive: %w", errdefs.ErrInvalidArgument)
	}
	var err error
	if creq.MemoryBytes, err = parseSize("size", req.Size); err != nil {
		return creq, err
	}
	// hypeman's CLI always sends a hotplug size: it is parsed, and the
	// instance says what it got (hotplug_size "0 B": no memory hotplug).
	if req.HotplugSize != "" {
		if _, err := bytesize.Parse(req.HotplugSize); err != nil {
			return creq, withCode(http.StatusBadRequest, "invalid_hotplug_size", fmt.Errorf("hotplug_size: %w", err))
		}
	}
	overlay, err := parseSize("overlay_size", req.OverlaySize)
	if err != nil {
		return creq, err
	}
	if overlay > 0 && req.Image == "" {
		return creq, invalidf("invalid_overlay_size", "overlay_size sizes an image's writable overlay disk, and an instance without image has none")
	}
	creq.OverlayBytes = overlay
	for i, v := range req.Volumes {
		if v.Overlay || v.OverlaySize != "" {
			return creq, withCode(http.StatusNotImplemented, "not_supported",
				fmt.Errorf("volumes[%d].overlay: zygote does not put overlays on volumes; attach it readonly or writable: %w", i, errdefs.ErrNotImplemented))
		}
		if v.VolumeID == "" || v.MountPath == "" {
			return creq, fmt.Errorf("volumes[%d]: volume_id and mount_path are required: %w", i, errdefs.ErrInvalidArgument)
		}
		creq.Volumes = append(creq.Volumes, instances.VolumeMount{Volume: v.VolumeID, MountPath: v.MountPath, ReadOnly: v.ReadOnly})
	}
	return creq, nil
}

// networkRequest applies the network object and publish: enabled false
// opts out; hypeman's bandwidth and egress settings are 501.
func networkRequest(req CreateInstanceRequest, creq *instances.CreateRequest) error {
	if n := req.Network; n != nil {
		for _, f := range []struct{ name, v string }{
			{"network.bandwidth_download", n.BandwidthDownload}, {"network.bandwidth_upload", n.BandwidthUpload},
			{"network.egress", string(n.Egress)},
		} {
			if f.v != "" && !zeroJSON([]byte(f.v)) {
				return withCode(http.StatusNotImplemented, "not_supported",
					fmt.Errorf("field %s: zygote does not implement it; leave it out: %w", f.name, errdefs.ErrNotImplemented))
			}
		}
		creq.NoNetwork = n.Enabled != nil && !*n.Enabled
		creq.AllowPeers = n.AllowPeers
	}
	for _, p := range req.Publish {
		creq.Publish = append(creq.Publish, instances.Port{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
	}
	return nil
}

// checkCompression validates a compression config (400
// invalid_snapshot_compression) and refuses enabling it (501): zygote
// keeps memory files uncompressed, so forks can reflink them.
func checkCompression(c *SnapshotCompressionConfig, kind string) error {
	if c == nil {
		return nil
	}
	switch {
	case c.Algorithm != "" && c.Algorithm != "zstd" && c.Algorithm != "lz4":
		return invalidf("invalid_snapshot_compression", "compression algorithm %q: want zstd or lz4", c.Algorithm)
	case c.Level != nil && c.Algorithm == "lz4" && (*c.Level < 0 || *c.Level > 9):
		return invalidf("invalid_snapshot_compression", "lz4 compression level %d: want 0-9", *c.Level)
	case c.Level != nil && c.Algorithm != "lz4" && (*c.Level < 1 || *c.Level > 19):
		return invalidf("invalid_snapshot_compression", "zstd compression level %d: want 1-19", *c.Level)
	case c.Enabled && kind == string(instances.SnapshotStopped):
		return invalidf("invalid_snapshot_compression", "compression applies to Standby snapshots only (a Stopped one holds no memory)")
	case c.Enabled:
		return withCode(http.StatusNotImplemented, "not_supported",
			fmt.Errorf("compression: zygote keeps memory uncompressed (forks reflink it): %w", errdefs.ErrNotImplemented))
	}
	return nil
}

// checkStart refuses start's entrypoint and cmd: zygote fixes the
// workload at create (it keeps one command, not hypeman's two
// overridable halves).
func checkStart(r *http.Request) error {
	var req StartInstanceRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	for _, f := range []struct {
		field string
		v     []string
	}{{"entrypoint", req.Entrypoint}, {"cmd", req.Cmd}} {
		if field := f.field; len(f.v) > 0 {
			return withCode(http.StatusNotImplemented, "not_supported",
				fmt.Errorf("field %s: start cannot change the workload, which is fixed at create: %w", field, errdefs.ErrNotImplemented))
		}
	}
	return nil
}

// checkStandby accepts a disabled compression and refuses the rest.
func checkStandby(r *http.Request) error {
	var req StandbyInstanceRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := checkCompression(req.Compression, string(instances.SnapshotStandby)); err != nil {
		return err
	}
	if req.CompressionDelay != "" {
		if d, err := time.ParseDuration(req.CompressionDelay); err != nil || d < 0 {
			return invalidf("invalid_compression_delay", "compression_delay %q: want a Go duration such as 30s", req.CompressionDelay)
		}
		return withCode(http.StatusNotImplemented, "not_supported",
			fmt.Errorf("field compression_delay: standby never compresses: %w", errdefs.ErrNotImplemented))
	}
	return nil
}

// noBody accepts an empty body or {}.
func noBody(r *http.Request) error {
	var req struct{}
	return decode(r, &req)
}
