package clone

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

// TestDensifyCommitRefusesAFileItDoesNotSolelyOwn: between PrepareDensify
// and Commit (which runs without the caller's lock in between) the file
// may gain a second link (a sharing fork's hard link: immutable, DESIGN §2
// invariant 1) or its path may be renamed over (a snapshot restored in
// place, the old inode now someone else's). Commit then refuses
// (ErrConflict) and writes nothing into the file it opened.
func TestDensifyCommitRefusesAFileItDoesNotSolelyOwn(t *testing.T) {
	for _, tc := range []struct {
		name string
		// meanwhile changes the world after PrepareDensify; it returns
		// where the prepared file is now.
		meanwhile func(t *testing.T, child string) (held string)
	}{
		{"linked meanwhile", func(t *testing.T, child string) string {
			if err := os.Link(child, child+"-link"); err != nil {
				t.Fatal(err)
			}
			return child + "-link"
		}},
		{"path renamed over meanwhile", func(t *testing.T, child string) string {
			if err := os.Rename(child, child+"-held"); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(child, []byte("a new file at the old path"), 0o600); err != nil {
				t.Fatal(err)
			}
			return child + "-held"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testutil.SharedXFS(t)
			_, child := fragmentedChain(t, dir)
			before, err := FileLayout(child)
			if err != nil {
				t.Fatal(err)
			}
			opts, _ := quietOpts()
			d, err := PrepareDensify(context.Background(), child, opts)
			if err != nil {
				t.Fatal(err)
			}
			held := tc.meanwhile(t, child)
			if _, err := d.Commit(context.Background()); !errdefs.IsConflict(err) {
				t.Fatalf("Commit on a file %s: %v, want a conflict", tc.name, err)
			}
			if after, err := FileLayout(held); err != nil || after != before {
				t.Fatalf("Commit rewrote the prepared file: layout %+v, was %+v (%v)", after, before, err)
			}
			assertNothingLeft(t, dir, "base", filepath.Base(child), filepath.Base(held))
		})
	}
}
