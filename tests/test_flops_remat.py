"""Recomputation FLOPs: the closed form per remat policy against XLA's count of the lowered step."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from models import Layout, presets
from models.train import abstract_model, adamw, train_step
from planner.flops import count_flops, recompute_flops
from planner.hlo import cost_of


def xla_train_flops(cfg, layout, b=2, t=16):
    graphdef, params = nnx.split(abstract_model(cfg, layout=layout), nnx.Param)
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    tx = adamw()
    lowered = train_step.lower(params, jax.eval_shape(tx.init, params), tokens, tokens, graphdef=graphdef, tx=tx)
    return cost_of(lowered.cost_analysis()).flops


# exact: full, selective and dots (whose replayed block XLA counts one op per element of each
# saved matmul output it reads back); within 0.3%: flash (its online-softmax rescales, counted
# as the dot path's softmax).
@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize(("text", "tol"), [("remat=full", 1e-7), ("remat=selective", 1e-7),
                                           ("remat=dots", 1e-7), ("attention=flash,remat=full", 3e-3)])
def test_recompute_closed_form_matches_xla(name, text, tol):
    cfg, lay = presets.get(name), Layout.parse(text)
    hfu = count_flops(cfg, batch_size=2, seq_len=16, mode="train", layout=lay).total
    xla = xla_train_flops(cfg, lay)
    assert abs(xla - hfu) <= tol * hfu + 1  # XLA rounds its float32 count
    mfu = count_flops(cfg, batch_size=2, seq_len=16, mode="train").total
    assert hfu > mfu  # model FLOPs exclude the recomputation


def test_recompute_by_policy_in_matmul_flops():
    cfg = presets.get("llama-2-7b")
    fwd = count_flops(cfg, batch_size=1, seq_len=4096, mode="forward", convention="fma").components
    rec = {r: recompute_flops(cfg, batch_size=1, seq_len=4096, layout=Layout(remat=r), convention="fma")
           for r in ("none", "selective", "dots", "full")}
    assert sum(rec["none"].values()) == 0
    assert rec["selective"]["attn_scores"] == fwd["attn_scores"] and rec["selective"]["mlp_in"] == 0
    assert rec["dots"]["attn_values"] == fwd["attn_values"] and rec["dots"]["q"] == 0
    # full: the whole forward of the layers but the down projection and the logits
    assert sum(rec["full"].values()) == sum(fwd.values()) - fwd["mlp_out"] - fwd["logits"]
    flash = recompute_flops(cfg, batch_size=1, seq_len=4096, layout=Layout(attention="flash"), convention="fma")
    assert sum(flash.values()) == fwd["attn_scores"]
    with pytest.raises(ValueError, match="recomputation is counted for fma, no_fma, xla"):
        recompute_flops(cfg, layout=Layout(remat="full"), convention="6nd")
