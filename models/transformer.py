"""A Flax NNX decoder-only transformer that implements every `TransformerConfig` option.

Pre-norm blocks (GPT-2, Llama, Mistral, Qwen and Gemma all are):

    x = embed(tokens) [* sqrt(d_model)] [+ positions]
    for each layer:  x = x + attention(norm(x));  x = x + mlp(norm(x))
    logits = head(norm(x))        # head = embed.attend when tied

The block can instead be sandwich-normed (Gemma 2/3), post-normed (OLMo 2) or parallel
(GPT-J, GPT-NeoX, Falcon); QK-norm, partial rotary, sliding windows, soft-capping and the
(1 + scale) norms are the config's architecture options (`models.config`). The output head has
a bias only with ``head_bias`` (GPT-J). Layers are a Python list,
or with ``scan_layers=True`` one stacked block run under ``nnx.scan`` (one compiled body).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from models.config import TransformerConfig
from models.flash import attention as flash_kernel_attention
from models.layout import Layout
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


def _norm(cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype, width: int | None = None) -> nnx.Module:
    width = cfg.d_model if width is None else width
    if cfg.norm_offset:
        return OffsetNorm(cfg, width, rngs=rngs, dtype=dtype)
    meta = axes("norm")
    if cfg.norm == "layernorm":
        return nnx.LayerNorm(width, epsilon=cfg.norm_eps, use_bias=cfg.resolved_norm_bias, dtype=dtype, rngs=rngs,
                             scale_metadata=meta, bias_metadata=meta)
    return nnx.RMSNorm(width, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs, scale_metadata=meta)


class OffsetNorm(nnx.Module):
    """A norm that multiplies by (1 + scale), scale initialised to 0: Gemma's RMSNorm and
    Nemotron's LayerNorm1P. Same parameters as the plain norm (scale, and a LayerNorm's shift)."""

    def __init__(self, cfg: TransformerConfig, width: int, *, rngs: nnx.Rngs, dtype):
        kw = dict(epsilon=cfg.norm_eps, use_scale=False, dtype=dtype, rngs=rngs)
        if cfg.norm == "layernorm":
            self.norm = nnx.LayerNorm(width, use_bias=False, **kw)
            self.bias = nnx.Param(jnp.zeros((width,), jnp.float32)) if cfg.resolved_norm_bias else None
        else:
            self.norm = nnx.RMSNorm(width, **kw)
            self.bias = None
        self.scale = nnx.Param(jnp.zeros((width,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(x) * (1 + self.scale[...]).astype(x.dtype)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


@jax.custom_vjp
def head_gradients_together(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Identity on the head's input and weight whose backward pass ties their gradients
    together (``lax.optimization_barrier``): the layers' backward cannot start before the
    head's weight gradient is computed, so the logits (or their gradient) die at the start of
    the backward pass. Without it the TPU compiler deferred the head's weight gradient, fused
    into its optimizer update, to the end of the step and kept the (batch x seq x vocab) logits
    live through every layer's backward."""
    return x, w


def _head_fwd(x, w):
    return (x, w), None


def _head_bwd(_, g):
    return jax.lax.optimization_barrier(g)


head_gradients_together.defvjp(_head_fwd, _head_bwd)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap): Gemma 2's soft-capping of attention scores and logits."""
    return cap * jnp.tanh(x / cap)


def window_mask(t: int, window) -> jax.Array:
    """(t, t) bool: key j is visible from query i when j <= i and i - j < window (Mistral's
    sliding window, Beltagy et al. 2020 without the global tokens); window may be traced."""
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    return (j <= i) & (i - j < window)


