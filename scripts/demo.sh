#!/usr/bin/env bash
# loopgate's main job, end to end, in a throwaway sandbox of network namespaces:
#   host       192.0.2.1 on bridge br0, a "database" on 127.0.0.1:3306 and a private
#              admin service on 127.0.0.1:8080, both bound to loopback only
#   container  192.0.2.10, allowed (192.0.2.0/25)
#   neighbour  192.0.2.200, on the same bridge but not allowed
# Nothing here touches this machine's own network namespace; the sandbox is removed on
# exit, also on failure. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh must run as root: it creates network namespaces" >&2
  exit 1
fi
. scripts/install-deps.sh demo
cargo build --locked --quiet
LG="$PWD/target/debug/loopgate"

id=$$
HOST=lgdemo-host-$id CTR=lgdemo-ctr-$id NBR=lgdemo-nbr-$id
export LOOPGATE_STATE_DIR
LOOPGATE_STATE_DIR=$(mktemp -d /tmp/loopgate-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$HOST" "$CTR" "$NBR"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$LOOPGATE_STATE_DIR"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
try_connect() { # ns addr port -> prints the reply or "(no answer)"
  local out
  out=$(in_ns "$1" timeout 3 socat -T2 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null) || true
  echo "${out:-(no answer)}"
}

say "Building the sandbox: host, container and neighbour namespaces on one bridge"
for ns in "$HOST" "$CTR" "$NBR"; do ip netns add "$ns"; done
ip -n "$HOST" link set lo up
ip -n "$HOST" link add br0 type bridge
ip -n "$HOST" addr add 192.0.2.1/24 dev br0
ip -n "$HOST" link set br0 up
for pair in "$CTR:192.0.2.10:vc" "$NBR:192.0.2.200:vn"; do
  IFS=: read -r ns addr veth <<<"$pair"
  ip -n "$HOST" link add "$veth" type veth peer name eth0 netns "$ns"
  ip -n "$HOST" link set "$veth" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via 192.0.2.1
done

say "Starting two loopback-only services in the host namespace"
# `ip netns exec` execs socat, so $! is socat itself and cleanup can stop it.
ip netns exec "$HOST" socat TCP-LISTEN:3306,bind=127.0.0.1,fork,reuseaddr \
  SYSTEM:'echo hello from the database at 127.0.0.1 port 3306' >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$HOST" socat TCP-LISTEN:8080,bind=127.0.0.1,fork,reuseaddr \
  SYSTEM:'echo SECRET admin API at 127.0.0.1 port 8080' >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

say "Before: the container tries 192.0.2.1:3306 (nothing is published yet)"
echo "container -> 192.0.2.1:3306: $(try_connect "$CTR" 192.0.2.1 3306)"

say "loopgate expose br0 --allow 192.0.2.0/25 --port 3306"
"$LG" --netns "$HOST" expose br0 --allow 192.0.2.0/25 --port 3306

say "The container (192.0.2.10, allowed) connects to 192.0.2.1:3306"
reply=$(try_connect "$CTR" 192.0.2.1 3306)
echo "container -> 192.0.2.1:3306: $reply"
[ "$reply" = "hello from the database at 127.0.0.1 port 3306" ] && echo "=> the container reached the service"

say "The neighbour (192.0.2.200, not allowed) tries the same"
reply=$(try_connect "$NBR" 192.0.2.1 3306)
echo "neighbour -> 192.0.2.1:3306: $reply"
[ "$reply" = "(no answer)" ] && echo "=> the neighbour was refused"

say "The container tries the unpublished admin API at 192.0.2.1:8080"
echo "container -> 192.0.2.1:8080: $(try_connect "$CTR" 192.0.2.1 8080)"

say "The neighbour attacks 127.0.0.1 directly (CVE-2020-8558): route 127/8 via the host"
in_ns "$NBR" sysctl -qw net.ipv4.conf.eth0.route_localnet=1
ip -n "$NBR" route add 127.0.0.0/8 via 192.0.2.1 dev eth0
echo "neighbour -> 127.0.0.1:8080: $(try_connect "$NBR" 127.0.0.1 8080)"

say "loopgate audit: what is open on the host, and is it guarded?"
"$LG" --netns "$HOST" audit || true

say "The rules loopgate installed (nft list table ip loopgate, inside the host namespace)"
in_ns "$HOST" nft list table ip loopgate

say "loopgate revoke br0 --port 3306"
"$LG" --netns "$HOST" revoke br0 --port 3306
echo "container -> 192.0.2.1:3306: $(try_connect "$CTR" 192.0.2.1 3306)"
echo "route_localnet on br0 is back to $(in_ns "$HOST" cat /proc/sys/net/ipv4/conf/br0/route_localnet)"

say "Removing the sandbox"
