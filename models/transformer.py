"""A Flax NNX decoder-only transformer that implements every `TransformerConfig` option.

Pre-norm blocks (GPT-2, Llama, Mistral, Qwen and Gemma all are):

    x = embed(tokens) [* sqrt(d_model)] [+ positions]
    for each layer:  x = x + attention(norm(x));  x = x + mlp(norm(x))
    logits = head(norm(x))        # head = embed.attend when tied

The output head never has a bias (none of the public models has one). Layers are a Python list,
or with ``scan_layers=True`` one stacked block run under ``nnx.scan`` (one compiled body).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from models.config import TransformerConfig
from models.flash import flash_attention
from models.layout import Layout


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, each (seq_len, head_dim // 2).

    RoFormer (Su et al. 2021), in the "rotate half" layout of Llama and GPT-NeoX:
    frequency i is theta^(-2i / head_dim).
    """
    # The frequencies depend on static numbers only: a NumPy constant, no work in the program.
    inv_freq = np.asarray(theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim), np.float32)
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x of shape (batch, seq, ..., head_dim) by the angles of `rope_tables`."""
    half = x.shape[-1] // 2
    shape = (x.shape[1],) + (1,) * (x.ndim - 3) + (half,)
    cos, sin = cos.reshape(shape).astype(x.dtype), sin.reshape(shape).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


scope = jax.named_scope  # tags ops with a FLOP component name; costs nothing


def _norm(cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
    if cfg.norm == "layernorm":
        return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, use_bias=cfg.bias, dtype=dtype, rngs=rngs)
    return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head attention; grouped-query when n_kv_heads < n_heads."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 layout: Layout | None = None):
        h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
        layout = Layout() if layout is None else layout
        self.kind, self.remat = layout.attention, layout.remat
        qkv_bias = cfg.resolved_qkv_bias
        lin = lambda i, o, b: nnx.Linear(i, o, use_bias=b, dtype=dtype, rngs=rngs)  # noqa: E731
        self.q = lin(cfg.d_model, h * hd, qkv_bias)
        self.k = lin(cfg.d_model, kv * hd, qkv_bias)
        self.v = lin(cfg.d_model, kv * hd, qkv_bias)
        self.o = lin(h * hd, cfg.d_model, cfg.bias)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        b, t, _ = x.shape
        kv, hd = self.n_kv_heads, self.head_dim
        groups = self.n_heads // kv
        # Named scopes tag every op (and its transpose) with the FLOP component it belongs to,
        # so the XLA validation can attribute HLO instructions (planner.flops.FLOP_COMPONENTS).
        with scope("q"):
            q = self.q(x).reshape(b, t, kv, groups, hd)
        with scope("k"):
            k = self.k(x).reshape(b, t, kv, hd)
        with scope("v"):
            v = self.v(x).reshape(b, t, kv, hd)
        if rope is not None:
            with scope("rope"):
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kind == "flash":
            with scope("flash_attention"):
                out = flash_attention(q, k, v).reshape(b, t, self.n_heads * hd)
        elif self.remat == "selective":
            # Korthikanti et al. 2022, Sec. 5 ("selective activation recomputation"): the core
            # attention is checkpointed on its own, keeping only q, k, v (as Megatron-LM does).
            out = jax.checkpoint(_core_attention, policy=jax.checkpoint_policies.nothing_saveable)(q, k, v)
        else:
            out = _core_attention(q, k, v)
        with scope("attn_out"):
            return self.o(out)


def _core_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax(q k^T / sqrt(hd)) v with the (t x t) scores materialised (the dot path)."""
    b, t, kv, g, hd = q.shape
    with scope("attn_scores"):
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * (1.0 / math.sqrt(hd))
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    with scope("softmax"):
        probs = jax.nn.softmax(scores, axis=-1)
    with scope("attn_values"):
        return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, kv * g * hd)


