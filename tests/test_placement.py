"""Tests for numaemu.model.placement: policies, hosted frames and per-node page tables."""

from __future__ import annotations

import numpy as np
import pytest

from numaemu.model.image import PAGE_SIZE, KernelImage, synthetic_image
from numaemu.model.placement import UNMAPPED, Placement, place

# synthetic_image(0.01): .text 118,608 B = 29 pages at page 0; .rodata 60,950 B = 15 pages at
# page 512 (2 MiB); 527 pages in all, 44 of them mapped.
TEXT_PAGES, RODATA_PAGES, RODATA_FIRST, N_PAGES = 29, 15, 512, 527
MAPPED = TEXT_PAGES + RODATA_PAGES


@pytest.fixture(scope="module")
def image() -> KernelImage:
    img = synthetic_image(0.01)
    assert [len(s.pages()) for s in img.sections] == [TEXT_PAGES, RODATA_PAGES]
    assert img.section(".rodata").pages().start == RODATA_FIRST and img.n_pages == N_PAGES
    return img


CASES = [
    # policy, replicate, n_nodes, hosted pages per node, extra pages
    ("single", "text+rodata", 1, [44], 0),
    ("single", "text+rodata", 2, [44, 0], 0),
    ("single", "text", 4, [44, 0, 0, 0], 0),
    ("interleave", "text+rodata", 1, [44], 0),
    ("interleave", "text+rodata", 2, [22, 22], 0),
    ("interleave", "text+rodata", 4, [11, 11, 11, 11], 0),
    ("replicate", "text+rodata", 1, [44], 0),
    ("replicate", "text+rodata", 2, [44, 44], 44),
    ("replicate", "text+rodata", 4, [44, 44, 44, 44], 3 * 44),
    ("replicate", "text", 1, [44], 0),
    ("replicate", "text", 2, [44, 29], 29),
    ("replicate", "text", 4, [44, 29, 29, 29], 3 * 29),
]
ALL = [(policy, scope, n) for policy, scope, n, _, _ in CASES]


@pytest.mark.parametrize(("policy", "scope", "n", "hosted", "extra_pages"), CASES)
def test_hosted_pages_and_extra_bytes(image, policy, scope, n, hosted, extra_pages) -> None:
    p = place(image, n, policy, scope)
    assert (p.policy, p.replicate, p.n_nodes) == (policy, scope, n)
    assert p.mapped_pages == MAPPED
    assert [len(h) for h in p.hosted] == hosted
    assert [p.image_bytes(node) for node in range(n)] == [k * PAGE_SIZE for k in hosted]
    assert p.total_bytes == sum(hosted) * PAGE_SIZE
    assert p.extra_bytes == extra_pages * PAGE_SIZE
    for h in p.hosted:  # each copy is held in page order, once
        assert np.all(np.diff(h) > 0)


def _check_same_view(image: KernelImage, p: Placement) -> None:
    mapped = image.mapped_pages()
    pages = image.data.reshape(-1, PAGE_SIZE)
    # Each node's frames, filled from the image as the worker fills its partition.
    frames = [pages[h] for h in p.hosted]
    for table in p.tables:
        assert np.array_equal(np.flatnonzero(table.home != UNMAPPED), mapped)
        assert np.array_equal(np.flatnonzero(table.frame != UNMAPPED), mapped)
        for page in mapped:
            home, frame = int(table.home[page]), int(table.frame[page])
            assert np.array_equal(frames[home][frame], pages[page])


@pytest.mark.parametrize(("policy", "scope", "n"), ALL)
def test_same_bytes_at_the_same_address_on_every_node(image, policy, scope, n) -> None:
    p = place(image, n, policy, scope)
    assert [t.node for t in p.tables] == list(range(n))
    _check_same_view(image, p)


