"""Workloads: what a request does in the kernel and in user space (pure logic).

A request is a *template*: the virtual cache lines of kernel text (and rodata) it fetches, in
order, plus user-space work (reads of user data and compute time). Templates are built once from
the image, deterministically from the seed, and shipped to every node, so the same request fetches
the same virtual addresses wherever it runs.

**The built-in workloads are recordings** of real programs on a real kernel (`RECORDED`; package
data in numaemu/data/workloads/, each with the command that made it, the kernel it ran on, and
scripts/record_workloads.sh to make them again), replayed on the image in use by name
(`numaemu.model.replay`). ``--trace FILE`` replays a file the same way: a numaemu recording,
perf script output, or the old address lists (`parse_trace`).

**The hand-written tables are kept as the** ``synthetic-*`` **family** (``synthetic-db``,
``synthetic-fork``, ...), the "before" of results/workloads.md. In them the kernel is cut into
subsystems (`numaemu.model.subsystems`: from the symbols' names and link order), a syscall path
draws functions from the subsystems it touches, and within a subsystem a few functions are hot
and most are cold (a Zipf-like law, s = 1.1). The names below describe both families:

- ``getpid``: the smallest syscall: entry code and a few scheduler helpers.
- ``db``: an OLTP-like transaction: recvmsg, pread, futex, pwrite, fsync, sendmsg, epoll_wait,
  with a large text footprint across network, file, block, memory and scheduler paths; user work
  sized so that about a third of the time is spent in the kernel with a hot cache on 2s-xeon.
- ``compute``: mostly user compute, one small syscall per request.
- the x86 series' microbenchmarks (Kuzin, RFC 00/12, 2023-12-28, "Preliminary performance
  evaluation results"), one request per iteration of the benchmark's loop:
  ``fork`` (fork-1: one fork, timed from entry to exit of the call), ``fork1024`` (fork in a loop
  of 1024: each iteration also takes the parent's copy-on-write fault and runs the exit of a
  child, which the node's CPUs execute while the loop runs), ``mmap`` (mmap/munmap of one
  anonymous page), ``mmap_lock`` (the same with MAP_LOCKED: the page is populated, locked,
  then zapped and freed), ``open`` (open and close of /dev/null), ``kill`` (SIGUSR1 to a
  child, timed until its handler runs: the send, the wake-up, the delivery), ``mount`` (procfs
  mounted once). Their user work is tiny; what they do besides fetching kernel text (copying page
  tables, zeroing a page, waking an idle CPU) is charged as compute, the same under every policy.
- ``echo``: a TCP echo over loopback (one message, sent and received back), for the network
  stack;
- ``trace``: replays a file given with ``--trace`` (the host reads it, `numaemu.host.files.read_trace`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from numaemu.errors import UsageError
from numaemu.model.arrays import F64, I64, Ints
from numaemu.model.image import LINE_SIZE, KernelImage
from numaemu.model.layout import package_text
from numaemu.model.recording import Recording, detect_format, parse_perf_script, parse_recording
from numaemu.model.replay import reconstruct
from numaemu.model.subsystems import SUBSYSTEMS, by_index, classify

__all__ = ["MICROBENCHMARKS", "RECORDED", "WORKLOADS", "TraceText", "Workload", "build_workload", "check_workload", "parse_trace", "recorded", "replay"]

RECORDED = ("getpid", "db", "compute", "fork", "fork1024", "mmap", "mmap_lock", "open", "kill", "mount", "echo")
SYNTHETIC = ("getpid", "db", "compute", "fork", "fork1024", "mmap", "mmap_lock", "open", "kill", "mount")
WORKLOADS = RECORDED + tuple(f"synthetic-{n}" for n in SYNTHETIC) + ("trace",)

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
    # The paths of the x86 series' microbenchmarks, from the 6.5 sources (the series' baseline).
    # kernel/ (fork, exit, signal, cred, pid), arch/x86 and security/ have no subsystem of their
    # own here and count as "other"; the maple tree, idr and string helpers are "lib".
    # clone -> kernel_clone -> copy_process: dup_task_struct, copy_creds, copy_files/copy_fs
    # (fs), copy_sighand/copy_signal, copy_mm -> dup_mmap (vm_area_dup, anon_vma_fork,
    # copy_page_range down to copy_present_pte), alloc_pid, cgroup and perf fork hooks,
    # sched_fork and wake_up_new_task (select_task_rq_fair, enqueue_task_fair).
    "fork": {"other": 70, "mm": 90, "sched": 30, "fs": 12, "lib": 25},
    # A write to a page the last fork write-protected: exc_page_fault -> handle_mm_fault ->
    # do_wp_page -> wp_page_copy (folio alloc, memcg charge, rmap, TLB flush).
    "cow_fault": {"mm": 30, "lib": 4, "other": 4},
    # A child that exits at once: do_exit -> exit_mm -> exit_mmap (unmap_vmas, free_pgtables,
    # release_pages), exit_files, exit_notify (SIGCHLD to the parent), the context switches.
    "exit": {"other": 45, "mm": 70, "fs": 18, "sched": 20, "lib": 10},
    # vm_mmap_pgoff -> security_mmap_file, do_mmap -> get_unmapped_area (maple tree walk),
    # mmap_region (vma_merge or vm_area_alloc + vma_link), perf_event_mmap.
    "mmap": {"mm": 40, "lib": 12, "other": 10},
    # do_vmi_munmap -> unmap_region (tlb_gather_mmu, unmap_vmas of nothing, free_pgtables).
    "munmap": {"mm": 35, "lib": 10, "other": 4},
    # MAP_LOCKED: mm_populate -> __get_user_pages -> handle_mm_fault -> do_anonymous_page
    # (vma_alloc_folio, clear_page, memcg charge, mlock_new_folio, set_pte_at).
    "mmap_populate": {"mm": 60, "lib": 6, "other": 6},
    # munmap of a locked, populated page: the plain path plus zap_pte_range, munlock_folio,
    # folio_remove_rmap, tlb_finish_mmu -> release_pages -> free_unref_page, memcg uncharge.
    "munmap_populated": {"mm": 65, "lib": 12, "other": 4},
    # do_sys_openat2: getname, get_unused_fd_flags, path_openat (alloc_empty_file,
    # link_path_walk over "dev" and "null": lookup_fast, inode_permission, mount crossing),
    # do_dentry_open -> chrdev_open -> memory_open (drivers/char/mem.c), the LSM hooks, fd_install.
    "open": {"fs": 55, "other": 12, "lib": 8, "mm": 4, "drivers": 3},
    # close_fd -> filp_close -> fput; task_work_run -> __fput (fsnotify, locks, dput, mntput).
    "close": {"fs": 25, "other": 5, "mm": 3, "lib": 2},
    # kill_pid_info -> check_kill_permission (LSM), __send_signal_locked (sigqueue_alloc),
    # complete_signal -> signal_wake_up -> try_to_wake_up, the IPI to the child's CPU.
    "kill": {"other": 30, "sched": 20, "lib": 4, "mm": 3},
    # The child's side: the IPI, schedule() into the child, return from pause() through
    # exit_to_user_mode -> get_signal -> handle_signal -> x64_setup_rt_frame (FPU state saved).
    "signal_deliver": {"other": 30, "sched": 20, "mm": 3, "lib": 3},
    # path_mount -> do_new_mount: get_fs_type, fs_context_for_mount, option parsing,
    # vfs_get_tree -> proc_get_tree -> sget_fc -> alloc_super (list_lru, shrinker, percpu rwsem),
    # proc_fill_super (root inode and dentries, self and thread-self), vfs_create_mount
    # (alloc_vfsmnt: ida, percpu counters), do_add_mount -> graft_tree, the LSM sb hooks.
    "mount": {"fs": 140, "mm": 25, "other": 35, "lib": 15, "sched": 6},
}
ENTRY_FUNCTIONS = 6  # entry_SYSCALL_64, do_syscall_64, syscall_enter/exit work, ...


@dataclass(frozen=True)
class RequestMix:
    syscalls: tuple[str, ...]  # kernel paths in order; each one starts with the entry code
    variants: int  # distinct templates (branches taken differently)
    user_accesses: int  # user-data cache-line reads per request (always from memory)
    compute_ns: float  # user compute per request, emulated (and, for the microbenchmarks,
    # the kernel's own data work, which costs the same wherever the text is)


MIXES: dict[str, RequestMix] = {
    "getpid": RequestMix(("getpid",), 1, 0, 0.0),
    "db": RequestMix(
        ("recvmsg", "pread", "futex", "pread", "pwrite", "fsync", "futex", "sendmsg", "epoll_wait"),
        48,
        1400,
        180_000.0,
    ),
    "compute": RequestMix(("read_small",), 4, 200, 200_000.0),
    # The x86 series' microbenchmarks (see the module docstring). A loop iteration's user work is
    # a few tens of ns (the loop, the glibc wrapper, a timestamp); the rest of compute_ns is the
    # kernel's data work at hot-cache cost, an estimate written down here, not fitted:
    # fork: copy ~400 PTEs of a small process and take a reference on each page (~10 ns each),
    # allocate and clear task_struct, kernel stack, mm and page-table pages (~2 us).
    "fork": RequestMix(("fork",), 2, 0, 6_000.0),
    # fork1024: fork, plus the parent's COW copy of one page (~0.5 us) and the child's exit
    # (zap ~400 PTEs, drop the page references, free page tables: ~5 us). More templates: with
    # up to 1024 children alive, pid allocation, cgroup accounting and the scheduler take
    # different branches from one iteration to the next.
    "fork1024": RequestMix(("fork", "cow_fault", "exit"), 4, 0, 11_500.0),
    # mmap: a vma and maple-tree nodes from slab, nothing touched: ~0.3 us.
    "mmap": RequestMix(("mmap", "munmap"), 2, 0, 300.0),
    # mmap_lock: also clear the page (4 KiB) and the LRU/mlock/memcg bookkeeping: ~1 us.
    "mmap_lock": RequestMix(("mmap", "mmap_populate", "munmap_populated"), 2, 0, 1_000.0),
    # open: dentry and inode lookups in a hot dcache, a struct file from slab: ~0.3 us.
    "open": RequestMix(("open", "close"), 2, 0, 300.0),
    # kill: the IPI's delivery and the child's CPU waking from a shallow idle state (~1.5 us),
    # the sigqueue and the signal frame (FPU state, ~1 KiB on AVX) written: ~0.5 us.
    "kill": RequestMix(("kill", "signal_deliver"), 2, 0, 2_000.0),
    # mount: a superblock, root inode and dentries, percpu counters, list_lru per node: ~3 us.
    "mount": RequestMix(("mount",), 2, 0, 3_000.0),
}
MICROBENCHMARKS = ("fork", "fork1024", "mmap", "mmap_lock", "open", "kill", "mount")
ZIPF_S = 1.1  # popularity exponent inside a subsystem
TRACE_MAX_REQUEST = 4096  # a trace request ends at a blank line or after this many addresses


@dataclass(frozen=True, eq=False)
class Workload:
    name: str
    lines: I64  # virtual line numbers (image offset // 64), all templates concatenated
    starts: I64  # start of each template in `lines`
    lengths: I64  # length of each template
    user_accesses: int
    compute_ns: float
    weights: F64 | None = None  # each template's share of requests; None: all alike
    report: dict[str, Any] | None = None  # a replayed recording's mapping and entries (replay.py)
    # Forks a microsecond of the recorded program's kernel time, measured on the recording host
    # (data/workloads/calls.json, scripts/measure_calls.py); None: not measured (not charged).
    forks_per_kernel_us: float | None = None

    @property
    def n_templates(self) -> int:
        return len(self.starts)

    @property
    def cdf(self) -> F64 | None:
        """Cumulative template weights, for `numaemu.model.tasks.plan_tasks` (None: uniform)."""
        return None if self.weights is None else np.cumsum(self.weights)

    def template(self, i: int) -> I64:
        return self.lines[self.starts[i] : self.starts[i] + self.lengths[i]]

    def gather(self, templates: Ints) -> I64:
        """The lines of the given templates, concatenated in order (vectorised)."""
        lens = self.lengths[templates]
        total = int(lens.sum())
        first = np.repeat(self.starts[templates] - (np.cumsum(lens) - lens), lens)
        return self.lines[first + np.arange(total)]

    def footprint_bytes(self) -> int:
        return int(len(np.unique(self.lines))) * LINE_SIZE

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "templates": self.n_templates,
            "mean_fetches_per_request": float(self.lengths.mean()),
            "text_footprint_bytes": self.footprint_bytes(),
            "user_accesses": self.user_accesses,
            "compute_ns": self.compute_ns,
            **({"recording": self.report} if self.report is not None else {}),
        }


def _subsystem_groups(image: KernelImage) -> dict[str, I64]:
    """The indices into ``image.functions`` of each subsystem's functions, in link order: from
    the symbols' names where the image has them, else cut by index."""
    codes = by_index(len(image.functions))
    if image.symbols is not None:
        text = image.section(".text")
        addr = image.symbols.addresses
        named = np.searchsorted(addr, image.functions.astype(np.uint64) + np.uint64(text.vaddr - text.offset))
        found = (named < len(addr)) & (addr[np.minimum(named, len(addr) - 1)] == image.functions.astype(np.uint64) + np.uint64(text.vaddr - text.offset))
        if found.mean() > 0.5:
            codes = classify([image.symbols.names[int(i)] if ok else "" for i, ok in zip(named, found, strict=True)])
    return {name: np.flatnonzero(codes == i) for i, name in enumerate(SUBSYSTEMS)}


