"""Protocols as data (model/protocol_spec.py): parsing, the rules a protocol must follow, and the
kernel's protocols and the examples/ files in that form."""

from __future__ import annotations

import pytest

from numaemu.errors import UsageError
from numaemu.host.files import load_protocol
from numaemu.model.protocol_spec import KERNEL_PROTOCOLS, Step, protocol_from_mapping

from .conftest import ROOT


def doc(*steps: dict, arch: str = "x86_64") -> dict:
    return {"name": "p", "arch": arch, "step": list(steps)}


def test_the_examples_are_the_kernels_protocols() -> None:
    tpb = load_protocol(ROOT / "examples" / "protocol_text_poke_bp.toml")
    assert tpb.steps == KERNEL_PROTOCOLS["text_poke_bp"].steps and tpb.uses_int3
    king = load_protocol(ROOT / "examples" / "protocol_king_nosync.toml")
    assert king.steps == KERNEL_PROTOCOLS["nosync-king"].steps and king.arch == "arm64"
    broken = load_protocol(ROOT / "examples" / "protocol_write_then_sync.toml")
    assert broken.steps == (Step(write="insn"), Step(sync=True)) and not broken.uses_int3


def test_steps_describe_themselves() -> None:
    assert Step(write="tail", copies="others").describe(2) == "step 3: write tail into others copies"
    assert Step(sync=True, wait=False).describe(0) == "step 1: sync every node (not waited for)"


@pytest.mark.parametrize(("d", "message"), [
    (doc({"write": "half"}), "step 1: write must be one of int3, tail, first, insn, word"),
    (doc({"write": "insn", "sync": "all"}), "step 1 must have exactly one of write or sync"),
    (doc({"write": "insn", "copies": "node7"}), "copies must be one of all, node0, others"),
    (doc({"write": "insn"}, {"sync": "some"}), "step 2: sync must be 'all'"),
    (doc({"write": "insn"}, {"sync": "all", "wait": "yes"}), "wait must be true or false"),
    (doc({"write": "insn", "wait": True}), "wait belongs to a sync step"),
    (doc({"write": "insn", "speed": 1}), "unknown key(s) speed"),
    (doc({"sync": "all"}), "it writes nothing"),
    (doc({"write": "int3"}, {"write": "tail"}), "never leave the whole new instruction"),
    (doc({"write": "insn"}, {"write": "int3"}), "its last write of the first byte is an INT3"),
    (doc({"write": "word"}), "word is an arm64 write"),
    (doc({"write": "int3"}, {"write": "insn"}, arch="arm64"), "int3 is an x86 write"),
    ({"name": "p", "step": []}, "needs at least one [[step]]"),
    ({"name": "p", "arch": "riscv", "step": [{"write": "insn"}]}, "arch must be x86_64 or arm64"),
    ({"name": "p", "steps": []}, "unknown key(s) steps"),
])
def test_bad_protocols_are_refused_with_the_rule(d, message) -> None:
    with pytest.raises(UsageError, match="--protocol") as info:
        protocol_from_mapping(d)
    assert message in str(info.value)


def test_a_missing_or_broken_file_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_protocol(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(UsageError, match="is not valid TOML"):
        load_protocol(tmp_path / "bad.toml")
