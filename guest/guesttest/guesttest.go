package guesttest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/zygote/zygote/guest"
)

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "ZYGOTE_REQUIRE_VM_TESTS"

// Unavailable skips t (or fails it when RequireEnv=1) because something a
// VM test needs is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1: VM tests are required here)", msg, RequireEnv)
	}
	t.Skip(msg)
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// InitBinary builds zygote-init (CGO_ENABLED=0) once per test binary and
// returns its path: <cache>/test/zygote-init-<sha256 prefix>, named by
// content and written by rename. Test binaries of different source trees
// (worktrees) sharing the cache never boot each other's zygote-init, and
// parallel ones never see half-written files.
func InitBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { buildPath, buildErr = buildInit() })
	if buildErr != nil {
		t.Fatalf("build zygote-init: %v", buildErr)
	}
	return buildPath
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

func buildInit() (string, error) {
	dir := filepath.Join(guest.CacheDir(), "test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "zygote-init")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// -trimpath and no VCS stamp make the binary reproducible, so the
	// initramfs cache key stays the same across test runs.
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w",
		"-o", out, "github.com/zygote/zygote/cmd/zygote-init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	final := filepath.Join(dir, "zygote-init-"+hex.EncodeToString(sum[:8]))
	// Builds of other trees and older commits pile up: drop day-old ones.
	if old, _ := filepath.Glob(filepath.Join(dir, "zygote-init-*")); len(old) > 0 {
		for _, p := range old {
			if fi, err := os.Stat(p); err == nil && p != final && time.Since(fi.ModTime()) > 24*time.Hour {
				os.Remove(p)
			}
		}
	}
	if err := os.Rename(out, final); err != nil {
		return "", err
	}
	return final, nil
}

// Assets returns the boot assets of a test guest: the newest cached
// kernel, and an initramfs with a zygote-init built from this tree.
func Assets(t testing.TB) guest.Assets {
	t.Helper()
	cache := guest.CacheDir()
	if _, err := guest.FindKernel(cache); err != nil {
		Unavailable(t, "no guest kernel: run `zygote kernel fetch` (cache %s, env ZYGOTE_CACHE_DIR): %v", cache, err)
	}
	if _, err := os.Stat(guest.DefaultBusybox); err != nil {
		Unavailable(t, "no %s: install the Debian package busybox-static", guest.DefaultBusybox)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := guest.ResolveAssets(ctx, guest.AssetOptions{CacheDir: cache, InitBinary: InitBinary(t)})
	if err != nil {
		t.Fatalf("guest assets: %v", err)
	}
	return a
}

// QEMU returns the path of qemu-system-x86_64, or skips (fails when
// required) with the package to install.
func QEMU(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		Unavailable(t, "qemu-system-x86_64 not found: install the Debian package qemu-system-x86")
	}
	return p
}