#: Layout.remat -> the jax.checkpoint policy each block is wrapped in ("selective" checkpoints
#: the core attention inside the block instead; "none" wraps nothing).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class MLP(nnx.Module):
    """GELU MLP (up, down) or gated GLU MLP (gate, up, down): SwiGLU / GeGLU (Shazeer 2020)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kind = cfg.mlp
        lin = lambda i, o: nnx.Linear(i, o, use_bias=cfg.bias, dtype=dtype, rngs=rngs)  # noqa: E731
        self.up = lin(cfg.d_model, cfg.d_ff)
        self.gate = lin(cfg.d_model, cfg.d_ff) if cfg.gated else None
        self.down = lin(cfg.d_ff, cfg.d_model)

    def __call__(self, x: jax.Array) -> jax.Array:
        with scope("mlp_in"):
            up = self.up(x)
        if self.gate is not None:
            with scope("mlp_gate"):
                gate = self.gate(x)
        with scope("activation"):
            if self.kind == "gelu":
                h = jax.nn.gelu(up, approximate=True)
            elif self.kind == "swiglu":
                h = jax.nn.silu(gate) * up
            else:  # geglu
                h = jax.nn.gelu(gate, approximate=True) * up
        with scope("mlp_out"):
            return self.down(h)


class Block(nnx.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 layout: Layout | None = None):
        self.attn_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, layout=layout)
        self.mlp_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        with scope("norms"):
            h = self.attn_norm(x)
        h = self.attn(h, rope)
        with scope("residual"):
            x = x + h
        with scope("norms"):
            h = self.mlp_norm(x)
        h = self.mlp(h)
        with scope("residual"):
            return x + h


def make_layer(cfg: TransformerConfig, index: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               layout: Layout | None = None) -> Block:
    """Layer ``index`` of the unrolled model (`Transformer` builds each layer with it, and
    `models.abstract_model` builds the layers of an abstract model one at a time with it)."""
    del index  # every layer is alike; a per-layer option would read it here
    return Block(cfg, rngs=rngs, dtype=dtype, layout=layout)


class Transformer(nnx.Module):
    """Decoder-only language model: tokens (batch, seq) int32 -> logits (batch, seq, vocab).

    Args:
      cfg: the model description (sizes must be concrete ints here).
      rngs: parameter initialisation keys.
      scan_layers: stack the blocks and run them under ``nnx.scan`` (one compiled layer body)
        instead of a Python loop. Same parameters, same outputs.
      dtype: computation dtype (parameters are float32).
      layout: a `models.Layout`; the model reads ``attention`` ("flash": `models.flash`) and
        ``remat`` (each block under ``jax.checkpoint`` with `REMAT_POLICIES`, or for
        "selective" the core attention alone). None = ``Layout()`` (dot attention, no remat).

    Example:
      >>> from models import presets
      >>> model = Transformer(presets.get("tiny-gpt"), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 8), jnp.int32)).shape
      (2, 8, 97)
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, scan_layers: bool = False,
                 dtype=jnp.float32, layout: Layout | None = None):
        if cfg.relaxed:
            raise ValueError("Transformer needs integer sizes; got a relaxed (array) config")
        if layout is not None and not isinstance(layout, Layout):
            raise ValueError(f"layout={layout!r}: must be a models.Layout (e.g. Layout.parse('remat=full'))")
        layout = Layout() if layout is None else layout
        self.cfg = cfg
        self.remat = layout.remat
        self.scan_layers = scan_layers
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        self.pos_embed = (
            nnx.Embed(cfg.seq_len, cfg.d_model, dtype=dtype, rngs=rngs)
            if cfg.position == "learned" else None
        )
        if scan_layers:
            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def stack(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs=rngs, dtype=dtype, layout=layout)

            self.layers = stack(rngs)
        else:
            self.layers = nnx.List([make_layer(cfg, i, rngs=rngs, dtype=dtype, layout=layout)
                                    for i in range(cfg.n_layers)])
        self.final_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.head = (
            None if cfg.tied_embeddings
            else nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=dtype, rngs=rngs)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.cfg
        t = tokens.shape[1]
        if self.pos_embed is not None and t > cfg.seq_len:
            raise ValueError(
                f"sequence length {t} exceeds seq_len={cfg.seq_len}, the size of the learned "
                "position table; pass at most seq_len tokens"
            )
        with scope("embedding"):
            x = self.embed(tokens)
            if cfg.embed_scale:
                x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
            if self.pos_embed is not None:
                x = x + self.pos_embed.embedding[...][:t].astype(x.dtype)
        rope = None
        if cfg.position == "rope":
            # Constants of the step: stop_gradient keeps the scanned backward from summing
            # cotangents for them across layers (work the unrolled program never does).
            with scope("rope"):
                rope = jax.lax.stop_gradient(rope_tables(t, cfg.resolved_head_dim, cfg.rope_theta))

        def apply(block, x, rope):
            return block(x, rope)

        if self.remat in REMAT_POLICIES:
            apply = nnx.remat(apply, policy=REMAT_POLICIES[self.remat])
        if self.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
            def run(x, block, rope):
                return apply(block, x, rope)

            x = run(x, self.layers, rope)
        else:
            for block in self.layers:
                x = apply(block, x, rope)

        with scope("norms"):
            x = self.final_norm(x)
        with scope("logits"):
            return self.embed.attend(x) if self.head is None else self.head(x)
