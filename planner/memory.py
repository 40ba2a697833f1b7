"""Memory per chip of a training step (and of an inference KV cache), in bytes.

Pure arithmetic on the config's numbers, like the FLOP model: exact-ish floats from ints,
differentiable `jnp` floats from a relaxed config. Data parallelism splits the batch; the parameters,
gradients and optimizer state are replicated on every chip, or sharded over them
(``shard_state=True``, ZeRO-3 / FSDP).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from models.config import TransformerConfig, check_size
from planner.params import count_params, promote

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


class MemoryEstimate(NamedTuple):
    """Bytes per chip. ``total`` = params + grads + optimizer + activations + logits."""

    params: Any
    grads: Any
    optimizer: Any
    activations: Any
    logits: Any
    total: Any
    hbm_bytes: float | None  # the target's memory, when a target was given
    fits: Any  # total <= hbm_bytes (None without a target)


def _dtype_bytes(name: str, dtype: str) -> int:
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ValueError(f"{name}={dtype!r}: unknown dtype; valid: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def activation_bytes_per_layer(cfg: TransformerConfig, batch_size, seq_len, *, dtype: str = "fp32",
                               remat: bool = False):
    """Bytes one layer keeps for its backward pass.

    Without rematerialisation, what autodiff saves per token, counted from `models.Transformer`:
    the two norm inputs and outputs (4 d), q, k, v (H + 2K head widths), the attention output
    (H hd), the MLP input of each projection and the hidden activation (2 or 3 ff), and per head
    the raw scores, the masked scores and the probabilities (3 s per token per head; the count
    XLA's buffer assignment keeps on CPU, benchmarks/roofline_cpu.py), all in ``dtype``. The same
    bookkeeping as Korthikanti et al. 2022, Eq. 2 (34 s b h + 5 a s^2 b for 16-bit GPT with
    dropout), without dropout masks. With full rematerialisation (``remat=True``), each layer
    keeps only its input (d per token); the one layer being recomputed is counted in
    `estimate_memory`.
    """
    b, t = batch_size, seq_len
    tokens = b * t
    nbytes = _dtype_bytes("dtype", dtype)
    if remat:
        return tokens * cfg.d_model * nbytes
    d, ff = cfg.d_model, cfg.d_ff
    hd = cfg.resolved_head_dim
    h, kv = cfg.n_heads, cfg.resolved_n_kv_heads
    per_token = 4 * d + (h + 2 * kv) * hd + h * hd + (3 if cfg.gated else 2) * ff
    scores = 3 * b * h * t * t
    per_token, scores = _architecture_activations(cfg, per_token, scores, b * h * t * t)
    return (tokens * per_token + scores) * nbytes


def _architecture_activations(cfg: TransformerConfig, per_token, scores, score_elements):
    """What the architecture options add to (or take from) a layer's saved activations, by the
    same bookkeeping (not measured against XLA): each extra d_model norm keeps its input and
    output (2 d per token; a shared norm saves that), QK-norm its normed q and k, the score
    soft-cap its tanh (one more score-sized buffer)."""
    d, hd = cfg.d_model, cfg.resolved_head_dim
    per_token = per_token + 2 * d * (cfg.norms_per_layer - 2)
    if cfg.qk_norm is not None:
        per_token = per_token + (cfg.n_heads + cfg.resolved_n_kv_heads) * hd
    if cfg.attn_softcap is not None:
        scores = scores + score_elements
    return per_token, scores


def estimate_memory(cfg: TransformerConfig, *, batch_size=1, seq_len=None, chips=1, dtype: str = "fp32",
                    param_dtype: str = "fp32", master_weights: bool = False, remat: bool = False,
                    shard_state: bool = False, hardware=None) -> MemoryEstimate:
    """Memory per chip of one training step of ``models.Transformer(cfg)`` under AdamW.

    Args:
      batch_size: global sequences per step, split evenly over ``chips`` (data parallel).
      seq_len: tokens per sequence (None = cfg.seq_len).
      dtype: activation dtype; param_dtype: parameter and gradient dtype.
      master_weights: keep an fp32 copy of bf16 parameters in the optimizer (mixed precision).
      remat: full activation rematerialisation (layer inputs only, one layer recomputed).
      shard_state: shard parameters, gradients and optimizer state over the chips (ZeRO-3 /
        FSDP, Rajbhandari et al. 2020); otherwise every chip holds a full replica.
      hardware: a `hardware.Spec` (or name) for the ``fits`` answer.

    Parameters and gradients take ``param_dtype`` bytes each; AdamW's two moments are fp32 (8
    bytes per parameter), + 4 with master weights. The loss keeps 2.5 fp32 logit-sized buffers
    (``batch x seq x vocab`` each) at its peak: the logits, their gradient and, half the time, the
    softmax's exponentials (measured against XLA's ``memory_analysis()`` on CPU). The training
    step donates its parameters and optimizer state, so the updated ones reuse their buffers.
    """
    seq_len = cfg.seq_len if seq_len is None else seq_len
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("chips", chips)):
        check_size(name, v)
    for name, v in (("master_weights", master_weights), ("remat", remat), ("shard_state", shard_state)):
        if not isinstance(v, bool):
            raise ValueError(f"{name}={v!r}: must be True or False")
    cfg, batch_size, seq_len, chips = promote(cfg, batch_size, seq_len, chips)
    n = count_params(cfg).total
    pbytes = _dtype_bytes("param_dtype", param_dtype)
    share = chips if shard_state else 1
    params = n * pbytes / share
    grads = n * pbytes / share
    optimizer = n * (8 + (4 if master_weights else 0)) / share
    local_batch = batch_size / chips
    per_layer = activation_bytes_per_layer(cfg, local_batch, seq_len, dtype=dtype, remat=remat)
    activations = cfg.n_layers * per_layer
    if remat:  # the layer being recomputed holds its full activations
        activations = activations + activation_bytes_per_layer(cfg, local_batch, seq_len, dtype=dtype)
    logits = 10 * local_batch * seq_len * cfg.vocab_size  # 2.5 fp32 buffers
    total = params + grads + optimizer + activations + logits
    hbm = fits = None
    if hardware is not None:
        import hardware as hw

        spec = hw.resolve(hardware)
        hbm = spec.hbm_bytes
        fits = total <= hbm
    return MemoryEstimate(params, grads, optimizer, activations, logits, total, hbm, fits)


def kv_cache_bytes(cfg: TransformerConfig, *, batch_size=1, seq_len=None, dtype: str = "bf16"):
    """Inference KV cache: keys and values of every layer, 2 L K hd per token (GQA-aware). A
    windowed layer (``cfg.sliding_window``) keeps only its last ``sliding_window`` tokens
    (Mistral's rolling buffer cache, Jiang et al. 2023, §2)."""
    seq_len = cfg.seq_len if seq_len is None else seq_len
    if cfg.sliding_window is not None:
        import jax.numpy as jnp

        kept = (min(seq_len, cfg.sliding_window) if isinstance(seq_len, int)
                else jnp.minimum(seq_len, cfg.sliding_window))
        windowed = cfg.n_windowed_layers
        layer_tokens = (cfg.n_layers - windowed) * seq_len + windowed * kept
        return (2 * cfg.resolved_n_kv_heads * cfg.resolved_head_dim * batch_size * layer_tokens
                * _dtype_bytes("dtype", dtype))
    return (2 * cfg.n_layers * cfg.resolved_n_kv_heads * cfg.resolved_head_dim * batch_size * seq_len
            * _dtype_bytes("dtype", dtype))