class Attention(nnx.Module):
    """Causal multi-head attention; grouped-query when n_kv_heads < n_heads."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 layout: Layout | None = None):
        h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
        layout = Layout() if layout is None else layout
        self.kind, self.remat = layout.attention, layout.remat
        self.flash_kernel = layout.flash_kernel
        self.cp = layout.cp
        qkv_bias = cfg.resolved_qkv_bias
        lin = functools.partial(_linear, dtype=dtype, rngs=rngs)
        self.q = lin(cfg.d_model, h * hd, "embed", "heads", bias=qkv_bias)
        self.k = lin(cfg.d_model, kv * hd, "embed", "kv_heads", bias=qkv_bias)
        self.v = lin(cfg.d_model, kv * hd, "embed", "kv_heads", bias=qkv_bias)
        self.o = lin(h * hd, cfg.d_model, "heads", "embed", bias=cfg.bias)
        # QK-norm (Dehghani et al. 2023): over each head (Qwen3, Gemma 3) or the whole projection
        # (OLMo 2); kv heads' norm has kv * hd entries in the latter.
        widths = {"head": (hd, hd), "full": (h * hd, kv * hd)}.get(cfg.qk_norm)
        self.q_norm = _norm(cfg, rngs=rngs, dtype=dtype, width=widths[0]) if widths else None
        self.k_norm = _norm(cfg, rngs=rngs, dtype=dtype, width=widths[1]) if widths else None
        self.qk_norm = cfg.qk_norm
        self.rotary_dim = cfg.rotary_dim if cfg.position == "rope" else None
        self.attn_softcap = cfg.attn_softcap
        self.windowed = cfg.sliding_window is not None
        if self.kind == "flash" and (self.attn_softcap is not None or self.windowed):
            raise ValueError("attention='flash' (models.flash) has no soft-capping or sliding window; "
                             "use attention='dot' for this config")

    def _qk_normed(self, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        with scope("norms"):
            if self.qk_norm == "head":
                return self.q_norm(q), self.k_norm(k)
            return (self.q_norm(q.reshape(*q.shape[:2], -1)).reshape(q.shape),
                    self.k_norm(k.reshape(*k.shape[:2], -1)).reshape(k.shape))

    def _rope(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
        r = self.rotary_dim
        if r == x.shape[-1]:
            return apply_rope(x, *rope)
        # partial rotary (GPT-NeoX rotary_pct): the first r dims rotate, the rest pass through
        return jnp.concatenate([apply_rope(x[..., :r], *rope), x[..., r:]], axis=-1)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, window=None) -> jax.Array:
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
        if self.q_norm is not None:
            q, k = self._qk_normed(q, k)
        if rope is not None:
            with scope("rope"):
                q, k = self._rope(q, rope), self._rope(k, rope)
        # On a mesh (models.sharding): queries keep their sequence shard, keys and values are
        # gathered over the context-parallel axis. Outside a mesh these are no-ops.
        q, k, v = constrain(q, "query"), constrain(k, "kv"), constrain(v, "kv")
        if self.kind == "flash":
            with scope("flash_attention"):
                out = flash_kernel_attention(q, k, v, kernel=self.flash_kernel).reshape(b, t, self.n_heads * hd)
        else:
            out = _core_attention(q, k, v, softcap_at=self.attn_softcap,
                                  window=(t if window is None else window) if self.windowed else None,
                                  fold_groups=self.cp == 1)
        # "context": the attention output, a residual the "selective" policy keeps (REMAT_POLICIES)
        out = constrain(checkpoint_name(out, "context"), "hidden")
        with scope("attn_out"):
            return self.o(out)


def _core_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, softcap_at=None, window=None,
                    fold_groups: bool = True) -> jax.Array:
    """Causal softmax(q k^T / sqrt(hd)) v with the (t x t) scores materialised (the dot path);
    ``softcap_at`` caps the scores (Gemma 2), ``window`` limits how far back a query sees.

    With grouped-query attention (g = H / K query heads per key head) and ``fold_groups``, the
    g query heads of a key head are folded into its query rows ((b, K, g t, s) scores), so
    every product is a plain batched matmul over (batch, kv head), as the backward pass's
    P^T dO contracts one dimension, not two. Same products, same FLOPs; the TPU compiler then
    keeps one copy of the softmax output per layer, where the unfolded (b, K, g, t, s) form
    made it keep a second, transposed one (21% more peak memory on a kv-2-of-8-heads shape,
    benchmarks/memory.py). Context parallelism shards t, which cannot fold into g t: the
    model passes ``fold_groups=False`` then.
    """
    b, t, kv, g, hd = q.shape
    fold = fold_groups and g > 1
    with scope("attn_scores"):
        if fold:  # (b, t, K, g, hd) -> (b, K, g t, hd): each kv head's query groups become rows
            q = jnp.einsum("btkgd->bkgtd", q).reshape(b, kv, g * t, hd)
            scores = jnp.einsum("bkqd,bskd->bkqs", q, k) * (1.0 / math.sqrt(hd))
        else:
            scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * (1.0 / math.sqrt(hd))
        if softcap_at is not None:
            scores = softcap(scores, softcap_at)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool)) if window is None else window_mask(t, window)
        if fold:
            causal = jnp.tile(causal, (g, 1))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    with scope("softmax"):
        probs = jax.nn.softmax(scores, axis=-1)
    with scope("attn_values"):  # v's width may differ from hd (MLA)
        if fold:
            out = jnp.einsum("bkqs,bskd->bkqd", probs, v).reshape(b, kv, g, t, -1)
            return jnp.einsum("bkgtd->btkgd", out).reshape(b, t, -1)
        return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, -1)


#: Layout.remat -> the jax.checkpoint policy each block is wrapped in ("none" wraps nothing).
#: "selective" (Korthikanti et al. 2022, Sec. 5: recompute the core attention, keep the rest)
#: keeps the matmul outputs without batch dimensions (q, k, v, the projections, the MLP's) and
#: the attention output, so the backward pass recomputes the scores and softmax (and the
#: elementwise work XLA would recompute inside its fusions anyway). Checkpointing the core
#: attention alone (nothing_saveable inside the block) keeps the same tensors, but the TPU
#: compiler then lays its buffers out with about 30% more temp memory (benchmarks/memory.py).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "selective": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("context")),
}


class MLP(nnx.Module):
    """GELU MLP (up, down) or gated GLU MLP (gate, up, down): SwiGLU / GeGLU (Shazeer 2020)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kind = cfg.mlp
        lin = functools.partial(_linear, bias=cfg.resolved_mlp_bias, dtype=dtype, rngs=rngs)
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
            elif self.kind == "gelu_exact":  # erf GELU (Hendrycks & Gimpel 2016): GPT-NeoX, Falcon
                h = jax.nn.gelu(up, approximate=False)
            elif self.kind == "relu2":  # squared ReLU (So et al. 2021, Primer): Nemotron
                h = jnp.square(jax.nn.relu(up))
            else:  # geglu
                h = jax.nn.gelu(gate, approximate=True) * up
        with scope("mlp_out"):
            return self.down(constrain(h, "hidden"))


