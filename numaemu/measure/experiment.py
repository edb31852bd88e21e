"""What a ``numaemu bench`` sweep is: its points, its settings, its experiment file, and its plan.

An experiment is a grid of *points* (topology x workload x cache state x user-data placement x
replicated scope); at each point every policy runs, in fresh node processes, ``repeat`` times
after ``warmup`` discarded repetitions, as pyperf runs a benchmark in fresh worker processes after
warmups. Every speedup is a paired ratio against ``single`` measured in the same repetition, and
the policies' order rotates from one repetition to the next so host drift does not favour one.

A sweep is planned as tasks (`plan_tasks`), one per measured repetition of a point, each running
every policy of that repetition (`RunTask`), locally and on a cluster alike. Everything here is
pure but `read_experiment_file`, which reads the TOML file of ``bench --experiment FILE``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numaemu.errors import UsageError
from numaemu.host.files import load_image, regular_file
from numaemu.model.image import KernelImage, synthetic_image

__all__ = [
    "AXES",
    "EXPERIMENT_KEYS",
    "Experiment",
    "Point",
    "RunTask",
    "plan_tasks",
    "read_experiment_file",
    "repetition_order",
    "split_topologies",
]

AXES = ("topology", "workload", "cache", "user_data", "replicate")


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep; every policy runs at every point."""

    topology: str
    workload: str
    cache: str
    user_data: str
    replicate: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"{self.topology} {self.workload}, cache {self.cache}, user data {self.user_data}, replicate {self.replicate}"


@dataclass(frozen=True)
class Experiment:
    points: tuple[Point, ...]
    policies: tuple[str, ...]  # always holds "single", the baseline of every speedup
    repeat: int
    warmup: int
    duration_s: float | None
    requests: int | None
    migrate_rate: float
    seed: int
    image_scale: float
    start_method: str
    host_cpus: str | None = None
    local_ns: float | None = None
    sysfs_root: str = "/sys"
    trace: Path | None = None
    time_scale: float | None = None
    image: Path | None = None  # a real kernel image file; None: the synthetic image at image_scale
    delays: str = "model"  # coordinator.DELAYS; one value for the whole sweep
    pt_style: str = "none"  # pagetables.PT_STYLES; one value for the whole sweep
    hardware: str | None = None  # hardware_presets.PROFILES; None: each topology's own
    replicas_every: int = 1

    @property
    def runs(self) -> int:
        """Node-process runs the experiment makes (one per policy per repetition per point)."""
        return len(self.points) * (self.warmup + self.repeat) * len(self.policies)

    def settings(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "points"}
        d["policies"] = list(self.policies)
        d["trace"] = str(self.trace) if self.trace else None
        d["image"] = str(self.image) if self.image else None
        return d

    def kernel_image(self) -> KernelImage:
        """The image every point runs on (a file is loaded once per process)."""
        return load_image(self.image) if self.image else synthetic_image(self.image_scale)


_TOPOLOGY_SPEC = re.compile(r"(\d+):\s*\d+")


def split_topologies(text: str) -> list[str]:
    """A comma list of topologies, where a numa=fake spec such as ``2:10,21,21,10`` keeps its own
    N*N comma-separated distances: ``2s-xeon,2:10,21,21,10,4`` is three topologies."""
    tokens = [t.strip() for t in text.split(",")]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        m = _TOPOLOGY_SPEC.fullmatch(tokens[i])
        take = int(m.group(1)) ** 2 if m else 1
        out.append(",".join(tokens[i : i + take]))
        i += take
    return [t for t in out if t]


# --------------------------------------------------------------------------------------------
# Experiment files


EXPERIMENT_KEYS = (
    "topology", "workload", "cache", "user-data", "replicate", "policy", "repeat", "warmup",
    "duration", "requests", "migrate-rate", "seed", "image-scale", "host-cpus", "local-ns",
    "trace", "time-scale", "start-method", "image", "delays", "pt-style", "replicas-every",
)


def read_experiment_file(path: str) -> dict[str, str]:
    """A TOML experiment: keys named as `numaemu bench`'s long options (``user-data`` or
    ``user_data``), values a string, number or list (a list is a sweep, like a comma list).
    Returns each value as the text its option would take, so one parser checks both.

    A path that is not a regular file (a directory, a FIFO, a device) is refused before it is
    opened (`regular_file`): reading a FIFO would wait for a writer, a device might never end."""
    regular_file(path, "--experiment")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError("--experiment", f"cannot read '{path}': {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("--experiment", f"'{path}' is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError("--experiment", f"'{path}' is not UTF-8 text (TOML is)") from None
    except ValueError as exc:  # an integer of 4300+ digits (sys.get_int_max_str_digits)
        raise UsageError("--experiment", f"'{path}' holds a number too long to read: {str(exc).split(';')[0]}") from None
    if not data:
        raise UsageError("--experiment", f"'{path}' sets nothing; give keys named as bench's options, e.g. topology = [\"2s-xeon\", \"kunpeng920\"]")
    if isinstance(data.get("bench"), dict) and len(data) == 1:  # a [bench] table is fine too
        data = data["bench"]
    return {key.replace("_", "-"): _option_text(path, key, value) for key, value in data.items()}


def _option_text(path: str, key: str, value: object) -> str:
    """One key of an experiment file as its option's text (a list joined by commas)."""
    if key.replace("_", "-") not in EXPERIMENT_KEYS:
        raise UsageError("--experiment", f"{path}: unknown key '{key}'; keys are {', '.join(EXPERIMENT_KEYS)}")
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
        raise UsageError("--experiment", f"{path}: {key} must be a string, a number or a non-empty list of them")
    return ",".join(str(v) for v in items)


# --------------------------------------------------------------------------------------------
# The plan: one task per measured repetition of a point (pure)


@dataclass(frozen=True)
class RunTask:
    """One measured repetition of one point: every policy, in fresh node processes, back to back
    in `order`. The unit of work of a sweep, locally and on a cluster (``--cluster``): every
    speedup is a paired ratio against ``single`` of the same repetition, so a repetition's
    policies are never split between tasks (or hosts)."""

    index: int  # position in the plan; on a cluster also its priority (earlier runs first)
    point_index: int
    point: Point
    repetition: int  # 0-based
    order: tuple[str, ...]  # the policies, rotated by `repetition_order`

    def label(self) -> str:
        return f"{self.point.label()}, repetition {self.repetition + 1}"

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point.to_json(), "repetition": self.repetition + 1, "order": list(self.order)}


def repetition_order(policies: Sequence[str], repetition: int) -> tuple[str, ...]:
    """The policies' order in a repetition: rotated by one each time, so no policy always runs
    first (a drifting host would favour it)."""
    k = repetition % len(policies)
    return tuple(policies[k:]) + tuple(policies[:k])


def plan_tasks(exp: Experiment) -> tuple[RunTask, ...]:
    """Every task of `exp`, point by point, repetition by repetition (warmups are not tasks:
    each host runs a point's warmups before its first task of that point)."""
    tasks: list[RunTask] = []
    for pi, point in enumerate(exp.points):
        for i in range(exp.repeat):
            tasks.append(RunTask(len(tasks), pi, point, i, repetition_order(exp.policies, i)))
    return tuple(tasks)
