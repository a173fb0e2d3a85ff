#!/usr/bin/env bash
# bench/pull.sh - pull + unpack of a ~200 MiB image (busybox + 4 random layers) from one
# local registry (the reference docker-registry on loopback), in one run, interleaved:
#   peer:   skopeo copy docker://… oci:DIR  +  umoci unpack --image DIR BUNDLE
#   gantry: gantry pull --store FRESH_STORE …   (download, verify, unpack into snapshots)
#   docker: docker pull (a private dockerd on its own roots, started here), image removed
#           before each repetition (--no-docker to leave it out)
# Each repetition starts from empty destinations. Then the peak RSS of `gantry pull` of a
# single 1 GiB random layer (GNU time's maximum resident set size; target < 64 MiB). Prints medians and the ratio; with
# --write, appends the table to docs/benchmarks.md.
#
# Usage: bench/pull.sh [-r REPS] [-s SIZE_MIB] [--write]
# Needs: docker-registry, skopeo, umoci, jq, curl, busybox-static; a release build of gantry.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
anchors=${ANCHORS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors}
reps=5; size=200; layers=4; write=0; docker=1
while [ $# -gt 0 ]; do
  case "$1" in
    -r) reps=$2; shift 2;;
    -s) size=$2; shift 2;;
    --write) write=1; shift;;
    --no-docker) docker=0; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
gantry=${GANTRY:-$repo/target/release/gantry}
[ -x "$gantry" ] || { echo "build first: cargo build --release -p gantry" >&2; exit 1; }
work=$(mktemp -d /tmp/gantry-bench-pull.XXXXXX)
port=$((30000 + $$ % 10000)); reg=127.0.0.1:$port; ref_pid=""; dockerd_pid=""
dk=$work/dk
D() { DOCKER_CONFIG=$dk/client docker --host "unix://$dk/d.sock" "$@"; }
cleanup() {
  [ -n "$ref_pid" ] && kill "$ref_pid" 2>/dev/null || true
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$dockerd_pid" 2>/dev/null || true
    grep " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf "$work"
}
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

if [ "$docker" = 1 ]; then
  mkdir -p "$dk/client"; echo '{}' > "$dk/daemon.json"
  dockerd --config-file "$dk/daemon.json" --data-root "$dk/data" --exec-root "$dk/x" \
    --pidfile "$dk/dockerd.pid" --host "unix://$dk/d.sock" --bridge=none --iptables=false \
    --ip6tables=false >"$dk/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 150); do D version >/dev/null 2>&1 && break; sleep 0.2; done
  D version >/dev/null || { echo "dockerd did not start; log:" >&2; tail -20 "$dk/dockerd.log" >&2; exit 1; }
fi

t() { local t0=$EPOCHREALTIME; "$@" >"$work/last.log" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$work/last.log" >&2; exit 1; }; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.6f\n", b-a}'; }
peer() { skopeo copy --quiet --src-tls-verify=false "docker://$reg/bench/big:latest" "oci:$work/p/img:latest" && umoci unpack --image "$work/p/img:latest" "$work/p/bundle"; }
mine() { "$gantry" pull --store "$work/g" "$reg/bench/big:latest"; }
dpull() { D pull -q "$reg/bench/big:latest"; }
for ((r=1; r<=reps; r++)); do
  rm -rf "$work/p" "$work/g"; mkdir -p "$work/p"; sync
  t peer >> "$work/peer.s"
  rm -rf "$work/p"; sync
  t mine >> "$work/gantry.s"
  rm -rf "$work/g"; sync
  if [ "$docker" = 1 ]; then
    t dpull >> "$work/docker.s"
    D rmi -f "$reg/bench/big:latest" >/dev/null; D image prune -f >/dev/null; sync
  fi
done

# Peak RSS of gantry pull of one 1 GiB random layer.
umoci new --image "$work/src:huge"
head -c $((1024 << 20)) /dev/urandom > "$work/payload.bin"
umoci insert --image "$work/src:huge" "$work/payload.bin" /data/huge.bin
rm -f "$work/payload.bin"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/src:huge" "docker://$reg/bench/huge:latest"
rm -rf "$work/src" "$work/g"; sync
/usr/bin/time -f "%M %e" -o "$work/rss" "$gantry" pull --store "$work/g" "$reg/bench/huge:latest" >/dev/null 2>&1
read -r rss_kib huge_s < "$work/rss"
rm -rf "$work/g"
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
  if [ "$docker" = 1 ]; then
    dm=$(median "$work/docker.s")
    echo "| docker pull ($(D version -f '{{.Server.Version}}'), private dockerd) | $dm | $(sort -g "$work/docker.s" | head -1) | $(sort -g "$work/docker.s" | tail -1) |"
  fi
  awk -v p="$pm" -v g="$gm" 'BEGIN{printf "\ngantry / (skopeo + umoci) time ratio: %.2f (speed-up %.2f×; target ≥ 1.5×).\n", g/p, p/g}'
  if [ "$docker" = 1 ]; then
    awk -v d="$dm" -v g="$gm" 'BEGIN{printf "gantry / docker pull time ratio: %.2f (target ≤ 0.6).\n", g/d}'
  else
    echo "docker pull was left out (--no-docker)."
  fi
  awk -v k="$rss_kib" -v s="$huge_s" 'BEGIN{printf "\nPeak RSS of `gantry pull` of one 1 GiB random layer: %.1f MiB (GNU time max RSS; target < 64 MiB), %.2f s.\n\n", k/1024, s}'
} > "$work/table.md"
cat "$work/table.md"
if [ "$write" = 1 ]; then cat "$work/table.md" >> "$repo/docs/benchmarks.md"; fi
