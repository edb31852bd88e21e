"""The hardware profiles numaemu ships, each parameter beside its source.

Short names of the sources (full titles and addresses):

* [ILX-SNBEP] InstLatx64, AIDA64 CPUID and MemLatX64 dumps of a 2-socket Sandy Bridge-EP
  (CPUID 206D5, 2.6 GHz engineering sample), github.com/InstLatx64/InstLatx64,
  GenuineIntel/GenuineIntel00206D5_SandyBridgeEP_{CPUID,MemLatX64}.txt.
* [TR-SNBE] The Tech Report, Sandy Bridge-E review, techreport.com/articles.x/21987/5.
* [C&C-SNB] Chips and Cheese, "Sandy Bridge: Setting Intel's Modern Foundation", 2023-08-05.
* [LNX-TLB] Linux arch/x86/kernel/cpu/intel.c, intel_tlb_table[] (CPUID leaf 2 descriptors).
* [AT-SNBEP] AnandTech, "The Xeon E5-2600: Dual Sandy Bridge for Servers", 2012-03-06, p.2.
* [7CPU-WSM] 7-cpu.com, Westmere (X5650): "RAM Latency = 40 cycles + 67 ns (RAM connected to
  this CPU)", "+ 105 ns (RAM connected to another CPU)".
* [INTEL-OPT] Intel 64 and IA-32 Architectures Optimization Reference Manual, s.2.3.2 (Sandy
  Bridge front end: the legacy decode pipeline fetches 16 bytes a cycle, decodes 4 instructions).
* [ILX-MILAN] InstLatx64 CPUID dump of an EPYC 7713, AuthenticAMD0A00F11_K19_Milan_CPUID1.txt.
* [ILX-ZEN3] InstLatx64 AIDA64 NewMemLat of a Ryzen 9 5900X (the same Zen 3 core and CCX).
* [C&C-ZEN4] Chips and Cheese, "AMD's Zen 4, Part 2: Memory Subsystem and Conclusion", 2022-11-08.
* [C&C-N1] Chips and Cheese, "Deep Diving Neoverse N1", 2021-10-22 (an Ampere Altra instance).
* [C&C-N2] Chips and Cheese, "ARM's Neoverse N2: Cortex A710 for Servers", 2023-08-18.
* [AT-ROME] AnandTech, "AMD Rome Second Generation EPYC Review", p.7 (memory latency, NPS1/NPS4).
* [AT-MILAN] AnandTech, "AMD 3rd Gen EPYC Milan Review", p.2 (8 channels of DDR4-3200, 18G IF).
* [AMD-SOG19] AMD Software Optimization Guide for AMD Family 19h Processors (pub. 56665), s.2.
* [C&C-KP] Chips and Cheese, "Huawei's Kunpeng 920 and TaiShan v110", 2025-07-22 (a 24-core part).
* [WC-TSV110] WikiChip, HiSilicon TaiShan v110 (8 DDR4-2933 channels; Hydra 3 x 30 GB/s).
* [WC-N1] WikiChip, Arm Neoverse N1, Memory Hierarchy.
* [A76-TRM] Arm Cortex-A76 Core Technical Reference Manual, s.A5.2 "TLB organization" (N1 is
  the A76's server derivative; C&C-N1 measured the same TLB sizes on Altra).
* [AT-ALTRA] AnandTech, "The Ampere Altra Review", 2020-12-18, p.2.
* [CHOU05] Chou, Spracklen, Abraham, "Store Memory-Level Parallelism Optimizations for
  Commercial Applications", MICRO 2005: "a server chip with two out-of-order cores may have an
  MLP of 3 (2X1.5)".
* [PAGEBENCH] Kemi Wang, "[PATCH v4] mm, sysctl: make NUMA stats configurable", 2017-10-17:
  Jesper Brouer's page_bench01, order-0 alloc+free, 185 cycles on a 2-socket Broadwell.
* [ZEN2-PDC] AMD Zen 2's optimization guide: a 64-entry page directory cache (as C&C-N1 quotes).
* [AT-A76] AnandTech, "Arm's Cortex-A76 CPU Unveiled", 2018-05-31, p.2: a 128-entry instruction
  window (reorder buffer); Neoverse N1 is the A76's server derivative ([WC-N1]: 128-entry ROB).

Where no source gave a number, the field says what stands in, and why ("stand-in").
"""

from __future__ import annotations

from dataclasses import replace

