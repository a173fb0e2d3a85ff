#!/usr/bin/env bash
# A multi-host gantry cluster on one machine: every host is a network namespace on one
# bridge, with its own address, state dirs and gantry daemons.
#
#   deploy/cluster.sh up  [--bin PATH] [--insecure]
#                                              bring every host up (idempotent); mutual
#                                              TLS unless --insecure (plain TCP/HTTP)
#   deploy/cluster.sh down                     remove everything `up` made (idempotent)
#   deploy/cluster.sh status                   hosts, addresses, daemons
#   deploy/cluster.sh kill HOST                host loss: SIGKILL its daemons and containers
#   deploy/cluster.sh kill-site SITE           every host of a site (site=onprem …) lost
#   deploy/cluster.sh restart HOST             start a killed host's daemons again
#   deploy/cluster.sh partition HOST          cut the host's link (daemons keep running)
#   deploy/cluster.sh heal HOST                restore the host's link
#   deploy/cluster.sh env                      `eval "$(deploy/cluster.sh env)"` sets
#                                              GANTRY_CONTROLLER and GANTRY_CONTEXT (or
#                                              GANTRY_INSECURE) for the CLI
#   deploy/cluster.sh addr HOST                the host's address
#
# Security (issue 10): by default the cluster runs mutual TLS. ctl-onprem bootstraps the
# cluster CA (DIR/ctl-onprem/data/pki) and an admin context, copied to DIR/admin.context
# (0600); with it this script creates join tokens (DIR/tokens/{controller,agent,registry},
# 0600, valid GANTRY_CLUSTER_TOKEN_TTL, default 24h): the other controllers join with the
# controller token, the agents with the agent token (their node certificates then live in
# their ROOT/pki), and the registry serves a certificate obtained with `gantry credential
# request` and the registry token (DIR/registry/pki). `up --insecure` is the old plain
# TCP/HTTP cluster with no credentials (GANTRY_INSECURE=1 for every daemon and CLI call);
# the mode is kept in DIR/mode, and `restart` uses it.
#
# Addresses: the bridge `gty0` holds 10.77.0.1/24 in the root namespace (so the CLI and
# curl on this machine reach the hosts); each host has one address of 10.77.0.0/24 inside
# its own namespace. Agents join the cluster network (--overlay): each gets a /24 of
# 10.210.0.0/16 for its containers, reached from the other agents over VXLAN. Processes are started by this script and ended by the PIDs it recorded, plus
# their descendants (the containers' shims and the containers).
#
# GANTRY_CLUSTER_DIR (default /var/lib/gantry-cluster) holds each host's state and logs;
# GANTRY_CLUSTER_CONTROLLER_ARGS / GANTRY_CLUSTER_AGENT_ARGS: extra flags for those daemons
# (e.g. shorter node TTLs in tests);
# GANTRY_CLUSTER_PREFIX (default gty) names the bridge (PREFIX0), namespaces (PREFIX-HOST)
# and veths (PREFIXvN); GANTRY_CLUSTER_NET (default 10.77.0) is the hosts' /24.
set -euo pipefail
# whether a daemon or CLI call runs --insecure is this script's choice (DIR/mode), never
# the caller's environment
unset GANTRY_INSECURE GANTRY_TOKEN GANTRY_CONTEXT GANTRY_CONTROLLER