def _function_lines(image: KernelImage, funcs: Ints) -> I64:
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


def check_workload(name: str, has_trace: bool) -> None:
    """The rules for ``--workload`` and ``--trace`` together, checked before any file is read."""
    if name not in WORKLOADS:
        raise UsageError("--workload", f"unknown workload '{name}'; choose one of {', '.join(WORKLOADS)}")
    if name == "trace" and not has_trace:
        raise UsageError("--trace", "the trace workload needs --trace FILE")
    if name != "trace" and has_trace:
        raise UsageError("--trace", f"--trace is only for --workload trace, not {name}")


def build_workload(name: str, image: KernelImage, seed: int = 0, trace: TraceText | None = None) -> Workload:
    """The workload `name` on `image`, deterministic in `seed`; ``trace`` replays `trace`."""
    check_workload(name, trace is not None)
    if trace is not None:
        return parse_trace(trace, image, seed)
    if name in RECORDED:
        return dataclasses.replace(replay(recorded(name), image, name, seed), forks_per_kernel_us=fork_rate(name))
    return _synthetic(name.removeprefix("synthetic-"), name, image, seed)


@cache
def recorded(name: str) -> Recording:
    """The shipped recording of the built-in workload `name` (numaemu/data/workloads/), read
    once per process."""
    path = f"data/workloads/{name}.rec"
    return parse_recording(package_text(path), f"numaemu/{path}")


