#!/usr/bin/env bash
# Measures `loopgate watch` on a large policy in a throwaway namespace: CPU time at idle
# (1,000 grants, each with its own allow list, one of them with 100,000 allowed
# networks, over 60 s), peak RSS, the reaction time to a new interface that matches a
# pattern grant (from `ip link add` to watch's transaction that put its guard in the
# table and read it back; and to its route_localnet being 1, one settle second later)
# at 1,000, 100 and 10 grants in the same run, and the
# cost of a policy edit that changes one grant at 10, 100, 1,000 and 10,000 grants
# (watch's own "in place in N ms", the transaction from reading the state to commit).
# `--quick`: 5 s idle, 2 reactions, the smaller sizes (CI smoke test: checks it works,
# not its speed). Writes bench-results/watch.json. Needs root; never touches the
# machine's namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench_watch.sh must run as root" >&2; exit 1; }
. scripts/install-deps.sh bench

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then IDLE=5; REACT=2; BIG=100; CURVE="10 100"
else IDLE=60; REACT=7; BIG=1000; CURVE="10 100 1000 10000"; fi
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
# policy N [BIG] [EDIT]: N grants over br1..br9 (each with its own allow list: the
# shared 192.0.2.0/24 plus one /32 of its own), with BIG the last one on br10 allows
# 100,000 networks, plus the pattern grant `lgr*`; EDIT moves grant 0 to another port.
# What the file holds is recorded in a file, not a variable: `policy` also runs in
# command substitutions (subshells), and rewriting a file with what it already held
# changes nothing, so watch logs no change and a wait for one would time out.
CURRENT=$LOOPGATE_STATE_DIR/policy.args
policy() {
echo "$*" > "$CURRENT"
/usr/bin/python3 - "$POLICY" "$@" <<'PY'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
big = len(sys.argv) > 3 and sys.argv[3] == "big"
edit = len(sys.argv) > 4 and sys.argv[4] == "edit"
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write("grants:\n")
    small = n - 2 if big else n - 1
    for g in range(small):
        port = 6000 + g if not (edit and g == 0) else 60000
        f.write(f"  - interface: br{g % 9 + 1}\n    allow: [192.0.2.0/24, 198.19.{200 + (g >> 8)}.{g & 255}/32]\n    port: {port}\n")
    if big:
        nets = [f"198.18.{(i >> 8) & 255}.{i & 255}" if i < 65536 else f"198.19.{(i >> 8) & 255}.{i & 255}" for i in range(100000)]
        f.write(f"  - interface: br10\n    port: 5001\n    allow: [{', '.join(nets)}]\n")
    f.write("  - interface: lgr*\n    allow: 198.51.100.0/24\n    port: 7000\n")
os.rename(tmp, path)
PY
}
policy "$BIG" big
ip netns exec "$H" "$LG" apply "$POLICY" > /dev/null 2>&1
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

# Reaction: ip link add ... up (a bridge, as a compose project's network), then poll
# every 1 ms for watch's log line of the transaction that served it (the new grant and
# guard are in the table and read back: the line is written after the commit) and for
# its route_localnet being 1. Watch opens an interface a pattern matches one second
# after it appears, on purpose (issue 20: a CNI writes its own route_localnet right
# after creating a veth; see src/verbs/watch/newcomers.rs), so "open" is that second
# plus a second, small transaction; the control path's cost is the guard figure.
# Prints "GUARD_MS...|OPEN_MS...".
react() {
ip netns exec "$H" /usr/bin/python3 - "$REACT" "$LOG" <<'PY'
import os, subprocess, sys, time
n, log = int(sys.argv[1]), sys.argv[2]
def served():
    with open(log) as f:
        return f.read().count("now serves")
guard, opened = [], []
for i in range(n):
    name = f"lgr{i}"
    path = f"/proc/sys/net/ipv4/conf/{name}/route_localnet"
    before = served()
    t0 = time.monotonic()
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"198.51.100.{i + 1}/32", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    deadline = t0 + 10
    g = None
    while time.monotonic() < deadline:
        if g is None and served() > before:
            g = (time.monotonic() - t0) * 1000
        try:
            if open(path).read().strip() == "1":
                break
        except OSError:
            pass
        time.sleep(0.001)
    else:
        print("timeout", file=sys.stderr); sys.exit(1)
    opened.append((time.monotonic() - t0) * 1000)
    if g is None:
        print("opened without a logged transaction", file=sys.stderr); sys.exit(1)
    guard.append(g)
    subprocess.run(["ip", "link", "del", name], check=True)
    # Until watch has dropped the grant again (its own transaction).
    before = served()
    end = time.monotonic() + 10
    while served() == before and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.3)
