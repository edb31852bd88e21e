"""A kernel run whose exact line footprint is known, sampled as perf would: the ground truth the
reconstruction (`numaemu.model.replay`) is measured against (pure).

The synthetic run has `entries` syscalls, each a call tree over the image's real functions: a
function runs its lines from the start to a *reach* drawn per invocation (branches end it early or
late), calling its children at fixed lines of its body, each child with its own probability
(a branch taken or not). Every invocation also runs the syscall plumbing (``entry_SYSCALL_64``,
``do_syscall_64``, ``syscall_exit_to_user_mode``). Invocations are drawn by a skewed mix.

Sampling follows cpu-clock at a realistic rate: with a 250 us period and invocations of well under
a microsecond, no two samples fall in one invocation, so each sample is an independent draw of an
invocation (weighted by its length: a longer one is hit more often) and of a line in it, uniformly
in time (one line, one unit of time). Its callchain is the stack at that line, each caller's frame
at the offset of its call.

`accuracy` compares the reconstruction with the truth: footprint recall and precision (the true
footprint being the union of the lines of `truth_invocations` invocations, a run's worth), and
the miss rate of each request stream through the same direct-mapped cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from numaemu.model.arrays import I64
from numaemu.model.cache import DirectMappedCache
from numaemu.model.image import LINE_SIZE, KernelImage
from numaemu.model.recording import Frame, Recording, recording_from_samples
from numaemu.model.replay import reconstruct
from numaemu.model.target_map import target_map

__all__ = ["SyntheticRun", "synthetic_run", "invocation", "sample", "true_stream", "accuracy"]

PLUMBING = (("entry_SYSCALL_64", 3), ("do_syscall_64", 4), ("syscall_exit_to_user_mode", 3))
STUB = "entry_SYSCALL_64_after_hwframe"


@dataclass(frozen=True)
class _Node:
    name: str
    start: int  # offset from the image base
    lines: int  # lines in the function
    reach: tuple[float, float]  # the invocation's reach: a uniform fraction of `lines` in this range
    children: tuple[tuple[_Node, float, float], ...]  # (child, probability, where in the body it is called, 0..1)


@dataclass(frozen=True, eq=False)
class SyntheticRun:
    image: KernelImage
    roots: tuple[_Node, ...]  # one call tree a syscall
    mix: tuple[float, ...]  # each syscall's share of invocations
    plumbing: tuple[tuple[str, int, int], ...]  # (name, start offset, lines)


def synthetic_run(image: KernelImage, seed: int = 0, entries: int = 12, depth: int = 4, fanout: int = 3) -> SyntheticRun:
    """`entries` syscall call trees over `image`'s functions (named ones, of 2 lines or more)."""
    tm = target_map(image)
    rng = np.random.default_rng([seed, 0x67726E64])  # "grnd"
    names = sorted(tm.index)
    sys_names = [n for n in names if n.startswith("__x64_sys_") and tm.sizes[tm.index[n]] >= 2 * LINE_SIZE]
    bodies = [n for n in names if not n.startswith(("__x64_sys_", "entry_", "asm_")) and 2 * LINE_SIZE <= tm.sizes[tm.index[n]] <= 64 * LINE_SIZE]

    def node(name: str, level: int) -> _Node:
        i = tm.index[name]
        lines = max(1, int(tm.sizes[i]) // LINE_SIZE)
        lo = float(rng.uniform(0.2, 0.8))
        kids: list[tuple[_Node, float, float]] = []
        if level < depth:
            for _ in range(int(rng.integers(0, fanout + 1))):
                child = node(bodies[int(rng.integers(len(bodies)))], level + 1)
                kids.append((child, float(rng.choice([1.0, 1.0, 0.7, 0.3, 0.1])), float(rng.uniform(0.0, lo))))
        return _Node(name, int(tm.starts[i]), lines, (lo, 1.0), tuple(sorted(kids, key=lambda k: k[2])))

    roots = tuple(node(sys_names[int(j)], 0) for j in rng.choice(len(sys_names), entries, replace=False))
    mix = rng.dirichlet(np.full(entries, 0.7))
    plumbing = tuple((n, int(tm.starts[tm.index[n]]), k) for n, k in PLUMBING if n in tm.index)
    return SyntheticRun(image, roots, tuple(float(x) for x in mix), plumbing)


def _invoke(n: _Node, rng: np.random.Generator, stack: list[Frame], out: list[tuple[int, tuple[Frame, ...]]]) -> None:
    """One invocation of `n`: (line, callchain leaf first) for every line it runs, in order."""
    reach = max(1, round(n.lines * rng.uniform(*n.reach)))
    kids = [(k, int(at * reach)) for k, p, at in n.children if rng.random() < p]
    ki = 0
    for line in range(reach):
        here = stack + [Frame(n.name, line * LINE_SIZE)]
        out.append((n.start // LINE_SIZE + line, tuple(reversed(here))))
        while ki < len(kids) and kids[ki][1] == line:
            _invoke(kids[ki][0], rng, stack + [Frame(n.name, line * LINE_SIZE + 5)], out)  # the return address: after the call
            ki += 1


def invocation(run: SyntheticRun, entry: int, rng: np.random.Generator) -> list[tuple[int, tuple[Frame, ...]]]:
    """Every line one invocation of syscall `entry` runs, with its callchain."""
    out: list[tuple[int, tuple[Frame, ...]]] = []
    stub = [Frame(STUB, 0x40)]
    entry_fn, dispatch, exit_fn = run.plumbing if len(run.plumbing) == 3 else (None, None, None)
    for name, start, k in (entry_fn,) if entry_fn else ():
        out += [(start // LINE_SIZE + i, (Frame(name, i * LINE_SIZE),)) for i in range(k)]
    if dispatch:
        name, start, k = dispatch
        out += [(start // LINE_SIZE + i, (Frame(name, i * LINE_SIZE), *stub)) for i in range(k - 1)]
        _invoke(run.roots[entry], rng, [*stub[::-1], Frame(name, (k - 1) * LINE_SIZE + 5)], out)
    if exit_fn:
        name, start, k = exit_fn
        out += [(start // LINE_SIZE + i, (Frame(name, i * LINE_SIZE), Frame(dispatch[0] if dispatch else "?", 0x30), *stub)) for i in range(k)]
    return out


def sample(run: SyntheticRun, n_samples: int, seed: int = 0, user_share: float = 0.0) -> Recording:
    """`n_samples` kernel samples of the run, as cpu-clock at a period far above an invocation's
    length draws them (the module docstring); `user_share` adds user-only samples."""
    rng = np.random.default_rng([seed, 0x73616D70])  # "samp"
    mix = np.array(run.mix)
    # A sample falls in an invocation with probability proportional to its length: draw
    # invocations by the mix, and keep each with probability len / max_len (rejection sampling).
    chains: list[tuple[Frame, ...]] = []
    cap = max(len(invocation(run, e, np.random.default_rng([seed, e, 1]))) for e in range(len(mix))) * 2
    while len(chains) < n_samples:
        e = int(rng.choice(len(mix), p=mix))
        inv = invocation(run, e, rng)
        if rng.random() < len(inv) / cap:
            chains.append(inv[int(rng.integers(len(inv)))][1])
    total = round(n_samples / (1 - user_share)) if user_share < 1 else n_samples
    return recording_from_samples(chains, total, "ground truth", "synthetic", True, {}, {})


def true_stream(run: SyntheticRun, invocations: int, seed: int = 1) -> list[I64]:
    """The lines of `invocations` invocations drawn by the mix, each in order."""
    rng = np.random.default_rng([seed, 0x74727565])  # "true"
    picks = rng.choice(len(run.mix), invocations, p=np.array(run.mix))
    return [np.array([line for line, _ in invocation(run, int(e), rng)], dtype=np.int64) for e in picks]


def accuracy(run: SyntheticRun, rec: Recording, truth_invocations: int = 4000, cache_bytes: int = 32 << 10, seed: int = 0) -> dict[str, Any]:
    """Recall and precision of the reconstructed footprint, and the miss rate of both request
    streams through one `cache_bytes` direct-mapped cache (a cold start, then a whole stream)."""
    truth = true_stream(run, truth_invocations, seed + 1)
    true_lines = np.unique(np.concatenate(truth))
    r = reconstruct(rec, run.image, seed)
    recon_lines = np.unique(np.concatenate(r.templates))
    hit = np.intersect1d(true_lines, recon_lines)
    rng = np.random.default_rng([seed, 0x72656373])  # "recs"
    picks = rng.choice(len(r.templates), truth_invocations, p=r.weights)
    recon_stream = [r.templates[int(i)] for i in picks]

    def miss_rate(stream: list[I64]) -> float:
        cache = DirectMappedCache(cache_bytes)
        lines = np.concatenate(stream)
        return float(np.count_nonzero(~cache.access(lines)) / len(lines))

    m_true, m_recon = miss_rate(truth), miss_rate(recon_stream)
    return {
        "samples": rec.kernel_samples,
        "true_footprint_lines": len(true_lines),
        "reconstructed_footprint_lines": len(recon_lines),
        "recall": round(len(hit) / len(true_lines), 4),
        # the share of the true stream's fetches whose line the reconstruction has: lines run
        # rarely are what sampling misses, and they weigh little in a miss rate
        "fetch_recall": round(float(np.isin(np.concatenate(truth), recon_lines).mean()), 4),
        "precision": round(len(hit) / len(recon_lines), 4),
        "true_lines_per_request": round(float(np.mean([len(t) for t in truth])), 1),
        "reconstructed_lines_per_request": round(float(np.dot(r.weights, [len(t) for t in r.templates])), 1),
        "true_miss_rate": round(m_true, 4),
        "reconstructed_miss_rate": round(m_recon, 4),
        "miss_rate_error": round(m_recon - m_true, 4),
        "cache_bytes": cache_bytes,
    }
