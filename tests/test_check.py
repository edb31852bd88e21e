"""numaemu check: the explorer on toy systems whose interleavings are known (a lost update, a lock,
a deadlock), then on the patching code itself: every protocol bug yields a short counterexample
that replays, the kernel's protocols are clean, and bad sizes are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from numaemu.api.check import check, check_config, replay
from numaemu.cli import main
from numaemu.explore.scheduler import Explorer, Failure
from numaemu.host import clock

# -- the explorer on toy systems -----------------------------------------------------------------


class Counter:
    """Two actors each add 1 to a shared count, reading and writing it in two steps (a point
    between); with `locked`, under a flag lock. The end must hold 2."""

    def __init__(self, locked: bool, actors: int = 2) -> None:
        self.locked, self.n = locked, actors

    def reset(self) -> list[Any]:
        self.count, self.lock = 0, 0
        return [self._add for _ in range(self.n)]

    def _add(self) -> None:
        if self.locked:
            while self.lock:
                clock.point()
            self.lock = 1
        value = self.count
        clock.point()  # between the read and the write
        self.count = value + 1
        self.lock = 0
        clock.point()

    def digest(self, frames: list[Any]) -> bytes:
        return repr((self.count, self.lock, [None if f is None or isinstance(f, str) else (f.f_back.f_lineno, f.f_back.f_locals.get("value"))
                                             for f in frames], [isinstance(f, str) for f in frames])).encode()

    def finish(self) -> None:
        if self.count != self.n:
            raise Failure("lost-update", {"detail": f"count {self.count}"})

    def describe(self, actor: int) -> str:
        return f"actor {actor}"

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count}


def test_the_explorer_finds_the_lost_update_and_its_shortest_path() -> None:
    out = Explorer(Counter(locked=False), 10_000).explore()
    assert out.failure is not None and out.failure.kind == "lost-update"
    # Shortest: A reads, B reads (both at the point between), A writes, B writes, and both end.
    assert out.choices[:2] in ([0, 1], [1, 0])
    assert len(out.choices) <= 6
    assert Explorer(Counter(locked=False), 1).replay(out.choices) is not None  # the choices replay it


def test_the_explorer_finds_no_failure_where_there_is_none() -> None:
    ex = Explorer(Counter(locked=True), 10_000)
    out = ex.explore()
    assert out.failure is None and out.complete
    assert out.interleavings >= 1 and ex.paths >= 2  # at least A-then-B and B-then-A


class Deadlock(Counter):
    """Each actor waits for the other's flag before setting its own: neither ever does."""

    def reset(self) -> list[Any]:
        self.flags = [0, 0]
        return [lambda i=i: self._wait(i) for i in range(2)]

    def _wait(self, i: int) -> None:
        while not self.flags[1 - i]:
            clock.point()
        self.flags[i] = 1

    def digest(self, frames: list[Any]) -> bytes:
        return repr((self.flags, [isinstance(f, str) or f is None for f in frames])).encode()

    def finish(self) -> None:
        pass


def test_a_state_no_step_leaves_is_a_deadlock() -> None:
    out = Explorer(Deadlock(locked=False), 1000).explore()
    assert out.failure is not None and out.failure.kind == "deadlock"


def test_the_state_bound_makes_the_search_incomplete() -> None:
    out = Explorer(Counter(locked=True, actors=3), 5).explore()
    assert not out.complete and out.failure is None


# -- the patching code ---------------------------------------------------------------------------

# (options, the violation each protocol bug yields); the slow ones run in CI with the rest.
FAST = [
    ({"protocol": "stop_machine", "bug": "early-master"}, "unsynchronized"),
    ({"protocol": "nosync", "bug": "no-sync"}, "stale"),
    ({"protocol": "nosync", "bug": "no-final-sync"}, "stale"),
    ({"protocol": "nosync", "bug": "late-replica"}, "copy-differs"),
    ({"protocol": "nosync", "bug": "ivau-local"}, "stale"),
    ({"protocol": "stop_machine", "bug": "no-sync", "ifetch": "until-sync"}, "torn"),
    ({"protocol": "stop_machine", "bug": "key-race"}, "unexpected-op"),  # both read 0: a lost update, both patch
    ({"protocol": "stop_machine", "bug": "module-unload-running"}, "module-freed"),
    ({"protocol": "stop_machine", "bug": "ipmodify-shared"}, "ipmodify-twice"),
]
SLOW = [
    ({"protocol": "text_poke_bp", "bug": "descriptor-reuse"}, "int3-no-descriptor"),
    ({"protocol": "text_poke_bp", "bug": "no-int3-fix", "int3_fix": "extra-sync"}, "int3-no-descriptor"),
    ({"protocol": "text_poke_bp", "bug": "no-sync"}, "torn"),
    ({"protocol": "text_poke_bp", "bug": "no-final-sync"}, "int3-no-descriptor"),
    ({"protocol": "text_poke_bp", "bug": "key-race"}, "key-off-while-held"),
    ({"protocol": "text_poke_bp", "bug": "trampoline-no-rcu"}, "trampoline-freed"),
]


