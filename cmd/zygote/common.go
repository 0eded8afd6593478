package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
)

// Defaults, overridden by flags and then by environment variables.
const (
	defaultSocket  = "/run/zygote/zygote.sock"
	defaultDataDir = "/var/lib/zygote"
)

// envOr returns the environment variable if set, else def.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// clientFlags are the flags every client verb shares.
type clientFlags struct {
	socket   string
	endpoint string
}

func addClientFlags(cmd *cobra.Command, f *clientFlags) {
	cmd.Flags().StringVar(&f.socket, "socket", envOr("ZYGOTE_SOCKET", defaultSocket), "daemon socket (env ZYGOTE_SOCKET)")
	cmd.Flags().StringVar(&f.endpoint, "endpoint", os.Getenv("ZYGOTE_ENDPOINT"), "daemon TCP endpoint, http://host:port, instead of the socket (env ZYGOTE_ENDPOINT; token from ZYGOTE_TOKEN)")
}

func (f *clientFlags) client() (*client.Client, error) {
	if f.endpoint != "" {
		return client.New(f.endpoint, os.Getenv("ZYGOTE_TOKEN"))
	}
	return client.New(f.socket, "")
}

// signalContext is cancelled by ^C or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// clientCommand builds a verb that talks to the daemon.
func clientCommand(cmd *cobra.Command, run func(ctx context.Context, c *client.Client, args []string) error) *cobra.Command {
	var cf clientFlags
	addClientFlags(cmd, &cf)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := cf.client()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		return run(ctx, c, args)
	}
	return cmd
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func hypervisorLabel(in api.Instance) string {
	if in.Accelerator != "" {
		return fmt.Sprintf("%s (%s)", in.Hypervisor, in.Accelerator)
	}
	return in.Hypervisor
}

func memoryLabel(in api.Instance) string {
	if in.MemoryBytes%(1<<30) == 0 && in.MemoryBytes >= 4<<30 {
		return fmt.Sprintf("%d GiB", in.MemoryBytes>>30)
	}
	if in.MemoryBytes > 0 {
		return fmt.Sprintf("%d MiB", in.MemoryBytes>>20)
	}
	return in.Size
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// statusLine is the one-line summary verbs print after changing an
// instance: "web  Running  qemu (tcg)  256 MiB  ready in 3.1 s".
func statusLine(in api.Instance, suffix string) string {
	parts := []string{in.Name, in.State, hypervisorLabel(in), memoryLabel(in)}
	if in.Network.IP != nil {
		parts = append(parts, "ip "+*in.Network.IP)
	}
	if suffix != "" {
		parts = append(parts, suffix)
	}
	return strings.Join(parts, "  ")
}

func seconds(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// progress shows a spinner with a message on a terminal while work runs;
// elsewhere it prints nothing (scripts read stdout).
type progress struct {
	stop chan struct{}
	done chan struct{}
}

func startProgress(msg string) *progress {
	p := &progress{stop: make(chan struct{}), done: make(chan struct{})}
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		close(p.done)
		return p
	}
	go func() { // owner: the progress; Stop ends it
		defer close(p.done)
		frames := `⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏`
		runes := []rune(frames)
		begin := time.Now()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(os.Stderr, "\r%c %s %s ", runes[i%len(runes)], msg, seconds(time.Since(begin)))
			select {
			case <-p.stop:
				fmt.Fprint(os.Stderr, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *progress) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// waitRunning waits until the instance is Running, with a spinner.
func waitRunning(ctx context.Context, c *client.Client, ref, msg string) (api.Instance, error) {
	p := startProgress(msg)
	defer p.Stop()
	for {
		res, err := c.WaitForState(ctx, ref, "Running", 5*time.Minute)
		if err != nil {
			return api.Instance{}, err
		}
		if res.State == "Running" {
			return c.GetInstance(ctx, ref)
		}
		if !res.TimedOut {
			msg := ""
			if res.StateError != nil {
				msg = ": " + *res.StateError
			}
			return api.Instance{}, fmt.Errorf("instance %s is %s and will not become Running%s", ref, res.State, msg)
		}
	}
}

func parseKV(pairs []string, what string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE: %w", what, p, errdefs.ErrInvalidArgument)
		}
		out[k] = v
	}
	return out, nil
}
