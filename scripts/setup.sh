#!/usr/bin/env bash
# Installs what zygote needs on Debian 12 (as root), idempotently: the
# Debian packages, the zygote and zygote-init binaries (./bin), and the
# guest kernel (Debian's cloud kernel, unpacked into the cache, never
# installed as the host kernel). Safe to run again: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
  echo "zygote setup needs root (loop devices, QEMU, userfaultfd): run it with sudo" >&2
  exit 1
fi

# Debian packages: QEMU, the busybox the guest runs, reflink filesystems
# for the data directory and tests, lz4 for the guest kernel, cpio for a
# test that reads our initramfs back with GNU cpio; e2fsprogs and
# erofs-utils for image root disks and overlays; the CNI plugins (and the
# iptables they run), nftables, iproute2 and util-linux (nsenter) for VM
# networking and its tests;
# docker-registry, mmdebstrap and umoci for the image tests.
packages=(qemu-system-x86 qemu-utils busybox-static xfsprogs btrfs-progs lz4 cpio kmod ca-certificates curl e2fsprogs erofs-utils iproute2 util-linux containernetworking-plugins iptables nftables docker-registry mmdebstrap umoci skopeo)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go: zygote needs Go 1.26 (Debian 12's golang package is too old).
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "zygote needs Go 1.26 or newer on PATH (or in /usr/local/go): https://go.dev/dl/" >&2
  exit 1
fi

say "building bin/zygote and bin/zygote-init ($(go version | cut -d' ' -f3))"
go build -o bin/zygote ./cmd/zygote
CGO_ENABLED=0 go build -trimpath -o bin/zygote-init ./cmd/zygote-init

say "guest kernel (Debian cloud kernel, cached under ${ZYGOTE_CACHE_DIR:-/var/cache/zygote})"
./bin/zygote kernel fetch
