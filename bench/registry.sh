#!/usr/bin/env bash
# bench/registry.sh - registry push/pull throughput with skopeo as the client:
# the reference registry (docker-registry 2.8) and `gantry registry` (release build),
# measured in one run with shared/anchors/registry-throughput.sh, runs interleaved per
# repetition pair. Prints the table and the ratios; with --write, appends them to
# docs/benchmarks.md.
#
# With --mtls, instead: `gantry push` / `gantry pull` against two `gantry registry`s side
# by side, one plain HTTP (--insecure) and one mutual TLS (certificates from a throwaway
# CA, security/examples/dev-certs.rs), fresh registries and stores per repetition,
# interleaved: push and pull of the big image, and the no-op push and pull that follow
# (every blob already there: HEADs and the manifest only, where handshakes weigh most).
#
# Usage: bench/registry.sh [-r REPS] [-s SIZE_MIB] [--mtls] [--write]
# Needs: docker-registry, skopeo, umoci, jq, curl; a release build of gantry
# (cargo build --release -p gantry); --mtls needs umoci, busybox-static and cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
anchors=${ANCHORS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors}
reps=5; size=200; write=0; mtls=0
while [ $# -gt 0 ]; do
  case "$1" in
    -r) reps=$2; shift 2;;
    -s) size=$2; shift 2;;
    --mtls) mtls=1; shift;;
    --write) write=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
gantry=${GANTRY:-$repo/target/release/gantry}
[ -x "$gantry" ] || { echo "build first: cargo build --release -p gantry" >&2; exit 1; }
if [ "$mtls" = 1 ]; then
  exec "$here/registry-mtls.sh" "$reps" "$size" "$write"
fi
work=$(mktemp -d /tmp/gantry-bench-registry.XXXXXX)
ref_port=$((20000 + $$ % 10000)); gan_port=$((ref_port + 1))
ref_pid=""; gan_pid=""
cleanup() {
  [ -n "$ref_pid" ] && kill "$ref_pid" 2>/dev/null || true
  [ -n "$gan_pid" ] && kill "$gan_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ref_pid=$("$anchors/start-reference-registry.sh" -a "127.0.0.1:$ref_port" -d "$work/ref" | tail -1)
"$gantry" registry --listen "127.0.0.1:$gan_port" --root "$work/gantry" --insecure >"$work/gantry.log" 2>&1 &
gan_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$gan_port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

# One repetition at a time, alternating, so both see the same machine load.
for ((r=1; r<=reps; r++)); do
  for who in ref gantry; do
    port=$ref_port; [ "$who" = gantry ] && port=$gan_port
    "$anchors/registry-throughput.sh" -r 1 -s "$size" -w "$work/w-$who" -p "bench$r" "127.0.0.1:$port" \
      | awk -v who="$who" '$1 ~ /^(push|pull|unpack)-/ {print who, $1, $3, $2}' >> "$work/runs.txt"
  done
done

median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
{
  echo "### Registry throughput, skopeo as client ($(date -u +%F), reps=$reps, big=${size} MiB in 4 random layers + busybox)"
  echo
  echo "Command: \`bench/registry.sh -r $reps -s $size\` (anchors/registry-throughput.sh per registry, interleaved)."
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the machine is shared)."
  echo
  echo "| operation | MiB | reference s | gantry s | reference MiB/s | gantry MiB/s | gantry/reference throughput |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for op in push-small push-big pull-small pull-big; do
    mib=$(awk -v op="$op" '$2==op {print $4; exit}' "$work/runs.txt")
    rs=$(awk -v op="$op" '$1=="ref" && $2==op {print $3}' "$work/runs.txt" | median)
    gs=$(awk -v op="$op" '$1=="gantry" && $2==op {print $3}' "$work/runs.txt" | median)
    awk -v op="$op" -v m="$mib" -v r="$rs" -v g="$gs" 'BEGIN{
      printf "| %s | %.2f | %.3f | %.3f | %.1f | %.1f | %.2f× |\n", op, m, r, g, m/r, m/g, r/g }'
  done
  echo
} > "$work/table.md"
cat "$work/table.md"
if [ "$write" = 1 ]; then cat "$work/table.md" >> "$repo/docs/benchmarks.md"; fi