@cache
def _calls() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(package_text("data/workloads/calls.json"))
    return doc


def fork_rate(name: str) -> float | None:
    """Forks a kernel microsecond of the built-in workload `name`'s program, as measured
    (data/workloads/calls.json: forks an iteration / kernel us an iteration); None if unknown."""
    call = _calls()["calls"].get(name)
    if not call or not call["kernel_us_per_iteration"]:
        return None
    rate: float = call["forks_per_iteration"] / call["kernel_us_per_iteration"]
    return rate


def replay(rec: Recording, image: KernelImage, name: str, seed: int = 0) -> Workload:
    """`rec` reconstructed as requests on `image` (`numaemu.model.replay.reconstruct`)."""
    r = reconstruct(rec, image, seed)
    return _pack(name, r.templates, 0, r.compute_ns, r.weights, r.report)


def _synthetic(mix_name: str, name: str, image: KernelImage, seed: int) -> Workload:
    """A hand-written table (`SYSCALLS`, `MIXES`) drawn on `image`."""
    mix = MIXES[mix_name]
    groups = _subsystem_groups(image)
    rng = np.random.default_rng([seed, 0x776B6C64])  # "wkld"
    entry = groups["entry"][:ENTRY_FUNCTIONS]
    templates: list[I64] = []
    for _variant in range(mix.variants):
        funcs: list[I64] = []
        for call in mix.syscalls:
            funcs.append(entry)
            for subsystem, count in SYSCALLS[call].items():
                group = groups[subsystem]
                # Zipf-like rank, then a fixed per-subsystem shuffle so hot functions are spread out.
                rank = np.minimum(rng.zipf(ZIPF_S, count) - 1, len(group) - 1)
                perm = np.random.default_rng([seed, int(group[0])]).permutation(len(group))
                funcs.append(group[perm[rank]])
        templates.append(_function_lines(image, np.concatenate(funcs)))
    return _pack(name, templates, mix.user_accesses, mix.compute_ns)