def test_translate_exact_values(image) -> None:
    p = place(image, 2, "replicate", "text")
    t0, t1 = p.tables
    assert t0.translate(0) == (0, 0)
    assert t1.translate(0) == (1, 0)
    assert t1.translate(5 * PAGE_SIZE + 123) == (1, 5 * PAGE_SIZE + 123)
    # .rodata is not replicated: node 1 reads it from node 0's frames, which follow .text there.
    ro = RODATA_FIRST * PAGE_SIZE
    assert t0.translate(ro + 7) == (0, TEXT_PAGES * PAGE_SIZE + 7)
    assert t1.translate(ro + 2 * PAGE_SIZE + 64) == (0, (TEXT_PAGES + 2) * PAGE_SIZE + 64)

    i0, i1 = place(image, 2, "interleave").tables
    # Page k of the mapped pages lives on node k % 2, in frame k // 2.
    assert i0.translate(3 * PAGE_SIZE + 1) == (1, 1 * PAGE_SIZE + 1)
    assert i1.translate(4 * PAGE_SIZE) == (0, 2 * PAGE_SIZE)
    assert i0.translate(ro) == (1, 14 * PAGE_SIZE)  # mapped page 29: node 1, frame 14

    (s0,) = place(image, 1, "single").tables
    assert s0.translate(ro + PAGE_SIZE - 1) == (0, (TEXT_PAGES + 1) * PAGE_SIZE - 1)


@pytest.mark.parametrize(
    "offset",
    [
        TEXT_PAGES * PAGE_SIZE,  # first page of the gap after .text
        (RODATA_FIRST - 1) * PAGE_SIZE + 4095,  # last byte of the gap
        N_PAGES * PAGE_SIZE,  # past the end
        -1,
    ],
)
def test_translate_unmapped_raises(image, offset: int) -> None:
    table = place(image, 2, "single").tables[1]
    with pytest.raises(KeyError, match="is not mapped"):
        table.translate(offset)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_replicate_reads_only_local_memory(image, n: int) -> None:
    p = place(image, n, "replicate", "text+rodata")
    assert [p.homes_of(node) for node in range(n)] == [{node} for node in range(n)]


@pytest.mark.parametrize("n", [2, 4])
def test_replicate_text_only_reads_rodata_from_node_0(image, n: int) -> None:
    p = place(image, n, "replicate", "text")
    assert p.homes_of(0) == {0}
    for node in range(1, n):
        assert p.homes_of(node) == {node, 0}
        home = p.tables[node].home
        assert np.all(home[:TEXT_PAGES] == node)
        assert np.all(home[RODATA_FIRST : RODATA_FIRST + RODATA_PAGES] == 0)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_single_reads_node_0(image, n: int) -> None:
    p = place(image, n, "single")
    assert [p.homes_of(node) for node in range(n)] == [{0}] * n


@pytest.mark.parametrize("n", [2, 4])
def test_interleave_is_round_robin(image, n: int) -> None:
    p = place(image, n, "interleave")
    mapped = image.mapped_pages()
    expected = np.arange(len(mapped)) % n
    for table in p.tables:
        assert np.array_equal(table.home[mapped], expected)
        # Frames count up on each home node: the k-th page homed on h is in frame k.
        assert np.array_equal(table.frame[mapped], np.arange(len(mapped)) // n)
    assert [p.homes_of(node) for node in range(n)] == [set(range(n))] * n
    assert [h.tolist() for h in p.hosted] == [mapped[h::n].tolist() for h in range(n)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2, "spread"), r"^policy must be one of single, interleave, replicate$"),
        ((2, "replicate", "rodata"), r"^replicate must be one of text, text\+rodata$"),
        ((2, "single", "all"), r"^replicate must be one of text, text\+rodata$"),
        ((0, "single"), r"^n_nodes must be >= 1$"),
        ((-1, "replicate"), r"^n_nodes must be >= 1$"),
    ],
)
def test_invalid_arguments(image, args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        place(image, *args)
