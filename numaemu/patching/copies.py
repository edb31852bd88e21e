"""The copies of the kernel text, as the patchers write them: where each image byte lives in the
master and in every copy, and the writes that reach them all.

`TextCopies` writes bytes at image offsets into the master and into every copy that holds the
page (one under ``single`` and ``interleave``, one per node under ``replicate``), as Kuzin's
``__text_poke()`` loops over the replicas and King's ``aarch64_insn_patch_text_nosync()``
writes node 0's copy, then every other node's. Each copy's stores are made visible to
instruction fetch by `invalidate` (the ``txt`` segment's ``line_gen``, textmem.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from numaemu.host.fence import fence
from numaemu.host.segments import MemoryLayout
from numaemu.model.image import LINE_SIZE, PAGE_SIZE
from numaemu.model.placement import Placement

__all__ = ["TextCopies", "byte_ranges", "invalidate"]

_PLAN_FROM = 64  # bytes from which `TextCopies.targets` keeps its answer
_PLANS = 16


def byte_ranges(lens: np.ndarray) -> np.ndarray:
    """[0..l0-1, 0..l1-1, ...] for lengths `lens`: each site's byte offsets from its start."""
    lens = np.asarray(lens, dtype=np.int64)
    out: np.ndarray = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return out


def invalidate(line_gen: np.ndarray | None, targets: np.ndarray) -> None:
    """Make stores at `targets` (offsets in ``mem``) visible to instruction fetch: every node that
    buffered one of their lines fetches it again (the snoop on x86, the patcher's IC IVAU on
    arm64; module docstring)."""
    if line_gen is None or not len(line_gen):
        return
    t = np.asarray(targets, dtype=np.int64)
    t = t[t >= 0]
    if len(t):
        fence()  # the stores before the new generation that says they are there
        # A fancy-indexed += bumps a line named twice once: it moves, which is all a reader
        # asks (no np.unique, whose hashing cost most of a 256-site batch).
        line_gen[t // LINE_SIZE] += 1


@dataclass(frozen=True, eq=False)
class TextCopies:
    """Where each image byte lives: the master, and each copy in the ``mem`` segment.

    `where[page]` lists the byte offset in ``mem`` of the page's frame in every node that hosts
    it (-1 padding), so a write reaches every copy.
    """

    where: np.ndarray  # int64 [n_pages, n_copies]

    @classmethod
    def build(cls, placement: Placement, layout: MemoryLayout, n_pages: int) -> TextCopies:
        hosts = [h for h in range(placement.n_nodes) if len(placement.hosted[h])]
        where = np.full((n_pages, max(1, len(hosts))), -1, dtype=np.int64)
        for col, h in enumerate(hosts):
            pages = placement.hosted[h]
            where[pages, col] = layout.part_offset[h] + np.arange(len(pages), dtype=np.int64) * PAGE_SIZE
        return cls(where)

    def targets_of(self, offset: int) -> list[int]:
        """Offsets in ``mem`` of image byte `offset` in every copy (scalar fast path)."""
        page, rest = divmod(offset, PAGE_SIZE)
        return [int(b) + rest for b in self.where[page] if b >= 0]

    def targets(self, offsets: np.ndarray) -> np.ndarray:
        """Offsets in ``mem`` of each image byte in `offsets`, one row per copy (-1: none).

        A batch asks for the same bytes in each of its phases and its check (and a stress
        source for the same sites call after call), so large answers are kept, by the offsets'
        bytes (a patch plan computed once: `_PLANS` of them, the most recent)."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) < _PLAN_FROM:
            return self._targets(offsets)
        plans: dict[bytes, np.ndarray] = self.__dict__.setdefault("_plans", {})
        key = offsets.tobytes()
        rows = plans.get(key)
        if rows is None:
            if len(plans) >= _PLANS:
                del plans[next(iter(plans))]
            rows = plans[key] = self._targets(offsets)
            rows.flags.writeable = False
        return rows

    def _targets(self, offsets: np.ndarray) -> np.ndarray:
        base = self.where[offsets // PAGE_SIZE]  # [n, copies]
        out: np.ndarray = np.where(base >= 0, base + (offsets % PAGE_SIZE)[:, None], -1).T
        return out

    def write(self, master: np.ndarray, mem: np.ndarray, offsets: np.ndarray, values: np.ndarray,
              line_gen: np.ndarray | None = None, inval: np.ndarray | None = None,
              between: Callable[[], None] | None = None) -> None:
        """Write `values` at image `offsets` in the master, then in every copy, in node order,
        each copy's lines invalidated after its stores (`invalidate`; `inval`: the ``mem``
        offsets to invalidate instead, the ``ivau-local`` bug's). `between` runs after each
        copy's stores: the time writing that copy takes (TextPoke)."""
        master[offsets] = values
        for row in self.targets(offsets):
            ok = row >= 0
            mem[row[ok]] = values[ok]
            invalidate(line_gen, row[ok] if inval is None else inval)
            if between is not None:
                between()

    def write_word(self, master: np.ndarray, mem: np.ndarray, offset: int, word: bytes,
                   line_gen: np.ndarray | None = None, inval: int | None = None,
                   between: Callable[[], None] | None = None) -> None:
        """One aligned 4-byte store per copy: a single-copy-atomic write, as arm64 patching uses,
        each followed by its line's invalidation (`inval`: the one ``mem`` offset to invalidate
        instead) and by `between`."""
        assert offset % 4 == 0 and len(word) == 4
        value = np.frombuffer(word, dtype="<u4")[0]
        master.view("<u4")[offset // 4] = value
        mem32 = mem.view("<u4")
        for t in self.targets(np.array([offset]))[:, 0]:
            if t >= 0:
                mem32[t // 4] = value
                invalidate(line_gen, np.array([t if inval is None else inval]))
                if between is not None:
                    between()

    @staticmethod
    def mismatches_seen(master: np.ndarray, mem: np.ndarray, bases: list[np.ndarray], pages: np.ndarray) -> list[tuple[int, int]]:
        """(page, node) pairs among `pages` where the frame node's page table maps (`bases[node]`:
        per image page, its frame's offset in ``mem``, engine.page_bases) differs from the
        master: the verdict as every node would execute it, whatever list of copies the
        patcher wrote."""
        pages = np.unique(np.asarray(pages, dtype=np.int64))
        ref = master.reshape(-1, PAGE_SIZE)[pages]
        frames = mem.reshape(-1, PAGE_SIZE)
        bad = []
        for node, base in enumerate(bases):
            b = base[pages]
            mapped = b >= 0
            differ = np.any(frames[b[mapped] // PAGE_SIZE] != ref[mapped], axis=1)
            bad += [(int(p), node) for p in pages[mapped][differ]]
        return sorted(bad)

    def mismatches(self, master: np.ndarray, mem: np.ndarray, pages: np.ndarray) -> list[tuple[int, int]]:
        """(page, copy) pairs among `pages` where a copy differs from the master."""
        pages = np.unique(np.asarray(pages, dtype=np.int64))
        ref = master.reshape(-1, PAGE_SIZE)[pages]
        frames = mem.reshape(-1, PAGE_SIZE)  # every frame is page aligned in ``mem``
        bad = []
        for col in range(self.where.shape[1]):
            base = self.where[pages, col]
            held = base >= 0
            differ = np.any(frames[base[held] // PAGE_SIZE] != ref[held], axis=1)
            bad += [(int(p), col) for p in pages[held][differ]]
        return sorted(bad)
