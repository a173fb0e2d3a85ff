#!/usr/bin/env bash
# The main job: installs what it needs, builds gantry, brings up a 9-host cluster on this
# machine (deploy/cluster.sh: 3 controllers in sites onprem/cloud/dr, a registry, agents
# for dev/qa/prod), builds the demo web app from deploy/demo/Dockerfile, pushes it,
# deploys it to dev, migrates it dev → qa → prod, kills the onprem site and shows the
# failover to the cloud site, and leaves the cluster running.
#
#   deploy/demo.sh            the whole demo (a cluster already up is taken down first)
#   deploy/demo.sh --no-build use target/release/gantry as it is
#   deploy/demo.sh --bin PATH use this gantry binary (e.g. a debug build)
#   deploy/demo.sh --insecure the cluster without TLS or credentials (plain TCP/HTTP)
#
# By default every connection is mutual TLS: the CLI calls below use the cluster's admin
# context (GANTRY_CONTEXT, set by `deploy/cluster.sh env`), and the image is pushed with
# an operator certificate obtained with a join token (`gantry credential request`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/demo.sh creates network namespaces, containers, cgroups and mounts: run as root" >&2
  scripts/setup.sh || true
  exit 1
fi
build=1
insecure=""
GANTRY=$PWD/target/release/gantry
while [ $# -gt 0 ]; do
  case $1 in
  --no-build) build=0; shift ;;
  --bin) build=0 GANTRY=$(realpath "${2:?--bin PATH}"); shift 2 ;;
  --insecure) insecure=--insecure; shift ;;
  *) echo "deploy/demo.sh: unknown option '$1' (--no-build, --bin PATH, --insecure)" >&2; exit 2 ;;
  esac
done

t0=$EPOCHREALTIME
lap=$t0
step() {
  local now=$EPOCHREALTIME
  awk -v a="$lap" -v b="$now" 'BEGIN { if (b - a > 0.05) printf "    (%.1f s)\n", b - a }'
  lap=$now
  printf '\n\033[1m==> %s\033[0m\n' "$*"
}
say() { printf '    %s\n' "$*"; }
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

step "installing what gantry needs (apt-get, once)"
scripts/setup.sh >/dev/null

if [ $build = 1 ]; then
  step "building gantry (release)"
  cargo build --release --locked -p gantry 2>&1 | tail -1
fi
[ -x "$GANTRY" ] || { echo "no $GANTRY: run without --no-build" >&2; exit 1; }
export PATH=$(dirname "$GANTRY"):$PATH

export GANTRY_CLUSTER_DIR=${GANTRY_CLUSTER_DIR:-/var/lib/gantry-cluster}
CLUSTER=deploy/cluster.sh
step "bringing up the cluster: 9 hosts as network namespaces on bridge gty0 (${insecure:-mutual TLS})"
$CLUSTER down >/dev/null
$CLUSTER up --bin "$GANTRY" $insecure
eval "$($CLUSTER env)"
if [ -z "$insecure" ]; then
  say "cluster CA and admin context: $GANTRY_CONTEXT; join tokens:"
  gantry token ls | sed 's/^/    /'
fi
REG=$($CLUSTER addr registry):5000

wait_nodes() {
  local deadline=$((SECONDS + 30))
  until [ "$(gantry node ls 2>/dev/null | grep -c ' Ready ')" -ge "$1" ]; do
    [ $SECONDS -lt $deadline ] || { gantry node ls; echo "nodes not ready in 30 s" >&2; exit 1; }
    sleep 0.2
  done
}
wait_nodes 5
gantry controller status
gantry node ls

step "building the demo image from deploy/demo/Dockerfile and pushing it to $REG"
cp /bin/busybox deploy/demo/busybox
store=$GANTRY_CLUSTER_DIR/build-store
gantry build --store "$store" --network none --progress plain -t "$REG/demo:1" deploy/demo 2>&1 | grep -E '^#[0-9]+ \[|built|naming' | sed 's/^/    /'
if [ -n "$insecure" ]; then
  push_cred=(--insecure-registry "$REG")
