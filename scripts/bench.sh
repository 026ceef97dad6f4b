#!/usr/bin/env bash
# Benchmarks loopgate's data path and control path in throwaway namespaces, all in one
# run so that ratios compare like with like. `--quick` (CI smoke test, < 1 min) checks
# that every path works; the full run (< 10 min) takes medians of 3 rounds.
# Writes bench-results/results.jsonl (raw), bench-results/tables.md and, when
# matplotlib is available, bench-results/scaling.png. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench.sh must run as root" >&2; exit 1; }
. scripts/install-deps.sh bench
# iperf-free: lgload (bench/) is the load generator; matplotlib draws the chart.

# `--control`: the control path alone (apply, audit, revoke against nft, 7 rounds),
# for comparing ratios of one run without the data path's quarter of an hour.
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
CONTROL_ONLY=0; [ "${1:-}" = "--control" ] && CONTROL_ONLY=1
if [ $QUICK = 1 ]; then SECS=0.5; ROUNDS=1; SIZES="10 1000"; GRANTS=100
else SECS=2; ROUNDS=7; SIZES="10 1000 10000 100000"; GRANTS=1000; fi

cargo build --locked --release --quiet
cargo build --release --quiet --manifest-path bench/Cargo.toml
LG=$PWD/target/release/loopgate; LOAD=$PWD/bench/target/release/lgload
OUT=$PWD/bench-results; mkdir -p "$OUT"; RES=$OUT/results.jsonl; : > "$RES"
H=lgbench-h-$$; C=lgbench-c-$$
# State on tmpfs, as /run/loopgate is on a systemd host (this machine's /tmp is a disk).
export LOOPGATE_STATE_DIR; LOOPGATE_STATE_DIR=$(mktemp -d /dev/shm/lgbench.XXXXXX)
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