DIR=${GANTRY_CLUSTER_DIR:-/var/lib/gantry-cluster}
# names and addresses are parameters so that tests run their own clusters side by side
P=${GANTRY_CLUSTER_PREFIX:-gty}
[[ $P =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "cluster.sh: GANTRY_CLUSTER_PREFIX '$P': 1-8 lowercase letters/digits, starting with a letter" >&2; exit 2; }
BRIDGE=${P}0
NET=${GANTRY_CLUSTER_NET:-10.77.0}
[[ $NET =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "cluster.sh: GANTRY_CLUSTER_NET '$NET': the first three octets of a 10.x.y.0/24" >&2; exit 2; }
CTL_PORT=7700
REG_PORT=5000

# name        octet  role        labels
HOSTS="
ctl-onprem    11     controller  site=onprem
ctl-cloud     12     controller  site=cloud
ctl-dr        13     controller  site=dr
registry      5      registry    -
dev-onprem    21     agent       env=dev,site=onprem
qa-onprem     22     agent       env=qa,site=onprem
prod-onprem   23     agent       env=prod,site=onprem
qa-cloud      31     agent       env=qa,site=cloud
prod-cloud    32     agent       env=prod,site=cloud
"

die() { echo "cluster.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, bridges, containers)"
for t in ip nsenter iptables flock; do
  command -v "$t" >/dev/null || die "missing '$t' (apt-get install iproute2 util-linux iptables)"
done

hosts() { echo "$HOSTS" | awk 'NF == 4 && $1 !~ /^#/'; }
field() { hosts | awk -v h="$1" -v f="$2" '$1 == h { print $f }'; }
exists() { [ -n "$(field "$1" 1)" ] || die "unknown host '$1' (hosts: $(hosts | awk '{print $1}' | xargs))"; }
ns() { echo "$P-$1"; }
veth() { echo "${P}v$(field "$1" 2)"; }
addr() { echo "$NET.$(field "$1" 2)"; }
controllers() { hosts | awk '$3 == "controller" { print $1 }'; }
controller_addrs() { for h in $(controllers); do printf '%s%s:%s' "${sep:-}" "$(addr "$h")" "$CTL_PORT"; sep=,; done; echo; }
bin() { cat "$DIR/bin" 2>/dev/null || die "no cluster is up (run: $0 up)"; }
mode() { cat "$DIR/mode" 2>/dev/null || die "no cluster is up (run: $0 up)"; }
insecure() { [ "$(mode)" = insecure ]; }
TOKEN_TTL=${GANTRY_CLUSTER_TOKEN_TTL:-24h}

# --- credentials (mutual TLS) -------------------------------------------------------------

# The CLI as the cluster's admin, against every controller.
admin() {
  GANTRY_CONTEXT="$DIR/admin.context" GANTRY_CONTROLLER="$(controller_addrs)" "$(bin)" "$@"
}

# A join token of ROLE, created once with the admin context and kept in DIR/tokens/ROLE.
token() {
  local role=$1 f="$DIR/tokens/$1" deadline=$((SECONDS + 30)) out
  if [ ! -s "$f" ]; then
    mkdir -p "$DIR/tokens"
    chmod 700 "$DIR/tokens"
    # the first member needs a moment to elect itself after it listens
    until out=$(admin token create --role "$role" --ttl "$TOKEN_TTL" 2>&1 >"$f.new"); do
      [ $SECONDS -lt $deadline ] || { rm -f "$f.new"; die "creating a $role join token: $out"; }
      sleep 0.2
    done
    chmod 600 "$f.new"
    mv "$f.new" "$f"
  fi
  cat "$f"
}

# --- namespaces and links -----------------------------------------------------------------

net_up() {
  # `ip netns add` races with itself when /run/netns is not a mount yet (two clusters
  # brought up at once on a fresh machine): one machine-wide lock around namespace setup
  mkdir -p /run/lock
  exec 9>/run/lock/gantry-cluster-netns.lock
  flock 9
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # hosts on the bridge talk to each other even when br_netfilter sends bridged frames
  # through iptables (docker sets FORWARD's policy to DROP)
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
    iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  local h
  for h in $(hosts | awk '{print $1}'); do
    local n v
    n=$(ns "$h") v=$(veth "$h")
    ip netns list | awk '{print $1}' | grep -qx "$n" || ip netns add "$n" || die "$h: ip netns add $n failed"
    if ! ip link show "$v" >/dev/null 2>&1; then
      { ip link add "$v" type veth peer name eth0 netns "$n" &&
        ip link set "$v" master "$BRIDGE" up &&
        ip -n "$n" addr add "$(addr "$h")/24" dev eth0 &&
        ip -n "$n" link set eth0 up &&
        ip -n "$n" link set lo up &&
        ip -n "$n" route add default via "$NET.1"; } || die "$h: setting up its link $v failed"
    fi
  done
  flock -u 9
}

net_down() {
  local h
  for h in $(hosts | awk '{print $1}'); do
    ip link del "$(veth "$h")" 2>/dev/null || true
    ip netns del "$(ns "$h")" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
}

# --- processes ----------------------------------------------------------------------------

# All descendants of the given PIDs (from /proc, children before parents are collected).
descendants() {
  local want=" $* " pid ppid changed=1 out=""
  local -A parent=()
  for s in /proc/[0-9]*/stat; do
    read -r pid _ ppid < <(sed -E 's/^([0-9]+) \(.*\) . ([0-9]+).*/\1 x \2/' "$s" 2>/dev/null) || continue
    parent[$pid]=$ppid
  done
  local set=" $* "
  while [ $changed -eq 1 ]; do
    changed=0
    for pid in "${!parent[@]}"; do
      case "$set" in *" $pid "*) continue ;; esac
      case "$set" in *" ${parent[$pid]} "*) set="$set$pid "; changed=1 ;; esac
    done
  done
  for pid in $set; do case "$want" in *" $pid "*) ;; *) out="$out $pid" ;; esac; done
  echo $out
}

