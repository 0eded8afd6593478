// Package images turns OCI images into read-only root disks: it pulls by
// reference from a registry (go-containerregistry; anonymous or basic
// auth; plain http only for loopback and configured insecure registries)
// or imports an OCI layout directory, an OCI archive or a `docker save`
// tar, verifies every blob against its digest, flattens the layers itself
// (whiteouts, opaque directories, hard links, symlinks, xattrs, modes and
// owners), and builds one ext4 (mkfs.ext4 -d) or erofs (mkfs.erofs) disk
// per manifest digest, shared read-only by every instance of the image.
//
// # Vocabulary
//
//   - name: a normalized reference (ParseRef): "docker.io/library/busybox:latest",
//     "127.0.0.1:5000/a/b:t", "host/repo@sha256:…".
//   - digest: the image manifest's digest (for a multi-platform index, the
//     digest of the linux/amd64 manifest). Images are content-addressed by it.
//   - tag: a name pointing at a digest. Several names may share a digest;
//     the disk exists once.
//
// # Lifecycle of a name
//
//	Pull/Import → pending ─(queue slot)→ pulling → converting → ready
//	                  └────────────┴───────────┴──→ failed
//
// pending covers resolving the manifest and waiting for one of
// Config.MaxConversions slots (Image.QueuePosition is the place in line);
// pulling fetches, verifies and flattens layers (Image.Progress counts
// layers and compressed bytes; PullOptions.OnProgress reports them);
// converting runs mkfs. ready means the image directory is committed and
// the tag written. failed keeps Error (and the classed Err) in memory until
// Delete or the next Pull of that name; failures are not persisted, and a
// restarted daemon forgets them.
//
// A Pull of a name whose pull is running returns that pull (the same pull
// requested twice at once is done once), provided it brings the same
// credentials: otherwise, as in hypeman, ErrConflict; two names resolving to the same
// digest convert it once (the second waits, then only tags). Pulling a
// ready name again re-resolves it: while that runs, Get shows the new pull.
//
// # Durability
//
// A conversion works in <root>/tmp/<id>/ and commits with one rename of
// the finished directory (disk + image.json, both fsynced) into
// <root>/blobs/sha256/<hex>/; the tag is written to a temporary file and
// renamed. A crash therefore never leaves a half-written image marked
// ready: Open removes everything under tmp/, image directories without a
// complete record, and tags pointing at missing digests. mkfs runs with
// a parent-death signal, so it dies with the daemon. The root disk is
// chmod 0444 and never rewritten; Delete removes it (renamed into tmp/
// first) only when Config.InUse names no user.
//
// # Safety
//
// Layer paths are resolved one component at a time inside the staging
// root; a symlink is followed as the guest would (absolute targets restart
// at the root) and never out of it. Entries with absolute names, ".."
// climbing above the root, hard links to outside, relative symlinks
// pointing above the root, or parents resolving above it are refused: the
// pull fails with errdefs.ErrInvalidArgument and nothing is written outside
// the staging directory.
//
// # Errors
//
// Registry 404 → errdefs.ErrNotFound (the registry's message kept), 401/403
// → ErrUnauthorized, corrupt blobs → ErrDigestMismatch (ErrInvalidArgument),
// a full data disk → ErrResourceExhausted (507), Delete of a used image or
// of a running pull → ErrConflict naming the users, a bad reference →
// ErrInvalidArgument.
//
// # Concurrency
//
// Store methods are safe for concurrent use. The Store owns one goroutine
// per running pull; Close cancels them (they end failed, ErrUnavailable,
// their staging removed) and waits. Lock order: Store.mu,
// then the queue's lock (leaf). Config.InUse is called with Store.mu held
// and must not call back into the Store. One process at a time: Open takes
// an flock on <root>/lock.
//
// images never imports drivers, instances, api or store: its metadata is
// its own directory tree.
package images
