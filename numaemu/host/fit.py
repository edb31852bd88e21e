"""Will a run fit? The shared memory a run creates, against ``/dev/shm`` and the host's memory.

Every run of one policy creates, at once, the segments of `memory` (and, for ``stress``, the
``txt`` segment of `textmem`): ``mem`` (each node's partition: its image frames and its user
data, 2 MiB-aligned), ``master`` (the master image) and ``ctl`` (the control block). Policies run
one after the other, each in fresh node processes, so a run needs what its worst policy needs.

A run that does not fit would fail half-way (``SIGBUS`` on a tmpfs page that cannot be allocated,
or the OOM killer), so the commands refuse it up front, with the numbers, before anything is
allocated. `segment_need` and `stress_need` compute the bytes, `check_fit` and
`check_node_memory` compare them (pure: the free space is passed in), `free_space` asks the OS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from numaemu.errors import UsageError
from numaemu.host.segments import SHM_DIR, USER_DATA_BYTES, Control, MemoryLayout
from numaemu.model.image import PAGE_SIZE, KernelImage
from numaemu.model.placement import Placement, check_reachable, place_for
from numaemu.model.tasks import TASKS_PER_NODE
from numaemu.model.topology import Topology

__all__ = [
    "SHM_MARGIN_BYTES",
    "MEMORY_MARGIN_BYTES",
    "NODE_PROCESS_BYTES",
    "SegmentNeed",
    "segment_need",
    "run_needs",
    "check_fit",
    "check_node_memory",
    "check_host_fits",
    "free_space",
    "format_bytes",
]

# Left free in /dev/shm and in memory, since other programs use them too: a tenth of what is
# free, at most these (so a small /dev/shm, such as a container's 64 MiB, still takes small runs).
SHM_MARGIN_BYTES = 64 << 20
MEMORY_MARGIN_BYTES = 256 << 20
# A node process's own memory beyond the shared segments (measured: ~27 MiB unique with fork,
# more with spawn, which imports numpy afresh), rounded up.
NODE_PROCESS_BYTES = 48 << 20


def format_bytes(n: int) -> str:
    """``1288490188`` -> ``'1.2 GiB'``; KiB, MiB or GiB with one decimal."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


@dataclass(frozen=True)
class SegmentNeed:
    """The shared memory one run of one policy creates, segment by segment (bytes)."""

    label: str  # what runs: "replicate", or "kunpeng920 db ... replicate" in a sweep
    policy: str
    n_nodes: int
    mem: int  # the mem segment: every node's partition, 2 MiB-aligned
    master: int  # the master image
    ctl: int  # the control block
    image_frames: int  # of mem: the image's frames over all nodes
    copy_bytes: int  # of those: one whole copy of the mapped image
    user_bytes: int  # of mem: each node's user data
    txt: int = 0  # stress only: the text-patching state
    node_bytes: tuple[int, ...] = ()  # per node: what its own memory must hold (image frames + user data)

    @property
    def total(self) -> int:
        return self.mem + self.master + self.ctl + self.txt

    def describe(self) -> str:
        """The sum in words: ``2 copies of 17.9 MiB + 2 x 8.0 MiB user data + ...``."""
        copies = self.image_frames / self.copy_bytes if self.copy_bytes else 0
        if copies and abs(copies - round(copies)) < 1e-9:
            n = round(copies)
            frames = f"{n} {'copy' if n == 1 else 'copies'} of {format_bytes(self.copy_bytes)}"
        else:
            frames = f"image frames {format_bytes(self.image_frames)}"
        parts = [frames, f"{self.n_nodes} x {format_bytes(self.user_bytes)} user data"]
        pad = self.mem - self.image_frames - self.n_nodes * self.user_bytes
        if pad > 0:
            parts.append(f"{format_bytes(pad)} of 2 MiB alignment")
        parts.append(f"the {format_bytes(self.master)} master image")
        parts.append(f"control {format_bytes(self.ctl)}")
        if self.txt:
            parts.append(f"patch state {format_bytes(self.txt)}")
        return " + ".join(parts)


def segment_need(
    placement: Placement,
    image: KernelImage,
    *,
    label: str,
    n_tasks: int,
    user_bytes: int = USER_DATA_BYTES,
    txt: int = 0,
) -> SegmentNeed:
    """What `coordinator.run_policy` (or `stress.run_stress`, with `user_bytes` one page and
    its `txt` size) creates for `placement`: the same `MemoryLayout` and `Control` sizes."""
    n = placement.n_nodes
    frames = tuple(placement.image_bytes(i) for i in range(n))
    layout = MemoryLayout.for_nodes(frames, user_bytes=user_bytes)
    return SegmentNeed(
        label=label,
        policy=placement.policy,
        n_nodes=n,
        mem=layout.size,
        master=len(image.data),
        ctl=Control.size(n, n_tasks),
        image_frames=sum(frames),
        copy_bytes=placement.mapped_pages * PAGE_SIZE,
        user_bytes=user_bytes,
        txt=txt,
        node_bytes=tuple(f + user_bytes for f in frames),
    )


