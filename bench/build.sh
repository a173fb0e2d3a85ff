#!/usr/bin/env bash
# bench/build.sh - `gantry build` against `buildah bud` on the same 10-step busybox
# Dockerfile (FROM scratch, 3 COPY, 4 RUN, ENV, WORKDIR, CMD), same machine, same run:
#   cold:   empty store / storage root before every run (prepared outside the timing);
#   cached: every step cached (buildah with --layers), nothing changed in the context.
# buildah runs its RUN steps with runc (its default crun refuses this host's hybrid
# cgroups, see /work/shared/anchors/README.md) and overlay storage; gantry runs them with
# `gantry runtime` (its own runtime library). Timing: hyperfine, medians. Root needed.
#
# Usage: bench/build.sh [RUNS] [GANTRY_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
gantry=$(realpath "${2:-target/release/gantry}")
command -v buildah >/dev/null || { echo "buildah is not installed (apt-get install buildah)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is not installed" >&2; exit 1; }
[ -x "$gantry" ] || { echo "no gantry binary at $gantry (cargo build --release -p gantry)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/gantry-bench-build.XXXXXX)
cleanup() {
  buildah --root "$work/bah" --runroot "$work/bahrun" --storage-driver overlay rmi -a -f >/dev/null 2>&1 || true
  umount -R "$work/bah/overlay" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ctx=$work/ctx
mkdir -p "$ctx"
cp /bin/busybox "$ctx/"
echo a > "$ctx/a.txt"
echo b > "$ctx/b.txt"
cat > "$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV APP=/app
WORKDIR /app
COPY a.txt ./
RUN echo one > one.txt
RUN echo two > two.txt && cat a.txt > copy.txt
COPY b.txt ./
RUN ls -l /app > listing.txt
CMD ["cat", "/app/listing.txt"]
EOF

bah="buildah --root $work/bah --runroot $work/bahrun --storage-driver overlay"
bah_build="$bah bud --layers --runtime $(command -v runc) --isolation oci -q -t bench:1 $ctx"
bah_reset="$bah rmi -a -f >/dev/null 2>&1; umount -R $work/bah/overlay 2>/dev/null; rm -rf $work/bah $work/bahrun; true"
g_build="$gantry build --store $work/gstore --network none -q -t bench:1 $ctx"
g_reset="rm -rf $work/gstore"

echo "== cold (empty store before each run), $runs runs" >&2
hyperfine -N --runs "$runs" --export-json "$work/cold.json" \
  --prepare "bash -c '$g_reset'" -n gantry "$g_build" \
  --prepare "bash -c '$bah_reset'" -n buildah "$bah_build" >&2
echo "== fully cached rebuild, $runs runs" >&2
bash -c "$g_reset; $g_build" >/dev/null
bash -c "$bah_build" >/dev/null
hyperfine -N --runs "$runs" --warmup 1 --export-json "$work/cached.json" \
  -n gantry "$g_build" -n buildah "$bah_build" >&2

row() {
  local json=$1 label=$2
  local g b
  g=$(jq -r '.results[] | select(.command=="gantry") | .median * 1000' "$json")
  b=$(jq -r '.results[] | select(.command=="buildah") | .median * 1000' "$json")
  printf '| %s | %.1f | %.1f | %.2f |\n' "$label" "$g" "$b" "$(awk -v g="$g" -v b="$b" 'BEGIN{print g/b}')"
}
echo "| build (10 steps, busybox) | gantry ms | buildah ms | gantry/buildah |"
echo "|---|---:|---:|---:|"
row "$work/cold.json" cold
row "$work/cached.json" "fully cached"
