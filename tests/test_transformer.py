"""models.Transformer: every option runs, scan and loop agree, training lowers the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings

from models import Transformer, adamw, init_train_state, make_train_step, presets
from models.transformer import apply_rope, rope_tables
from tests.strategies import PROFILE, configs, examples


@settings(max_examples=examples(10, 30), deadline=None)
@given(configs(max_width=32, max_layers=2))
def test_forward_shape_and_finite(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    t = min(cfg.seq_len, 7)
    logits = jax.jit(lambda m, x: m(x))(model, jnp.zeros((2, t), jnp.int32))
    assert logits.shape == (2, t, cfg.vocab_size)
    assert bool(jnp.all(jnp.isfinite(logits)))


def _loop_params_from_scanned(scanned: Transformer, plain: Transformer) -> Transformer:
    """Copy the stacked weights of a scanned model into a plain one, layer by layer."""
    s_state = nnx.state(scanned, nnx.Param)
    p_state = nnx.state(plain, nnx.Param)
    flat_s = dict(nnx.to_flat_state(s_state))
    updates = {}
    for path, var in nnx.to_flat_state(p_state):
        if path[0] == "layers":
            layer, rest = path[1], path[2:]
            updates[path] = flat_s[("layers",) + rest][...][layer]
        else:
            updates[path] = flat_s[path][...]
    for path, var in nnx.to_flat_state(p_state):
        var[...] = updates[path]
    nnx.update(plain, p_state)
    return plain


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-gemma"])
def test_scan_and_loop_compute_the_same_function(name):
    cfg = presets.get(name)
    scanned = Transformer(cfg, rngs=nnx.Rngs(0), scan_layers=True)
    plain = _loop_params_from_scanned(scanned, Transformer(cfg, rngs=nnx.Rngs(1)))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)
    forward = nnx.jit(lambda m, x: m(x))  # one compiled program each, not op-by-op dispatch
    np.testing.assert_allclose(forward(plain, tokens), forward(scanned, tokens), rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    cfg = presets.get("tiny-llama")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    a = jnp.array([[1, 2, 3, 4, 5, 6]])
    b = a.at[0, 4:].set(jnp.array([9, 10]))
    np.testing.assert_allclose(model(a)[0, :4], model(b)[0, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(model(a)[0, 4:], model(b)[0, 4:])


def test_rope_preserves_norm_and_relative_position():
    cos, sin = rope_tables(8, 4, 10000.0)
    x = jax.random.normal(jax.random.key(0), (1, 8, 1, 4))
    y = apply_rope(x, cos, sin)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    # <R_m q, R_n k> depends on m - n only.
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (4,)), (1, 8, 1, 4))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (4,)), (1, 8, 1, 4))
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]
    np.testing.assert_allclose(rq[5] @ rk[3], rq[4] @ rk[2], rtol=1e-5)


def test_learned_positions_reject_long_input():
    model = Transformer(presets.get("tiny-gpt"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sequence length 17 exceeds seq_len=16"):
        model(jnp.zeros((1, 17), jnp.int32))


def test_relaxed_config_is_rejected_by_the_model():
    with pytest.raises(ValueError, match="integer sizes"):
        Transformer(presets.get("tiny-gpt", d_model=jnp.float32(48.0)), rngs=nnx.Rngs(0))


# Every pair of options in 4 runs (each model with and without tying, and with and without
# scan); HYPOTHESIS_PROFILE=thorough runs all 8 combinations.
_TRAIN_CASES = [(n, t, s) for n in ("tiny-gpt", "tiny-llama") for t in (True, False) for s in (False, True)
                if PROFILE == "thorough" or (n == "tiny-gpt") == (t == s)]


@pytest.mark.parametrize(("name", "tied", "scan"), _TRAIN_CASES)
def test_training_lowers_the_loss(name, tied, scan):
    # Synthetic task: each token is the previous one plus one (mod vocab). A model that learns it
    # predicts perfectly; an untrained one is near log(vocab).
    cfg = presets.get(name, tied_embeddings=tied)
    state = init_train_state(cfg, scan_layers=scan, tx=adamw(1e-2, weight_decay=0.0))
    step = make_train_step(state.graphdef, state.tx)
    start = jax.random.randint(jax.random.key(1), (16, 1), 0, cfg.vocab_size)
    tokens = (start + jnp.arange(17)[None]) % cfg.vocab_size
    params, opt_state, losses = state.params, state.opt_state, []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state, tokens[:, :-1], tokens[:, 1:])
        losses.append(float(loss))
    assert losses[0] > 0.5 * np.log(cfg.vocab_size)
    assert losses[-1] < 0.1 * losses[0], losses
