package network

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/libcni"
	"github.com/zygote/zygote/errdefs"
)

// Defaults for the network zygote writes when its CNI config dir is empty.
const (
	// DefaultSubnet is the host-local range of the default network. Not
	// 10.88.0.0/16: that is podman's default.
	DefaultSubnet = "10.89.0.0/16"
	// DefaultBridge is the bridge of the default network.
	DefaultBridge = "zygote0"
	// DefaultNetworkName is the name of the default conflist's network.
	DefaultNetworkName = "zygote"
	// DefaultPoolSize is how many ready slots the pool keeps.
	DefaultPoolSize = 2
	// defaultConfFile is the file zygote writes the default conflist to.
	defaultConfFile = "10-zygote.conflist"
	// cniVersion of the default conflist: Debian's plugins speak at most
	// 1.0.0, and libcni 1.3 fails ADD when a conflist says 1.1.0.
	cniVersion = "1.0.0"
)

// DefaultBinDirs are searched for CNI plugins when Config.BinDirs is empty:
// Debian's containernetworking-plugins, then the upstream location.
var DefaultBinDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// Config configures a Manager. StateDir is required; everything else has a
// default.
type Config struct {
	// StateDir holds the slot records (slots/), the pinned namespaces
	// (netns/), host-local's allocations (ipam/) and libcni's result cache
	// (cni-cache/). Reusing it across restarts is what keeps slots.
	StateDir string
	// ConfDir is the CNI config dir (`zygote serve --cni-conf-dir`).
	// Default StateDir/net.d. When it holds no network config, zygote
	// writes its default conflist there; otherwise it uses what is there.
	ConfDir string
	// BinDirs are searched for plugins (`--cni-bin-dir`). Default
	// DefaultBinDirs.
	BinDirs []string
	// NetworkName picks the network when ConfDir holds several; default:
	// the first network by file name (libcni's order).
	NetworkName string
	// Subnet of the default conflist (`--subnet`); default DefaultSubnet.
	// New refuses a subnet that overlaps a route of the daemon's namespace.
	Subnet string
	// Bridge of the default conflist; default DefaultBridge.
	Bridge string
	// PoolSize is how many ready slots to keep. 0 means DefaultPoolSize;
	// a negative value disables the pool (every Acquire runs CNI ADD).
	PoolSize int
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.StateDir == "" {
		return c, fmt.Errorf("network config: state dir is required: %w", errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return c, fmt.Errorf("network config: state dir %s: %w", c.StateDir, err)
	}
	c.StateDir = abs
	if c.ConfDir == "" {
		c.ConfDir = filepath.Join(c.StateDir, "net.d")
	}
	if len(c.BinDirs) == 0 {
		c.BinDirs = DefaultBinDirs
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.PoolSize < 0 {
		c.PoolSize = 0
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

func (c Config) nsDir() string    { return filepath.Join(c.StateDir, "netns") }
func (c Config) slotDir() string  { return filepath.Join(c.StateDir, "slots") }
func (c Config) ipamDir() string  { return filepath.Join(c.StateDir, "ipam") }
func (c Config) cacheDir() string { return filepath.Join(c.StateDir, "cni-cache") }
func (c Config) lockPath() string { return filepath.Join(c.StateDir, "lock") }

// DefaultConfList returns the conflist zygote writes into an empty config
// dir: a bridge with host-local IPAM over subnet (allocations kept in
// ipamDir, not /var/lib/cni), masquerade to the outside, portmap for
// published ports and the firewall plugin's forward rules.
func DefaultConfList(name, bridge, subnet, ipamDir string) ([]byte, error) {
	_, n, err := net.ParseCIDR(subnet)
	if err != nil || n.IP.To4() == nil {
		return nil, fmt.Errorf("subnet %q: want an IPv4 CIDR such as %s: %w", subnet, DefaultSubnet, errdefs.ErrInvalidArgument)
	}
	if ones, _ := n.Mask.Size(); ones > 28 {
		return nil, fmt.Errorf("subnet %s: too small for slots (want /28 or larger): %w", subnet, errdefs.ErrInvalidArgument)
	}
	list := map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridge,
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": n.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": ipamDir,
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
			map[string]any{
				"type":    "firewall",
				"backend": "iptables",
			},
		},
	}
	return json.MarshalIndent(list, "", "  ")
}

// loadNetwork returns the network to use. When ConfDir holds no network
// but zygote's own default file, the default is (re)generated from cfg: a
// changed --subnet takes effect, unless slots still hold addresses of the
// old one (ErrConflict: clean up first). The generated network's subnet is
// checked against the host's routes before it is written. Otherwise the
// operator's network is used: the one named NetworkName, or the first.
func loadNetwork(cfg Config) (*libcni.NetworkConfigList, error) {
	if err := os.MkdirAll(cfg.ConfDir, 0o755); err != nil {
		return nil, fmt.Errorf("create CNI config dir: %w", err)
	}
	files, err := libcni.ConfFiles(cfg.ConfDir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("list CNI config dir %s: %w", cfg.ConfDir, err)
	}
	defPath := filepath.Join(cfg.ConfDir, defaultConfFile)
	files = slices.DeleteFunc(files, func(f string) bool { return f == defPath })
	if len(files) == 0 {
		return defaultNetwork(cfg, defPath)
	}
	for _, f := range files {
		l, err := libcni.NetworkConfFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("load CNI network %s: %w", f, err)
		}
		if cfg.NetworkName == "" || l.Name == cfg.NetworkName {
			if len(l.Plugins) == 0 {
				return nil, fmt.Errorf("CNI network %s (%s) has no plugins: %w", l.Name, f, errdefs.ErrInvalidArgument)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("no CNI network named %q in %s: %w", cfg.NetworkName, cfg.ConfDir, errdefs.ErrNotFound)
}

// existingNetwork returns the network slots were made with, without
// generating or rewriting anything (Cleanup); nil when there is none.
func existingNetwork(cfg Config) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(cfg.ConfDir, []string{".conflist"})
	if err != nil || len(files) == 0 {
		return nil, nil
	}
	defPath := filepath.Join(cfg.ConfDir, defaultConfFile)
	if len(files) == 1 && files[0] == defPath {
		l, err := libcni.NetworkConfFromFile(defPath)
		if err != nil {
			return nil, fmt.Errorf("load CNI network %s: %w", defPath, err)
		}
		return l, nil
	}
	return loadNetwork(cfg)
}

func defaultNetwork(cfg Config, path string) (*libcni.NetworkConfigList, error) {
	name := cfg.NetworkName
	if name == "" {
		name = DefaultNetworkName
	}
	data, err := DefaultConfList(name, cfg.Bridge, cfg.Subnet, cfg.ipamDir())
	if err != nil {
		return nil, err
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("default conflist: %w", err)
	}
	old, readErr := os.ReadFile(path)
	if readErr == nil && bytes.Equal(old, data) {
		return list, nil
	}
	if err := checkSubnets(list); err != nil {
		return nil, err
	}
	if readErr == nil {
		if recs, _ := os.ReadDir(cfg.slotDir()); len(recs) > 0 {
			return nil, fmt.Errorf("the default network's settings changed (%s) but %d slots still use the old ones; run zygote serve --cleanup-network first, or keep the old settings: %w",
				path, len(recs), errdefs.ErrConflict)
		}
	}
	if err := writeFileAtomic(path, data, 0o644); err != nil {
		return nil, fmt.Errorf("write default conflist: %w", err)
	}
	return list, nil
}

// bridgeConf is the part of a bridge plugin's config the subnet check and
// Cleanup read.
type bridgeConf struct {
	Type   string `json:"type"`
	Bridge string `json:"bridge"`
	IPAM   struct {
		Type   string `json:"type"`
		Subnet string `json:"subnet"`
		Ranges [][]struct {
			Subnet string `json:"subnet"`
		} `json:"ranges"`
		DataDir string `json:"dataDir"`
	} `json:"ipam"`
}

// bridgesOf returns the bridge plugins of a network (none for a network of
// other plugins: then there is nothing to check or remove).
func bridgesOf(list *libcni.NetworkConfigList) []bridgeConf {
	var out []bridgeConf
	for _, p := range list.Plugins {
		var b bridgeConf
		if json.Unmarshal(p.Bytes, &b) == nil && b.Type == "bridge" {
			if b.Bridge == "" {
				b.Bridge = "cni0" // the bridge plugin's default
			}
			out = append(out, b)
		}
	}
	return out
}

func (b bridgeConf) subnets() []*net.IPNet {
	var out []*net.IPNet
	add := func(s string) {
		if _, n, err := net.ParseCIDR(s); err == nil {
			out = append(out, n)
		}
	}
	add(b.IPAM.Subnet)
	for _, set := range b.IPAM.Ranges {
		for _, r := range set {
			add(r.Subnet)
		}
	}
	return out
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), mode)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return errors.Join(fmt.Errorf("write %s", path), err)
	}
	return nil
}
