"""A deterministic scheduler that explores every interleaving of a few actors, to a bound.

Each actor (a node's CPU, in `actors.py`) runs ordinary code in a greenlet of its own, so only
one runs at a time. It gives the scheduler control back at every *scheduling point*: where the
patching code already marks a window (`numaemu.host.clock.spin`: the fetch gap, the pipeline, the
INT3 handler's bsearch, the time one copy's write takes) and every iteration of a wait
(`NodeKernel.check_alive`). Between two points an actor's code runs alone: a *step*.

The search is a stateful depth-first search over the choice of which actor takes the next step,
in the manner of explicit-state model checkers (SPIN: Holzmann, "The model checker SPIN", IEEE
TSE 23(5), 1997; for programs, Java PathFinder: Visser et al., ASE 2003). Greenlets cannot be
copied, so a state is not stored but re-reached: going deeper costs one step, and going back to a
sibling replays the choices from the start (the stateless half of VeriSoft: Godefroid, POPL 1997).
What makes it end is *state hashing*: after each step the whole state is hashed (`System.digest`:
the shared memory the protocols read, each node's instruction buffer, and each actor's stack of
frames with their code position and local values), and a state reached before, at no greater
depth, is not explored again. A wait whose condition has not changed leads back to the state it
left, so spinning never lengthens a path; a state from which every actor only comes back to it
is a *deadlock*.

Because a state is pruned only when it was reached before at a depth no greater than now, the
first counterexample found bounds the depth of the search from then on, and the search goes on
for a shorter one (branch and bound): the counterexample printed is a shortest one, in steps,
over every interleaving the bound holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from greenlet import GreenletExit, greenlet

from numaemu.host import clock

__all__ = ["Explorer", "Failure", "Outcome", "System", "Progress"]


class Failure(Exception):
    """An invariant an actor (or the end-of-run check) saw broken: `kind` and what it saw."""

    def __init__(self, kind: str, detail: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail


class System(Protocol):
    """What the explorer drives: a fresh copy of the system for each replay, its actors, a digest
    of its whole state, and the checks at the end of a run."""

    def reset(self) -> list[Callable[[], None]]:
        """Back to the initial state; returns the actors' bodies."""

    def digest(self, frames: list[Any]) -> bytes:
        """The state: the shared memory and each actor's stack (`frames`: its innermost frame
        outside the scheduler, or None once it has finished)."""

    def finish(self) -> None:
        """Every actor has finished: raise `Failure` if the end state breaks an invariant."""


@dataclass
class Outcome:
    """The result of one exploration."""

    states: int = 0  # distinct states reached
    steps: int = 0  # steps taken, replays included
    interleavings: int = 0  # distinct end states reached (every actor finished)
    pruned: int = 0  # steps that reached a state seen before
    replays: int = 0
    max_depth: int = 0
    complete: bool = True  # False: the state bound stopped the search
    shortest: bool = True  # False: the search for a shorter counterexample ran out of time
    failure: Failure | None = None
    choices: list[int] = field(default_factory=list)  # the shortest counterexample's choices
    seconds: float = 0.0


Progress = Callable[[Outcome, int], None]


class _Run:
    """One execution of the system along a list of choices: the actors' greenlets."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.main = greenlet.getcurrent()
        self.actors = [greenlet(body, parent=self.main) for body in system.reset()]
        self.depth = 0
        self.closing = False

    def close(self) -> None:
        """End every actor that is still suspended, now, before the system is reset for the next
        run: a greenlet left to the garbage collector would unwind later (its ``finally`` blocks
        releasing locks and restoring steps) into the next run's state."""
        self.closing = True
        for g in self.actors:
            if g and not g.dead:
                g.throw(GreenletExit)

    def alive(self) -> list[int]:
        return [i for i, g in enumerate(self.actors) if not g.dead]

    def step(self, actor: int) -> None:
        """Run `actor` to its next scheduling point (or to its end). A `Failure` it raises
        comes out here; so does any other exception (a bug in the system, not a finding)."""
        self.depth += 1
        self.actors[actor].switch()
        if not self.alive():
            self.system.finish()

    def frames(self) -> list[Any]:
        # A greenlet not yet started has no frame either: it is not one that has finished.
        return [None if g.dead else g.gr_frame if g else "not started" for g in self.actors]

    def digest(self) -> bytes:
        return self.system.digest(self.frames())


