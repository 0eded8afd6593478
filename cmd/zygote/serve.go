package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/internal/bytesize"
	"github.com/zygote/zygote/internal/logfile"
	"github.com/zygote/zygote/store"
	"github.com/zygote/zygote/uffd/pagerapi"
	"github.com/zygote/zygote/uffd/pagerclient"
)

type serveConfig struct {
	dataDir, socket, listen, tokenFile string
	cacheDir, initBinary, accel        string
	hypervisor, logLevel               string
	reflinkStrict, pager, densify      bool
	forkMemory                         instances.MemoryMode
	http                               httpTimeouts
	logMaxSize                         string // per console.log / vmm.log file
	logFiles                           int
	images                             imageFlags
	net                                networkConfig
}

func newServeCmd() *cobra.Command {
	cfg := serveConfig{http: defaultHTTPTimeouts, forkMemory: instances.MemoryOwned}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the zygote daemon",
		Long: `Run the zygote daemon: the REST API on a unix socket (mode 0600) and,
with --listen, on TCP behind a bearer token. VMs outlive the daemon: a
restarted daemon adopts them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			return serve(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.dataDir, "data-dir", envOr("ZYGOTE_DATA_DIR", defaultDataDir), "data directory: instances, snapshots, the store (env ZYGOTE_DATA_DIR); put it on XFS or btrfs for reflink copies")
	f.StringVar(&cfg.socket, "socket", envOr("ZYGOTE_SOCKET", defaultSocket), "API unix socket (env ZYGOTE_SOCKET)")
	f.StringVar(&cfg.listen, "listen", "", "also serve the API on this TCP address (needs --token-file)")
	f.StringVar(&cfg.tokenFile, "token-file", "", "file holding the bearer token TCP clients must send")
	f.StringVar(&cfg.cacheDir, "cache-dir", guest.CacheDir(), "guest kernel and initramfs cache (env ZYGOTE_CACHE_DIR)")
	f.StringVar(&cfg.initBinary, "init-binary", "", "zygote-init to put in the initramfs (default: next to this binary, then "+guest.InstalledInitBinary+")")
	f.StringVar(&cfg.accel, "accel", envOr("ZYGOTE_ACCEL", "auto"), "QEMU accelerator: auto (KVM if a guest really boots under it), kvm or tcg (env ZYGOTE_ACCEL)")
	f.StringVar(&cfg.hypervisor, "default-hypervisor", "qemu", "hypervisor for instances that do not name one: qemu or qemu-microvm")
	f.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&cfg.densify, "densify", true, "after a standby, rewrite a memory file that fork-shared writes fragmented, in the background, so forks of it stay fast (costs disk: the file stops sharing blocks)")
	f.BoolVar(&cfg.pager, "pager", false, "start and supervise the userfaultfd pager (zygote pager); off by default because no driver uses it yet (QEMU maps its memory file directly); state in <data-dir>/pager")
	f.BoolVar(&cfg.reflinkStrict, "reflink-strict", false, "refuse the sparse-copy fallback: snapshots and forks fail unless reflink works (also env "+clone.EnvStrict+"=1)")
	f.StringVar(&cfg.logMaxSize, "log-max-size", envOr("ZYGOTE_LOG_MAX_SIZE", "10MB"), "cap of each instance's console.log and vmm.log; at the cap a file is rotated to console.1.log (env ZYGOTE_LOG_MAX_SIZE)")
	f.Var(forkMemoryFlag{&cfg.forkMemory}, "fork-memory", "how a fork that names no --memory holds its source's memory: owned (its own copy) or shared (a hard link of the parked file, copy-on-write: far denser, but its standby reads all its RAM under QEMU 7.2; docs/fork.md)")
	cfg.net.flags(cmd)
	f.IntVar(&cfg.logFiles, "log-files", 2, "files kept per log, the live one included: an instance's logs use at most log-max-size × log-files each")
	addImageFlags(cmd, &cfg.images)
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// serve is the daemon: read the configuration, build the components,
// serve until ctx ends or a listener fails, shut down.
func serve(ctx context.Context, cfg serveConfig) error {
	log, err := newLogger(cfg.logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	if cfg.net.cleanup {
		return cleanupNetwork(context.WithoutCancel(ctx), cfg, log)
	}
	d, err := buildDaemon(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(ctx)
}

// daemon is the running components of `zygote serve`.
type daemon struct {
	cfg     serveConfig
	log     *slog.Logger
	images  *images.Store
	servers []*http.Server
	lns     []net.Listener
	closers []func() // run newest first by close
}

// buildDaemon builds every component and opens the listeners; on error it
// closes what it built.
func buildDaemon(ctx context.Context, cfg serveConfig, log *slog.Logger) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	cloneOpts, err := openDataDir(cfg, log)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(cfg.dataDir, "db"))
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() { st.Close() })
	imgs, imgUsers, err := newImageStore(cfg, log)
	if err != nil {
		return nil, err
	}
	d.images = imgs
	d.closers = append(d.closers, func() { imgs.Close() }) // after the manager's Close: closers run newest first

	drivers, err := newDrivers(cfg, cloneOpts, log)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	vols, err := newVolumeStore(cfg, st, log)
	if err != nil {
		return nil, err
	}
	nw, dns, closeNetwork, err := newNetwork(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, closeNetwork)
	m, err := newManager(cfg, st, drivers, cloneOpts, imageSource{imgs}, vols, reg, log, nw, dns)
	if err != nil {
		return nil, err
	}
	// Not on the signal context: a reconcile cut short by ^C would take
	// VMMs it could not attach to for dead ones.
	if err := m.Reconcile(context.WithoutCancel(ctx)); err != nil {
		log.Error("startup reconcile finished with errors", "err", err)
	}
	d.closers = append(d.closers, func() { m.Close() })
	imgUsers.attach(m)

	// Uncompressed: the pager's metrics are appended to the body.
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{DisableCompression: true})
	if cfg.pager {
		sup, err := startPager(ctx, cfg, m, log)
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, func() { sup.Close() }) // the pager, like the VMs, outlives a daemon restart
		metrics = withPagerMetrics(metrics, sup.Client())
	}
	if err := d.listen(m, metrics); err != nil {
		return nil, err
	}
	return d, nil
}

// openDataDir creates the data directory and checks that it can make the
// copies the configuration asks for.
func openDataDir(cfg serveConfig, log *slog.Logger) (clone.Options, error) {
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return clone.Options{}, fmt.Errorf("data directory: %w", err)
	}
	envStrict, err := clone.StrictFromEnv()
	if err != nil {
		return clone.Options{}, err
	}
	strict := cfg.reflinkStrict || envStrict
	probe, err := clone.Probe(cfg.dataDir)
	if err != nil {
		return clone.Options{}, fmt.Errorf("probe reflink in %s: %w", cfg.dataDir, err)
	}
	log.Info(probe.String(), "reflink", probe.Reflink, "filesystem", probe.Filesystem, "strict", strict)
	if strict && !probe.Reflink {
		return clone.Options{}, fmt.Errorf("--reflink-strict: %s", probe)
	}
	// LinkReadOnly: forks and snapshots share the immutable files (root
	// disks, kernel, initramfs) by hard link instead of copying them.
	return clone.Options{Strict: strict, LinkReadOnly: true, Logger: log}, nil
}

// newDrivers is the one place the hypervisor drivers are named.
func newDrivers(cfg serveConfig, cloneOpts clone.Options, log *slog.Logger) ([]hypervisor.Driver, error) {
	logMax, err := bytesize.Parse(cfg.logMaxSize)
	if err != nil || logMax < 4096 || cfg.logFiles < 1 {
		return nil, fmt.Errorf("--log-max-size %q (at least 4KB) and --log-files %d (at least 1): %w", cfg.logMaxSize, cfg.logFiles, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	logLimits := logfile.Limits{MaxBytes: logMax, Files: cfg.logFiles}
	share := newAssetSharer(log)
	// A sharing fork's memory becomes its own through the same copies
	// (and --reflink-strict) as every other fork.
	cloner := clone.New(cloneOpts)
	copyMemory := func(ctx context.Context, src, dst string) error {
		_, err := cloner.File(ctx, src, dst)
		return err
	}
	var drivers []hypervisor.Driver
	for _, machine := range []string{"q35", "microvm"} {
		d, err := qemu.New(qemu.Config{Machine: machine, Accel: cfg.accel, ProbeCacheDir: cfg.cacheDir, ShareFile: share.Share, CopyMemory: copyMemory, LogLimits: logLimits, Logger: log})
		if err != nil {
			return nil, err
		}
		drivers = append(drivers, d)
	}
	return drivers, nil
}

func newManager(cfg serveConfig, st *store.Store, drivers []hypervisor.Driver, cloneOpts clone.Options, imgs instances.ImageSource, vols instances.VolumeStore, reg *prometheus.Registry, log *slog.Logger, nw instances.Networker, dns []string) (*instances.Manager, error) {
	return instances.New(instances.Config{
		DataDir: cfg.dataDir, Store: st, Drivers: drivers, DefaultHypervisor: cfg.hypervisor, ForkMemory: cfg.forkMemory,
		Assets:    assetResolver(cfg),
		DialAgent: dialAgent(log),
		Clone:     clone.New(cloneOpts),
		NoDensify: !cfg.densify,
		Images:    imgs,
		Volumes:   vols,
		Metrics:   instances.NewMetrics(reg),
		Logger:    log,
		Network:   nw, NetworkDNS: dns,
	})
}

// listen opens the unix socket and, with --listen, the TCP listener.
func (d *daemon) listen(m *instances.Manager, metrics http.Handler) error {
	unixLn, err := listenUnix(d.cfg.socket)
	if err != nil {
		return err
	}
	socket := d.cfg.socket
	d.closers = append(d.closers, func() { os.Remove(socket) })
	srv := api.NewServer(api.ServerConfig{Manager: m, Metrics: metrics, Images: d.images, UploadDir: uploadsDir(d.cfg), Logger: d.log})
	d.add(unixLn, srv.Handler())

	if d.cfg.listen == "" {
		return nil
	}
	token, err := readToken(d.cfg.tokenFile)
	if err != nil {
		return err
	}
	tcpLn, err := net.Listen("tcp", d.cfg.listen)
	if err != nil {
		return err
	}
	tsrv := api.NewServer(api.ServerConfig{Manager: m, Metrics: metrics, Images: d.images, UploadDir: uploadsDir(d.cfg), Token: token, Logger: d.log})
	d.add(tcpLn, tsrv.TokenHandler())
	return nil
}

// add pairs a listener with a server; close closes listeners never served.
func (d *daemon) add(ln net.Listener, h http.Handler) {
	d.lns = append(d.lns, ln)
	d.servers = append(d.servers, d.cfg.http.server(h))
	d.closers = append(d.closers, func() { ln.Close() })
}

// run serves until ctx ends or a server fails, then shuts the servers
// down. VMs keep running.
func (d *daemon) run(ctx context.Context) error {
	errc := make(chan error, len(d.servers))
	for i, s := range d.servers {
		go func() { errc <- s.Serve(d.lns[i]) }() // owner: run; Shutdown ends it
		d.log.Info("zygote serving", "addr", d.lns[i].Addr().String(), "data_dir", d.cfg.dataDir)
	}
	var err error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down; VMs keep running and are adopted by the next daemon")
	case err = <-errc:
		d.log.Error("server failed", "err", err)
		err = fmt.Errorf("serve: %w", err)
	}
	d.shutdown()
	return err
}

func (d *daemon) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range d.servers {
		if err := s.Shutdown(sctx); err != nil {
			d.log.Warn("shutdown", "err", err)
		}
	}
}

func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// assetResolver resolves the guest kernel and initramfs on first use and
// caches the answer; an error (no kernel fetched yet) is retried on the
// next boot, so `zygote kernel fetch` fixes a running daemon.
func assetResolver(cfg serveConfig) func(context.Context) (hypervisor.BootAssets, error) {
	var mu sync.Mutex
	var cached *hypervisor.BootAssets
	return func(ctx context.Context) (hypervisor.BootAssets, error) {
		mu.Lock()
		defer mu.Unlock()
		if cached != nil {
			return *cached, nil
		}
		a, err := guest.ResolveAssets(ctx, guest.AssetOptions{CacheDir: cfg.cacheDir, InitBinary: cfg.initBinary})
		if err != nil {
			return hypervisor.BootAssets{}, err
		}
		cached = &hypervisor.BootAssets{Kernel: a.Kernel, Initramfs: a.Initramfs}
		return *cached, nil
	}
}

func dialAgent(log *slog.Logger) instances.AgentDialer {
	return func(ctx context.Context, vm hypervisor.VM) (instances.Agent, error) {
		return agent.DialFunc(ctx, vm.DialAgent, agent.Options{Logger: log})
	}
}

// listenUnix listens on path with mode 0600, replacing a stale socket but
// refusing to take over one a live daemon answers on.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon is serving on %s", path)
	}
	os.Remove(path)
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, os.Chmod(path, 0o600)
}

func readToken(path string) (string, error) {
	if path == "" {
		return "", errors.New("--listen needs --token-file: TCP clients must authenticate")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if len(token) < 16 {
		return "", fmt.Errorf("token in %s is %d characters; use at least 16", path, len(token))
	}
	return token, nil
}

// startPager starts (or adopts) the pager under supervision. When a pager
// dies, the VMs it was serving would hang on their next missing page: the
// daemon kills them and says why.
func startPager(ctx context.Context, cfg serveConfig, m *instances.Manager, log *slog.Logger) (*pagerclient.Supervisor, error) {
	dir := filepath.Join(cfg.dataDir, "pager")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sup, err := pagerclient.NewSupervisor(pagerclient.Config{
		SocketPath: filepath.Join(dir, "pager.sock"), StateDir: dir, Logger: log,
		OnLost: func(l pagerclient.Lost) {
			log.Error("the pager died; killing the VMs it served", "pid", l.PID, "err", l.Err, "sessions", l.Sessions)
			m.Kill(context.Background(), l.Sessions, "the pager serving its memory died")
		},
		OnFailed: func(s pagerapi.Session) {
			m.Kill(context.Background(), []string{s.ID}, "its pager session failed: "+s.Error)
		},
	})
	if err != nil {
		return nil, err
	}
	if err := sup.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the pager: %w", err)
	}
	log.Info("pager supervised", "pid", sup.PID(), "socket", filepath.Join(dir, "pager.sock"))
	return sup, nil
}

// withPagerMetrics appends the pager's metrics to the daemon's.
func withPagerMetrics(next http.Handler, pc *pagerclient.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if text, err := pc.Metrics(ctx); err == nil {
			io.WriteString(w, text)
		}
	})
}
