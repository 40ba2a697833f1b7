"""The closed-form FLOP model: conventions against each other, against XLA, and against numbers
its sources publish; exact on ints, differentiable and vectorised on jnp."""

import dataclasses
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from models import TransformerConfig, abstract_model, adamw, presets, train_step
from planner import count_params
from planner.flops import (
    CONVENTIONS, FLOP_COMPONENTS, MATMUL_COMPONENTS, count_flops, count_flops_many, step_matmuls,
)
from tests.strategies import configs

MODES = ("forward", "backward", "train")


# ----------------------------------------------------------------------------- matmul conventions
@settings(max_examples=100, deadline=None)
@given(configs(max_width=4096, max_layers=100), st.integers(1, 64), st.integers(1, 8192),
       st.sampled_from(MODES))
def test_fma_minus_no_fma_is_sum_of_output_sizes(cfg, b, t, mode):
    cfg = dataclasses.replace(cfg, seq_len=max(cfg.seq_len, t))
    fma = count_flops(cfg, batch_size=b, seq_len=t, mode=mode, convention="fma")
    no_fma = count_flops(cfg, batch_size=b, seq_len=t, mode=mode, convention="no_fma")
    outputs = sum(m.m * m.p * m.count for ms in step_matmuls(cfg, b, t, mode).values() for m in ms)
    assert fma.total - no_fma.total == outputs
    assert type(fma.total) is int and type(no_fma.total) is int


@settings(max_examples=60, deadline=None)
@given(configs(max_width=512), st.integers(1, 8), st.integers(1, 512))
def test_train_is_forward_plus_backward(cfg, b, t):
    cfg = dataclasses.replace(cfg, seq_len=max(cfg.seq_len, t))
    for conv in CONVENTIONS:
        if conv == "megatron-recompute":
            continue
        f, bw, tr = (count_flops(cfg, batch_size=b, seq_len=t, mode=m, convention=conv) for m in MODES)
        extra = tr.components.get("optimizer", 0)  # "xla" train also counts the AdamW update
        assert tr.total == f.total + bw.total + extra, conv
    # backward = 2 x forward for every matmul term (dA and dB, each as big as the forward)
    f, bw = (count_flops(cfg, batch_size=b, seq_len=t, mode=m, convention="fma") for m in ("forward", "backward"))
    for name in MATMUL_COMPONENTS:
        assert bw.components[name] == 2 * f.components[name]


def test_components_are_the_documented_ones():
    cfg = presets.get("tiny-llama")
    for conv in ("fma", "no_fma", "xla"):
        for mode in MODES:
            c = count_flops(cfg, mode=mode, convention=conv)
            assert tuple(c.components) == FLOP_COMPONENTS
            assert c.total == sum(c.components.values())
    xla = count_flops(cfg, mode="train", convention="xla").components
    for name in ("embedding", "rope", "norms", "softmax", "activation", "residual", "loss", "optimizer"):
        assert xla[name] > 0, name


def test_causal_halves_attention_matmuls_only():
    cfg = presets.get("gpt2")
    full = count_flops(cfg, convention="fma")
    half = count_flops(cfg, convention="fma", causal=True)
    for name in FLOP_COMPONENTS:
        expect = full.components[name] // 2 if name in ("attn_scores", "attn_values") else full.components[name]
        assert half.components[name] == expect
    tiny = TransformerConfig(vocab_size=5, d_model=3, n_layers=1, n_heads=1, d_ff=2, seq_len=3)
    odd = count_flops(tiny, convention="no_fma", causal=True)  # 3 * 3 * (2*3 - 1) = 45 halved
    assert odd.components["attn_values"] == Fraction(45, 2)  # exact, not rounded


# ----------------------------------------------------------------------------- XLA
def _xla_costs(cfg, b, t, mode):
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    x = jax.ShapeDtypeStruct((b, t), jnp.int32)
    if mode == "forward":
        lowered = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, x)
    else:
        tx = adamw()
        lowered = train_step.lower(params, jax.eval_shape(tx.init, params), x, x, graphdef=graphdef, tx=tx)
    ca = lowered.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return ca.get("flops", 0.0), ca.get("transcendentals", 0.0)


def _assert_xla_matches(cfg, b, t, mode):
    flops, trans = _xla_costs(cfg, b, t, mode)
    pred = count_flops(cfg, batch_size=b, seq_len=t, mode=mode, convention="xla")
    # XLA reports float32: exact up to its 24-bit rounding of large totals.
    assert flops == pytest.approx(pred.total, rel=1e-4, abs=1), (cfg, b, t, mode)
    assert trans == pytest.approx(pred.transcendentals, rel=1e-4, abs=1), (cfg, b, t, mode)


