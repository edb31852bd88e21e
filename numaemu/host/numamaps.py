"""Where each node's memory really landed: ``/proc/<pid>/numa_maps``.

Each worker first-touches its own partition of the run's ``mem`` segment (worker.py
`fill_partition`) while pinned to its node's CPUs; under the default memory policy the kernel
allocates a page on the node of the CPU that faults it (mm/mempolicy.c: ``MPOL_DEFAULT``, "local
allocation"), so on a real NUMA host the partition should sit on the worker's node. The
coordinator checks that once every node is ready and before the run starts, when a worker has
faulted in only its own partition, so the ``N<k>`` counts of its ``mem`` mapping are its
partition's.

The format, one line per mapping (fs/proc/task_mmu.c ``show_numa_map``; the policy string is
mm/mempolicy.c ``mpol_to_str``; Documentation/filesystems/proc.rst, "numa_maps")::

    <start, hex> <policy> [file=<path> | heap | stack] [huge] [anon=N] [dirty=N] [mapped=N]
        [mapmax=N] [swapcache=N] [active=N] [writeback=N] [N<node>=<pages> ...] kernelpagesize_kB=K

* the policy may hold blanks and '=' (``prefer (many)``, ``weighted interleave``,
  ``bind=static:0-1``), so it runs up to the first token that is one of the known fields;
* the path is escaped by ``seq_path(..., "\\n\\t= ")``: those four characters appear as octal
  ``\\ooo``;
* a mapping with no pages mapped stops after the path (``if (!md->pages) goto out``): no counts,
  no ``kernelpagesize_kB``;
* ``N<k>`` counts pages of the mapping's page size: for hugetlb one per huge page (and
  ``kernelpagesize_kB`` is the huge page size), for transparent huge pages 512 per PMD at 4 KiB.

`parse_numa_maps`, `file_pages`, `expected_host_nodes`, `numa_maps_warnings` and
`format_numa_maps` are pure; `read_numa_maps` reads the files and never raises: a missing file
(kernel without CONFIG_NUMA), a refused read or a malformed line makes the node's entry
unavailable, with the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from numaemu.model.topology import Topology

__all__ = [
    "MapsLine",
    "HostPages",
    "NodePlacement",
    "NumaMapsReport",
    "parse_numa_maps",
    "file_pages",
    "expected_host_nodes",
    "numa_maps_warnings",
    "format_numa_maps",
    "numa_maps_informative",
    "read_numa_maps",
]

# Fields show_numa_map prints after the policy; the policy is everything before the first one.
_COUNT_KEYS = ("anon", "dirty", "mapped", "mapmax", "swapcache", "active", "writeback")
_FIELD_RE = re.compile(r"(file|kernelpagesize_kB|N\d+|" + "|".join(_COUNT_KEYS) + r")=|(heap|stack(:\d+)?|huge)$")
_OCTAL_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MapsLine:
    """One mapping of a numa_maps file."""

    start: int
    policy: str
    file: str | None  # the mapped file's path, unescaped; None for anonymous memory
    huge: bool  # a hugetlb mapping
    page_kb: int | None  # kernelpagesize_kB; None when the line has no pages (it stops early)
    node_pages: tuple[tuple[int, int], ...]  # (host node, pages of page_kb), by node
    counts: tuple[tuple[str, int], ...] = ()  # anon=, dirty=, mapped=, ... in line order


@dataclass(frozen=True)
class HostPages:
    """Pages of one mapped file, by host node, in pages of `page_kb` KiB."""

    page_kb: int
    by_node: tuple[tuple[int, int], ...]

    @property
    def total(self) -> int:
        return sum(p for _, p in self.by_node)

    def as_dict(self) -> dict[int, int]:
        return dict(self.by_node)

    def to_json(self) -> dict[str, object]:
        return {"page_kb": self.page_kb, "pages": {str(n): p for n, p in self.by_node}}


@dataclass(frozen=True)
class NodePlacement:
    """Where one emulated node's partition landed. `pages` None: unavailable, see `error`."""

    node: int
    pid: int | None
    expected: tuple[int, ...]  # host nodes it belongs on (empty: the topology says nothing)
    pages: HostPages | None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "pid": self.pid,
            "expected_host_nodes": list(self.expected),
            "page_kb": self.pages.page_kb if self.pages else None,
            "pages": {str(n): p for n, p in self.pages.by_node} if self.pages else None,
            "error": self.error,
        }


