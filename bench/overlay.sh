#!/usr/bin/env bash
# bench/overlay.sh - the cluster network's data path and service discovery (issue 11).
# Three hosts are network namespaces (gob<pid>a|b|c, veths to a bridge in a fourth one,
# 192.168.78.0/24, addresses that exist only inside them); a controller in the underlay
# namespace, `gantry agent --overlay` in each host's. Services `srv` (host b) and `cli`
# (host a) on network `app`, `sleep` from a busybox root filesystem; the host's iperf3 and
# python3 run inside the containers' network namespaces (nsenter --net on the engine's
# pinned netns files), so the measured path is the containers' own: veth → bridge →
# vxlan → underlay → vxlan → bridge → veth.
#
# Measures:
#   1. TCP throughput, iperf3 -t SECS: container a → container b over the overlay, vs host
#      a → host b on the same underlay (ratio; target ≥ 0.8×);
#   2. DNS answer latency from the cli container, N sequential `srv` queries to the
#      agent's DNS on its gateway (p50/p99; target p99 ≤ 1 ms);
#   3. a moved allocation in DNS: `gantry migrate srv --to host==c`, then the time from
#      the controller first showing the new allocation running with its address to the
#      cli container's resolver answering it (target ≤ 1 s).
#
# Usage: bench/overlay.sh [-t IPERF_SECS] [-n DNS_QUERIES] [-b GANTRY_BIN] [--insecure]
# Needs: root, iperf3, python3, nsenter, busybox-static, a gantry build.
set -euo pipefail
# mutual TLS (admin context for the CLI, an agent token for the agents) unless --insecure
unset GANTRY_INSECURE GANTRY_CONTEXT GANTRY_TOKEN
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
secs=5; queries=2000; bin=${GANTRY:-$repo/target/release/gantry}
while [ $# -gt 0 ]; do
  case "$1" in
    -t) secs=$2; shift 2;;
    -n) queries=$2; shift 2;;
    -b) bin=$2; shift 2;;
    --insecure) export GANTRY_INSECURE=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/overlay.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "bench/overlay.sh: no gantry binary at $bin (-b BIN)" >&2; exit 1; }
for t in iperf3 python3 nsenter; do
  command -v $t >/dev/null || { echo "bench/overlay.sh: $t is needed" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/gantry-overlay-bench.XXXXXX)
