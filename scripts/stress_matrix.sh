#!/usr/bin/env bash
# Long clean stress runs of every protocol, on replicate and on single; one JSON per run under
# results/stress/ (summarise them with scripts/stress_summary.py).
#   bash scripts/stress_matrix.sh [SECONDS] [SOURCES] [PROTOCOLS]
# SECONDS per run (default 120); SOURCES a space-separated list (default "mixed": every source at
# once), e.g. "static_keys ftrace module bpf livepatch kprobes" for one run per source.
# PYTHON: the interpreter that has numaemu installed (default: python on PATH).
set -u
secs=${1:-120}
sources=${2:-mixed}
protocols=${3:-"text_poke_bp:x86_64 stop_machine:x86_64 nosync:arm64 stop_machine:arm64"}
cd "$(dirname "$0")/.."
for policy in replicate single; do
  for pa in $protocols; do
    for source in $sources; do
      proto=${pa%%:*}
      arch=${pa##*:}
      out="results/stress/$source-$proto-$arch-$policy.json"
      "${PYTHON:-python}" -m numaemu stress --source "$source" --protocol "$proto" --arch "$arch" --policy "$policy" --duration "$secs" --json "$out" > /dev/null
      echo "$out: exit $?"
    done
  done
done