@dataclass(frozen=True)
class NumaMapsReport:
    """Per emulated node of one run (one policy), where its partition of `segment` landed."""

    segment: str
    nodes: tuple[NodePlacement, ...]

    @property
    def available(self) -> bool:
        return all(n.pages is not None for n in self.nodes)

    @property
    def reason(self) -> str | None:
        """Why the report is (partly) unavailable: the first node's error."""
        return next((f"node {n.node}: {n.error}" for n in self.nodes if n.pages is None), None)

    def to_json(self) -> dict[str, object]:
        return {
            "source": "/proc/<pid>/numa_maps",
            "segment": self.segment,
            "available": self.available,
            "reason": self.reason,
            "nodes": [n.to_json() for n in self.nodes],
        }


# --------------------------------------------------------------------------------------------
# Parsing (pure)


def parse_numa_maps(text: str) -> tuple[MapsLine, ...]:
    """Every line of a numa_maps file. Raises ValueError naming the first malformed line."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            out.append(_parse_line(raw))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}: {raw.strip()!r}") from None
    return tuple(out)


def _parse_line(line: str) -> MapsLine:
    tokens = line.split()
    try:
        start = int(tokens[0], 16)
    except ValueError:
        raise ValueError("does not start with a hex address") from None
    i = 1
    while i < len(tokens) and not _FIELD_RE.match(tokens[i]):
        i += 1
    policy = " ".join(tokens[1:i])
    if not policy:
        raise ValueError("no memory policy after the address")
    file: str | None = None
    huge = False
    page_kb: int | None = None
    nodes: dict[int, int] = {}
    counts: list[tuple[str, int]] = []
    for token in tokens[i:]:
        key, eq, value = token.partition("=")
        if not eq:
            if key == "huge":
                huge = True
            continue  # heap, stack, stack:<tid>: where anonymous memory is, not needed here
        if key == "file":
            file = _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), value)
            continue
        if not value.isdigit():
            raise ValueError(f"{key}= is {value!r}, not a count")
        if key == "kernelpagesize_kB":
            page_kb = int(value)
        elif key.startswith("N") and key[1:].isdigit():
            nodes[int(key[1:])] = int(value)
        else:
            counts.append((key, int(value)))
    if nodes and page_kb is None:
        raise ValueError("N<node>= counts without kernelpagesize_kB")
    return MapsLine(start, policy, file, huge, page_kb, tuple(sorted(nodes.items())), tuple(counts))


def _same_file(mapped: str, path: str) -> bool:
    """A mapping of `path`: the same path, or (for a bare name) the same file name. A file
    unlinked while mapped shows as ``<path> (deleted)`` (d_path), which still counts."""
    mapped = mapped.removesuffix(" (deleted)")
    return mapped == path if "/" in path else mapped.rsplit("/", 1)[-1] == path


def file_pages(lines: Iterable[MapsLine], path: str) -> HostPages | None:
    """Pages of `path` (a path, or a bare file name) by host node, summed over every mapping
    of it; None when no line maps it. Mixed page sizes are counted in the smallest."""
    hits = [ln for ln in lines if ln.file is not None and _same_file(ln.file, path)]
    if not hits:
        return None
    sized = [ln for ln in hits if ln.page_kb is not None]
    if not sized:
        return HostPages(4, ())  # mapped, but no page of it faulted in yet
    unit = min(ln.page_kb or 0 for ln in sized)
    total: Counter[int] = Counter()
    for ln in sized:
        for node, pages in ln.node_pages:
            total[node] += pages * (ln.page_kb or 0) // unit
    return HostPages(unit, tuple(sorted((n, p) for n, p in total.items() if p)))


# --------------------------------------------------------------------------------------------
# Expectations and warnings (pure)


def expected_host_nodes(topo: Topology) -> tuple[tuple[int, ...], ...]:
    """Per emulated node, the host node(s) its memory belongs on: its `host_node`; for a
    memoryless one (memory_bytes 0), the nearest nodes with memory, where the kernel's
    zonelist sends its allocations (mm/page_alloc.c build_zonelists, by node distance). Empty
    for a node without a host node (an emulated topology says nothing about the host)."""
    out: list[tuple[int, ...]] = []
    for node in topo.nodes:
        if node.host_node is None:
            out.append(())
        elif node.memory_bytes > 0:
            out.append((node.host_node,))
        else:
            # node index -> its host node, for the nodes with memory
            with_memory = {j: other.host_node for j, other in enumerate(topo.nodes) if other.memory_bytes > 0 and other.host_node is not None}
            if not with_memory:
                out.append(())
                continue
            near = min(topo.distance[node.id][j] for j in with_memory)
            out.append(tuple(sorted(host for j, host in with_memory.items() if topo.distance[node.id][j] == near)))
    return tuple(out)


def numa_maps_warnings(reports: Sequence[NumaMapsReport]) -> list[str]:
    """One line per emulated node whose pages are not (all) on the host node the topology says,
    summed over `reports` (one per policy run): ``warning: node 1: 300 of 4352 pages on host
    node 0, expected 1``. Nodes without an expectation or without a reading are skipped."""
    if not reports:
        return []
    lines = []
    for i in range(len(reports[0].nodes)):
        entries = [r.nodes[i] for r in reports if i < len(r.nodes) and r.nodes[i].pages is not None]
        if not entries or not entries[0].expected:
            continue
        expected = entries[0].expected
        total: Counter[int] = Counter()
        for e in entries:
            assert e.pages is not None
            for node, pages in e.pages.by_node:
                total[node] += pages
        wrong = sorted((n, p) for n, p in total.items() if n not in expected and p)
        if not wrong:
            continue
        where = " and ".join(
            f"{p} of {sum(total.values())} pages on host node {n}" if k == 0 else f"{p} on host node {n}"
            for k, (n, p) in enumerate(wrong)
        )
        lines.append(f"warning: node {i}: {where}, expected {' or '.join(map(str, expected))}")
    return lines


def _summary(pages: HostPages) -> str:
    return ", ".join(f"host {n}: {p}" for n, p in pages.by_node) or "no pages"


def numa_maps_informative(reports: Sequence[NumaMapsReport]) -> bool:
    """Worth printing without being asked: the topology names host nodes (the user asked about
    this host), or some node's pages landed on another host node than the others'."""
    if any(n.expected for r in reports for n in r.nodes):
        return True
    used = {node for r in reports for n in r.nodes if n.pages for node, _ in n.pages.by_node}
    return len(used) > 1


def format_numa_maps(reports: Mapping[str, NumaMapsReport]) -> list[str]:
    """Lines for ``numaemu run``'s output, one report per policy: one line when every node of
    every policy landed on one host node (a non-NUMA host: host node 0), else one per policy."""
    head = "memory placement (numa_maps, each node's partition, pages per host node)"
    bad = [f"{p}: {r.reason}" for p, r in reports.items() if not r.available]
    if bad and not any(n.pages is not None for r in reports.values() for n in r.nodes):
        return [f"memory placement: unavailable ({bad[0]})"]
    used = {node for r in reports.values() for n in r.nodes if n.pages for node, _ in n.pages.by_node}
    lines = []
    if len(used) == 1 and not bad:
        (host,) = used
        lines.append(f"{head}: every node's pages on host node {host}")
        return lines
    lines.append(head + ":")
    for policy, r in reports.items():
        nodes = "; ".join(
            f"node {n.node} -> " + (_summary(n.pages) if n.pages else f"unavailable ({n.error})") for n in r.nodes
        )
        lines.append(f"  {policy:<11}{nodes}")
    return lines


# --------------------------------------------------------------------------------------------
# Reading (the OS half; never raises)


def read_numa_maps(
    pids: Sequence[int | None],
    segment_path: str,
    expected: Sequence[tuple[int, ...]],
    proc_root: str | Path = "/proc",
) -> NumaMapsReport:
    """Read each node's ``/proc/<pid>/numa_maps`` and find its pages of `segment_path`.

    Never raises: whatever goes wrong for a node becomes that node's `error` (the file is
    missing on a kernel without CONFIG_NUMA; reading another user's process needs ptrace
    access, fs/proc/base.c; the process may be gone)."""
    nodes = []
    for node, pid in enumerate(pids):
        exp = tuple(expected[node]) if node < len(expected) else ()
        if pid is None:
            nodes.append(NodePlacement(node, pid, exp, None, "no process"))
            continue
        path = Path(proc_root) / str(pid) / "numa_maps"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            why = f"{path} does not exist (process gone, or a kernel without CONFIG_NUMA)"
            nodes.append(NodePlacement(node, pid, exp, None, why))
            continue
        except OSError as e:
            nodes.append(NodePlacement(node, pid, exp, None, f"cannot read {path}: {e.strerror or e}"))
            continue
        try:
            pages = file_pages(parse_numa_maps(text), segment_path)
        except ValueError as e:
            nodes.append(NodePlacement(node, pid, exp, None, f"{path}: {e}"))
            continue
        if pages is None:
            nodes.append(NodePlacement(node, pid, exp, None, f"{path} has no mapping of {segment_path}"))
            continue
        nodes.append(NodePlacement(node, pid, exp, pages))
    return NumaMapsReport(segment_path, tuple(nodes))
