"""The JSON document of a ``numaemu run`` (README, "JSON formats"): the machine, the image, the
workload, this host, the settings and every policy's record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from numaemu.model.binding import HostBinding
from numaemu.model.image import KernelImage
from numaemu.model.topology import Topology
from numaemu.model.workloads import Workload
from numaemu.runtime.results import SCHEMA, host_metadata

if TYPE_CHECKING:
    from numaemu.api.config import RunConfig

__all__ = ["run_document", "delays_note"]


def run_document(config: RunConfig, topo: Topology, host: HostBinding, image: KernelImage, workload: Workload, scale: float, cal: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    paced = config.delays == "model"
    return {
        "schema": SCHEMA,
        "command": "run",
        "topology": topo.to_json(),
        "host_binding": host.to_json(),
        "image": image.summary(),
        "workload": workload.summary(),
        "host": host_metadata(),
        "settings": {
            "policies": list(config.policies),
            "replicate": config.replicate,
            "cache": config.cache,
            "user_data": config.user_data,
            "duration_s": config.length_s,
            "requests": config.requests,
            "migrate_rate": config.migrate_rate,
            "seed": config.seed,
            "start_method": config.method,
            "time_scale": scale if paced else None,
            "calibration": cal,
            "oversubscribed": host.oversubscribed,
            "delays": config.delays,
            "delays_note": delays_note(config.delays, scale),
            "pt_style": config.pt_style,
            "kaslr": config.kaslr,
            "replicas_every": config.replicas_every,
            "recover": config.recover,
        },
        "results": records,
        # Set when the run stopped early (README, Errors): then `results` holds the policies
        # that completed before, each with its speedup against single if it ran.
        "failure": None,
        "interrupted": False,
    }


def delays_note(delays: str, scale: float | None = None) -> str:
    """What ``--delays`` did, in words, for the output and the JSON."""
    if delays == "none":
        return "delays: none — nothing injected; measured times are this host's own memory latencies (model figures: the emulated topology's)"
    return "delays: model — the emulated topology's remote-access latencies injected by pacing" + (f" (time scale {scale:g})" if scale else "")
