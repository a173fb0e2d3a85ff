#!/usr/bin/env bash
# The main job: installs what it needs, builds gantry, and runs a real workload.
# Today: a busybox container run by gantry's own OCI runtime. The multi-host cluster demo
# (deploy/cluster.sh) takes over this command as the cluster issues land.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/demo.sh creates containers (namespaces, cgroups, mounts): run as root" >&2
  scripts/setup.sh || true
  exit 1
fi
scripts/setup.sh
step() { printf '\n==> %s\n' "$*"; }
t0=$EPOCHREALTIME

step "building gantry (release)"
cargo build --release --locked -p gantry
GANTRY=$PWD/target/release/gantry

work=$(mktemp -d /tmp/gantry-demo.XXXXXX)
root=$work/state
id=gantry-demo-$$
cleanup() {
  "$GANTRY" runtime --root "$root" delete --force "$id" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step "making an OCI bundle from busybox-static"
bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for app in sh echo hostname id cat ls ps; do ln -s busybox "$bundle/rootfs/bin/$app"; done
(cd "$bundle" && "$GANTRY" runtime spec)
# the workload: show it is isolated (own hostname, PID 1, own mounts)
jq '.process.args = ["sh","-c","echo hello from $(hostname); echo pid $$; id; ls /"] | .process.terminal = false' \
  "$bundle/config.json" >"$bundle/config.json.new" && mv "$bundle/config.json.new" "$bundle/config.json"

step "running it with gantry's own runtime (no runc underneath)"
"$GANTRY" runtime --root "$root" run --bundle "$bundle" "$id"
awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "\n==> done in %.2f s\n", b - a }'
