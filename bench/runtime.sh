#!/usr/bin/env bash
# bench/runtime.sh - gantry's OCI runtime side by side with runc and crun.
#
#   bench/runtime.sh [-n RUNS] [--hang N] [--no-build]
#
# 1. latency: create-start-wait-delete (`RT run --bundle B ID`) of three busybox bundles
#    ((a) true, (b) sh -c 'echo hi', (c) true + memory 64 MiB + pids 64), runtimes interleaved,
#    via ../shared/anchors/runtime-latency.sh (it applies the crun hybrid-cgroup workaround);
#    gantry twice: the small per-container binary `gantry-runtime` and `gantry runtime`;
# 2. peak RSS of the runtime process (/usr/bin/time -v, max of 20 runs each);
# 3. hang check: N (default 1000) `gantry runtime run` of bundle (a) under CPU load (one
#    `yes >/dev/null` per core, killed by PID at the end), each bounded by `timeout -s KILL 10`.
# Results go to stdout; copy the medians and ratios into docs/benchmarks.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
anchors=${ANCHORS:-$repo/../shared/anchors}
[ -x "$anchors/runtime-latency.sh" ] || { echo "anchors not found at $anchors (set ANCHORS=)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (containers)" >&2; exit 1; }
runs=100; hang=1000; build=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs=$2; shift 2;;
    --hang) hang=$2; shift 2;;
    --no-build) build=0; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
[ "$build" = 1 ] && (cd "$repo" && cargo build --release --locked -p gantry >&2)
G=$repo/target/release/gantry
GS=$repo/target/release/gantry-runtime
work=$(mktemp -d /tmp/gantry-bench.XXXXXX)
loadpids=()
cleanup() { for p in "${loadpids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$anchors/make-busybox-bundle.sh" "$work/true" >/dev/null
"$anchors/make-busybox-bundle.sh" --cmd "sh -c 'echo hi'" "$work/echo" >/dev/null
"$anchors/make-busybox-bundle.sh" --mem 67108864 --pids 64 "$work/limits" >/dev/null
# runc 1.1's `runc spec` lists ambient capabilities that are not inheritable; runc and gantry
# both leave them out; gantry warns on its --log.
GR="$G runtime --root $work/state --log $work/gantry.log"
# the small per-container binary (cli/src/runtime_main.rs): what the agent runs when
# it is installed beside gantry
GSR="$GS --root $work/state --log $work/gantry.log"

echo "## latency (ms), $(date -u +%FT%TZ), runs=$runs"
for b in true echo limits; do
  echo "### bundle: $b"
  "$anchors/runtime-latency.sh" -n "$runs" -w 3 -t 10 -b "$work/$b" runc crun "$GSR" "$GR"
done

echo "## peak RSS (KiB, max of 20 runs, bundle true)"
for rt in runc crun "$GSR" "$GR"; do
  max=0
  for i in $(seq 20); do
    # crun needs the cgroup2-unmounted namespace on hybrid hosts; time all alike inside one
    rss=$(unshare -m --propagation private sh -c \
      'umount /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/time -f %M "$@" >/dev/null 2>"$0.err"; ' \
      "$work/rss" $rt run --bundle "$work/true" "rss-$$-$i" ; tail -1 "$work/rss.err")
    [ "$rss" -gt "$max" ] && max=$rss
  done
  printf '%-40s %s\n' "${rt%% *}" "$max"
done

echo "## hang check: $hang runs of '$GSR run' under CPU load"
for _ in $(seq "$(nproc)"); do yes >/dev/null & loadpids+=($!); done
hung=0; failed=0
for i in $(seq "$hang"); do
  rc=0; timeout -s KILL 10 $GSR run --bundle "$work/true" "hang-$$-$i" </dev/null >/dev/null 2>>"$work/hang.err" || rc=$?
  if [ "$rc" = 137 ]; then hung=$((hung+1)); $GSR delete -f "hang-$$-$i" >/dev/null 2>&1 || true
  elif [ "$rc" != 0 ]; then failed=$((failed+1)); fi
done
for p in "${loadpids[@]}"; do kill "$p" 2>/dev/null || true; done; loadpids=()
echo "hung: $hung / $hang   failed (non-zero, not hung): $failed"
[ "$failed" = 0 ] || head -3 "$work/hang.err"
