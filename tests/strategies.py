"""Hypothesis strategies shared by the tests: random valid TransformerConfigs over every option."""

import os

from hypothesis import strategies as st

from models import TransformerConfig


@st.composite
def configs(draw, *, max_width: int = 64, max_layers: int = 3) -> TransformerConfig:
    """A random valid config: tiny and odd sizes, every option, GQA and explicit head_dim."""
    position = draw(st.sampled_from(["learned", "rope"]))
    n_kv_heads = draw(st.integers(1, 4))
    n_heads = n_kv_heads * draw(st.integers(1, 3))
    explicit_head_dim = draw(st.booleans())
    if explicit_head_dim:
        head_dim = draw(st.integers(1, 16))
        if position == "rope":
            head_dim = 2 * ((head_dim + 1) // 2)
        d_model = draw(st.integers(1, max_width))
    else:
        head_dim = None
        per_head = draw(st.integers(1, max(1, max_width // n_heads)))
        if position == "rope":
            per_head = 2 * ((per_head + 1) // 2)
        d_model = n_heads * per_head
    return TransformerConfig(
        vocab_size=draw(st.integers(2, 211)),
        d_model=d_model,
        n_layers=draw(st.integers(1, max_layers)),
        n_heads=n_heads,
        d_ff=draw(st.integers(1, 2 * max_width)),
        seq_len=draw(st.integers(1, 64)),
        n_kv_heads=draw(st.sampled_from([None, n_kv_heads])) if n_kv_heads == n_heads else n_kv_heads,
        head_dim=head_dim,
        tied_embeddings=draw(st.booleans()),
        mlp=draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        position=position,
        bias=draw(st.booleans()),
        qkv_bias=draw(st.sampled_from([None, True, False])),
        embed_scale=draw(st.booleans()),
    )


#: The Hypothesis profile (tests/conftest.py registers both): "quick" by default, for the README's
#: test command; HYPOTHESIS_PROFILE=thorough runs every property test with its full example count.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "quick")


def examples(quick: int, thorough: int) -> int:
    """max_examples for a property test that builds or compiles a model per example: ``quick``
    under the default profile, ``thorough`` under HYPOTHESIS_PROFILE=thorough."""
    return thorough if PROFILE == "thorough" else quick
@st.composite
def arch_configs(draw, *, max_width: int = 48, max_layers: int = 3) -> TransformerConfig:
    """A random valid config with the architecture options of the public families drawn too
    (norm placement, (1 + scale) norms, separate biases, QK-norm, parallel residual, partial
    rotary, sliding windows, soft-caps, every MLP)."""
    cfg = draw(configs(max_width=max_width, max_layers=max_layers))
    placement = draw(st.sampled_from(["pre", "sandwich", "post"]))
    parallel = placement == "pre" and draw(st.booleans())
    changes = dict(
        mlp=draw(st.sampled_from(["gelu", "swiglu", "geglu", "gelu_exact", "relu2"])),
        norm_placement=placement,
        norm_offset=draw(st.booleans()),
        norm_bias=draw(st.sampled_from([None, True, False])),
        mlp_bias=draw(st.sampled_from([None, True, False])),
        qk_norm=draw(st.sampled_from([None, "head", "full"])),
        parallel_residual=parallel,
        shared_norm=parallel and draw(st.booleans()),
        attn_softcap=draw(st.sampled_from([None, 2.5])),
        final_softcap=draw(st.sampled_from([None, 7.0])),
    )
    if not cfg.tied_embeddings:
        changes["head_bias"] = draw(st.booleans())
    if cfg.position == "rope" and cfg.resolved_head_dim % 4 == 0 and draw(st.booleans()):
        changes["rotary_fraction"] = 0.5
    if draw(st.booleans()):
        changes["sliding_window"] = draw(st.integers(1, 8))
        changes["global_every"] = draw(st.sampled_from([None, 2, 3]))
    return cfg.replace(**changes)