print(" ".join(f"{x:.1f}" for x in guard) + "|" + " ".join(f"{x:.1f}" for x in opened))
PY
}
med() { /usr/bin/python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:])), 1))" "$@"; }
out=$(react); reactions=${out%|*}; opens=${out#*|}
median=$(med $reactions); open_median=$(med $opens)
echo "new matching interface, $BIG grants: guard read back (ms, each run): $reactions; median $median ms"
echo "  route_localnet 1 (ms, each run; one second of it is the settle wait): $opens; median $open_median ms"
grep "now serves" "$LOG" | sed 's/^/  /' | tail -n 4 || true

rss() { awk '/VmHWM/ {print $2}' "/proc/$watch_pid/status"; }
# Waits until watch has logged $1 more "now serves" lines than $2 (bounded).
served() { grep -c "now serves" "$LOG" || true; }
wait_served() {
  for _ in $(seq 1200); do [ "$(served)" -gt "$1" ] && return 0; sleep 0.05; done
  echo "watch logged no change within 60 s of a policy edit" >&2; return 1
}
# The same reaction on smaller policies, which watch picks up from the file.
small_case() { # grants
  local before; before=$(served)
  policy "$1"
  wait_served "$before" || { cat "$LOG" >&2; exit 1; }
  sleep 1
  react
}
# Peak RSS at the large policy (VmHWM only grows: read before the edit curve's
# 10,000-grant policy).
peak_big=$(rss)
echo "watch peak RSS at $BIG grants: $((peak_big / 1024)) MiB"
out=$(small_case 100); mid=${out%|*}; mid_opens=${out#*|}; mid_median=$(med $mid)
echo "new matching interface, 100 grants: guard read back (ms, each run): $mid; median $mid_median ms (open: $mid_opens)"
out=$(small_case 10); small=${out%|*}; small_opens=${out#*|}; small_median=$(med $small)
echo "new matching interface, 10 grants: guard read back (ms, each run): $small; median $small_median ms (open: $small_opens)"
echo "ratio, $BIG grants / 10 grants: $(/usr/bin/python3 -c "print(round($median / $small_median, 2))")"

# A policy edit that changes one grant (its port), at each size: watch's own time.
curve=""
for n in $CURVE; do
  if [ "$(cat "$CURRENT")" != "$n" ]; then
    before=$(served); policy "$n"; wait_served "$before" || { cat "$LOG" >&2; exit 1; }; sleep 0.5
  fi
  runs=""
  for r in 1 2 3; do
    before=$(served)
    if [ $((r % 2)) = 1 ]; then policy "$n" "" edit; else policy "$n"; fi
    wait_served "$before" || { cat "$LOG" >&2; exit 1; }
    runs="$runs $(grep "now serves" "$LOG" | tail -n 1 | sed -E 's/.*in place in ([0-9]+) ms.*/\1/')"
    sleep 0.3
  done
  m=$(med $runs)
  echo "policy edit of one grant among $n (watch's in-place ms, each run):$runs; median $m ms"
  curve="$curve${curve:+,}{\"grants\":$n,\"edit_ms\":[$(echo $runs | tr ' ' ',')],\"median_ms\":$m}"
done
peak=$(rss)
echo "watch peak RSS: $((peak / 1024)) MiB"
printf '{"grants":%s,"idle_seconds":%s,"idle_cpu_percent":%s,"reaction_ms":[%s],"reaction_median_ms":%s,"open_ms":[%s],"open_median_ms":%s,"mid_reaction_ms":[%s],"mid_reaction_median_ms":%s,"small_reaction_ms":[%s],"small_reaction_median_ms":%s,"peak_rss_kb":%s,"peak_rss_big_kb":%s,"edit_curve":[%s]}\n' \
  "$BIG" "$IDLE" "$idle" "$(echo $reactions | tr ' ' ',')" "$median" "$(echo $opens | tr ' ' ',')" "$open_median" "$(echo $mid | tr ' ' ',')" "$mid_median" \
  "$(echo $small | tr ' ' ',')" "$small_median" "$peak" "$peak_big" "$curve" > "$OUT/watch.json"
kill "$watch_pid"; wait "$watch_pid" 2>/dev/null || true; watch_pid=
grep -q "stopped" "$LOG" || { cat "$LOG"; echo "watch did not stop cleanly" >&2; exit 1; }
