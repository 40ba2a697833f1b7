"""Multi-head latent attention (DeepSeek-V2, DeepSeek-AI 2024, arXiv:2405.04434 §2.1).

With h heads, d_h = head_dim (the non-rotary "nope" part), d_R = qk_rope_head_dim, d_v = v_head_dim:

    c_Q = RMSNorm(W_DQ x)              (q_lora_rank wide; eq. 12)   or, without q_lora_rank, no c_Q
    [q_C; q_R] = W_UQ c_Q  (or W_Q x)  per head d_h + d_R           (eq. 12-13)
    [c_KV; k_R] = W_DKV x              kv_lora_rank + d_R           (eq. 9, 14: one shared rotary key)
    [k_C; v] = W_UKV RMSNorm(c_KV)     per head d_h + d_v           (eq. 10-11)
    q = [q_C; RoPE(q_R)], k = [k_C; RoPE(k_R) broadcast to every head]   (decoupled RoPE, §2.1.3)
    o = W_O softmax(q k^T / sqrt(d_h + d_R)) v                       (eq. 17-19)

Parameters as transformers' DeepseekV2Attention / DeepseekV3Attention names them: ``q_a``
(q_a_proj), ``q_a_norm`` (q_a_layernorm), ``q_b`` (q_b_proj), ``q`` (q_proj, without q_lora_rank),
``kv_a`` (kv_a_proj_with_mqa), ``kv_a_norm`` (kv_a_layernorm), ``kv_b`` (kv_b_proj), ``o``
(o_proj). The training form is computed (k and v expanded per head), not the inference form that
absorbs W_UK into W_UQ; the FLOPs the planner counts are this form's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import TransformerConfig
from models.layout import Layout
from models.sharding import constrain

scope = jax.named_scope


class MLAttention(nnx.Module):
    """Causal multi-head latent attention; same call as `models.transformer.Attention`."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 layout: Layout | None = None):
        from models.transformer import _linear, _norm

        layout = Layout() if layout is None else layout
        if layout.attention == "flash":
            raise ValueError("attention='flash' (models.flash) needs equal q, k and v head widths; latent "
                             "attention has v_head_dim apart: use attention='dot'")
        self.remat = layout.remat
        h, hd, rope, vhd = cfg.n_heads, cfg.resolved_head_dim, cfg.qk_rope_head_dim, cfg.resolved_v_head_dim
        self.n_heads, self.head_dim, self.rope_dim, self.v_head_dim = h, hd, rope, vhd
        self.kv_rank = cfg.kv_lora_rank
        lin = functools.partial(_linear, bias=False, dtype=dtype, rngs=rngs)
        if cfg.q_lora_rank is None:
            self.q = lin(cfg.d_model, h * (hd + rope), "embed", "heads")
            self.q_a = self.q_a_norm = self.q_b = None
        else:
            self.q = None
            self.q_a = lin(cfg.d_model, cfg.q_lora_rank, "embed", None)
            self.q_a_norm = _norm(cfg, rngs=rngs, dtype=dtype, width=cfg.q_lora_rank)
            self.q_b = lin(cfg.q_lora_rank, h * (hd + rope), None, "heads")
        self.kv_a = lin(cfg.d_model, cfg.kv_lora_rank + rope, "embed", None)
        self.kv_a_norm = _norm(cfg, rngs=rngs, dtype=dtype, width=cfg.kv_lora_rank)
        self.kv_b = lin(cfg.kv_lora_rank, h * (hd + vhd), None, "heads")
        self.o = _linear(h * vhd, cfg.d_model, "heads", "embed", bias=cfg.bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, window=None) -> jax.Array:
        from models.transformer import _core_attention, apply_rope

        b, t, _ = x.shape
        h, hd, r, vhd = self.n_heads, self.head_dim, self.rope_dim, self.v_head_dim
        if self.q is not None:
            with scope("q"):
                q = self.q(x)
        else:
            with scope("q_a"):
                cq = self.q_a(x)
            with scope("norms"):
                cq = self.q_a_norm(cq)
            with scope("q_b"):
                q = self.q_b(cq)
        q = q.reshape(b, t, h, hd + r)
        with scope("kv_a"):
            ckv = self.kv_a(x)
        ckv, k_rope = ckv[..., :self.kv_rank], ckv[..., self.kv_rank:]
        with scope("norms"):
            ckv = self.kv_a_norm(ckv)
        with scope("kv_b"):
            kv = self.kv_b(ckv).reshape(b, t, h, hd + vhd)
        k_nope, v = kv[..., :hd], kv[..., hd:]
        with scope("rope"):
            q_rope = apply_rope(q[..., hd:], *rope)
            k_rope = apply_rope(k_rope.reshape(b, t, 1, r), *rope)
            q = jnp.concatenate([q[..., :hd], q_rope], axis=-1)
            k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rope, (b, t, h, r))], axis=-1)
        # as grouped-query attention with one query per kv head: (b, t, h, 1, d)
        q = constrain(q.reshape(b, t, h, 1, hd + r), "query")
        k, v = constrain(k, "kv"), constrain(v, "kv")
        core = functools.partial(_core_attention, window=window)
        if self.remat == "selective":
            core = jax.checkpoint(core, policy=jax.checkpoint_policies.nothing_saveable)
        out = constrain(core(q, k, v), "hidden")
        with scope("attn_out"):
            return self.o(out)
