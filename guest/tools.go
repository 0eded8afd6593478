package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/zygote/zygote/errdefs"
)

// requireTool returns the path of a host tool, or an error naming the
// Debian package that provides it.
func requireTool(name, debPackage string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found on this host: install the Debian package %q (apt-get install %s): %w",
			name, debPackage, debPackage, errdefs.ErrUnavailable)
	}
	return p, nil
}

// runTool runs a tool and returns its stdout; the error carries stderr.
func runTool(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// checkStaticELF fails unless path is an ELF executable without an
// interpreter (statically linked): it runs as the guest's init or from
// an initramfs that has no libc.
func checkStaticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return err
		}
		return fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initramfs has no libc", path)
		}
	}
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is built for %s, the guest is x86-64", path, f.Machine)
	}
	return nil
}
