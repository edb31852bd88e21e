#!/bin/sh
# Re-record numaemu's built-in workloads (numaemu/data/workloads/*.rec) on this machine's kernel.
#
#   sudo scripts/record_workloads.sh [SECONDS]     (default 3 s a workload, at 4,000 Hz)
#
# Needs root (kernel samples with perf_event_paranoid 2, and mount for the mount workload), perf
# (Debian: apt-get install linux-perf), a C compiler, and sqlite3 (installed here from Debian's
# package if missing). Each recording holds the command that made it and the kernel it ran on.
# The shipped ones were made on the dev VM: Linux 6.18.44 (x86-64, 2 vCPUs, no PMU: cpu-clock).
set -eu
cd "$(dirname "$0")/.."
secs=${1:-3}
out=numaemu/data/workloads
build=build/workloads
mkdir -p "$out" "$build"
cc -O2 -Wall -o "$build/microbench" scripts/workloads/microbench.c
py=${PYTHON:-python3}

for w in getpid fork fork1024 mmap mmap_lock open kill mount compute echo; do
    (cd "$build" && "$py" -m numaemu record -o "../../$out/$w.rec" -F 4000 -- ./microbench "$w" "$secs")
done

# db: SQLite with many small transactions (the sqlite3 shell of Debian's sqlite3 package), in WAL
# mode with synchronous=FULL, so that every commit writes the log and fsyncs it, on the ext4 of
# the build directory: reads by primary key, an update, an insert, a commit.
command -v sqlite3 >/dev/null || apt-get install -y sqlite3
"$py" - "$build/db.sql" <<'PY'
import random, sys
r = random.Random(0)
with open(sys.argv[1], "w") as f:
    f.write(".output /dev/null\nPRAGMA synchronous=FULL;\n")
    for i in range(200000):
        a, d = r.randrange(1, 100001), r.randrange(-500, 500)
        f.write(f"BEGIN;SELECT balance FROM accounts WHERE id={a};UPDATE accounts SET balance=balance+{d} WHERE id={a};"
                f"INSERT INTO history(account,delta,at) VALUES({a},{d},datetime('now'));COMMIT;\n")
PY
rm -f "$build"/db.sqlite*
(cd "$build" && sqlite3 db.sqlite "PRAGMA journal_mode=WAL; CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);
    CREATE TABLE history(id INTEGER PRIMARY KEY, account INTEGER, delta INTEGER, at TEXT);
    INSERT INTO accounts SELECT value, 1000, hex(randomblob(40)) FROM generate_series(1, 100000);" >/dev/null \
    && "$py" -m numaemu record -o "../../$out/db.rec" -F 4000 -- timeout -s INT "$secs" sqlite3 db.sqlite ".read db.sql")
ls -l "$out"
