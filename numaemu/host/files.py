"""The files a user names on the command line or in a script: checked, then read.

A path that must be a regular file (an image, a trace, a topology file, an experiment, a results
file) is refused at once by `regular_file` when it is a directory, a device or a FIFO:
``numaemu image /dev/zero`` would otherwise read forever, and a FIFO would block until a writer
came. Then the bytes go to the pure parsers of `numaemu.model`: `load_topology` (``--topology``),
`load_image` (``--image``), `read_trace` and `load_workload` (``--trace``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import replace
from pathlib import Path

from numaemu.errors import UsageError
from numaemu.host.kallsyms import recover_kallsyms
from numaemu.host.sysfs import read_sysfs
from numaemu.model.image import KernelImage
from numaemu.model.kernelfile import PARAM as IMAGE_PARAM
from numaemu.model.kernelfile import parse_image_elf
from numaemu.model.protocol_spec import ProtocolSpec, parse_protocol
from numaemu.model.symbols import parse_symbol_map
from numaemu.model.topology import Topology, check_local_ns, with_derived_latency
from numaemu.model.topology_parse import PRESETS, TOPOLOGY_FILE_SUFFIXES, named_topology, parse_topology_file
from numaemu.model.workloads import TraceText, Workload, build_workload, check_workload, parse_trace

__all__ = ["regular_file", "read_text", "load_topology", "load_image", "load_symbols", "clear_cache", "read_trace", "load_trace", "load_workload"]


def regular_file(path: str | os.PathLike[str], param: str) -> Path:
    """`path` if it names a regular file (symlinks followed), else `UsageError(param, reason)`.

    Missing files and directories get the message a read would give (``cannot read 'x': Is a
    directory``); whether the file may be read is left to the read, which reports it the same way.
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except OSError as exc:
        raise UsageError(param, f"cannot read '{name}': {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return Path(name)
    if stat.S_ISDIR(mode):
        raise UsageError(param, f"cannot read '{name}': {os.strerror(errno.EISDIR)}")
    raise UsageError(param, f"'{name}' is {_kind(mode)}, not a regular file")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# ------------------------------------------------------------------------------------------
# --topology


def load_topology(arg: str, *, sysfs_root: str | os.PathLike[str] = "/sys", local_ns: float | None = None) -> Topology:
    """The ``--topology`` argument, tried in order as: a preset name; ``host`` (this machine,
    via `read_sysfs`); a numa=fake-style spec; a .json/.toml file (`from_mapping` in
    `numaemu.model.topology_parse` documents the schema).

    `local_ns`, when given, sets the local latency and replaces the whole latency table by one
    derived from the distances (`derive_latency`), even for a preset or file that gives
    measured latencies: the caller asked for that local latency explicitly.
    """
    if local_ns is not None:
        local_ns = check_local_ns(local_ns)
    topo = named_topology(arg, local_ns=local_ns)
    if topo is not None:
        return topo
    if arg == "host":
        topo = read_sysfs(sysfs_root)
    elif arg.lower().endswith(TOPOLOGY_FILE_SUFFIXES):
        topo = _load_topology_file(arg)
    elif os.path.isfile(arg):
        raise UsageError("--topology", f"'{arg}': a topology file must end in .json or .toml")
    else:
        raise UsageError(
            "--topology",
            f"unknown preset, spec or file '{arg}'; presets: {', '.join(PRESETS)}, "
            "host (this machine); a spec such as 4 or 2:10,21,21,10; or a .json/.toml file",
        )
    return topo if local_ns is None else with_derived_latency(topo, local_ns)


def _load_topology_file(arg: str) -> Topology:
    """Read a .json/.toml topology file. Every failure becomes a UsageError naming the file."""
    path = regular_file(arg, "--topology")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError("--topology", f"cannot read '{arg}': {e.strerror}") from None
    return parse_topology_file(raw, arg)


# ------------------------------------------------------------------------------------------
# --image


_IMAGES: dict[tuple[str, int, int], KernelImage] = {}


def load_image(path: str | os.PathLike[str]) -> KernelImage:
    """The kernel image in the file at `path`; cached per (path, mtime, size) in this process
    (decompressing and scanning a distro kernel takes about a second)."""
    if not str(path).strip():
        raise UsageError(IMAGE_PARAM, "is empty; give a kernel image file")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(IMAGE_PARAM, f"'{path}': no such file") from None
    except OSError as exc:
        raise UsageError(IMAGE_PARAM, f"'{path}': cannot read it: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(IMAGE_PARAM, f"'{path}' is a directory; give a kernel image file")
    regular_file(p, IMAGE_PARAM)  # a device (/dev/zero) or a FIFO: refused before any read
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _IMAGES:
        try:
            blob = p.read_bytes()
        except OSError as exc:
            raise UsageError(IMAGE_PARAM, f"'{path}': cannot read it: {exc.strerror}") from None
        image, elf = parse_image_elf(blob, str(path))
        if image.symbols is None:  # stripped: the kernel's own kallsyms tables, if the extra is there
            image = replace(image, symbols=recover_kallsyms(elf, p.name))
        _IMAGES[key] = image
    return _IMAGES[key]


def clear_cache() -> None:
    """Forget the images `load_image` has read."""
    _IMAGES.clear()


# ------------------------------------------------------------------------------------------
# --trace


def read_text(path: str | os.PathLike[str], param: str) -> str:
    """The text of the regular file at `path`, or one `UsageError(param, ...)` saying why not."""
    source = str(path)
    p = regular_file(path, param)
    try:
        return p.read_text()
    except OSError as exc:
        raise UsageError(param, f"cannot read '{source}': {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(param, f"cannot read '{source}': {exc}") from None


def load_protocol(path: str | os.PathLike[str]) -> ProtocolSpec:
    """The patch protocol of a ``--protocol`` file (TOML, `numaemu.model.protocol_spec`)."""
    return parse_protocol(read_text(path, "--protocol"), Path(path).name)


def read_trace(path: str | os.PathLike[str]) -> TraceText:
    """The text of a ``--trace`` file, for `numaemu.model.workloads.parse_trace`."""
    return TraceText(str(path), read_text(path, "--trace"))


def load_symbols(path: str | os.PathLike[str], image: KernelImage) -> KernelImage:
    """`image` with the symbols of a ``--symbols`` file (System.map or /proc/kallsyms format),
    once its anchors show it is this kernel's (`SymbolTable.check_anchors`)."""
    table = parse_symbol_map(read_text(path, "--symbols"), Path(path).name)
    table.check_anchors(image.section(".text").vaddr, image.name)
    return replace(image, symbols=table)


def load_trace(path: str | os.PathLike[str], image: KernelImage) -> Workload:
    """The trace workload of the file at `path` on `image`."""
    return parse_trace(read_trace(path), image)


def load_workload(name: str, image: KernelImage, seed: int = 0, trace: str | os.PathLike[str] | None = None) -> Workload:
    """`build_workload`, with the ``--trace`` file read first; the rules for the two options
    together are checked before the file is touched."""
    check_workload(name, trace is not None)
    return build_workload(name, image, seed, None if trace is None else read_trace(trace))
