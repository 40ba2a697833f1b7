"""The mixture-of-experts and latent-attention fields of TransformerConfig: defaults keep the
dense model, each field is checked, and the config round-trips through every serialisation."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from models import TransformerConfig
from planner.cli import parse_overrides

BASE = dict(vocab_size=97, d_model=48, n_layers=3, n_heads=4, d_ff=96, seq_len=16)
MOE = dict(n_experts=8, experts_per_token=2)
MLA = dict(attention_kind="mla", position="rope", bias=False, kv_lora_rank=16, qk_rope_head_dim=8)


def make(**changes):
    return TransformerConfig(**(BASE | changes))


def test_defaults_are_dense_mha():
    cfg = make()
    assert not cfg.is_moe and cfg.moe_layers == 0 and not cfg.is_mla
    assert (cfg.n_experts, cfg.experts_per_token, cfg.n_shared_experts, cfg.dense_layers) == (None, None, 0, 0)
    assert (cfg.router, cfg.capacity_factor, cfg.attention_kind) == ("softmax", None, "mha")
    assert [cfg.layer_is_moe(i) for i in range(3)] == [False] * 3


def test_moe_derived_values():
    cfg = make(**MOE, dense_layers=1, n_shared_experts=2, d_ff_expert=32)
    assert cfg.is_moe and cfg.moe_layers == 2
    assert [cfg.layer_is_moe(i) for i in range(3)] == [False, True, True]
    assert (cfg.resolved_d_ff_expert, cfg.resolved_d_ff_shared) == (32, 32)
    assert cfg.replace(d_ff_shared=24).resolved_d_ff_shared == 24
    assert make(**MOE).resolved_d_ff_expert == 96  # None = d_ff
    # GShard capacity: ceil(1.25 * 64 * 2 / 8) = 20 slots per expert; never more than the tokens
    assert make(**MOE, capacity_factor=1.25).expert_capacity(64) == 20
    assert make(**MOE, capacity_factor=100.0).expert_capacity(64) == 64


def test_mla_derived_values():
    cfg = make(**MLA, v_head_dim=10)
    assert cfg.is_mla and cfg.resolved_head_dim == 12 and cfg.qk_head_dim == 20 and cfg.resolved_v_head_dim == 10
    assert make(**MLA).resolved_v_head_dim == 12 and make().qk_head_dim == 12


@pytest.mark.parametrize(("changes", "message"), [
    (dict(experts_per_token=2), r"experts_per_token=2: only with a mixture of experts; set n_experts"),
    (dict(n_shared_experts=1), r"n_shared_experts=1: only with a mixture of experts"),
    (dict(d_ff_expert=32), r"d_ff_expert=32: only with a mixture of experts"),
    (dict(dense_layers=1), r"dense_layers=1: only with a mixture of experts"),
    (dict(router="sigmoid"), r"router='sigmoid': only with a mixture of experts"),
    (dict(capacity_factor=1.0), r"capacity_factor=1.0: only with a mixture of experts"),
    (dict(n_experts=8), r"n_experts=8: needs experts_per_token"),
    (dict(n_experts=4, experts_per_token=5), r"experts_per_token=5: must be <= n_experts=4"),
    (dict(n_experts=0, experts_per_token=1), r"n_experts=0: must be a positive int"),
    (dict(n_experts=4, experts_per_token=0), r"experts_per_token=0: must be a positive int"),
    (dict(n_experts=4.0, experts_per_token=1), r"n_experts=4.0 .*must be a positive Python int"),
    (dict(**MOE, dense_layers=3), r"dense_layers=3: must be < n_layers=3 .*n_experts=None"),
    (dict(**MOE, dense_layers=-1), r"dense_layers=-1: must be a Python int >= 0"),
    (dict(**MOE, n_shared_experts=True), r"n_shared_experts=True: must be a Python int >= 0"),
    (dict(**MOE, d_ff_shared=16), r"d_ff_shared=16: only with n_shared_experts >= 1"),
    (dict(**MOE, router="relu"), r"router='relu': unknown option; valid: 'softmax', 'sigmoid'"),
    (dict(**MOE, capacity_factor=0.0), r"capacity_factor=0.0: must be a positive finite number"),
    (dict(**MOE, capacity_factor="1"), r"capacity_factor='1': must be a positive finite number"),
    (dict(attention_kind="gqa"), r"attention_kind='gqa': unknown option; valid: 'mha', 'mla'"),
    (dict(kv_lora_rank=16), r"kv_lora_rank=16: only with attention_kind='mla'"),
    (dict(v_head_dim=8, q_lora_rank=8), r"q_lora_rank=8, v_head_dim=8: only with attention_kind='mla'"),
    (MLA | dict(kv_lora_rank=None), r"attention_kind='mla': needs kv_lora_rank"),
    (MLA | dict(kv_lora_rank=None, qk_rope_head_dim=None), r"needs kv_lora_rank and qk_rope_head_dim"),
    (MLA | dict(position="learned"), r"position='learned': .*use position='rope'"),
    (MLA | dict(n_kv_heads=2), r"n_kv_heads=2: latent attention .*n_kv_heads=None"),
    (MLA | dict(bias=True), r"biases on q, k, v: .*qkv_bias=False"),
    (MLA | dict(qk_norm="head"), r"qk_norm='head' with attention_kind='mla': not supported"),
    (MLA | dict(qk_rope_head_dim=7), r"qk_rope_head_dim=7: must be even"),
    (MLA | dict(q_lora_rank=0), r"q_lora_rank=0: must be a positive int"),
])
def test_invalid(changes, message):
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_round_trips():
    cfg = make(**MOE, **MLA, n_shared_experts=1, d_ff_expert=32, d_ff_shared=16, dense_layers=1,
               router="sigmoid", capacity_factor=1.5, q_lora_rank=24, v_head_dim=10)
    as_dict = dataclasses.asdict(cfg)
    assert TransformerConfig(**json.loads(json.dumps(as_dict))) == cfg
    assert cfg.replace(n_experts=16).n_experts == 16 and cfg.replace(n_experts=16).replace(n_experts=8) == cfg
    with pytest.raises(ValueError, match="experts_per_token=2: must be <= n_experts=1"):
        cfg.replace(n_experts=1)
    # the CLI's --set parses every new field to its type
    sets = [f"{k}={'none' if v is None else v}" for k, v in as_dict.items()]
    assert TransformerConfig(**parse_overrides(sets)) == cfg
    assert parse_overrides(["capacity_factor=none", "n_experts=none"]) == {"capacity_factor": None,
                                                                          "n_experts": None}


def test_relaxed_moe_sizes():
    # the planner's relaxation may vary the expert width and count as floats
    cfg = make(**MOE, d_ff_expert=jnp.float32(40.5))
    assert cfg.relaxed and float(cfg.resolved_d_ff_expert) == 40.5

    @jax.jit
    def width(n):
        return make(n_experts=n, experts_per_token=jnp.float32(2.0), d_ff_expert=jnp.float32(8.0)).moe_layers

    assert int(width(jnp.float32(6.0))) == 3
