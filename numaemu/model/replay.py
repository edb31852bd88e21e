"""From recorded kernel samples to requests on an image (pure): the reconstruction.

perf's cpu-clock samples say where the kernel was, every 250 us or so, with the callchain that
led there; a request in numaemu is the ordered list of text lines one kernel entry fetches. The
steps between the two, and what each assumes:

1. **Map every frame onto the image by name.** ``name+0xoff`` becomes the image's function
   ``name`` at that offset, so a recording made on one kernel replays on another; a name the
   image lacks is tried once more without the parts that differ between builds (`base_name`).
   A function the image still lacks gets a **stand-in**: a region of the recorded size (the
   recording kernel's, from its /proc/kallsyms; else the largest offset seen) starting at a
   function of the same subsystem (`numaemu.model.subsystems`, from the name), chosen by a hash of
   the name so that it is the same on every run (`numaemu.model.target_map`). A frame perf printed as a bare address maps by address when the address is
   in the image. The report counts samples mapped wholly by name, and warns below 90%.
2. **Split samples by kernel entry.** The innermost entry stub on the chain (``entry_SYSCALL_64``,
   ``asm_exc_page_fault``, ``asm_sysvec_*``, ``ret_from_fork``) opens the entry; the first frame
   under it past the dispatch code (``do_syscall_64``, ``x64_sys_call``, the exit work) names it:
   ``__x64_sys_getpid``, ``exc_page_fault``, ``sysvec_apic_timer_interrupt``. The stub and the
   dispatch code are the entry's **plumbing**, fetched by every request of that entry class; a
   sample that stops in them (cpu-clock puts many there: the timer fires on return to user space)
   adds lines to the plumbing and names no entry.
3. **Profile each entry.** A function's lines run from its start (code runs forward from the
   entry; a call's return address shows where the caller got to): the footprint reaches the
   furthest offset seen in it, and one invocation, on average, twice the mean line of the samples
   that stop in it (they fall uniformly in the lines it ran); each request draws its reach
   uniformly between the two bounds that give that mean. Its probability of being on an entry's path is its inclusive sample share divided by
   the share it would have were it on every path, time being taken as proportional to lines:
   ``p_f = min(1, (c_f / N) / (L_f / L_root))``, with ``c_f`` the entry's samples with ``f`` on the
   chain, ``N`` all of them, and ``L`` the lines of a function and everything seen under it.
   A function is taken only when its most frequent caller is (``p_f / p_caller``), so a path
   is not cut in the middle.
4. **Generate requests.** An entry's share of requests is its samples over its expected lines
   (a short syscall sampled as often as a long one ran more often), the lines of an entry seen
   in few samples shrunk towards the mean (`PRIOR_SAMPLES`). Each entry gets up to
   `MAX_VARIANTS` templates, drawn from its profile; tasks pick templates with these weights.
   The recorded user-space share becomes compute per request, at the hot-cache cost of the
   kernel lines (`HIT_NS` a line): the recording's user:kernel time ratio, played by the model.

What it cannot see: data accesses (cpu-clock samples text), lines a function fetches past its
furthest sampled offset or skips before it, and the order of entries beyond their mix. Its
accuracy against a known truth is measured in tests/test_replay.py and results/reconstruction.md.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numaemu.model.arrays import F64, I64
from numaemu.model.image import LINE_SIZE, KernelImage
from numaemu.model.recording import Frame, Recording
from numaemu.model.subsystems import OTHER, SUBSYSTEMS, subsystem_of_name
from numaemu.model.target_map import TargetMap, base_name, standin_start, subsystem_of, target_map

__all__ = ["ENTRY_STUBS", "DISPATCH", "MAX_VARIANTS", "NAME_SHARE_WARNING", "Reconstruction", "reconstruct"]

# Entry stubs, innermost first wins (arch/x86/entry/entry_64.S, idtentry.h's asm_* stubs; arm64's
# el0_*/el1_* handlers in arch/arm64/kernel/entry-common.c).
# Retpoline and return thunks sit between the dispatch and the syscall on a chain; not entries.
THUNKS = ("__x86_indirect_", "__x86_return_thunk", "srso_", "retbleed_", "its_return_thunk")
ENTRY_STUBS = ("entry_SYSCALL", "entry_INT80", "entry_SYSENTER", "asm_", "ret_from_fork", "el0t_", "el1h_", "el0_svc", "el0_da", "el0_ia", "el1_interrupt", "el0_interrupt")
# Dispatch and the common entry/exit work (kernel/entry/common.c, arch/x86/entry/common.c and
# syscall_64.c): every entry of the class passes through them.
DISPATCH = frozenset(
    (
        "do_syscall_64", "x64_sys_call", "do_int80_syscall_32", "__do_fast_syscall_32", "do_fast_syscall_32", "do_SYSENTER_32",
        "syscall_enter_from_user_mode", "syscall_exit_to_user_mode", "syscall_exit_to_user_mode_prepare", "syscall_exit_work", "syscall_trace_enter",
        "exit_to_user_mode_prepare", "exit_to_user_mode_loop", "irqentry_enter", "irqentry_exit", "irqentry_exit_to_user_mode", "irqentry_enter_from_user_mode",
        "__irq_exit_rcu", "irq_exit_rcu", "invoke_syscall", "el0_svc_common", "do_el0_svc", "el0_svc_handler", "fpregs_restore_userregs", "switch_fpu_return",
        "restore_fpregs_from_fpstate",
    )
)
MAX_VARIANTS = 16
TEMPLATE_BUDGET = 256  # templates in all, shared out by the entries' request shares
NAME_SHARE_WARNING = 0.90
PRIOR_SAMPLES = 5  # pseudo-samples of the mean entry length an entry's own length is shrunk with
NO_ENTRY = "(no entry stub on the chain)"


@dataclass
class _Fn:
    """One function of the image as the recording reaches it."""

    start: int  # offset from the image base
    size: int
    how: str  # "name", "stand-in", "address"
    max_offset: int = 0
    max_call: int = -1  # the furthest offset seen as a caller's (a return address)
    leaf_lines: float = 0.0  # sum of the lines (from the start) of the samples that stop here
    leaf_n: int = 0

    def line_at(self, offset: int) -> int:
        """The line, counted from the function's first, of `offset` (within the function)."""
        return (self.start + min(offset, self.size - 1)) // LINE_SIZE - self.start // LINE_SIZE

    @property
    def max_lines(self) -> int:
        """Lines from the start to the furthest offset seen: every line some invocation ran."""
        return self.line_at(self.max_offset) + 1

    @property
    def mean_lines(self) -> float:
        """The mean lines an invocation runs. Samples that stop in a function fall uniformly in
        the lines it ran, so their mean line is half its reach: 2 x mean + 1 (at least as far as
        its furthest call, at most the furthest line seen)."""
        if not self.leaf_n:
            return float(self.max_lines)
        need = self.line_at(self.max_call) + 1 if self.max_call >= 0 else 1
        return float(min(self.max_lines, max(need, 2 * self.leaf_lines / self.leaf_n + 1)))

    def lines(self, hi: int, reach: int | None = None) -> I64:
        """The first `reach` lines (default: `max_lines`), within the text (below `hi`)."""
        first = self.start // LINE_SIZE
        n = self.max_lines if reach is None else reach
        return np.arange(first, min(first + max(1, n), max(first + 1, -(-hi // LINE_SIZE))), dtype=np.int64)

    def draw_reach(self, rng: np.random.Generator, calls: bool) -> int:
        """One invocation's reach: uniform between the mean's mirror and the furthest line seen
        (so its mean is `mean_lines`), past the furthest call when a callee was taken."""
        hi = self.max_lines
        lo = max(1, round(2 * self.mean_lines - hi), self.line_at(self.max_call) + 1 if calls and self.max_call >= 0 else 1)
        return int(rng.integers(min(lo, hi), hi + 1))


@dataclass
class _Entry:
    key: str
    cls: str
    samples: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    below: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    callers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    depth: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """Templates, their weights, and what the mapping and the split found."""

    templates: tuple[I64, ...]
    weights: F64
    compute_ns: float
    report: dict[str, Any]


def _split(chain: tuple[Frame, ...]) -> tuple[str, str | None, int]:
    """(entry class, entry key or None for plumbing only, index of the stub or len(chain))."""
    stub = next((i for i, f in enumerate(chain) if f.name is not None and f.name.startswith(ENTRY_STUBS)), None)
    if stub is None:
        root = chain[-1]
        return NO_ENTRY, root.name or root.text(), len(chain)
    cls = chain[stub].name or "?"
    for f in reversed(chain[:stub]):
        if f.name is None or f.name not in DISPATCH and not f.name.startswith(THUNKS):
            return cls, f.name or f.text(), stub
    return cls, None, stub


def reconstruct(rec: Recording, image: KernelImage, seed: int = 0, hit_ns: float = 4.0) -> Reconstruction:
    """`rec`'s samples as weighted request templates on `image` (the module docstring's steps)."""
    tm = target_map(image)
    fns: dict[str, _Fn] = {}
    counts = {"name": 0, "stand-in": 0, "address": 0}
    frame_counts = [0, 0]  # frames mapped by name, all frames (weighted by samples)

    def resolve(f: Frame, leaf: bool, n: int) -> tuple[str, str]:
        """(function id, how mapped) of a frame, recording its offset (a leaf's, `n` samples)."""
        if f.name is None:
            off = int(f.address or 0) - image.base
            fid = f"{f.address:#x}"
            if fid not in fns:
                inside = tm.text_lo <= off < tm.text_hi
                fns[fid] = _Fn(off if inside else standin_start(tm, fid, OTHER), LINE_SIZE, "address" if inside else "stand-in")
            fns[fid].leaf_n += n if leaf else 0
            return fid, fns[fid].how
        fn = fns.get(f.name)
        if fn is None:
            i = tm.index.get(f.name)
            if i is None:
                i = tm.base_index.get(base_name(f.name))
            if i is not None:
                fn = _Fn(int(tm.starts[i]), int(tm.sizes[i]), "name")
            else:
                sub = subsystem_of_name(f.name)
                fn = _Fn(standin_start(tm, f.name, OTHER if sub < 0 else sub), max(1, rec.sizes.get(f.name, 0)), "stand-in")
            fns[f.name] = fn
        fn.max_offset = max(fn.max_offset, f.offset)
        if leaf:
            fn.leaf_lines += n * fn.line_at(f.offset)
            fn.leaf_n += n
        else:
            fn.max_call = max(fn.max_call, f.offset)
        return f.name, fn.how

    entries: dict[tuple[str, str], _Entry] = {}
    plumbing: dict[str, set[str]] = defaultdict(set)
    for chain, n in zip(rec.chains, rec.counts.tolist(), strict=True):
        ids, hows = zip(*(resolve(f, i == 0, n) for i, f in enumerate(chain)), strict=True)
        worst = "stand-in" if "stand-in" in hows else "address" if "address" in hows else "name"
        counts[worst] += n
        frame_counts[0] += n * sum(h == "name" for h in hows)
        frame_counts[1] += n * len(hows)
        cls, key, stub = _split(chain)
        # The plumbing: the stub and the dispatch code under it (a chain without a stub has none).
        plumb = [fid for fid, f in zip(ids[: stub + 1], chain, strict=False) if f.name is not None and (f.name in DISPATCH or f.name.startswith(ENTRY_STUBS + THUNKS))] if stub < len(chain) else []
        plumbing[cls].update(plumb)
        if key is None:
            continue
        e = entries.setdefault((cls, key), _Entry(key, cls))
        e.samples += n
        path = [fid for fid in reversed(ids[:stub]) if fid not in plumb]  # root first, the key first
        for d, fid in enumerate(path):
            e.inclusive[fid] += n
            e.depth[fid] = min(d, e.depth.get(fid, d))
            e.below[fid].update(path[d + 1 :])
            if d:
                e.callers[fid][path[d - 1]] += n
    for cls in plumbing:  # a class seen only in its plumbing: one entry of the plumbing alone
        if not any(c == cls for c, _ in entries):
            entries[(cls, cls)] = _Entry(cls, cls)
    hi = tm.text_hi
    ell = {fid: fn.mean_lines for fid, fn in fns.items()}
    plumb_lines = {cls: np.unique(np.concatenate([fns[f].lines(hi) for f in sorted(ids)])) if ids else np.zeros(0, np.int64) for cls, ids in plumbing.items()}

    templates: list[I64] = []
    weights: list[float] = []
    rows = []
    share = {}
    for (cls, key), e in entries.items():
        prob = _probabilities(e, ell)
        rows.append((cls, key, e, prob, sum(prob[f] * ell[f] for f in prob)))
    # An entry seen in few samples shows few of its lines: its length is shrunk towards the
    # sample-weighted mean of all entries (PRIOR_SAMPLES pseudo-samples), so that one sample of a
    # one-line prefix does not make it the most frequent request.
    sampled = [(e.samples, keyed) for _, _, e, _, keyed in rows if e.samples]
    prior = sum(n * k for n, k in sampled) / max(1, sum(n for n, _ in sampled)) if sampled else 1.0
    for cls, key, e, _, keyed in rows:
        length = (e.samples * keyed + PRIOR_SAMPLES * prior) / (e.samples + PRIOR_SAMPLES)
        share[(cls, key)] = e.samples / max(1.0, length) if e.samples else 1.0 / max(1.0, prior)
    total_share = sum(share.values())
    for cls, key, e, prob, _ in rows:
        s = share[(cls, key)] / total_share
        variants = max(1, min(MAX_VARIANTS, round(TEMPLATE_BUDGET * s)))
        rng = np.random.default_rng([seed, zlib.crc32(f"{cls}/{key}".encode())])
        order = sorted(prob, key=lambda f: (e.depth[f], f))
        for _ in range(variants):
            taken: list[str] = []
            calls: set[str] = set()  # functions whose callee was taken
            for f in order:
                caller = e.callers[f].most_common(1)[0][0] if e.callers[f] else None
                if caller is not None and caller not in taken:
                    continue
                p_cond = prob[f] / prob[caller] if caller is not None and prob[caller] > 0 else prob[f]
                if p_cond >= 1 or rng.random() < p_cond:
                    taken.append(f)
                    if caller is not None:
                        calls.add(caller)
            parts = [plumb_lines.get(cls, np.zeros(0, np.int64))] + [fns[f].lines(hi, fns[f].draw_reach(rng, f in calls)) for f in taken]
            t = np.concatenate(parts)
            templates.append(t if len(t) else fns[next(iter(fns))].lines(hi))
            weights.append(s / variants)
    w = np.array(weights, dtype=np.float64)
    w /= w.sum()
    mean_lines = float(np.dot(w, [len(t) for t in templates]))
    user = rec.samples - rec.kernel_samples
    compute = user / max(1, rec.kernel_samples) * mean_lines * hit_ns
    report = _report(rec, counts, rows, share, total_share, fns, tm, image)
    report["frames_by_name_share"] = round(frame_counts[0] / max(1, frame_counts[1]), 4)
    report["reconstruction"] = {"templates": len(templates), "entries": len(rows), "mean_lines_per_request": round(mean_lines, 1), "compute_ns_per_request": round(compute, 1)}
    return Reconstruction(tuple(templates), w, compute, report)


def _probabilities(e: _Entry, ell: dict[str, float], rounds: int = 20) -> dict[str, float]:
    """Each function's probability of being on the entry's path (the module docstring, step 3).

    A function on a fraction ``p_f`` of the paths takes ``p_f * T_f / T`` of the entry's time,
    ``T_f`` being its own lines and those of its callees when it runs, ``T`` a whole invocation's:
    its observed inclusive share ``c_f / N`` gives ``p_f = (c_f / N) * T / T_f``. Both times
    depend on the probabilities, so they are solved together, from every ``p`` = 1, by fixed-point
    iteration (the root, on every path, keeps ``p`` = 1)."""
    if not e.samples:
        return {}
    share = {f: c / e.samples for f, c in e.inclusive.items()}
    p = dict.fromkeys(share, 1.0)
    for _ in range(rounds):
        total = sum(p[f] * ell[f] for f in p)
        nxt = {}
        for f in p:
            t_f = ell[f] + sum(min(1.0, p[g] / p[f]) * ell[g] for g in sorted(e.below[f]) if g in p)  # sorted: the same sum in every process
            nxt[f] = min(1.0, share[f] * total / t_f)
        if all(abs(nxt[f] - p[f]) < 1e-4 for f in p):
            return nxt
        p = nxt
    return p


def _report(rec: Recording, counts: dict[str, int], rows: list[Any], share: dict[tuple[str, str], float], total: float, fns: dict[str, _Fn], tm: TargetMap, image: KernelImage) -> dict[str, Any]:
    k = max(1, rec.kernel_samples)
    leaf = rec.leaf_counts()
    entries = sorted(rows, key=lambda r: -r[2].samples)
    by_name = counts["name"] / k
    return {
        "source": rec.source,
        "format": rec.format,
        "recorded": rec.meta,
        "samples": rec.samples,
        "kernel_samples": rec.kernel_samples,
        "kernel_share": round(rec.kernel_share, 4),
        "callchains": rec.callchains,
        "mapped_by_name": counts["name"],
        "mapped_by_stand_in": counts["stand-in"],
        "mapped_by_address": counts["address"],
        "mapped_by_name_share": round(by_name, 4),
        "warning": None if by_name >= NAME_SHARE_WARNING else f"only {by_name:.0%} of the kernel samples mapped onto {image.name} by name (< {NAME_SHARE_WARNING:.0%}); the rest replay via stand-ins",
        "functions": {"by_name": sum(f.how == "name" for f in fns.values()), "stand_in": sum(f.how == "stand-in" for f in fns.values()), "by_address": sum(f.how == "address" for f in fns.values())},
        "top_entries": [
            {
                "entry": key, "class": cls, "sample_share": round(e.samples / k, 4), "request_share": round(share[(cls, key)] / total, 4),
                "functions": len(prob), "lines": round(keyed, 1),
            }
            for cls, key, e, prob, keyed in entries[:10]
        ],
        "top_functions": [
            {"function": name, "self_share": round(n / k, 4), "mapped": fns[name].how if name in fns else "?", "subsystem": SUBSYSTEMS[subsystem_of(tm, name)]}
            for name, n in leaf.most_common(10)
        ],
    }
