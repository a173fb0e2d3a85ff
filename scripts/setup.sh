#!/usr/bin/env bash
# Installs what gantry's main job and tests need on a fresh Debian machine.
# As root it installs with apt-get; otherwise it prints exactly what is missing.
set -euo pipefail

# command → Debian package that provides it
declare -A NEED=(
  [busybox]=busybox-static   # the root filesystem of test and demo images
  [ip]=iproute2              # network namespaces, veths, bridges
  [iptables]=iptables        # NAT and published ports
  [jq]=jq
  [runc]=runc                # peer runtime (interop tests, benchmarks)
  [crun]=crun
  [skopeo]=skopeo            # peer registry client (interop tests)
  [umoci]=umoci
  [hyperfine]=hyperfine      # benchmarks
  [docker-registry]=docker-registry  # the reference registry (interop tests)
  [dockerd]=docker.io        # the Docker engine (interop test, pull benchmark peer)
  [iperf3]=iperf3
  [curl]=curl
)

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# busybox must be the static one: it is copied into container root filesystems.
if command -v busybox >/dev/null 2>&1 && ! file -L "$(command -v busybox)" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && file /bin/busybox | grep -q 'statically linked' || missing+=(busybox-static)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "gantry needs these Debian packages (run as root to install them):" >&2
  echo "  apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends file "${missing[@]}" >/dev/null
