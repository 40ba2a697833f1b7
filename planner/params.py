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
    "embedding", "position", "attn_norm", "q", "k", "v", "qk_norm", "attn_out", "attn_post_norm",
    "mlp_norm", "mlp_in", "mlp_gate", "mlp_out", "mlp_post_norm", "final_norm", "head",
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
    """

    total: Any
    embedding: Any
    non_embedding: Any
    components: dict[str, Any]


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
    return {name: comps[name] for name in PARAM_COMPONENTS}


def count_params(cfg: TransformerConfig) -> ParamCount:
    """Count the parameters of ``models.Transformer(cfg)`` exactly.

    Example:
      >>> from models import presets
      >>> count_params(presets.get("gpt2")).total  # Hugging Face gpt2: 124,439,808
      124439808
    """
    comps = param_components(promote(cfg))
    total = sum(comps.values())
    embedding = sum(comps[name] for name in EMBEDDING_COMPONENTS)
    return ParamCount(total=total, embedding=embedding, non_embedding=total - embedding, components=comps)
