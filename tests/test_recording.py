"""Recordings and perf script files: the formats --trace reads, numaemu record, and their bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numaemu.errors import UsageError
from numaemu.host.files import load_trace, load_workload
from numaemu.model.image import synthetic_image
from numaemu.model.recording import Frame, command_samples, detect_format, parse_perf_script, parse_recording, recording_document
from numaemu.model.workloads import RECORDED, recorded

DATA = Path(__file__).parent / "data" / "perf"
PERF_FILES = ("getpid-callchains.txt", "getpid-callchains-ipsym.txt", "getpid.txt", "getpid-ipsym.txt")


@pytest.fixture(scope="module")
def image():
    return synthetic_image()


@pytest.mark.parametrize("name", PERF_FILES)
def test_perf_script_formats_parse_alike(name):
    """perf script's default output and -F ip,sym,symoff, with and without callchains, give the
    same kernel samples (they are the same perf.data printed two ways)."""
    text = (DATA / name).read_text()
    assert detect_format(text) == "perf"
    rec = parse_perf_script(text, name)
    assert rec.callchains == ("callchains" in name)
    assert rec.format == ("perf script -F ip,sym,symoff" if "ipsym" in name else "perf script")
    twin = parse_perf_script((DATA / name.replace("-ipsym", "").replace(".txt", "-ipsym.txt") if "ipsym" not in name else DATA / name.replace("-ipsym", "")).read_text(), "twin")
    assert (rec.samples, rec.kernel_samples) == (twin.samples, twin.kernel_samples)
    assert rec.chains == twin.chains and np.array_equal(rec.sequence, twin.sequence)
    assert 0 < rec.kernel_samples < rec.samples  # user-space samples count, but are not kept
    assert all(f.name is not None or f.address >= 0xFFFF800000000000 for chain in rec.chains for f in chain)


def test_a_callchain_is_kept_leaf_first_down_to_the_entry(image):
    rec = parse_perf_script((DATA / "getpid-callchains.txt").read_text(), "x")
    getpid = [c for c in rec.chains if any(f.name == "__x64_sys_getpid" for f in c)]
    assert getpid, "the getpid loop's own syscall is sampled"
    chain = getpid[0]
    assert chain[-1].name.startswith("entry_SYSCALL_64")  # the root, last
    names = [f.name for f in chain]
    assert names.index("__x64_sys_getpid") < names.index("do_syscall_64")


@pytest.mark.parametrize("name", PERF_FILES)
def test_a_perf_file_replays_as_a_trace(tmp_path, image, name):
    w = load_trace(DATA / name, image)
    rep = w.report
    assert w.name == "trace" and w.n_templates >= 1 and rep["format"].startswith("perf script")
    assert rep["mapped_by_name"] + rep["mapped_by_stand_in"] + rep["mapped_by_address"] == rep["kernel_samples"]
    assert rep["mapped_by_name_share"] > 0.9  # 6.18's getpid path, by name onto 6.12's layout
    if "callchains" in name:
        assert rep["top_entries"][0]["entry"] == "__x64_sys_getpid"
    lines = w.lines
    text = image.section(".text")
    assert np.all((lines >= text.offset // 64) & (lines < (text.offset + text.size) // 64))


def test_a_recording_round_trips(tmp_path, image):
    rec = parse_perf_script((DATA / "getpid-callchains.txt").read_text(), "x")
    doc = recording_document(rec, {"release": "6.18.44", "command": ["./microbench", "getpid", "0.3"]})
    path = tmp_path / "g.rec"
    path.write_text(json.dumps(doc))
    back = parse_recording(path.read_text(), str(path))
    assert back.chains == rec.chains and np.array_equal(back.counts, rec.counts) and np.array_equal(back.sequence, rec.sequence)
    assert back.samples == rec.samples and back.meta["release"] == "6.18.44"
    assert detect_format(path.read_text()) == "recording"
    assert load_trace(path, image).report["format"] == "numaemu recording v1"


def test_an_address_list_still_works(tmp_path, image):
    path = tmp_path / "a.txt"
    path.write_text("0xffffffff81000000\n0xffffffff81000040\n\n0xffffffff81000080\n")
    w = load_trace(path, image)
    assert w.n_templates == 2 and w.report is None


def test_a_recording_made_on_one_kernel_replays_on_another(image):
    """Names, not addresses: the 6.18 recording lands on 6.12's __x64_sys_getpid, which is at
    another address than on the recording kernel."""
    w = load_workload("getpid", image)
    addr = image.symbols.address_of("__x64_sys_getpid")
    line = (addr - image.base) // 64
    assert line in set(w.lines.tolist())


def test_stand_ins_take_a_function_of_the_same_subsystem(image):
    """A function the image lacks replays at a function of its subsystem, by a hash of its name,
    and is counted as a stand-in."""
    from numaemu.model.recording import recording_from_samples
    from numaemu.model.replay import reconstruct
    from numaemu.model.target_map import target_map

    chain = (Frame("tcp_imaginary_helper", 0x40), Frame("__x64_sys_getpid", 0x10), Frame("do_syscall_64", 0x30), Frame("entry_SYSCALL_64_after_hwframe", 0x4B))
    rec = recording_from_samples([chain] * 10, 10, "x", "synthetic", True, {"tcp_imaginary_helper": 512}, {})
    r = reconstruct(rec, image)
    assert r.report["mapped_by_stand_in"] == 10 and r.report["mapped_by_name"] == 0
    assert r.report["warning"] and "stand-ins" in r.report["warning"]
    tm = target_map(image)
    net = {int(tm.starts[i]) // 64 for i in tm.by_subsystem[5]}  # SUBSYSTEMS[5] == "net"
    assert net & set(np.concatenate(r.templates).tolist())


@pytest.mark.parametrize("name", RECORDED)
def test_shipped_recordings_say_what_made_them(name):
    rec = recorded(name)
    assert rec.meta["release"] and rec.meta["command"] and rec.meta["frequency_hz"] == 4000
    assert rec.kernel_samples > 10 and rec.callchains


# -- bad input ------------------------------------------------------------------------------------


def _write(tmp_path, text, name="t.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "python3 14295 12585.780136:     500000 cpu-clock: \n\tffffffff815ff3e1 set_pte_range+0xf1 ([kernel.kallsyms])\n\tgarbage here\n",
            r"t\.txt:3: 'garbage here' is neither a perf script sample header nor a frame",
        ),
        ("python3 14295 12585.78\n", r"t\.txt:1: 'python3 14295 12585.78' is not a perf script sample header"),
        ("python3 14295 12585.780136:     500000 cpu-clock:       7f3fd6af6829 syscall+0x19 (/usr/lib/libc.so.6)\n", r"none of its 1 samples is in the kernel"),
        ("# only a comment\nbash 1 1.000000: 1 cpu-clock: \n\t 7f00 main+0x1 (/bin/bash)\n", r"none of its 1 samples is in the kernel"),
    ],
)
def test_bad_perf_scripts_are_refused(tmp_path, image, text, message):
    with pytest.raises(UsageError, match=message) as exc:
        load_trace(_write(tmp_path, text), image)
    assert exc.value.parameter == "--trace"


def test_a_truncated_perf_script_is_refused(tmp_path, image):
    text = (DATA / "getpid-callchains.txt").read_text()
    cut = text[: len(text) // 2].rsplit("\n", 1)[0] + "\n\tffffffff8139"  # cut in the middle of a frame
    with pytest.raises(UsageError, match=r"is neither a perf script sample header nor a frame"):
        load_trace(_write(tmp_path, cut), image)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "numaemu-recording", "version": 99}, r"recording version 99; this numaemu reads version 1"),
        ({"format": "something-else"}, r"not a numaemu recording"),
        ({"format": "numaemu-recording", "version": 1, "samples": 3, "frames": ["f+0x1"], "chains": [[2, 0]], "sequence": [0]}, r"its sequence does not match"),
        ({"format": "numaemu-recording", "version": 1, "samples": 3, "frames": ["f+0x1"], "chains": [[2, 5]]}, r"a malformed numaemu recording"),
        ({"format": "numaemu-recording", "version": 1, "samples": 3, "frames": [], "chains": []}, r"has no kernel samples"),
    ],
)
def test_bad_recordings_are_refused(tmp_path, image, doc, message):
    with pytest.raises(UsageError, match=message):
        load_trace(_write(tmp_path, json.dumps(doc), "r.rec"), image)


def test_invalid_json_recording(tmp_path, image):
    with pytest.raises(UsageError, match=r"not a numaemu recording: invalid JSON at line 1"):
        load_trace(_write(tmp_path, '{"format": "numaemu-recording", ', "r.rec"), image)


def test_command_samples_keep_the_commands_process_tree():
    text = "\n".join(
        [
            "perf-exec     0/0         0.000000: PERF_RECORD_COMM: perf-exec:100/100",
            "other 7/7 1.000000:     250000 cpu-clock: ",
            "\tffffffff81000010 noise+0x10 ([kernel.kallsyms])",
            "",
            "a 100/100 1.000001: PERF_RECORD_FORK(101:101):(100:100)",
            "a 101/101 1.000002:     250000 cpu-clock: ",
            "\tffffffff81000020 child_work+0x20 ([kernel.kallsyms])",
            "",
            "a 100/100 1.000003:     250000 cpu-clock: ",
            "\tffffffff81000030 parent_work+0x30 ([kernel.kallsyms])",
            "",
        ]
    )
    rec = parse_perf_script(command_samples(text), "x")
    assert {c[0].name for c in rec.chains} == {"child_work", "parent_work"}


# -- numaemu record --------------------------------------------------------------------------------


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "numaemu", *args], capture_output=True, text=True, timeout=120, **kw)


def test_record_refuses_a_command_it_cannot_run(tmp_path):
    r = _cli("record", "-o", str(tmp_path / "x.rec"), "--", "/nonexistent/cmd")
    assert r.returncode == 2 and r.stderr.strip() == "error: COMMAND: cannot run '/nonexistent/cmd': no such command"
    r = _cli("record", "-o", str(tmp_path / "x.rec"))
    assert r.returncode == 2 and r.stderr.startswith("error: COMMAND: give the command to record after --")
    r = _cli("record", "-F", "0", "--", "true")
    assert r.returncode == 2 and r.stderr.strip() == "error: --frequency: must be an integer from 1 to 100000 (samples per second), got '0'"


def test_record_without_perf_says_how_to_install_it(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no perf on this PATH (but true is given by path)
    r = subprocess.run([sys.executable, "-m", "numaemu", "record", "-o", str(tmp_path / "x.rec"), "--", "/bin/true"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: record: perf is not installed: apt-get install linux-perf")


def _perf_permitted() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except OSError:
        return False
    return os.geteuid() == 0 or paranoid <= 0


@pytest.mark.slow
@pytest.mark.skipif(not _perf_permitted(), reason="perf missing or not permitted kernel samples here")
def test_record_a_real_command_and_replay_it(tmp_path):
    """The real path: perf record -a -g on a getpid loop, converted, written, replayed."""
    out = tmp_path / "getpid.rec"
    code = "import os\nfor _ in range(200000): os.getpid()"
    r = _cli("record", "-o", str(out), "-F", "2000", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: ")
    doc = json.loads(out.read_text())
    assert doc["format"] == "numaemu-recording" and doc["version"] == 1 and doc["command"][-1] == code
    assert doc["release"] == os.uname().release and doc["kernel_samples"] > 0
    assert any(f.startswith("__x64_sys_getpid+") for f in doc["frames"])
    assert doc["sizes"].get("__x64_sys_getpid", 0) > 0  # from /proc/kallsyms
    w = load_trace(out, synthetic_image())
    assert any(e["entry"] == "__x64_sys_getpid" for e in w.report["top_entries"])


def test_a_kaslr_moved_image_replays_the_same_requests():
    """--kaslr moves the image and its symbols together: the same lines (offsets) are fetched."""
    from numaemu.model.pagetables import kaslr_base, with_base
    from numaemu.model.workloads import build_workload

    small = synthetic_image(0.05)
    moved = with_base(small, kaslr_base(small, 3))
    assert moved.base != small.base
    assert moved.symbols.address_of("__x64_sys_getpid") - moved.base == small.symbols.address_of("__x64_sys_getpid") - small.base
    a, b = build_workload("db", small), build_workload("db", moved)
    assert np.array_equal(a.lines, b.lines) and a.report["mapped_by_name"] == b.report["mapped_by_name"]


def test_subsystem_shares_are_the_embedded_images():
    """SHARES (for images without symbols) is what the classifier gives the embedded layout."""
    from numaemu.model.layout import default_layout
    from numaemu.model.subsystems import SHARES, classify, shares

    layout = default_layout()
    _, first = np.unique(layout.offsets, return_index=True)
    assert shares(classify([layout.names[i] for i in sorted(first)])) == SHARES
    assert abs(sum(SHARES) - 1) < 1e-9


def test_subsystems_from_names_then_link_order():
    from numaemu.model.subsystems import SUBSYSTEMS, classify

    names = ["tcp_sendmsg", "static_helper", "tcp_v4_rcv", "mystery", "ext4_file_open", "lonely", "exc_page_fault", "mem_cgroup_charge", "memcpy"]
    got = [SUBSYSTEMS[i] for i in classify(names)]
    # a helper between two net functions is net; one between net and fs, or at the end, is other
    assert got == ["net", "net", "net", "other", "fs", "other", "entry", "mm", "lib"]


@pytest.mark.slow
@pytest.mark.skipif(not _perf_permitted(), reason="perf missing or not permitted kernel samples here")
def test_record_survives_a_command_that_writes_much_to_stderr(tmp_path):
    """perf's stderr (and the command's) goes to a file: read through a pipe only at the end, it
    filled at 64 KiB and blocked the command forever."""
    out = tmp_path / "noisy.rec"
    code = "import os, sys\nsys.stderr.write('x' * 300_000)\nfor _ in range(100000): os.getpid()"
    r = _cli("record", "-o", str(out), "-F", "2000", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr[-500:]
    assert json.loads(out.read_text())["kernel_samples"] > 0
