#!/usr/bin/env bash
# cnmkit's main job, on the embedded default (SQLite store, bridge driver, embedded runtime),
# in a throwaway "host" network namespace: nothing on this machine's own network is touched,
# and everything is removed at the end, whatever happens. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh: run as root (it makes network namespaces)" >&2
  exit 1
fi
bash scripts/install.sh

NS="cnmkit-demo-$$"
TMP="$(mktemp -d /tmp/cnmkit-demo.XXXXXX)"
DAEMON_PID=""
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_host() { nsenter --net="/run/netns/$NS" "$@"; }
cnmkit() { echo "\$ cnmkit $*" >&2; in_host .venv/bin/cnmkit --plugin-dir "$TMP/plugins" --state-dir "$TMP/state" "$@"; }
cleanup() {
  set +e
  if [ -f "$TMP/state/labs/router.json" ]; then
    in_host .venv/bin/cnmkit --plugin-dir "$TMP/plugins" --state-dir "$TMP/state" lab destroy --name router >/dev/null 2>&1
  fi
  if [ -d "$TMP/state/containers" ]; then
    for c in web db cache; do
      in_host .venv/bin/cnmkit --plugin-dir "$TMP/plugins" --state-dir "$TMP/state" rm -f "$c" >/dev/null 2>&1
    done
  fi
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "A throwaway host namespace ($NS) and the daemon inside it, with the SQLite store in $TMP/state"
ip netns add "$NS"
ip -n "$NS" link set lo up
# nsenter execs the daemon, so $! is the daemon's own PID, and cleanup stops it by that PID.
nsenter --net="/run/netns/$NS" .venv/bin/cnmkit --plugin-dir "$TMP/plugins" --state-dir "$TMP/state" \
  --log-level warning daemon &
DAEMON_PID=$!
for _ in $(seq 200); do [ -S "$TMP/plugins/cnmkit-bridge.sock" ] && break; sleep 0.05; done

step "Two networks: 'front' (dual stack, MTU 1400) and 'back' (internal)"
cnmkit network create --subnet 10.123.1.0/24 --ipv6 --subnet fd00:123:1::/64 \
  -o com.docker.network.driver.mtu=1400 front >/dev/null
cnmkit network create --subnet 10.123.2.0/24 --internal back >/dev/null
cnmkit network ls

step "Three containers: web on front, db on front and back (static address, alias 'database'), cache on back"
cnmkit run -d --name web --network front -- sleep 600 >/dev/null
cnmkit run -d --name db --network front,ip=10.123.1.50,alias=database --network back -- sleep 600 >/dev/null
cnmkit run -d --name cache --network back -- sleep 600 >/dev/null
cnmkit ps

step "web reaches db by name and by alias, over IPv4 and IPv6"
cnmkit exec web -- ping -c 1 -W 2 db
cnmkit exec web -- ping -c 1 -W 2 database
cnmkit exec web -- ping -6 -c 1 -W 2 db
step "db has one interface on each network; MTU 1400 on front"
cnmkit exec db -- ip -brief address
step "web cannot reach cache: the two networks are isolated"
if cnmkit exec web -- ping -c 1 -W 1 10.123.2.2 >/dev/null 2>&1; then echo "UNEXPECTED: reached cache"; exit 1
else echo "web -> cache: unreachable, as it should be"; fi

step "Traffic counters"
cnmkit stats db

step "What the kernel sees in the host namespace (ip -br link)"
ip -n "$NS" -br link

LAB=examples/labs/router.clab.yml
step "A lab from one file ($LAB): h1 - r1 - h2, two subnets, r1 forwarding, static routes"
cnmkit lab deploy "$LAB"
cnmkit lab inspect "$LAB"
step "h1 reaches h2 across r1; once r1 stops forwarding, it cannot"
cnmkit lab exec "$LAB" h1 -- ping -c 1 -W 2 10.81.20.2
cnmkit lab exec "$LAB" r1 -- sysctl -q -w net.ipv4.ip_forward=0
if cnmkit lab exec "$LAB" h1 -- ping -c 1 -W 1 10.81.20.2 >/dev/null 2>&1; then echo "UNEXPECTED: reached h2"; exit 1
else echo "h1 -> h2 with r1 not forwarding: unreachable, as it should be"; fi
step "Destroy the lab: its nodes, links and management network"
cnmkit lab destroy "$LAB"

step "Tear down: containers, then networks; nothing of ours is left"
cnmkit rm -f web db cache >/dev/null
cnmkit network rm front back >/dev/null
cnmkit network ls
left=$(ip -n "$NS" -o link | grep -c cnm || true)
echo "links of ours left in the host namespace: $left"
[ "$left" = 0 ]
step "Demo finished"