def run_needs(
    topo: Topology, image: KernelImage, policies: Sequence[str], *, replicate: str = "text+rodata", replicas_every: int = 1, label: str = ""
) -> list[SegmentNeed]:
    """The `SegmentNeed` of each policy of a ``run`` (or of one ``bench`` point), placed as
    `coordinator.run_policy` places it. Also refuses, as the run would later, a policy under
    which a node cannot reach the memory that backs its image, or a machine without memory."""
    needs = []
    for policy in policies:
        placement, _ = place_for(topo, image, policy, replicate, replicas_every)
        check_reachable(topo, placement)
        needs.append(segment_need(placement, image, label=f"{label}{policy}", n_tasks=TASKS_PER_NODE * topo.n_nodes))
    return needs




def check_fit(
    needs: Sequence[SegmentNeed],
    shm_free: int,
    mem_available: int,
    *,
    shm_margin: int | None = None,
    memory_margin: int | None = None,
    process_bytes: int = NODE_PROCESS_BYTES,
) -> None:
    """Refuse (`UsageError`) when the largest of `needs` (runs made one after the other) would
    not fit in `shm_free` bytes of /dev/shm, or, with its node processes, in `mem_available`
    bytes of memory, each less its margin (default: a tenth of it, at most `SHM_MARGIN_BYTES`
    or `MEMORY_MARGIN_BYTES`). The parameter named is ``--policy`` when a policy other than
    single is what does not fit while single does, else ``--topology``."""
    if not needs:
        return
    if shm_margin is None:
        shm_margin = min(SHM_MARGIN_BYTES, max(0, shm_free) // 10)
    if memory_margin is None:
        memory_margin = min(MEMORY_MARGIN_BYTES, max(0, mem_available) // 10)
    shm_room = shm_free - shm_margin
    mem_room = mem_available - memory_margin

    def memory(need: SegmentNeed) -> int:
        return need.total + need.n_nodes * process_bytes

    def fits(need: SegmentNeed) -> bool:
        return need.total <= shm_room and memory(need) <= mem_room

    bad = [need for need in needs if not fits(need)]
    if not bad:
        return
    worst = max(bad, key=memory)
    param = "--policy" if all(b.policy != "single" for b in bad) and any(fits(n) for n in needs if n.policy == "single") else "--topology"
    ways = ["fewer nodes"] + (["fewer copies (--replicas-every) or another --policy"] if worst.policy == "replicate" else []) + ["a smaller image (--image-scale)"]

    def either(options: list[str]) -> str:
        return "; ".join(options[:-1]) + "; or " + options[-1]
    if worst.total > shm_room:
        raise UsageError(
            param,
            f"{worst.label} needs {format_bytes(worst.total)} of shared memory ({worst.describe()}), "
            f"/dev/shm has {format_bytes(max(0, shm_free))} free (and {format_bytes(shm_margin)} is kept free); "
            f"to fit: {either(ways + ['a larger /dev/shm (mount -o remount,size=...)'])}",
        )
    raise UsageError(
        param,
        f"{worst.label} needs about {format_bytes(memory(worst))} of memory ({format_bytes(worst.total)} of shared memory: "
        f"{worst.describe()}; + {worst.n_nodes} node processes of about {format_bytes(process_bytes)}), "
        f"this host has {format_bytes(max(0, mem_available))} available (and {format_bytes(memory_margin)} is kept free); "
        f"to fit: {either(ways)}",
    )


def check_node_memory(topo: Topology, needs: Sequence[SegmentNeed]) -> None:
    """Refuse a topology whose node declares less memory (`Node.memory_bytes`) than it must
    hold: its image frames and its user data, under the worst of `needs`. A node with 0 bytes
    is memoryless (it holds nothing: it maps the nearest node's memory) and is not checked."""
    for node in topo.nodes:
        if node.memory_bytes == 0:
            continue
        worst = max((need for need in needs if need.node_bytes), key=lambda need: need.node_bytes[node.id], default=None)
        if worst is None:
            return
        must = worst.node_bytes[node.id]
        if node.memory_bytes < must:
            frames = must - worst.user_bytes
            raise UsageError(
                "--topology",
                f"node {node.id} of {topo.name} has {format_bytes(node.memory_bytes)} of memory ({node.memory_bytes:,} bytes), "
                f"but under {worst.policy} it holds {format_bytes(must)} (image frames {format_bytes(frames)} + user data "
                f"{format_bytes(worst.user_bytes)}); give it at least {must:,} bytes, or 0 for a memoryless node",
            )


def check_host_fits(topo: Topology, needs: Sequence[SegmentNeed]) -> None:
    """`check_node_memory`, then `check_fit` against this host's free /dev/shm and memory."""
    check_node_memory(topo, needs)
    check_fit(needs, *free_space())


def free_space(shm_dir: os.PathLike[str] | str = SHM_DIR) -> tuple[int, int]:
    """(bytes free in /dev/shm for this user, bytes of memory available), from the OS."""
    import psutil

    st = os.statvfs(shm_dir)
    return st.f_bavail * st.f_frsize, psutil.virtual_memory().available
