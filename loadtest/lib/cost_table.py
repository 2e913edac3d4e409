"""The table of a side-by-side cost run: each target's best round per scenario, with
req/s and server CPU per request next to the first target's.

Usage: cost_table.py JSONL TARGET[,TARGET...] SCENARIO[,SCENARIO...]
Prints Markdown table lines; fails if any round counted errors.
"""
import json
import sys

jsonl, targets, scenarios = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
runs = [json.loads(line) for line in open(jsonl) if line.strip()]
best = {}
for r in runs:
    if not r.get("ran") or r.get("errors"):
        sys.exit(f"{r['scenario']} against {r['target']} counted errors: {r.get('error_samples')}")
    key = (r["scenario"], r["target"])
    if key not in best or r["req_per_s"] > best[key]["req_per_s"]:
        best[key] = r
base = targets[0]
print(f"| scenario | target | req/s | vs {base} | server CPU µs/request | vs {base} | p99 ms |")
print("|---|---|---|---|---|---|---|")
for scenario in scenarios:
    base_run = best[(scenario, base)]
    base_cpu = base_run["server_cpu_s"] / base_run["ops"] * 1e6
    for t in targets:
        r = best[(scenario, t)]
        cpu = r["server_cpu_s"] / r["ops"] * 1e6
        print(
            f"| {scenario} | {t} | {r['req_per_s']:.0f} | {r['req_per_s'] / base_run['req_per_s']:.3f} "
            f"| {cpu:.1f} | {cpu / base_cpu:.3f} | {r['p99_ms']:.2f} |"
        )
