"""numaemu: emulate a NUMA machine on a multicore host to study kernel-text replication.

For scripts (README, "Scripting")::

    import numaemu

    with numaemu.Emulation(topology="kunpeng920") as emu:
        result = emu.run("db", duration=2)
        print(result["replicate"].speedup_vs_single)
"""

__version__ = "0.1.0"

from numaemu.api.bench import bench  # noqa: E402  (after __version__: the layers below read it)
from numaemu.api.calibrate import calibrate  # noqa: E402
from numaemu.api.config import MachineConfig, RunConfig, StressConfig  # noqa: E402
from numaemu.api.emulation import Emulation  # noqa: E402
from numaemu.api.records import BenchResult, CalibrationResult, PolicyResult, RunResult, StressResult  # noqa: E402
from numaemu.errors import NodeFailure, UsageError  # noqa: E402
from numaemu.host.files import load_protocol  # noqa: E402
from numaemu.model.image import KernelImage, synthetic_image  # noqa: E402
from numaemu.model.placement import POLICIES, Placement, place  # noqa: E402
from numaemu.model.protocol_spec import ProtocolSpec, Step  # noqa: E402
from numaemu.model.topology import Topology  # noqa: E402
from numaemu.patching.sources import PATCH_OPS, PatchOp  # noqa: E402

__all__ = [
    "Emulation",
    "MachineConfig",
    "RunConfig",
    "StressConfig",
    "RunResult",
    "PolicyResult",
    "StressResult",
    "BenchResult",
    "CalibrationResult",
    "PatchOp",
    "PATCH_OPS",
    "ProtocolSpec",
    "Step",
    "load_protocol",
    "bench",
    "calibrate",
    "NodeFailure",
    "UsageError",
    "KernelImage",
    "synthetic_image",
    "POLICIES",
    "Placement",
    "place",
    "Topology",
    "__version__",
]
