"""Summarises scripts/bench.sh results: medians, min-max and ratios to the baselines
measured in the same run, as Markdown tables; a PNG chart when matplotlib is present."""
import json
import statistics
import sys
from collections import defaultdict

res_path, out_dir = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(res_path) if l.strip()]

data = defaultdict(list)  # (case, metric) -> values
for r in rows:
    if r["kind"] != "data":
        continue
    if r["mode"] == "bulk":
        data[(r["case"], "bulk")].append(r["gbit_s"])
    else:
        data[(r["case"], r["mode"])].append(r["rate"])
        data[(r["case"], r["mode"] + "_p50")].append(r["p50_us"])
        data[(r["case"], r["mode"] + "_p99")].append(r["p99_us"])
cases = list(dict.fromkeys(r["case"] for r in rows if r["kind"] == "data"))
med = lambda k: statistics.median(data[k]) if data[k] else float("nan")
def rng(k, fmt=",.0f"):
    return f"{min(data[k]):{fmt}}–{max(data[k]):{fmt}}" if data[k] else "-"

out = ["## Data path", "", "Medians (min–max) of the rounds; ratios against rows of the same run.", ""]
out.append("| path | bulk Gbit/s (min–max) | RR tps (min–max) | RR p50/p99 µs | CRR conn/s (min–max) | CRR p50/p99 µs |")
out.append("|---|---|---|---|---|---|")
for c in cases:
    out.append(
        f"| {c} | {med((c,'bulk')):.2f} ({rng((c,'bulk'), '.1f')}) | {med((c,'rr')):,.0f} ({rng((c,'rr'))}) | {med((c,'rr_p50')):.0f}/{med((c,'rr_p99')):.0f} "
        f"| {med((c,'crr')):,.0f} ({rng((c,'crr'))}) | {med((c,'crr_p50')):.0f}/{med((c,'crr_p99')):.0f} |"
    )
one = "loopgate-1-grant"
def ratio(a, b, m):
    return med((a, m)) / med((b, m)) if (a, m) in data and (b, m) in data else float("nan")
out += ["", "| ratio | bulk | RR | CRR |", "|---|---|---|---|"]
pairs = [(one, "hand-written-nft"), (one, "veth-limit"), (one, "direct")] + [(c, one) for c in cases if c.startswith("loopgate-") and c != one] + [(one, "socat")]
for a, b in pairs:
    out.append(f"| {a} / {b} | {ratio(a,b,'bulk'):.2f} | {ratio(a,b,'rr'):.2f} | {ratio(a,b,'crr'):.2f} |")

ctl = defaultdict(lambda: defaultdict(list))
KEYS = ("apply_ms", "nft_f_ms", "audit_ms", "audit_deep_ms", "nft_list_ms", "revoke_ms", "nft_delete_ms", "apply_max_rss_kb")
for r in rows:
    if r["kind"] == "control":
        for k in KEYS:
            ctl[r["case"]][k].append(r.get(k, float("nan")))
