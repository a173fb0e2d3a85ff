#!/usr/bin/env bash
# Unpack benchmark: a 200 MiB image of 4 random-data layers (gzip), as an OCI layout.
#   gantry: `gantry image unpack` with the blobs already in the store (snapshots wiped
#           before each run), and `gantry image load` + `unpack` from the layout into a
#           fresh store (copies and verifies every blob first);
#   peer:   `umoci unpack` of the same layout into a fresh bundle.
# Run by hyperfine in one invocation (each command's runs back to back); medians and ratios appended to docs/benchmarks.md.
#
# usage: bench/unpack.sh [-r RUNS] [-b GANTRY_BIN] [--no-record]
set -euo pipefail
runs=10
bin=target/release/gantry
record=1
while [ $# -gt 0 ]; do
  case "$1" in
    -r) runs=$2; shift 2 ;;
    -b) bin=$2; shift 2 ;;
    --no-record) record=0; shift ;;
    *) echo "usage: $0 [-r RUNS] [-b GANTRY_BIN] [--no-record]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/unpack.sh needs root (umoci unpack, owners, overlay whiteouts)" >&2; exit 1; }
for t in umoci hyperfine jq sha256sum gzip; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no gantry binary at $bin (cargo build --release -p gantry)" >&2; exit 1; }
bin=$(realpath "$bin")

work=$(mktemp -d /var/tmp/gantry-bench-unpack.XXXXXX)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
mkdir -p "$layout/blobs/sha256"

blob() { # file -> prints digest hex, moves file into the layout
  local h; h=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$layout/blobs/sha256/$h"; echo "$h"
}

echo "building the image (4 x 50 MiB random layers)..." >&2
layers_json=""; diffs_json=""
for i in 1 2 3 4; do
  d=$work/l$i; mkdir -p "$d/data$i/sub"
  head -c $((40 << 20)) /dev/urandom > "$d/data$i/big"
  for j in $(seq 1 80); do head -c $((128 << 10)) /dev/urandom > "$d/data$i/sub/f$j"; done
  tar -C "$d" -cf "$work/layer$i.tar" .
  diff=$(sha256sum "$work/layer$i.tar" | cut -d' ' -f1)
  gzip -1 -c "$work/layer$i.tar" > "$work/layer$i.tgz"; rm -rf "$d" "$work/layer$i.tar"
  size=$(stat -c %s "$work/layer$i.tgz")
  h=$(blob "$work/layer$i.tgz")
  layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$size}"
  diffs_json+="${diffs_json:+,}\"sha256:$diff\""
done
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs_json" > "$work/config"
csize=$(stat -c %s "$work/config"); c=$(blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$c" "$csize" "$layers_json" > "$work/manifest"
msize=$(stat -c %s "$work/manifest"); m=$(blob "$work/manifest")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$m" "$msize" > "$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
total=$(du -sm "$layout" | cut -f1)
echo "image: ${total} MiB compressed" >&2

store=$work/store
"$bin" image load --store "$store" -i "$layout" --name bench/img >/dev/null

hyperfine --runs "$runs" --warmup 1 --export-json "$work/result.json" \
  -n "umoci unpack" --prepare "rm -rf $work/bundle; sync" "umoci unpack --image $layout:bench $work/bundle" \
  -n "gantry image unpack" --prepare "rm -rf $store/snapshots; sync" \
     "$bin image unpack --store $store bench/img:bench" \
  -n "gantry image load + unpack" --prepare "rm -rf $work/store2; sync" \
     "$bin image load --store $work/store2 -i $layout --name bench/img && $bin image unpack --store $work/store2 bench/img:bench" >&2

median() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median' "$work/result.json"; }
u=$(median "umoci unpack"); g=$(median "gantry image unpack"); gl=$(median "gantry image load + unpack")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
table=$(cat <<MD

### Unpack: ${total} MiB, 4 random-data gzip layers, OCI layout ($(date -u +%Y-%m-%d), runs=$runs)
Command: \`bench/unpack.sh -r $runs\` (hyperfine in one run, each command's runs back to back, not interleaved; umoci $(umoci --version | awk '{print $3}')).

| what | median s | umoci / this |
|---|---:|---:|
| \`umoci unpack\` (peer) | $(printf %.3f "$u") | 1.00 |
| \`gantry image unpack\` (blobs already in the store) | $(printf %.3f "$g") | $(ratio "$u" "$g") |
| \`gantry image load\` + \`unpack\` (copy + verify blobs first) | $(printf %.3f "$gl") | $(ratio "$u" "$gl") |

gantry verifies both the blob digest and the diff_id while unpacking and ends with one
\`syncfs\`; umoci verifies the blob digest and does not sync.
MD
)
echo "$table"
if [ "$record" = 1 ]; then
  echo "$table" >> "$(dirname "$0")/../docs/benchmarks.md"
fi
