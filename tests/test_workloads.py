"""Tests for numaemu.model.workloads: request templates and trace files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from numaemu.errors import UsageError
from numaemu.host.files import load_trace, load_workload
from numaemu.model.image import KERNEL_BASE, LINE_SIZE, KernelImage, synthetic_image
from numaemu.model.subsystems import SUBSYSTEMS
from numaemu.model.workloads import (
    ENTRY_FUNCTIONS,
    MICROBENCHMARKS,
    MIXES,
    RECORDED,
    SYNTHETIC,
    SYSCALLS,
    TRACE_MAX_REQUEST,
    WORKLOADS,
    Workload,
    build_workload,
)

# The hand-written tables (the synthetic-* family) and the recorded workloads.
BUILT = ("synthetic-getpid", "synthetic-db", "synthetic-compute")
TABLES = tuple(f"synthetic-{n}" for n in SYNTHETIC)
MICRO = tuple(f"synthetic-{n}" for n in MICROBENCHMARKS)
ALL = TABLES + RECORDED
TEXT_END = KERNEL_BASE + 118_608  # synthetic_image(0.01): .text is 118,608 bytes
RODATA = KERNEL_BASE + (2 << 20)  # .rodata at the next 2 MiB, 60,950 bytes
RODATA_LINE = (2 << 20) // LINE_SIZE


@pytest.fixture(scope="module")
def image() -> KernelImage:
    img = synthetic_image(0.01)
    assert img.section(".text").size == TEXT_END - KERNEL_BASE
    assert img.section(".rodata").vaddr == RODATA
    return img


@pytest.fixture(scope="module")
def workloads(image) -> dict[str, Workload]:
    return {name: build_workload(name, image) for name in ALL}


def _where() -> str:
    return f".text {KERNEL_BASE:#x}-{TEXT_END:#x}, .rodata {RODATA:#x}-{RODATA + 60_950:#x}"


@pytest.mark.parametrize("name", ALL)
def test_deterministic(image, workloads, name: str) -> None:
    again = build_workload(name, image)
    w = workloads[name]
    assert again.name == w.name == name
    assert np.array_equal(again.lines, w.lines)
    assert np.array_equal(again.starts, w.starts)
    assert np.array_equal(again.lengths, w.lengths)


@pytest.mark.parametrize("name", ["synthetic-db", "db"])
def test_seed_changes_db(image, workloads, name) -> None:
    other = build_workload(name, image, seed=1)
    assert not np.array_equal(other.lines, workloads[name].lines)


@pytest.mark.parametrize("name", ALL)
def test_lines_inside_mapped_sections(image, workloads, name: str) -> None:
    w = workloads[name]
    assert w.lines.dtype == np.int64
    offsets = w.lines * LINE_SIZE
    inside = np.zeros(len(offsets), dtype=bool)
    for sec in image.sections:
        inside |= (offsets >= sec.offset) & (offsets < sec.offset + sec.size)
    assert inside.all()
    assert np.any(offsets < TEXT_END - KERNEL_BASE)
    # The tables read both sections (functions' bodies and their rodata tables); a recording
    # only text (cpu-clock samples where code runs, not what it reads).
    assert np.any(offsets >= RODATA - KERNEL_BASE) == name.startswith("synthetic-")


@pytest.mark.parametrize("name", ALL)
def test_templates_layout(workloads, name: str) -> None:
    w = workloads[name]
    assert w.n_templates == len(w.starts) == len(w.lengths)
    assert np.all(w.lengths > 0)
    assert w.starts[0] == 0
    assert np.array_equal(w.starts[1:], np.cumsum(w.lengths)[:-1])
    assert int(w.lengths.sum()) == len(w.lines)


def test_template_counts_and_user_work(workloads) -> None:
    got = {n: (workloads[n].n_templates, workloads[n].user_accesses, workloads[n].compute_ns) for n in BUILT}
    assert got == {"synthetic-getpid": (1, 0, 0.0), "synthetic-db": (48, 1400, 180_000.0), "synthetic-compute": (4, 200, 200_000.0)}


@pytest.mark.parametrize("name", ALL)
def test_gather_equals_concatenated_templates(workloads, name: str) -> None:
    w = workloads[name]
    rng = np.random.default_rng(5)
    picks = rng.integers(0, w.n_templates, 25)
    expected = np.concatenate([w.template(int(i)) for i in picks])
    assert np.array_equal(w.gather(picks), expected)
    assert np.array_equal(w.gather(np.array([0, 0])), np.concatenate([w.template(0)] * 2))
    assert len(w.gather(np.zeros(0, dtype=np.int64))) == 0


def test_db_footprint_much_larger_than_getpid(workloads) -> None:
    getpid, db, compute = (workloads[n].footprint_bytes() for n in BUILT)
    assert db > 10 * getpid
    assert getpid < compute < db
    assert workloads["synthetic-db"].lengths.mean() > 20 * workloads["synthetic-getpid"].lengths.mean()


def test_summary(workloads) -> None:
    w = workloads["synthetic-getpid"]
    assert w.summary() == {
        "name": "synthetic-getpid",
        "templates": 1,
        "mean_fetches_per_request": float(w.lengths[0]),
        "text_footprint_bytes": len(np.unique(w.lines)) * LINE_SIZE,
        "user_accesses": 0,
        "compute_ns": 0.0,
    }


def test_unknown_workload(image) -> None:
    names = ", ".join(WORKLOADS)
    with pytest.raises(UsageError, match=rf"^--workload: unknown workload 'nginx'; choose one of {names}$") as info:
        build_workload("nginx", image)
    assert info.value.parameter == "--workload"
    assert ("getpid", "db", "compute", *MICROBENCHMARKS, "echo") == RECORDED
    assert (*RECORDED, *(f"synthetic-{n}" for n in ("getpid", "db", "compute", *MICROBENCHMARKS)), "trace") == WORKLOADS


# The x86 series' microbenchmarks (Kuzin, RFC 00/12, 2023-12-28): their kernel paths and the small
# per-iteration work beside them.


def test_microbenchmark_mixes() -> None:
    got = {n: (MIXES[n].syscalls, MIXES[n].variants, MIXES[n].user_accesses, MIXES[n].compute_ns) for n in MICROBENCHMARKS}
    assert got == {
        "fork": (("fork",), 2, 0, 6_000.0),
        "fork1024": (("fork", "cow_fault", "exit"), 4, 0, 11_500.0),
        "mmap": (("mmap", "munmap"), 2, 0, 300.0),
        "mmap_lock": (("mmap", "mmap_populate", "munmap_populated"), 2, 0, 1_000.0),
        "open": (("open", "close"), 2, 0, 300.0),
        "kill": (("kill", "signal_deliver"), 2, 0, 2_000.0),
        "mount": (("mount",), 2, 0, 3_000.0),
    }


def test_microbenchmark_paths_touch_the_right_subsystems() -> None:
    known = set(SUBSYSTEMS)
    for name in MICROBENCHMARKS:
        for call in MIXES[name].syscalls:
            assert set(SYSCALLS[call]) <= known and all(n > 0 for n in SYSCALLS[call].values()), call
    # Memory-management calls stay out of the file, block, network and driver code...
    for call in ("mmap", "munmap", "mmap_populate", "munmap_populated", "cow_fault"):
        assert not set(SYSCALLS[call]) & {"fs", "block", "net", "drivers"}, call
        assert max(SYSCALLS[call], key=SYSCALLS[call].get) == "mm", call
    # ... open and mount are mostly VFS, and open of /dev/null reaches drivers/char/mem.c.
    assert max(SYSCALLS["open"], key=SYSCALLS["open"].get) == "fs" and SYSCALLS["open"]["drivers"] > 0
    assert max(SYSCALLS["mount"], key=SYSCALLS["mount"].get) == "fs"
    # A signal crosses the scheduler on both sides (the wake-up, the switch into the child).
    assert SYSCALLS["kill"]["sched"] > 0 and SYSCALLS["signal_deliver"]["sched"] > 0
    # MAP_LOCKED does more than a plain mapping, and unmapping a populated page more than an empty one.
    assert sum(SYSCALLS["munmap_populated"].values()) > sum(SYSCALLS["munmap"].values())


def test_microbenchmark_sizes(workloads) -> None:
    mean = {n: workloads[f"synthetic-{n}"].lengths.mean() for n in MICROBENCHMARKS}
    # A loop iteration of fork1024 is a fork plus a COW fault and a child's exit.
    assert mean["fork1024"] > 1.5 * mean["fork"]
    assert mean["mmap_lock"] > mean["mmap"]
    # Every path starts with the entry code: a request has at least that many functions' lines.
    for n in MICROBENCHMARKS:
        assert mean[n] > ENTRY_FUNCTIONS * len(MIXES[n].syscalls)
        assert workloads[f"synthetic-{n}"].n_templates == MIXES[n].variants
    # Small user work: compute under 12 us, no user-data reads (db: 180 us and 1400 reads).
    assert all(MIXES[n].compute_ns < 12_000 and MIXES[n].user_accesses == 0 for n in MICROBENCHMARKS)


def test_trace_workload_needs_a_file(image) -> None:
    with pytest.raises(UsageError, match=r"^--trace: the trace workload needs --trace FILE$") as info:
        build_workload("trace", image)
    assert info.value.parameter == "--trace"


def test_trace_file_only_for_trace_workload(image, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--trace: --trace is only for --workload trace, not db$") as info:
        load_workload("db", image, trace=tmp_path / "t")
    assert info.value.parameter == "--trace"


def _write(tmp_path: Path, text: str, name: str = "kernel.trace") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_trace_exact_lines(image, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# a kernel trace\n"
        "0xffffffff81000000\n"
        "0xFFFFFFFF81000041  # hex, upper case, same line as a comment\n"
        f"{KERNEL_BASE + 128}\n"  # decimal
        "\n"
        "\n"  # several blank lines end one request, never make an empty one
        "0XFFFFFFFF81200000\n"
        "   # a comment-only line does not end the request\n"
        f"  {TEXT_END - 1:#x}  \n"
        "\n",
    )
    w = load_trace(path, image)
    assert w.name == "trace"
    assert w.n_templates == 2
    assert w.template(0).tolist() == [0, 1, 2]
    assert w.template(1).tolist() == [RODATA_LINE, (TEXT_END - 1 - KERNEL_BASE) // LINE_SIZE]
    assert (w.user_accesses, w.compute_ns) == (0, 0.0)
    # Same result through load_workload (build_workload on the file's text).
    via = load_workload("trace", image, trace=path)
    assert np.array_equal(via.lines, w.lines) and np.array_equal(via.lengths, w.lengths)


def test_parse_trace_last_request_without_blank_line(image, tmp_path: Path) -> None:
    w = load_trace(_write(tmp_path, "0xffffffff81000000\n\n0xffffffff81000080"), image)
    assert [w.template(i).tolist() for i in range(w.n_templates)] == [[0], [2]]


def test_parse_trace_cuts_long_requests(image, tmp_path: Path) -> None:
    n = TRACE_MAX_REQUEST + 10
    text = "".join(f"{KERNEL_BASE + 64 * (i % 100):#x}\n" for i in range(n))
    w = load_trace(_write(tmp_path, text), image)
    assert w.lengths.tolist() == [TRACE_MAX_REQUEST, 10]
    assert w.lines.tolist() == [i % 100 for i in range(n)]


def test_parse_trace_missing_file(image, tmp_path: Path) -> None:
    path = tmp_path / "nope.trace"
    with pytest.raises(UsageError) as info:
        load_trace(path, image)
    assert str(info.value) == f"--trace: cannot read '{path}': No such file or directory"
    assert info.value.parameter == "--trace"


def test_parse_trace_directory(image, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_trace(tmp_path, image)
    assert str(info.value) == f"--trace: cannot read '{tmp_path}': Is a directory"


def test_parse_trace_binary_file(image, tmp_path: Path) -> None:
    path = tmp_path / "binary.trace"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UsageError) as info:
        load_trace(path, image)
    assert str(info.value).startswith(f"--trace: cannot read '{path}': ")
    assert "decode" in str(info.value)


@pytest.mark.parametrize("token", ["foo", "0x", "ffffffff81000000", "0xffffffff8100000g", "-5", "1e9", "0x10 0x20"])
def test_parse_trace_bad_token(image, tmp_path: Path, token: str) -> None:
    path = _write(tmp_path, f"0xffffffff81000000\n# comment\n{token}\n")
    with pytest.raises(UsageError) as info:
        load_trace(path, image)
    assert str(info.value) == f"--trace: {path}:3: '{token}' is not an address (hex with 0x, or decimal)"


@pytest.mark.parametrize(
    "addr",
    [
        KERNEL_BASE - 1,
        TEXT_END,  # first byte after .text
        RODATA - 1,  # last byte of the gap
        RODATA + 60_950,  # first byte after .rodata
        0,
    ],
)
def test_parse_trace_address_outside_image(image, tmp_path: Path, addr: int) -> None:
    path = _write(tmp_path, f"\n0xffffffff81000000\n{addr:#x}\n")
    with pytest.raises(UsageError) as info:
        load_trace(path, image)
    assert str(info.value) == f"--trace: {path}:3: address {addr:#x} is outside the image ({_where()})"


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n   \n# more\n"])
def test_parse_trace_empty_file(image, tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_trace(path, image)
    assert str(info.value) == f"--trace: {path}: no addresses in the file"


def test_parse_trace_zero_padded_decimal(image, tmp_path: Path) -> None:
    # Zero-padded decimal is decimal (not octal, not an error).
    path = _write(tmp_path, "018446744071578845184\n")  # == 0xffffffff81000000
    assert load_trace(path, image).lines.tolist() == [0]
    path = _write(tmp_path, "0123\n")
    with pytest.raises(UsageError, match=r"^--trace: .*address 0x7b is outside the image"):
        load_trace(path, image)
