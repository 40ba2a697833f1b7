"""A Flax NNX decoder-only transformer that implements every `TransformerConfig` option.

Pre-norm blocks (GPT-2, Llama, Mistral, Qwen and Gemma all are):

    x = embed(tokens) [* sqrt(d_model)] [+ positions]
    for each layer:  x = x + attention(norm(x));  x = x + mlp(norm(x))
    logits = head(norm(x))        # head = embed.attend when tied

The output head never has a bias (none of the public models has one). Layers are a Python list,
or with ``scan_layers=True`` one stacked block run under ``nnx.scan`` (one compiled body).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from models.config import TransformerConfig
from models.sharding import constrain


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


def axes(*names: str | None) -> dict:
    """Parameter metadata naming its logical axes (NNX's sharding metadata, not applied at
    creation: `models.sharding` maps the names to mesh axes for a layout)."""
    return {"out_sharding": names, "eager_sharding": False}


def _linear(n_in: int, n_out: int, in_axis: str, out_axis: str, *, bias: bool, dtype, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, rngs=rngs,
                      kernel_metadata=axes(in_axis, out_axis), bias_metadata=axes(out_axis))


def _norm(cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
    meta = axes("norm")
    if cfg.norm == "layernorm":
        return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, use_bias=cfg.bias, dtype=dtype, rngs=rngs,
                             scale_metadata=meta, bias_metadata=meta)
    return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs, scale_metadata=meta)


class Attention(nnx.Module):
    """Causal multi-head attention; grouped-query when n_kv_heads < n_heads."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
        qkv_bias = cfg.resolved_qkv_bias
        lin = functools.partial(_linear, dtype=dtype, rngs=rngs)
        self.q = lin(cfg.d_model, h * hd, "embed", "heads", bias=qkv_bias)
        self.k = lin(cfg.d_model, kv * hd, "embed", "kv_heads", bias=qkv_bias)
        self.v = lin(cfg.d_model, kv * hd, "embed", "kv_heads", bias=qkv_bias)
        self.o = lin(h * hd, cfg.d_model, "heads", "embed", bias=cfg.bias)

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
        # On a mesh (models.sharding): queries keep their sequence shard, keys and values are
        # gathered over the context-parallel axis. Outside a mesh these are no-ops.
        q, k, v = constrain(q, "query"), constrain(k, "kv"), constrain(v, "kv")
        with scope("attn_scores"):
            scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * (1.0 / math.sqrt(hd))
            causal = jnp.tril(jnp.ones((t, t), dtype=bool))
            scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        with scope("softmax"):
            probs = jax.nn.softmax(scores, axis=-1)
        with scope("attn_values"):
            out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, self.n_heads * hd)
        with scope("attn_out"):
            return self.o(out)


class MLP(nnx.Module):
    """GELU MLP (up, down) or gated GLU MLP (gate, up, down): SwiGLU / GeGLU (Shazeer 2020)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kind = cfg.mlp
        lin = functools.partial(_linear, bias=cfg.bias, dtype=dtype, rngs=rngs)
        self.up = lin(cfg.d_model, cfg.d_ff, "embed", "mlp")
        self.gate = lin(cfg.d_model, cfg.d_ff, "embed", "mlp") if cfg.gated else None
        self.down = lin(cfg.d_ff, cfg.d_model, "mlp", "embed")

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

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.attn_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype)
        self.mlp_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        with scope("norms"):
            h = constrain(self.attn_norm(x), "block_input")
        h = self.attn(h, rope)
        with scope("residual"):
            x = constrain(x + h, "residual")
        with scope("norms"):
            h = constrain(self.mlp_norm(x), "block_input")
        h = self.mlp(h)
        with scope("residual"):
            return constrain(x + h, "residual")


class Transformer(nnx.Module):
    """Decoder-only language model: tokens (batch, seq) int32 -> logits (batch, seq, vocab).

    Args:
      cfg: the model description (sizes must be concrete ints here).
      rngs: parameter initialisation keys.
      scan_layers: stack the blocks and run them under ``nnx.scan`` (one compiled layer body)
        instead of a Python loop. Same parameters, same outputs.
      dtype: computation dtype (parameters are float32).

    Example:
      >>> from models import presets
      >>> model = Transformer(presets.get("tiny-gpt"), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 8), jnp.int32)).shape
      (2, 8, 97)
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, scan_layers: bool = False,
                 dtype=jnp.float32):
        if cfg.relaxed:
            raise ValueError("Transformer needs integer sizes; got a relaxed (array) config")
        self.cfg = cfg
        self.scan_layers = scan_layers
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs,
                               embedding_metadata=axes("vocab", "embed"))
        self.pos_embed = (
            nnx.Embed(cfg.seq_len, cfg.d_model, dtype=dtype, rngs=rngs,
                      embedding_metadata=axes("position", "embed"))
            if cfg.position == "learned" else None
        )
        if scan_layers:
            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def stack(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs=rngs, dtype=dtype)

            self.layers = stack(rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.n_layers)])
        self.final_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.head = (
            None if cfg.tied_embeddings
            else _linear(cfg.d_model, cfg.vocab_size, "embed", "vocab", bias=False, dtype=dtype, rngs=rngs)
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
            # nnx.Embed's lookup, with the table pinned whole over the data axes on a mesh
            # (models.sharding: gathered over fsdp, split over tp only by vocabulary).
            table = self.embed.embedding[...]
            table = constrain(table if self.embed.dtype is None else table.astype(self.embed.dtype), "table")
            x = jnp.take(table, tokens, axis=0)
            if cfg.embed_scale:
                x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
            if self.pos_embed is not None:
                x = x + self.pos_embed.embedding[...][:t].astype(x.dtype)
            x = constrain(x, "residual")
        rope = None
        if cfg.position == "rope":
            # Constants of the step: stop_gradient keeps the scanned backward from summing
            # cotangents for them across layers (work the unrolled program never does).
            with scope("rope"):
                rope = jax.lax.stop_gradient(rope_tables(t, cfg.resolved_head_dim, cfg.rope_theta))

        if self.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
            def run(x, block, rope):
                return block(x, rope)

            x = run(x, self.layers, rope)
        else:
            for block in self.layers:
                x = block(x, rope)

        with scope("norms"):
            x = self.final_norm(x)
        with scope("logits"):
            logits = (jnp.dot(x, table.T.astype(x.dtype)) if self.head is None else self.head(x))
            return constrain(logits, "logits")
