#!/usr/bin/env bash
# bench/sim.sh - the scale simulation, release-built: N simulated nodes, S services × R
# replicas placed by the real scheduler, re-verified by plan apply and committed through a
# 3-member Raft on sled (in process), simulated agents acking every allocation; then 10% of
# the nodes fail, one whole site fails, and every service gets a rolling update.
# Prints the summary and the load average, keeps the JSON report and the CSV of placements
# over time in OUT (default /tmp/gantry-sim-bench).
# Peers: Nomad C1M (1,000,000 containers on 5,000 nodes in < 5 min, 5 servers ≈ 3,750/s);
# target ≤ 30 s here (≥ 33,000/s).
#
# Usage: bench/sim.sh [--no-build] [--out DIR] [gantry-sim scale options...]
#        e.g. bench/sim.sh --nodes 10000 --services 1000 --replicas 1000 [--store memory]
set -euo pipefail
cd "$(dirname "$0")/.."
build=1; out=/tmp/gantry-sim-bench; args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift;;
    --out) out=$2; shift 2;;
    *) args+=("$1"); shift;;
  esac
done
[ "$build" = 1 ] && cargo build --release -p gantry-sim
mkdir -p "$out"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/gantry-sim scale --json --csv "$out/placements.csv" "${args[@]}" > "$out/report.json"
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
jq -r '
  "\(.nodes) nodes, \(.services) services × \(.replicas) replicas; total \(.total_seconds|.*100|round/100) s; RSS \(.rss_mib|round) MiB (peak \(.peak_rss_mib|round))",
  "store: \(.store)",
  "setup: register nodes \(.register_nodes_seconds|.*100|round/100) s, upsert services \(.upsert_services_seconds|.*100|round/100) s",
  (.phases[] | "\(.phase): \(.seconds|.*100|round/100) s (plans committed by \(.placed_seconds|.*100|round/100) s), \(.placements) placed, \(.stops) stopped, \(.placements_per_s|round)/s; eval p50 \(.eval_p50_ms|.*100|round/100) ms p99 \(.eval_p99_ms|.*100|round/100) ms; commit p50 \(.commit_p50_ms|.*10|round/10) ms p99 \(.commit_p99_ms|.*10|round/10) ms; schedule \(.schedule_seconds|.*100|round/100) s, state lock wait \(.state_lock_wait_seconds|.*100|round/100) s, commit \(.commit_seconds|.*100|round/100) s, ack wait \(.ack_wait_seconds|.*100|round/100) s, \(.reports_committed) status reports" + (if .nodes_failed > 0 then "; \(.nodes_failed) nodes down, \(.allocations_lost) lost" else "" end)),
  "quality: \(.quality.allocations_running) running on \(.quality.nodes_used)/\(.quality.nodes_ready) nodes, lower bound \(.quality.nodes_lower_bound) (fragmentation \(.quality.fragmentation|.*100|round/100)); cpu \(.quality.cpu_utilisation_used_nodes*100|round)% / mem \(.quality.memory_utilisation_used_nodes*100|round)% of used nodes",
  "violations: \(.violations|length)"
' "$out/report.json"