def _ids(cases: list[tuple[dict[str, str], str]]) -> list[str]:
    return ["-".join(c[0].values()) for c in cases]


@pytest.mark.parametrize(("options", "kind"), FAST, ids=_ids(FAST))
def test_each_protocol_bug_yields_a_short_counterexample(options, kind) -> None:
    result = check(check_config(**options))
    assert result.verdict == "violation" and result.outcome.failure is not None
    assert result.outcome.failure.kind == kind
    assert 1 <= len(result.steps) <= 20


@pytest.mark.slow
@pytest.mark.parametrize(("options", "kind"), SLOW, ids=_ids(SLOW))
def test_each_text_poke_bp_bug_yields_a_short_counterexample(options, kind) -> None:
    test_each_protocol_bug_yields_a_short_counterexample(options, kind)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["stop_machine", "nosync"])
def test_the_kernel_protocols_are_clean(protocol) -> None:
    result = check(check_config(protocol=protocol))
    assert result.verdict == "clean", result.outcome.failure and result.outcome.failure.detail
    assert result.outcome.states > 100 and result.interleavings and result.interleavings > 1000


@pytest.mark.slow
def test_text_poke_bp_is_clean() -> None:
    result = check(check_config(protocol="text_poke_bp"))
    assert result.verdict == "clean"


@pytest.mark.slow
def test_the_bpf_trampoline_freed_after_rcu_tasks_is_clean() -> None:
    result = check(check_config(protocol="stop_machine", source="bpf", requests=1))
    assert result.verdict == "clean"


def test_static_keys_on_every_node_at_once_are_clean() -> None:
    # Both nodes enable the key at once: jump_label_mutex orders them (key-race removes that).
    result = check(check_config(protocol="stop_machine", source="static_keys"))
    assert result.verdict == "clean" and result.outcome.states > 100


@pytest.mark.parametrize("source", ["module", "shared"])
def test_module_unload_and_shared_functions_are_clean(source) -> None:
    # The unload waits for the task inside the module; the second IPMODIFY user is refused.
    result = check(check_config(protocol="stop_machine", source=source, requests=1))
    assert result.verdict == "clean", result.outcome.failure and result.outcome.failure.detail
    assert result.outcome.states > 100


def test_the_broken_example_protocol_fails(capsys) -> None:
    code = main(["check", "--quiet", "--protocol", "examples/protocol_write_then_sync.toml"])
    out = capsys.readouterr().out
    assert code == 1 and "violation: torn" in out and "the shortest counterexample" in out


def test_a_saved_counterexample_replays(tmp_path, capsys) -> None:
    saved = tmp_path / "cx.json"
    assert main(["check", "--quiet", "--protocol", "nosync", "--inject-bug", "ivau-local", "--save", str(saved)]) == 1
    doc = json.loads(saved.read_text())
    assert doc["violation"]["kind"] == "stale" and doc["choices"]
    capsys.readouterr()
    assert main(["check", "--replay", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "violation: stale" in out and "replayed:" in out
    again = replay(saved)
    assert again.outcome.failure is not None and again.outcome.failure.kind == "stale"
    assert [s.to_json() for s in again.steps] == doc["steps"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--nodes", "4"], "error: --nodes: 4 is more than the search can hold"),
    (["--sites", "0"], "error: --sites: must be an integer >= 1"),
    (["--inject-bug", "module-unload-running", "--source", "shared"], "error: --inject-bug: module-unload-running is a bug of the module source"),
    (["--inject-bug", "no-sync", "--source", "module"], "error: --inject-bug: no-sync is planted in a protocol's patch call"),
    (["--inject-bug", "key-race", "--source", "calls"], "error: --inject-bug: key-race is a bug of the static_keys source"),
    (["--source", "ftrace"], "error: --source: must be one of calls, static_keys"),
    (["--inject-bug", "early-master"], "error: --inject-bug: early-master is planted in stop_machine"),
    (["--protocol", "nosync", "--arch", "x86_64"], "error: --protocol: nosync patches arm64 text"),
    (["--max-states", "0"], "error: --max-states: must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message) -> None:
    assert main(["check", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    if argv[0] == "--nodes":
        assert "the largest that fits is 3" in err