tag=gob$$; u=${tag}u; ctl=192.168.78.1:7700
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Shims and containers of this run (their command lines name $tmp), then mounts.
  for p in $(grep -l "$tmp" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    pkill -9 -P "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true
  done
  sleep 0.3
  grep " $tmp" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  for h in a b c; do
    for id in $(ls "$tmp/$h-root/containers" 2>/dev/null); do
      rmdir /sys/fs/cgroup/*/gantry/"$id" /sys/fs/cgroup/gantry/"$id" 2>/dev/null || true
    done
  done
  for n in $u ${tag}a ${tag}b ${tag}c; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

inns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
ip netns add "$u"; ip -n "$u" link set lo up
ip -n "$u" link add br0 type bridge; ip -n "$u" addr add 192.168.78.1/24 dev br0
ip -n "$u" link set br0 up
i=10
for h in a b c; do
  ip netns add "$tag$h"
  ip -n "$u" link add "h$h" type veth peer name eth0 netns "$tag$h"
  ip -n "$u" link set "h$h" master br0 up
  ip -n "$tag$h" addr add "192.168.78.$i/24" dev eth0
  ip -n "$tag$h" link set eth0 up; ip -n "$tag$h" link set lo up
  i=$((i + 1))
done

mkdir -p "$tmp/rootfs"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$tmp/rootfs/bin/busybox"; ln -s busybox "$tmp/rootfs/bin/sleep"
echo 'root:x:0:0:root:/:/bin/sh' > "$tmp/rootfs/etc/passwd"

inns "$u" "$bin" controller run --id 1 --listen "$ctl" --data-dir "$tmp/ctl" --bootstrap \
  >/dev/null 2>"$tmp/ctl.log" &
pids+=($!)
if [ -z "${GANTRY_INSECURE:-}" ]; then
  export GANTRY_CONTEXT=$tmp/ctl/pki/admin.context
  until [ -s "$GANTRY_CONTEXT" ] &&
    GANTRY_TOKEN=$(GANTRY_CONTROLLER=$ctl inns "$u" "$bin" token create --role agent 2>/dev/null); do
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "the controller exited:" >&2; tail -5 "$tmp/ctl.log" >&2; exit 1; }
    sleep 0.1
  done
  export GANTRY_TOKEN
fi
i=10
for h in a b c; do
  inns "$tag$h" "$bin" agent --root "$tmp/$h-root" --run-root "$tmp/$h-run" \
    --host "unix://$tmp/$h.sock" --join "$ctl" --name "$h" --label "host=$h" \
    --advertise "192.168.78.$i" --overlay --stop-timeout 1 >/dev/null 2>"$tmp/$h.log" &
  pids+=($!); i=$((i + 1))
done
g() { GANTRY_CONTROLLER=$ctl inns "$u" "$bin" "$@"; }
until [ "$(g node ls 2>/dev/null | grep -c Ready)" = 3 ]; do sleep 0.1; done
svc() { g service create "$1" --image "rootfs:$tmp/rootfs" --network app --constraint "$2" \
  --entrypoint /bin/sleep -- 100000 >/dev/null; }
svc srv host==b; svc cli host==a
running_on() { # service node → the id of its allocation running there, if any
  g service ps "$1" 2>/dev/null | awk -v n="$2" 'NR>1 && $2==n && $5=="Running" {print $1}' | head -1
}
until [ -n "$(running_on srv b)" ] && [ -n "$(running_on cli a)" ]; do sleep 0.1; done
pinned() { ls -d "$tmp/$1-run/netns/"* 2>/dev/null | head -1; }  # one container per host
until [ -n "$(pinned a)" ] && [ -n "$(pinned b)" ]; do sleep 0.1; done
cli_ns=$(pinned a); srv_ns=$(pinned b)
for f in "$cli_ns" "$srv_ns"; do [ -e "$f" ] || { echo "no pinned netns $f" >&2; exit 1; }; done
srv_ip=$(nsenter --net="$srv_ns" ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
gw=$(nsenter --net="$cli_ns" ip route | awk '/default/ {print $3}')
echo "srv at $srv_ip (host b), cli on host a, DNS at $gw"

# 1. Throughput.
iperf() { # client-ns server-ns server-ip → Gbit/s
  nsenter --net="$2" iperf3 -s -1 -p 5201 >/dev/null 2>&1 & local sp=$!
  sleep 0.3
  nsenter --net="$1" iperf3 -c "$3" -p 5201 -t "$secs" -J |
    python3 -c 'import json,sys;print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
  wait $sp 2>/dev/null || true
}
over=$(iperf "$cli_ns" "$srv_ns" "$srv_ip")
under=$(iperf "/run/netns/${tag}a" "/run/netns/${tag}b" 192.168.78.11)
printf 'TCP, iperf3 -t %s: overlay container→container %s Gbit/s, underlay host→host %s Gbit/s, ratio %.2f (target ≥ 0.8)\n' \
  "$secs" "$over" "$under" "$(echo "$over / $under" | bc -l)"

# 2. DNS latency, sequential queries from the cli container.
nsenter --net="$cli_ns" python3 - "$gw" "$queries" <<'EOF'
import socket, struct, sys, time
gw, n = sys.argv[1], int(sys.argv[2])
q = lambda i: struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + b"\x03srv\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
lat = []
for i in range(n):
    t = time.perf_counter(); s.sendto(q(i), (gw, 53)); s.recv(512); lat.append(time.perf_counter() - t)
lat.sort()
p = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] * 1e3
print("DNS, %d sequential A queries: p50 %.3f ms, p99 %.3f ms, max %.3f ms (target p99 <= 1 ms)" % (n, p(0.5), p(0.99), lat[-1] * 1e3))
EOF

# 3. A moved allocation in DNS: poll the resolver from the cli container while srv moves.
nsenter --net="$cli_ns" python3 - "$gw" "$srv_ip" > "$tmp/dns-trace" <<'EOF' &
import socket, struct, sys, time
gw, old = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03srv\x00\x00\x01\x00\x01"
deadline = time.time() + 60
while time.time() < deadline:
    s.sendto(q, (gw, 53)); r = s.recv(512)
    an = struct.unpack(">H", r[6:8])[0]
    ips = [socket.inet_ntoa(r[i:i + 4]) for i in range(len(r) - 4 * an, len(r), 4)] if an else []
    if ips and old not in ips:
        print("%.6f %s" % (time.time(), ",".join(ips))); break
    time.sleep(0.002)
EOF
poller=$!
issued_at=$(date +%s.%N)
g migrate srv --to host==c >/dev/null
until [ -n "$(running_on srv c)" ]; do sleep 0.005; done
running_at=$(date +%s.%N)
wait $poller
seen_at=$(cut -d' ' -f1 "$tmp/dns-trace")
printf 'moved allocation: `gantry migrate` issued → DNS answers only the new address: %.0f ms (placement, container start and the old one stopping included)\n' \
  "$(echo "($seen_at - $issued_at) * 1000" | bc -l)"
printf 'moved allocation: in DNS %.0f ms after `service ps` first showed it running (target ≤ 1000 ms; a negative figure: DNS was first)\n' \
  "$(echo "($seen_at - $running_at) * 1000" | bc -l)"

g service rm srv >/dev/null; g service rm cli >/dev/null
for h in a b c; do
  until [ -z "$("$bin" ps -a -q --host "unix://$tmp/$h.sock" 2>/dev/null)" ]; do sleep 0.2; done
done
