#!/usr/bin/env bash
# One prepared scaling run: calibrate the host, then a bench sweep up to 8 emulated nodes.
# On a host with >= 16 CPUs, 8 nodes get 2 CPUs each (no oversubscription); on the 2-core VM
# the same sweep is oversubscribed and says how much wall-clock fidelity that costs.
#
#   bash scripts/scaling_run.sh results/scaling-<host>
set -euo pipefail
out=${1:?usage: scaling_run.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
$py -m numaemu topology 8 | head -3
$py -m numaemu calibrate --json "$out/calibrate.json"
$py -m numaemu bench --topology 2s-xeon,kunpeng920,epyc-nps4,8 --cache hot,cold --repeat 4 --duration 1.5 \
    --no-progress --json "$out/bench.json" --csv "$out/bench.csv" --plot "$out/bench.png"
