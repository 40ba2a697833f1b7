"""The layout search: valid candidates, the vectorised pass agrees with roofline(layout=), and
for published runs it finds a layout at least as fast as the published one (under the model)."""

import pytest

from models import presets
from planner import Layout
from planner.layouts import enumerate_layouts, search_layouts
from planner.published import published_runs
from planner.timing import roofline


def test_search_is_sorted_valid_and_matches_the_scalar_model():
    cfg = presets.get("gpt2")
    res = search_layouts(cfg, hardware="h100", chips=16, batch_size=64, seq_len=1024, top=5)
    assert res.evaluated >= res.fitting > 0
    times = [r.step_time for r in res.best]
    assert times == sorted(times)
    for r in res.best:
        r.layout.check(cfg, batch_size=64, seq_len=1024)
        assert r.layout.chips == 16 and r.memory_per_chip <= 80e9
        one = roofline(cfg, hardware="h100", layout=r.layout, batch_size=64, seq_len=1024)
        assert one.step_time == pytest.approx(r.step_time, rel=1e-4)
        assert one.mfu == pytest.approx(r.mfu, rel=1e-4)


def test_enumeration_respects_divisibility():
    cfg = presets.get("gpt2")  # 12 heads, 12 layers, d_ff 3072
    a = enumerate_layouts(cfg, chips=8, batch_size=8, seq_len=1024)
    assert set(a["tp"]) <= {1, 2, 4}  # 8 does not divide 12 heads
    assert all(12 % (p * v) == 0 for p, v in zip(a["pp"], a["v"]))
    assert all((t * p * d * f * c) == 8 for t, p, d, f, c in zip(a["tp"], a["pp"], a["dp"], a["fsdp"], a["cp"]))


@pytest.mark.parametrize("name", ["korthikanti22-22b-full", "narayanan21-1.7b", "nvidia-dgxc-gpt3-175b-128xh100",
                                  "maxtext-v5p-32b-1x128"])
def test_search_beats_or_matches_the_published_layout(name):
    r = published_runs(name)
    pub = roofline(r.model, hardware=r.hardware, layout=r.layout, batch_size=r.batch_size, seq_len=r.seq_len,
                   slices=r.slices, dropout=r.dropout)
    res = search_layouts(r.model, hardware=r.hardware, chips=r.chips, batch_size=r.batch_size, seq_len=r.seq_len,
                         dtype=r.layout.dtype, param_dtype=r.layout.param_dtype, master_fp32=r.layout.master_fp32,
                         slices=r.slices, tp_overlap=r.layout.tp_overlap,
                         dp_overlap=r.layout.dp_overlap, dropout=r.dropout, top=1)
    assert res.best[0].step_time <= pub.step_time * (1 + 1e-6)


def test_bad_input():
    cfg = presets.get("gpt2")
    with pytest.raises(ValueError, match="chips=0"):
        search_layouts(cfg, hardware="h100", chips=0, batch_size=8)
    with pytest.raises(ValueError, match="remat='some'"):
        search_layouts(cfg, hardware="h100", chips=8, batch_size=8, remat=("some",))
    with pytest.raises(ValueError, match="none of the"):
        search_layouts(cfg, hardware="h100", chips=1, batch_size=8, max_memory_per_chip=1e6)
    with pytest.raises(ValueError, match="chips=4: the layout uses 8"):
        roofline(cfg, hardware="h100", chips=4, layout=Layout(fsdp=8), batch_size=8)


@pytest.mark.parametrize("text", ["tp=4,dp=2,micro_batch=4", "fsdp=8,micro_batch=1",
                                  "tp=2,dp=4,micro_batch=2,sequence_parallel=true"])
def test_vectorised_bytes_agree_with_planner_collectives(text):
    # The search's array form of the bytes each axis moves, against planner.collectives (the
    # closed form checked against XLA's HLO in tests/test_collectives.py), on Llama 2 7B.
    import hardware
    from hardware.network import network
    from planner.collectives import bytes_per_axis, collectives
    from planner.timing import cluster_step, layout_arrays

    cfg = presets.get("llama-2-7b")
    lay = Layout.parse(text + ",dtype=bf16,param_dtype=bf16")
    # sp_regather=False: the step model leaves out the backward re-gather of the sequence-
    # parallel block inputs, which Megatron-LM overlaps with the weight-gradient matmul
    # (Korthikanti et al. 2022, Sec. 4.2.2); XLA:TPU issues it too (planner.collectives' default).
    theirs = {k: float(v) for k, v in bytes_per_axis(collectives(cfg, lay, batch_size=8, seq_len=4096,
                                                                 sp_regather=False),
                                                       wire=True).items()}
    spec = hardware.get("h100")
    mine = cluster_step(cfg, spec, network(spec, lay.chips), layout_arrays(lay), batch_size=8, seq_len=4096).wire_bytes
    for axis, v in mine.items():
        if float(v):
            assert float(v) == pytest.approx(theirs[axis], rel=0.03), axis
    # what the array form leaves out (e.g. the norms' gradients over dp+tp with sequence
    # parallelism) is under 1% of the traffic
    left_out = sum(v for k, v in theirs.items() if not float(mine.get(k, 0)))
    assert left_out < 0.01 * sum(theirs.values())


def test_cluster_step_is_differentiable_in_the_shape():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hardware
    from hardware.network import network
    from planner.timing import cluster_step, layout_arrays

    cfg = presets.get("llama-2-7b")
    spec = hardware.get("h100")
    net = network(spec, 64)
    x = layout_arrays(Layout(fsdp=8, tp=8, micro_batch=1, dtype="bf16", param_dtype="bf16"))

    def step(d):
        return cluster_step(cfg.replace(d_model=d, head_dim=jnp.float32(128)), spec, net, x, batch_size=64,
                            seq_len=4096).step_time

    g = float(jax.jit(jax.grad(step))(jnp.float32(4096.0)))
    fd = (float(step(jnp.float32(4104.0))) - float(step(jnp.float32(4088.0)))) / 16
    assert g > 0
    np.testing.assert_allclose(g, fd, rtol=2e-2)