def xla_configs(max_layers=2):
    # Sizes >= 2 (head_dim >= 4): a size-1 axis lets jnp fold or reshape some ops (documented).
    return configs(max_width=48, max_layers=max_layers).filter(
        lambda c: c.resolved_head_dim >= 4 and c.d_model >= 2 and c.d_ff >= 2)


@settings(max_examples=40, deadline=None)
@given(xla_configs(), st.integers(1, 3), st.integers(2, 16))
def test_xla_convention_equals_xla_forward(cfg, b, t):
    t = min(t, cfg.seq_len) if cfg.position == "learned" else t
    if t < 2:
        t = 2
        cfg = dataclasses.replace(cfg, seq_len=max(cfg.seq_len, 2))
    _assert_xla_matches(cfg, b, t, "forward")


@settings(max_examples=12, deadline=None)
@given(xla_configs(max_layers=2), st.integers(1, 2), st.integers(2, 8))
def test_xla_convention_equals_xla_train_step(cfg, b, t):
    cfg = dataclasses.replace(cfg, seq_len=max(cfg.seq_len, t))
    _assert_xla_matches(cfg, b, t, "train")


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b", "gemma-2b", "qwen2.5-0.5b"])
def test_xla_convention_on_public_presets(name):
    _assert_xla_matches(presets.get(name), 1, 128, "forward")


# ----------------------------------------------------------------------------- published numbers
def gpt3_175b():
    # Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads of 128, n_ctx 2048;
    # GPT-2's architecture (learned positions, LayerNorm, GELU, biases, tied), vocab 50257.
    return TransformerConfig(vocab_size=50257, d_model=12288, n_layers=96, n_heads=96,
                             d_ff=4 * 12288, seq_len=2048)


def test_6nd_reproduces_gpt3_training_compute():
    # Brown et al. 2020, Table D.1: GPT-3 175B, 174,600M parameters, 300B tokens, 3.14E+23 FLOPs.
    cfg = gpt3_175b()
    assert round(count_params(cfg).total / 1e6, -2) == 174_600
    c = count_flops(cfg, batch_size=300_000_000_000 // 2048, seq_len=2048, mode="train", convention="6nd")
    assert float(f"{c.total:.2e}") == 3.14e23


def test_megatron_reproduces_gpt3_training_days():
    # Narayanan et al. 2021, §5.1: GPT-3 (175B) on 300B tokens, 1024 A100s at 140 TFLOP/s each,
    # "would take about 34 days". That estimate is 8TP: the leading (dense) term of the recompute
    # count, 96 l h^2 = 8 x 12 l h^2 per token; the full formula adds s/(6h) + V/(16 l h) = 3%.
    cfg = gpt3_175b()
    c = count_flops(cfg, batch_size=1, seq_len=2048, mode="train", convention="megatron-recompute")
    days = lambda flops: flops / 2048 * 300e9 / (1024 * 140e12) / 86400  # noqa: E731
    assert round(days(c.components["dense"])) == 34
    assert days(c.total) / days(c.components["dense"]) == pytest.approx(1 + 2048 / (6 * 12288) + 50257 / (16 * 96 * 12288))


def test_palm_reproduces_palm_540b_mfu():
    # Chowdhery et al. 2022: PaLM 540B (Table 1: 118 layers, d_model 18432, 48 heads of 256,
    # d_ff 4 d_model SwiGLU, multi-query, 256k vocab, tied, no biases) trained at 238.3K tokens/s on
    # 6144 TPU v4 chips (275 TFLOP/s bf16) with 46.2% MFU (Table 3), counting 6N + 12LHQT (App. B).
    cfg = TransformerConfig(vocab_size=256_000, d_model=18432, n_layers=118, n_heads=48, n_kv_heads=1,
                            head_dim=256, d_ff=4 * 18432, seq_len=2048, mlp="swiglu", norm="rmsnorm",
                            position="rope", bias=False)
    assert round(count_params(cfg).total / 1e9) == 540
    per_token = count_flops(cfg, mode="train", convention="palm").total / 2048
    mfu = 238.3e3 * per_token / (6144 * 275e12)
    assert round(mfu, 3) == 0.462


def test_kaplan_table1_total():
    # Kaplan et al. 2020, Table 1: C_forward = 2N + 2 n_layer n_ctx d_attn, N = 2 d_model n_layer
    # (2 d_attn + d_ff); for d_attn = d_ff / 4 = d_model, N = 12 n_layer d_model^2 (their Eq. 2.1).
    cfg = presets.get("gpt2")
    c = count_flops(cfg, seq_len=1024, convention="kaplan")
    n = 12 * 12 * 768**2
    assert c.total == 1024 * (2 * n + 2 * 12 * 1024 * 768)
    # ...and Kaplan's N is our non-embedding count less biases and norms (0.1% for GPT-2).
    assert n / count_params(cfg).non_embedding == pytest.approx(1, abs=2e-3)


def test_chinchilla_appendix_f_vs_6nd():
    # Hoffmann et al. 2022, Appendix F: for their models the full count and 6ND differ by a few
    # percent; Chinchilla (Table 4: 80 layers, d_model 8192, 64 heads of 128, d_ff 32768, 32k
    # vocab, 2048 context): ours gives 6ND / Appendix F within 5%.
    cfg = TransformerConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, d_ff=32768,
                            seq_len=2048, position="rope", norm="rmsnorm", bias=False)
    full = count_flops(cfg, mode="train", convention="chinchilla").total
    approx = count_flops(cfg, mode="train", convention="6nd").total
    assert 0.95 < approx / full < 1.05
    # The softmax row is 3 heads s^2 per layer, forward.
    fwd = count_flops(cfg, convention="chinchilla").components
    assert fwd["softmax"] == 80 * 3 * 64 * 2048**2


