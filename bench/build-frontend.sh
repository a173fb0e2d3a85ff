#!/usr/bin/env bash
# bench/build-frontend.sh - the build front end's share of a fully cached rebuild of a
# 10-step Dockerfile (agent/examples/build_frontend_bench.rs): context stream, index,
# parse+plan+expand, COPY source hashing + cache keys. Debug build with the hashing and tar
# crates optimised (a release build does not finish in reasonable time on the shared
# machine). Prints one Markdown row per context size.
#
# Usage: bench/build-frontend.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-30}
opt=(--config 'profile.dev.package.sha2.opt-level=3'
     --config 'profile.dev.package.tar.opt-level=3'
     --config 'profile.dev.package.walkdir.opt-level=3')
echo "| context | stream ms | index ms | parse+plan+expand ms | hash+keys ms | total ms | (unpack instead of index) ms |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for files in 50 500; do
  cargo run -q -p gantry-agent --example build_frontend_bench "${opt[@]}" -- "$iterations" "$files"
done
