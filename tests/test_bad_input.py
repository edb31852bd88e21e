"""Bad input, command by command: one line ``error: <parameter>: <rule>`` on stderr, exit code
2, no traceback, nothing started, nothing left in /dev/shm (README, "Errors").

Each case calls `main()` in-process. Anything that would start a run (node processes, the
time-scale calibration, calibrate's measurements) is replaced by a function that fails the test,
so a case that slipped past validation fails at once instead of running. ``{d}`` in an argument
is the directory of the files below (bad topologies, images, traces, results, experiments).
The fit checks (does the run fit in /dev/shm and in memory?) are tested at the end, on made-up
free-space figures, and in tests/test_fit.py.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import io
import json
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from numaemu.cli import main
from numaemu.host import fit
from numaemu.host.fit import free_space

from .conftest import numaemu
from .test_cli import mine, run_cli
from .test_kernelfile import EM_AARCH64, bzimage, compress, tiny_vmlinux

GIB = 1 << 30
# What an error may name: an option (from an experiment file, it says so), a positional argument
# by its metavar, the missing command, or numaemu itself (arguments it does not know).
PARAMETER = re.compile(r"(--[a-z][a-z0-9-]*( \(from .+\))?|COMMAND|A\.json|B\.json|BENCH\.json|FILE\.png|numaemu)")


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch):
    """Fail the test if the case gets as far as starting anything; plenty of room by default."""

    def started(*args, **kwargs):
        raise AssertionError("bad input got past validation: a run started")

    for target in ("numaemu.api.emulation.run_policies", "numaemu.api.emulation.run_stress", "numaemu.api.emulation.prepare_spec",
                   "numaemu.measure.sweep.run_experiment", "numaemu.measure.cluster.ClusterSession", "numaemu.measure.cluster_sweep.ClusterSweep"):
        monkeypatch.setattr(target, started)
    monkeypatch.setattr("numaemu.measure.calibrate.calibrate", started)
    monkeypatch.setattr("numaemu.api.bench.free_space", lambda: (64 * GIB, 64 * GIB))
    monkeypatch.setattr(fit, "free_space", lambda: (64 * GIB, 64 * GIB))
    yield
    assert not mine(), "a segment was left in /dev/shm"


def refused(capsys, argv: list[str], expect: str) -> str:
    """Run the CLI; check the shape of a refusal; return its rule."""
    code, _, err = run_cli(capsys, *argv)
    assert "Traceback" not in err
    assert code == 2, (code, err)
    assert err.startswith("error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"error: {expect}") or expect in err, err
    param = err.removeprefix("error: ").split(": ", 1)[0]
    assert PARAMETER.fullmatch(param), err  # it names an option, an argument, or numaemu itself
    return err.removeprefix("error: ").rstrip("\n")


# ------------------------------------------------------------------------------------------
# The files the cases read


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    files: dict[str, str | bytes] = {
        # topologies
        "bad.json": "not json",
        "empty.json": "",
        "blank.toml": "  \n",
        "list.json": "[1, 2]",
        "nodist.json": '{"name": "x"}',
        "emptyd.json": '{"distance": []}',
        "emptynodes.json": '{"distance": [[10, 21], [21, 10]], "nodes": []}',
        "threenodes.json": '{"distance": [[10, 21], [21, 10]], "nodes": [{}, {}, {}]}',
        "notsquare.json": '{"distance": [[10, 21], [21]]}',
        "wrongtype.toml": 'distance = "10"',
        "boolean.json": '{"distance": [[10, true], [21, 10]]}',
        "float.toml": "distance = [[10, 21.5], [21, 10]]",
        "local11.json": '{"distance": [[11, 21], [21, 10]]}',
        "remote10.json": '{"distance": [[10, 10], [10, 10]]}',
        "remote9.json": '{"distance": [[10, 9], [9, 10]]}',
        "remote256.json": '{"distance": [[10, 256], [256, 10]]}',
        "latsize.json": '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, 136]]}',
        "latnan.json": '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, NaN], [136, 85]]}',
        "latneg.json": '{"distance": [[10, 21], [21, 10]], "latency_ns": [[85, -1], [136, 85]]}',
        "unknown.json": '{"distance": [[10]], "distances": 1}',
        "nodekey.json": '{"distance": [[10]], "nodes": [{"memory_gb": 4}]}',
        "memstr.json": '{"distance": [[10]], "nodes": [{"memory_mb": "4G"}]}',
        "cpusbad.json": '{"distance": [[10]], "nodes": [{"cpus": "0-x"}]}',
        "cpushuge.json": '{"distance": [[10]], "nodes": [{"cpus": "0-99999999999"}]}',
        "hugeint.json": '{"distance": [[10, ' + "9" * 5000 + "], [21, 10]]}",
        "binary.toml": b"\xff\xfe\x00",
        "topology.txt": "distance = [[10]]",
        "nomem.json": '{"distance": [[10, 21], [21, 10]], "nodes": [{"memory_mb": 0}, {"memory_mb": 0}]}',
        "tinymem.toml": 'distance = [[10, 21], [21, 10]]\n[[nodes]]\nmemory_mb = 1\n[[nodes]]\nmemory_mb = 4096\n',
        "unreachable.json": '{"distance": [[10, 255], [255, 10]]}',
        # traces
        "trace-empty.txt": "",
        "trace-comments.txt": "# nothing but a comment\n\n",
        "trace-bad.txt": "0xffffffff81000000\nnot-an-address\n",
        "trace-outside.txt": "0x1000\n",
        "trace-negative.txt": "-5\n",
        "trace-long.txt": "9" * 5000 + "\n",
        "trace-binary.txt": b"\xff\xfe\x00\x81",
        "perf-truncated.txt": "python3 14295 12585.780136:     500000 cpu-clock: \n\tffffffff815ff3e1 set_pte_range+0xf1 ([kernel.kallsyms])\n\tffffffff815a",
        "perf-user-only.txt": "python3 14295 12585.780136:     500000 cpu-clock: \n\t           32a32 _nl_find_locale+0x1d2 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n",
        "rec-v2.rec": json.dumps({"format": "numaemu-recording", "version": 2}),
        # bench results
        "run.json": json.dumps({"command": "run", "results": []}),
        "stress.json": json.dumps({"command": "stress", "ok": True}),
        "schema0.json": json.dumps({"command": "bench", "bench_schema": 0, "points": []}),
        "noschema.json": json.dumps({"command": "bench", "points": []}),
        "nopoints.json": json.dumps({"command": "bench", "bench_schema": 1, "points": [], "experiment": {}}),
        "damaged.json": json.dumps({"command": "bench", "bench_schema": 1, "experiment": {}, "points": [{"point": {"topology": "2s-xeon"}}]}),
        "hugeint-result.json": '{"command": "bench", "x": ' + "9" * 5000 + "}",
        "text.json": "not json at all",
        "empty-result.json": "",
        "list-result.json": "[1, 2, 3]",
        # experiment files
        "exp-unknown.toml": "colour = 'red'\n",
        "exp-syntax.toml": "repeat = \n",
        "exp-empty.toml": "",
        "exp-bool.toml": "repeat = true\n",
        "exp-emptylist.toml": "repeat = []\n",
        "exp-table.toml": "topology = { a = 1 }\n",
        "exp-nested.toml": 'cache = ["hot", ["cold"]]\n',
        "exp-str.toml": 'repeat = "five"\n',
        "exp-float.toml": "repeat = 1.5\n",
        "exp-cache.toml": "cache = 5\n",
        "exp-nan.toml": "duration = nan\n",
        "exp-inf.toml": "duration = inf\n",
        "exp-both.toml": "duration = 1\nrequests = 10\n",
        "exp-delays.toml": 'delays = ["model", "none"]\n',
        "exp-ptstyle.toml": 'pt-style = "sparc"\n',
        "exp-replicas.toml": "replicas-every = 0\n",
        "exp-binary.toml": b"\xff\xfe",
        "exp-hugeint.toml": "seed = " + "9" * 5000 + "\n",
        "exp-tables.toml": "[bench]\nrepeat = 1\n[other]\nx = 1\n",
        # images
        "img-empty": b"",
        "img-text": b"just some text\n" * 100,
        "img-arm64": tiny_vmlinux(machine=EM_AARCH64).elf,
    }
    for name, content in files.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    elf = tiny_vmlinux().elf
    (root / "img-truncated").write_bytes(elf[: len(elf) // 2])
    bz = bzimage(compress("gzip", elf))
    (root / "img-truncated-bz").write_bytes(bz[: len(bz) // 2])
    (root / "img-ok").write_bytes(bz)
    for name in ("dir.json", "dir.toml", "dir", "dir.png"):
        (root / name).mkdir()
    return root


def check(capsys, d: Path, argv: list[str], expect: str) -> str:
    return refused(capsys, [a.replace("{d}", str(d)) for a in argv], expect.replace("{d}", str(d)))


def table(cases):
    return pytest.mark.parametrize(("argv", "expect"), cases, ids=[" ".join(a).replace("{d}/", "") for a, _ in cases])


# ------------------------------------------------------------------------------------------
# numaemu (no command), --help


def test_no_command_prints_the_commands_and_one_error_line(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2
    assert "COMMAND" in out and "topology" in out and "calibrate" in out  # the help, on stdout
    assert err == "error: COMMAND: give a command: topology, image, run, stress, bench, compare, plot, calibrate, record, check (numaemu COMMAND --help for its options)\n"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["run", "--help"], ["bench", "-h"], ["calibrate", "--help"]])
def test_help_exits_0_on_stdout(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 0 and out.startswith("usage: numaemu") and err == ""


def test_a_fresh_process_prints_one_line_and_no_traceback(tmp_path):
    proc = numaemu()
    assert proc.returncode == 2 and proc.stderr.startswith("error: COMMAND: give a command") and proc.stderr.count("\n") == 1
    proc = numaemu("run", "--duration", "nan")
    assert proc.returncode == 2 and proc.stderr == "error: --duration: must be a positive number, got 'nan'\n"


GLOBAL = [
    (["nosuchcommand"], "COMMAND: invalid choice: 'nosuchcommand'"),
    (["--bogus"], "numaemu: unrecognized arguments: --bogus"),
    (["run", "--nosuch-option"], "numaemu: unrecognized arguments: --nosuch-option"),
    (["run", "--duration"], "--duration: expected one argument"),
    (["compare", "one.json"], "B.json: is required; usage: numaemu compare [-h] [--json PATH] A.json B.json"),
    (["compare"], "A.json: is required; usage: numaemu compare"),
    (["plot"], "BENCH.json: is required; usage: numaemu plot [-h] BENCH.json FILE.png"),
    (["plot", "x.json"], "FILE.png: is required"),
    (["run", "--d", "1"], "--d: is ambiguous: it could be --duration, --delays"),
]


@table(GLOBAL)
def test_global(capsys, d, argv, expect):
    check(capsys, d, argv, expect)


# ------------------------------------------------------------------------------------------
# Topologies: presets, specs, files; --host-cpus; --local-ns. Each also through run, stress
# and bench, which read them the same way.


TOPOLOGY = [
    (["nosuch"], "--topology: unknown preset, spec or file 'nosuch'"),
    ([""], "--topology: unknown preset, spec or file ''"),
    (["2S-XEON"], "--topology: unknown preset, spec or file '2S-XEON'"),
    (["0"], "--topology: spec '0': 0 nodes; need 1..64"),
    (["65"], "--topology: spec '65': 65 nodes; need 1..64"),
    (["9" * 5000], "--topology: spec '999"),
    (["2:10,21,21"], "--topology: spec '2:10,21,21': 2 nodes need 4 distances"),
    (["2:10,21,21,10,5"], "--topology: spec '2:10,21,21,10,5': 2 nodes need 4 distances (2 x 2, row-major), got 5"),
    (["2:"], "--topology: spec '2:': 2 nodes need 4 distances"),
    (["2:10,,21,10"], "--topology: spec '2:10,,21,10': '' is not a distance"),
    (["2:10,x,21,10"], "--topology: spec '2:10,x,21,10': 'x' is not a distance"),
    (["2:10,-21,21,10"], "--topology: spec '2:10,-21,21,10': '-21' is not a distance"),
    (["2:10," + "9" * 5000 + ",21,10"], "is not a distance"),
    (["2:11,21,21,10"], "--topology: distance[0][0] is 11; the diagonal (local distance) must be 10"),
    (["2:10,10,10,10"], "--topology: distance[0][1] is 10; remote distances must be 11..254 or 255"),
    (["2:10,9,9,10"], "--topology: distance[0][1] is 9; remote distances must be 11..254 or 255"),
    (["2:10,256,256,10"], "--topology: distance[0][1] is 256; remote distances must be 11..254 or 255"),
    (["{d}/bad.json"], "--topology: '{d}/bad.json' is not valid JSON"),
    (["{d}/empty.json"], "--topology: '{d}/empty.json' is empty"),
    (["{d}/blank.toml"], "--topology: '{d}/blank.toml' is empty"),
    (["{d}/list.json"], "--topology: '{d}/list.json': the top level must be a table/object, not list"),
    (["{d}/nodist.json"], "--topology: '{d}/nodist.json': distance is missing"),
    (["{d}/emptyd.json"], "--topology: '{d}/emptyd.json': distance is empty"),
    (["{d}/emptynodes.json"], "--topology: '{d}/emptynodes.json': nodes has 0 entries but distance is 2 x 2"),
    (["{d}/threenodes.json"], "--topology: '{d}/threenodes.json': nodes has 3 entries but distance is 2 x 2"),
    (["{d}/notsquare.json"], "--topology: '{d}/notsquare.json': distance[1] has 1 entries; expected 2"),
    (["{d}/wrongtype.toml"], "--topology: '{d}/wrongtype.toml': distance must be a list, not str"),
    (["{d}/boolean.json"], "--topology: '{d}/boolean.json': distance[0][1] is True (bool); distances must be integers"),
    (["{d}/float.toml"], "--topology: '{d}/float.toml': distance[0][1] is 21.5 (float); distances must be integers"),
    (["{d}/local11.json"], "--topology: '{d}/local11.json': distance[0][0] is 11; the diagonal (local distance) must be 10"),
    (["{d}/remote10.json"], "--topology: '{d}/remote10.json': distance[0][1] is 10; remote distances must be 11..254"),
    (["{d}/remote9.json"], "--topology: '{d}/remote9.json': distance[0][1] is 9"),
    (["{d}/remote256.json"], "--topology: '{d}/remote256.json': distance[0][1] is 256"),
    (["{d}/latsize.json"], "--topology: '{d}/latsize.json': latency_ns has 1 rows; expected 2"),
    (["{d}/latnan.json"], "--topology: '{d}/latnan.json': latency_ns[0][1] is nan; latencies must be positive numbers"),
    (["{d}/latneg.json"], "--topology: '{d}/latneg.json': latency_ns[0][1] is -1; latencies must be positive numbers"),
    (["{d}/unknown.json"], "--topology: '{d}/unknown.json': unknown key 'distances'"),
    (["{d}/nodekey.json"], "--topology: '{d}/nodekey.json': nodes[0]: unknown key 'memory_gb'"),
    (["{d}/memstr.json"], "--topology: '{d}/memstr.json': nodes[0]: memory_mb is '4G'; need an integer >= 0"),
    (["{d}/cpusbad.json"], "--topology: '{d}/cpusbad.json': nodes[0]: cpus: '0-x' is not a CPU number or range"),
    (["{d}/cpushuge.json"], "--topology: '{d}/cpushuge.json': nodes[0]: cpus: '0-99999999999': CPU numbers go up to 8191"),
    (["{d}/hugeint.json"], "--topology: '{d}/hugeint.json' holds a number too long to read"),
    (["{d}/binary.toml"], "--topology: '{d}/binary.toml' is not UTF-8 text"),
    (["{d}/topology.txt"], "--topology: '{d}/topology.txt': a topology file must end in .json or .toml"),
    (["{d}/dir.json"], "--topology: cannot read '{d}/dir.json': Is a directory"),
    (["{d}/dir.toml"], "--topology: cannot read '{d}/dir.toml': Is a directory"),
    (["{d}/missing.json"], "--topology: cannot read '{d}/missing.json': No such file or directory"),
    (["{d}"], "--topology: unknown preset, spec or file '{d}'"),
    (["host", "--sysfs-root", "{d}/missing"], "--topology: cannot read {d}/missing/devices/system/node/online"),
]
HOST_CPUS = [
    ("x", "--host-cpus: node 0: 'x' is not a CPU number or range such as 0-3"),
    ("0-", "--host-cpus: node 0: '0-' is not a CPU number or range"),
    ("1-0;0", "--host-cpus: node 0: '1-0' is not a CPU range: need 0 <= first <= last"),
    ("0;;1", "--host-cpus: node 1: empty CPU set; every node needs a host CPU"),
    ("0;", "--host-cpus: node 1: empty CPU set"),
    (";", "--host-cpus: node 0: empty CPU set"),
    ("", "--host-cpus: is empty; give one cpulist per node separated by ';'"),
    ("0,,1;1", "--host-cpus: node 0: '' is not a CPU number or range"),
    ("0;1;0", "--host-cpus: got 3 CPU sets for 2 nodes"),
    ("0", "--host-cpus: got 1 CPU sets for 2 nodes"),
    ("4000;0", "--host-cpus: node 0: host CPU 4000 does not exist or is not available to this process"),
    ("9999;0", "--host-cpus: node 0: '9999': CPU numbers go up to 8191"),
    ("0-99999999999;1", "--host-cpus: node 0: '0-99999999999': CPU numbers go up to 8191"),
    ("9" * 40 + ";0", "--host-cpus: node 0: '" + "9" * 40 + "': CPU numbers go up to 8191"),
    ("0.5;1", "--host-cpus: node 0: '0.5' is not a CPU number or range"),
]
LOCAL_NS = [
    ("0", "--local-ns: must be a positive number, got '0'"),
    ("-5", "--local-ns"),
    ("nan", "--local-ns: must be a positive number, got 'nan'"),
    ("inf", "--local-ns: must be a positive number, got 'inf'"),
    ("1e400", "--local-ns: must be a positive number, got '1e400'"),
    ("1e300", "--local-ns: must be at most 100000 ns, got '1e300'"),
    ("fast", "--local-ns: 'fast' is not a number"),
]


@table(TOPOLOGY)
def test_topology(capsys, d, argv, expect):
    check(capsys, d, ["topology", *argv], expect)


@pytest.mark.parametrize("command", ["run", "stress", "bench"])
@pytest.mark.parametrize(("topo", "expect"), [(a[0], e) for a, e in TOPOLOGY if len(a) == 1 and a[0] not in ("", "9" * 5000)][::3])
def test_topology_through_run_stress_bench(capsys, d, command, topo, expect):
    check(capsys, d, [command, "--topology", topo], expect)


@pytest.mark.parametrize(("text", "expect"), HOST_CPUS, ids=[t or "empty" for t, _ in HOST_CPUS])
@pytest.mark.parametrize("command", ["topology", "run", "stress", "bench"])
def test_host_cpus(capsys, d, command, text, expect):
    check(capsys, d, [command, "--host-cpus", text], expect)


@pytest.mark.parametrize(("text", "expect"), LOCAL_NS)
@pytest.mark.parametrize("command", ["topology", "run", "stress", "bench"])
def test_local_ns(capsys, d, command, text, expect):
    check(capsys, d, [command, "--local-ns", text], expect)


def test_unreadable_topology_file(capsys, d, monkeypatch):
    # chmod 000 does not stop root, so refuse the read as the kernel would.
    target = str(d / "unreadable.json")
    Path(target).write_text('{"distance": [[10]]}')
    real = io.open

    def deny(file, *args, **kwargs):
        if str(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", deny)
    monkeypatch.setattr(builtins, "open", deny)
    for command in ("topology", "run"):
        check(capsys, d, [command] + (["--topology"] if command == "run" else []) + [target], f"--topology: cannot read '{target}': Permission denied")


# ------------------------------------------------------------------------------------------
# Images: `numaemu image`, and --image of run, stress and bench


IMAGE = [
    (["{d}/missing"], "--image: '{d}/missing': no such file"),
    (["{d}/img-empty"], "--image: '{d}/img-empty' is empty"),
    (["{d}/img-text"], "--image: '{d}/img-text' is not a kernel image: not an ELF vmlinux, not a bzImage"),
    (["{d}/img-truncated"], "--image: '{d}/img-truncated' is truncated"),
    (["{d}/img-truncated-bz"], "--image: '{d}/img-truncated-bz' is truncated"),
    (["{d}/img-arm64"], "--image: '{d}/img-arm64' is an arm64 (AArch64) vmlinux"),
    (["{d}/dir"], "--image: '{d}/dir' is a directory; give a kernel image file"),
    (["{d}/img-ok", "--image", "{d}/img-text"], "--image: two images given"),
    (["{d}/img-ok", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
    (["--image-scale", "0"], "--image-scale: must be a positive number, got '0'"),
    (["--image-scale", "2"], "--image-scale: must be in [0.01, 1], got '2'"),
    (["--image-scale", "0.001"], "--image-scale: must be in [0.01, 1], got '0.001'"),
    (["--image-scale", "5e-324"], "--image-scale: must be in [0.01, 1]"),
    (["--image-scale", "nan"], "--image-scale: must be a positive number, got 'nan'"),
    (["--image-scale", "inf"], "--image-scale: must be a positive number, got 'inf'"),
    (["--image-scale", "half"], "--image-scale: 'half' is not a number"),
]


@table(IMAGE)
def test_image(capsys, d, argv, expect):
    check(capsys, d, ["image", *argv], expect)


@pytest.mark.parametrize("command", ["run", "stress", "bench"])
@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--image", "{d}/missing"], "--image: '{d}/missing': no such file"),
        (["--image", "{d}/img-empty"], "--image: '{d}/img-empty' is empty"),
        (["--image", "{d}/img-truncated"], "--image: '{d}/img-truncated' is truncated"),
        (["--image", "{d}/img-text"], "--image: '{d}/img-text' is not a kernel image"),
        (["--image", "{d}/dir"], "--image: '{d}/dir' is a directory"),
        (["--image", ""], "--image: is empty"),
        (["--image", "{d}/img-ok", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
        (["--image-scale", "0.005"], "--image-scale: must be in [0.01, 1], got '0.005'"),
        (["--image-scale", "nan"], "--image-scale: must be a positive number, got 'nan'"),
    ],
    ids=lambda v: " ".join(v).replace("{d}/", "") if isinstance(v, list) else None,
)
def test_image_of_run_stress_bench(capsys, d, command, argv, expect):
    check(capsys, d, [command, *argv], expect)


# ------------------------------------------------------------------------------------------
# numaemu run


RUN = [
    # workloads and traces
    (["--workload", "nosuch"], "--workload: unknown workload 'nosuch'"),
    (["--workload", ""], "--workload: unknown workload ''"),
    (["--workload", "db,getpid"], "--workload: unknown workload 'db,getpid'"),
    (["--workload", "trace"], "--trace: the trace workload needs --trace FILE"),
    (["--workload", "db", "--trace", "{d}/trace-bad.txt"], "--trace: --trace is only for --workload trace, not db"),
    (["--workload", "trace", "--trace", "{d}/missing.txt"], "--trace: cannot read '{d}/missing.txt'"),
    (["--workload", "trace", "--trace", "{d}/dir"], "--trace: cannot read '{d}/dir': Is a directory"),
    (["--workload", "trace", "--trace", ""], "--trace: is empty; give a file path"),
    (["--workload", "trace", "--trace", "{d}/trace-empty.txt"], "--trace: {d}/trace-empty.txt: no addresses in the file"),
    (["--workload", "trace", "--trace", "{d}/trace-comments.txt"], "--trace: {d}/trace-comments.txt: no addresses in the file"),
    (["--workload", "trace", "--trace", "{d}/trace-bad.txt"], "--trace: {d}/trace-bad.txt:2: 'not-an-address' is not an address"),
    (["--workload", "trace", "--trace", "{d}/trace-negative.txt"], "--trace: {d}/trace-negative.txt:1: '-5' is not an address"),
    (["--workload", "trace", "--trace", "{d}/trace-outside.txt"], "--trace: {d}/trace-outside.txt:1: address 0x1000 is outside the image"),
    (["--workload", "trace", "--trace", "{d}/trace-long.txt"], "--trace: {d}/trace-long.txt:1: '999999999999999999999999...' is not an address: longer than 64 bits"),
    (["--workload", "trace", "--trace", "{d}/trace-binary.txt"], "--trace: cannot read '{d}/trace-binary.txt': 'utf-8' codec can't decode"),
    (["--trace", "{d}/perf-truncated.txt"], "--trace: {d}/perf-truncated.txt:3: 'ffffffff815a' is neither a perf script sample header nor a frame"),
    (["--trace", "{d}/perf-user-only.txt"], "--trace: {d}/perf-user-only.txt: none of its 1 samples is in the kernel"),
    (["--trace", "{d}/rec-v2.rec"], "--trace: {d}/rec-v2.rec: recording version 2; this numaemu reads version 1"),
    # policies and the rest of the choices
    (["--policy", "single,bogus"], "--policy: 'bogus' is not one of single, interleave, replicate"),
    (["--policy", "SINGLE"], "--policy: 'SINGLE' is not one of single, interleave, replicate"),
    (["--policy", "single,single"], "--policy: 'single,single' names a policy twice"),
    (["--policy", ","], "--policy: give at least one policy"),
    (["--policy", ""], "--policy: give at least one policy"),
    (["--replicate", "data"], "--replicate: 'data' is not one of text, text+rodata"),
    (["--replicate", ""], "--replicate: '' is not one of text, text+rodata"),
    (["--cache", "warm"], "--cache: 'warm' is not one of hot, cold"),
    (["--user-data", "remote"], "--user-data: 'remote' is not one of local, interleave"),
    (["--start-method", "thread"], "--start-method: 'thread' is not one of fork, spawn, forkserver"),
    (["--start-method", ""], "--start-method: '' is not one of fork, spawn, forkserver"),
    (["--delays", "fast"], "--delays: 'fast' is not one of model, none"),
    (["--pt-style", "riscv"], "--pt-style: 'riscv' is not one of none, arm64, x86"),
    # durations and counts
    (["--duration", "0"], "--duration: must be a positive number, got '0'"),
    (["--duration", "-1"], "--duration: must be a positive number, got '-1'"),
    (["--duration", "nan"], "--duration: must be a positive number, got 'nan'"),
    (["--duration", "inf"], "--duration: must be a positive number, got 'inf'"),
    (["--duration", "1e400"], "--duration: must be a positive number, got '1e400'"),
    (["--duration", "1e300"], "--duration: must be at most 86400 s, got '1e300'"),
    (["--duration", "1e-300"], "--duration: must be at least 0.01 s, got '1e-300'"),
    (["--duration", "two"], "--duration: 'two' is not a number"),
    (["--requests", "0"], "--requests: must be a positive integer, got '0'"),
    (["--requests", "-5"], "--requests: must be a positive integer, got '-5'"),
    (["--requests", "1.5"], "--requests: '1.5' is not an integer"),
    (["--requests", "1e3"], "--requests: '1e3' is not an integer"),
    (["--requests", "nan"], "--requests: 'nan' is not an integer"),
    (["--requests", "9" * 30], "--requests: must be at most 1000000000, got '999"),
    (["--migrate-rate", "2"], "--migrate-rate: must be a probability per request in 0..1, got '2'"),
    (["--migrate-rate", "-0.1"], "--migrate-rate: must be a probability per request in 0..1"),
    (["--migrate-rate", "nan"], "--migrate-rate: must be a probability per request in 0..1, got 'nan'"),
    (["--migrate-rate", "inf"], "--migrate-rate: must be a probability per request in 0..1, got 'inf'"),
    (["--migrate-rate", "often"], "--migrate-rate: 'often' is not a number"),
    (["--seed", "-1"], "--seed: must be in 0..4294967295, got '-1'"),
    (["--seed", "4294967296"], "--seed: must be in 0..4294967295, got '4294967296'"),
    (["--seed", "1.5"], "--seed: '1.5' is not an integer"),
    (["--seed", "9" * 5000], "--seed: '999"),
    (["--time-scale", "0"], "--time-scale: must be a positive number, got '0'"),
    (["--time-scale", "nan"], "--time-scale: must be a positive number, got 'nan'"),
    (["--time-scale", "inf"], "--time-scale: must be a positive number, got 'inf'"),
    (["--time-scale", "1e300"], "--time-scale: must be at most 10000, got '1e300'"),
    (["--replicas-every", "0"], "--replicas-every: must be a positive integer, got '0'"),
    (["--replicas-every", "two"], "--replicas-every: 'two' is not an integer"),
    (["--replicas-every", "9" * 30], "--replicas-every: must be at most 64, numaemu's most nodes"),
    (["--replicas-every", "3"], "--replicas-every: 3 is more than the 2 nodes of 2s-xeon"),
    (["--topology", "kunpeng920", "--replicas-every", "5"], "--replicas-every: 5 is more than the 4 nodes of kunpeng920"),
    # output paths
    (["--json", "{d}/missing/x.json"], "--json: '{d}/missing/x.json': directory '{d}/missing' does not exist"),
    (["--json", "{d}/img-ok/x.json"], "--json: '{d}/img-ok/x.json': directory '{d}/img-ok' is not a directory"),
    (["--json", "{d}/dir"], "--json: '{d}/dir' is a directory; give a file path"),
    (["--json", "/"], "--json: '/' is a directory; give a file path"),
    (["--json", ""], "--json: is empty; give a file path"),
    (["--json", "/proc/numaemu-x.json"], "--json: '/proc/numaemu-x.json' is not writable"),
    # incompatible pairs
    (["--duration", "1", "--requests", "5"], "--requests: not allowed with argument --duration"),
    (["--requests", "5", "--duration", "1"], "--duration: not allowed with argument --requests"),
    (["--image", "{d}/img-ok", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
    (["--kaslr"], "--kaslr: needs --pt-style x86"),
    (["--kaslr", "--pt-style", "arm64"], "--kaslr: not with --pt-style arm64: King's series disables KASLR"),
    (["--time-scale", "2", "--delays", "none"], "--time-scale: is for --delays model; with --delays none nothing is paced"),
    # machines a run cannot use
    (["--topology", "{d}/nomem.json"], "--topology: {d}/nomem.json: no node has memory; at least one must hold the image"),
    (["--topology", "{d}/tinymem.toml"], "--topology: node 0 of {d}/tinymem.toml has 1.0 MiB of memory (1,048,576 bytes), but under single it holds"),
    (["--topology", "{d}/tinymem.toml", "--policy", "interleave"], "--topology: node 0 of {d}/tinymem.toml has 1.0 MiB of memory"),
    (["--topology", "{d}/unreachable.json"], "--policy: single: node 1 cannot reach node 0, whose memory backs its kernel image (distance 255 = unreachable)"),
    (["--topology", "{d}/unreachable.json", "--policy", "interleave"], "--policy: interleave: node 0 cannot reach node 1"),
    # faults: killing at random is stress's; run only recovers
    (["--kill-workers", "1"], "numaemu: unrecognized arguments: --kill-workers 1"),
    (["--recover=1"], "--recover: ignored explicit argument '1'"),
]


@table(RUN)
def test_run(capsys, d, argv, expect):
    check(capsys, d, ["run", *argv], expect)


def test_read_only_output(capsys, d, monkeypatch):
    # A read-only file system refuses the file even to root, whom os.access lets through.
    real = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(d / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args)

    (d / "ro").mkdir(exist_ok=True)
    monkeypatch.setattr(os, "open", read_only)
    cases = [["run", "--json"], ["stress", "--json"], ["calibrate", "--json"], ["bench", "--json"], ["bench", "--csv"]]
    if importlib.util.find_spec("matplotlib") is not None:  # else --plot is refused for that first
        cases.append(["bench", "--plot"])
    for argv in cases:
        check(capsys, d, [*argv, "{d}/ro/out"], f"{argv[-1]}: '{{d}}/ro/out' is not writable: Read-only file system")


def test_default_output_must_be_writable(capsys, d, monkeypatch, tmp_path):
    # Without --json the JSON goes to results/ under the working directory.
    (tmp_path / "results").write_text("a file where the directory should be")
    monkeypatch.chdir(tmp_path)
    check(capsys, d, ["run"], "--json: the default 'results/run-")


# ------------------------------------------------------------------------------------------
# numaemu stress


STRESS = [
    (["--protocol", "bogus"], "--protocol: 'bogus' is not one of stop_machine, text_poke_bp, nosync"),
    (["--protocol", ""], "--protocol: '' is not one of stop_machine, text_poke_bp, nosync"),
    (["--protocol", "nosync"], "--protocol: nosync (single aligned 4-byte writes) is only for the arm64 image"),
    (["--protocol", "text_poke_bp", "--arch", "arm64"], "--protocol: text_poke_bp is the x86 INT3 protocol"),
    (["--arch", "riscv"], "--arch: 'riscv' is not one of x86_64, arm64"),
    (["--arch", ""], "--arch: '' is not one of x86_64, arm64"),
    (["--arch", "arm64", "--image", "{d}/img-ok"], "--arch: arm64 does not match --image"),
    (["--source", "uprobes"], "--source: 'uprobes' is not one of static_keys, ftrace, module, bpf, livepatch, kprobes, shared, mixed"),
    (["--protocol", "examples/protocol_king_nosync.toml"], "--protocol: protocol 'nosync, King's replica order' patches the arm64 image, and this image is x86_64"),
    (["--protocol", "{d}/none.toml"], "--protocol: cannot read"),
    (["--protocol", "examples/protocol_text_poke_bp.toml", "--inject-bug", "no-sync"], "--inject-bug: no-sync is planted in the kernel's own protocols"),
    (["--int3-fix", "rcu"], "--int3-fix: 'rcu' is not one of refcount, extra-sync"),
    (["--ifetch", "snoop"], "--ifetch: 'snoop' is not one of coherent, until-sync"),
    (["--timeline", "foo=3"], "--timeline: 'foo' is not one of site_ns"),
    (["--timeline", "prefetch_ns"], "--timeline: 'prefetch_ns' is not NAME=NS"),
    (["--timeline", "site_ns=0"], "--timeline: site_ns must be > 0, got 0.0"),
    (["--inject-bug", "ivau-local"], "--inject-bug: ivau-local is an arm64 bug"),
    (["--inject-bug", "ivau-local", "--arch", "arm64", "--policy", "single"], "--inject-bug: ivau-local is a bug of replicas: use --policy replicate, not single"),
    (["--inject-bug", "descriptor-reuse", "--int3-fix", "extra-sync"], "--inject-bug: descriptor-reuse breaks the refcount fix: use --int3-fix refcount"),
    (["--inject-bug", "trampoline-no-rcu", "--source", "ftrace"], "--inject-bug: trampoline-no-rcu is a bug of BPF trampolines: use --source bpf or mixed"),
    (["--inject-bug", "module-unload-running", "--source", "bpf"], "--inject-bug: module-unload-running is a bug of module unload: use --source module or mixed"),
    (["--inject-bug", "ipmodify-shared", "--source", "ftrace"], "--inject-bug: ipmodify-shared is a bug of functions shared by ftrace users: use --source shared or mixed"),
    (["--inject-bug", "late-replica", "--policy", "single"], "--inject-bug: late-replica is a bug of replicas: use --policy replicate"),
    (["--inject-bug", "no-int3-fix", "--protocol", "stop_machine"], "--inject-bug: no-int3-fix is a bug of text_poke_bp, not of stop_machine"),
    (["--source", ""], "--source: '' is not one of"),
    (["--policy", "mirror"], "--policy: 'mirror' is not one of single, interleave, replicate"),
    (["--policy", "single,replicate"], "--policy: 'single,replicate' is not one of"),
    (["--inject-bug", "typo"], "--inject-bug: 'typo' is not one of early-master"),
    (["--inject-bug", ""], "--inject-bug: '' is not one of"),
    (["--inject-bug", "early-master"], "--inject-bug: early-master is a bug of stop_machine, not of text_poke_bp"),
    (["--inject-bug", "descriptor-reuse", "--protocol", "stop_machine"], "--inject-bug: descriptor-reuse is a bug of text_poke_bp, not of stop_machine"),
    (["--inject-bug", "no-final-sync", "--protocol", "stop_machine"], "--inject-bug: no-final-sync is a bug of text_poke_bp and nosync"),
    (["--inject-bug", "key-race", "--source", "ftrace"], "--inject-bug: key-race is a static-key bug: use --source static_keys or mixed"),
    (["--arch", "arm64", "--inject-bug", "early-master"], "--inject-bug: early-master is a bug of stop_machine, not of nosync"),
    (["--rate", "0"], "--rate: must be a positive number, got '0'"),
    (["--rate", "-3"], "--rate: must be a positive number"),
    (["--rate", "nan"], "--rate: must be a positive number, got 'nan'"),
    (["--rate", "inf"], "--rate: must be a positive number, got 'inf'"),
    (["--rate", "1e300"], "--rate: must be at most 1e+06 ops/s, got '1e300'"),
    (["--rate", "1e-300"], "--rate: must be at least 0.001 ops/s, got '1e-300'"),
    (["--duration", "0"], "--duration: must be a positive number, got '0'"),
    (["--duration", "-3"], "--duration: must be a positive number"),
    (["--duration", "nan"], "--duration: must be a positive number, got 'nan'"),
    (["--duration", "1e300"], "--duration: must be at most 86400 s"),
    (["--seed", "x"], "--seed: 'x' is not an integer"),
    (["--seed", "-1"], "--seed: must be in 0..4294967295"),
    (["--start-method", "thread"], "--start-method: 'thread' is not one of fork, spawn, forkserver"),
    (["--start-method", ""], "--start-method: '' is not one of fork, spawn, forkserver"),
    (["--replicas-every", "-1"], "--replicas-every: must be a positive integer, got '-1'"),
    (["--replicas-every", "99"], "--replicas-every: must be at most 64"),
    (["--replicas-every", "3"], "--replicas-every: 3 is more than the 2 nodes of 2s-xeon"),
    (["--pt-style", "arm64", "--kaslr"], "--kaslr: not with --pt-style arm64"),
    (["--pt-style", "sparc"], "--pt-style: 'sparc' is not one of none, arm64, x86"),
    (["--json", "{d}/missing/s.json"], "--json: '{d}/missing/s.json': directory '{d}/missing' does not exist"),
    (["--json", "{d}/dir"], "--json: '{d}/dir' is a directory"),
    (["--json", "/proc/numaemu-s.json"], "--json: '/proc/numaemu-s.json' is not writable"),
    (["--topology", "3:10,20"], "--topology: spec '3:10,20': 3 nodes need 9 distances"),
    (["--topology", "{d}/nomem.json"], "--topology: {d}/nomem.json: no node has memory"),
    (["--topology", "{d}/tinymem.toml"], "--topology: node 0 of {d}/tinymem.toml has 1.0 MiB of memory (1,048,576 bytes), but under replicate it holds"),
    (["--topology", "{d}/unreachable.json", "--policy", "interleave"], "--policy: interleave: node 0 cannot reach node 1"),
    # faults
    (["--kill-workers", "0"], "--kill-workers: must be a positive number, got '0'"),
    (["--kill-workers", "-1"], "--kill-workers: must be a positive number"),
    (["--kill-workers", "nan"], "--kill-workers: must be a positive number, got 'nan'"),
    (["--kill-workers", "x"], "--kill-workers: 'x' is not a number"),
    (["--kill-workers", "5000"], "--kill-workers: must be at most 1000 kills/s, got '5000'"),
    (["--recover=yes"], "--recover: ignored explicit argument 'yes'"),
]


@table(STRESS)
def test_stress(capsys, d, argv, expect):
    check(capsys, d, ["stress", *argv], expect)


# ------------------------------------------------------------------------------------------
# numaemu bench, from options and from experiment files


BENCH = [
    (["--repeat", "0"], "--repeat: must be a positive integer, got '0'"),
    (["--repeat", "nan"], "--repeat: 'nan' is not an integer"),
    (["--repeat", "1e3"], "--repeat: '1e3' is not an integer"),
    (["--repeat", "999999999999999999"], "--repeat: must be at most 1000, got '999999999999999999'"),
    (["--warmup", "-1"], "--warmup: must be an integer >= 0, got '-1'"),
    (["--warmup", "x"], "--warmup: 'x' is not an integer"),
    (["--warmup", "5000"], "--warmup: must be at most 1000, got '5000'"),
    (["--duration", "0"], "--duration: must be a positive number, got '0'"),
    (["--duration", "nan"], "--duration: must be a positive number, got 'nan'"),
    (["--duration", "inf"], "--duration: must be a positive number, got 'inf'"),
    (["--duration", "1e300"], "--duration: must be at most 86400 s, got '1e300'"),
    (["--requests", "0"], "--requests: must be a positive integer, got '0'"),
    (["--requests", "-1"], "--requests: must be a positive integer, got '-1'"),
    (["--requests", "nan"], "--requests: 'nan' is not an integer"),
    (["--requests", "1" + "0" * 12], "--requests: must be at most 1000000000"),
    (["--migrate-rate", "nan"], "--migrate-rate: must be a probability per request in 0..1, got 'nan'"),
    (["--migrate-rate", "1.5"], "--migrate-rate: must be a probability per request in 0..1, got '1.5'"),
    (["--seed", "-1"], "--seed: must be in 0..4294967295, got '-1'"),
    (["--seed", "x"], "--seed: 'x' is not an integer"),
    (["--image-scale", "0"], "--image-scale: must be a positive number, got '0'"),
    (["--image-scale", "nan"], "--image-scale: must be a positive number, got 'nan'"),
    (["--time-scale", "inf"], "--time-scale: must be a positive number, got 'inf'"),
    (["--time-scale", "0"], "--time-scale: must be a positive number, got '0'"),
    (["--local-ns", "nan"], "--local-ns: must be a positive number, got 'nan'"),
    (["--replicas-every", "0"], "--replicas-every: must be a positive integer, got '0'"),
    (["--replicas-every", "nan"], "--replicas-every: 'nan' is not an integer"),
    (["--replicas-every", "99"], "--replicas-every: must be at most 64"),
    (["--topology", "2s-xeon,kunpeng920", "--replicas-every", "5"], "--replicas-every: 5 is more than the 4 nodes of kunpeng920"),
    (["--delays", "fast"], "--delays: 'fast' is not one of model, none"),
    (["--delays", "model,none"], "--delays: 'model,none' is not one of model, none"),
    (["--delays", ""], "--delays: '' is not one of model, none"),
    (["--pt-style", "arm64,x86"], "--pt-style: 'arm64,x86' is not one of none, arm64, x86"),
    (["--start-method", "thread"], "--start-method: 'thread' is not one of fork, spawn, forkserver"),
    (["--start-method", ""], "--start-method: '' is not one of fork, spawn, forkserver"),
    # sweeps
    (["--topology", ""], "--topology: give at least one value"),
    (["--topology", ","], "--topology: give at least one value"),
    (["--topology", "2s-xeon,nosuch"], "--topology: unknown preset, spec or file 'nosuch'"),
    (["--topology", "2s-xeon,2s-xeon"], "--topology: '2s-xeon,2s-xeon' names a value twice"),
    (["--topology", "2:10,21"], "--topology: spec '2:10,21': 2 nodes need 4 distances"),
    (["--topology", "2s-xeon,{d}/bad.json"], "--topology: '{d}/bad.json' is not valid JSON"),
    (["--topology", "2s-xeon,{d}/nomem.json"], "--topology: {d}/nomem.json: no node has memory"),
    (["--topology", "2s-xeon,{d}/tinymem.toml"], "--topology: node 0 of {d}/tinymem.toml has 1.0 MiB of memory"),
    (["--workload", ""], "--workload: give at least one value"),
    (["--workload", "db,nosuch"], "--workload: 'nosuch' is not one of getpid, db"),
    (["--cache", "hot,warm"], "--cache: 'warm' is not one of hot, cold"),
    (["--cache", "hot,hot"], "--cache: 'hot,hot' names a value twice"),
    (["--user-data", "x,local"], "--user-data: 'x' is not one of local, interleave"),
    (["--replicate", "x"], "--replicate: 'x' is not one of text, text+rodata"),
    (["--policy", ","], "--policy: give at least one value"),
    (["--policy", "replicate,bogus"], "--policy: 'bogus' is not one of single, interleave, replicate"),
    # files, incompatible pairs
    (["--workload", "trace"], "--trace: the trace workload needs --trace FILE"),
    (["--workload", "trace", "--trace", "{d}/missing.txt"], "--trace: cannot read '{d}/missing.txt'"),
    (["--workload", "trace", "--trace", "{d}/trace-outside.txt"], "--trace: {d}/trace-outside.txt:1: address 0x1000 is outside the image"),
    (["--workload", "trace", "--trace", ""], "--trace: is empty; give a file path"),
    (["--workload", "db", "--trace", "{d}/trace-bad.txt"], "--trace: --trace is only for --workload trace"),
    (["--duration", "1", "--requests", "10"], "--duration: give --duration or --requests, not both"),
    (["--topology", "2s-xeon,kunpeng920", "--host-cpus", "0;1"], "--host-cpus: an explicit placement fits one topology"),
    (["--topology", "2s-xeon,kunpeng920", "--host-cpus", ""], "--host-cpus: an explicit placement fits one topology"),
    (["--delays", "none", "--time-scale", "2"], "--time-scale: is for --delays model"),
    (["--image", "{d}/img-ok", "--image-scale", "0.5"], "--image: cannot be combined with --image-scale 0.5"),
    # output paths
    (["--json", "{d}/missing/x.json"], "--json: '{d}/missing/x.json': directory '{d}/missing' does not exist"),
    (["--json", "{d}/dir"], "--json: '{d}/dir' is a directory"),
    (["--json", "/proc/numaemu-b.json"], "--json: '/proc/numaemu-b.json' is not writable"),
    (["--csv", "{d}/missing/x.csv"], "--csv: '{d}/missing/x.csv': directory '{d}/missing' does not exist"),
    (["--csv", "{d}/dir"], "--csv: '{d}/dir' is a directory"),
    (["--csv", "/proc/numaemu-b.csv"], "--csv: '/proc/numaemu-b.csv' is not writable"),
    (["--plot", "{d}/missing/x.png"], "--plot"),
    (["--plot", "{d}/dir.png"], "--plot"),
    # experiment files
    (["--experiment", "{d}/missing.toml"], "--experiment: cannot read '{d}/missing.toml'"),
    (["--experiment", "{d}/dir"], "--experiment: cannot read '{d}/dir': Is a directory"),
    (["--experiment", "{d}/exp-syntax.toml"], "--experiment: '{d}/exp-syntax.toml' is not valid TOML"),
    (["--experiment", "{d}/bad.json"], "--experiment: '{d}/bad.json' is not valid TOML"),
    (["--experiment", "{d}/exp-empty.toml"], "--experiment: '{d}/exp-empty.toml' sets nothing"),
    (["--experiment", "{d}/exp-binary.toml"], "--experiment: '{d}/exp-binary.toml' is not UTF-8 text"),
    (["--experiment", "{d}/exp-hugeint.toml"], "--experiment: '{d}/exp-hugeint.toml' holds a number too long to read"),
    (["--experiment", "{d}/exp-unknown.toml"], "--experiment: {d}/exp-unknown.toml: unknown key 'colour'"),
    (["--experiment", "{d}/exp-tables.toml"], "--experiment: {d}/exp-tables.toml: unknown key 'bench'"),
    (["--experiment", "{d}/exp-bool.toml"], "--experiment: {d}/exp-bool.toml: repeat must be a string, a number or a non-empty list of them"),
    (["--experiment", "{d}/exp-emptylist.toml"], "--experiment: {d}/exp-emptylist.toml: repeat must be"),
    (["--experiment", "{d}/exp-table.toml"], "--experiment: {d}/exp-table.toml: topology must be"),
    (["--experiment", "{d}/exp-nested.toml"], "--experiment: {d}/exp-nested.toml: cache must be"),
    (["--experiment", "{d}/exp-str.toml"], "--repeat (from {d}/exp-str.toml): 'five' is not an integer"),
    (["--experiment", "{d}/exp-float.toml"], "--repeat (from {d}/exp-float.toml): '1.5' is not an integer"),
    (["--experiment", "{d}/exp-cache.toml"], "--cache (from {d}/exp-cache.toml): '5' is not one of hot, cold"),
    (["--experiment", "{d}/exp-nan.toml"], "--duration (from {d}/exp-nan.toml): must be a positive number, got 'nan'"),
    (["--experiment", "{d}/exp-inf.toml"], "--duration (from {d}/exp-inf.toml): must be a positive number, got 'inf'"),
    (["--experiment", "{d}/exp-both.toml"], "--duration: give --duration or --requests, not both"),
    (["--experiment", "{d}/exp-delays.toml"], "--delays (from {d}/exp-delays.toml): 'model,none' is not one of model, none"),
    (["--experiment", "{d}/exp-ptstyle.toml"], "--pt-style (from {d}/exp-ptstyle.toml): 'sparc' is not one of none, arm64, x86"),
    (["--experiment", "{d}/exp-replicas.toml"], "--replicas-every (from {d}/exp-replicas.toml): must be a positive integer, got '0'"),
]


@table(BENCH)
def test_bench(capsys, d, argv, expect):
    check(capsys, d, ["bench", *argv], expect)


# bench --cluster: the address, checked before anything else; the extra; what each host reads
CLUSTER_WHERE = "give tcp://HOST:PORT (dask scheduler listens on 8786) or local"
CLUSTER = [
    (["--cluster", ""], "--cluster: is empty; give the scheduler's address, tcp://HOST:PORT (dask scheduler listens on 8786), or local"),
    (["--cluster", " "], "--cluster: is empty"),
    (["--cluster", "tcp://sched"], f"--cluster: 'tcp://sched' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "sched"], f"--cluster: 'sched' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "http://sched:8786"], f"--cluster: 'http://sched:8786' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "tcp://sched:0"], f"--cluster: 'tcp://sched:0' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "tcp://sched:99999"], f"--cluster: 'tcp://sched:99999' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "tcp://sched:8786/x"], f"--cluster: 'tcp://sched:8786/x' is not a scheduler address: {CLUSTER_WHERE}"),
    (["--cluster", "local", "--topology", "2s-xeon,host"], "--cluster: cannot sweep --topology host: each host would emulate its own machine"),
    (["--cluster", "tcp://sched:8786", "--topology", "host"], "--cluster: cannot sweep --topology host"),
    # the rest of the experiment is checked as without --cluster
    (["--cluster", "local", "--repeat", "0"], "--repeat: must be a positive integer, got '0'"),
    (["--cluster", "tcp://sched:8786", "--workload", "trace", "--trace", "{d}/missing.txt"], "--trace: cannot read '{d}/missing.txt'"),
]


@table(CLUSTER)
def test_bench_cluster(capsys, d, argv, expect):
    pytest.importorskip("distributed")
    check(capsys, d, ["bench", *argv], expect)


def test_bench_cluster_without_dask_gives_the_install_hint(capsys, d, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    assert check(capsys, d, ["bench", "--cluster", "local"], "--cluster: ") == "--cluster: needs the cluster extra: pip install 'numaemu[cluster]'"
    # The address is checked first, with or without Dask.
    assert check(capsys, d, ["bench", "--cluster", "sched"], "--cluster: ").startswith("--cluster: 'sched' is not a scheduler address")


def test_bench_cluster_with_no_scheduler_there(capsys, d, monkeypatch):
    pytest.importorskip("distributed")
    from numaemu.measure import cluster

    monkeypatch.undo()  # the real ClusterSession: nothing else starts before it refuses
    monkeypatch.setattr("numaemu.api.bench.free_space", lambda: (64 * GIB, 64 * GIB))
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = check(capsys, d, ["bench", "--cluster", f"tcp://127.0.0.1:{port}"], "--cluster: ")
    assert got == f"--cluster: no Dask scheduler answered at tcp://127.0.0.1:{port} within 1 s; start one there with `dask scheduler` (it listens on port 8786)"


def test_bench_cluster_with_no_worker_that_has_the_resource(capsys, d, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from numaemu.measure import cluster

    monkeypatch.undo()  # the real ClusterSession: nothing else starts before it refuses
    monkeypatch.setattr("numaemu.api.bench.free_space", lambda: (64 * GIB, 64 * GIB))
    monkeypatch.setattr(cluster, "WORKER_WAIT_S", 1.0)
    # A scheduler, and a worker without the resource (as `dask worker` starts one by default).
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None) as here:
        got = check(capsys, d, ["bench", "--cluster", here.scheduler_address], "--cluster: ")
    assert got == (
        f"--cluster: the scheduler at {here.scheduler_address} has no worker with the numaemu resource (waited 1 s); "
        f"start one on each host: dask worker {here.scheduler_address} --nworkers 1 --nthreads 1 --resources numaemu=1"
    )


# ------------------------------------------------------------------------------------------
# numaemu compare and plot: results of another kind or schema


RESULTS = [
    ("{d}/missing.json", "cannot read '{d}/missing.json': No such file or directory"),
    ("{d}/dir", "cannot read '{d}/dir': Is a directory"),
    ("{d}/text.json", "'{d}/text.json' is not JSON"),
    ("{d}/empty-result.json", "'{d}/empty-result.json' is not JSON"),
    ("{d}/hugeint-result.json", "'{d}/hugeint-result.json' is not JSON"),
    ("{d}/img-arm64", "'{d}/img-arm64' is not JSON"),
    ("{d}/list-result.json", "'{d}/list-result.json' is not a numaemu bench result"),
    ("{d}/run.json", "'{d}/run.json' is not a numaemu bench result (it is from numaemu run)"),
    ("{d}/stress.json", "'{d}/stress.json' is not a numaemu bench result (it is from numaemu stress)"),
    ("{d}/bad.json", "'{d}/bad.json' is not JSON"),
    ("{d}/emptyd.json", "'{d}/emptyd.json' is not a numaemu bench result"),
    ("{d}/schema0.json", "'{d}/schema0.json' has bench schema 0; this numaemu reads 2"),
    ("{d}/noschema.json", "'{d}/noschema.json' has bench schema None; this numaemu reads 2"),
    ("{d}/nopoints.json", "'{d}/nopoints.json' is a damaged bench result: has no points"),
    ("{d}/damaged.json", "'{d}/damaged.json' is a damaged bench result: points[0]: point must be an object with topology, workload"),
]


@pytest.mark.parametrize(("path", "expect"), RESULTS, ids=[p.removeprefix("{d}/") for p, _ in RESULTS])
def test_compare(capsys, d, path, expect):
    check(capsys, d, ["compare", path, path], "A.json: " + expect)


@pytest.mark.parametrize(("path", "expect"), RESULTS[::2], ids=[p.removeprefix("{d}/") for p, _ in RESULTS[::2]])
def test_compare_second_file(capsys, d, path, expect, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_bench_doc()))
    check(capsys, d, ["compare", str(good), path], "B.json: " + expect)


@pytest.mark.parametrize(("path", "expect"), RESULTS, ids=[p.removeprefix("{d}/") for p, _ in RESULTS])
def test_plot(capsys, d, path, expect):
    check(capsys, d, ["plot", path, "{d}/out.png"], "BENCH.json: " + expect)


def test_compare_and_plot_outputs(capsys, d, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_bench_doc()))
    check(capsys, d, ["compare", str(good), str(good), "--json", "{d}/missing/c.json"], "--json: '{d}/missing/c.json': directory '{d}/missing' does not exist")
    check(capsys, d, ["compare", str(good), str(good), "--json", "{d}/dir"], "--json: '{d}/dir' is a directory")
    pytest.importorskip("matplotlib")
    check(capsys, d, ["plot", str(good), "{d}/missing/x.png"], "FILE.png: '{d}/missing/x.png': directory '{d}/missing' does not exist")
    check(capsys, d, ["plot", str(good), "{d}/dir.png"], "FILE.png: '{d}/dir.png' is a directory")


def _bench_doc() -> dict:
    """The smallest bench document compare and plot accept."""
    rec = {"policy": "single", "throughput_rps": 100.0, "speedup_vs_single": 1.0}
    row = {"speedup": None, "model_speedup": 1.0, "per_node": [], "throughput_rps": {"median": 100.0}}
    point = {"point": {"topology": "2s-xeon", "workload": "db", "cache": "hot", "user_data": "local", "replicate": "text+rodata"},
             "policies": {"single": row}, "runs": [[rec]]}
    return {"command": "bench", "bench_schema": 1, "experiment": {"repeat": 1, "warmup": 0, "duration_s": 1.0}, "points": [point]}


# ------------------------------------------------------------------------------------------
# numaemu calibrate


CALIBRATE = [
    (["--start-method", "thread"], "--start-method: 'thread' is not one of fork, spawn, forkserver"),
    (["--start-method", ""], "--start-method: '' is not one of fork, spawn, forkserver"),
    (["--json", "{d}/missing/c.json"], "--json: '{d}/missing/c.json': directory '{d}/missing' does not exist"),
    (["--json", "/"], "--json: '/' is a directory"),
    (["--json", ""], "--json: is empty; give a file path"),
    (["--json", "/proc/numaemu-c.json"], "--json: '/proc/numaemu-c.json' is not writable"),
    (["--quick", "now"], "numaemu: unrecognized arguments: now"),
    (["--topology", "2s-xeon"], "numaemu: unrecognized arguments: --topology 2s-xeon"),
]


@table(CALIBRATE)
def test_calibrate(capsys, d, argv, expect):
    check(capsys, d, ["calibrate", *argv], expect)


# ------------------------------------------------------------------------------------------
# Runs that would not fit in /dev/shm or in memory: refused up front, with the numbers


MIB = 1 << 20


@pytest.mark.parametrize(
    ("argv", "shm", "mem", "expect"),
    [
        # 2s-xeon, full image: single needs about 60 MiB of segments, interleave 61.8, replicate 81.8.
        # Nothing fits: the largest is named, with --topology.
        (["run"], 40 * MIB, 64 * GIB, "--topology: replicate needs 81.8 MiB of shared memory (2 copies of 21.8 MiB + 2 x 8.0 MiB user data + "),
        # single fits (75 MiB less a tenth), replicate does not: --policy.
        (["run"], 75 * MIB, 64 * GIB, "--policy: replicate needs 81.8 MiB of shared memory (2 copies of 21.8 MiB + 2 x 8.0 MiB user data + "),
        (["run", "--policy", "single,interleave"], 67 * MIB, 64 * GIB, "--policy: interleave needs 61.8 MiB of shared memory (1 copy of 21.8 MiB + 2 x 8.0 MiB user data + 2.2 MiB of 2 MiB alignment"),
        (["run", "--policy", "interleave"], 40 * MIB, 64 * GIB, "--topology: interleave needs 61.8 MiB of shared memory"),
        # Memory: the segments and two node processes of about 48 MiB.
        (["run"], 64 * GIB, 150 * MIB, "--topology: replicate needs about 177.8 MiB of memory (81.8 MiB of shared memory: 2 copies of 21.8 MiB"),
        (["run", "--topology", "8"], 200 * MIB, 64 * GIB, "--policy: replicate needs 261.8 MiB of shared memory (8 copies of 21.8 MiB + 8 x 8.0 MiB user data"),
        (["stress"], 40 * MIB, 64 * GIB, "--topology: replicate needs 71.5"),
        (["stress", "--policy", "single"], 30 * MIB, 64 * GIB, "--topology: single needs 50.2"),
        # bench: the largest point, checked before the first one runs.
        (["bench", "--topology", "2s-xeon,epyc-nps4"], 200 * MIB, 64 * GIB, "--policy: epyc-nps4: replicate needs 261.8 MiB of shared memory"),
        (["bench", "--topology", "2s-xeon,4", "--replicate", "text,text+rodata"], 110 * MIB, 64 * GIB, "--policy: 4, --replicate text+rodata: replicate needs"),
        (["bench", "--topology", "2s-xeon,epyc-nps4"], 64 * GIB, 600 * MIB, "--policy: epyc-nps4: replicate needs about 645.8 MiB of memory (261.8 MiB of shared memory: "),
        (["bench", "--topology", "2s-xeon,epyc-nps4"], 64 * GIB, 400 * MIB, "--topology: epyc-nps4: replicate needs about 645.8 MiB of memory"),
    ],
)
def test_runs_that_would_not_fit_are_refused(capsys, d, monkeypatch, argv, shm, mem, expect):
    monkeypatch.setattr("numaemu.api.bench.free_space", lambda: (shm, mem))
    monkeypatch.setattr(fit, "free_space", lambda: (shm, mem))
    rule = check(capsys, d, argv, expect)
    assert "free" in rule or "available" in rule


def test_the_fit_check_reads_the_real_free_space():
    shm, mem = free_space()
    st = os.statvfs("/dev/shm")
    assert shm == st.f_bavail * st.f_frsize and mem > 0
