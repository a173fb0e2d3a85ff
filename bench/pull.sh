#!/usr/bin/env bash
# bench/pull.sh - pull + unpack of a ~200 MiB image (busybox + 4 random layers) from one
# local registry (the reference docker-registry on loopback), in one run, interleaved:
#   peer:   skopeo copy docker://… oci:DIR  +  umoci unpack --image DIR BUNDLE
#   gantry: gantry pull --store FRESH_STORE …   (download, verify, unpack into snapshots)
# Each repetition starts from empty destinations. Prints medians and the ratio; with
# --write, appends the table to docs/benchmarks.md.
#
# Usage: bench/pull.sh [-r REPS] [-s SIZE_MIB] [--write]
# Needs: docker-registry, skopeo, umoci, jq, curl, busybox-static; a release build of gantry.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
anchors=${ANCHORS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors}
reps=5; size=200; layers=4; write=0
while [ $# -gt 0 ]; do
  case "$1" in
    -r) reps=$2; shift 2;;
    -s) size=$2; shift 2;;
    --write) write=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
gantry=${GANTRY:-$repo/target/release/gantry}
[ -x "$gantry" ] || { echo "build first: cargo build --release -p gantry" >&2; exit 1; }
work=$(mktemp -d /tmp/gantry-bench-pull.XXXXXX)
port=$((30000 + $$ % 10000)); reg=127.0.0.1:$port; ref_pid=""
cleanup() { [ -n "$ref_pid" ] && kill "$ref_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ref_pid=$("$anchors/start-reference-registry.sh" -a "$reg" -d "$work/ref" | tail -1)

# The image: busybox layer + $layers random layers, pushed once with skopeo.
"$anchors/make-busybox-bundle.sh" "$work/bb" >/dev/null
umoci init --layout "$work/src"
umoci new --image "$work/src:big"
umoci insert --image "$work/src:big" "$work/bb/rootfs" /
chunk=$(( size * 1048576 / layers ))
for ((k=1; k<=layers; k++)); do
  head -c "$chunk" /dev/urandom > "$work/payload.bin"
  umoci insert --image "$work/src:big" "$work/payload.bin" "/data/layer$k.bin"
done
rm -f "$work/payload.bin"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/src:big" "docker://$reg/bench/big:latest"

t() { local t0=$EPOCHREALTIME; "$@" >"$work/last.log" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$work/last.log" >&2; exit 1; }; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.6f\n", b-a}'; }
peer() { skopeo copy --quiet --src-tls-verify=false "docker://$reg/bench/big:latest" "oci:$work/p/img:latest" && umoci unpack --image "$work/p/img:latest" "$work/p/bundle"; }
mine() { "$gantry" pull --store "$work/g" "$reg/bench/big:latest"; }
for ((r=1; r<=reps; r++)); do
  rm -rf "$work/p" "$work/g"; mkdir -p "$work/p"; sync
  t peer >> "$work/peer.s"
  rm -rf "$work/p"; sync
  t mine >> "$work/gantry.s"
  rm -rf "$work/g"
done
median() { sort -g "$1" | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
pm=$(median "$work/peer.s"); gm=$(median "$work/gantry.s")
{
  echo "### Pull + unpack, ${size} MiB in $layers random layers + busybox, local reference registry ($(date -u +%F), reps=$reps)"
  echo
  echo "Command: \`bench/pull.sh -r $reps -s $size\`. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (shared machine)."
  echo
  echo "| tool | median s | min s | max s |"
  echo "|---|---:|---:|---:|"
  echo "| skopeo copy + umoci unpack | $pm | $(sort -g "$work/peer.s" | head -1) | $(sort -g "$work/peer.s" | tail -1) |"
  echo "| gantry pull (download + verify + unpack) | $gm | $(sort -g "$work/gantry.s" | head -1) | $(sort -g "$work/gantry.s" | tail -1) |"
  awk -v p="$pm" -v g="$gm" 'BEGIN{printf "\ngantry / (skopeo + umoci) time ratio: %.2f (speed-up %.2f×; target ≥ 1.5×). `docker pull` was not run in this benchmark.\n\n", g/p, p/g}'
} > "$work/table.md"
cat "$work/table.md"
if [ "$write" = 1 ]; then cat "$work/table.md" >> "$repo/docs/benchmarks.md"; fi
