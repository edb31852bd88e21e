"""numaemu: emulate a NUMA machine on a multicore host to study kernel-text replication."""

from numaemu.errors import NodeFailure, UsageError
from numaemu.model.image import KernelImage, synthetic_image
from numaemu.model.placement import POLICIES, Placement, place
from numaemu.model.topology import HostPlacement, Topology, load_topology, place_on_host
from numaemu.patching.stress import StressSpec, run_stress

__version__ = "0.1.0"
__all__ = [
    "NodeFailure",
    "UsageError",
    "KernelImage",
    "synthetic_image",
    "POLICIES",
    "Placement",
    "place",
    "StressSpec",
    "run_stress",
    "HostPlacement",
    "Topology",
    "load_topology",
    "place_on_host",
    "__version__",
]