class Block(nnx.Module):
    """One transformer block: pre-norm, or the placement / parallel form the config names.

    Its attention is `Attention`, or `models.mla.MLAttention` for ``attention_kind="mla"``; its
    MLP is `MLP`, or `models.moe.MoE` when ``moe`` (None: ``cfg.is_moe``; `make_layer` passes
    ``cfg.layer_is_moe(index)``). `forward` also returns the layer's load-balancing loss."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 layout: Layout | None = None, moe: bool | None = None):
        from models.mla import MLAttention
        from models.moe import MoE

        placement = cfg.norm_placement
        self.placement, self.parallel = placement, cfg.parallel_residual
        self.attn_norm = _norm(cfg, rngs=rngs, dtype=dtype) if placement != "post" else None
        self.attn = (MLAttention if cfg.is_mla else Attention)(cfg, rngs=rngs, dtype=dtype, layout=layout)
        self.mlp_norm = (_norm(cfg, rngs=rngs, dtype=dtype)
                         if placement != "post" and not cfg.shared_norm else None)
        moe = cfg.is_moe if moe is None else moe
        self.mlp = MoE(cfg, rngs=rngs, dtype=dtype) if moe else MLP(cfg, rngs=rngs, dtype=dtype)
        post = placement in ("sandwich", "post")
        self.attn_post_norm = _norm(cfg, rngs=rngs, dtype=dtype) if post else None
        self.mlp_post_norm = _norm(cfg, rngs=rngs, dtype=dtype) if post else None

    def _arch_call(self, x: jax.Array, rope, window, mlp) -> jax.Array:
        """The blocks that are not plain pre-norm: parallel (GPT-J, GPT-NeoX; Wang & Komatsuzaki
        2021), sandwich (Gemma 2) and post-sublayer norms (OLMo 2, OLMo et al. 2024)."""
        def normed(norm, h):
            if norm is None:
                return h
            with scope("norms"):
                return norm(h)

        if self.parallel:
            a = normed(self.attn_norm, x)
            m = a if self.mlp_norm is None else normed(self.mlp_norm, x)
            a, m = self.attn(a, rope, window), mlp(m)
            with scope("residual"):
                return x + a + m
        h = normed(self.attn_post_norm, self.attn(normed(self.attn_norm, x), rope, window))
        with scope("residual"):
            x = x + h
        h = normed(self.mlp_post_norm, mlp(normed(self.mlp_norm, x)))
        with scope("residual"):
            return x + h

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, window=None) -> jax.Array:
        return self.forward(x, rope, window)[0]

    def forward(self, x: jax.Array, rope, window=None) -> tuple[jax.Array, jax.Array]:
        """(the block's output, its MoE load-balancing loss: 0 for a dense MLP)."""
        aux = []

        def mlp(h):
            out = self.mlp(h)
            if isinstance(out, tuple):
                aux.append(out[1])
                return out[0]
            return out

        y = self._call(x, rope, window, mlp)
        return y, (aux[0] if aux else jnp.zeros((), jnp.float32))

    def _call(self, x: jax.Array, rope, window, mlp) -> jax.Array:
        if self.parallel or self.placement != "pre":
            return self._arch_call(x, rope, window, mlp)
        with scope("norms"):
            h = constrain(self.attn_norm(x), "block_input")
        h = self.attn(h, rope, window)
        with scope("residual"):
            x = constrain(x + h, "residual")
        with scope("norms"):
            h = constrain(self.mlp_norm(x), "block_input")
        h = mlp(h)
        with scope("residual"):
            return constrain(x + h, "residual")


def make_layer(cfg: TransformerConfig, index: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               layout: Layout | None = None) -> Block:
    """Layer ``index`` of the unrolled model (`Transformer` builds each layer with it, and
    `models.abstract_model` builds the layers of an abstract model one at a time with it)."""
    return Block(cfg, rngs=rngs, dtype=dtype, layout=layout, moe=cfg.layer_is_moe(index))


class Transformer(nnx.Module):
    """Decoder-only language model: tokens (batch, seq) int32 -> logits (batch, seq, vocab).

    Args:
      cfg: the model description (sizes must be concrete ints here).
      rngs: parameter initialisation keys.
      scan_layers: stack the blocks and run them under ``nnx.scan`` (one compiled layer body)
        instead of a Python loop. Same parameters, same outputs.
      dtype: computation dtype (parameters are float32).
      layout: a `models.Layout`; the model reads ``attention`` ("flash": `models.flash`) and
        ``remat`` (each block under ``jax.checkpoint`` with `REMAT_POLICIES`). None =
        ``Layout()`` (dot attention, no remat).

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
        if scan_layers and cfg.is_moe and cfg.dense_layers:
            raise ValueError(f"scan_layers=True with dense_layers={cfg.dense_layers}: the scanned layers must be "
                             "alike, and the first dense_layers have a dense MLP; use scan_layers=False")
        self.cfg = cfg
        self.remat = layout.remat
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
                return Block(cfg, rngs=rngs, dtype=dtype, layout=layout, moe=cfg.is_moe)

            self.layers = stack(rngs)
        else:
            self.layers = nnx.List([make_layer(cfg, i, rngs=rngs, dtype=dtype, layout=layout)
                                    for i in range(cfg.n_layers)])
        self.final_norm = _norm(cfg, rngs=rngs, dtype=dtype)
        self.head = (
            None if cfg.tied_embeddings
            else _linear(cfg.d_model, cfg.vocab_size, "embed", "vocab", bias=cfg.head_bias, dtype=dtype, rngs=rngs)
        )

    def __call__(self, tokens: jax.Array, *, return_aux: bool = False):
        """Logits (batch, seq, vocab); with ``return_aux``, (logits, the MoE load-balancing loss
        averaged over the MoE layers: 0 for a dense model)."""
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
            x = constrain(jnp.take(table, tokens, axis=0), "block_input")
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
                rope = jax.lax.stop_gradient(rope_tables(t, cfg.rotary_dim, cfg.rope_theta))

        def apply(block, x, rope, window=None):
            return block.forward(x, rope, window)

        if self.remat in REMAT_POLICIES:
            apply = nnx.remat(apply, policy=REMAT_POLICIES[self.remat])
        aux = jnp.zeros((), jnp.float32)
        if cfg.sliding_window is not None:
            x, aux = self._windowed_layers(x, rope, apply)
        elif self.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
            def run(carry, block, rope):
                x, aux = carry
                x, a = apply(block, x, rope)
                return x, aux + a

            x, aux = run((x, aux), self.layers, rope)
        else:
            for block in self.layers:
                x, a = apply(block, x, rope)  # window None: full causal attention
                aux = aux + a

        with scope("norms"):
            x = self.final_norm(x)
        with scope("logits"):
            # the tied table or the untied head's kernel (and bias), with the tie between the
            # head's two gradients (head_gradients_together)
            head = self.head
            w = table.T if head is None else head.kernel[...]
            bias = None if head is None or head.bias is None else head.bias[...]
            x, w = head_gradients_together(x, w.astype(x.dtype))
            logits = jnp.dot(x, w)
            if bias is not None:
                logits = logits + bias.astype(x.dtype)
            logits = logits if cfg.final_softcap is None else softcap(logits, cfg.final_softcap)
            logits = constrain(logits, "logits")
        if not return_aux:
            return logits
        return logits, (aux / cfg.moe_layers if cfg.is_moe else aux)

    def _windowed_layers(self, x: jax.Array, rope, apply) -> tuple[jax.Array, jax.Array]:
        """The layers with a per-layer attention window (``cfg.layer_windows()``; a global
        layer's window is the sequence length). Scanned, the windows are a scanned int32 input."""
        t = x.shape[1]
        windows = [t if w is None else w for w in self.cfg.layer_windows()]
        if self.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0, None, 0), out_axes=nnx.Carry)
            def run(carry, block, rope, window):
                x, aux = carry
                x, a = apply(block, x, rope, window)
                return x, aux + a

            return run((x, jnp.zeros((), jnp.float32)), self.layers, rope, jnp.asarray(windows, jnp.int32))
        aux = jnp.zeros((), jnp.float32)
        for block, window in zip(self.layers, windows):
            x, a = apply(block, x, rope, window)
            aux = aux + a
        return x, aux
