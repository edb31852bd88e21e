"""The fit check (numaemu/fit.py): the bytes a run creates, against made-up free space."""

from __future__ import annotations

import re

import pytest

from numaemu.errors import UsageError
from numaemu.host.files import load_topology
from numaemu.host.fit import (
    SegmentNeed,
    check_fit,
    check_node_memory,
    format_bytes,
    run_needs,
    segment_need,
)
from numaemu.host.segments import USER_DATA_BYTES, Control, MemoryLayout
from numaemu.model.image import PAGE_SIZE, synthetic_image
from numaemu.model.placement import place_for
from numaemu.model.tasks import TASKS_PER_NODE
from numaemu.model.topology_parse import PRESETS
from numaemu.patching.stress import stress_need

MIB, GIB = 1 << 20, 1 << 30
IMAGE = synthetic_image()  # the full embedded image: 21.8 MiB of text+rodata


def need(policy: str, total_mib: float, n_nodes: int = 2) -> SegmentNeed:
    """A made-up need of `total_mib` MiB (all in mem), for check_fit's arithmetic."""
    mem = int(total_mib * MIB)
    return SegmentNeed(label=policy, policy=policy, n_nodes=n_nodes, mem=mem, master=0, ctl=0, image_frames=0, copy_bytes=0, user_bytes=0)


def test_format_bytes():
    assert format_bytes(1288490188) == "1.2 GiB"
    assert format_bytes(int(18.7 * MIB)) == "18.7 MiB"
    assert format_bytes(512 * MIB) == "512.0 MiB"
    assert format_bytes(4096) == "4.0 KiB"
    assert format_bytes(0) == "0.0 KiB"