def _pack(name: str, templates: Sequence[I64], user_accesses: int, compute_ns: float, weights: F64 | None = None, report: dict[str, Any] | None = None) -> Workload:
    lengths = np.array([len(t) for t in templates], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return Workload(name, np.concatenate(templates).astype(np.int64), starts, lengths, user_accesses, compute_ns, weights, report)


_ADDR = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


@dataclass(frozen=True)
class TraceText:
    """A trace file's text, and the file's name for messages."""

    source: str
    text: str


def parse_trace(trace: TraceText, image: KernelImage, seed: int = 0) -> Workload:
    """A ``--trace`` file, in whichever format its content shows (`detect_format`): a numaemu
    recording or perf script output, replayed (`replay`), or an address list (`parse_addresses`)."""
    kind = detect_format(trace.text)
    if kind == "recording":
        return replay(parse_recording(trace.text, trace.source), image, "trace", seed)
    if kind == "perf":
        return replay(parse_perf_script(trace.text, trace.source), image, "trace", seed)
    return parse_addresses(trace, image)


def parse_addresses(trace: TraceText, image: KernelImage) -> Workload:
    """The old address lists: one virtual address a line (hex with 0x, or decimal); ``#``
    starts a comment; a blank line ends a request (so does every 4096th address)."""
    path, text = trace.source, trace.text
    spans = [(s.vaddr, s.vaddr + s.size) for s in image.sections]
    where = ", ".join(f"{s.name} {s.vaddr:#x}-{s.vaddr + s.size:#x}" for s in image.sections)
    templates: list[I64] = []
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
        hexa = item[:2].lower() == "0x"
        if len((item[2:] if hexa else item).lstrip("0")) > (16 if hexa else 20):  # int() refuses 4300+ digits
            raise UsageError("--trace", f"{path}:{lineno}: '{item[:24]}...' is not an address: longer than 64 bits")
        addr = int(item, 16 if hexa else 10)
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