measure() { # name round ns addr
  for mode in rr crr bulk; do
    line=$(ip netns exec "$3" taskset -c 1 "$LOAD" "$mode" "$4" "$SECS")
    record "{\"kind\":\"data\",\"case\":\"$1\",\"round\":$2,${line#\{}"
  done
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

# The reference the issue measured: hand-written nft (DNAT plus a plain source-set guard).
cat > "$LOOPGATE_STATE_DIR/hand.nft" <<'NFT'
table ip handwritten {
	set allowed { type ipv4_addr; flags interval; elements = { 192.0.2.0/24 } }
	chain pre { type nat hook prerouting priority dstnat; iifname "vh" ip daddr 192.0.2.1 tcp dport 5001 dnat to 127.0.0.1:5001; }
	chain in { type filter hook input priority filter; iifname != "lo" ip daddr 127.0.0.0/8 ip saddr @allowed accept; iifname != "lo" ip daddr 127.0.0.0/8 drop; }
}
NFT
policy "$LOOPGATE_STATE_DIR/cidrs.yaml" 10000 1
policy "$LOOPGATE_STATE_DIR/grants.yaml" 0 "$GRANTS"
CASES="direct veth-limit hand-written-nft loopgate-1-grant loopgate-10k-cidrs loopgate-$GRANTS-grants socat"
setup() { # case: install its ruleset; prints the namespace and address to measure
  case $1 in
    direct) echo "$H 127.0.0.1:5001" ;;
    veth-limit) echo "$C 192.0.2.1:5002" ;;
    socat) echo "$C 192.0.2.1:5003" ;;
    hand-written-nft)
      ip netns exec "$H" nft -f "$LOOPGATE_STATE_DIR/hand.nft"
      ip netns exec "$H" sysctl -qw net.ipv4.conf.vh.route_localnet=1
      echo "$C 192.0.2.1:5001" ;;
    loopgate-1-grant) "$LG" --netns "$H" expose vh --allow 192.0.2.0/24 --port 5001 >/dev/null; echo "$C 192.0.2.1:5001" ;;
    loopgate-10k-cidrs) "$LG" --netns "$H" apply "$LOOPGATE_STATE_DIR/cidrs.yaml" >/dev/null; echo "$C 192.0.2.1:5001" ;;
    loopgate-*-grants) "$LG" --netns "$H" apply "$LOOPGATE_STATE_DIR/grants.yaml" >/dev/null; echo "$C 192.0.2.1:5001" ;;
  esac
}
teardown() {
  case $1 in
    hand-written-nft)
      ip netns exec "$H" nft delete table ip handwritten
      ip netns exec "$H" sysctl -qw net.ipv4.conf.vh.route_localnet=0 ;;
    loopgate-*) "$LG" --netns "$H" revoke --all >/dev/null ;;
  esac
}
# Rounds outside, cases inside: drift on a noisy machine touches every case alike. The
# order rotates each round, so no case always follows the same one (a case inherits the
# conntrack entries and pending kernel frees of the one before it).
read -r -a order <<< "$CASES"
for round in $(seq "$ROUNDS"); do
  [ $CONTROL_ONLY = 1 ] && break
  for i in "${!order[@]}"; do
    c=${order[$(( (i + round - 1) % ${#order[@]} ))]}
    read -r ns addr < <(setup "$c")
    measure "$c" "$round" "$ns" "$addr"
    teardown "$c"
  done
  echo "data path: round $round of $ROUNDS done"
done

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
control() { # name n_cidrs n_grants
  local name=$1 file=$LOOPGATE_STATE_DIR/ctl.yaml nft=$LOOPGATE_STATE_DIR/ctl.nft
  policy "$file" "$2" "$3"
  "$LG" --netns "$H" apply --dry-run "$file" | sed -n '/^table ip loopgate {/,$p' > "$nft"
  # One grant is measured as users run it: `expose`, not a policy file.
  local cmd=(apply "$file")
  [ "$name" = expose-1-grant ] && cmd=(expose vh --allow 192.0.2.0/24 --port 5001)
  # The interfaces the plan opens, for the baseline's own `sysctl -w`.
  local ifcs
  ifcs=$(/usr/bin/python3 -c "import re,sys; print(' '.join(sorted(set(re.findall(r'\"([^\"]+)\" : jump raw_if', open(sys.argv[1]).read())))))" "$nft")
  for round in $(seq "$ROUNDS"); do
    "$LG" --netns "$H" revoke --all >/dev/null
    t=$(date +%s%N); /usr/bin/time -f %M -o "$LOOPGATE_STATE_DIR/mem" "$LG" --netns "$H" "${cmd[@]}" >/dev/null 2>&1; apply=$(ms "$t")
    mem=$(cat "$LOOPGATE_STATE_DIR/mem")
    t=$(date +%s%N); "$LG" --netns "$H" audit >/dev/null || true; audit=$(ms "$t")
    t=$(date +%s%N); "$LG" --netns "$H" audit --deep >/dev/null || true; deep=$(ms "$t")
    t=$(date +%s%N); ip netns exec "$H" nft -j list ruleset >/dev/null; nftlist=$(ms "$t")
    t=$(date +%s%N); "$LG" --netns "$H" revoke --all >/dev/null; revoke=$(ms "$t")
    t=$(date +%s%N); ip netns exec "$H" nft -f "$nft"
    for ifc in $ifcs; do ip netns exec "$H" sysctl -qw "net.ipv4.conf.$ifc.route_localnet=1"; done
    nftf=$(ms "$t")
    t=$(date +%s%N); ip netns exec "$H" nft delete table ip loopgate
    for ifc in $ifcs; do ip netns exec "$H" sysctl -qw "net.ipv4.conf.$ifc.route_localnet=0"; done
    nftdel=$(ms "$t")
    record "{\"kind\":\"control\",\"case\":\"$name\",\"round\":$round,\"apply_ms\":$apply,\"nft_f_ms\":$nftf,\"audit_ms\":$audit,\"audit_deep_ms\":$deep,\"nft_list_ms\":$nftlist,\"revoke_ms\":$revoke,\"nft_delete_ms\":$nftdel,\"apply_max_rss_kb\":$mem}"
  done
  echo "control path: $name done"
}
for n in $SIZES; do control "$n-cidrs" "$n" 1; done
control "$GRANTS-grants" 0 "$GRANTS"
control "expose-1-grant" 0 1

if [ $CONTROL_ONLY = 1 ]; then
  /usr/bin/python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"control"' in l]
cases = list(dict.fromkeys(r["case"] for r in rows))
med = lambda c, k: statistics.median(r[k] for r in rows if r["case"] == c)
print("| case | apply ms | nft -f + sysctl -w | ratio | revoke ms | nft delete + sysctl -w | ratio | audit ms | nft -j list | ratio | apply peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    a, f, r, d, au, l = (med(c, k) for k in ("apply_ms", "nft_f_ms", "revoke_ms", "nft_delete_ms", "audit_ms", "nft_list_ms"))
    print(f"| {c} | {a:g} | {f:g} | {a / f:.2f} | {r:g} | {d:g} | {r / d:.2f} | {au:g} | {l:g} | {au / l:.2f} | {med(c, 'apply_max_rss_kb') / 1024:.1f} |")
PY
  exit 0
fi
# Policy parsing against serde_json on the same data, and its growth at 10x the size.
cargo build --locked --release --quiet --example policy_parse
record "$(target/release/examples/policy_parse "$([ $QUICK = 1 ] && echo 1 || echo 10)")"
echo "policy parse: done"
# The state file's save and load, version 2 (lists inline) against 3 (long lists in
# files of their own), at issue 21's size: 1,000 grants and one of 100,000 networks.
cargo build --locked --release --quiet --example state_io
record "$(target/release/examples/state_io $([ $QUICK = 1 ] && echo "100 10000" || echo "1000 100000"))"
echo "state file: done"

/usr/bin/python3 scripts/bench_report.py "$RES" "$OUT"
echo "results: $RES, $OUT/tables.md"
