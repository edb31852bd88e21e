"""How long ``numaemu stress --stop-at-first --inject-bug B`` takes to catch each planted bug, at
default settings, over several seeds; and that the same runs without the bug pass.

    python scripts/stress_catch_times.py [--seeds 5] [--duration 60] [--out results/catch-times.json]

For each bug (with the protocol and arch it belongs to, under --ifetch coherent, the default; the
bugs whose syncs guard only the pipeline again under until-sync) and seed: the wall seconds from the start
of the command to its exit (startup included), the emulated microseconds at which the first
violation was seen (the document's ``first_violation``), and its kind. A bug not caught within
``--duration`` is reported as such, with the same prominence. Then one clean run per protocol
without ``--stop-at-first`` (``--duration`` 10): its violations must be 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUGS = [
    ("early-master", "stop_machine", "x86_64"),
    ("early-master", "stop_machine", "arm64", "coherent", "--source", "kprobes"),
    ("descriptor-reuse", "text_poke_bp", "x86_64"),
    ("no-int3-fix", "text_poke_bp", "x86_64"),
    ("no-sync", "text_poke_bp", "x86_64"),
    ("no-sync", "stop_machine", "x86_64"),
    ("no-sync", "nosync", "arm64"),
    ("no-final-sync", "text_poke_bp", "x86_64"),
    ("no-final-sync", "nosync", "arm64"),
    ("key-race", "text_poke_bp", "x86_64"),
    ("late-replica", "text_poke_bp", "x86_64"),
    ("late-replica", "nosync", "arm64"),
    ("trampoline-no-rcu", "text_poke_bp", "x86_64"),
    ("trampoline-no-rcu", "nosync", "arm64"),
    ("module-unload-running", "text_poke_bp", "x86_64"),
    ("module-unload-running", "nosync", "arm64"),
    ("ipmodify-shared", "text_poke_bp", "x86_64"),
    ("ipmodify-shared", "nosync", "arm64"),
    ("ivau-local", "nosync", "arm64"),
    ("ivau-local", "stop_machine", "arm64"),
    # The bugs whose syncs guard only the pipeline, again with the widest windows (no real core).
    ("no-sync", "text_poke_bp", "x86_64", "until-sync"),
    ("no-sync", "stop_machine", "x86_64", "until-sync"),
    ("no-sync", "nosync", "arm64", "until-sync"),
    ("no-final-sync", "text_poke_bp", "x86_64", "until-sync"),
    ("no-final-sync", "nosync", "arm64", "until-sync"),
    ("no-final-sync", "text_poke_bp", "x86_64", "until-sync", "--timeline", "ipi_ns=20000"),
]
CLEAN = [("text_poke_bp", "x86_64", ()), ("text_poke_bp", "x86_64", ("--source", "kprobes", "--int3-fix", "extra-sync")),
         ("stop_machine", "x86_64", ()), ("nosync", "arm64", ()), ("stop_machine", "arm64", ()),
         ("text_poke_bp", "x86_64", ("--ifetch", "until-sync")), ("nosync", "arm64", ("--ifetch", "until-sync")),
         ("stop_machine", "arm64", ("--source", "kprobes")), ("nosync", "arm64", ("--source", "kprobes"))]


def stress(args: list[str], duration: float) -> tuple[float, int, dict]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "numaemu", "stress", *args, "--duration", str(duration), "--json", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=duration + 300)
        took = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(f"numaemu stress {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return took, proc.returncode, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "results" / "catch-times.json"))
    ap.add_argument("--bugs", default=None, help="comma-separated bug names (default: every one); 'none' for the clean runs alone")
    ap.add_argument("--arch", default=None, help="only the bugs of this arch")
    ap.add_argument("--clean", action="store_true", help="also the clean runs when --bugs is given")
    ap.add_argument("--widened", action="store_true", help="only the rows that set a --timeline window")
    ap.add_argument("--update", action="store_true", help="replace only the rows run now in an existing --out")
    a = ap.parse_args()
    rows = []
    for bug, protocol, arch, *more in [b for b in BUGS if (a.bugs is None or b[0] in a.bugs.split(",")) and a.arch in (None, b[2]) and ("--timeline" in b or not a.widened)]:
        ifetch, options = (more[0], more[1:]) if more else ("coherent", [])
        runs = []
        for seed in range(a.seeds):
            took, code, doc = stress(["--inject-bug", bug, "--protocol", protocol, "--arch", arch, "--ifetch", ifetch, *options, "--seed", str(seed), "--stop-at-first"], a.duration)
            first = doc.get("first_violation") or {}
            runs.append({"seed": seed, "caught": code == 1, "wall_s": round(took, 2), "first_emulated_us": first.get("emulated_us"),
                         "kind": first.get("kind") or (doc["violation_examples"][0]["kind"] if doc["violation_examples"] else None),
                         "scale": doc["timeline"]["scale"], "source": doc["source"]})
            verdict = f"caught in {took:5.1f} s ({runs[-1]['kind']}, at {first.get('emulated_us')} emulated us)" if code == 1 else f"NOT caught in {took:.1f} s"
            print(f"{bug:17s} {protocol:13s} {arch:7s} {ifetch:10s} {' '.join(options)} seed {seed}: {verdict}", flush=True)
        caught = [r["wall_s"] for r in runs if r["caught"]]
        rows.append({"bug": bug, "protocol": protocol, "arch": arch, "ifetch": ifetch, "options": list(options), "runs": runs, "caught": len(caught), "of": len(runs),
                     "median_wall_s": statistics.median(caught) if caught else None, "max_wall_s": max(caught) if caught else None})
    clean = []
    for protocol, arch, extra in CLEAN if a.bugs is None or a.clean else []:
        took, code, doc = stress(["--protocol", protocol, "--arch", arch, *extra], 10.0)
        clean.append({"protocol": protocol, "arch": arch, "options": list(extra), "exit": code, "violations": doc["violations"],
                      "executions": doc["executions_checked"], "emulated_s": doc["emulated_s"], "patches": doc["patches_applied"]})
        print(f"clean {protocol} {arch} {' '.join(extra)}: exit {code}, {doc['violations']} violations in {doc['executions_checked']:,} executions, "
              f"{1e3 * doc['emulated_s']:.1f} emulated ms", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    command = "python scripts/stress_catch_times.py " + " ".join(sys.argv[1:])
    doc = {"command": command, "commit": commit, "duration_s": a.duration, "seeds": a.seeds, "bugs": rows, "clean": clean}
    if a.update:  # this run's rows replace the same rows of the last one; the commands say which came from where
        old = json.loads(Path(a.out).read_text())
        key = lambda r: (r["bug"], r["protocol"], r["arch"], r["ifetch"], tuple(r.get("options", ())))  # noqa: E731
        new = {key(r): r for r in rows}
        for r in rows:
            r["commit"] = commit
        known = {(b[0], b[1], b[2], b[3] if len(b) > 3 else "coherent", tuple(b[4:])) for b in BUGS}  # rows no longer run go
        kept = [new.pop(key(r), r) for r in old["bugs"] if key(r) in known]
        doc = {**old, "bugs": kept + list(new.values()), "clean": clean or old["clean"],
               "updates": [*old.get("updates", []), {"command": command, "commit": commit}]}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
