package agentproto

// The guest network every VM and every fork has (Firecracker's
// clone-networking recipe): uniqueness lives outside the guest, in the
// per-VM network slot that NATs this fixed address, so nothing inside the
// guest changes after a restore. The network slot gives the TAP end
// GatewayCIDR; the guest's NIC has GuestMAC.
const (
	// GuestInterface is the name the guest gives its NIC.
	GuestInterface = "eth0"
	// GuestMAC is the NIC's MAC address in every VM.
	GuestMAC = "02:5a:79:67:00:02"
	// GuestCIDR is the guest's address.
	GuestCIDR = "169.254.0.2/30"
	// GatewayIP is the TAP end in the slot: the guest's default route.
	GatewayIP = "169.254.0.1"
	// GatewayCIDR is the address the slot puts on its TAP.
	GatewayCIDR = "169.254.0.1/30"
	// DefaultMTU is the guest NIC's MTU unless NetworkConfig says otherwise.
	DefaultMTU = 1500
)

// Disk serials the host gives an image's disks by convention (a disk is
// found by its virtio serial, /sys/block/vdX/serial, at most 20 bytes).
const (
	RootDiskSerial    = "zygote-root"
	OverlayDiskSerial = "zygote-overlay"
)

// WorkloadRoot is where zygote-init assembles the workload's root
// filesystem (an overlay of the root disk and the overlay disk). The
// workload and every exec run chrooted there.
const WorkloadRoot = "/sysroot"

// RootFS is the workload's root filesystem.
type RootFS struct {
	// Serial names the read-only root disk (an image's flattened layers).
	Serial string `json:"serial"`
	// FSType is its filesystem: "ext4" or "erofs".
	FSType string `json:"fstype"`
	// OverlaySerial names the writable overlay disk, an ext4 filesystem the
	// host formatted at create (guest.FormatOverlay); the overlay's upper
	// and work directories live on it. Empty: a tmpfs upper, lost at stop.
	OverlaySerial string `json:"overlay_serial,omitempty"`
}

// Volume is a disk mounted into the workload's root.
type Volume struct {
	Serial string `json:"serial"`
	// Path is the absolute mount point inside the workload root; missing
	// directories are created.
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// FSType defaults to ext4.
	FSType string `json:"fstype,omitempty"`
}

// Process is the workload: what the image's entrypoint and cmd resolve to.
type Process struct {
	// Args is argv; Args[0] is looked up in the PATH of Env when it has no
	// slash, inside the workload root.
	Args []string `json:"args"`
	// Env is KEY=VALUE, on top of a default PATH; HOME comes from the
	// user's passwd entry when Env has none.
	Env []string `json:"env,omitempty"`
	// WorkingDir defaults to "/"; it must exist in the root.
	WorkingDir string `json:"working_dir,omitempty"`
	// User is "", "name", "uid", "name:group", "uid:gid" (OCI's
	// config.User), resolved in the root's /etc/passwd and /etc/group.
	// Empty is root. Supplementary groups come from /etc/group.
	User string `json:"user,omitempty"`
}

// NetworkConfig sets up the guest NIC before the workload starts.
type NetworkConfig struct {
	// Interface is the name to give the NIC (default GuestInterface).
	Interface string `json:"interface,omitempty"`
	// MAC finds the NIC (default GuestMAC).
	MAC string `json:"mac,omitempty"`
	// Address is the guest's CIDR (GuestCIDR).
	Address string `json:"address"`
	// Gateway is the default route's next hop (GatewayIP); empty: none.
	Gateway string `json:"gateway,omitempty"`
	// MTU defaults to DefaultMTU.
	MTU int `json:"mtu,omitempty"`
	// DNS servers go to the workload root's /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
}

// WorkloadStatus answers OpWaitWorkload and is carried in Hello.
type WorkloadStatus struct {
	// Pid is the workload's pid in the guest.
	Pid int `json:"pid"`
	// Exited is set once the workload has exited.
	Exited *ExitStatus `json:"exited,omitempty"`
}

// Features an agent reports in Hello.Features.
const (
	// FeatureWorkload: Configure understands Root, Volumes, Process and
	// Network, and the agent serves OpWaitWorkload.
	FeatureWorkload = "workload"
)

// OpWaitWorkload blocks until the workload exits and answers with
// Response.Workload (Exited set). It answers at once if it already exited,
// and with CodeNotFound when this boot has no workload.
const OpWaitWorkload = "wait_workload"