class Explorer:
    """Every interleaving of `system`'s actors, depth first, with state hashing (module docstring)."""

    def __init__(self, system: System, max_states: int, progress: Progress | None = None, minimize_s: float = float("inf")) -> None:
        self.system = system
        self.minimize_s = minimize_s
        self.max_states = max_states
        self.progress = progress
        self._run: _Run | None = None
        self._edges: dict[bytes, set[bytes]] = {}  # the state graph (no self-loops)
        self._ends: set[bytes] = set()  # states where every actor has finished
        self._root = b""

    @property
    def paths(self) -> int:
        """Interleavings the search covered: paths through the state graph from the first state
        to an end state (a cycle, a wait that returns to an earlier state, is counted once)."""
        count: dict[bytes, int] = {}
        on_stack: set[bytes] = set()
        stack: list[tuple[bytes, list[bytes]]] = [(self._root, list(self._edges.get(self._root, ())))]
        on_stack.add(self._root)
        while stack:
            node, todo = stack[-1]
            if todo:
                child = todo.pop()
                if child not in count and child not in on_stack:
                    on_stack.add(child)
                    stack.append((child, list(self._edges.get(child, ()))))
                continue
            stack.pop()
            on_stack.discard(node)
            count[node] = (1 if node in self._ends else 0) + sum(count.get(c, 0) for c in self._edges.get(node, ()))
        return count.get(self._root, 0)

    def _point(self) -> None:
        # An actor reached a scheduling point: back to the scheduler (the run's main greenlet),
        # unless its run is being closed (a point in a ``finally`` block on the way out).
        if self._run is not None and self._run.closing:
            raise GreenletExit
        greenlet.getcurrent().parent.switch()

    def _new_run(self) -> _Run:
        if self._run is not None:
            self._run.close()
        self._run = _Run(self.system)
        return self._run

    def _install(self) -> Callable[[], None]:
        previous = clock.point
        clock.point = self._point
        def restore() -> None:
            clock.point = previous
        return restore

    def replay(self, choices: list[int], on_step: Callable[[int, _Run], None] | None = None) -> Failure | None:
        """Run `choices` from the start; the failure they lead to (None: none)."""
        restore = self._install()
        try:
            run = self._new_run()
            for i, actor in enumerate(choices):
                if actor not in run.alive():
                    raise ValueError(f"step {i + 1}: actor {actor} cannot take a step there (it has finished)")
                try:
                    run.step(actor)
                except Failure as exc:
                    if on_step is not None:
                        on_step(actor, run)
                    return exc
                if on_step is not None:
                    on_step(actor, run)
            return None
        finally:
            if self._run is not None:
                self._run.close()
                self._run = None
            restore()

    def explore(self) -> Outcome:
        out = Outcome()
        t0 = time.perf_counter()
        restore = self._install()
        try:
            self._search(out)
        finally:
            if self._run is not None:
                self._run.close()
                self._run = None
            restore()
            out.seconds = time.perf_counter() - t0
        return out

    def _search(self, out: Outcome) -> None:
        """The search. Once a counterexample is found, the search for a shorter one goes on for
        `minimize_s` seconds at most (`Outcome.shortest` says whether it ended)."""
        best = 1 << 30  # the depth bound: one less than the shortest counterexample so far
        seen: dict[bytes, int] = {}
        run = self._new_run()
        root = self._root = run.digest()
        seen[root] = 0
        out.states = 1
        # The path: per depth, the state's digest, its actors to try, the next to try, and
        # whether any step from it led somewhere else (else: a deadlock, if any actor is alive).
        path: list[list[Any]] = [[root, run.alive(), 0, False]]
        live = True  # `run` is at the state at the end of `path`
        last_report = 0.0
        found_at: float | None = None
        while path:
            top = path[-1]
            depth = len(path) - 1
            if top[2] >= len(top[1]) or depth >= best:
                path.pop()
                live = False
                if not top[3] and top[1] and depth < best:
                    # Every actor came back to this state: none can make progress.
                    self._found(out, Failure("deadlock", {"detail": "every node waits for another: no step leads anywhere else"}), path)
                    best = len(out.choices) - 1
                continue
            actor = top[1][top[2]]
            top[2] += 1
            if not live:
                run = self._new_run()
                out.replays += 1
                for entry in path[:-1]:
                    run.step(entry[1][entry[2] - 1])
                    out.steps += 1
            live = False
            try:
                run.step(actor)
            except Failure as exc:
                out.steps += 1
                self._found(out, exc, path)
                best = len(out.choices) - 1
                if found_at is None:
                    found_at = time.perf_counter()
                continue
            if found_at is not None and time.perf_counter() - found_at > self.minimize_s:
                out.shortest = False
                return
            out.steps += 1
            h = run.digest()
            if h == top[0]:
                # Back where it was (a wait whose condition has not changed): the run is still
                # at this state, so the next sibling needs no replay.
                out.pruned += 1
                live = True
                continue
            top[3] = True
            self._edges.setdefault(top[0], set()).add(h)
            if seen.get(h, 1 << 62) <= depth + 1:
                out.pruned += 1
                continue
            if h not in seen:
                out.states += 1
            seen[h] = depth + 1
            alive = run.alive()
            if not alive:
                out.interleavings += 1
                self._ends.add(h)
                continue
            path.append([h, alive, 0, False])
            live = True
            out.max_depth = max(out.max_depth, len(path) - 1)
            if out.states >= self.max_states:
                out.complete = False
                return
            if self.progress is not None and time.perf_counter() - last_report > 0.5:
                last_report = time.perf_counter()
                self.progress(out, len(path) - 1)

    @staticmethod
    def _found(out: Outcome, failure: Failure, path: list[list[Any]]) -> None:
        """Keep `failure` if it is the first or its path (the choices taken along `path`) is shorter."""
        choices = [entry[1][entry[2] - 1] for entry in path]
        if out.failure is None or len(choices) < len(out.choices):
            out.failure, out.choices = failure, choices
