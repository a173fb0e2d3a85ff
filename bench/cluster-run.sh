#!/usr/bin/env bash
# `gantry run` against a cluster, --insecure vs mutual TLS, side by side (issue 10: mTLS
# must not cost more than 10% of that latency). Two namespace clusters of
# deploy/cluster.sh are up at once, one `up --insecure`, one mutual TLS (the default);
# rounds alternate which one goes first. One round on a cluster:
#   create   `gantry service create` (one CLI process: context, TLS handshake, one write)
#   ps       one `gantry service ps` (one CLI process, one read)
#   running  from the start of `service create` until a `service ps` (polled back to back,
#            a CLI process each) shows the replica Run/Running on its agent: the CLI round
#            trip that starts a workload, what `gantry run` means for a cluster
# then `service rm` and a wait until nothing runs (not timed). Medians and mTLS/insecure.
#
#   bench/cluster-run.sh [-n ROUNDS] [-b GANTRY]     (default 10, target/release/gantry)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
rounds=10
gantry=$repo/target/release/gantry
while getopts "n:b:" o; do
  case $o in
  n) rounds=$OPTARG ;;
  b) gantry=$(realpath "$OPTARG") ;;
  *) echo "usage: $0 [-n ROUNDS] [-b GANTRY]" >&2; exit 2 ;;
  esac
done
[ -x "$gantry" ] || { echo "no gantry binary at $gantry (cargo build --release -p gantry, or -b PATH)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (deploy/cluster.sh)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "$0: needs /bin/busybox (scripts/setup.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/gantry-bench-crun.XXXXXX)
# mode → prefix and /24 of its cluster
declare -A prefix=([insecure]=gbi [tls]=gbt) net=([insecure]=10.98.1 [tls]=10.98.2)
cluster() { # MODE ARGS…: deploy/cluster.sh on that mode's cluster
  local m=$1
  shift
  GANTRY_CLUSTER_DIR=$work/$m GANTRY_CLUSTER_PREFIX=${prefix[$m]} GANTRY_CLUSTER_NET=${net[$m]} \
    "$repo/deploy/cluster.sh" "$@"
}
cleanup() {
  cluster insecure down >/dev/null 2>&1 || true
  cluster tls down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

declare -A envs=()
cli() { # MODE ARGS…: the CLI against that cluster, as `deploy/cluster.sh env` sets it up
  local m=$1
  shift
  (eval "${envs[$m]}" && exec "$gantry" "$@")
}

# the image: a directory with busybox (rootfs: images need no registry)
for d in bin etc tmp proc sys dev root; do mkdir -p "$work/rootfs/$d"; done
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sleep"
echo "root:x:0:0:root:/root:/bin/sh" >"$work/rootfs/etc/passwd"
echo "root:x:0:" >"$work/rootfs/etc/group"

for m in insecure tls; do
  if [ $m = insecure ]; then cluster $m up --bin "$gantry" --insecure >/dev/null; else cluster $m up --bin "$gantry" >/dev/null; fi
  envs[$m]=$(cluster $m env)
  deadline=$((SECONDS + 60))
  until [ "$(cli $m node ls 2>/dev/null | grep -c ' Ready ')" -ge 5 ]; do
    [ $SECONDS -lt $deadline ] || { echo "$m cluster: 5 nodes not Ready in 60 s" >&2; cli $m node ls >&2; exit 1; }
    sleep 0.2
  done
done

now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f\n", b - a }'; }
round() { # MODE N
  local m=$1 svc=bench-$2 t0 t1 t2 t3 deadline
  t0=$(now)
  cli "$m" service create "$svc" --image "rootfs:$work/rootfs" --constraint env==dev \
    --entrypoint /bin/sleep -- 1000 >/dev/null
  t1=$(now)
  deadline=$((SECONDS + 60))
  until cli "$m" service ps "$svc" 2>/dev/null | awk '$4 == "Run" && $5 == "Running" { ok = 1 } END { exit !ok }'; do
    [ $SECONDS -lt $deadline ] || { echo "$m: $svc not running in 60 s" >&2; cli "$m" service ps "$svc" >&2; exit 1; }
  done
  t2=$(now)
  cli "$m" service ps "$svc" >/dev/null
  t3=$(now)
  echo "$m create $(secs "$t0" "$t1")" >>"$work/runs.txt"
  echo "$m running $(secs "$t0" "$t2")" >>"$work/runs.txt"
  echo "$m ps $(secs "$t2" "$t3")" >>"$work/runs.txt"
  cli "$m" service rm "$svc" >/dev/null
  deadline=$((SECONDS + 60))
  while cli "$m" service ps "$svc" 2>/dev/null | awk '$5 == "Running" { ok = 1 } END { exit !ok }'; do
    [ $SECONDS -lt $deadline ] || { echo "$m: $svc still running 60 s after rm" >&2; exit 1; }
    sleep 0.2
  done
}

for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order="insecure tls"; else order="tls insecure"; fi
  for m in $order; do round "$m" "$r"; done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "### \`gantry service create\` until running, --insecure vs mutual TLS ($(date -u '+%F %H:%M') UTC, $rounds rounds)"
echo
echo "Command: \`bench/cluster-run.sh -n $rounds\` (two deploy/cluster.sh clusters, rounds interleaved, medians)."
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the machine is shared)."
echo
echo "| what | insecure ms | mTLS ms | mTLS/insecure |"
echo "|---|---:|---:|---:|"
for op in create ps running; do
  i=$(awk -v op=$op '$1 == "insecure" && $2 == op { print $3 }' "$work/runs.txt" | median)
  t=$(awk -v op=$op '$1 == "tls" && $2 == op { print $3 }' "$work/runs.txt" | median)
  awk -v op=$op -v i="$i" -v t="$t" 'BEGIN { printf "| %s | %.1f | %.1f | %.2f |\n", op, i * 1000, t * 1000, t / i }'
done
