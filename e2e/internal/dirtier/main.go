// Command dirtier runs inside a guest for the fork-chain benchmark: it
// rewrites N pages of a file at uniformly random page offsets, the worst
// case for copy-on-write fragmentation (each write lands in a different
// shared block).
//
//	dirtier FILE PAGES
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dirtier FILE PAGES")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	f, err := os.OpenFile(os.Args[1], os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pages := fi.Size() / 4096
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		for j := range buf {
			buf[j] = byte(rand.Uint32())
		}
		if _, err := f.WriteAt(buf, rand.Int64N(pages)*4096); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
