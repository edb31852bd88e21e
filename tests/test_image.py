"""Tests for numaemu.model.image: the embedded synthetic kernel image."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.model.image import (
    KERNEL_BASE,
    NOP2,
    NOP5,
    PAGE_SIZE,
    RODATA_SIZE,
    TEXT_SIZE,
    KernelImage,
    Section,
    synthetic_image,
)

MiB = 1 << 20
FUNCTIONS_SEED0 = 46_742  # the layout's functions of 16 bytes or more


@pytest.fixture(scope="module")
def image() -> KernelImage:
    return synthetic_image()


@pytest.fixture(scope="module")
def small() -> KernelImage:
    return synthetic_image(0.01)


def _function_ends(image: KernelImage) -> np.ndarray:
    return image.functions + image.function_sizes


def test_sizes_and_addresses(image: KernelImage) -> None:
    text, rodata = image.sections
    assert (text.name, rodata.name) == (".text", ".rodata")
    assert text.size == TEXT_SIZE == 16_777_216
    assert rodata.size == RODATA_SIZE == 6_095_046
    assert image.base == KERNEL_BASE == 0xFFFFFFFF81000000
    assert text.vaddr == 0xFFFFFFFF81000000
    assert rodata.vaddr % (2 * MiB) == 0
    # The next 2 MiB boundary after .text ends: 16,777,216 B rounds up to 16 MiB.
    assert rodata.vaddr == 0xFFFFFFFF82000000
    assert rodata.offset == 16 * MiB
    assert image.section(".rodata") is rodata
    assert image.data.dtype == np.uint8
    assert len(image.data) % PAGE_SIZE == 0
    assert len(image.data) == -(-(rodata.offset + rodata.size) // PAGE_SIZE) * PAGE_SIZE
    assert (image.name, image.arch, image.seed, image.scale) == ("synthetic", "x86_64", 0, 1.0)


def test_section_lookup_unknown_raises(image: KernelImage) -> None:
    with pytest.raises(KeyError):
        image.section(".data")


def test_section_pages() -> None:
    sec = Section(".x", KERNEL_BASE + 2 * PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE)
    assert sec.offset == 2 * PAGE_SIZE
    assert sec.pages() == range(2, 4)
    assert Section(".y", KERNEL_BASE, PAGE_SIZE, 0).pages() == range(0, 1)


def test_section_offset_is_from_its_own_base() -> None:
    # Not from KERNEL_BASE: a real kernel (or a KASLR-moved one) has another base.
    sec = Section(".rodata", 0xFFFFFFFFC0010000, 100, 0x10000)
    assert sec.offset == 0x10000 and sec.pages() == range(16, 17)


def test_mapped_pages_skip_the_gap(image: KernelImage) -> None:
    # 6.12's .text is exactly 16 MiB, so .rodata follows with no gap; a shrunk image has one.
    assert image.mapped_pages().tolist() == list(range(0, 4096 + 1489))
    assert image.n_pages == 4096 + 1489
    small = synthetic_image(0.01)
    text, rodata = small.sections
    assert small.mapped_pages().tolist() == list(range(0, len(text.pages()))) + list(range(rodata.offset // PAGE_SIZE, rodata.offset // PAGE_SIZE + len(rodata.pages())))
    assert len(text.pages()) < rodata.offset // PAGE_SIZE


def test_function_count(image: KernelImage) -> None:
    # Debian 6.12.118's 50,646 text functions, less the 3,904 stubs and thunks under 16 bytes.
    assert len(image.functions) == FUNCTIONS_SEED0 == 46_742
    assert len(image.symbols) == 50_726  # with aliases (__x64_sys_getpid and __ia32_sys_getpid)
    assert len(image.function_sizes) == len(image.functions)


def test_functions_are_ordered_aligned_and_inside_text(image: KernelImage) -> None:
    f = image.functions
    assert f[0] == 0
    # The real layout: -falign-functions=16 for C; assembly and .cold parts are not aligned.
    assert np.mean(f % 16 == 0) > 0.95
    assert np.all(np.diff(f) > 0)
    assert np.all(image.function_sizes >= 16)
    ends = _function_ends(image)
    assert np.all(ends[:-1] <= f[1:])  # functions never overlap
    assert ends[-1] <= TEXT_SIZE
    # Where the real kernel has them: __x64_sys_getpid is at its kallsyms address.
    assert image.symbols.address_of("__x64_sys_getpid") == 0xFFFFFFFF810E4950


def _symbol_spans(image: KernelImage) -> tuple[np.ndarray, np.ndarray]:
    """Every text symbol's (start, end) as offsets, aliases once: the functions with ftrace
    sites and the stubs under 16 bytes."""
    starts, first = np.unique((image.symbols.addresses - np.uint64(image.base)).astype(np.int64), return_index=True)
    return starts, starts + image.symbols.sizes[first]


def test_shrunk_functions_are_packed_16_byte_aligned(small: KernelImage) -> None:
    f, ends = _symbol_spans(small)
    assert np.all(f % 16 == 0)
    # The next function starts at the first 16-byte boundary after the previous one ends.
    assert np.array_equal(f[1:], -(-ends[:-1] // 16) * 16)


def test_every_function_starts_with_ftrace_nop5(image: KernelImage) -> None:
    entries = image.data[image.functions[:, None] + np.arange(5)]
    assert np.all(entries == np.frombuffer(NOP5, dtype=np.uint8))
    assert bytes([0x0F, 0x1F, 0x44, 0x00, 0x00]) == NOP5
    assert image.ftrace_sites is image.functions


def test_padding_between_functions_is_int3(small: KernelImage) -> None:
    image = small  # packed: every byte is a function's or its padding
    TEXT_SIZE = image.section(".text").size
    starts, ends = _symbol_spans(image)
    delta = np.bincount(starts, minlength=TEXT_SIZE + 1) - np.bincount(ends, minlength=TEXT_SIZE + 1)
    inside = np.cumsum(delta[:-1]) > 0  # byte i lies in some function's body
    text = image.data[:TEXT_SIZE]
    pad = text[~inside]
    assert len(pad) == TEXT_SIZE - int((ends - starts).sum())
    assert len(pad) > 0
    assert np.all(pad == 0xCC)
    # Spot check, by hand: the bytes between the first two functions.
    gap = image.data[ends[0] : starts[1]]
    assert bytes(gap) == b"\xcc" * (int(starts[1]) - int(ends[0]))


def test_function_bodies_are_not_all_padding(image: KernelImage) -> None:
    # Bodies are random bytes: 0xcc is about 1/256 of them, not most of them.
    body = image.data[image.functions[0] + 5 : _function_ends(image)[0]]
    assert np.count_nonzero(body == 0xCC) < len(body) // 4


def test_jump_sites_hold_nops(image: KernelImage) -> None:
    sites, lengths = image.jump_sites, image.jump_lengths
    assert len(sites) == len(lengths) == len(image.jump_keys)
    assert set(np.unique(lengths).tolist()) == {2, 5}
    two, five = sites[lengths == 2], sites[lengths == 5]
    assert np.all(image.data[two[:, None] + np.arange(2)] == np.frombuffer(NOP2, dtype=np.uint8))
    assert np.all(image.data[five[:, None] + np.arange(5)] == np.frombuffer(NOP5, dtype=np.uint8))
    assert bytes([0x66, 0x90]) == NOP2


def test_jump_sites_lie_inside_their_function_after_the_ftrace_site(image: KernelImage) -> None:
    sites, lengths = image.jump_sites, image.jump_lengths.astype(np.int64)
    owner = np.searchsorted(image.functions, sites, side="right") - 1
    start = image.functions[owner]
    end = start + image.function_sizes[owner]
    assert np.all(sites >= start + 5)  # after the 5-byte ftrace site
    assert np.all(sites + lengths < end)  # strictly inside: the site ends before the function does
    # One site per function at most.
    assert len(np.unique(owner)) == len(owner)


def test_jump_sites_share_and_keys(image: KernelImage) -> None:
    share = len(image.jump_sites) / len(image.functions)
    assert 0.30 < share < 0.36
    assert image.n_keys == len(image.jump_sites) // 20
    assert image.jump_keys.min() >= 0
    assert image.jump_keys.max() < image.n_keys
    # Zipf-like: key 0 has many more sites than the median key.
    counts = np.bincount(image.jump_keys, minlength=image.n_keys)
    assert counts[0] > 5 * np.median(counts)


def test_data_is_read_only(image: KernelImage) -> None:
    assert not image.data.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        image.data[0] = 0


def test_deterministic_in_seed(image: KernelImage) -> None:
    again = synthetic_image()
    assert np.array_equal(again.data, image.data)
    assert np.array_equal(again.functions, image.functions)
    assert np.array_equal(again.jump_sites, image.jump_sites)
    assert np.array_equal(again.jump_keys, image.jump_keys)


def test_other_seed_gives_other_bytes(small: KernelImage) -> None:
    other = synthetic_image(0.01, seed=1)
    assert other.seed == 1
    assert len(other.data) == len(small.data)
    assert not np.array_equal(other.data, small.data)
    # The layout is the real kernel's, whatever the seed: only the bytes and the sites change.
    assert np.array_equal(other.functions, small.functions)
    assert not np.array_equal(other.jump_sites, small.jump_sites)
    assert np.array_equal(synthetic_image(0.01, seed=1).data, other.data)


def test_small_scale_shrinks_sizes(small: KernelImage) -> None:
    text, rodata = small.sections
    # Every 100th function at its real size: about a hundredth of the text.
    assert len(small.symbols) == 50_726 and len(small.functions) == 468  # (of 507 functions, 39 under 16 bytes; every name kept)
    assert text.size == 118_608 and 0.5 < text.size / (TEXT_SIZE * 0.01) < 1.5
    assert rodata.size == round(RODATA_SIZE * 0.01) == 60_950
    assert text.vaddr == KERNEL_BASE
    assert rodata.vaddr == KERNEL_BASE + 2 * MiB
    assert small.name == "synthetic@0.01"
    assert small.n_pages == 512 + 15
    assert len(small.mapped_pages()) == 29 + 15
    # The same invariants hold at a small scale.
    assert np.all(small.data[small.functions[:, None] + np.arange(5)] == np.frombuffer(NOP5, dtype=np.uint8))
    assert _function_ends(small)[-1] <= text.size


def test_tiny_scale_keeps_one_page_per_section() -> None:
    tiny = synthetic_image(1e-6)
    assert [s.size for s in tiny.sections] == [PAGE_SIZE, PAGE_SIZE]
    assert len(tiny.symbols) >= 1
    assert len(tiny.functions) >= 1


@pytest.mark.parametrize("scale", [0, -0.5, 1.5, 2])
def test_bad_scale_raises(scale: float) -> None:
    with pytest.raises(ValueError, match=r"^scale must be in \(0, 1\]$"):
        synthetic_image(scale)


def test_summary(image: KernelImage) -> None:
    s = image.summary()
    assert s == {
        "name": "synthetic",
        "arch": "x86_64",
        "base": "0xffffffff81000000",
        "seed": 0,
        "scale": 1.0,
        "sections": [
            {"name": ".text", "vaddr": "0xffffffff81000000", "size": 16_777_216, "pages": 4096},
            {"name": ".rodata", "vaddr": "0xffffffff82000000", "size": 6_095_046, "pages": 1489},
        ],
        "functions": FUNCTIONS_SEED0,
        "ftrace_sites": FUNCTIONS_SEED0,
        "jump_label_sites": len(image.jump_sites),
        "jump_label_sites_2byte": int(np.count_nonzero(image.jump_lengths == 2)),
        "jump_label_sites_5byte": int(np.count_nonzero(image.jump_lengths == 5)),
        "static_keys": image.n_keys,
        "mapped_bytes": (4096 + 1489) * PAGE_SIZE,
        "symbols": {"count": 50_726, "functions": 50_726, "source": "the embedded layout: Debian 6.12.118+deb12-cloud-amd64's text functions (names, order, sizes)"},
    }
    assert s["jump_label_sites_2byte"] + s["jump_label_sites_5byte"] == s["jump_label_sites"]
    # Regression pins for seed 0.
    assert (s["jump_label_sites"], s["jump_label_sites_2byte"], s["static_keys"]) == (15_615, 8_487, 780)