else
  # pushing takes an operator (or admin) certificate: one from an operator join token
  ops=$GANTRY_CLUSTER_DIR/operator
  (umask 077; gantry token create --role operator --ttl 10m 2>/dev/null >"$GANTRY_CLUSTER_DIR/tokens/operator")
  GANTRY_TOKEN=$(cat "$GANTRY_CLUSTER_DIR/tokens/operator") \
    gantry credential request --join "$GANTRY_CONTROLLER" --name demo --out "$ops" | sed 's/^/    /'
  push_cred=(--tls-cert "$ops/demo.crt" --tls-key "$ops/demo.key" --tls-ca "$ops/ca.crt")
fi
gantry push --store "$store" "${push_cred[@]}" "$REG/demo:1" 2>&1 | tail -2 | sed 's/^/    /'

# The node of the running replica of `demo`, and its answer over HTTP.
node_of_demo() {
  gantry service ps demo 2>/dev/null | awk '$4 == "Run" && $5 == "Running" { print $2; exit }'
}
wait_on() { # ENV: until demo runs on a node whose name starts with ENV-
  local deadline=$((SECONDS + 60)) n
  while :; do
    n=$(node_of_demo)
    case "$n" in "$1"-*) echo "$n"; return 0 ;; esac
    if [ $SECONDS -ge $deadline ]; then
      gantry service ps demo >&2
      echo "demo not running on an $1 node after 60 s" >&2
      exit 1
    fi
    sleep 0.2
  done
}
ask() { # NODE
  local a deadline=$((SECONDS + 20))
  a=$($CLUSTER addr "$1")
  until curl -fsS --max-time 2 "http://$a:8080/" 2>/dev/null | sed 's/^/    | /'; do
    [ $SECONDS -lt $deadline ] || { echo "no answer from $a:8080 in 20 s" >&2; exit 1; }
    sleep 0.2
  done
  say "(curl http://$a:8080/)"
}

step "deploying it to dev (service demo: constraint env==dev, endpoint :8080 on every node)"
gantry service create demo --image "$REG/demo:1" --constraint env==dev \
  --network demo --endpoint 8080:8080 --failover site=onprem,site=cloud
n=$(wait_on dev)
gantry service ps demo
ask "$n"
say "the endpoint answers on every node, e.g. on qa-cloud:"
ask qa-cloud

step "migrating dev → qa (make-before-break: the new replica runs before the old one stops)"
gantry migrate demo --to env==qa
n=$(wait_on qa)
gantry service ps demo
ask "$n"

step "migrating qa → prod"
gantry migrate demo --to env==prod
n=$(wait_on prod)
gantry service ps demo
ask "$n"

step "killing the whole onprem site (its controller, agents and their containers)"
before=$n
$CLUSTER kill-site onprem
say "demo was on $before; waiting for the failover to site cloud"
k0=$EPOCHREALTIME
n=$(wait_on prod)
while [ "$n" = "$before" ]; do sleep 0.2; n=$(wait_on prod); done
say "$(awk -v a="$k0" -v b="$EPOCHREALTIME" 'BEGIN { printf "replacement running on '"$n"' %.1f s after the site was lost", b - a }')"
gantry controller status || true
gantry service ps demo
ask "$n"

step "done in $(elapsed) s — the cluster keeps running"
cat <<EOF
    now try:
      eval "\$(deploy/cluster.sh env)"      # GANTRY_CONTROLLER and GANTRY_CONTEXT for the CLI
      export PATH=$(dirname "$GANTRY"):\$PATH
      gantry node ls
      gantry service ps demo
      curl http://$($CLUSTER addr "$n"):8080/
      deploy/cluster.sh restart ctl-onprem  # bring the lost site back, host by host
      deploy/cluster.sh status
      deploy/cluster.sh down                # remove everything
EOF