from numaemu.errors import UsageError
from numaemu.model.hardware import SIMPLE, Cache, HardwareProfile, Tlb

__all__ = ["PROFILES", "DEFAULT_PROFILE", "resolve_hardware"]

_MIB, _KIB = 1 << 20, 1 << 10
_STANDIN_PWC = "stand-in: size not documented; Zen 2's 64-entry page directory cache [ZEN2-PDC]"
_STANDIN_ALLOC = "[PAGEBENCH] 185 cycles (Broadwell; stand-in for this core)"

_SNB_STLB = Tlb(512, 4, 0, 1, 7.0)
E5_2690 = HardwareProfile(
    name="e5-2690", description="Intel Xeon E5-2690 (Sandy Bridge-EP, 8 cores, 2.9 GHz), 2 sockets: the x86 series' machine",
    arch="x86_64", ghz=2.9, fetch_cycles_per_line=4.0,
    l1i=Cache(32 * _KIB, 8, 0.0, policy="tree-PLRU (simulated as LRU)"),
    l1d=Cache(32 * _KIB, 8, 4.0, policy="tree-PLRU (simulated as LRU)"),
    l2=Cache(256 * _KIB, 8, 12.0, policy="PLRU (simulated as LRU)"),
    llc=Cache(20 * _MIB, 20, 30.0, cores=8, policy="inclusive, adaptive (simulated as LRU)"),
    itlb=Tlb(64, 4, 8, 8), dtlb=Tlb(64, 4, 32, 4), stlb_i=_SNB_STLB, stlb_d=_SNB_STLB, pwc_entries=64,
    dram_local_ns=78.3, memory_gbs=51.2, link_gbs=32.0, nodes_per_socket=1, cores_per_node=8,
    mlp=1.5, store_mlp=10.0, page_alloc_cycles=185.0, pti=True, rob_entries=168,
    sources={
        "ghz": "Intel ARK, E5-2690: 2.9 GHz base (3.8 GHz turbo not assumed)",
        "fetch_cycles_per_line": "[INTEL-OPT] 16 bytes fetched a cycle: 4 cycles a 64-byte line",
        "rob_entries": "[INTEL-OPT] s.2.3.3: the Sandy Bridge reorder buffer's 168 entries",
        "l1i": "[ILX-SNBEP] CPUID leaf 4: 32 KB, 8-way, 64-byte line (AnandTech's table says 4-way; CPUID wins). Hit latency not found: a hit costs only the fetch",
        "l1d": "[ILX-SNBEP] 32 KB 8-way; 'L1D latency 1.530ns (4 clks)'",
        "l2": "[ILX-SNBEP] '256KB ... 8 way ... non-inclusive', 'L2 latency 4.667ns (12 clks)'; [C&C-SNB] '12 cycle L2 latency'",
        "llc": "[ILX-SNBEP] '20480KB ... 20 way ... hashed LLC'; [TR-SNBE] 'L3 latency at 30 cycles'",
        "itlb": "[ILX-SNBEP] CPUID leaf 2 descriptors 0xB2 (64 x 4K, 4-way) and 0x76 (8 x 2M, fully associative) [LNX-TLB]",
        "dtlb": "[LNX-TLB] descriptors 0x03 (64 x 4K, 4-way) and 0x5A (32 x 2M, 4-way)",
        "stlb_i": "[LNX-TLB] descriptor 0xCA: STLB 512 x 4K, 4-way, no 2M entries; +7 cycles a hit [C&C-SNB]",
        "stlb_d": "the same STLB as stlb_i",
        "pwc_entries": _STANDIN_PWC,
        "dram_local_ns": "[ILX-SNBEP] 'Mem latency: 78.342ns (204 clks)'",
        "dram_remote_ns": "not found for Sandy Bridge-EP: local + 38 ns, the remote-local difference of [7CPU-WSM] (the previous generation)",
        "memory_gbs": "[AT-SNBEP] 'Max. Memory Bandwidth (Per socket) 51.2 GB/s' (4 x DDR3-1600; theoretical)",
        "link_gbs": "[AT-SNBEP] '2x QPI 2.0 (8 GT/s)': 16 GB/s each way a link, 2 links",
        "cores_per_node": "Intel ARK: 8 cores (Kuzin's cover letter says 12 cores a node, which is the E5-2690 v3)",
        "mlp": "[CHOU05] ~1.5 misses in flight a core for server workloads",
        "store_mlp": "10 line fill buffers (Westmere and Haswell, 7-cpu.com; stand-in for Sandy Bridge)",
        "page_alloc_cycles": _STANDIN_ALLOC,
        "pti": "Sandy Bridge is affected by Meltdown (CVE-2017-5754), so a 6.5 kernel runs with PTI by default",
    },
)