cm = {c: {k: statistics.median(x) for k, x in v.items()} for c, v in ctl.items()}
out += ["", "## Control path", "", "Whole-process wall time, median of the rounds; each loopgate figure against its nft equivalent (the same ruleset, from `loopgate plan`).", ""]
out.append("| case | apply ms | nft -f + sysctl -w ms | ratio | audit ms | audit --deep ms | nft -j list ms | audit ratio (deep) | revoke ms | nft delete + sysctl -w ms | ratio | apply max RSS MiB |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for c, m in cm.items():
    out.append(
        f"| {c} | {m['apply_ms']:.0f} | {m['nft_f_ms']:.0f} | {m['apply_ms']/max(m['nft_f_ms'],1):.2f} "
        f"| {m['audit_ms']:.0f} | {m['audit_deep_ms']:.0f} | {m['nft_list_ms']:.0f} | {m['audit_ms']/max(m['nft_list_ms'],1):.2f} ({m['audit_deep_ms']/max(m['nft_list_ms'],1):.2f}) "
        f"| {m['revoke_ms']:.0f} | {m['nft_delete_ms']:.0f} | {m['revoke_ms']/max(m['nft_delete_ms'],1):.2f} | {m['apply_max_rss_kb']/1024:.1f} |"
    )

# The issue's targets, each against a baseline of this run.
targets = []
def target(what, value, limit, at_least):
    ok = value >= limit if at_least else value <= limit
    targets.append(f"| {what} | {value:.3f} | {'≥' if at_least else '≤'} {limit} | {'met' if ok else 'MISSED'} |")
grants_case = next((c for c in cases if c.endswith("-grants")), None)
for m, name in (("rr", "RR"), ("crr", "CRR")):
    target(f"1 grant / hand-written nft, {name}", ratio(one, "hand-written-nft", m), 0.97, True)
    target(f"1 grant / veth limit, {name}", ratio(one, "veth-limit", m), 0.85, True)
    target(f"10k CIDRs / 1 grant, {name}", ratio("loopgate-10k-cidrs", one, m), 0.95, True)
    if grants_case:
        target(f"{grants_case.removeprefix('loopgate-')} / 1 grant, {name}", ratio(grants_case, one, m), 0.95, True)
for m, name, limit in (("bulk", "bulk", 3), ("rr", "RR", 2), ("crr", "CRR", 7)):
    target(f"1 grant / socat, {name}", ratio(one, "socat", m), limit, True)
big = max((c for c in cm if c.endswith("-cidrs")), key=lambda c: int(c.split("-")[0]), default=None)
if big:
    target(f"apply {big} / nft -f", cm[big]["apply_ms"] / max(cm[big]["nft_f_ms"], 1), 0.6, False)
    target(f"audit {big} / nft -j list", cm[big]["audit_ms"] / max(cm[big]["nft_list_ms"], 1), 0.8, False)
    target(f"audit --deep {big} / nft -j list (no target; for reference)", cm[big]["audit_deep_ms"] / max(cm[big]["nft_list_ms"], 1), 0.8, False)
    target(f"apply {big} peak RSS, MiB", cm[big]["apply_max_rss_kb"] / 1024, 64, False)
if "expose-1-grant" in cm:
    e = cm["expose-1-grant"]
    target("expose 1 grant / (nft -f + sysctl -w)", e["apply_ms"] / max(e["nft_f_ms"], 1), 1.0, False)
parse = [r for r in rows if r["kind"] == "parse"]
if parse:
    p = parse[-1]
    target(f"policy parse, {p['yaml_bytes'] / 1e6:.1f} MB / serde_json of the same data", p["yaml_over_json"], 10, False)
    target("policy parse at 10x the size / at 1x (10 = linear)", p["yaml_growth"], 12, False)
state = [r for r in rows if r["kind"] == "state_io"]
if state:
    s = state[-1]
    out += ["", "## State file", "",
            f"Save and load of the state `watch` records for {s['grants']:,} grants (2 networks each) and one of {s['big']:,} networks, with their specs; median ms. "
            f"Version 2: {s['v2_bytes'] / 1e6:.2f} MB, every list inline. Version 3: {s['v3_bytes'] / 1e6:.2f} MB, and {s['v3_list_bytes'] / 1e6:.2f} MB of list files written once.", "",
            "| | save | load |", "|---|---|---|",
            f"| version 2 | {s['v2_save_ms']:.1f} | {s['v2_load_ms']:.1f} |",
            f"| version 3, a process new to the lists | {s['v3_save_fresh_ms']:.1f} ({s['v3_save_fresh_ms'] / s['v2_save_ms']:.2f}×) | {s['v3_load_fresh_ms']:.1f} ({s['v3_load_fresh_ms'] / s['v2_load_ms']:.2f}×) |",
            f"| version 3, lists known (watch; a transaction's second save) | {s['v3_save_known_ms']:.1f} ({s['v3_save_known_ms'] / s['v2_save_ms']:.2f}×) | {s['v3_load_known_ms']:.1f} ({s['v3_load_known_ms'] / s['v2_load_ms']:.2f}×) |"]
out += ["", "## Targets", "", "| target | this run | goal | |", "|---|---|---|---|"] + targets
open(f"{out_dir}/tables.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(matplotlib not installed: no chart)")
    sys.exit(0)
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
lg = [c for c in cases if c.startswith("loopgate-")]
for metric in ("rr", "crr"):
    a1.bar([f"{metric} {c.removeprefix('loopgate-')}" for c in lg], [med((c, metric)) for c in lg], label=metric)
a1.set_title("data path: RR tps and CRR conn/s by ruleset size")
a1.tick_params(axis="x", labelsize=8, labelrotation=30)
a1.legend()
sizes = [(int(c.split("-")[0]), c) for c in cm if c.endswith("-cidrs")]
sizes.sort()
a2.plot([n for n, _ in sizes], [cm[c]["apply_ms"] for _, c in sizes], "o-", label="loopgate apply")
a2.plot([n for n, _ in sizes], [cm[c]["nft_f_ms"] for _, c in sizes], "s-", label="nft -f + sysctl -w")
a2.plot([n for n, _ in sizes], [cm[c]["audit_ms"] for _, c in sizes], "^-", label="loopgate audit")
a2.plot([n for n, _ in sizes], [cm[c]["nft_list_ms"] for _, c in sizes], "v-", label="nft -j list")
a2.set_xscale("log"); a2.set_yscale("log"); a2.set_xlabel("allowed CIDRs"); a2.set_ylabel("ms"); a2.legend()
a2.set_title("control path: apply and audit time")
fig.tight_layout()
fig.savefig(f"{out_dir}/scaling.png", dpi=100)
print(f"chart: {out_dir}/scaling.png")