# The PIDs recorded for a host, those still alive.
host_pids() {
  local f pid
  for f in "$DIR/$1"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if [ -d "/proc/$pid" ]; then echo "$pid"; fi
  done
}

kill_host() {
  local h=$1 pids all
  pids=$(host_pids "$h" | xargs)
  # shims daemonize (their parent becomes init), so find them by network namespace too
  pids="$pids $( { ip netns pids "$(ns "$h")" 2>/dev/null || true; } | xargs)"
  [ -n "${pids// /}" ] || return 0
  all="$pids $(descendants $pids)"
  # shellcheck disable=SC2086
  kill -KILL $all 2>/dev/null || true
  local deadline=$((SECONDS + 10)) p
  for p in $all; do
    while [ -d "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  done
  rm -f "$DIR/$h"/*.pid
}

spawn() { # HOST NAME ARGS… : start one daemon in the host's network namespace
  local h=$1 name=$2
  shift 2
  mkdir -p "$DIR/$h"
  # nsenter --net only: the daemon keeps the machine's mounts (cgroupfs); `ip netns exec`
  # would remount /sys and hide the cgroup hierarchies from the agent
  local envs=(RUST_LOG="${RUST_LOG:-info}")
  if insecure; then envs+=(GANTRY_INSECURE=1); fi
  if [ -n "${GANTRY_TOKEN:-}" ]; then envs+=(GANTRY_TOKEN="$GANTRY_TOKEN"); fi
  env -u GANTRY_TOKEN "${envs[@]}" setsid nsenter --net="/run/netns/$(ns "$h")" "$(bin)" "$@" \
    >>"$DIR/$h/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$h/$name.pid"
}

wait_port() { # HOST PORT
  local deadline=$((SECONDS + 30))
  until nsenter --net="/run/netns/$(ns "$1")" bash -c "exec 3<>/dev/tcp/$(addr "$1")/$2" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$1: nothing listens on $(addr "$1"):$2 after 30 s (log: $DIR/$1/)"
    sleep 0.1
  done
}

start_host() {
  local h=$1 role labels id a
  role=$(field "$h" 3) labels=$(field "$h" 4) a=$(addr "$h")
  [ -z "$(host_pids "$h")" ] || return 0
  case $role in
  controller)
    id=$(controllers | grep -n "^$h\$" | cut -d: -f1)
    if [ "$id" = 1 ]; then
      # shellcheck disable=SC2086
      spawn "$h" controller controller run --id 1 --listen "$a:$CTL_PORT" --data-dir "$DIR/$h/data" --bootstrap \
        ${GANTRY_CLUSTER_CONTROLLER_ARGS:-}
    else
      local tok=""
      insecure || tok=$(token controller)
      # the token goes by environment, not on the command line (ps shows that to anyone);
      # it is used only while the member has no certificate in DATA/pki yet
      # shellcheck disable=SC2086
      GANTRY_TOKEN=$tok spawn "$h" controller controller run --id "$id" --listen "$a:$CTL_PORT" \
        --data-dir "$DIR/$h/data" --join "$(addr "$(controllers | head -1)"):$CTL_PORT" \
        ${GANTRY_CLUSTER_CONTROLLER_ARGS:-}
    fi
    wait_port "$h" "$CTL_PORT"
    if [ "$id" = 1 ] && ! insecure && [ ! -e "$DIR/admin.context" ]; then
      local ctx="$DIR/$h/data/pki/admin.context" deadline=$((SECONDS + 10))
      until [ -s "$ctx" ]; do
        [ $SECONDS -lt $deadline ] || die "$h: no admin context at $ctx (log: $DIR/$h/controller.log)"
        sleep 0.1
      done
      cp -p "$ctx" "$DIR/admin.context"
    fi
    ;;
  registry)
    if insecure; then
      spawn "$h" registry registry --listen "$a:$REG_PORT" --root "$DIR/$h/data" --insecure
    else
      # a certificate of role registry (DNS name registry.gantry, which clients verify
      # whatever address they dial), issued by the cluster CA for the registry token
      local pki="$DIR/$h/pki"
      if [ ! -s "$pki/registry.crt" ]; then
        local out tok
        tok=$(token registry)
        out=$(GANTRY_TOKEN=$tok "$(bin)" credential request --join "$(controller_addrs)" \
          --name registry --out "$pki" 2>&1) || die "$h: requesting its certificate: $out"
      fi
      spawn "$h" registry registry --listen "$a:$REG_PORT" --root "$DIR/$h/data" \
        --tls-cert "$pki/registry.crt" --tls-key "$pki/registry.key" --tls-ca "$pki/ca.crt"
    fi
    wait_port "$h" "$REG_PORT"
    ;;
  agent)
    local args=() tok=""
    IFS=, read -ra kv <<<"$labels"
    for l in "${kv[@]}"; do args+=(--label "$l"); done
    # with TLS the agent pulls from the registry with its node certificate
    if insecure; then args+=(--insecure-registry "$(addr registry):$REG_PORT"); else tok=$(token agent); fi
    # shellcheck disable=SC2086
    GANTRY_TOKEN=$tok spawn "$h" agent agent --root "$DIR/$h/agent" --run-root "$DIR/$h/run" \
      --host "unix://$DIR/$h/agent.sock" --overlay --cgroup-parent "gantry-$P/$h" \
      --join "$(controller_addrs)" --name "$h" --advertise "$a" "${args[@]}" \
      ${GANTRY_CLUSTER_AGENT_ARGS:-}
    local deadline=$((SECONDS + 30))
    until [ -S "$DIR/$h/agent.sock" ]; do
      [ $SECONDS -lt $deadline ] || die "$h: the agent's socket did not appear in 30 s (log: $DIR/$h/agent.log)"
      sleep 0.1
    done
    ;;
  esac
}

# --- verbs --------------------------------------------------------------------------------

up() {
  local b="" m=tls
  while [ $# -gt 0 ]; do
    case $1 in
    --bin) b=${2:?--bin PATH}; shift 2 ;;
    --insecure) m=insecure; shift ;;
    *) die "up: unknown option '$1' (--bin PATH, --insecure)" ;;
    esac
  done
  if [ -e "$DIR/mode" ] && [ "$(cat "$DIR/mode")" != "$m" ]; then
    die "a cluster is up in $DIR with mode $(cat "$DIR/mode"), not $m (run: $0 down)"
  fi
  if [ -z "$b" ]; then
    b=$(cd "$(dirname "$0")/.." && pwd)/target/release/gantry
  fi
  [ -x "$b" ] || die "no gantry binary at $b (build it: cargo build --release -p gantry, or pass --bin PATH)"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  realpath "$b" >"$DIR/bin"
  echo "$m" >"$DIR/mode"
  net_up
  local h
  # controllers first (one at a time: each joins through the first), then the rest
  for h in $(controllers); do start_host "$h"; done
  for h in $(hosts | awk '$3 != "controller" {print $1}'); do start_host "$h"; done
  status
}

down() {
  local h f
  if [ -d "$DIR" ]; then
    # a daemon that died on its own is worth knowing about before its logs go
    for f in "$DIR"/*/*.pid; do
      [ -e "$f" ] || continue
      if [ ! -d "/proc/$(cat "$f")" ]; then
        echo "cluster.sh: $(basename "$(dirname "$f")") $(basename "$f" .pid) had exited before down; its log ends:" >&2
        tail -5 "${f%.pid}.log" >&2 || true
      fi
    done
    for h in $(hosts | awk '{print $1}'); do kill_host "$h"; done
    # containers left by killed agents: delete them through the runtime state they keep
    local b
    b=$(cat "$DIR/bin" 2>/dev/null || true)
    for h in $(hosts | awk '$3 == "agent" {print $1}'); do
      [ -n "$b" ] && [ -d "$DIR/$h/run" ] || continue
      for rt in "$DIR/$h/run"/runtime "$DIR/$h/run"/runc; do
        [ -d "$rt" ] || continue
        for c in $("$b" runtime list --root "$rt" -q 2>/dev/null); do
          "$b" runtime delete --root "$rt" --force "$c" >/dev/null 2>&1 || true
        done
      done
    done
    # the agents' cgroups (gantry-PREFIX/HOST/ID in every hierarchy), deepest first
    for f in /sys/fs/cgroup/gantry-"$P" /sys/fs/cgroup/*/gantry-"$P"; do
      [ -d "$f" ] || continue
      find "$f" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ ! -d "$f" ] || echo "cluster.sh: cgroup $f is still in use; not removed" >&2
    done
    # the agents' mounts lived in the namespaces of processes now gone; unmount any that
    # were made in this mount namespace
    { grep -o " $DIR/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  net_down
  rm -rf "$DIR"
  echo "cluster down: namespaces, links, bridge, processes and $DIR removed"
}

status() {
  local h pids state
  printf '%-12s %-11s %-10s %-22s %s\n' HOST ADDRESS ROLE LABELS STATE
  for h in $(hosts | awk '{print $1}'); do
    pids=$(host_pids "$h" | xargs)
    if ! ip netns list | awk '{print $1}' | grep -qx "$(ns "$h")"; then state="no namespace"
    elif [ -z "$pids" ]; then state="down"
    elif [ "$(ip -n "$(ns "$h")" -o link show eth0 2>/dev/null | grep -c 'state UP')" = 0 ] ||
      [ "$(ip -o link show "$(veth "$h")" 2>/dev/null | grep -c 'state UP')" = 0 ]; then state="partitioned (pid $pids)"
    else state="up (pid $pids)"
    fi
    printf '%-12s %-11s %-10s %-22s %s\n' "$h" "$(addr "$h")" "$(field "$h" 3)" "$(field "$h" 4)" "$state"
  done
}

verb=${1:-}
[ $# -gt 0 ] && shift
case $verb in
up) up "$@" ;;
down) down ;;
status) status ;;
kill) exists "${1:?kill HOST}"; kill_host "$1"; echo "$1: daemons and containers killed" ;;
kill-site)
  s=${1:?kill-site SITE}
  hs=$(hosts | awk -v s="site=${s#site=}" '$4 ~ ("(^|,)" s "(,|$)") { print $1 }')
  [ -n "$hs" ] || die "no host has label site=${s#site=}"
  for h in $hs; do kill_host "$h"; echo "$h: daemons and containers killed"; done
  ;;
restart) exists "${1:?restart HOST}"; start_host "$1"; echo "$1: started" ;;
partition) exists "${1:?partition HOST}"; ip link set "$(veth "$1")" down; echo "$1: link cut" ;;
heal) exists "${1:?heal HOST}"; ip link set "$(veth "$1")" up; echo "$1: link restored" ;;
env)
  if insecure; then
    echo "export GANTRY_CONTROLLER=$(controller_addrs) GANTRY_INSECURE=1; unset GANTRY_CONTEXT"
  else
    echo "export GANTRY_CONTROLLER=$(controller_addrs) GANTRY_CONTEXT=$DIR/admin.context; unset GANTRY_INSECURE"
  fi
  ;;
addr) exists "${1:?addr HOST}"; addr "$1" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; [ -z "$verb" ] || exit 2 ;;
esac
