#!/usr/bin/env bash
# The newcomer's demo (README, first command): installs what is missing,
# puts a data directory on a loop-mounted XFS image (a sparse file) so
# snapshots and forks are reflinks, starts the daemon, and walks a VM
# through boot, standby and fork; then builds an OCI image locally (busybox,
# with umoci), serves it from a registry it starts on 127.0.0.1, runs a
# program from it, keeps a file across stop/start and forks it; last, runs
# the networking demo (scripts/demo-network.sh: its own daemon inside
# network namespaces it makes) and removes what that made.
#
#   scripts/demo.sh          run the demo (again: it starts over)
#   scripts/demo.sh stop     delete the demo's instances, stop its daemon, unmount (the network demo's too)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

demo=/var/lib/zygote-demo
export ZYGOTE_DATA_DIR=$demo/data
export ZYGOTE_SOCKET=/run/zygote-demo/zygote.sock
zygote() { "$root/bin/zygote" "$@"; }

stop_demo() {
  if [[ -S $ZYGOTE_SOCKET ]] && zygote ps -a >/dev/null 2>&1; then
    for name in $(zygote ps -a --json | grep -o '"id": "[a-z0-9]*"' | cut -d'"' -f4); do
      zygote rm -f "$name" >/dev/null || true
    done
    for id in $(zygote snapshot ls --json | grep -o '"id": "[a-z0-9]*"' | cut -d'"' -f4); do
      zygote snapshot rm "$id" >/dev/null || true
    done
  fi
  if [[ -f $demo/registry.pid ]]; then
    kill "$(cat $demo/registry.pid)" 2>/dev/null || true
    rm -f $demo/registry.pid
  fi
  if [[ -f $demo/serve.pid ]]; then
    kill "$(cat $demo/serve.pid)" 2>/dev/null || true
    rm -f $demo/serve.pid
    sleep 0.5
  fi
  pkill -f -- "--socket $ZYGOTE_DATA_DIR/pager/pager.sock" 2>/dev/null || true
  sleep 0.3
  if mountpoint -q "$ZYGOTE_DATA_DIR"; then umount "$ZYGOTE_DATA_DIR"; fi
  "$root/scripts/demo-network.sh" stop >/dev/null
}

if [[ ${1:-} == stop ]]; then
  stop_demo
  echo "demo stopped; the image $demo/data.img remains (delete it to reclaim the space)"
  exit 0
fi

./scripts/setup.sh

# A 20 GiB sparse image with XFS (reflink on), mounted as the data dir.
mkdir -p "$demo" "$ZYGOTE_DATA_DIR"
stop_demo
if [[ ! -f $demo/data.img ]]; then
  truncate -s 20G "$demo/data.img"
  mkfs.xfs -q -m reflink=1 "$demo/data.img"
fi
mount -o loop "$demo/data.img" "$ZYGOTE_DATA_DIR"

printf '\033[1m==> starting the daemon (log: %s/serve.log)\033[0m\n' "$demo"
mkdir -p "$(dirname "$ZYGOTE_SOCKET")"
nohup "$root/bin/zygote" serve >"$demo/serve.log" 2>&1 &
echo $! >"$demo/serve.pid"
for _ in $(seq 100); do zygote ps >/dev/null 2>&1 && break; sleep 0.1; done
grep -o 'reflink [a-z]* in [^:]*' "$demo/serve.log" | head -1 || true

step() { printf '\n\033[1;32m$ zygote %s\033[0m\n' "$(printf '%q ' "$@")"; zygote "$@"; }
step run --name web
step exec web -- sh -c 'echo hello > /dev/shm/note'
step standby web
step fork web web-2 --target-state Running
step rm -f web
step exec web-2 -- cat /dev/shm/note
step ps

# An OCI image, built here and served by a registry on 127.0.0.1.
registry=127.0.0.1:5111
image=$registry/demo/hello:1
printf '\n\033[1m==> building %s with umoci and pushing it to a local registry\033[0m\n' "$image"
build=$demo/image
rm -rf "$build" && mkdir -p "$build/registry"
cat >"$build/registry.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $build/registry}}
http: {addr: $registry}
YML
nohup docker-registry serve "$build/registry.yml" >"$demo/registry.log" 2>&1 &
echo $! >"$demo/registry.pid"
umoci init --layout "$build/oci"
umoci new --image "$build/oci:hello"
umoci unpack --image "$build/oci:hello" "$build/bundle" >/dev/null
rootfs=$build/bundle/rootfs
mkdir -p "$rootfs"/{bin,etc,root,tmp}
cp /bin/busybox "$rootfs/bin/busybox"
for a in sh cat echo ls sleep uname hostname id date; do ln -sf busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
umoci repack --image "$build/oci:hello" "$build/bundle" >/dev/null
umoci config --image "$build/oci:hello" --config.entrypoint /bin/sh --config.cmd -c \
  --config.cmd 'echo "hello from an OCI image on $(uname -r)"' --config.env PATH=/bin --config.workingdir /root
for _ in $(seq 50); do curl -fs "http://$registry/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$build/oci:hello" "docker://$image"

step run --name hello "$image"
step run -d --name app "$image" -- -c 'while true; do sleep 3600; done'
step exec app -- sh -c 'echo written before the stop > /root/note'
step stop app
step start app
step exec app -- cat /root/note
step fork app app-2 --from-running --target-state Running
step exec app-2 -- sh -c 'echo only in the fork > /root/fork; ls /root'
step exec app -- ls /root
step ps -a

# Networking, with its own daemon inside namespaces the script makes (no
# packet leaves them); what it made goes at once, even when it fails.
printf '\n\033[1m==> networking: scripts/demo-network.sh\033[0m\n'
if ! "$root/scripts/demo-network.sh"; then
  "$root/scripts/demo-network.sh" stop
  exit 1
fi
"$root/scripts/demo-network.sh" stop

cat <<TXT

The daemon keeps running with web-2, app and app-2. To use it from this shell:
  export ZYGOTE_SOCKET=$ZYGOTE_SOCKET ZYGOTE_DATA_DIR=$ZYGOTE_DATA_DIR
  $root/bin/zygote --help
To clean up: scripts/demo.sh stop
The network demo has been removed; scripts/demo-network.sh runs it again and
leaves its daemon and VMs running (scripts/demo-network.sh stop removes them).
TXT
