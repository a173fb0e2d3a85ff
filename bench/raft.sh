#!/usr/bin/env bash
# Raft commit throughput/latency (1, 16, 256 clients) and leader-failover time, 3 controller
# members as real processes on loopback with durable sled data dirs.
# Usage: bench/raft.sh [--seconds S] [--trials N] [--clients 1,16,256]
#        [--rss-nodes 10000 --rss-services 1000 --rss-replicas 1000]  (memory with 1M allocations)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gantry --bin gantry
cargo build --release -p gantry-controller --example raft_bench
exec target/release/examples/raft_bench target/release/gantry "$@"
