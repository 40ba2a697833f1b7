"""Exact parameter counts, as pure arithmetic on a config's numbers.

With Python ints the counts are exact integers; with `jnp` float sizes (a relaxed config) the
same code gives differentiable floats under `jit`, `vmap` and `grad`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from models.config import ALL_SIZE_FIELDS, TransformerConfig, is_relaxed

#: Component names, in the order of the forward pass. Every count has all of them (0 if absent).
PARAM_COMPONENTS = (
    "embedding", "position", "attn_norm", "q", "k", "v", "qk_norm",
    "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b", "attn_out", "attn_post_norm",
    "mlp_norm", "mlp_in", "mlp_gate", "mlp_out", "router", "experts", "shared_experts",
    "mlp_post_norm", "final_norm", "head",
)
#: The components that count as embedding parameters (Kaplan et al. 2020 exclude these from N).
EMBEDDING_COMPONENTS = ("embedding", "position", "head")


class ParamCount(NamedTuple):
    """Parameters of a `TransformerConfig`.

    Attributes:
      total: all parameters.
      embedding: token embedding + learned positions + the untied output head.
      non_embedding: total - embedding (Kaplan et al.'s N).
      components: parameters per component, summed over layers (keys: `PARAM_COMPONENTS`).
      active: parameters one token's forward pass touches: total less the
        (n_experts - experts_per_token) routed experts it is not sent to, in every MoE layer
        (embedding and head counted as in ``total``). Equal to ``total`` for a dense model.
    """

    total: Any
    embedding: Any
    non_embedding: Any
    components: dict[str, Any]
    active: Any = None


def require_config(cfg) -> None:
    """A ValueError, with the fix, for anything that is not a `TransformerConfig` (a preset name,
    a dict, a Hugging Face config)."""
    if isinstance(cfg, TransformerConfig):
        return
    hint = (f"for the preset, pass models.presets.get({cfg!r})" if isinstance(cfg, str)
            else "build one with models.TransformerConfig(...) or models.presets.get(NAME)")
    raise ValueError(f"cfg={cfg!r}: expected a models.TransformerConfig; {hint}")


def promote(cfg: TransformerConfig, *extra):
    """For a relaxed config, every size (and each of ``extra``) as an array of the relaxed dtype.

    Python ints mixed into array arithmetic would be parsed as int32 and overflow (a product of
    sizes easily passes 2^31); as floats they cannot. Exact configs are returned unchanged.
    """
    require_config(cfg)
    values = [getattr(cfg, n) for n in ALL_SIZE_FIELDS] + list(extra)
    relaxed = [v for v in values if v is not None and is_relaxed(v)]
    if not relaxed:
        return (cfg, *extra) if extra else cfg
    dtype = jnp.result_type(*relaxed)
    conv = lambda v: v if v is None or is_relaxed(v) else jnp.asarray(v, dtype)  # noqa: E731
    new = dataclasses.replace(cfg, **{n: conv(getattr(cfg, n)) for n in ALL_SIZE_FIELDS})
    return (new, *map(conv, extra)) if extra else new


def _linear(n_in, n_out, bias: bool):
    return n_in * n_out + (n_out if bias else 0)


def _norm(cfg: TransformerConfig, width=None):
    # LayerNorm: scale and (with bias) shift; RMSNorm: scale only. (1 + scale) norms: the same.
    width = cfg.d_model if width is None else width
    return 2 * width if cfg.norm == "layernorm" and cfg.resolved_norm_bias else width


def _qk_norm(cfg: TransformerConfig):
    """QK-norm parameters of one layer: two head_dim norms ("head"), or norms over the whole
    q (n_heads * head_dim) and k (n_kv_heads * head_dim) projections ("full", OLMo 2)."""
    hd = cfg.resolved_head_dim
    if cfg.qk_norm == "head":
        return 2 * _norm(cfg, hd)
    if cfg.qk_norm == "full":
        return _norm(cfg, cfg.n_heads * hd) + _norm(cfg, cfg.resolved_n_kv_heads * hd)
    return 0


def param_components(cfg: TransformerConfig) -> dict[str, Any]:
    """Parameters per component, summed over the layers (keys: `PARAM_COMPONENTS`).

    q has n_heads*head_dim outputs, k and v n_kv_heads*head_dim each (GQA, Ainslie et al. 2023);
    a gated MLP (SwiGLU/GeGLU, Shazeer 2020) has gate, up (``mlp_in``) and down (``mlp_out``).
    Tied embeddings (Press & Wolf 2017) make the head free: vocab_size * d_model fewer parameters.
    """
    d, n_layers, ff = cfg.d_model, cfg.n_layers, cfg.d_ff
    q_width = cfg.n_heads * cfg.resolved_head_dim
    kv_width = cfg.resolved_n_kv_heads * cfg.resolved_head_dim
    qkv_bias, mlp_bias = cfg.resolved_qkv_bias, cfg.resolved_mlp_bias
    pre = cfg.norm_placement != "post"  # OLMo 2 has no pre-norms
    post = cfg.norm_placement != "pre"  # sandwich and post: a norm after each sublayer
    per_layer = {
        "attn_norm": _norm(cfg) if pre else 0,
        "q": _linear(d, q_width, qkv_bias),
        "k": _linear(d, kv_width, qkv_bias),
        "v": _linear(d, kv_width, qkv_bias),
        "qk_norm": _qk_norm(cfg),
        "attn_out": _linear(q_width, d, cfg.bias),
        "attn_post_norm": _norm(cfg) if post else 0,
        "mlp_norm": _norm(cfg) if pre and not cfg.shared_norm else 0,
        "mlp_in": _linear(d, ff, mlp_bias),
        "mlp_gate": _linear(d, ff, mlp_bias) if cfg.gated else 0,
        "mlp_out": _linear(ff, d, mlp_bias),
        "mlp_post_norm": _norm(cfg) if post else 0,
    }
    comps = {
        "embedding": cfg.vocab_size * d,
        "position": cfg.seq_len * d if cfg.position == "learned" else 0,
        **{name: n_layers * n for name, n in per_layer.items()},
        "final_norm": _norm(cfg),
        "head": 0 if cfg.tied_embeddings else _linear(d, cfg.vocab_size, cfg.head_bias),
    }
    comps.update(_mla_components(cfg))
    comps.update(_moe_components(cfg))
    return {name: comps.get(name, 0) for name in PARAM_COMPONENTS}


def _mlp_matrices(cfg: TransformerConfig) -> int:
    return 3 if cfg.gated else 2


def expert_params(cfg: TransformerConfig):
    """Parameters of one routed expert: an MLP of the config's kind, d_ff_expert wide, no biases."""
    return _mlp_matrices(cfg) * cfg.d_model * cfg.resolved_d_ff_expert


def _moe_components(cfg: TransformerConfig) -> dict[str, Any]:
    """The MoE layers' MLPs (Shazeer et al. 2017; Fedus et al. 2022; DeepSeekMoE, Dai et al. 2024):
    a router (d_model x n_experts; with the sigmoid router also DeepSeek-V3's per-expert
    selection bias b_i, arXiv:2412.19437 eq. 16, stored in the checkpoint as
    ``e_score_correction_bias``), n_experts routed experts and n_shared_experts shared ones, each a
    bias-free MLP. The first ``dense_layers`` keep the dense MLP (``mlp_*``); the MoE layers have none."""
    if not cfg.is_moe:
        return {}
    moe, dense = cfg.moe_layers, cfg.dense_layers
    d, mlp_bias = cfg.d_model, cfg.resolved_mlp_bias
    ff = cfg.d_ff
    router = d * cfg.n_experts + (cfg.n_experts if cfg.router == "sigmoid" else 0)
    return {
        "mlp_in": dense * _linear(d, ff, mlp_bias),
        "mlp_gate": dense * _linear(d, ff, mlp_bias) if cfg.gated else 0,
        "mlp_out": dense * _linear(ff, d, mlp_bias),
        "router": moe * router,
        "experts": moe * cfg.n_experts * expert_params(cfg),
        "shared_experts": moe * cfg.n_shared_experts * _mlp_matrices(cfg) * d * cfg.resolved_d_ff_shared,
    }


def _mla_components(cfg: TransformerConfig) -> dict[str, Any]:
    """Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434 §2.1, eqs. 9-10 and 12-14):
    q = W_UQ norm(W_DQ x) (or W_Q x without q_lora_rank); one down-projection of x to the kv
    latent c_KV (kv_lora_rank) and the shared rotary key (qk_rope_head_dim) together
    (``kv_a_proj_with_mqa``), an RMSNorm on the latent, and its up-projection to every head's
    non-rotary key (head_dim) and value (v_head_dim). No biases; attn_out maps
    n_heads * v_head_dim back to d_model."""
    if not cfg.is_mla:
        return {}
    d, h, L = cfg.d_model, cfg.n_heads, cfg.n_layers
    qk, rope, v_hd = cfg.qk_head_dim, cfg.qk_rope_head_dim, cfg.resolved_v_head_dim
    r_q, r_kv = cfg.q_lora_rank, cfg.kv_lora_rank
    out = {"k": 0, "v": 0, "qk_norm": 0}
    if r_q is None:
        out["q"] = L * d * h * qk
    else:
        out.update(q=0, q_a=L * d * r_q, q_a_norm=L * _norm(cfg, r_q), q_b=L * r_q * h * qk)
    out.update(kv_a=L * d * (r_kv + rope), kv_a_norm=L * _norm(cfg, r_kv),
               kv_b=L * r_kv * h * (cfg.resolved_head_dim + v_hd),
               attn_out=L * _linear(h * v_hd, d, cfg.bias))
    return out


def count_params(cfg: TransformerConfig) -> ParamCount:
    """Count the parameters of ``models.Transformer(cfg)`` exactly.

    Example:
      >>> from models import presets
      >>> count_params(presets.get("gpt2")).total  # Hugging Face gpt2: 124,439,808
      124439808
    """
    cfg = promote(cfg)
    comps = param_components(cfg)
    total = sum(comps.values())
    embedding = sum(comps[name] for name in EMBEDDING_COMPONENTS)
    active = total
    if cfg.is_moe:
        active = total - cfg.moe_layers * (cfg.n_experts - cfg.experts_per_token) * expert_params(cfg)
    return ParamCount(total=total, embedding=embedding, non_embedding=total - embedding, components=comps,
                      active=active)
