"""Compare kernel-text replication on two machines, then flip static keys under load.

    python examples/compare_topologies.py                 # about 10 s on a 2-core host
    python examples/compare_topologies.py --duration 0.5  # quicker, noisier

For each topology the db workload runs under single, interleave and replicate (each policy in
fresh node processes); the table shows the measured speedup against single beside what the
latency model predicts. Then, on the first machine, the hottest static key is enabled and disabled
(static_key_enable: every use site NOP -> JMP, through text_poke_bp on x86) on every node's copy
while every node's readers execute those sites, and the checker says whether any node ever ran a
torn instruction, and whether every copy ended identical to the master.
"""

from __future__ import annotations

import argparse
import sys

import numaemu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", default="2s-xeon,kunpeng920", help="two (or more) topologies, comma-separated")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per policy, and of patching")
    ap.add_argument("--image-scale", type=float, default=1.0, help="shrink the embedded kernel image (for a quick try)")
    args = ap.parse_args(argv)

    print(f"{'topology':<12}{'nodes':>6}{'policy':>12}{'req/s':>10}{'remote':>8}{'speedup':>9}{'model':>7}")
    first = None
    for name in args.topologies.split(","):
        with numaemu.Emulation(topology=name, image_scale=args.image_scale) as emu:
            result = emu.run("db", duration=args.duration)
            for p in result.policies:
                print(f"{name:<12}{emu.topology.n_nodes:>6}{p.policy:>12}{p.throughput_rps:>10.0f}{100 * p.remote_fetch_share:>7.1f}%"
                      f"{p.speedup_vs_single or 0:>9.3f}{p.predicted_speedup_vs_single or 0:>7.3f}")
            first = first or name

    with numaemu.Emulation(topology=first, image_scale=args.image_scale) as emu:
        checked = emu.flip_static_key(0, duration=args.duration)
    d = checked.document
    print(f"\nstatic key flipped on {first} under load: {checked.patches_applied} patch calls, {d['sites_patched']} sites, "
          f"{checked.executions_checked:,} executions checked, {checked.violations} violations, "
          f"copies identical to the master: {'yes' if checked.replicas_identical else 'no'}; "
          f"patch latency median {d['patch_latency_us']['median']:.0f} us")
    return 0 if checked.ok else 1


if __name__ == "__main__":
    sys.exit(main())
