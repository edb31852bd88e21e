"""Tests for numaemu.patching.reader.check_batch and check_order: the checkers judge hand-built
observations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from numaemu.model.image import ARM64_NOP, NOP2, NOP5, synthetic_image, with_module_area
from numaemu.model.sites import (
    FTRACE_BPF,
    FTRACE_CALLER,
    FTRACE_OFF,
    KIND_ALT,
    KIND_JUMP,
    MAX_INSN,
    SiteTable,
    site_table,
)
from numaemu.patching.reader import Observation, Violation, check_batch, check_order


@pytest.fixture(scope="module")
def x86() -> SiteTable:
    return site_table(with_module_area(synthetic_image(0.01)))


@pytest.fixture(scope="module")
def arm() -> SiteTable:
    return site_table(with_module_area(synthetic_image(0.01, arch="arm64")))


def sites_of(t: SiteTable) -> dict[str, int]:
    nj = t.n_jump
    return {
        "two": int(np.flatnonzero(t.length[:nj] == 2)[0]),
        "five": int(np.flatnonzero(t.length[:nj] == 5)[0]),
        "ftrace": t.ftrace_site(7),
    }


def make_obs(rows: list[tuple]) -> Observation:
    """rows: (site, observed bytes, seq_before, seq_after, committed[, via_int3[, handler_ok[, pending]]])
    (pending: the state a call in flight moves the site to, + 1; 0: none)."""
    n = len(rows)
    observed = np.zeros((n, MAX_INSN), dtype=np.uint8)
    for i, r in enumerate(rows):
        observed[i, : len(r[1])] = np.frombuffer(r[1], dtype=np.uint8)
    return Observation(
        sites=np.array([r[0] for r in rows], dtype=np.int64),
        observed=observed,
        via_int3=np.array([r[5] if len(r) > 5 else False for r in rows], dtype=bool),
        handler_ok=np.array([r[6] if len(r) > 6 else True for r in rows], dtype=bool),
        seq_before=np.array([r[2] for r in rows], dtype=np.int64),
        seq_after=np.array([r[3] for r in rows], dtype=np.int64),
        committed=np.array([r[4] for r in rows], dtype=np.int8),
        pending=np.array([r[7] if len(r) > 7 else 0 for r in rows], dtype=np.int64),
    )


def one(t: SiteTable, *row) -> tuple[int, list[Violation]]:
    return check_batch(make_obs([row]), t, node=3)


# -- legitimate observations ---------------------------------------------------------------------


def test_stable_committed_state_passes(x86) -> None:
    s = sites_of(x86)
    rows = [
        (s["two"], NOP2, 0, 0, 0),
        (s["five"], NOP5, 4, 4, 0),
        (s["two"], x86.encoding(s["two"], 1), 2, 2, 1),
        (s["five"], x86.encoding(s["five"], 1), 6, 6, 1),
        (s["ftrace"], x86.encoding(s["ftrace"], FTRACE_BPF), 8, 8, FTRACE_BPF),
    ]
    assert check_batch(make_obs(rows), x86, node=0) == (0, [])


@pytest.mark.parametrize("seqs", [(1, 1), (1, 2), (0, 1), (0, 2), (2, 4), (3, 4)], ids=lambda s: f"seq{s[0]}-{s[1]}")
@pytest.mark.parametrize("which", ["two", "five", "ftrace"])
def test_unstable_window_old_new_or_int3_passes(x86, which: str, seqs: tuple[int, int]) -> None:
    site = sites_of(x86)[which]
    new_state = FTRACE_CALLER if which == "ftrace" else 1
    old, new = x86.encoding(site, 0), x86.encoding(site, new_state)
    rows = [
        (site, old, *seqs, 0),
        (site, new, *seqs, 0),
        (site, new, *seqs, 0, True, True),  # INT3 hit, the handler emulated the new instruction
    ]
    assert check_batch(make_obs(rows), x86, node=1) == (0, [])


# -- each failure kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["two", "five"])
@pytest.mark.parametrize("seqs", [(1, 1), (0, 2), (2, 2)], ids=["odd", "changed", "stable"])
def test_torn(x86, which: str, seqs: tuple[int, int]) -> None:
    site = sites_of(x86)[which]
    L = int(x86.length[site])
    old, new = x86.encoding(site, 0), x86.encoding(site, 1)
    torn = old[:1] + new[1:]
    assert x86.state_of(site, torn) is None
    n, vs = one(x86, site, torn, *seqs, 0)
    assert n == 1
    assert vs == [Violation("torn", 3, site, int(x86.offset[site]), torn.hex(" "), "not any valid instruction of this site")]
    assert len(vs[0].observed.split()) == L
    # the other mix too: new first byte, old tail
    mix = new[:1] + old[1:]
    n, vs = one(x86, site, mix, *seqs, 1)
    assert n == 1 and vs[0].kind == "torn" and vs[0].observed == mix.hex(" ")


def test_torn_ftrace_call_half_written(x86) -> None:
    site = sites_of(x86)["ftrace"]
    mix = x86.encoding(site, FTRACE_CALLER)[:3] + NOP5[3:]
    assert x86.state_of(site, mix) is None
    n, vs = one(x86, site, mix, 5, 5, FTRACE_CALLER)
    assert n == 1 and vs[0].kind == "torn"


def test_torn_int3_intermediate_executed_as_is(x86) -> None:
    """An INT3-headed intermediate that reached the checker unemulated is no valid instruction."""
    site = sites_of(x86)["five"]
    got = bytes([0xCC]) + NOP5[1:]
    n, vs = one(x86, site, got, 1, 1, 0)
    assert (n, vs[0].kind, vs[0].observed) == (1, "torn", "cc 1f 44 00 00")


@pytest.mark.parametrize("which", ["two", "five", "ftrace"])
def test_stale(x86, which: str) -> None:
    site = sites_of(x86)[which]
    new_state = FTRACE_CALLER if which == "ftrace" else 1
    old, new = x86.encoding(site, 0), x86.encoding(site, new_state)
    # the call that returned committed the new state, the node still runs the old bytes
    n, vs = one(x86, site, old, 2, 2, new_state)
    assert n == 1
    assert vs == [Violation("stale", 3, site, int(x86.offset[site]), old.hex(" "), f"the last call that returned left {new.hex(' ')}")]
    # and the other way round
    n, vs = one(x86, site, new, 4, 4, 0)
    assert n == 1 and vs[0].kind == "stale" and vs[0].observed == new.hex(" ")
    assert vs[0].detail == f"the last call that returned left {old.hex(' ')}"


def test_stale_ftrace_wrong_trampoline(x86) -> None:
    site = sites_of(x86)["ftrace"]
    n, vs = one(x86, site, x86.encoding(site, FTRACE_BPF), 6, 6, FTRACE_CALLER)
    assert n == 1 and vs[0].kind == "stale"


@pytest.mark.parametrize("which", ["two", "five"])
def test_int3_after_return(x86, which: str) -> None:
    site = sites_of(x86)[which]
    new = x86.encoding(site, 1)
    n, vs = one(x86, site, new, 2, 2, 1, True, True)
    assert n == 1
    assert vs == [Violation("int3-after-return", 3, site, int(x86.offset[site]), new.hex(" "), "INT3 executed after the patch call returned")]


@pytest.mark.parametrize("seqs", [(1, 1), (1, 2), (2, 2)], ids=["odd", "changed", "stable"])
def test_int3_no_descriptor(x86, seqs: tuple[int, int]) -> None:
    site = sites_of(x86)["five"]
    # the handler found nothing: it returns zeros, which no check may mistake for anything else
    n, vs = one(x86, site, bytes(5), *seqs, 0, True, False)
    assert n == 1
    assert vs == [
        Violation(
            "int3-no-descriptor",
            3,
            site,
            int(x86.offset[site]),
            "00 00 00 00 00",
            "INT3 handler found no live descriptor entry (or it changed under the handler)",
        )
    ]


def test_violation_to_json(x86) -> None:
    site = sites_of(x86)["two"]
    _, vs = one(x86, site, NOP2, 2, 2, 1)
    assert vs[0].to_json() == {
        "kind": "stale",
        "node": 3,
        "site": site,
        "address": hex(int(x86.offset[site])),
        "observed": "66 90",
        "expected": x86.encoding(site, 1).hex(" "),
        "detail": f"the last call that returned left {x86.encoding(site, 1).hex(' ')}",
    }


def test_mixed_batch_counts_and_limit(x86) -> None:
    s = sites_of(x86)
    two, five, f = s["two"], s["five"], s["ftrace"]
    rows = [
        (two, NOP2, 0, 0, 0),  # ok
        (five, NOP5[:1] + x86.encoding(five, 1)[1:], 1, 1, 0),  # torn
        (two, NOP2, 2, 2, 1),  # stale
        (five, x86.encoding(five, 1), 1, 2, 0, True, True),  # ok (unstable, emulated)
        (five, x86.encoding(five, 1), 2, 2, 1, True, True),  # int3-after-return
        (f, bytes(5), 1, 1, 0, True, False),  # int3-no-descriptor
        (f, x86.encoding(f, FTRACE_OFF), 0, 0, 0),  # ok
    ]
    n, vs = check_batch(make_obs(rows), x86, node=2)
    assert n == 4
    assert [(v.kind, v.site, v.node) for v in vs] == [
        ("torn", five, 2),
        ("stale", two, 2),
        ("int3-after-return", five, 2),
        ("int3-no-descriptor", f, 2),
    ]
    n2, vs2 = check_batch(make_obs(rows), x86, node=2, limit=2)
    assert n2 == 4 and [v.kind for v in vs2] == ["torn", "stale"]
    assert check_batch(make_obs(rows), x86, node=2, limit=0) == (4, [])


def test_garbage_past_the_length_is_ignored(x86) -> None:
    site = sites_of(x86)["two"]
    obs = make_obs([(site, NOP2 + b"\xff\xff\xff", 0, 0, 0)])
    assert check_batch(obs, x86, node=0) == (0, [])


def test_module_sites(x86) -> None:
    from numaemu.model.sites import KIND_ALT

    alt = int(x86.module_sites(1, KIND_ALT)[0])
    lf = x86.encoding(alt, 1)
    assert check_batch(make_obs([(alt, lf, 2, 2, 1), (alt, lf, 1, 1, 0)]), x86, node=0) == (0, [])
    n, vs = check_batch(make_obs([(alt, bytes.fromhex("0f1f00"), 2, 2, 1)]), x86, node=0)
    assert n == 1 and vs[0].kind == "stale" and vs[0].observed == "0f 1f 00"
    # a state the alternative site does not have (only two states) is foreign
    n, vs = check_batch(make_obs([(alt, bytes.fromhex("0faef0"), 1, 1, 0)]), x86, node=0)
    assert n == 1 and vs[0].kind == "torn"


# -- arm64 ---------------------------------------------------------------------------------------


def test_arm64(arm) -> None:
    j, f = 0, arm.ftrace_site(3)
    b, bl = arm.encoding(j, 1), arm.encoding(f, FTRACE_CALLER)
    ok_rows = [
        (j, ARM64_NOP, 0, 0, 0),
        (j, b, 2, 2, 1),
        (j, ARM64_NOP, 1, 1, 0),
        (j, b, 1, 1, 0),
        (j, ARM64_NOP, 0, 2, 1),
        (j, b, 0, 2, 0),
        (f, bl, 1, 2, 0),
        (f, ARM64_NOP, 3, 4, 0),
    ]
    assert check_batch(make_obs(ok_rows), arm, node=0) == (0, [])
    n, vs = check_batch(make_obs([(j, ARM64_NOP, 2, 2, 1)]), arm, node=1)
    assert n == 1
    assert vs == [Violation("stale", 1, j, int(arm.offset[j]), "1f 20 03 d5", f"the last call that returned left {b.hex(' ')}")]
    n, vs = check_batch(make_obs([(f, bl, 4, 4, 0), (f, arm.encoding(f, FTRACE_BPF), 4, 4, FTRACE_CALLER)]), arm, node=0)
    assert n == 2 and [v.kind for v in vs] == ["stale", "stale"]
    # a word that is neither (e.g. half-written) is torn even on arm64
    n, vs = check_batch(make_obs([(j, ARM64_NOP[:2] + b[2:], 1, 1, 0)]), arm, node=0)
    assert n == 1 and vs[0].kind == "torn"


# -- a task's history: new-then-old within one call (check_order) ---------------------------------


def test_new_then_old_within_one_call_is_found(x86) -> None:
    s = sites_of(x86)["five"]
    nop, jmp = x86.encoding(s, 0), x86.encoding(s, 1)
    seen = np.zeros(len(x86), dtype=np.int32)
    # call 3 (odd: in flight) moves the site 0 -> 1: the task runs the new JMP on one node ...
    assert len(check_order(make_obs([(s, jmp, 3, 3, 0, False, True, 2)]), x86, seen)) == 0
    assert seen[s] == 3
    # ... then the old NOP on another, in the same call: found, at that execution
    back = check_order(make_obs([(s, nop, 3, 3, 0, False, True, 2), (s, nop, 3, 3, 0, False, True, 2)]), x86, seen)
    assert back.tolist() == [0, 1]


@pytest.mark.parametrize(
    "second",
    [
        (5, 5, 1, 2),  # the next call (seq 5): old of that call is not old of call 3
        (4, 4, 1, 0),  # returned (even): the stable checks judge it (check_batch)
        (3, 4, 0, 2),  # the call returned during the execution: no safe "old"
        (3, 3, 1, 0),  # the committed state already written, no target known: not classified
    ],
)
def test_no_new_then_old_outside_one_call(x86, second) -> None:
    s = sites_of(x86)["five"]
    nop, jmp = x86.encoding(s, 0), x86.encoding(s, 1)
    seen = np.zeros(len(x86), dtype=np.int32)
    check_order(make_obs([(s, jmp, 3, 3, 0, False, True, 2)]), x86, seen)
    s1, s2, committed, pending = second
    assert len(check_order(make_obs([(s, nop, s1, s2, committed, False, True, pending)]), x86, seen)) == 0


def test_new_seen_through_the_int3_handler_counts_as_new(x86) -> None:
    # The handler emulates the new instruction (poke_int3_handler): new, then the old bytes.
    s = sites_of(x86)["five"]
    nop, jmp = x86.encoding(s, 0), x86.encoding(s, 1)
    seen = np.zeros(len(x86), dtype=np.int32)
    check_order(make_obs([(s, jmp, 7, 7, 0, True, True, 2)]), x86, seen)
    assert check_order(make_obs([(s, nop, 7, 7, 0, False, True, 2)]), x86, seen).tolist() == [0]


# -- a stop_machine round's writes (Observation.round_write) --------------------------------------


def _during_round(t: SiteTable, site: int, observed: bytes, committed: int, new: int, round_write: bool) -> tuple[int, list[Violation]]:
    obs = make_obs([(site, observed, 3, 3, committed, False, True, new + 1)])
    return check_batch(dataclasses.replace(obs, round_write=round_write), t, node=1)


def test_a_site_executed_while_a_round_writes_it_is_unsynchronized_on_x86(x86) -> None:
    s = sites_of(x86)["five"]
    n, out = _during_round(x86, s, NOP5, 0, 1, round_write=True)
    assert n == 1 and out[0].kind == "unsynchronized" and out[0].site == s
    # The same execution while the call was in flight but no round wrote: nothing to say.
    assert _during_round(x86, s, NOP5, 0, 1, round_write=False) == (0, [])
    # Nor for a site the call does not move (pending 0): another call's round.
    obs = dataclasses.replace(make_obs([(s, NOP5, 2, 2, 0)]), round_write=True)
    assert check_batch(obs, x86, node=1) == (0, [])


def test_arm64_lets_nop_and_branches_change_under_execution_but_not_other_instructions(arm) -> None:
    jump = int(np.flatnonzero(arm.kind[: arm.n_jump] == KIND_JUMP)[0])  # NOP <-> B
    assert _during_round(arm, jump, ARM64_NOP, 0, 1, round_write=True) == (0, [])
    ftrace = arm.ftrace_site(7)  # NOP <-> BL
    assert _during_round(arm, ftrace, ARM64_NOP, 0, FTRACE_BPF, round_write=True) == (0, [])
    alt = int(np.flatnonzero(arm.kind == KIND_ALT)[0])  # a module's NOP <-> DMB ISH
    n, out = _during_round(arm, alt, ARM64_NOP, 0, 1, round_write=True)
    assert n == 1 and out[0].kind == "unsynchronized"


def test_every_kind_the_checker_gives_names_its_invariant() -> None:
    from numaemu.patching.stress_report import INVARIANTS

    assert {"torn", "stale", "int3-after-return", "int3-no-descriptor", "unsynchronized"} <= set(INVARIANTS)
