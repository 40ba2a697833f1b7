"""TransformerConfig: valid configs build, every invalid one fails early with a clear ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import TransformerConfig

BASE = dict(vocab_size=97, d_model=48, n_layers=2, n_heads=4, d_ff=96, seq_len=16)


def make(**changes):
    return TransformerConfig(**(BASE | changes))


def test_defaults_resolve():
    cfg = make()
    assert (cfg.resolved_n_kv_heads, cfg.resolved_head_dim, cfg.resolved_qkv_bias) == (4, 12, True)
    assert make(bias=False).resolved_qkv_bias is False
    assert make(bias=False, qkv_bias=True).resolved_qkv_bias is True
    assert make(n_kv_heads=2, head_dim=10).resolved_head_dim == 10


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_size(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value}.*positive"):
        make(**{field: value})


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len",
                                   "n_kv_heads", "head_dim"])
@pytest.mark.parametrize("value", [48.0, "48", True, np.int64(4), [4]])
def test_non_integer_or_bool_size(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.*must be a positive Python int"):
        make(**{field: value})


def test_required_size_none():
    with pytest.raises(ValueError, match="d_model=None"):
        make(d_model=None)


def test_kv_heads_must_divide_heads():
    with pytest.raises(ValueError, match=r"n_kv_heads=3: must divide n_heads=4"):
        make(n_kv_heads=3)


def test_d_model_divisible_by_heads_without_head_dim():
    with pytest.raises(ValueError, match=r"d_model=50: must be divisible by n_heads=4.*head_dim"):
        make(d_model=50)
    assert make(d_model=50, head_dim=8).resolved_head_dim == 8  # explicit head_dim lifts the rule


def test_odd_head_dim_with_rope():
    with pytest.raises(ValueError, match=r"head_dim=7: must be even with position='rope'"):
        make(position="rope", head_dim=7)
    with pytest.raises(ValueError, match=r"head_dim=5: must be even"):
        make(position="rope", d_model=20)  # 20 / 4 = 5
    assert make(position="learned", head_dim=7).head_dim == 7


@pytest.mark.parametrize(("field", "value", "valid"), [
    ("mlp", "relu", "'gelu', 'swiglu', 'geglu'"),
    ("norm", "batchnorm", "'layernorm', 'rmsnorm'"),
    ("position", "alibi", "'learned', 'rope'"),
    ("mlp", None, "'gelu'"),
])
def test_unknown_option(field, value, valid):
    with pytest.raises(ValueError, match=rf"{field}={value!r}: unknown option; valid: {valid}"):
        make(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("tied_embeddings", 1), ("bias", "yes"),
                                              ("qkv_bias", 0), ("embed_scale", None)])
def test_option_flags_must_be_bool(field, value):
    with pytest.raises(ValueError, match=rf"{field}="):
        make(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("rope_theta", 0.0), ("norm_eps", -1e-5),
                                              ("rope_theta", float("nan")), ("norm_eps", "1e-5")])
def test_positive_floats(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.*positive finite"):
        make(**{field: value})


def test_replace_validates_and_rejects_unknown_fields():
    assert make().replace(n_layers=5).n_layers == 5
    with pytest.raises(ValueError, match="unknown config field"):
        make().replace(n_layer=5)
    with pytest.raises(ValueError, match="n_layers=0"):
        make().replace(n_layers=0)


def test_relaxed_sizes_accept_arrays_and_tracers():
    cfg = make(d_model=jnp.float32(50.0))  # 50 / 4 is no int, but a relaxed shape has no such rule
    assert cfg.relaxed and float(cfg.resolved_head_dim) == 12.5

    @jax.jit
    def width(d):
        return make(d_model=d, d_ff=4 * d).resolved_head_dim

    assert float(width(jnp.float32(64.0))) == 16.0
    assert not make().relaxed
