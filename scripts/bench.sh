#!/usr/bin/env bash
# Benchmarks loopgate's data path and control path in throwaway namespaces, all in one
# run so that ratios compare like with like. `--quick` (CI smoke test, < 1 min) checks
# that every path works; the full run (< 10 min) takes medians of 3 rounds.
# Writes bench-results/results.jsonl (raw), bench-results/tables.md and, when
# matplotlib is available, bench-results/scaling.png. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench.sh must run as root" >&2; exit 1; }
. scripts/install-deps.sh
# iperf-free: lgload (bench/) is the load generator; matplotlib draws the chart.
dpkg-query -W -f='${Status}' python3-matplotlib 2>/dev/null | grep -q "ok installed" ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then SECS=0.5; ROUNDS=1; SIZES="10 1000"; GRANTS=100
else SECS=3; ROUNDS=3; SIZES="10 1000 10000 100000"; GRANTS=1000; fi

cargo build --locked --release --quiet
cargo build --release --quiet --manifest-path bench/Cargo.toml
LG=$PWD/target/release/loopgate; LOAD=$PWD/bench/target/release/lgload
OUT=$PWD/bench-results; mkdir -p "$OUT"; RES=$OUT/results.jsonl; : > "$RES"
H=lgbench-h-$$; C=lgbench-c-$$
export LOOPGATE_STATE_DIR; LOOPGATE_STATE_DIR=$(mktemp -d /tmp/lgbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$H" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true
  rm -rf "$LOOPGATE_STATE_DIR"
}
trap cleanup EXIT

ip netns add "$H"; ip netns add "$C"
ip -n "$H" link set lo up
ip -n "$H" link add vh type veth peer name eth0 netns "$C"
ip -n "$H" addr add 192.0.2.1/24 dev vh; ip -n "$H" link set vh up
ip -n "$C" addr add 192.0.2.2/24 dev eth0; ip -n "$C" link set eth0 up
# Server on CPU 0, client on CPU 1, as in the reference figures.
ip netns exec "$H" taskset -c 0 "$LOAD" serve 127.0.0.1:5001 & pids+=($!)
ip netns exec "$H" taskset -c 0 "$LOAD" serve 192.0.2.1:5002 & pids+=($!)
ip netns exec "$H" taskset -c 0 socat TCP-LISTEN:5003,bind=192.0.2.1,fork,reuseaddr TCP:127.0.0.1:5001 & pids+=($!)
sleep 0.5

record() { echo "$1" >> "$RES"; }

data_case() { # name ns addr
  local name=$1 ns=$2 addr=$3
  for round in $(seq "$ROUNDS"); do
    for mode in rr crr bulk; do
      line=$(ip netns exec "$ns" taskset -c 1 "$LOAD" "$mode" "$addr" "$SECS")
      record "{\"kind\":\"data\",\"case\":\"$name\",\"round\":$round,${line#\{}"
    done
  done
  echo "data path: $name done"
}

policy() { # file n_cidrs n_grants : n disjoint /32s, then 192.0.2.0/24; extra grants on bridges
  /usr/bin/python3 - "$@" <<'PY'
import sys
path, n, grants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cidrs = [f"10.{(i*2)>>16 & 255}.{(i*2)>>8 & 255}.{(i*2) & 255}" for i in range(n)] + ["192.0.2.0/24"]
with open(path, "w") as f:
    f.write("grants:\n")
    for g in range(grants - 1):  # spread over br1..br9; "vh" sorts after them: measured last
        f.write(f"  - interface: br{g % 9 + 1}\n    allow: 192.0.2.0/24\n    port: {6000 + g}\n")
    f.write(f"  - interface: vh\n    port: 5001\n    allow: [{', '.join(cidrs)}]\n")
PY
}
for i in $(seq 9); do
  ip -n "$H" link add "br$i" type bridge; ip -n "$H" addr add "203.0.113.$i/32" dev "br$i"; ip -n "$H" link set "br$i" up
done

