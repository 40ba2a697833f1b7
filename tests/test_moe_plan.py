"""The MoE scaling law (Krajewski et al. 2024), plan(moe=True) / plan --moe, and expert
parallelism in the step time and the layout search."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from models.config import TransformerConfig
from planner import Layout
from planner.laws import MOE_LAWS, MoEScalingLaw, get_moe_law
from planner.search import expert_memory, moe_counts, moe_shape

MICRO = TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32, mlp="swiglu",
                          norm="rmsnorm", position="rope", bias=False, tied_embeddings=True)


# --- the law ------------------------------------------------------------------------------------
def test_krajewski_law():
    law = MOE_LAWS["krajewski"]
    assert (law.a, law.alpha, law.b, law.beta, law.g, law.gamma, law.c, law.expansion) == \
        (18.1, 0.115, 30.8, 0.147, 2.1, 0.58, 0.47, 64)
    # Krajewski et al. 2024 Fig. 3a (as summarised by a third party): the 64x25M model (about
    # 1.07e9 non-embedding parameters with its 64 experts) on 66B tokens, G=1 -> G=8: 3.12 -> 2.95
    # (read off the figure; the law reproduces it within the reading's 0.03).
    assert law.loss(1.07e9, 6.6e10, 1) == pytest.approx(3.12, abs=0.03)
    assert law.loss(1.07e9, 6.6e10, 8) == pytest.approx(2.95, abs=0.03)
    # finer experts always help, at a shrinking rate (g / G^gamma)
    losses = [law.loss(1e10, 1e11, g) for g in (1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[0] - losses[1] > losses[3] - losses[4]
    # pure and differentiable, also in G; log_loss is the same function
    f = jax.jit(lambda ln, ld, g: law.log_loss(ln, ld, g))
    assert float(f(jnp.log(1e10), jnp.log(1e11), 4.0)) == pytest.approx(law.loss(1e10, 1e11, 4), rel=1e-5)
    dn, dd, dg = jax.grad(lambda n, d, g: law.loss(n, d, g), argnums=(0, 1, 2))(1e10, 1e11, 4.0)
    assert dn < 0 and dd < 0 and dg < 0
    with pytest.raises(ValueError, match="gamma=-1"):
        MoEScalingLaw(a=1, alpha=0.1, b=1, beta=0.1, g=1, gamma=-1, c=0.5)
    with pytest.raises(ValueError, match="unknown MoE scaling law 'epoch'"):
        get_moe_law("epoch")


# --- counts of the law's family ---------------------------------------------------------------
def test_moe_counts_by_hand():
    m = moe_shape(MICRO, 2, expansion=4)  # 8 experts of width 64, top-2
    assert (m.n_experts, m.experts_per_token, m.d_ff_expert) == (8, 2, 64)
    c = moe_counts(m, batch_size=2)
    d, layers = 64, 2
    attn = 4 * d * d  # q, k, v, out (MHA, no biases)
    norms = 2 * d
    experts = 8 * 3 * d * 64
    router = d * 8
    non_emb = layers * (attn + norms + experts + router) + d  # + the final norm
    assert c["non_embedding"] == non_emb
    assert c["total"] == non_emb + 256 * d  # the tied embedding
    assert c["active"] == c["total"] - layers * 6 * 3 * d * 64  # 6 of 8 experts idle per token
    assert all(isinstance(v, int) for v in c.values())
    # the same counts as planner.count_params of the MoE model (issue 16's closed form)
    from planner import count_params

    pc = count_params(m)
    assert (pc.non_embedding, pc.total, pc.active) == (c["non_embedding"], c["total"], c["active"])
    assert pc.components["experts"] == layers * experts and pc.components["router"] == layers * router
    mem = expert_memory(m, chips=4)
    assert mem["expert_params"] == layers * experts and mem["bytes_per_chip"] == layers * experts * 16 / 4


# --- the plan ----------------------------------------------------------------------------------
def test_plan_moe_1e23_beats_dense(capsys):
    """`planner plan --budget 1e23 --moe`: a sparse plan whose predicted loss is below the dense plan's."""
    from planner.cli import main

    # two granularities keep the test short (the default tries 1, 2, 4, 8, 16)
    assert main(["plan", "--budget", "1e23", "--moe", "--chips", "64", "--granularities", "1,16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sparse, dense, experts = out["moe"], out["dense"], out["experts"]
    assert out["loss_below_dense"] and sparse["loss"] < dense["loss"]
    # the dense side is the same paper's dense fit on the same data (Krajewski et al. 2024, §4)
    from planner.laws import LAWS

    import dataclasses

    assert dense["law"] == dataclasses.asdict(LAWS["krajewski-dense"])
    cfg = sparse["config"]
    assert cfg["n_experts"] == 64 * experts["granularity"] and cfg["experts_per_token"] == experts["granularity"]
    assert experts["total_params"] > 10 * experts["active_params"]  # sparse: E = 64
    # FLOPs from the active parameters: within the budget, and near 6 N_active D
    assert sparse["flops"] <= 1e23 and sparse["budget_used"] > 0.97
    assert sparse["flops"] / (6 * experts["active_params"] * sparse["tokens"]) == pytest.approx(1.0, abs=0.25)
    # the loss is the law's at the plan's N (all experts), tokens and G
    law = MOE_LAWS["krajewski"]
    assert sparse["loss"] == pytest.approx(law.loss(experts["non_embedding_total"], sparse["tokens"],
                                                    experts["granularity"]), rel=1e-9)
    # the law prefers finer experts at this budget (Krajewski et al. 2024 §6: G grows with the budget)
    by_g = {int(g): v for g, v in experts["loss_by_granularity"].items()}
    assert set(by_g) == {1, 16} and min(by_g, key=by_g.get) == experts["granularity"] == 16
    assert experts["memory"]["bytes_per_chip"] == pytest.approx(experts["memory"]["total_bytes"] / 64)


def test_plan_moe_bad_input():
    from planner.cli import main
    from planner.search import plan

    with pytest.raises(ValueError, match="FLOP budget"):
        plan(moe=True, hardware="h100", chips=8, days=1)
    with pytest.raises(ValueError, match="give chips= too"):
        plan(1e20, moe=True, hardware="h100")
    with pytest.raises(ValueError, match="granularities"):
        plan(1e20, moe=True, granularities=(0,))
    with pytest.raises(ValueError, match="moe=True"):
        plan(1e20, granularities=(1, 2))
    assert main(["plan", "--budget", "1e20", "--moe", "--hardware", "h100"]) == 2
    assert main(["plan", "--budget", "1e20", "--moe", "--granularities", "x"]) == 2


# --- expert parallelism in the step time and the layout search --------------------------------
MOE = MICRO.replace(n_experts=8, experts_per_token=2, d_ff_expert=32)


def test_cluster_step_all_to_all_by_hand():
    from hardware.network import collective_time, network, strides
    from planner.timing import cluster_step, layout_arrays

    import hardware

    spec = hardware.get("h100")
    lay = Layout(dp=8, ep=8, micro_batch=1, dtype="bf16", param_dtype="bf16")
    net = network(spec, 8)
    x = layout_arrays(lay)
    r = cluster_step(MOE, spec, net, x, batch_size=8, seq_len=32)
    # per MoE layer 4 all-to-alls of 32 tokens x top-2 x 64 x 2 bytes over the 8 GPUs of the node
    t = collective_time(net, "all_to_all", 32 * 2 * 64 * 2, 8, strides({"dp": 8})["dp"])
    assert float(r.exposed["ep"]) == pytest.approx(2 * 4 * float(t), rel=1e-6)
    assert float(r.wire_bytes["ep"]) == pytest.approx(2 * 4 * 7 / 8 * 8192, rel=1e-6)
    # overlapped: only the excess over the layer's compute (here none)
    r2 = cluster_step(MOE, spec, net, dict(x, ep_overlap=1), batch_size=8, seq_len=32)
    assert float(r2.exposed["ep"]) <= float(r.exposed["ep"]) and float(r2.step_time) < float(r.step_time)
    # ep=1: no all-to-all; the dense model has no "ep" entry at all
    r1 = cluster_step(MOE, spec, net, layout_arrays(lay.replace(ep=1)), batch_size=8, seq_len=32)
    assert float(r1.exposed["ep"]) == 0.0
    assert "ep" not in cluster_step(MICRO, spec, net, layout_arrays(lay.replace(ep=1)), batch_size=8,
                                    seq_len=32).exposed
    # expert weights divided by ep in memory
    assert float(r1.memory_per_chip) > float(r.memory_per_chip)
    with pytest.raises(ValueError, match="ep=8: expert parallelism needs a mixture of experts"):
        Layout(fsdp=8, ep=8).check(MICRO)
    with pytest.raises(ValueError, match="n_experts=8 is not divisible by ep=16"):
        Layout(fsdp=16, ep=16).check(MOE)


def test_layout_search_includes_ep():
    from planner.layouts import enumerate_layouts, search_layouts

    arr = enumerate_layouts(MOE, chips=16, batch_size=16, seq_len=32, remat=("none",), attention=("flash",))
    eps = set(arr["ep"].tolist())
    assert eps == {1, 2, 4, 8}  # the divisors of dp x fsdp that divide 8 experts
    assert set(enumerate_layouts(MICRO, chips=16, batch_size=16, seq_len=32, remat=("none",),
                                 attention=("flash",))["ep"].tolist()) == {1}
    res = search_layouts(MOE, hardware="h100", chips=16, batch_size=16, seq_len=32, top=50,
                         remat=("none",), attention=("flash",))
    assert any(r.layout.ep > 1 for r in res.best) and all("ep" in r.exposed_comm for r in res.best)
    assert all(MOE.n_experts % r.layout.ep == 0 for r in res.best)


def test_moe_presets_as_plan_bases():
    """A mixture-of-experts preset as a base: its dense counterpart (the MLP a token uses)."""
    from models import presets
    from planner.search import dense_base

    olmoe = dense_base(presets.get("olmoe-1b-7b"))  # 8 experts of 1024 per token, d_ff 1024
    assert not olmoe.is_moe and olmoe.d_ff == 8 * 1024
    ds = dense_base(presets.get("deepseek-v3"))  # 8 x 2048 routed + 1 x 2048 shared = 18432 = d_ff
    assert not ds.is_moe and ds.d_ff == 18432 and ds.attention_kind == "mla"
    dense = presets.get("llama-2-7b")
    assert dense_base(dense) is dense
