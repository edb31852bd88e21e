"""Kernel samples recorded by perf: the formats ``--trace`` reads, and numaemu's own (pure).

Four formats, told apart by their content (`detect_format`):

- a **numaemu recording** (``numaemu record``; JSON, ``"format": "numaemu-recording"``,
  versioned): the recording kernel's release, the command, the sample rate, the duration, the
  share of samples in the kernel, the recording kernel's sizes of the functions touched (from its
  /proc/kallsyms), and the distinct kernel callchains as ``symbol+0xoffset`` frames, leaf first,
  with their counts and the order in which they were sampled. The README documents it field by
  field;
- **perf script**'s default output, with callchains (``perf record -g``: a header line, then one
  ``\\t ADDRESS SYMBOL+0xOFF (DSO)`` line a frame, leaf first, and a blank line) or without (the
  frame on the header line);
- **perf script -F ip,sym,symoff** (frames without a header or a DSO);
- the **old address lists** (one virtual address a line), read by
  `numaemu.model.workloads.parse_trace` as before.

Only kernel frames are kept (``[kernel.kallsyms]``, or an address in the kernel half of the
address space when perf printed no DSO); a sample with none is a user-space sample and only
counts towards the kernel share. perf's callchain is cut at the first user frame.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from numaemu.errors import UsageError, excerpt
from numaemu.model.arrays import I64

__all__ = [
    "FORMAT",
    "VERSION",
    "Frame",
    "Recording",
    "detect_format",
    "parse_perf_script",
    "parse_recording",
    "parse_frame",
    "recording_from_samples",
    "command_samples",
]

FORMAT = "numaemu-recording"
VERSION = 1
PARAM = "--trace"
KERNEL_HALF = 0xFFFF800000000000  # x86-64 and arm64 (48-bit VA): kernel addresses start here
MAX_CHAIN = 512  # perf's default kernel.perf_event_max_stack is 127

# perf script's sample header: "COMM TID [CPU] SEC.USEC: [PERIOD] EVENT: [frame]" (builtin-script.c
# perf_sample__fprintf_start and process_event); COMM may hold spaces, so anchor on the timestamp.
_HEADER = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<tid>-?\d+)(?:/-?\d+)?\s+(?:\[\d+\]\s+)?(?P<time>\d+\.\d+):\s+(?:(?P<period>\d+)\s+)?(?P<event>[\w:/.\-]+?):\s*(?P<rest>.*)$")
# A frame: "ADDRESS SYMBOL[+0xOFF] [(DSO)]" (perf's sample__fprintf_callchain, print_sym/symoff).
_FRAME = re.compile(r"^\s*(?P<ip>[0-9a-fA-F]+)\s+(?P<sym>\S.*?)(?:\+0x(?P<off>[0-9a-fA-F]+))?(?:\s+\((?P<dso>[^()]*)\))?\s*$")
_SYMOFF = re.compile(r"^(?P<sym>[^\s+]+)\+0x(?P<off>[0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Frame:
    """One kernel frame: a function name and an offset into it, or only an address (perf
    printed ``[unknown]``)."""

    name: str | None
    offset: int
    address: int | None = None

    def text(self) -> str:
        return f"{self.name}+{self.offset:#x}" if self.name is not None else f"{self.address:#x}"


@dataclass(frozen=True, eq=False)
class Recording:
    """Kernel samples: distinct callchains (leaf first) with counts, in sampled order."""

    source: str  # the file, for messages
    format: str  # "numaemu recording v1", "perf script", "perf script -F ip,sym,symoff"
    chains: tuple[tuple[Frame, ...], ...]
    counts: I64  # samples of each chain
    sequence: I64  # the chain of each kernel sample, in the order sampled
    samples: int  # all samples, user-only ones included
    sizes: dict[str, int]  # the recording kernel's size of functions touched (may be empty)
    callchains: bool  # False: one frame a sample (recorded without -g)
    meta: dict[str, Any]  # kernel release, command, frequency, duration (a recording's own)

    @property
    def kernel_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def kernel_share(self) -> float:
        return self.kernel_samples / max(1, self.samples)

    def leaf_counts(self) -> Counter[str]:
        """Kernel samples by the function they stopped in (its name, or its address)."""
        leaf: Counter[str] = Counter()
        for chain, n in zip(self.chains, self.counts.tolist(), strict=True):
            leaf[chain[0].name or chain[0].text()] += n
        return leaf


def detect_format(text: str) -> str:
    """``"recording"``, ``"perf"`` or ``"addresses"``, from the file's first meaningful line."""
    head = text.lstrip()
    if head.startswith("{"):
        return "recording"
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        return "perf" if len(item.split()) > 1 else "addresses"  # an address list: one token a line
    return "addresses"


