"""`calibrate`: what this host can emulate, and numaemu's own costs against raw baselines, as
``numaemu calibrate`` measures them (`numaemu.measure.calibrate`), returned as its document."""

from __future__ import annotations

from collections.abc import Callable

from numaemu.api import params
from numaemu.api.emulation import prune_dead_runs
from numaemu.api.records import CalibrationResult
from numaemu.host.cpus import host_cpus
from numaemu.host.files import load_topology
from numaemu.model.binding import bind_to_host
from numaemu.model.hardware_presets import resolve_hardware
from numaemu.model.image import synthetic_image
from numaemu.model.workloads import build_workload
from numaemu.runtime.policy_run import START_METHODS
from numaemu.runtime.results import SCHEMA, host_metadata

__all__ = ["calibrate"]


def calibrate(*, quick: bool = False, start_method: str | None = None, log: Callable[[str], None] | None = None) -> CalibrationResult:
    """Measure this host (a few seconds with `quick`, about a minute without); `log` gets the
    header line. The result holds every figure and every goal, met or not (`CalibrationResult`)."""
    import multiprocessing as mp

    from numaemu.measure.calibrate import FULL, QUICK
    from numaemu.measure.calibrate import calibrate as measure

    method = params.choice(start_method if start_method is not None else mp.get_start_method(), START_METHODS, "--start-method")
    prune_dead_runs(log)
    # The patch round needs 2 nodes; 2s-xeon's local latency also charges the engine's fetches.
    topo = load_topology("2s-xeon")
    host = bind_to_host(topo, host_cpus())
    image = synthetic_image()
    workload = build_workload("db", image)
    meta = host_metadata()
    if log is not None:
        log(
            f"numaemu calibrate: {meta['cpu_model']}, CPUs {meta['usable_cpus']}; image {image.name} ({len(image.data):,} bytes), "
            f"workload db, {topo.name} for the patch round; {'quick' if quick else 'full'} sampling; medians"
        )
    hardware = resolve_hardware(None, topo.hardware)  # 2s-xeon's: e5-2690, whose hierarchy a run simulates
    cal = measure(image, workload, topo, topo.n_nodes / host.n_cpus_used, QUICK if quick else FULL, method, hardware=hardware)
    return CalibrationResult.from_json({
        "schema": SCHEMA,
        "command": "calibrate",
        "host": meta,
        "host_binding": host.to_json(),
        "settings": {"quick": quick, "start_method": method, "topology": topo.name, "hardware": hardware.name, "workload": workload.name, "image_bytes": len(image.data)},
        "results": cal.to_json(),
    })
