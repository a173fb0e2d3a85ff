#!/usr/bin/env bash
# Bridge-network setup + teardown per container: gantry (rtnetlink in-process,
# iptables-restore) against the same wiring with forked ip/iptables, interleaved in one run.
# Root only; makes and removes its own bridge, subnet, chains and namespaces.
# Usage: bench/network-setup.sh [ITERATIONS]   (results go into docs/benchmarks.md by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/network-setup.sh: run as root" >&2; exit 1; }
cargo build --release -q -p gantry-agent --example network_setup_bench
exec target/release/examples/network_setup_bench "${1:-50}"
