package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
)

// setupTTY prepares `exec -t`: the guest terminal takes this terminal's
// size and follows its resizes (SIGWINCH); with -i and a terminal on
// stdin, this terminal goes to raw mode, so keys (^C, ^D, arrows) reach
// the guest unprocessed. The returned func restores everything; call it
// before printing anything.
func setupTTY(opt *client.ExecOptions, interactive bool) (func(), error) {
	opt.TTY = true
	opt.Stderr = opt.Stdout // one terminal: one stream
	sizeFd := -1
	for _, f := range []*os.File{os.Stdout, os.Stdin, os.Stderr} {
		if term.IsTerminal(int(f.Fd())) {
			sizeFd = int(f.Fd())
			break
		}
	}
	var undo []func()
	restore := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		undo = nil
	}
	if sizeFd >= 0 {
		if cols, rows, err := term.GetSize(sizeFd); err == nil {
			opt.Rows, opt.Cols = uint32(rows), uint32(cols)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		resize := make(chan api.ExecResize, 1)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // owner: setupTTY's restore; ends when it runs
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-winch:
				}
				cols, rows, err := term.GetSize(sizeFd)
				if err != nil || rows <= 0 || cols <= 0 {
					continue
				}
				select { // only the newest size matters
				case <-resize:
				default:
				}
				resize <- api.ExecResize{Rows: uint32(rows), Cols: uint32(cols)}
			}
		}()
		opt.Resize = resize
		undo = append(undo, func() { signal.Stop(winch); close(stop); <-done })
	}
	if interactive && term.IsTerminal(int(os.Stdin.Fd())) {
		state, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			restore()
			return nil, fmt.Errorf("exec -t: raw mode: %w", err)
		}
		undo = append(undo, func() { term.Restore(int(os.Stdin.Fd()), state) })
	}
	return restore, nil
}