def parse_frame(text: str) -> Frame:
    """``name+0xoff`` or ``0xADDRESS`` (a numaemu recording's frame)."""
    m = _SYMOFF.match(text)
    if m:
        return Frame(m.group("sym"), int(m.group("off"), 16))
    if re.fullmatch(r"0x[0-9a-fA-F]{1,16}", text):
        return Frame(None, 0, int(text, 16))
    raise ValueError(text)


def _kernel_frame(m: re.Match[str]) -> Frame | None:
    """The frame a perf line gives, or None when it is not the kernel's."""
    ip = int(m.group("ip"), 16)
    dso = m.group("dso")
    if dso is not None and not dso.startswith("[kernel") and dso != "[unknown]":
        return None
    if ip < KERNEL_HALF:
        return None
    sym = m.group("sym").strip()
    if sym == "[unknown]" or m.group("off") is None and sym.startswith("["):
        return Frame(None, 0, ip)
    return Frame(sym, int(m.group("off") or "0", 16))  # by name: the address is the recording kernel's


def parse_perf_script(text: str, source: str) -> Recording:
    """perf script's default output or ``-F ip,sym,symoff``, with or without callchains."""
    lines = text.splitlines()
    chains: list[tuple[Frame, ...]] = []
    samples = 0
    current: list[Frame] = []
    in_sample = False
    callchains = False
    fmt = "perf script"

    def close() -> None:
        nonlocal current, in_sample
        if in_sample and current:
            chains.append(tuple(current[:MAX_CHAIN]))
        current = []
        in_sample = False

    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            close()
            continue
        if raw.startswith("#"):
            continue
        header = None if raw[0] == "\t" else _HEADER.match(raw)
        if header is None and raw[0] in " \t":
            m = _FRAME.match(raw)
            if m is None:
                raise UsageError(PARAM, f"{source}:{lineno}: '{excerpt(raw)}' is neither a perf script sample header nor a frame 'ADDRESS SYMBOL+0xOFFSET'")
            frame = _kernel_frame(m)
            if raw[0] == "\t":  # a callchain's frame; -F ip,sym,symoff starts a sample with it
                callchains = True
                if not in_sample:
                    samples += 1
                    in_sample = True
                    fmt = "perf script -F ip,sym,symoff"
                if frame is not None:
                    current.append(frame)
            else:  # -F ip,sym,symoff without callchains: one sample a line
                close()
                samples += 1
                fmt = "perf script -F ip,sym,symoff"
                if frame is not None:
                    chains.append((frame,))
            continue
        m = header
        if m is None:
            raise UsageError(PARAM, f"{source}:{lineno}: '{excerpt(raw)}' is not a perf script sample header (COMM TID TIME: PERIOD EVENT:), a frame, or an address")
        close()
        samples += 1
        in_sample = True
        rest = m.group("rest").strip()
        if rest:  # recorded without -g: the one frame is on the header line
            f = _FRAME.match(rest)
            if f is None:
                raise UsageError(PARAM, f"{source}:{lineno}: '{excerpt(rest)}' is not a frame 'ADDRESS SYMBOL+0xOFFSET (DSO)'")
            frame = _kernel_frame(f)
            if frame is not None:
                current.append(frame)
            close()
    close()
    if samples == 0:
        raise UsageError(PARAM, f"{source}: no samples in the file (is it perf script output?)")
    if not chains:
        raise UsageError(PARAM, f"{source}: none of its {samples:,} samples is in the kernel (record with 'perf record -e cpu-clock -g' as root, or perf_event_paranoid <= 1)")
    return recording_from_samples(chains, samples, source, fmt, callchains, {}, {})


