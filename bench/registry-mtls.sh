#!/usr/bin/env bash
# bench/registry-mtls.sh REPS SIZE_MIB WRITE - the --mtls part of bench/registry.sh (see
# there): gantry push/pull, plain HTTP vs mutual TLS, side by side.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/.." && pwd)
anchors=${ANCHORS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors}
reps=$1; size=$2; write=$3; layers=4
gantry=${GANTRY:-$repo/target/release/gantry}
work=$(mktemp -d /tmp/gantry-bench-regtls.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# credentials from a throwaway CA
(cd "$repo" && cargo run -q -p gantry-security --example dev-certs -- \
  "$work/pki" registry:reg operator:ops viewer:view >/dev/null)
cred() { echo --tls-cert "$work/pki/$1.crt" --tls-key "$work/pki/$1.key" --tls-ca "$work/pki/ca.crt"; }

# the image: busybox + $layers random layers, as an OCI layout
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
mib=$(du -sm "$work/src/blobs" | cut -f1)

port_plain=$((21000 + $$ % 9000)); port_tls=$((port_plain + 1))
"$gantry" image load --store "$work/local" -i "$work/src" --name "127.0.0.1:$port_plain/bench/big" >/dev/null
"$gantry" image tag --store "$work/local" "127.0.0.1:$port_plain/bench/big:big" "127.0.0.1:$port_tls/bench/big:big" >/dev/null

start() { # NAME PORT FLAGS...
  local name=$1 port=$2; shift 2
  rm -rf "$work/reg-$name"
  "$gantry" registry --listen "127.0.0.1:$port" --root "$work/reg-$name" "$@" >"$work/reg-$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
  echo "registry $name did not start" >&2; cat "$work/reg-$name.log" >&2; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
t() { local t0=$EPOCHREALTIME; "$@" >"$work/last.log" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$work/last.log" >&2; exit 1; }; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.6f\n", b-a}'; }

for ((r=1; r<=reps; r++)); do
  start plain "$port_plain" --insecure
  # shellcheck disable=SC2046
  start tls "$port_tls" $(cred reg)
  for who in plain tls; do
    port=$port_plain; flags=(); pflags=()
    if [ "$who" = tls ]; then port=$port_tls; read -ra flags <<<"$(cred ops)"; read -ra pflags <<<"$(cred view)"; fi
    img="127.0.0.1:$port/bench/big:big"
    rm -rf "$work/pull-$who"; sync
    echo "$who push $(t "$gantry" push --store "$work/local" "${flags[@]}" "$img")" >> "$work/runs.txt"
    echo "$who push-noop $(t "$gantry" push --store "$work/local" "${flags[@]}" "$img")" >> "$work/runs.txt"
    echo "$who pull $(t "$gantry" pull --store "$work/pull-$who" "${pflags[@]}" "$img")" >> "$work/runs.txt"
    echo "$who pull-noop $(t "$gantry" pull --store "$work/pull-$who" "${pflags[@]}" "$img")" >> "$work/runs.txt"
    rm -rf "$work/pull-$who"
  done
  stop_all
done

median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
{
  echo "### Registry push/pull, mutual TLS vs plain HTTP ($(date -u +%F), reps=$reps, ${mib} MiB: busybox + $layers random layers)"
  echo
  echo "Command: \`bench/registry.sh --mtls -r $reps -s $size\` (gantry push/pull against two gantry registries, fresh per repetition, interleaved)."
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the machine is shared)."
  echo
  echo "| operation | plain s | mTLS s | mTLS/plain time |"
  echo "|---|---:|---:|---:|"
  for op in push push-noop pull pull-noop; do
    p=$(awk -v op="$op" '$1=="plain" && $2==op {print $3}' "$work/runs.txt" | median)
    m=$(awk -v op="$op" '$1=="tls" && $2==op {print $3}' "$work/runs.txt" | median)
    awk -v op="$op" -v p="$p" -v m="$m" 'BEGIN{ printf "| %s | %.3f | %.3f | %.2f× |\n", op, p, m, m/p }'
  done
  echo
} > "$work/table.md"
cat "$work/table.md"
if [ "$write" = 1 ]; then cat "$work/table.md" >> "$repo/docs/benchmarks.md"; fi
