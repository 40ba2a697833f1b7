"""count_params: exact on ints, equal to the Flax model for random configs, differentiable on jnp."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, settings

from models import TransformerConfig, abstract_model, presets
from planner import PARAM_COMPONENTS, count_params
from tests.strategies import configs, examples


def flax_param_count(cfg, scan_layers=False):
    model = abstract_model(cfg, scan_layers=scan_layers)
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@settings(max_examples=examples(60, 220), deadline=None)
@given(configs())
def test_count_equals_flax_model(cfg):
    pc = count_params(cfg)
    assert pc.total == flax_param_count(cfg)
    assert pc.total == sum(pc.components.values())
    assert pc.non_embedding == pc.total - pc.embedding
    assert tuple(pc.components) == PARAM_COMPONENTS
    assert all(type(v) is int for v in pc.components.values())


@settings(max_examples=examples(10, 25), deadline=None)
@given(configs())
def test_scanned_equals_plain(cfg):
    assert flax_param_count(cfg, scan_layers=True) == count_params(cfg).total


@settings(max_examples=200, deadline=None)
@given(configs())
def test_tying_saves_exactly_vocab_times_d_model(cfg):
    tied = count_params(dataclasses.replace(cfg, tied_embeddings=True))
    untied = count_params(dataclasses.replace(cfg, tied_embeddings=False))
    assert tied.total == untied.total - cfg.vocab_size * cfg.d_model
    assert tied.non_embedding == untied.non_embedding


def test_embedding_split_gpt2():
    # GPT-2 small: wte 50257*768 + wpe 1024*768 are the embedding parameters (tied head is free).
    pc = count_params(presets.get("gpt2"))
    assert pc.embedding == 50257 * 768 + 1024 * 768
    assert pc.components["head"] == 0


def test_exact_integers_at_huge_sizes():
    cfg = TransformerConfig(vocab_size=10**6, d_model=2**20, n_layers=1000, n_heads=2**10,
                            d_ff=2**22, seq_len=10**6, tied_embeddings=False)
    pc = count_params(cfg)
    assert isinstance(pc.total, int) and pc.total > 2**53  # beyond float64's exact range
    d = 2**20
    per_layer = 2 * 2 * d + 4 * (d * d + d) + (d * 2**22 + 2**22) + (2**22 * d + d)
    assert pc.total == 2 * 10**6 * d + 10**6 * d + 1000 * per_layer + 2 * d


def _relaxed_total(x, template):
    d_model, d_ff, n_layers = x
    cfg = dataclasses.replace(template, d_model=d_model, d_ff=d_ff, n_layers=n_layers)
    return count_params(cfg).total


@settings(max_examples=30, deadline=None)
@given(configs())
def test_jnp_path_equals_int_path(cfg):
    x = jnp.array([cfg.d_model, cfg.d_ff, cfg.n_layers], jnp.float64 if jax.config.x64_enabled else jnp.float32)
    relaxed = jax.jit(_relaxed_total, static_argnums=1)(x, cfg)
    exact = count_params(cfg).total
    np.testing.assert_allclose(float(relaxed), exact, rtol=1e-6)


def test_grad_matches_finite_differences():
    # Central differences on the exact integer path: the count is quadratic in each size, so
    # (f(x+1) - f(x-1)) / 2 is its exact derivative; jax.grad of the float32 path must match it.
    cfg = presets.get("gpt2", head_dim=64)  # head_dim fixed, so q/k/v widths follow n_heads only
    x = jnp.array([768.0, 3072.0, 12.0])
    g = jax.jit(jax.grad(lambda x: _relaxed_total(x, cfg)))(x)
    for i, field in enumerate(["d_model", "d_ff", "n_layers"]):
        v = getattr(cfg, field)
        up = count_params(cfg.replace(**{field: v + 1})).total
        down = count_params(cfg.replace(**{field: v - 1})).total
        np.testing.assert_allclose(float(g[i]), (up - down) / 2, rtol=1e-6)


def test_vmap_over_shapes():
    cfg = presets.get("tiny-llama")
    xs = jnp.array([[64.0, 96.0, 2.0], [128.0, 256.0, 4.0], [256.0, 688.0, 8.0]])
    out = jax.jit(jax.vmap(lambda x: _relaxed_total(x, cfg)))(xs)
    loop = [count_params(cfg.replace(d_model=int(a), d_ff=int(b), n_layers=int(c))).total for a, b, c in xs.tolist()]
    np.testing.assert_allclose(np.asarray(out), loop, rtol=1e-6)
