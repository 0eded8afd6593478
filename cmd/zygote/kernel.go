package main

import (
	"fmt"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/guest"
)

// newKernelCmd manages the guest kernel cache. It works on the local cache
// directory, not through the daemon: fetching needs apt, and the daemon
// only reads the cache.
func newKernelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Manage the guest kernel cache (Debian's cloud kernel)",
	}
	cmd.AddCommand(newKernelFetchCmd(), newKernelLsCmd())
	return cmd
}

func newKernelFetchCmd() *cobra.Command {
	var cacheDir, pkg, deb string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Download the current linux-image-cloud-amd64 into the cache (never installs it on the host)",
		Long: `fetch resolves the kernel image package that linux-image-cloud-amd64 depends
on, downloads it with apt-get download, unpacks it with dpkg-deb -x into the
cache, extracts the uncompressed ELF vmlinux and keeps the bzImage and the
virtio modules. It is a no-op when that version is already cached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			p := startProgress("fetching guest kernel")
			k, fetched, err := guest.FetchKernel(ctx, guest.FetchOptions{CacheDir: cacheDir, Package: pkg, DebFile: deb, Logger: log})
			p.Stop()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(kernelJSON(k))
			}
			verb := "fetched"
			if !fetched {
				verb = "already cached"
			}
			fmt.Printf("%s %s: %s\n", k.Version, verb, k.Dir)
			fmt.Printf("  boot image  %s\n", k.BootImage())
			fmt.Printf("  modules     %d (+%d built in)\n", len(k.Modules), len(k.Builtin))
			return nil
		},
	}
	cmd.Flags().StringVar(&cacheDir, "cache-dir", guest.CacheDir(), "cache directory (env ZYGOTE_CACHE_DIR)")
	cmd.Flags().StringVar(&pkg, "package", "", "kernel image package to fetch instead of the current one (linux-image-<ver>-cloud-amd64)")
	cmd.Flags().StringVar(&deb, "deb", "", "use this local .deb instead of downloading")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the cached kernel as JSON")
	return cmd
}

func newKernelLsCmd() *cobra.Command {
	var cacheDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List cached guest kernels, newest (the one VMs boot) first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ks, err := guest.ListKernels(cacheDir)
			if err != nil {
				return err
			}
			if asJSON {
				out := make([]map[string]any, 0, len(ks))
				for _, k := range ks {
					out = append(out, kernelJSON(k))
				}
				return printJSON(out)
			}
			if len(ks) == 0 {
				fmt.Fprintf(os.Stderr, "no guest kernel in %s: run `zygote kernel fetch`\n", cacheDir)
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "VERSION\tPACKAGE VERSION\tBOOT IMAGE\tMODULES\tFETCHED")
			for _, k := range ks {
				img := "vmlinux (ELF, PVH)"
				if k.BootImage() == k.Vmlinuz() {
					img = "vmlinuz (bzImage)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d (+%d built in)\t%s\n", k.Version, k.PackageVersion, img,
					len(k.Modules), len(k.Builtin), k.FetchedAt.Format("2006-01-02 15:04"))
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&cacheDir, "cache-dir", guest.CacheDir(), "cache directory (env ZYGOTE_CACHE_DIR)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func kernelJSON(k guest.Kernel) map[string]any {
	return map[string]any{
		"version":         k.Version,
		"package":         k.Package,
		"package_version": k.PackageVersion,
		"dir":             k.Dir,
		"boot_image":      k.BootImage(),
		"vmlinux":         k.Vmlinux(),
		"vmlinuz":         k.Vmlinuz(),
		"pvh":             k.PVH,
		"modules":         k.Modules,
		"builtin":         k.Builtin,
		"fetched_at":      k.FetchedAt,
	}
}
