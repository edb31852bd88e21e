#!/usr/bin/env bash
# Long clean stress runs of every protocol, on replicate and on single; one JSON per run under
# results/stress/, and a summary line each (append to results/stress/summary.txt yourself).
#   bash scripts/stress_matrix.sh [SECONDS] [SOURCES]
# SECONDS per run (default 120); SOURCES a space-separated list (default "mixed": every source at
# once), e.g. "static_keys ftrace module bpf livepatch" for one run per source.
set -u
secs=${1:-120}
sources=${2:-mixed}
cd "$(dirname "$0")/.."
for policy in replicate single; do
  for pa in "text_poke_bp x86_64" "stop_machine x86_64" "nosync arm64" "stop_machine arm64"; do
   for source in $sources; do
    set -- $pa
    out="results/stress/$source-$1-$2-$policy.json"
    python -m numaemu stress --source "$source" --protocol "$1" --arch "$2" --policy "$policy" --duration "$secs" --json "$out" > /dev/null
    rc=$?
    python - "$out" "$rc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['source']:>11} {d['protocol']:>12} {d['arch']:>6} {d['policy']:>9}: exit {sys.argv[2]}, {d['executions_checked']:>11,} executions checked, "
      f"{d['patches_applied']:>6,} patch calls, {d['sites_patched']:>10,} sites patched, {d['int3_hits']:>6,} INT3 hits, "
      f"violations {d['violations']}, replicas identical {d['replicas_identical']}")
PY
   done
  done
done
