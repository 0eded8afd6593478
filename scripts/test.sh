#!/usr/bin/env bash
# The whole test suite (README, second command; .ci/run calls it):
# installs what is missing, then vets and runs every test. VM tests boot
# real QEMU guests, reflink tests use loop-mounted XFS, pager tests a real
# userfaultfd; here nothing may skip for lack of them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PATH:/usr/local/go/bin"
export ZYGOTE_REQUIRE_VM_TESTS=1 ZYGOTE_REQUIRE_PRIVILEGED=1

echo "==> go.mod/go.sum tidy" >&2
# -diff changes nothing: it prints what `go mod tidy` would change and fails.
if ! tidy_diff=$(go mod tidy -diff 2>&1); then
	printf '%s\n' "$tidy_diff" >&2
	echo "go.mod/go.sum are not tidy: run \`go mod tidy\` and commit the result" >&2
	exit 1
fi
echo "==> go vet" >&2
go vet ./...
echo "==> platform-neutral packages build and vet off Linux" >&2
# The rest (instances, api, hypervisor/qemu, cmd) need internal/proc's
# pidfds and are Linux-only by design.
GOOS=darwin go vet ./errdefs/ ./store/... ./clone/... ./snapshots/ ./hypervisor/ ./uffd/... ./guest/agentproto/
echo "==> layout: import rules" >&2
go test -count=1 -run TestImportRules .
echo "==> race detector on the concurrent packages" >&2
go test -count=1 -race -timeout 15m ./store/... ./instances/... ./api/... ./internal/... ./uffd/... ./guest/agentproto/...
echo "==> fuzz: the API's decoding and name, ref and size parsing (20 s)" >&2
go test -count=1 -run '^$' -fuzz '^FuzzAPI$' -fuzztime 20s ./api/
echo "==> every test" >&2
go test -count=1 -timeout 40m ./...