data_case direct "$H" 127.0.0.1:5001
data_case veth-limit "$C" 192.0.2.1:5002
# The reference the issue measured: hand-written nft (DNAT plus a plain source-set guard).
cat > "$LOOPGATE_STATE_DIR/hand.nft" <<'NFT'
table ip handwritten {
	set allowed { type ipv4_addr; flags interval; elements = { 192.0.2.0/24 } }
	chain pre { type nat hook prerouting priority dstnat; iifname "vh" ip daddr 192.0.2.1 tcp dport 5001 dnat to 127.0.0.1:5001; }
	chain in { type filter hook input priority filter; iifname != "lo" ip daddr 127.0.0.0/8 ip saddr @allowed accept; iifname != "lo" ip daddr 127.0.0.0/8 drop; }
}
NFT
ip netns exec "$H" nft -f "$LOOPGATE_STATE_DIR/hand.nft"
ip netns exec "$H" sysctl -qw net.ipv4.conf.vh.route_localnet=1
data_case hand-written-nft "$C" 192.0.2.1:5001
ip netns exec "$H" nft delete table ip handwritten
ip netns exec "$H" sysctl -qw net.ipv4.conf.vh.route_localnet=0
"$LG" --netns "$H" expose vh --allow 192.0.2.0/24 --port 5001 >/dev/null
data_case loopgate-1-grant "$C" 192.0.2.1:5001
policy "$LOOPGATE_STATE_DIR/cidrs.yaml" 10000 1
"$LG" --netns "$H" apply "$LOOPGATE_STATE_DIR/cidrs.yaml" >/dev/null
data_case loopgate-10k-cidrs "$C" 192.0.2.1:5001
policy "$LOOPGATE_STATE_DIR/grants.yaml" 0 "$GRANTS"
"$LG" --netns "$H" apply "$LOOPGATE_STATE_DIR/grants.yaml" >/dev/null
data_case "loopgate-$GRANTS-grants" "$C" 192.0.2.1:5001
"$LG" --netns "$H" revoke --all >/dev/null
data_case socat "$C" 192.0.2.1:5003

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
control() { # name n_cidrs n_grants
  local name=$1 file=$LOOPGATE_STATE_DIR/ctl.yaml nft=$LOOPGATE_STATE_DIR/ctl.nft
  policy "$file" "$2" "$3"
  "$LG" --netns "$H" apply --dry-run "$file" | sed -n '/^table ip loopgate {/,$p' > "$nft"
  for round in $(seq "$ROUNDS"); do
    "$LG" --netns "$H" revoke --all >/dev/null
    t=$(date +%s%N); /usr/bin/time -f %M -o "$LOOPGATE_STATE_DIR/mem" "$LG" --netns "$H" apply "$file" >/dev/null; apply=$(ms "$t")
    mem=$(cat "$LOOPGATE_STATE_DIR/mem")
    t=$(date +%s%N); "$LG" --netns "$H" audit >/dev/null || true; audit=$(ms "$t")
    t=$(date +%s%N); ip netns exec "$H" nft -j list ruleset >/dev/null; nftlist=$(ms "$t")
    "$LG" --netns "$H" revoke --all >/dev/null
    t=$(date +%s%N); ip netns exec "$H" nft -f "$nft"
    for ifc in $(/usr/bin/python3 -c "import re,sys; print(' '.join(sorted(set(re.findall(r'\"([^\"]+)\" : jump raw_if', open(sys.argv[1]).read())))))" "$nft"); do
      ip netns exec "$H" sysctl -qw "net.ipv4.conf.$ifc.route_localnet=1"
    done
    nftf=$(ms "$t")
    ip netns exec "$H" nft delete table ip loopgate
    for ifc in vh br1 br2 br3 br4 br5 br6 br7 br8 br9; do ip netns exec "$H" sysctl -qw "net.ipv4.conf.$ifc.route_localnet=0"; done
    record "{\"kind\":\"control\",\"case\":\"$name\",\"round\":$round,\"apply_ms\":$apply,\"nft_f_ms\":$nftf,\"audit_ms\":$audit,\"nft_list_ms\":$nftlist,\"apply_max_rss_kb\":$mem}"
  done
  echo "control path: $name done"
}
for n in $SIZES; do control "$n-cidrs" "$n" 1; done
control "$GRANTS-grants" 0 "$GRANTS"
control "expose-1-grant" 0 1

/usr/bin/python3 scripts/bench_report.py "$RES" "$OUT"
echo "results: $RES, $OUT/tables.md"
