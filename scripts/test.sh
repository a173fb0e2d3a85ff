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
# Each test binary runs as `cargo test` would (from its package's directory), under a time
# limit: a hung test fails here, naming its binary, instead of silently eating CI's time.
limit=${TEST_BINARY_TIMEOUT:-1200}
plan=$(mktemp)
trap 'rm -f "$plan"' EXIT
cargo test --locked --workspace --no-run --message-format=json \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | [.executable, (.manifest_path | sub("/Cargo.toml$"; "")), .target.name] | @tsv' \
  | awk -F'\t' '!seen[$1]++' | sort -t$'\t' -k2,2 -k3,3 >"$plan"
failed=()
while IFS=$'\t' read -r -u 3 exe dir name; do
  echo "== $name ($(basename "$exe"))"
  status=0
  (cd "$dir" && timeout -k 30 "$limit" "$exe" --test-threads="${TEST_THREADS:-2}") || status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "scripts/test.sh: $name ($exe) did not finish within ${limit}s: a test hangs" >&2
    failed+=("$name (timed out)")
  elif [ "$status" -ne 0 ]; then
    failed+=("$name")
  fi
done 3<"$plan"
if [ ${#failed[@]} -ne 0 ]; then
  echo "scripts/test.sh: failed test binaries: ${failed[*]}" >&2
  exit 1
fi
echo "scripts/test.sh: all $(wc -l <"$plan") test binaries passed"
