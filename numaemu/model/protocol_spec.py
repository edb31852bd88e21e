"""Patch protocols as data (pure logic): a sequence of steps over copies and nodes, which
``numaemu stress --protocol FILE`` and the API run and check like the kernel's own.

A protocol file is TOML::

    name = "write every replica, then one sync"
    arch = "x86_64"                 # which image it patches: x86_64 or arm64
    [[step]]
    write = "insn"                  # what to write: int3 (an INT3 over the first byte), tail
                                    # (bytes 1..n-1), first (the new first byte), insn (the whole
                                    # new instruction), word (one aligned 4-byte store, arm64)
    copies = "all"                  # into which copies: all (every replica, one after another,
                                    # as __text_poke loops), node0 (the copy on node 0 first, as
                                    # King's series writes), others (every copy but node 0's)
    [[step]]
    sync = "all"                    # IPI every node to serialise; wait = false returns at once
    wait = true

Every write also goes to the master (numaemu's reference for the old-byte check), at the first
step that writes a site's bytes. A protocol with an ``int3`` step publishes the batch in the
text_poke_bp descriptor first (so INT3 handlers can emulate the new instruction) and releases it
at the end with the run's INT3 fix. The kernel's protocols in this form are `KERNEL_PROTOCOLS`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from numaemu.errors import UsageError

__all__ = ["Step", "ProtocolSpec", "WRITES", "COPIES", "KERNEL_PROTOCOLS", "parse_protocol", "protocol_from_mapping"]

WRITES = ("int3", "tail", "first", "insn", "word")
COPIES = ("all", "node0", "others")


@dataclass(frozen=True)
class Step:
    """One step: a write (`write` into `copies`) or a sync (of every node, waited for or not)."""

    write: str | None = None
    copies: str = "all"
    sync: bool = False
    wait: bool = True

    def describe(self, index: int) -> str:
        if self.write is not None:
            return f"step {index + 1}: write {self.write} into {self.copies} copies"
        return f"step {index + 1}: sync every node" + ("" if self.wait else " (not waited for)")


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    arch: str
    steps: tuple[Step, ...]

    @property
    def uses_int3(self) -> bool:
        return any(s.write == "int3" for s in self.steps)

    def to_mapping(self) -> dict[str, Any]:
        """The document `protocol_from_mapping` reads back (a counterexample file keeps it)."""
        steps: list[dict[str, Any]] = [
            {"write": st.write, "copies": st.copies} if st.write is not None else {"sync": "all", "wait": st.wait} for st in self.steps
        ]
        return {"name": self.name, "arch": self.arch, "step": steps}

    def check_complete(self) -> str | None:
        """Why the steps cannot patch a site whole (None: they can): the last write of every
        byte must leave the new instruction."""
        writes = [s.write for s in self.steps if s.write is not None]
        if not writes:
            return "it writes nothing"
        covered_first = any(w in ("first", "insn", "word") for w in writes)
        covered_tail = any(w in ("tail", "insn", "word") for w in writes)
        if not (covered_first and covered_tail):
            return "its writes never leave the whole new instruction (it needs insn or word, or tail and first)"
        last_first = max(i for i, w in enumerate(writes) if w in ("int3", "first", "insn", "word"))
        if writes[last_first] == "int3":
            return "its last write of the first byte is an INT3"
        return None


def _step(i: int, raw: object) -> Step:
    where = f"step {i + 1}"
    if not isinstance(raw, Mapping):
        raise UsageError("--protocol", f"{where} must be a table, got {raw!r}")
    unknown = set(raw) - {"write", "copies", "sync", "wait"}
    if unknown:
        raise UsageError("--protocol", f"{where}: unknown key(s) {', '.join(sorted(unknown))} (keys: write, copies, sync, wait)")
    if ("write" in raw) == ("sync" in raw):
        raise UsageError("--protocol", f"{where} must have exactly one of write or sync")
    if "write" in raw:
        if raw["write"] not in WRITES:
            raise UsageError("--protocol", f"{where}: write must be one of {', '.join(WRITES)}, got {raw['write']!r}")
        copies = raw.get("copies", "all")
        if copies not in COPIES:
            raise UsageError("--protocol", f"{where}: copies must be one of {', '.join(COPIES)}, got {copies!r}")
        if "wait" in raw:
            raise UsageError("--protocol", f"{where}: wait belongs to a sync step")
        return Step(write=raw["write"], copies=copies)
    if raw["sync"] != "all":
        raise UsageError("--protocol", f"{where}: sync must be 'all' (every node), got {raw['sync']!r}")
    wait = raw.get("wait", True)
    if not isinstance(wait, bool):
        raise UsageError("--protocol", f"{where}: wait must be true or false, got {wait!r}")
    if "copies" in raw:
        raise UsageError("--protocol", f"{where}: copies belongs to a write step")
    return Step(sync=True, wait=wait)


def protocol_from_mapping(doc: Mapping[str, Any], source: str = "protocol") -> ProtocolSpec:
    """A protocol from a parsed TOML document (see the module docstring); bad input is a
    `UsageError` naming the step and the rule."""
    unknown = set(doc) - {"name", "arch", "step"}
    if unknown:
        raise UsageError("--protocol", f"{source}: unknown key(s) {', '.join(sorted(unknown))} (keys: name, arch, step)")
    name = doc.get("name", source)
    if not isinstance(name, str) or not name:
        raise UsageError("--protocol", f"{source}: name must be a non-empty string")
    arch = doc.get("arch", "x86_64")
    if arch not in ("x86_64", "arm64"):
        raise UsageError("--protocol", f"{source}: arch must be x86_64 or arm64, got {arch!r}")
    raw = doc.get("step")
    if not isinstance(raw, list) or not raw:
        raise UsageError("--protocol", f"{source}: needs at least one [[step]]")
    steps = tuple(_step(i, r) for i, r in enumerate(raw))
    spec = ProtocolSpec(name, arch, steps)
    for st in steps:
        if arch == "arm64" and st.write in ("int3", "tail", "first"):
            raise UsageError("--protocol", f"{source}: {st.write} is an x86 write; arm64 instructions are written whole (word)")
        if arch == "x86_64" and st.write == "word":
            raise UsageError("--protocol", f"{source}: word is an arm64 write (one aligned 4-byte store); x86 uses int3, tail, first or insn")
    why = spec.check_complete()
    if why:
        raise UsageError("--protocol", f"{source}: {why}")
    return spec


def parse_protocol(text: str, name: str) -> ProtocolSpec:
    """A protocol file's text (TOML; `name`, the file's, for messages). host.files.load_protocol
    reads the file."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("--protocol", f"{name} is not valid TOML: {exc}") from None
    return protocol_from_mapping(doc, name)


_W, _S = Step, Step(sync=True)
# The kernel's protocols, and both series' replica orders, as data.
KERNEL_PROTOCOLS = {
    # arch/x86/kernel/alternative.c text_poke_bp_batch; Kuzin's __text_poke writes every replica
    # in turn for each write.
    "text_poke_bp": ProtocolSpec("text_poke_bp", "x86_64", (_W("int3"), _S, _W("tail"), _S, _W("first"), _S)),
    # arm64 aarch64_insn_patch_text_nosync + kick_all_cpus_sync; King writes node 0's copy first.
    "nosync": ProtocolSpec("nosync", "arm64", (_W("word"),  _S)),
    "nosync-king": ProtocolSpec("nosync, King's order", "arm64", (_W("word", "node0"), _W("word", "others"), _S)),
}