def test_deepseek_eq2():
    # DeepSeek-AI 2024, §3.2: M = 72 n_layer d_model^2 + 12 n_layer d_model l_seq, and 6 N1 =
    # 72 n_layer d_model^2 for their non-embedding N1 = 12 n_layer d_model^2.
    cfg = presets.get("llama-2-7b")
    m = count_flops(cfg, seq_len=4096, batch_size=1, mode="train", convention="deepseek").total / 4096
    assert m == 72 * 32 * 4096**2 + 12 * 32 * 4096 * 4096
    assert m - 6 * 12 * 32 * 4096**2 == 12 * 32 * 4096 * 4096


# ----------------------------------------------------------------------------- exact, monotone
def test_exact_integers_beyond_float():
    cfg = TransformerConfig(vocab_size=256_000, d_model=65536, n_layers=512, n_heads=512, d_ff=262144,
                            seq_len=32768, mlp="swiglu", position="rope", bias=False)
    c = count_flops(cfg, batch_size=4096, mode="train", convention="xla")
    assert type(c.total) is int and c.total > 10**21
    assert c.total == sum(c.components.values())
    assert float(c.total) != c.total or c.total < 2**53  # a float could not hold it exactly


_GROWABLE = ("vocab_size", "n_layers", "d_ff", "seq_len")


@settings(max_examples=80, deadline=None)
@given(configs(max_width=256), st.sampled_from(_GROWABLE + ("d_model", "n_heads", "batch")),
       st.integers(1, 5), st.sampled_from(sorted(set(CONVENTIONS) - {"megatron-recompute"})))
def test_counts_grow_with_every_size(cfg, field, k, conv):
    def total(c, b=2):
        return count_flops(c, batch_size=b, seq_len=c.seq_len, mode="train", convention=conv).total

    if field == "batch":
        assert total(cfg, 2 + k) > total(cfg)
        return
    if field in ("d_model", "n_heads"):
        # grow width keeping divisibility: scale d_model (and head_dim if explicit) or add heads
        if field == "d_model":
            bigger = dataclasses.replace(cfg, d_model=cfg.d_model * (1 + k),
                                         head_dim=None if cfg.head_dim is None else cfg.head_dim)
        else:
            kv = cfg.resolved_n_kv_heads
            heads = cfg.n_heads + k * kv
            hd = cfg.resolved_head_dim
            bigger = dataclasses.replace(cfg, n_heads=heads, head_dim=hd)
        if conv in ("megatron", "deepseek") and field == "n_heads":
            assert total(bigger) >= total(cfg)  # these formulas ignore the head count
            return
        assert total(bigger) > total(cfg)
        return
    bigger = dataclasses.replace(cfg, **{field: getattr(cfg, field) + k})
    if (field == "vocab_size" and conv in ("kaplan", "deepseek")) or (field == "d_ff" and conv in ("megatron", "deepseek")):
        assert total(bigger) == total(cfg)  # not in those formulas
    else:
        assert total(bigger) > total(cfg)


# ----------------------------------------------------------------------------- jnp, grad, vmap
def _relaxed(cfg, **sizes):
    return dataclasses.replace(cfg, **{k: jnp.float32(v) for k, v in sizes.items()})


