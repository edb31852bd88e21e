"""``numaemu topology`` and ``numaemu image``: what a topology and a kernel image are, printed as
``numactl --hardware`` does, or as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numaemu.api.emulation import Emulation
from numaemu.cli.options import add_image_options, add_topology_options, output_path, write_doc
from numaemu.errors import UsageError
from numaemu.model.binding import memory_only_nodes
from numaemu.model.hardware import describe
from numaemu.model.hardware_presets import PROFILES
from numaemu.model.numactl import format_numactl
from numaemu.runtime.results import SCHEMA

__all__ = ["add_parsers", "cmd_topology", "cmd_image"]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("topology", help="print a topology as numactl --hardware does")
    add_topology_options(p, positional=True)
    p.add_argument("--hardware", metavar="PROFILE", help="show this hardware profile instead of the topology's own: " + ", ".join(PROFILES))
    p.add_argument("--sources", action="store_true", help="also print where each hardware parameter comes from")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write JSON to PATH instead ('-' for stdout)")

    p = sub.add_parser("image", help="print the kernel image's sections, sizes and patch sites")
    p.add_argument("image_path", nargs="?", metavar="PATH", help="a kernel image file, as --image PATH")
    add_image_options(p)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write JSON to PATH instead ('-' for stdout)")


def cmd_topology(args: argparse.Namespace) -> int:
    json_path = output_path(args.json_path, "topology") if args.json_path is not None else None
    emu = Emulation(args.topology, host_cpus=args.host_cpus, local_ns=args.local_ns, sysfs_root=args.sysfs_root, hardware=args.hardware)
    topo = emu.topology
    hw = emu.hardware
    host = None if memory_only_nodes(topo) else emu.host  # else shown without placement: no worker can run there
    if json_path is not None:
        write_doc({"schema": SCHEMA, "command": "topology", "topology": topo.to_json(), "hardware": hw.to_json(),
                   "host_binding": host.to_json() if host else None}, json_path, sys.stdout)
        return 0
    sys.stdout.write(format_numactl(topo, host))
    print()
    print("\n".join(describe(hw)))
    if args.sources:
        print("sources:")
        for key, text in hw.sources.items():
            print(f"  {key}: {text}")
    if host is None:
        ids = ", ".join(map(str, memory_only_nodes(topo)))
        print(f"no host placement: host node(s) {ids} have memory but no CPUs, so numaemu cannot run this machine as it is")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    if args.image_path is not None and args.image is not None and args.image_path != args.image:
        raise UsageError("--image", f"two images given: '{args.image_path}' and --image '{args.image}'")
    json_path = output_path(args.json_path, "image") if args.json_path is not None else None
    image = Emulation(image=args.image_path or args.image, image_scale=args.image_scale, symbols=args.symbols).image
    s = image.summary()
    if json_path is not None:
        write_doc({"schema": SCHEMA, "command": "image", "image": s}, json_path, sys.stdout)
        return 0
    src = s.get("source")
    print(f"image: {s['name']} ({s['arch']}), base {s['base']}" + ("" if src else f", seed {s['seed']}"))
    if src:
        print(f"file: {src['path']} ({src['container']})" + (f"; {src['version']}" if src["version"] else ""))
    print(f"{'section':<10}{'vaddr':>20}{'size':>14}{'pages':>8}")
    for sec in s["sections"]:
        print(f"{sec['name']:<10}{sec['vaddr']:>20}{sec['size']:>14,}{sec['pages']:>8}")
    if src:
        print(
            f"ftrace sites: {s['ftrace_sites']:,} (16-byte-aligned function entries): {src['ftrace_calls_converted']:,} 'call __fentry__'"
            + (f" (at {src['fentry']})" if src["fentry"] else "")
            + f" rewritten to NOP5 as ftrace_init() does at boot, {src['ftrace_already_nop5']:,} already NOP5"
            + (f"; {src['ftrace_after_endbr64']:,} after an ENDBR64" if src["ftrace_after_endbr64"] else "")
        )
    else:
        print(f"functions: {s['functions']:,} (each with a 5-byte ftrace site, NOP5 while tracing is off)")
    print(f"jump-label sites: {s['jump_label_sites']:,} ({s['jump_label_sites_2byte']:,} 2-byte, {s['jump_label_sites_5byte']:,} 5-byte) over {s['static_keys']:,} static keys")
    if src and src["jump_table"]:
        print(
            f"  __jump_table at {src['jump_table']}: {src['jump_table_entries']:,} entries, {src['jump_entries_skipped']:,} not used "
            f"(outside .text, on an ftrace site, or duplicates); {src['jump_sites_were_jmp']:,} sites were JMPs, now NOPs (every key starts disabled)"
        )
    elif src:
        print("  no __jump_table found: stress runs without static keys")
    if src:
        tables = ", ".join(f"{k} {v:,}" for k, v in s["other_site_tables"].items()) or "none"
        print(f"other site tables (counted, not patched): {tables}")
    sym = s["symbols"]
    print(f"symbols: {sym['count']:,} ({sym['functions']:,} functions), from {sym['source']}" if sym else "symbols: none (a stripped image: give --symbols System.map)")
    print(f"mapped: {s['mapped_bytes']:,} bytes")
    return 0