def test_run_needs_add_up_the_segments_run_policy_creates():
    topo = load_topology("2s-xeon")
    single, interleave, replicate = run_needs(topo, IMAGE, ["single", "interleave", "replicate"])
    one_copy = single.copy_bytes
    assert one_copy == 5_585 * PAGE_SIZE and format_bytes(one_copy) == "21.8 MiB"
    # single: the one copy on node 0; each node's partition rounded up to 2 MiB.
    assert single.image_frames == one_copy
    assert single.mem == MemoryLayout.for_nodes((one_copy, 0)).size == -(-(one_copy + USER_DATA_BYTES) // (2 * MIB)) * 2 * MIB + USER_DATA_BYTES
    assert single.master == len(IMAGE.data) and single.ctl == Control.size(2, 2 * TASKS_PER_NODE)
    assert single.total == single.mem + single.master + single.ctl
    assert replicate.image_frames == 2 * one_copy and replicate.total > interleave.total > single.total
    assert replicate.node_bytes == (one_copy + USER_DATA_BYTES,) * 2
    assert replicate.describe().startswith("2 copies of 21.8 MiB + 2 x 8.0 MiB user data + ")
    assert "the 21.8 MiB master image" in replicate.describe()
    # --replicate text copies text only: not a whole number of copies.
    (text,) = run_needs(topo, IMAGE, ["replicate"], replicate="text")
    assert single.image_frames < text.image_frames < replicate.image_frames
    assert text.describe().startswith("image frames ")
    # --replicas-every 2 on 4 nodes: two copies.
    (half,) = run_needs(load_topology("kunpeng920"), IMAGE, ["replicate"], replicas_every=2)
    assert half.image_frames == 2 * one_copy


def test_stress_need_has_one_page_of_user_data_and_the_patch_state():
    s = stress_need(load_topology("2s-xeon"), IMAGE, "replicate")
    assert s.user_bytes == PAGE_SIZE and s.txt > 0 and s.master > len(IMAGE.data)  # the module area
    assert s.total == s.mem + s.master + s.ctl + s.txt
    assert "patch state" in s.describe()


def test_check_fit_passes_when_there_is_room():
    check_fit([need("single", 50), need("replicate", 70)], shm_free=200 * MIB, mem_available=8 * GIB)
    check_fit([], shm_free=0, mem_available=0)


def test_check_fit_refuses_with_the_numbers():
    topo = load_topology("8")
    needs = run_needs(topo, IMAGE, ["single", "interleave", "replicate"])
    with pytest.raises(UsageError) as exc:
        check_fit(needs, shm_free=100 * MIB, mem_available=64 * GIB)
    e = exc.value
    assert e.parameter == "--topology"  # single does not fit either
    assert re.match(r"replicate needs \d+\.\d MiB of shared memory \(8 copies of 21\.8 MiB \+ 8 x 8\.0 MiB user data \+ ", e.rule), e.rule
    assert "8 copies of 21.8 MiB + 8 x 8.0 MiB user data" in e.rule
    assert e.rule.endswith(
        "/dev/shm has 100.0 MiB free (and 10.0 MiB is kept free); to fit: fewer nodes; fewer copies (--replicas-every) "
        "or another --policy; a smaller image (--image-scale); or a larger /dev/shm (mount -o remount,size=...)"
    )


def test_check_fit_names_the_policy_when_single_fits():
    with pytest.raises(UsageError) as exc:
        check_fit([need("single", 50), need("interleave", 55), need("replicate", 700)], shm_free=200 * MIB, mem_available=64 * GIB)
    assert exc.value.parameter == "--policy"
    assert exc.value.rule.startswith("replicate needs 700.0 MiB of shared memory")
    assert "/dev/shm has 200.0 MiB free (and 20.0 MiB is kept free)" in exc.value.rule
    assert "another --policy" in exc.value.rule


@pytest.mark.parametrize(
    ("shm_mib", "fits"),
    [(60 + 6.7, True), (60 + 6.6, False)],  # the margin: a tenth of what is free
)
def test_the_shm_margin_is_a_tenth_of_the_free_space(shm_mib, fits):
    needs = [need("single", 60)]
    if fits:
        check_fit(needs, shm_free=int(shm_mib * MIB), mem_available=64 * GIB)
    else:
        with pytest.raises(UsageError):
            check_fit(needs, shm_free=int(shm_mib * MIB), mem_available=64 * GIB)


def test_the_margins_are_capped():
    # 64 MiB of /dev/shm is kept free at most, 256 MiB of memory at most.
    check_fit([need("single", 1000)], shm_free=1064 * MIB, mem_available=64 * GIB)
    with pytest.raises(UsageError, match="/dev/shm has"):
        check_fit([need("single", 1000)], shm_free=1064 * MIB - 1, mem_available=64 * GIB)
    check_fit([need("single", 3000)], shm_free=64 * GIB, mem_available=(3000 + 2 * 48 + 256) * MIB)
    with pytest.raises(UsageError, match="available"):
        check_fit([need("single", 3000)], shm_free=64 * GIB, mem_available=(3000 + 2 * 48 + 256) * MIB - 1)


def test_check_fit_counts_the_node_processes_against_memory():
    with pytest.raises(UsageError) as exc:
        check_fit([need("single", 100, n_nodes=64)], shm_free=64 * GIB, mem_available=2 * GIB)
    rule = exc.value.rule
    assert exc.value.parameter == "--topology"
    assert rule.startswith("single needs about 3.1 GiB of memory (100.0 MiB of shared memory: ")
    assert "+ 64 node processes of about 48.0 MiB" in rule and "this host has 2.0 GiB available" in rule


def test_a_node_must_hold_its_copy_and_its_user_data():
    spec = load_topology("2s-xeon")
    from dataclasses import replace

    small = replace(spec, nodes=(replace(spec.nodes[0], memory_bytes=20 * MIB), spec.nodes[1]))
    single, replicate = run_needs(small, IMAGE, ["single", "replicate"])
    with pytest.raises(UsageError) as exc:
        check_node_memory(small, [single, replicate])
    assert exc.value.parameter == "--topology"
    assert exc.value.rule == (
        "node 0 of 2s-xeon has 20.0 MiB of memory (20,971,520 bytes), but under single it holds 29.8 MiB "
        f"(image frames 21.8 MiB + user data 8.0 MiB); give it at least {single.node_bytes[0]:,} bytes, or 0 for a memoryless node"
    )
    # Node 1 holds only user data under single, its copy under replicate.
    small1 = replace(spec, nodes=(spec.nodes[0], replace(spec.nodes[1], memory_bytes=20 * MIB)))
    check_node_memory(small1, run_needs(small1, IMAGE, ["single"]))
    with pytest.raises(UsageError, match="node 1 of 2s-xeon has 20.0 MiB of memory .* under replicate it holds 29.8 MiB"):
        check_node_memory(small1, run_needs(small1, IMAGE, ["single", "replicate"]))
    # A memoryless node (0 bytes) holds nothing and is not checked.
    memoryless = replace(spec, nodes=(spec.nodes[0], replace(spec.nodes[1], memory_bytes=0)))
    check_node_memory(memoryless, run_needs(memoryless, IMAGE, ["single", "interleave", "replicate"]))


@pytest.mark.parametrize("name", [*PRESETS, "4", "64"])
def test_presets_and_specs_pass_the_node_memory_check(name):
    topo = load_topology(name)
    check_node_memory(topo, run_needs(topo, IMAGE, ["single", "interleave", "replicate"]))
    check_node_memory(topo, [stress_need(topo, IMAGE, "replicate")])


def test_segment_need_of_a_placement():
    topo = load_topology("2s-xeon")
    placement, _ = place_for(topo, IMAGE, "replicate")
    n = segment_need(placement, IMAGE, label="x", n_tasks=8, user_bytes=PAGE_SIZE)
    assert n.mem == MemoryLayout.for_nodes((placement.image_bytes(0), placement.image_bytes(1)), user_bytes=PAGE_SIZE).size
    assert n.ctl == Control.size(2, 8) and n.label == "x" and n.policy == "replicate"


class _Stop(Exception):
    pass


@pytest.fixture
def segments_created(monkeypatch, no_leaks):
    """Record each segment a run creates (kind -> bytes), and stop it before any node starts."""
    from numaemu.host import segments as memory
    from numaemu.runtime import supervisor

    created: dict[str, int] = {}
    real = memory.Segment.create.__func__

    def create(cls, name, size):
        created[name.rsplit("-", 1)[1]] = size
        return real(cls, name, size)

    def start(self, *args, **kwargs):
        raise _Stop

    monkeypatch.setattr(memory.Segment, "create", classmethod(create))
    monkeypatch.setattr(supervisor.NodeSession, "start", start)
    return created


@pytest.mark.parametrize("policy", ["single", "interleave", "replicate"])
def test_the_needs_are_the_segments_run_policy_creates(segments_created, policy):
    from numaemu.model.binding import bind_to_host
    from numaemu.model.workloads import build_workload
    from numaemu.runtime.policy_run import prepare_spec, run_policy

    image = synthetic_image(0.05)
    topo = load_topology("kunpeng920")
    spec, _ = prepare_spec(
        topo, bind_to_host(topo, [0, 1]), image, build_workload("db", image), cold=False, user_local=True, duration_s=1.0,
        requests=None, migrate_rate=0.0, seed=0, start_method="fork", replicate="text+rodata", time_scale=1.0, replicas_every=2,
    )
    with pytest.raises(_Stop):
        run_policy(spec, policy)
    (expect,) = run_needs(topo, image, [policy], replicas_every=2)
    assert segments_created == {"ctl": expect.ctl, "master": expect.master, "mem": expect.mem}


def test_the_stress_need_is_the_segments_run_stress_creates(segments_created):
    from numaemu.model.binding import bind_to_host
    from numaemu.patching.stress import StressSpec, run_stress

    image = synthetic_image(0.05)
    topo = load_topology("2s-xeon")
    spec = StressSpec(topo, bind_to_host(topo, [0, 1]), image, "replicate", "text_poke_bp", "static_keys", 1.0, 100.0, 0, None, "fork")
    with pytest.raises(_Stop):
        run_stress(spec)
    expect = stress_need(topo, image, "replicate")
    assert segments_created == {"ctl": expect.ctl, "master": expect.master, "mem": expect.mem, "txt": expect.txt}
