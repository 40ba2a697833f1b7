"""The architecture options of the public families (models.config's second group of fields):
the Flax model does what each option says, the closed forms count it exactly (parameters, FLOPs
under every convention, the XLA validator), and bad combinations are named."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from models import TransformerConfig, Transformer, abstract_model, presets
from models.transformer import MLP, Attention, Block, OffsetNorm, softcap, window_mask
from planner import count_params
from planner.flops import CONVENTIONS, attention_tiles, count_flops
from planner.memory import kv_cache_bytes
from planner.validation import architecture_grid, validate
from tests.strategies import arch_configs

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=40, seq_len=16, position="rope")


@nnx.jit
def run(model, tokens):
    return model(tokens)


def flax_count(cfg, scan_layers=False):
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract_model(cfg, scan_layers=scan_layers), nnx.Param)))


# ----------------------------------------------------------------------------- counts
@settings(max_examples=25, deadline=None)
@given(arch_configs())
def test_param_count_equals_flax_model(cfg):
    pc = count_params(cfg)
    assert pc.total == flax_count(cfg) == sum(pc.components.values())
    assert all(type(v) is int for v in pc.components.values())


@settings(max_examples=15, deadline=None)
@given(arch_configs())
def test_scanned_model_has_the_same_parameters(cfg):
    assert flax_count(cfg, scan_layers=True) == count_params(cfg).total


def _xla_exact(c):
    # Sizes >= 2 (head_dim and rotary dims >= 4): a size-1 axis lets jnp fold or reshape some
    # ops (documented in planner.flops._count_xla).
    return c.resolved_head_dim >= 4 and c.d_model >= 2 and c.d_ff >= 2 and (c.position != "rope" or c.rotary_dim >= 4)


def _xla(cfg, b, t, mode):
    r = validate(cfg, batch_size=b, seq_len=t, mode=mode)
    return r


@settings(max_examples=6, deadline=None)
@given(arch_configs(max_width=32, max_layers=2).filter(
    _xla_exact), st.integers(1, 2), st.integers(2, 10))
def test_random_architectures_match_xla_forward(cfg, b, t):
    cfg = cfg.replace(seq_len=max(cfg.seq_len, t))
    r = _xla(cfg, b, t, "forward")
    assert r.dots_exact
    assert r.xla_flops == pytest.approx(float(r.predicted_flops), rel=1e-6, abs=1)
    assert r.xla_transcendentals == pytest.approx(float(r.predicted_transcendentals), rel=1e-6, abs=1)


@settings(max_examples=3, deadline=None)
@given(arch_configs(max_width=32, max_layers=2).filter(
    _xla_exact), st.integers(2, 8))
def test_random_architectures_match_xla_train(cfg, t):
    cfg = cfg.replace(seq_len=max(cfg.seq_len, t))
    r = _xla(cfg, 2, t, "train")
    assert r.dots_exact
    assert r.xla_flops == pytest.approx(float(r.predicted_flops), rel=1e-6, abs=1)
    assert r.xla_transcendentals == pytest.approx(float(r.predicted_transcendentals), rel=1e-6, abs=1)


GRID = architecture_grid()


@pytest.mark.parametrize(("mode", "scan"), [("forward", False), ("train", True)], ids=["forward", "train-scan"])
@pytest.mark.parametrize(("label", "cfg", "b", "t"), GRID, ids=[g[0] for g in GRID])
def test_family_grid_passes_the_validator(label, cfg, b, t, mode, scan):
    r = validate(cfg, batch_size=b, seq_len=t, mode=mode, scan_layers=scan)
    assert r.ok and r.dots_exact
    for name, row in r.components.items():
        assert row.hlo_dots == row.predicted_dots, name
    assert abs(r.rel_error) < 1e-6  # exact up to XLA's float32 rounding


def test_grid_covers_every_option():
    cfgs = [c for _, c, _, _ in GRID]
    seen = lambda f: {getattr(c, f) for c in cfgs}  # noqa: E731
    assert seen("norm_placement") == {"pre", "sandwich", "post"}
    assert seen("qk_norm") == {None, "head", "full"}
    assert {"gelu", "swiglu", "geglu", "gelu_exact", "relu2"} <= seen("mlp")
    for flag in ("parallel_residual", "shared_norm", "norm_offset", "head_bias"):
        assert True in seen(flag), flag
    assert seen("rotary_fraction") >= {1.0, 0.5, 0.25}
    assert {None, 2, 3} <= seen("global_every") and len(seen("sliding_window")) > 2
    assert any(c.attn_softcap for c in cfgs) and any(c.final_softcap for c in cfgs)
    assert any(c.resolved_norm_bias and not c.bias for c in cfgs)
    assert any(c.resolved_mlp_bias and not c.bias for c in cfgs)


@pytest.mark.parametrize("conv", sorted(set(CONVENTIONS) - {"megatron-recompute"}))
def test_every_convention_counts_every_family(conv):
    for name in ("gpt-j-6b", "pythia-160m", "gemma-2-2b", "gemma-3-1b", "olmo-2-7b", "falcon-7b", "minitron-4b"):
        cfg = presets.get(name)
        f, bw, tr = (count_flops(cfg, batch_size=2, seq_len=512, mode=m, convention=conv)
                     for m in ("forward", "backward", "train"))
        assert tr.total == f.total + bw.total + tr.components.get("optimizer", 0)
        assert f.total > 0


# ----------------------------------------------------------------------------- sliding windows
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.sampled_from([None, 1, 2, 3, 5, 8, 40]))
def test_attention_tiles_equal_brute_force(t, k, w):
    n = -(-t // k)
    i, j = np.arange(n * k)[:, None], np.arange(n * k)[None, :]
    visible = (j <= i) & (i < t) & (j < t) & ((i - j < w) if w is not None else True)
    tiles = visible.reshape(n, k, n, k).any(axis=(1, 3))
    assert attention_tiles(t, k, w) == int(tiles.sum()) * k * k


def test_block_skip_counts():
    cfg = presets.get("gemma-2-2b")
    t = 8192
    full = count_flops(cfg, seq_len=t, convention="fma")
    band = count_flops(cfg, seq_len=t, convention="fma", block_skip=1)
    # 13 global layers see t (t + 1) / 2 keys, 13 windowed layers the 4096-band.
    rows = 13 * t * (t + 1) // 2 + 13 * (4096 * 4097 // 2 + (t - 4096) * 4096)
    assert band.components["attn_scores"] * 26 * t * t == full.components["attn_scores"] * rows
    for name in set(full.components) - {"attn_scores", "attn_values"}:
        assert band.components[name] == full.components[name]
    tiled = count_flops(cfg, seq_len=t, convention="fma", block_skip=128).components["attn_scores"]
    assert band.components["attn_scores"] < tiled < full.components["attn_scores"]
    # Without a window, the exact band is the causal triangle with its diagonal.
    llama = presets.get("llama-2-7b")
    c = count_flops(llama, seq_len=1024, convention="fma", block_skip=1).components["attn_values"]
    assert c == count_flops(llama, seq_len=1024, convention="fma").components["attn_values"] * 1025 // 2048
    with pytest.raises(ValueError, match="'fma' convention only"):
        count_flops(cfg, seq_len=t, convention="xla", block_skip=128)
    with pytest.raises(ValueError, match="drop causal=True"):
        count_flops(cfg, seq_len=t, convention="fma", causal=True, block_skip=128)
    with pytest.raises(ValueError, match="block_skip=0"):
        count_flops(cfg, seq_len=t, convention="fma", block_skip=0)


def test_window_hides_old_tokens_and_global_layers_see_all():
    cfg = TransformerConfig(**TINY, n_kv_heads=2, sliding_window=3, norm="rmsnorm")
    cfg = cfg.replace(n_layers=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(1), (1, 10), 0, 61)
    y = x.at[0, 2].set((x[0, 2] + 1) % 61)  # change token 2
    a, b = run(model, x), run(model, y)
    # queries 2..4 see token 2; 5 and later do not (window 3, one layer)
    assert not np.allclose(a[0, 4], b[0, 4]) and np.allclose(a[0, 5:], b[0, 5:], atol=1e-6)
    # a window >= t (what a global layer gets) is the causal mask
    np.testing.assert_array_equal(window_mask(10, 10), np.tril(np.ones((10, 10), bool)))
    assert cfg.replace(n_layers=6, global_every=3).layer_windows() == (3, 3, None, 3, 3, None)
    m = window_mask(5, 2)
    assert m.sum() == 5 + 4 and bool(m[4, 3]) and not bool(m[4, 2])


def test_kv_cache_keeps_the_window_only():
    cfg = presets.get("gemma-2-2b")  # 13 of 26 layers windowed at 4096
    per_token_layer = 2 * 4 * 256 * 2  # k and v, 4 kv heads of 256, bf16
    assert kv_cache_bytes(cfg, seq_len=8192) == per_token_layer * (13 * 8192 + 13 * 4096)
    assert kv_cache_bytes(cfg, seq_len=1000) == kv_cache_bytes(cfg.replace(sliding_window=None,
                                                                          global_every=None), seq_len=1000)


# ----------------------------------------------------------------------------- the other options
def test_softcap_bounds_scores_and_logits():
    cfg = TransformerConfig(**TINY, final_softcap=0.5, attn_softcap=1.0)
    out = run(Transformer(cfg, rngs=nnx.Rngs(0)), jnp.arange(12)[None] % 61)
    assert float(jnp.max(jnp.abs(out))) < 0.5
    x = jnp.linspace(-100, 100, 11)
    np.testing.assert_allclose(softcap(x, 30.0), 30 * np.tanh(np.asarray(x) / 30), rtol=1e-6)


def test_offset_norm_is_one_plus_scale():
    cfg = TransformerConfig(**TINY, norm="rmsnorm", norm_offset=True)
    norm = OffsetNorm(cfg, 32, rngs=nnx.Rngs(0), dtype=jnp.float32)
    norm.scale[...] = jnp.full((32,), 0.5)
    plain = nnx.RMSNorm(32, epsilon=cfg.norm_eps, rngs=nnx.Rngs(0))
    plain.scale[...] = jnp.full((32,), 1.5)
    x = jax.random.normal(jax.random.key(0), (3, 32))
    np.testing.assert_allclose(norm(x), plain(x), rtol=1e-6)


def test_partial_rotary_leaves_the_rest_of_each_head():
    cfg = TransformerConfig(**TINY, rotary_fraction=0.25)  # head_dim 8, 2 dims rotate
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    from models.transformer import rope_tables
    x = jax.random.normal(jax.random.key(0), (1, 5, 4, 8))
    y = attn._rope(x, rope_tables(5, 2, 10000.0))
    np.testing.assert_array_equal(y[..., 2:], x[..., 2:])
    assert not np.allclose(y[:, 1:, :, :2], x[:, 1:, :, :2])


def test_activations():
    cfg = TransformerConfig(**TINY, mlp="relu2")
    mlp = MLP(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 3, 32))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(mlp, x), mlp.down(jnp.maximum(mlp.up(x), 0) ** 2),
                               rtol=1e-5, atol=1e-6)
    cfg = TransformerConfig(**TINY, mlp="gelu_exact")
    mlp = MLP(cfg, rngs=nnx.Rngs(0))
    up = np.asarray(mlp.up(x), np.float64)
    erf = np.vectorize(math.erf)
    exact = 0.5 * up * (1 + erf(up / math.sqrt(2)))  # Hendrycks & Gimpel 2016, Eq. 1
    np.testing.assert_allclose(mlp(x), mlp.down(jnp.asarray(exact, jnp.float32)), rtol=1e-4, atol=1e-5)
    tanh = mlp.down(jax.nn.gelu(mlp.up(x), approximate=True))
    assert not np.allclose(mlp(x), tanh, rtol=0, atol=1e-7)


def test_parallel_and_post_blocks_compute_what_they_say():
    cfg = TransformerConfig(**(TINY | dict(parallel_residual=True, shared_norm=True, n_layers=1)))
    block = Block(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 6, 32))
    assert block.mlp_norm is None
    h = block.attn_norm(x)
    np.testing.assert_allclose(block(x, None), x + block.attn(h, None) + block.mlp(h), rtol=1e-5, atol=1e-5)
    cfg = TransformerConfig(**(TINY | dict(norm_placement="post", norm="rmsnorm", n_layers=1, position="learned")))
    block = Block(cfg, rngs=nnx.Rngs(0))
    assert block.attn_norm is None and block.mlp_norm is None
    y = x + block.attn_post_norm(block.attn(x, None))
    np.testing.assert_allclose(block(x, None), y + block.mlp_post_norm(block.mlp(y)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kw", "needle"), [
    (dict(shared_norm=True), "only with parallel_residual=True"),
    (dict(parallel_residual=True, norm_placement="post"), "the parallel block is pre-norm"),
    (dict(global_every=2), "only with a sliding_window"),
    (dict(head_bias=True), "the tied head is the embedding table"),
    (dict(rotary_fraction=0.1), "rotates int(8 * 0.1) = 0 dims; need a positive even number"),
    (dict(rotary_fraction=1.5), "must be a number in (0, 1]"),
    (dict(position="learned", rotary_fraction=0.5), "only with position='rope'"),
    (dict(norm_placement="postnorm"), "norm_placement='postnorm': unknown option"),
    (dict(qk_norm="layer"), "qk_norm='layer': unknown option"),
    (dict(sliding_window=0), "sliding_window=0"),
    (dict(attn_softcap=-1.0), "attn_softcap=-1.0: must be a positive finite number"),
    (dict(mlp="relu"), "mlp='relu': unknown option"),
])
def test_bad_options_are_named(kw, needle):
    with pytest.raises(ValueError) as err:
        TransformerConfig(**(TINY | kw))
    assert needle in str(err.value)
