#!/usr/bin/env bash
# bench/failover.sh - agent SIGKILLed → all its allocations running again elsewhere.
# Per trial, from scratch: one controller (default liveness: node down after 3 s without
# heartbeat, agents beat every 1 s), three agents (--no-bridge, runc, own roots), a service
# of 2 replicas of `sleep` from a busybox root filesystem; when both run, the agent of one
# replica is SIGKILLed and the clock runs until `gantry service ps` shows 2 running
# replicas, none on the killed node. The killed agent is then restarted (it stops its
# stale container), the service removed and everything stopped. Prints each trial and the
# median. Peers (documented defaults, not measured here): Swarm ≈ 15 s, Nomad ≈ 20 s,
# Kubernetes ≈ 6 min.
#
# Mutual TLS (the controller bootstraps a CA, the CLI uses its admin context, the agents
# join with an agent token) unless --insecure (plain TCP, no credentials).
#
# Usage: bench/failover.sh [-n TRIALS] [-b GANTRY_BIN] [--insecure]
# Needs: root, runc, busybox-static, a gantry build with cluster mode.
set -euo pipefail
unset GANTRY_INSECURE GANTRY_CONTEXT GANTRY_TOKEN
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
trials=5; bin=${GANTRY:-$repo/target/release/gantry}
while [ $# -gt 0 ]; do
  case "$1" in
    -n) trials=$2; shift 2;;
    -b) bin=$2; shift 2;;
    --insecure) export GANTRY_INSECURE=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/failover.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "bench/failover.sh: no gantry binary at $bin (-b BIN)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/gantry-failover.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/rootfs"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$tmp/rootfs/bin/busybox"; ln -s busybox "$tmp/rootfs/bin/sleep"
echo 'root:x:0:0:root:/:/bin/sh' > "$tmp/rootfs/etc/passwd"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
agent() { # name trial-dir
  "$bin" agent --root "$2/$1-root" --run-root "$2/$1-run" --host "unix://$2/$1.sock" \
    --no-bridge --runtime runc --join "$ctl" --name "$1" --label env=bench \
    --advertise 127.0.0.1:1 --stop-timeout 1 >/dev/null 2>"$2/$1.log" &
  echo $!
}
running_off() { # victim → count of running replicas not on it
  "$bin" service ps web --controller "$ctl" | awk -v v="$1" 'NR>1 && $4=="Run" && $5=="Running" && $2!=v' | wc -l
}
times=()
for t in $(seq 1 "$trials"); do
  d="$tmp/t$t"; mkdir -p "$d"
  ctl=127.0.0.1:$(free_port)
  "$bin" controller run --id 1 --listen "$ctl" --data-dir "$d/ctl" --bootstrap >/dev/null 2>"$d/ctl.log" &
  cpid=$!; pids+=("$cpid")
  if [ -z "${GANTRY_INSECURE:-}" ]; then
    export GANTRY_CONTEXT=$d/ctl/pki/admin.context
    until [ -s "$GANTRY_CONTEXT" ] && GANTRY_TOKEN=$("$bin" token create --role agent --controller "$ctl" 2>/dev/null); do
      kill -0 "$cpid" 2>/dev/null || { echo "the controller exited:" >&2; tail -5 "$d/ctl.log" >&2; exit 1; }
      sleep 0.1
    done
    export GANTRY_TOKEN
  fi
  declare -A apid=()
  for n in n1 n2 n3; do apid[$n]=$(agent $n "$d"); pids+=("${apid[$n]}"); done
  until [ "$("$bin" node ls --controller "$ctl" 2>/dev/null | grep -c Ready)" = 3 ]; do sleep 0.1; done
  "$bin" service create web --image "rootfs:$tmp/rootfs" --replicas 2 --entrypoint /bin/sleep \
    --controller "$ctl" -- 1000 >/dev/null
  until [ "$(running_off none)" = 2 ]; do sleep 0.1; done
  victim=$("$bin" service ps web --controller "$ctl" | awk 'NR>1 && $5=="Running" {print $2; exit}')
  start=$(date +%s.%N)
  kill -9 "${apid[$victim]}"
  until [ "$(running_off "$victim")" = 2 ]; do sleep 0.05; done
  end=$(date +%s.%N)
  secs=$(echo "$end - $start" | bc -l); times+=("$secs")
  printf 'trial %d: %.2f s (killed %s)\n' "$t" "$secs" "$victim"
  apid[$victim]=$(agent "$victim" "$d"); pids+=("${apid[$victim]}")
  "$bin" service rm web --controller "$ctl"
  for n in n1 n2 n3; do
    until [ -z "$("$bin" ps -a -q --host "unix://$d/$n.sock" 2>/dev/null)" ]; do sleep 0.2; done
  done
  for n in n1 n2 n3; do kill -TERM "${apid[$n]}"; wait "${apid[$n]}" 2>/dev/null || true; done
  kill -TERM "$cpid"; wait "$cpid" 2>/dev/null || true
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
printf 'median over %d trials: %.2f s (target ≤ 5 s; Swarm ≈ 15 s, Nomad ≈ 20 s)\n' "$trials" "$median"
