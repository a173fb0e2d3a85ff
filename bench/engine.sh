#!/usr/bin/env bash
# bench/engine.sh - the engine's benchmarks (issue 4), results to stdout for docs/benchmarks.md:
#   1. `gantry run --rm IMG true` end to end vs docker and podman, interleaved
#      (shared/anchors/engine-run-latency.sh), default networking (bridge) for all, then
#      again with --network none;
#   2. 100 x `run -d` at once, default networking: gantry's wall time and agent CPU, and
#      podman's (`--runtime runc`, which needs no cgroup2 workaround) when podman is given;
#   3. idle agent RSS and one shim's private memory (Private_* of /proc/PID/smaps_rollup).
# Usage: bench/engine.sh [-n RUNS] [--anchors DIR] [--peers "docker podman"] [--bin PATH]
# Needs root, a release build (cargo build --release -p gantry) unless --bin says otherwise.
# Starts its own agent on a temp root and socket with its own bridge, subnet and iptables
# chains, and removes them and stops the agent (by PID) at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=20; anchors=$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors; peers=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs=$2; shift 2;; --anchors) anchors=$2; shift 2;; --peers) peers=$2; shift 2;;
    --bin) bin=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
bin=${bin:-$here/target/release/gantry}
[ -x "$bin" ] || { echo "build first: cargo build --release -p gantry" >&2; exit 1; }
tmp=$(mktemp -d /tmp/gantry-bench.XXXXXX)
agent_pid=""
bridge=gtbench$$; chains=GTB$$; subnet=10.211.$(( $$ % 200 )).0/24
label=gantry-bench=$$
cleanup() {
  if [ -n "$agent_pid" ]; then
    for id in $("$bin" ps -aq 2>/dev/null); do "$bin" rm -f "$id" >/dev/null 2>&1 || true; done
    kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true
  fi
  if [[ " $peers " == *" podman "* ]]; then
    ids=$(podman ps -aq --filter "label=$label" 2>/dev/null || true)
    [ -z "$ids" ] || podman rm -f $ids >/dev/null 2>&1 || true
  fi
  # This run's bridge and chains only (rule by rule: other users' rules stay untouched).
  ip link del "$bridge" 2>/dev/null || true
  for t in nat filter; do
    iptables-save -t $t | grep -E -- "-j $chains-(DNAT|POST|FWD)( |$)" | sed 's/^-A /-D /' |
      while read -r rule; do eval iptables -w -t $t "$rule" || true; done
    for c in DNAT POST FWD; do
      iptables -w -t $t -F "$chains-$c" 2>/dev/null || true
      iptables -w -t $t -X "$chains-$c" 2>/dev/null || true
    done
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
export GANTRY_HOST=unix://$tmp/agent.sock

# A busybox image, loaded into the agent's store (the same rootfs the anchors' peers import).
rootfs=$tmp/rootfs; mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp /bin/busybox "$rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
layout=$tmp/layout; mkdir -p "$layout/blobs/sha256"
tar -C "$rootfs" -cf "$tmp/layer.tar" .
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$layout/blobs/sha256/$d"; echo "$d $(stat -c %s "$1")"; }
read -r ld ls < <(put "$tmp/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$ld" > "$tmp/config.json"
read -r cd cs < <(put "$tmp/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$tmp/manifest.json"
read -r md ms < <(put "$tmp/manifest.json")
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$md" "$ms" > "$layout/index.json"
"$bin" image load --store "$tmp/root" --input "$layout" --name bench-bb >/dev/null

"$bin" agent --root "$tmp/root" --run-root "$tmp/run" --host "$GANTRY_HOST" \
  --bridge "$bridge" --subnet "$subnet" --chain-prefix "$chains" 2>"$tmp/agent.log" &
agent_pid=$!
for _ in $(seq 100); do "$bin" ps >/dev/null 2>&1 && break; sleep 0.05; done
"$bin" run --rm bench-bb:latest true

echo "## 1a. run --rm IMG true (median ms; default network: bridge)"
# shellcheck disable=SC2086
"$anchors/engine-run-latency.sh" -n "$runs" \
  "raw:$bin run --rm bench-bb:latest true" $peers
echo "## 1b. run --rm IMG true (median ms; --network none)"
# shellcheck disable=SC2086
"$anchors/engine-run-latency.sh" -n "$runs" --net none \
  "raw:$bin run --rm --network none bench-bb:latest true" $peers

echo "## 2. 100 x run -d at once (default network)"
cpu0=$(awk '{print $14+$15}' "/proc/$agent_pid/stat")
t0=$(date +%s.%N)
# Wait for these 100 only (a bare `wait` would wait for the agent too).
pids=()
for i in $(seq 100); do "$bin" run -d bench-bb:latest sleep 1000 >/dev/null & pids+=($!); done
wait "${pids[@]}" || true
t1=$(date +%s.%N)
cpu1=$(awk '{print $14+$15}' "/proc/$agent_pid/stat")
running=$("$bin" ps -q | wc -l)
echo "gantry: wall_s=$(echo "$t1 - $t0" | bc) agent_cpu_s=$(echo "($cpu1 - $cpu0) / $(getconf CLK_TCK)" | bc -l | cut -c1-5) running=$running"
if [[ " $peers " == *" podman "* ]]; then
  t0=$(date +%s.%N)
  pids=()
  for i in $(seq 100); do
    podman --runtime runc run -d --label "$label" --ulimit nofile=1024:1024 \
      --ulimit nproc=1024:1024 anchors-bb:latest sleep 1000 >/dev/null & pids+=($!)
  done
  wait "${pids[@]}" || true
  t1=$(date +%s.%N)
  echo "podman --runtime runc: wall_s=$(echo "$t1 - $t0" | bc) running=$(podman ps -q --filter "label=$label" | wc -l)"
  ids=$(podman ps -aq --filter "label=$label"); [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null
fi
shim=$(pgrep -f "shim --config $tmp/run" | head -1)
echo "## 3. memory"
echo "agent_rss_kib_with_100=$(awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status")"
echo "shim_private_kib=$(awk '/^Private_(Clean|Dirty)/ {s+=$2} END {print s}' "/proc/$shim/smaps_rollup")"
for id in $("$bin" ps -aq); do "$bin" rm -f "$id" >/dev/null; done
sleep 6
echo "agent_idle_rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status")"
