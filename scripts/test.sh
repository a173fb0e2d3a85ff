#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace.
# Tests that need root (namespaces, cgroups, mounts) run for real and fail loudly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the tests create namespaces, cgroups and mounts: run as root" >&2
  exit 1
fi
scripts/setup.sh
# 2 cores: keep the build and the root tests (which create real containers) sane.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --locked --workspace --bins
cargo test --locked --workspace -- --test-threads="${TEST_THREADS:-2}"