@settings(max_examples=30, deadline=None)
@given(configs(max_width=512, max_layers=40), st.sampled_from(sorted(CONVENTIONS)), st.sampled_from(MODES))
def test_jnp_path_equals_int_path(cfg, conv, mode):
    if conv == "megatron-recompute":
        mode = "train"
    exact = count_flops(cfg, batch_size=3, mode=mode, convention=conv).total
    relaxed = jax.jit(lambda d, L, ff: count_flops(
        dataclasses.replace(cfg, d_model=d, n_layers=L, d_ff=ff), batch_size=3, mode=mode, convention=conv
    ).total)(jnp.float32(cfg.d_model), jnp.float32(cfg.n_layers), jnp.float32(cfg.d_ff))
    np.testing.assert_allclose(float(relaxed), float(exact), rtol=2e-6)


@pytest.mark.parametrize("conv", ["fma", "no_fma", "xla", "6nd", "palm", "chinchilla"])
def test_grad_matches_finite_differences(conv):
    cfg = presets.get("llama-2-7b", head_dim=128)  # fixed head_dim: widths follow the head count

    def f(x):
        c = dataclasses.replace(cfg, d_model=x[0], n_layers=x[1], d_ff=x[2])
        return count_flops(c, batch_size=2, seq_len=512, mode="train", convention=conv).total

    g = jax.jit(jax.grad(f))(jnp.array([4096.0, 32.0, 11008.0]))
    for i, field in enumerate(["d_model", "n_layers", "d_ff"]):
        v = getattr(cfg, field)
        up, down = (count_flops(cfg.replace(**{field: v + s}), batch_size=2, seq_len=512, mode="train",
                                convention=conv).total for s in (1, -1))
        # The counts are at most quadratic in each size, so the central difference is exact.
        np.testing.assert_allclose(float(g[i]), (up - down) / 2, rtol=1e-5)


def test_vmap_over_100k_configs_equals_scalar_loop():
    rng = np.random.default_rng(0)
    n = 100_000
    d = rng.integers(1, 33, n) * 64
    layers = rng.integers(1, 97, n)
    ff = rng.integers(1, 257, n) * 64
    cfg = presets.get("mistral-7b")

    def one(d, layers, ff):
        return count_flops(dataclasses.replace(cfg, d_model=d, n_layers=layers, d_ff=ff), batch_size=4,
                           seq_len=2048, mode="train").total

    out = jax.jit(jax.vmap(one))(*(jnp.asarray(a, jnp.float32) for a in (d, layers, ff)))
    many = count_flops_many(cfg, batch_size=4, seq_len=2048, mode="train", d_model=d, n_layers=layers, d_ff=ff)
    # The exact scalar count on a random sample of 3,000 of them (all 100k took 40 s in Python).
    idx = rng.choice(n, 3000, replace=False)
    loop = np.array([float(count_flops(cfg.replace(d_model=int(d[i]), n_layers=int(layers[i]), d_ff=int(ff[i])),
                                       batch_size=4, seq_len=2048, mode="train").total) for i in idx])
    assert np.asarray(out).shape == np.asarray(many).shape == (n,)
    np.testing.assert_allclose(np.asarray(out)[idx], loop, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(many)[idx], loop, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(many), np.asarray(out), rtol=1e-6)  # all 100k: both vectorised paths


# ----------------------------------------------------------------------------- errors
def test_bad_arguments():
    cfg = presets.get("tiny-gpt")
    with pytest.raises(ValueError, match=r"convention='flops': unknown; valid: fma, no_fma, xla"):
        count_flops(cfg, convention="flops")
    with pytest.raises(ValueError, match=r"mode='inference': unknown; valid: forward, backward, train"):
        count_flops(cfg, mode="inference")
    with pytest.raises(ValueError, match="causal=True applies to"):
        count_flops(cfg, convention="6nd", causal=True)
    with pytest.raises(ValueError, match="batch_size=0"):
        count_flops(cfg, batch_size=0)
    with pytest.raises(ValueError, match="seq_len=2.5"):
        count_flops(cfg, seq_len=2.5)
    with pytest.raises(ValueError, match="megatron-recompute counts a whole training iteration"):
        count_flops(cfg, convention="megatron-recompute")
    with pytest.raises(ValueError, match="cannot vary"):
        count_flops_many(cfg, seq_len_=np.ones(3))


def test_learned_positions_cap_the_sequence():
    with pytest.raises(ValueError, match=r"seq_len=2048: exceeds the learned position table \(cfg.seq_len=1024\)"):
        count_flops(presets.get("gpt2"), seq_len=2048)
    assert count_flops(presets.get("llama-2-7b"), seq_len=8192).total > 0  # RoPE has no table
