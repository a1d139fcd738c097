#!/usr/bin/env bash
# Installs everything cnmkit and its test tiers need on a fresh Debian 12 machine (as root; it
# never calls sudo, which such a machine may not have): Python with venv and the CA certificates
# pip needs, the kernel tools, a real Docker engine, the CNI reference plugins (a benchmark
# baseline), user-mode-linux (the real-kernel tier for 802.1Q), tcpdump, iperf3, Graphviz,
# Mininet and bridge-utils (a lab baseline), tini (PID 1 of runtime containers), and a virtualenv
# at .venv with cnmkit installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv ca-certificates iproute2 iputils-ping busybox-static iptables kmod procps
          util-linux docker.io containernetworking-plugins etcd-server etcd-client
          user-mode-linux tcpdump iperf3 graphviz mininet bridge-utils tini ebtables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/install.sh: missing ${missing[*]}; run as root to install them with apt-get" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=$(mktemp /tmp/cnmkit-install.XXXXXX)
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } >"$log" 2>&1; then
  cat "$log"; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "cnmkit installed: $(.venv/bin/cnmkit --help | head -1)"
