#!/usr/bin/env python3
"""One line per stress JSON: python scripts/stress_summary.py results/stress/*.json"""

import json
import sys

for path in sys.argv[1:]:
    with open(path) as f:
        d = json.load(f)
    extra = f", {d.get('module_loads', 0):,} module loads" if d["source"] in ("module", "mixed") else ""
    print(
        f"{d['source']:>11} {d['protocol']:>12} {d['arch']:>6} {d['policy']:>9} {d['duration_s']:>4g} s: "
        f"{d['executions_checked']:>11,} executions checked, {d['patches_applied']:>6,} patch calls, "
        f"{d['sites_patched']:>10,} sites patched, {d['int3_hits']:>7,} INT3 hits{extra}; "
        + (f"{1e3 * d['emulated_s']:8.2f} emulated ms at scale {d['timeline']['scale']:5.0f}, {d['violations_per_emulated_s']:g} violations per emulated s; "
           if d.get("timeline") else "(before the timeline) ")
        + (f"{d['migrations']:,} migrations, {d['new_then_old']:,} new-then-old; " if "migrations" in d else "")
        + f"violations {d['violations']}, replicas identical {d['replicas_identical']}"
    )
