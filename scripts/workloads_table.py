"""results/workloads.md: every built-in workload before (the hand-written table, synthetic-*) and
after (re-derived from its recording), on the embedded image and 2s-xeon.

    python scripts/workloads_table.py [--repeat 3] [--duration 0.5]

Static figures come from the workloads themselves (distinct lines and functions, lines a
request); hot and cold miss rates, the remote share under single and replicate's speedup come from
one ``numaemu bench`` sweep over all of them (written to results/workloads-bench.json), so every
figure of the table has the command that made it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from numaemu.model.image import LINE_SIZE, synthetic_image
from numaemu.model.workloads import RECORDED, SYNTHETIC, build_workload

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def static(name: str, image: Any) -> dict[str, Any]:
    w = build_workload(name, image)
    lines = np.unique(w.lines)
    text = image.section(".text")
    in_text = lines[lines * LINE_SIZE < text.offset + text.size]
    starts = np.unique((image.symbols.addresses - np.uint64(image.base)).astype(np.int64))
    funcs = np.unique(np.searchsorted(starts, in_text * LINE_SIZE, side="right") - 1)
    mean = float(np.average(w.lengths, weights=w.weights)) if w.weights is not None else float(w.lengths.mean())
    rep = w.report or {}
    return {"lines": len(lines), "functions": len(funcs), "lines_per_request": mean, "compute_ns": w.compute_ns, "user_accesses": w.user_accesses,
            "by_name": rep.get("mapped_by_name_share"), "recorded": rep.get("recorded", {})}


def bench(names: list[str], repeat: int, duration: float, out: Path, reuse: bool) -> dict[tuple[str, str], dict[str, Any]]:
    argv = [sys.executable, "-m", "numaemu", "bench", "--topology", "2s-xeon", "--workload", ",".join(names), "--cache", "hot,cold",
            "--policy", "single,replicate", "--repeat", str(repeat), "--duration", str(duration), "--json", str(out.relative_to(ROOT))]
    if not reuse:
        print("$ " + " ".join(["python", *argv[1:]]), file=sys.stderr)
        subprocess.run(argv, check=True, cwd=ROOT)
    doc = json.loads(out.read_text())
    got = {}
    for p in doc["points"]:
        # Every repetition's single run, summed: the text fetches that missed, and where from.
        singles = [r for rep in p["runs"] for r in rep if r["policy"] == "single"]
        misses = sum(r["fetches_local"] + r["fetches_remote"] for r in singles)
        remote = sum(r["fetches_remote"] for r in singles)
        got[(p["point"]["workload"], p["point"]["cache"])] = {
            "miss_rate": misses / max(1, misses + sum(r["cache_hits"] for r in singles)),
            "remote_single": remote / max(1, misses),
            "speedup": p["policies"]["replicate"]["speedup"],
            "model": p["policies"]["replicate"]["model_speedup"],
        }
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=0.5)
    ap.add_argument("--reuse", action="store_true", help="read results/workloads-bench.json instead of running the sweep again")
    args = ap.parse_args()
    image = synthetic_image()
    pairs = [(f"synthetic-{n}" if n in SYNTHETIC else None, n) for n in RECORDED]
    names = [n for pair in pairs for n in pair if n is not None]
    info = {n: static(n, image) for n in names}
    out = RESULTS / "workloads-bench.json"
    dyn = bench(names, args.repeat, args.duration, out, args.reuse)

    def cells(n: str | None) -> list[str]:
        if n is None:
            return ["-"] * 8
        s, hot, cold = info[n], dyn[(n, "hot")], dyn[(n, "cold")]
        sp = hot["speedup"]["median"] if isinstance(hot["speedup"], dict) else hot["speedup"]
        return [f"{s['lines']:,}", f"{s['functions']:,}", f"{s['lines_per_request']:.0f}", f"{hot['miss_rate']:.1%}", f"{cold['miss_rate']:.1%}",
                f"{hot['remote_single']:.0%}", f"{sp:.3f}", f"{hot['model']:.3f}"]

    head = ["lines", "functions", "lines/req", "miss hot", "miss cold", "remote (single)", "replicate speedup", "model"]
    rows = ["| workload | | " + " | ".join(head) + " | recording |", "|---|---|" + "---:|" * len(head) + "---|"]
    for before, after in pairs:
        rec = info[after]["recorded"]
        src = f"`{' '.join(rec.get('command', []))}` on {rec.get('release', '?')}; {info[after]['by_name']:.0%} of samples mapped by name"
        rows.append(f"| **{after}** | before | " + " | ".join(cells(before)) + (" | hand-written table |" if before else " | none: a new workload |"))
        rows.append("| | after | " + " | ".join(cells(after)) + f" | {src} |")
    cmd = f"python scripts/workloads_table.py --repeat {args.repeat} --duration {args.duration}"
    text = f"""# Built-in workloads: the hand-written tables (before) and the recordings (after)

Made by `{cmd}` (the numaemu bench sweep it runs is in `workloads-bench.json`, with its argv),
on the embedded image (Debian 6.12.118's function layout) and 2s-xeon (2 nodes, 1 host CPU each),
on the 2-core dev VM. *lines*: distinct 64-byte lines the workload's requests fetch (its text
footprint); *functions*: distinct functions they reach; *lines/req*: mean lines a request
fetches; *miss*: text fetches that miss the emulated cache under single, hot and cold; *remote*:
the share of those misses served by the other node under single; *replicate speedup*: the
wall-clock throughput of replicate over single, hot cache (median of the repetitions); *model*:
what the latency model predicts for it. The before rows are the `synthetic-*` workloads, the old
tables kept under that name; the after rows replay `numaemu/data/workloads/*.rec` (re-record them
with `sudo scripts/record_workloads.sh`).

{chr(10).join(rows)}
"""
    (RESULTS / "workloads.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
