"""Workloads: what a request does in the kernel and in user space (pure logic).

A request is a *template*: the virtual cache lines of kernel text and rodata it fetches, in
order, plus user-space work (reads of user data and compute time). Templates are built once from
the image, deterministically from the seed, and shipped to every node, so the same request fetches
the same virtual addresses wherever it runs.

The synthetic image has no symbols, so the kernel is cut into subsystems in link order
(entry, sched, mm, fs, block, net, drivers, lib, other), with shares close to a distro vmlinux.
A syscall path draws functions from the subsystems it touches; within a subsystem a few functions
are hot and most are cold (a Zipf-like law), so different requests share their hot paths and the
text footprint grows with the variety of requests, as it does in the kernel.

- ``getpid``: the smallest syscall: entry code and a few scheduler helpers.
- ``db``: an OLTP-like transaction: recvmsg, pread, futex, pwrite, fsync, sendmsg, epoll_wait,
  with a large text footprint across network, file, block, memory and scheduler paths; user work
  sized so that about a third of the time is spent in the kernel with a hot cache on 2s-xeon.
- ``compute``: mostly user compute, one small syscall per request.
- ``trace``: replays virtual addresses from a file (`parse_trace`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError
from .image import LINE_SIZE, KernelImage

__all__ = ["WORKLOADS", "Workload", "build_workload", "parse_trace"]

WORKLOADS = ("getpid", "db", "compute", "trace")

# Link-order share of .text by subsystem (rounded from a 6.1 distro vmlinux's symbol map).
SUBSYSTEMS: tuple[tuple[str, float], ...] = (
    ("entry", 0.01),
    ("sched", 0.06),
    ("mm", 0.10),
    ("fs", 0.14),
    ("block", 0.05),
    ("net", 0.18),
    ("drivers", 0.36),
    ("lib", 0.05),
    ("other", 0.05),
)

# Functions each syscall path runs, by subsystem; the entry path is always added.
SYSCALLS: dict[str, dict[str, int]] = {
    "getpid": {"sched": 2},
    "recvmsg": {"net": 55, "sched": 6, "mm": 8, "lib": 6},
    "sendmsg": {"net": 65, "drivers": 28, "sched": 6, "lib": 6},
    "pread": {"fs": 55, "mm": 25, "block": 15, "drivers": 18, "lib": 5},
    "pwrite": {"fs": 60, "mm": 22, "block": 20, "drivers": 18, "lib": 5},
    "fsync": {"fs": 35, "block": 28, "drivers": 25, "sched": 8},
    "futex": {"sched": 22, "lib": 3},
    "epoll_wait": {"fs": 12, "sched": 16, "net": 8},
    "read_small": {"fs": 14, "mm": 4, "lib": 2},
}
ENTRY_FUNCTIONS = 6  # entry_SYSCALL_64, do_syscall_64, syscall_enter/exit work, ...


@dataclass(frozen=True)
class RequestMix:
    syscalls: tuple[str, ...]
    variants: int  # distinct templates (branches taken differently)
    user_accesses: int  # user-data cache-line reads per request (always from memory)
    compute_ns: float  # user compute per request, emulated


MIXES: dict[str, RequestMix] = {
    "getpid": RequestMix(("getpid",), 1, 0, 0.0),
    "db": RequestMix(
        ("recvmsg", "pread", "futex", "pread", "pwrite", "fsync", "futex", "sendmsg", "epoll_wait"),
        48,
        1400,
        180_000.0,
    ),
    "compute": RequestMix(("read_small",), 4, 200, 200_000.0),
}
ZIPF_S = 1.1  # popularity exponent inside a subsystem
TRACE_MAX_REQUEST = 4096  # a trace request ends at a blank line or after this many addresses


@dataclass(frozen=True, eq=False)
class Workload:
    name: str
    lines: np.ndarray  # int64 virtual line numbers (image offset // 64), all templates concatenated
    starts: np.ndarray  # int64 start of each template in `lines`
    lengths: np.ndarray  # int64 length of each template
    user_accesses: int
    compute_ns: float

    @property
    def n_templates(self) -> int:
        return len(self.starts)

    def template(self, i: int) -> np.ndarray:
        return self.lines[self.starts[i] : self.starts[i] + self.lengths[i]]

    def gather(self, templates: np.ndarray) -> np.ndarray:
        """The lines of the given templates, concatenated in order (vectorised)."""
        lens = self.lengths[templates]
        total = int(lens.sum())
        first = np.repeat(self.starts[templates] - (np.cumsum(lens) - lens), lens)
        return self.lines[first + np.arange(total)]

    def footprint_bytes(self) -> int:
        return int(len(np.unique(self.lines))) * LINE_SIZE

    def summary(self) -> dict:
        return {
            "name": self.name,
            "templates": self.n_templates,
            "mean_fetches_per_request": float(self.lengths.mean()),
            "text_footprint_bytes": self.footprint_bytes(),
            "user_accesses": self.user_accesses,
            "compute_ns": self.compute_ns,
        }


def _subsystem_ranges(n_functions: int) -> dict[str, tuple[int, int]]:
    bounds = np.round(np.cumsum([0.0] + [share for _, share in SUBSYSTEMS]) * n_functions).astype(int)
    return {name: (int(bounds[i]), int(bounds[i + 1])) for i, (name, _) in enumerate(SUBSYSTEMS)}


def _function_lines(image: KernelImage, funcs: np.ndarray) -> np.ndarray:
    """Every line each function spans, plus one rodata line it reads, in call order."""
    start = image.functions[funcs] // LINE_SIZE
    end = (image.functions[funcs] + image.function_sizes[funcs] - 1) // LINE_SIZE
    n = end - start + 1
    body = np.repeat(start - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    ro = image.section(".rodata")
    ro_first, ro_lines = ro.offset // LINE_SIZE, ro.size // LINE_SIZE
    # A fixed rodata line per function (its constant tables), from a multiplicative hash.
    ro_line = ro_first + (funcs.astype(np.uint64) * np.uint64(2654435761) % np.uint64(ro_lines)).astype(np.int64)
    pos = np.cumsum(n)  # insert each function's rodata line after its body
    return np.insert(body, pos, ro_line)


def build_workload(name: str, image: KernelImage, seed: int = 0, trace: Path | None = None) -> Workload:
    if name not in WORKLOADS:
        raise UsageError("--workload", f"unknown workload '{name}'; choose one of {', '.join(WORKLOADS)}")
    if name == "trace":
        if trace is None:
            raise UsageError("--trace", "the trace workload needs --trace FILE")
        return parse_trace(trace, image)
    if trace is not None:
        raise UsageError("--trace", f"--trace is only for --workload trace, not {name}")
    mix = MIXES[name]
    ranges = _subsystem_ranges(len(image.functions))
    rng = np.random.default_rng([seed, 0x776B6C64])  # "wkld"
    entry_lo, _ = ranges["entry"]
    entry = np.arange(entry_lo, entry_lo + ENTRY_FUNCTIONS)
    templates: list[np.ndarray] = []
    for _variant in range(mix.variants):
        funcs: list[np.ndarray] = []
        for call in mix.syscalls:
            funcs.append(entry)
            for subsystem, count in SYSCALLS[call].items():
                lo, hi = ranges[subsystem]
                # Zipf-like rank, then a fixed per-subsystem shuffle so hot functions are spread out.
                rank = np.minimum(rng.zipf(ZIPF_S, count) - 1, hi - lo - 1)
                perm = np.random.default_rng([seed, lo]).permutation(hi - lo)
                funcs.append(lo + perm[rank])
        templates.append(_function_lines(image, np.concatenate(funcs)))
    return _pack(name, templates, mix.user_accesses, mix.compute_ns)


def _pack(name: str, templates: Sequence[np.ndarray], user_accesses: int, compute_ns: float) -> Workload:
    lengths = np.array([len(t) for t in templates], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return Workload(name, np.concatenate(templates).astype(np.int64), starts, lengths, user_accesses, compute_ns)


_ADDR = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


def parse_trace(path: Path, image: KernelImage) -> Workload:
    """A trace file: one virtual address a line (hex with 0x, or decimal); ``#`` starts a comment;
    a blank line ends a request (so does every 4096th address)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("--trace", f"cannot read '{path}': {exc.strerror if isinstance(exc, OSError) else exc}") from None
    spans = [(s.vaddr, s.vaddr + s.size) for s in image.sections]
    where = ", ".join(f"{s.name} {s.vaddr:#x}-{s.vaddr + s.size:#x}" for s in image.sections)
    templates: list[np.ndarray] = []
    current: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            if current and not raw.strip():
                templates.append(np.array(current, dtype=np.int64))
                current = []
            continue
        if not _ADDR.match(item):
            raise UsageError("--trace", f"{path}:{lineno}: '{item}' is not an address (hex with 0x, or decimal)")
        addr = int(item, 16) if item[:2].lower() == "0x" else int(item, 10)
        if not any(lo <= addr < hi for lo, hi in spans):
            raise UsageError("--trace", f"{path}:{lineno}: address {addr:#x} is outside the image ({where})")
        current.append((addr - image.base) // LINE_SIZE)
        if len(current) == TRACE_MAX_REQUEST:
            templates.append(np.array(current, dtype=np.int64))
            current = []
    if current:
        templates.append(np.array(current, dtype=np.int64))
    if not templates:
        raise UsageError("--trace", f"{path}: no addresses in the file")
    return _pack("trace", templates, 0, 0.0)