_ZEN3 = dict(
    arch="x86_64", ghz=2.0, fetch_cycles_per_line=2.0, rob_entries=256,
    l1i=Cache(32 * _KIB, 8, 0.0), l1d=Cache(32 * _KIB, 8, 4.0), l2=Cache(512 * _KIB, 8, 12.0),
    itlb=Tlb(64, 64, 64, 64), dtlb=Tlb(64, 64, 64, 64), stlb_i=Tlb(512, 4, 512, 2, 7.0), stlb_d=Tlb(2048, 8, 2048, 4, 7.0), pwc_entries=64,
    mlp=1.5, store_mlp=10.0, page_alloc_cycles=185.0,
)
_ZEN3_SOURCES = {
    "ghz": "[ILX-MILAN] 'CPU Clock (TSC): 2000 MHz' (base; 3.675 GHz boost not assumed)",
    "fetch_cycles_per_line": "[AMD-SOG19] the fetch unit delivers 32 bytes a cycle: 2 cycles a line",
    "rob_entries": "[AMD-SOG19] the retire control unit's 256-entry retire queue",
    "l1i": "[ILX-MILAN] '32 KB, 8-way Associative, 64-byte Line'; hit latency not found: a hit costs only the fetch",
    "l1d": "[ILX-MILAN] 32 KB 8-way; [ILX-ZEN3] 'L1D 1.084 nsec 4.002 clks'",
    "l2": "[ILX-MILAN] '512 KB, 8-way'; [ILX-ZEN3] 'L2 3.413 nsec 12.604 clks'",
    "llc": "[ILX-MILAN] '32 MB, 16-way', 16 threads (8 cores, one CCX) share it; [ILX-ZEN3] 'L3 13.904 nsec 51.347 clks'",
    "itlb": "[ILX-MILAN] CPUID 80000005: 64 entries, fully associative, 4K and 2M",
    "dtlb": "[ILX-MILAN] CPUID 80000005: 64 entries, fully associative",
    "stlb_i": "[ILX-MILAN] CPUID 80000006: L2 iTLB 512 x 4K, 512 x 2M ([ILX-ZEN3]: 4-way, 2-way); +7 cycles (Zen 2's, [C&C-N1])",
    "stlb_d": "[ILX-MILAN] L2 dTLB 2048 x 4K, 2048 x 2M ([ILX-ZEN3]: 8-way, 4-way); +7 cycles (Zen 2's)",
    "pwc_entries": _STANDIN_PWC,
    "link_gbs": "[AT-MILAN] 18G Infinity Fabric; 4 x16 xGMI links between sockets ([AT-ALTRA] on Rome): 144 GB/s each way (derived, before protocol overhead)",
    "mlp": "[CHOU05] ~1.5",
    "store_mlp": "not found for Zen 3: Intel's 10 line fill buffers stand in",
    "page_alloc_cycles": _STANDIN_ALLOC,
}
EPYC_7713_NPS1 = HardwareProfile(
    name="epyc-7713-nps1", description="AMD EPYC 7713 (Zen 3 Milan, 64 cores, 8 CCX of 8 cores, 2.0 GHz), 2 sockets, NPS1: one node a socket",
    llc=Cache(32 * _MIB, 16, 51.0, cores=8, policy="victim of L2 (simulated as LRU, filled on every miss)"),
    dram_local_ns=122.0, memory_gbs=204.8, link_gbs=144.0, nodes_per_socket=1, cores_per_node=64,
    sources={**_ZEN3_SOURCES,
             "dram_local_ns": "not found for Milan: Rome's 128 MB full random, NPS1, ~122 ns [AT-ROME] (the same I/O die design)",
             "memory_gbs": "[AT-MILAN] 8 channels of DDR4-3200: 204.8 GB/s a socket (theoretical)",
             "cores_per_node": "64 cores a socket, one node a socket"},
    **_ZEN3,  # type: ignore[arg-type]
)
# NPS4: the same socket cut in four nodes (replace: only what differs, each with its source).
EPYC_7713_NPS4 = replace(
    EPYC_7713_NPS1, name="epyc-7713-nps4",
    description="AMD EPYC 7713 (Zen 3 Milan), 2 sockets, NPS4: four nodes a socket, 16 cores (2 CCX) and 2 memory channels each",
    dram_local_ns=113.0, memory_gbs=51.2, nodes_per_socket=4, cores_per_node=16,
    sources={**EPYC_7713_NPS1.sources,
             "dram_local_ns": "not found for Milan: Rome's 128 MB full random, NPS4, ~113 ns [AT-ROME]",
             "memory_gbs": "2 of the socket's 8 DDR4-3200 channels a node: 51.2 GB/s (theoretical)",
             "cores_per_node": "16 cores (2 CCX) a node"},
)

