#!/usr/bin/env bash
# Raft commit throughput/latency (1, 16, 256 clients) and leader-failover time, 3 controller
# members as real processes on loopback with durable sled data dirs.
# Usage: bench/raft.sh [--seconds S] [--trials N] [--clients 1,16,256]
#        [--rss-nodes 10000 --rss-services 1000 --rss-replicas 1000]  (memory with 1M allocations)
#        [--compare-mtls [--rounds 3]]  (commits: a --insecure cluster and a mutual-TLS one
#                                        side by side, interleaved rounds, ratio)
#        [--conns C]  (clients share C connections, as etcd's `benchmark --conns`)
#        [--ceiling]  (after each commit row the same clients call Status, which needs no
#                      Raft and no disk: what the gRPC stack alone allows on this machine)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gantry --bin gantry
cargo build --release -p gantry-controller --example raft_bench
exec target/release/examples/raft_bench target/release/gantry "$@"
