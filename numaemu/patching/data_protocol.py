"""Running a protocol given as data (`numaemu.model.protocol_spec`): its steps, in order, over
the batch, with the same writes, syncs and descriptor as the kernel's protocols use.

Each write step writes the master and the chosen copies site by site at the timeline's
``text_poke_ns`` a site and copy (text_poke.py); each sync step is the kernel's sync (an IPI to
every node, waited for unless ``wait = false``). A protocol that writes INT3s publishes the batch
in the text_poke_bp descriptor first and releases it at the end by the run's INT3 fix, so nodes
that hit its INT3s are handled as under text_poke_bp. Every step is published as the node's
protocol step (``DATA_STEP`` + its index), so a violation names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numaemu.model.protocol_spec import ProtocolSpec, Step
from numaemu.model.sites import INT3
from numaemu.patching.copies import TextCopies, byte_ranges
from numaemu.patching.protocols import STEPS
from numaemu.patching.text_poke import TextPoke
from numaemu.patching.text_poke_bp import publish_descriptor, release_descriptor

if TYPE_CHECKING:
    from numaemu.patching.kernel import NodeKernel

__all__ = ["DATA_STEP", "data_protocol_batch", "node_step_name", "step_name"]

DATA_STEP = 100  # a node's ``step`` at or above this is a data protocol's step (index - DATA_STEP)


def step_name(spec: ProtocolSpec | None, index: int) -> str:
    """A data protocol's step as a violation report names it."""
    if spec is None or not 0 <= index < len(spec.steps):
        return f"data protocol step {index + 1}"
    return f"{spec.name}: {spec.steps[index].describe(index)}"


def node_step_name(spec: ProtocolSpec | None, index: int) -> str:
    """A node's published ``step`` by name: a kernel protocol's (protocols.STEPS), or from
    DATA_STEP on, a data protocol's."""
    return STEPS[index] if index < DATA_STEP else step_name(spec, index - DATA_STEP)


def _poke_for(k: NodeKernel, copies: str) -> TextPoke:
    """The writer into `copies` (all, node0: the first copy, which is node 0's under replicate,
    others: every copy but that one)."""
    cache = k.data_pokes
    if copies not in cache:
        where = k.copies.where
        cols = {"all": slice(None), "node0": slice(0, 1), "others": slice(1, None)}[copies]
        sub = TextCopies(np.ascontiguousarray(where[:, cols])) if where[:, cols].shape[1] else TextCopies(np.full((len(where), 1), -1, np.int64))
        cache[copies] = TextPoke(sub, k.master, k.mem, k.text.text_poke_ns, k.check_alive, k.text.line_gen, k.text.local_base)
    poke: TextPoke = cache[copies]
    poke.text_poke_ns, poke.meanwhile = k.text.text_poke_ns, k.text.meanwhile
    return poke


def _write(k: NodeKernel, sites: np.ndarray, new: np.ndarray, step: Step) -> None:
    t = k.sites
    offs = t.offset[sites]
    lens = t.length[sites].astype(np.int64)
    each = np.arange(len(sites))
    poke = _poke_for(k, step.copies)
    if step.write == "word":
        for o, row in zip(offs.tolist(), new, strict=True):
            poke.write_word(int(o), bytes(row[:4]))
    elif step.write == "int3":
        poke.poke(offs, np.full(len(sites), INT3, dtype=np.uint8), each)
    elif step.write == "first":
        poke.poke(offs, new[:, 0].copy(), each)
    else:
        start = 1 if step.write == "tail" else 0
        keep = lens > start
        n = lens[keep] - start
        owner = np.repeat(each[keep], n)
        boffs = np.repeat(offs[keep], n) + byte_ranges(n) + start
        if len(boffs):
            poke.poke(boffs, new[owner, byte_ranges(n) + start], owner)


def data_protocol_batch(k: NodeKernel, sites: np.ndarray, new: np.ndarray) -> None:
    """Patch `sites` (sorted by address) to encodings `new` by the run's data protocol."""
    spec = k.data_protocol
    assert spec is not None
    if spec.uses_int3:
        publish_descriptor(k, sites, new)
    for i, step in enumerate(spec.steps):
        k.st.node_set(k.node, "step", DATA_STEP + i)
        if step.write is not None:
            _write(k, sites, new, step)
        else:
            k.sync(wait=step.wait)
    if spec.uses_int3:
        k.step("text_poke_bp: releasing the descriptor")
        release_descriptor(k)
