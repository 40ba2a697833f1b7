"""hardware.network: tiers from the spec files, placement, and collective times against hand
computation of the ring (alpha-beta) and torus formulas."""

import pytest

import hardware
from hardware.network import collective_time, network, strides, tier_of


def test_nvlink_ring_all_reduce_matches_alpha_beta():
    net = network(hardware.get("h100"), 64)
    f = net.fast
    assert (f.kind, f.size, f.bandwidth) == ("switch", 8, 4.5e11)  # NVLink 4, DGX H100 node of 8
    v = 1e9
    expect = 2 * (7 / 8 * v / (f.bandwidth * f.efficiency) + 7 * f.latency)
    assert float(collective_time(net, "all_reduce", v, 8, 1)) == pytest.approx(expect, rel=1e-5)
    # the same group spaced by 8 leaves the node: bound by the NIC (400 Gb/s per GPU)
    s = net.scale_out
    expect_ib = 2 * (7 / 8 * v / (s.bandwidth * s.efficiency) + 7 * s.latency)
    assert float(collective_time(net, "all_reduce", v, 8, 8)) == pytest.approx(expect_ib, rel=1e-5)
    assert tier_of(net, 8, 8) == "infiniband" and tier_of(net, 8, 1) == "nvlink"
    # a group of 16 spanning two nodes is bound by the slower tier
    assert float(collective_time(net, "all_gather", v, 16, 1)) > float(collective_time(net, "all_gather", v, 8, 1)) * 5
    assert float(collective_time(net, "all_reduce", v, 1, 1)) == 0.0


def test_torus_all_gather_uses_the_axes_it_spans():
    net = network(hardware.get("tpu-v5p"), 512)  # one 8x8x8 slice, wraparound
    f = net.fast
    assert f.kind == "torus" and f.dims == 3 and f.wraparound and f.bandwidth == 9e10
    v = 1e9
    one_axis = float(collective_time(net, "all_gather", v, 8, 1))
    # scaling-book: V / W_bidirectional over one axis (2 directions)
    assert one_axis == pytest.approx(7 / 8 * v / (2 * f.bandwidth * f.efficiency) + 8 / 2 * f.latency, rel=1e-4)
    three_axes = float(collective_time(net, "all_gather", v, 512, 1))
    assert three_axes == pytest.approx(511 / 512 * v / (3 * 2 * f.bandwidth * f.efficiency) + 3 * 8 / 2 * f.latency,
                                       rel=1e-4)
    # two slices: the axis across them goes over DCN
    two = network(hardware.get("tpu-v5p"), 1024, slices=2)
    assert tier_of(two, 2, 512) == "dcn"
    with pytest.raises(ValueError, match="slices=2: only TPU slices"):
        network(hardware.get("h100"), 16, slices=2)
    with pytest.raises(ValueError, match="above tpu-v5p's largest slice"):
        network(hardware.get("tpu-v5p"), 16384)


def test_placement_is_innermost_tp():
    st = strides({"tp": 8, "cp": 1, "fsdp": 4, "dp": 2, "pp": 4})
    assert st == {"tp": 1, "cp": 8, "fsdp": 8, "dp": 32, "pp": 64}


def test_network_table_round_trips_and_is_checked():
    for name in hardware.names():
        spec = hardware.get(name)
        assert spec.network, name  # every shipped spec describes its network
        assert hardware.from_toml(hardware.to_toml(spec)) == spec
    text = hardware.to_toml(hardware.get("h100")).replace('fast_kind = "switch"', 'fast_kind = "ring"')
    with pytest.raises(ValueError, match="network.fast_kind='ring'"):
        hardware.from_toml(text)
    text = hardware.to_toml(hardware.get("h100")).replace("fast_latency", "fast_latencyy", 1)
    with pytest.raises(ValueError, match="unknown key 'fast_latencyy'"):
        hardware.from_toml(text)