_KP_STLB = Tlb(1024, 4, 1024, 4, 11.0)
KUNPENG_920 = HardwareProfile(
    name="kunpeng-920", description="HiSilicon Kunpeng 920 (TaiShan v110, 2.6 GHz), 2 sockets x 2 dies: one node a die of 24 cores",
    arch="arm64", ghz=2.6, fetch_cycles_per_line=4.0, rob_entries=128,
    l1i=Cache(64 * _KIB, 4, 0.0), l1d=Cache(64 * _KIB, 4, 4.0), l2=Cache(512 * _KIB, 8, 10.0),
    llc=Cache(24 * _MIB, 16, 90.0, cores=24),
    itlb=Tlb(32, 32, 32, 32), dtlb=Tlb(32, 32, 32, 32), stlb_i=_KP_STLB, stlb_d=_KP_STLB, pwc_entries=64,
    dram_local_ns=96.0, memory_gbs=93.9, link_gbs=90.0, nodes_per_socket=2, cores_per_node=24,
    mlp=1.5, store_mlp=10.0, page_alloc_cycles=185.0,
    sources={
        "ghz": "lscpu of a Kunpeng 920 5250, 'CPU max MHz: 2600'",
        "rob_entries": "stand-in: not found for TaiShan v110; the Cortex-A76's 128-entry window [AT-A76], a core of the same generation",
        "fetch_cycles_per_line": "[C&C-KP] the L1i 'can supply the core with four instructions per cycle': 16 bytes, 4 cycles a line",
        "l1i": "[C&C-KP] 64 KB; ways not found (4, as the other Arm cores here); hit latency not found",
        "l1d": "[C&C-KP] '64 KB data cache is 4-way set associative', '4 cycle load-to-use latency'",
        "l2": "[C&C-KP] '512 KB ... private to each core ... 10 cycle latency'; ways not found (8 stand-in)",
        "llc": "[WC-TSV110] 1 MiB a core, one L3 a die (24 cores here); ways not found (16 stand-in); [C&C-KP] 'latency exceeds 90 cycles' when other cores share the data, as they share kernel text",
        "itlb": "[C&C-KP] 'a 32 entry iTLB'; 2M entries not found (the same 32 assumed)",
        "dtlb": "[C&C-KP] 'a 32 entry fully associative data TLB'",
        "stlb_i": "[C&C-KP] 'a 1024 entry L2 TLB', 'adds 11 cycles'; sharing with data unconfirmed (assumed shared); ways not found (4)",
        "stlb_d": "the same L2 TLB as stlb_i",
        "pwc_entries": _STANDIN_PWC,
        "dram_local_ns": "[C&C-KP] 'Unloaded latency is good for a server chip at 96 ns'",
        "dram_remote_ns": "not measured anywhere found: derived from the SLIT by numaemu's MLC fit at 96 ns local",
        "memory_gbs": "[WC-TSV110] 8 DDR4-2933 channels a socket, 4 a die: 93.9 GB/s a die (theoretical)",
        "link_gbs": "[WC-TSV110] 'three Hydra interface ports ... 240 Gb/s (30 GB/s) ... 90 GB/s' in 2 sockets",
        "cores_per_node": "the kunpeng920 preset: 24 cores a die",
        "mlp": "[CHOU05] ~1.5", "store_mlp": "not found: Intel's 10 line fill buffers stand in", "page_alloc_cycles": _STANDIN_ALLOC,
    },
)

