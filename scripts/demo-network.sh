#!/usr/bin/env bash
# The networking demo. Every packet stays inside two network namespaces
# the script makes: the daemon runs in "zgdemo-host"; "zgdemo-out" (the
# outside, joined by a veth, the upstream of the default route) serves a
# page on 203.0.113.1:8080, a documentation address. A VM fetches that
# page, a fork of it answers on its own address with nothing changed
# inside the guest, and a published port answers on the host's loopback.
#
#   scripts/demo-network.sh        run the demo (again: it starts over)
#   scripts/demo-network.sh stop   delete its VMs, stop its daemon, remove its network and namespaces
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

demo=/var/lib/zygote-netdemo
export ZYGOTE_DATA_DIR=$demo/data
export ZYGOTE_SOCKET=/run/zygote-netdemo/zygote.sock
hostns=zgdemo-host
outns=zgdemo-out
zygote() { "$root/bin/zygote" "$@"; }
inhost() { nsenter --net=/run/netns/$hostns "$@"; }
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

stop_demo() {
  if [[ -S $ZYGOTE_SOCKET ]] && zygote ps -a >/dev/null 2>&1; then
    for id in $(zygote ps -a --json | grep -o '"id": "[a-z0-9]*"' | cut -d'"' -f4); do
      zygote rm -f "$id" >/dev/null || true
    done
  fi
  if [[ -f $demo/serve.pid ]]; then
    kill "$(cat $demo/serve.pid)" 2>/dev/null || true
    rm -f $demo/serve.pid
    sleep 0.5
  fi
  if [[ -f $demo/httpd.pid ]]; then
    kill "$(cat $demo/httpd.pid)" 2>/dev/null || true
    rm -f $demo/httpd.pid
  fi
  if [[ -e /run/netns/$hostns ]] && mountpoint -q "$ZYGOTE_DATA_DIR"; then
    inhost "$root/bin/zygote" serve --data-dir "$ZYGOTE_DATA_DIR" --cleanup-network 2>/dev/null || true
  fi
  ip netns del $hostns 2>/dev/null || true
  ip netns del $outns 2>/dev/null || true
  if mountpoint -q "$ZYGOTE_DATA_DIR"; then umount "$ZYGOTE_DATA_DIR"; fi
}

if [[ ${1:-} == stop ]]; then
  stop_demo
  echo "network demo stopped; the image $demo/data.img remains (delete it to reclaim the space)"
  exit 0
fi

[[ -x bin/zygote ]] || { echo "build first: go build -o bin/zygote ./cmd/zygote (or scripts/setup.sh)"; exit 1; }
mkdir -p "$demo" "$ZYGOTE_DATA_DIR" "$(dirname "$ZYGOTE_SOCKET")"
stop_demo
if [[ ! -f $demo/data.img ]]; then
  truncate -s 8G "$demo/data.img"
  mkfs.xfs -q -m reflink=1 "$demo/data.img"
fi
mount -o loop "$demo/data.img" "$ZYGOTE_DATA_DIR"

say "two namespaces: the host (the daemon's) and the outside, on 203.0.113.0/24"
ip netns add $hostns
ip netns add $outns
ip -n $hostns link add up0 type veth peer name down0 netns $outns
ip -n $hostns addr add 203.0.113.2/24 dev up0
ip -n $outns addr add 203.0.113.1/24 dev down0
for ns in $hostns $outns; do ip -n $ns link set lo up; done
ip -n $hostns link set up0 up
ip -n $outns link set down0 up
ip -n $hostns route add default via 203.0.113.1
mkdir -p $demo/www
echo "hello from the outside namespace" >$demo/www/index.html
nsenter --net=/run/netns/$outns busybox httpd -f -p 203.0.113.1:8080 -h $demo/www >$demo/httpd.log 2>&1 &
echo $! >$demo/httpd.pid

say "the daemon, inside the host namespace, with networking on"
printf '$ nsenter --net=/run/netns/%s bin/zygote serve --network --dns 203.0.113.1 &\n' $hostns
nohup nsenter --net=/run/netns/$hostns "$root/bin/zygote" serve --network --dns 203.0.113.1 >"$demo/serve.log" 2>&1 &
echo $! >"$demo/serve.pid"
for _ in $(seq 100); do zygote ps >/dev/null 2>&1 && break; sleep 0.1; done

say "a VM serving a page on port 80, published on the host's port 8080"
show zygote run --name web --publish 8080:80 -- sh -c 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'
web_ip=$(zygote inspect web | grep -o '"ip": "[0-9.]*"' | cut -d'"' -f4)
echo "web's address: $web_ip"

say "the VM fetches a page from the outside"
show zygote exec web -- wget -qO- http://203.0.113.1:8080/

say "the host reaches the VM on its address and on the published port (loopback too)"
show inhost busybox wget -qO- "http://$web_ip/"
show inhost busybox wget -qO- http://127.0.0.1:8080/

say "fork it while it runs: the fork gets its own address, the guest is unchanged"
show zygote fork web web-2 --from-running
fork_ip=$(zygote inspect web-2 | grep -o '"ip": "[0-9.]*"' | cut -d'"' -f4)
echo "web-2's address: $fork_ip"
show inhost busybox wget -qO- "http://$fork_ip/"
show inhost busybox wget -qO- "http://$web_ip/"
echo "inside web and web-2, the same guest address:"
show zygote exec web -- ip -4 -o addr show eth0
show zygote exec web-2 -- ip -4 -o addr show eth0
show zygote exec web-2 -- wget -qO- http://203.0.113.1:8080/

say "traffic counters (GET /instances/web-2/stats)"
curl -s --unix-socket "$ZYGOTE_SOCKET" http://zygote/instances/web-2/stats | grep -o '"network_[rt]x_bytes":[0-9]*' || true

say "done: scripts/demo-network.sh stop removes everything it made"
