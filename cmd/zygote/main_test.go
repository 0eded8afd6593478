package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain plays two parts besides running the tests. With
// ZYGOTE_TEST_CLI=1 it is the real `zygote` CLI with the remaining
// arguments (exec_tty_test.go drives it under a pty). Otherwise it refuses
// to act as the zygote binary: a daemon under test that starts `<this
// executable> pager` gets a process that exits at once, which is what a
// pager binary that cannot run looks like.
func TestMain(m *testing.M) {
	if os.Getenv("ZYGOTE_TEST_CLI") == "1" {
		os.Args = append([]string{"zygote"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == "pager" {
		fmt.Fprintln(os.Stderr, "this is the cmd/zygote test binary, not a pager")
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// TestRootAssemblesEveryVerb checks main's explicit list against the
// verbs the CLI documents.
func TestRootAssemblesEveryVerb(t *testing.T) {
	want := []string{"serve", "pager", "kernel", "run", "ps", "inspect", "logs", "exec", "start", "stop",
		"cp", "standby", "restore", "fork", "rm", "stats", "resources", "snapshot", "snapshot create", "snapshot ls", "snapshot inspect",
		"snapshot rm", "snapshot fork", "snapshot restore", "pull", "images", "image", "image ls", "image inspect",
		"image rm", "image import", "volume", "volume create", "volume ls", "volume inspect", "volume rm"}
	root := newRootCmd()
	for _, path := range want {
		t.Run(path, func(t *testing.T) {
			args := append([]string{}, splitWords(path)...)
			cmd, rest, err := root.Find(args)
			if err != nil || len(rest) != 0 || cmd.CommandPath() != "zygote "+path {
				t.Fatalf("zygote %s: found %q rest %q err %v", path, cmd.CommandPath(), rest, err)
			}
		})
	}
}

func splitWords(s string) []string {
	var out []string
	word := ""
	for _, r := range s + " " {
		if r == ' ' {
			if word != "" {
				out = append(out, word)
			}
			word = ""
			continue
		}
		word += string(r)
	}
	return out
}