_N1_STLB = Tlb(1280, 5, 1280, 5, 5.0)
_ALTRA = dict(
    arch="arm64", ghz=3.0, fetch_cycles_per_line=4.0, rob_entries=128,
    l1i=Cache(64 * _KIB, 4, 0.0), l1d=Cache(64 * _KIB, 4, 4.0), l2=Cache(1 * _MIB, 8, 11.0),
    itlb=Tlb(48, 48, 48, 48), dtlb=Tlb(48, 48, 48, 48), stlb_i=_N1_STLB, stlb_d=_N1_STLB, pwc_entries=64,
    dram_local_ns=85.0, link_gbs=100.0, mlp=1.5, store_mlp=20.0, page_alloc_cycles=185.0,
)
_ALTRA_SOURCES = {
    "ghz": "Oracle OCI shapes: 'Ampere Altra Q80-30. Max frequency 3.0 GHz'",
    "rob_entries": "[WC-N1] and [AT-A76]: a 128-entry reorder buffer",
    "fetch_cycles_per_line": "not found for N1: 4 instructions (16 bytes) a cycle, as Kunpeng's",
    "l1i": "[WC-N1] '64 KiB, 4-way set associative'; hit latency not found",
    "l1d": "[WC-N1] '64 KiB, 4-way', '4-cycle fastest load-to-use latency'",
    "l2": "[WC-N1] '1 MiB ... 8-way set associative - 9-11 cycle'",
    "itlb": "[A76-TRM] 'a 48-entry fully associative structure' for every page size",
    "dtlb": "[A76-TRM] 'a 48-entry fully associative TLB'",
    "stlb_i": "[A76-TRM] '5-way, set associative, 1280-entry', 'shared by instruction and data'; [C&C-N1] 'lower latency (5 cycles)'",
    "stlb_d": "the same L2 TLB as stlb_i",
    "pwc_entries": "stand-in: N1 keeps walk intermediates in its L2 TLB [A76-TRM]; Zen 2's 64-entry PDC size stands in",
    "dram_local_ns": "not found: [C&C-N2] 'memory latency was roughly on par with x86 server chips in Ampere Altra'; numaemu's MLC x86 figure, 85 ns, stands in",
    "link_gbs": "[AT-ALTRA] 'two dedicated PCIe Gen4 x16 links at 25GT/s featuring CCIX': 100 GB/s each way (derived)",
    "mlp": "[CHOU05] ~1.5",
    "store_mlp": "20 outstanding L1D misses (a gem5 N1 configuration citing WikiChip)",
    "page_alloc_cycles": _STANDIN_ALLOC,
}
ALTRA = HardwareProfile(
    name="altra", description="Ampere Altra Q80-30 (Neoverse N1, 80 cores, 3.0 GHz), 2 sockets, monolithic: one node a socket",
    llc=Cache(32 * _MIB, 16, 105.0, cores=80), memory_gbs=204.8, nodes_per_socket=1, cores_per_node=80,
    sources={**_ALTRA_SOURCES,
             "llc": "[AT-ALTRA] '32MB of distributed system level cache' on the CMN-600 mesh, all 80 cores; ways not found (16); [C&C-N2] '35.05 ns on Ampere Altra' = 105 cycles",
             "memory_gbs": "[AT-ALTRA] '8 DDR4-3200 memory controllers for a theoretical peak 204GB/s per socket'",
             "cores_per_node": "80 cores a socket"},
    **_ALTRA,  # type: ignore[arg-type]
)
ALTRA_QUADRANT = replace(
    ALTRA, name="altra-quadrant", description="Ampere Altra Q80-30 in quadrant mode: 4 nodes a socket of 20 cores, sharing the socket's one 32 MB SLC",
    llc=replace(ALTRA.llc, nodes=4), memory_gbs=51.2, nodes_per_socket=4, cores_per_node=20,
    sources={**ALTRA.sources,
             "llc": "as altra: one SLC a socket, here shared by its 4 nodes (under replicate it holds 4 copies)",
             "memory_gbs": "2 of the socket's 8 DDR4-3200 channels a node",
             "cores_per_node": "80 cores / 4 quadrants"},
)

PROFILES: dict[str, HardwareProfile] = {p.name: p for p in (E5_2690, EPYC_7713_NPS1, EPYC_7713_NPS4, KUNPENG_920, ALTRA, ALTRA_QUADRANT, SIMPLE)}
DEFAULT_PROFILE = "e5-2690"  # for a topology that names none (a spec, a file without one, host)


def resolve_hardware(name: str | None, topology_hardware: HardwareProfile | None) -> HardwareProfile:
    """``--hardware NAME`` if given, else the topology's own profile, else `DEFAULT_PROFILE`."""
    if name is None:
        return topology_hardware if topology_hardware is not None else PROFILES[DEFAULT_PROFILE]
    if name not in PROFILES:
        raise UsageError("--hardware", f"'{name}' is not a profile; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
