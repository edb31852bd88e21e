"""Bad input: one line `error: <parameter>: <rule>` on stderr, exit 2, nothing started.

These call `main()` in-process (fast); they assert nothing reached /dev/shm.
"""

from __future__ import annotations

import json
import os

import pytest

from numaemu.cli import main
from numaemu.host.segments import list_segments


def mine() -> set[str]:
    """Segments this process created (main() runs in-process here)."""
    return {n for n in list_segments() if n.startswith(f"numaemu-{os.getpid()}-")}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD = [
    (["run", "--topology", "nosuch"], "--topology: unknown preset, spec or file 'nosuch'"),
    (["run", "--topology", "2:10,21,21"], "--topology"),
    (["run", "--topology", "2:10,9,9,10"], "--topology"),
    (["run", "--topology", "2:11,21,21,10"], "--topology"),
    (["run", "--host-cpus", "9999;0"], "--host-cpus"),
    (["run", "--host-cpus", "0"], "--host-cpus"),
    (["run", "--duration", "0"], "--duration: must be a positive number, got '0'"),
    (["run", "--duration", "-1"], "--duration"),
    (["run", "--duration", "abc"], "--duration: 'abc' is not a number"),
    (["run", "--duration", "nan"], "--duration"),
    (["run", "--requests", "0"], "--requests: must be a positive integer, got '0'"),
    (["run", "--requests", "1.5"], "--requests"),
    (["run", "--requests", "5", "--duration", "1"], "--duration"),
    (["run", "--workload", "nosuch"], "--workload: unknown workload 'nosuch'"),
    (["run", "--workload", "trace"], "--trace: the trace workload needs --trace FILE"),
    (["run", "--policy", "single,bogus"], "--policy: 'bogus' is not one of single, interleave, replicate"),
    (["run", "--policy", "single,single"], "--policy"),
    (["run", "--policy", ","], "--policy: give at least one policy"),
    (["run", "--replicate", "data"], "--replicate: 'data' is not one of text, text+rodata"),
    (["run", "--cache", "warm"], "--cache: 'warm' is not one of hot, cold"),
    (["run", "--user-data", "remote"], "--user-data"),
    (["run", "--migrate-rate", "2"], "--migrate-rate: must be a probability per request in 0..1"),
    (["run", "--seed", "-1"], "--seed"),
    (["run", "--start-method", "thread"], "--start-method"),
    (["run", "--image-scale", "0"], "--image-scale"),
    (["run", "--image-scale", "2"], "--image-scale"),
    (["run", "--time-scale", "0"], "--time-scale"),
    (["run", "--json", "/nonexistent-dir/x.json"], "--json: '/nonexistent-dir/x.json': directory '/nonexistent-dir' does not exist"),
    (["run", "--json", "/"], "--json"),
    (["run", "--local-ns", "-5"], "--local-ns"),
    (["run", "--pt-style", "riscv"], "--pt-style: 'riscv' is not one of none, arm64, x86"),
    (["run", "--pt-style", "arm64", "--kaslr"], "--kaslr: not with --pt-style arm64: King's series disables KASLR"),
    (["run", "--kaslr"], "--kaslr: needs --pt-style x86"),
    (["run", "--replicas-every", "0"], "--replicas-every: must be a positive integer, got '0'"),
    (["run", "--replicas-every", "two"], "--replicas-every"),
    (["stress", "--pt-style", "arm64", "--kaslr"], "--kaslr: not with --pt-style arm64"),
    (["stress", "--replicas-every", "-1"], "--replicas-every"),
    (["bench", "--pt-style", "sparc"], "--pt-style: 'sparc' is not one of none, arm64, x86"),
    (["bench", "--replicas-every", "0"], "--replicas-every: must be a positive integer"),
    (["run", "--hardware", "pentium"], "--hardware: 'pentium' is not one of e5-2690, epyc-7713-nps1"),
    (["bench", "--hardware", "pentium"], "--hardware: 'pentium' is not one of e5-2690"),
    (["topology", "2s-xeon", "--hardware", "pentium"], "--hardware: 'pentium' is not one of"),
    (["stress", "--protocol", "nosync"], "--protocol: nosync (single aligned 4-byte writes) is only for the arm64 image"),
    (["stress", "--protocol", "text_poke_bp", "--arch", "arm64"], "--protocol: text_poke_bp is the x86 INT3 protocol"),
    (["stress", "--protocol", "bogus"], "--protocol: 'bogus' is not one of stop_machine, text_poke_bp, nosync"),
    (["stress", "--arch", "riscv"], "--arch: 'riscv' is not one of x86_64, arm64"),
    (["stress", "--source", "uprobes"], "--source: 'uprobes' is not one of static_keys, ftrace, module, bpf, livepatch, kprobes, shared, mixed"),
    (["stress", "--policy", "mirror"], "--policy"),
    (["stress", "--inject-bug", "typo"], "--inject-bug: 'typo' is not one of early-master"),
    (["stress", "--inject-bug", "early-master"], "--inject-bug: early-master is a bug of stop_machine, not of text_poke_bp"),
    (["stress", "--inject-bug", "descriptor-reuse", "--protocol", "stop_machine"], "--inject-bug: descriptor-reuse is a bug of text_poke_bp"),
    (["stress", "--inject-bug", "key-race", "--source", "ftrace"], "--inject-bug: key-race is a static-key bug"),
    (["stress", "--rate", "0"], "--rate: must be a positive number"),
    (["stress", "--duration", "-3"], "--duration"),
    (["stress", "--seed", "x"], "--seed"),
    (["stress", "--json", "/nonexistent-dir/s.json"], "--json"),
    (["stress", "--topology", "3:10,20"], "--topology"),
    (["topology", "0"], "--topology"),
    (["topology", "65"], "--topology"),
    (["image", "--image-scale", "x"], "--image-scale"),
    (["calibrate", "--json", "/nonexistent-dir/c.json"], "--json: '/nonexistent-dir/c.json': directory '/nonexistent-dir' does not exist"),
    (["calibrate", "--json", "/"], "--json: '/' is a directory"),
    (["calibrate", "--start-method", "thread"], "--start-method: 'thread' is not one of fork, spawn, forkserver"),
    (["calibrate", "--quick", "now"], "numaemu: unrecognized arguments: now"),
    (["nosuchcommand"], "COMMAND: invalid choice: 'nosuchcommand'"),
    (["run", "--nosuch-option"], "numaemu: unrecognized arguments: --nosuch-option"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not mine()


def test_bad_topology_file(capsys, tmp_path):
    f = tmp_path / "t.json"
    f.write_text('{"distance": [[10, 300], [300, 10]]}')
    code, _, err = run_cli(capsys, "run", "--topology", str(f))
    assert code == 2 and err.startswith("error: --topology: ") and err.count("\n") == 1


def test_trace_errors(capsys, tmp_path):
    f = tmp_path / "trace.txt"
    f.write_text("0xffffffff81000000\nnot-an-address\n")
    code, _, err = run_cli(capsys, "run", "--workload", "trace", "--trace", str(f))
    assert code == 2 and err.startswith(f"error: --trace: {f}:2: 'not-an-address' is not an address")
    f.write_text("0x1000\n")
    code, _, err = run_cli(capsys, "run", "--workload", "trace", "--trace", str(f))
    assert code == 2 and f"{f}:1: address 0x1000 is outside the image" in err
    code, _, err = run_cli(capsys, "run", "--workload", "trace", "--trace", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("error: --trace: cannot read")
    code, _, err = run_cli(capsys, "run", "--workload", "db", "--trace", str(f))
    assert code == 2 and err.startswith("error: --trace: --trace is only for --workload trace")


def test_topology_prints_numactl_format(capsys):
    code, out, _ = run_cli(capsys, "topology", "kunpeng920", "--host-cpus", "0;0;0;0")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "available: 4 nodes (0-3)"
    assert "node distances:" in lines
    assert "node   0   1   2   3" in lines
    assert "  0:  10  12  20  22" in lines
    assert any(line.startswith("oversubscribed:") for line in lines)


def test_topology_json(capsys):
    code, out, _ = run_cli(capsys, "topology", "2s-xeon", "--json", "-")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == 2
    assert doc["topology"]["distance"] == [[10, 21], [21, 10]]
    assert doc["topology"]["latency_ns"] == [[85.0, 136.0], [136.0, 85.0]]


def test_image_summary(capsys):
    code, out, _ = run_cli(capsys, "image", "--json", "-")
    s = json.loads(out)["image"]
    assert code == 0
    assert [(x["name"], x["size"], x["vaddr"]) for x in s["sections"]] == [
        (".text", 16_777_216, "0xffffffff81000000"),
        (".rodata", 6_095_046, "0xffffffff82000000"),
    ]
    code, out, _ = run_cli(capsys, "image")
    assert code == 0 and "16,777,216" in out and "ftrace site" in out


def test_json_to_a_device_writes_through_it(capsys, tmp_path):
    # --json /dev/null must not replace the device with a file (write_json renames temp files).
    import stat

    from numaemu.runtime.results import write_json

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert write_json({"a": 1}, "/dev/null") == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    target = tmp_path / "out.json"
    write_json({"a": 1}, str(target))
    assert json.loads(target.read_text()) == {"a": 1}
    assert not (tmp_path / "out.json.tmp").exists()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
