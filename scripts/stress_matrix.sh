#!/usr/bin/env bash
# Long clean stress runs: every protocol with every source at once (--source mixed), on
# replicate and on single; one JSON per run under results/stress/, and a summary line each.
#   bash scripts/stress_matrix.sh [SECONDS]      (default 120 s per run)
set -u
secs=${1:-120}
cd "$(dirname "$0")/.."
for policy in replicate single; do
  for pa in "text_poke_bp x86_64" "stop_machine x86_64" "nosync arm64" "stop_machine arm64"; do
    set -- $pa
    out="results/stress/mixed-$1-$2-$policy.json"
    python -m numaemu stress --source mixed --protocol "$1" --arch "$2" --policy "$policy" --duration "$secs" --json "$out" > /dev/null
    rc=$?
    python - "$out" "$rc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['protocol']:>12} {d['arch']:>6} {d['policy']:>9}: exit {sys.argv[2]}, {d['executions_checked']:>11,} executions checked, "
      f"{d['patches_applied']:>6,} patch calls, {d['sites_patched']:>10,} sites patched, {d['int3_hits']:>6,} INT3 hits, "
      f"violations {d['violations']}, replicas identical {d['replicas_identical']}")
PY
  done
done
