#!/usr/bin/env bash
# Measures `loopgate watch` on a large policy in a throwaway namespace: CPU time at idle
# (1,000 grants, one of them with 100,000 allowed networks, over 60 s) and the reaction
# time to a new interface that matches a pattern grant (from `ip link add` to its
# route_localnet being 1, which watch writes only after the guard read back).
# `--quick`: 5 s idle, 2 reactions (CI smoke test: checks it works, not its speed).
# Writes bench-results/watch.json. Needs root; never touches the machine's namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench_watch.sh must run as root" >&2; exit 1; }
. scripts/install-deps.sh bench

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then IDLE=5; REACT=2; else IDLE=60; REACT=7; fi
cargo build --locked --release --quiet
LG=$PWD/target/release/loopgate
OUT=$PWD/bench-results; mkdir -p "$OUT"
H=lgwatch-h-$$
export LOOPGATE_STATE_DIR; LOOPGATE_STATE_DIR=$(mktemp -d /dev/shm/lgwatch.XXXXXX)
watch_pid=
cleanup() {
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null || true
  ip netns del "$H" 2>/dev/null || true
  rm -rf "$LOOPGATE_STATE_DIR"
}
trap cleanup EXIT

ip netns add "$H"
ip -n "$H" link set lo up
for i in $(seq 10); do
  ip -n "$H" link add "br$i" type bridge
  ip -n "$H" addr add "203.0.113.$i/32" dev "br$i"
  ip -n "$H" link set "br$i" up
done
POLICY=$LOOPGATE_STATE_DIR/policy.yaml
/usr/bin/python3 - "$POLICY" <<'PY'
import sys
path = sys.argv[1]
big = [f"198.18.{(i >> 8) & 255}.{i & 255}" if i < 65536 else f"198.19.{(i >> 8) & 255}.{i & 255}" for i in range(100000)]
with open(path, "w") as f:
    f.write("grants:\n")
    for g in range(998):
        f.write(f"  - interface: br{g % 9 + 1}\n    allow: 192.0.2.0/24\n    port: {6000 + g}\n")
    f.write(f"  - interface: br10\n    port: 5001\n    allow: [{', '.join(big)}]\n")
    f.write("  - interface: lgr*\n    allow: 198.51.100.0/24\n    port: 7000\n")
PY
ip netns exec "$H" "$LG" apply "$POLICY" > /dev/null
LOG=$LOOPGATE_STATE_DIR/watch.log
ip netns exec "$H" "$LG" watch --policy "$POLICY" 2> "$LOG" &
watch_pid=$!
for _ in $(seq 600); do grep -q "watch: started" "$LOG" && break; sleep 0.05; done
grep -q "watch: started" "$LOG" || { cat "$LOG"; echo "watch did not start" >&2; exit 1; }
sleep 1  # settle: the first passes after start read the table back once

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$watch_pid/stat"; }
t0=$(ticks); s0=$(date +%s.%N)
sleep "$IDLE"
t1=$(ticks); s1=$(date +%s.%N)
idle=$(/usr/bin/python3 -c "print(round(100 * ($t1 - $t0) / $HZ / ($s1 - $s0), 3))")
echo "watch idle CPU over ${IDLE} s: ${idle} % of one core"

# Reaction: ip link add ... up, then poll route_localnet every 1 ms.
react() {
ip netns exec "$H" /usr/bin/python3 - "$REACT" <<'PY'
import os, subprocess, sys, time
n = int(sys.argv[1]); out = []
for i in range(n):
    name = f"lgr{i}"
    path = f"/proc/sys/net/ipv4/conf/{name}/route_localnet"
    t0 = time.monotonic()
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"xp{i}"], check=True)
    subprocess.run(["ip", "addr", "add", f"198.51.100.{i + 1}/32", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    deadline = t0 + 5
    while time.monotonic() < deadline:
        try:
            if open(path).read().strip() == "1":
                break
        except OSError:
            pass
        time.sleep(0.001)
    else:
        print("timeout", file=sys.stderr); sys.exit(1)
    out.append((time.monotonic() - t0) * 1000)
    subprocess.run(["ip", "link", "del", name], check=True)
    time.sleep(0.3)
print(" ".join(f"{x:.1f}" for x in out))
PY
}
med() { /usr/bin/python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:])), 1))" "$@"; }
reactions=$(react)
median=$(med $reactions)
echo "reaction to a new matching interface, large policy (ms, each run): $reactions; median $median ms"
grep "now serves" "$LOG" | sed 's/^/  /' | tail -n "$REACT" || true

# The same on a small policy (10 grants), which watch picks up from the file.
/usr/bin/python3 - "$POLICY" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("grants:\n")
    for g in range(9):
        f.write(f"  - interface: br{g + 1}\n    allow: 192.0.2.0/24\n    port: {6000 + g}\n")
    f.write("  - interface: lgr*\n    allow: 198.51.100.0/24\n    port: 7000\n")
PY
for _ in $(seq 200); do grep -q "changed; applying it" "$LOG" && break; sleep 0.05; done
sleep 1
small=$(react)
small_median=$(med $small)
echo "reaction to a new matching interface, 10 grants (ms, each run): $small; median $small_median ms"
printf '{"idle_seconds":%s,"idle_cpu_percent":%s,"reaction_ms":[%s],"reaction_median_ms":%s,"small_reaction_ms":[%s],"small_reaction_median_ms":%s}\n' \
  "$IDLE" "$idle" "$(echo $reactions | tr ' ' ',')" "$median" "$(echo $small | tr ' ' ',')" "$small_median" > "$OUT/watch.json"
kill "$watch_pid"; wait "$watch_pid" 2>/dev/null || true; watch_pid=
grep -q "stopped" "$LOG" || { cat "$LOG"; echo "watch did not stop cleanly" >&2; exit 1; }