def recording_from_samples(samples: list[tuple[Frame, ...]], total: int, source: str, fmt: str, callchains: bool, sizes: dict[str, int], meta: dict[str, Any]) -> Recording:
    """Kernel samples in sampled order, folded into distinct chains with counts."""
    index: dict[tuple[Frame, ...], int] = {}
    seq = np.array([index.setdefault(c, len(index)) for c in samples], dtype=np.int64)
    chains = tuple(index)
    counts = np.bincount(seq, minlength=len(chains)).astype(np.int64)
    return Recording(source, fmt, chains, counts, seq, total, sizes, callchains, meta)


# ------------------------------------------------------------------------------------------
# numaemu's own format


def recording_document(rec: Recording, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document `numaemu record` writes (`parse_recording` reads it back): each
    distinct frame once (``frames``), each chain as ``[count, frame index, ...]`` leaf first."""
    index: dict[Frame, int] = {}
    for chain in rec.chains:
        for f in chain:
            index.setdefault(f, len(index))
    frames = [f.text() for f in index]
    return {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "samples": rec.samples,
        "kernel_samples": rec.kernel_samples,
        "kernel_share": round(rec.kernel_share, 4),
        "callchains": rec.callchains,
        "sizes": dict(sorted(rec.sizes.items())),
        "frames": frames,
        "chains": [[int(n), *(index[f] for f in chain)] for chain, n in zip(rec.chains, rec.counts, strict=True)],
        "sequence": rec.sequence.tolist(),
    }


def parse_recording(text: str, source: str) -> Recording:
    """A numaemu recording (JSON, `recording_document`); every flaw is one `UsageError`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(PARAM, f"{source}: not a numaemu recording: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(PARAM, f"{source}: not a numaemu recording (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise UsageError(PARAM, f"{source}: recording version {doc.get('version')!r}; this numaemu reads version {VERSION} (re-record it with this numaemu's 'numaemu record')")
    try:
        frames = [parse_frame(str(f)) for f in doc["frames"]]
        chains = tuple(tuple(frames[int(i)] for i in c[1:]) for c in doc["chains"])
        counts = np.array([int(c[0]) for c in doc["chains"]], dtype=np.int64)
        seq = np.array(doc.get("sequence") or np.repeat(np.arange(len(chains)), counts), dtype=np.int64)
        sizes = {str(k): int(v) for k, v in doc.get("sizes", {}).items()}
        samples = int(doc["samples"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UsageError(PARAM, f"{source}: a malformed numaemu recording ({type(exc).__name__}: {exc})") from None
    if not chains or counts.sum() <= 0:
        raise UsageError(PARAM, f"{source}: the recording has no kernel samples")
    if (counts <= 0).any() or len(seq) and (seq.min() < 0 or seq.max() >= len(chains)) or not np.array_equal(np.bincount(seq, minlength=len(chains)), counts):
        raise UsageError(PARAM, f"{source}: a malformed numaemu recording: its sequence does not match its chains' counts")
    meta = {k: doc[k] for k in ("kernel", "release", "command", "frequency_hz", "event", "duration_s", "recorded_at") if k in doc}
    return Recording(source, f"numaemu recording v{VERSION}", chains, counts, seq, max(samples, int(counts.sum())), sizes, bool(doc.get("callchains", True)), meta)


_COMM = re.compile(r"PERF_RECORD_COMM(?: exec)?: (?P<name>.*):(?P<pid>\d+)/\d+\s*$")
_FORK = re.compile(r"PERF_RECORD_FORK\((?P<pid>\d+):\d+\):\((?P<ppid>\d+):\d+\)")


def command_samples(text: str, root_comm: str = "perf-exec") -> str:
    """The samples of one command's process tree, from a system-wide ``perf script
    --show-task-events`` (``-F pid,...``): the tree's root is the process perf started for the
    command (named ``perf-exec`` until it execs, tools/perf/util/evlist.c), its members every
    process forked from it (PERF_RECORD_FORK), and the task events themselves are dropped."""
    tree: set[int] = set()
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        if "PERF_RECORD_" in line:
            m = _COMM.search(line)
            if m and m.group("name") == root_comm and not tree:
                tree.add(int(m.group("pid")))
            f = _FORK.search(line)
            if f and int(f.group("ppid")) in tree:
                tree.add(int(f.group("pid")))
            continue
        if line and line[0] != "\t":
            h = _HEADER.match(line)
            if h is not None:
                keep = int(h.group("tid")) in tree
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"
