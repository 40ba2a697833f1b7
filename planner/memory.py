"""Memory per chip of a training step (and of an inference KV cache), in bytes.

Pure arithmetic on the config's numbers, like the FLOP model: floats from ints, differentiable
`jnp` floats from a relaxed config (under ``jit``/``vmap``/``grad``: the `Layout` is static, the
sizes, batch and sequence may be traced; nothing branches on a traced value).

A step of `models.train_step` under a `models.Layout` holds, per chip (`estimate_memory`):

- **state**: parameters (``param_dtype``), gradients (see below), AdamW's two moments (in
  the dtype of the weights the optimizer holds: fp32 with ``master_fp32``), the fp32 master copy,
  and with gradient accumulation an fp32 accumulator. Divided by the mesh: ``fsdp`` shards all of
  it (ZeRO-3; Rajbhandari et al. 2020, Sec. 5), ``optimizer_sharding`` shards the optimizer
  state and master over ``dp`` too (ZeRO-1), ``tp`` splits the attention and MLP matrices and the
  vocabulary (Shoeybi et al. 2019, Sec. 3), ``pp`` keeps n_layers / pp layers per stage.
- **saved activations**: what each layer keeps for its backward pass under the remat policy
  (`saved_activation_elements`), for every layer of the stage and every micro-batch in flight.
  The bookkeeping is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models"), Sec. 4, Table 2, generalised to GQA, gated MLPs and head_dim != d / a.
- **transient**: the peak of the layer being back-propagated: what it re-materialises, its
  largest gradient intermediates, the flash-attention working set.
- **logits**: the head's output and its gradient (vocabulary-parallel over ``tp``); the loss
  phase peaks before any layer's backward, so the larger of the two phases counts.
- **gradients**: the compiled step ("xla" bookkeeping) fuses each weight's gradient into its
  AdamW update as the backward produces it, so at the peak it holds one: the head's (the tied
  table's), in the compute dtype its matmul writes. Eager autodiff ("korthikanti": Megatron-LM's
  gradient buffer) holds every weight's, in ``param_dtype``.

The TPU compiler's temp memory is the size of its heap, a packing of buffers with different
lifetimes, 1-28% above the live peak this module sums (measured on `benchmarks/memory.py`'s
shapes); that packing is the remaining gap, not modelled.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from models.config import TransformerConfig, check_size
from models.flash import DEFAULT_BLOCK
from models.layout import Layout
from planner.params import count_params, param_components, promote, require_config

#: The TPU's vector width: a TPU array's minor dimension is stored in tiles of 128 lanes.
LANES = 128


def lane_padded(n):
    """``n`` rounded up to a whole number of 128-lane tiles: the bytes a TPU array whose minor
    dimension is ``n`` occupies (its (8, 128) memory tiling; head_dim 64 takes 128 lanes)."""
    if isinstance(n, (int, float)):
        return LANES * math.ceil(n / LANES)
    return LANES * jnp.ceil(n / LANES)


DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
FP32 = 4


class MemoryEstimate(NamedTuple):
    """Bytes per chip. ``total`` = params + grads + optimizer + activations.

    ``optimizer`` includes the fp32 master copy (also given alone as ``master``) and the
    gradient-accumulation buffer (``accumulation``). ``activations`` = the saved activations +
    the larger of the two backward phases: the loss (``logits`` and their gradient) and the layer
    being back-propagated (``transient``). ``breakdown`` itemises the sum (bytes), ``phases``
    the two phases; ``to_dict()`` serialises it all.
    """

    params: Any
    grads: Any
    optimizer: Any
    activations: Any
    logits: Any
    total: Any
    hbm_bytes: float | None  # the target's memory, when a target was given
    fits: Any  # total <= hbm_bytes (None without a target)
    master: Any = 0
    accumulation: Any = 0
    transient: Any = 0
    breakdown: dict | None = None
    layout: Layout | None = None
    phases: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        num = lambda x: None if x is None else (x if isinstance(x, (bool, int)) else float(x))  # noqa: E731
        out = {k: num(getattr(self, k)) for k in
               ("params", "grads", "optimizer", "master", "accumulation", "activations", "transient",
                "logits", "total", "hbm_bytes")}
        out["fits"] = None if self.fits is None else bool(self.fits)
        out["breakdown"] = {k: num(v) for k, v in (self.breakdown or {}).items()}
        out["phases"] = {k: num(v) for k, v in (self.phases or {}).items()}
        out["layout"] = None if self.layout is None else self.layout.to_string()
        return out


def _dtype_bytes(name: str, dtype: str) -> int:
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ValueError(f"{name}={dtype!r}: unknown dtype; valid: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _min(a, b):
    if isinstance(a, jax.Array) or isinstance(b, jax.Array):
        return jnp.minimum(a, b)
    return min(a, b)


def _max(a, b):
    if isinstance(a, jax.Array) or isinstance(b, jax.Array):
        return jnp.maximum(a, b)
    return max(a, b)


# ----------------------------------------------------------------------------- activations
def activation_elements(cfg: TransformerConfig, seq_len, *, layout: Layout = Layout(), dropout: bool = False
                        ) -> dict[str, Any]:
    """Elements per token (per chip) of each activation tensor of one layer, as autodiff keeps
    them with no recomputation (keys below; ``scores`` and ``dropout_scores`` are per token and
    grow with the sequence).

    Korthikanti et al. 2022, Sec. 4.1 (per layer, 16-bit, with dropout): layer-norm inputs 4sbh
    bytes, QKV input 2sbh, Q and K 4sbh, V 2sbh, softmax output 2as^2b, projection input 2sbh,
    MLP input 2sbh, GeLU input and output 16sbh, dropout masks 2sbh + as^2b, attention dropout
    output 2as^2b: Eq. 1, 34sbh + 5as^2b. Here, in elements per token:

    - ``norm_in`` 2d: the inputs of the two norms (the residual stream);
    - ``norm_out`` 2d: their outputs, the inputs of q/k/v and of the MLP;
    - ``qk`` (H + K) hd and ``v`` K hd (GQA: K = n_kv_heads; rope'd q and k);
    - ``context`` H hd: the score-value product, input of the output projection;
    - ``mlp`` (2 or 3) ff: the activation's input(s) and output (GeLU: 2 ff = 8h for ff = 4h);
    - ``scores`` H s: the softmax output (dot attention only); flash keeps ``lse``, H fp32 row
      log-sum-exps, instead (Dao et al. 2022, Sec. 3.1);
    - with ``dropout``: ``dropout_masks`` 2d one-byte masks, ``dropout_scores`` H s one-byte
      mask + H s dropped probabilities (counted in the activation dtype).

    Under ``tp`` every tensor inside attention and the MLP is split (Korthikanti et al. Eq. 2:
    10 sbh + 24 sbh / t); with ``sequence_parallel`` the norm tensors and masks too (Eq. 3). ``cp``
    splits the tokens; dot-attention scores then span the whole sequence of keys.

    Mixture of experts (per layer, averaged over the layers): ``mlp`` takes the hidden width a
    token passes through, k * d_ff_expert + n_shared_experts * d_ff_shared in a MoE layer (its
    top-k copies, not all experts), and ``moe`` the routing tensors: the k sorted copies of the
    token and the k expert outputs (2 k d) and the router's probabilities (n_experts). Latent
    attention (`models.mla`): q and k of h (head_dim + qk_rope_head_dim), v and the context of
    h v_head_dim, and ``latent`` the latents' norm inputs and outputs (2 q_lora_rank + 2
    kv_lora_rank + qk_rope_head_dim).
    """
    d, ff = cfg.d_model, _token_mlp_width(cfg)
    h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
    tp = layout.tp
    sp = tp if layout.sequence_parallel else 1
    dot = layout.attention == "dot"
    out = {
        "norm_in": 2 * d / sp,
        "norm_out": 2 * d / sp,
        "qk": (h + kv) * hd / tp,
        "v": kv * hd / tp,
        "context": h * hd / tp,
        "mlp": (3 if cfg.gated else 2) * ff / tp,
        "scores": h * seq_len / tp if dot else 0,
        "lse": 0 if dot else h / tp,
        "dropout_masks": 2 * d / sp if dropout else 0,
        "dropout_scores": 2 * h * seq_len / tp if dropout and dot else 0,
        # the architecture options (models.TransformerConfig), by the same bookkeeping: each
        # norm beyond two keeps its input and output, QK-norm its normed q and k, the score
        # soft-cap its tanh (one more score-sized tensor)
        "extra_norms": 2 * d * (cfg.norms_per_layer - 2) / sp,
        "qk_norm": (h + kv) * hd / tp if cfg.qk_norm is not None else 0,
        "softcap_scores": h * seq_len / tp if dot and cfg.attn_softcap is not None else 0,
        "moe": (cfg.moe_layers * (2 * cfg.experts_per_token * d + cfg.n_experts) / cfg.n_layers
                if cfg.is_moe else 0),
        "latent": 0,
    }
    if cfg.is_mla:
        qk, vhd = cfg.qk_head_dim, cfg.resolved_v_head_dim
        out.update(qk=2 * h * qk / tp, v=h * vhd / tp, context=h * vhd / tp,
                   latent=2 * (cfg.q_lora_rank or 0) + 2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    return out


def _token_mlp_width(cfg: TransformerConfig):
    """The MLP hidden width one token passes through, averaged over the layers (d_ff for a
    dense model; k routed + the shared experts' widths in a MoE layer)."""
    if not cfg.is_moe:
        return cfg.d_ff
    moe = cfg.experts_per_token * cfg.resolved_d_ff_expert + cfg.n_shared_experts * cfg.resolved_d_ff_shared
    return (cfg.dense_layers * cfg.d_ff + cfg.moe_layers * moe) / cfg.n_layers


#: How the saved activations are counted: "xla", what the compiled JAX program keeps (XLA fuses
#: each elementwise op into its consumer and recomputes it there, so norm and activation outputs
#: are not stored; measured against the TPU compiler's buffer assignment, benchmarks/memory.py),
#: or "korthikanti", every tensor eager autodiff keeps (PyTorch/Megatron-LM; Korthikanti et al.
#: 2022, Sec. 4.1).
BOOKKEEPINGS = ("xla", "korthikanti")


def _check_bookkeeping(bookkeeping: str) -> None:
    if bookkeeping not in BOOKKEEPINGS:
        raise ValueError(f"bookkeeping={bookkeeping!r}: unknown; valid: {', '.join(map(repr, BOOKKEEPINGS))}")


def fused_activation_elements(cfg: TransformerConfig, seq_len, *, layout: Layout = Layout(),
                              dropout: bool = False) -> dict[str, Any]:
    """Elements per token one layer keeps with no recomputation in a compiled (XLA) step.

    `activation_elements` less what XLA recomputes inside the fusion that consumes it: a norm's
    output (recomputed from the residual it normalises, inside the q/k/v or MLP matmul's operand
    fusion), the MLP activation's output (recomputed from the pre-activation inside the down
    projection's fusion) and QK-norm's output. What stays: the two residual-stream values (2d),
    q and k, v, the attention output, the MLP's pre-activation (1 ff; a gated MLP 3 ff: the gate
    and up projections and their product, the down projection's input, which the compiler writes
    as a second output of the up projection's fusion and keeps for the down projection's weight
    gradient), the softmax output (dot attention) or the flash log-sum-exp, and each norm beyond
    two's input. The Pallas TPU kernel (``flash_kernel="pallas"``) keeps its own residuals
    (`jax.experimental.pallas.ops.tpu.flash_attention`, ``_flash_attention_fwd``): q, and keys
    and values repeated to all H heads, and its output, in its (batch, heads, seq, head_dim)
    layout, whose minor dimension the TPU stores in whole 128-lane tiles (`lane_padded`: head_dim
    64 takes 128); the transposed copy of the output the output projection reads (H hd, the
    sequence minor, unpadded); and the row statistics l
    and m as the kernel writes them, fp32 broadcast over 128 lanes (``MIN_BLOCK_SIZE``): the
    residuals slice lane 0, but the custom call's 128-lane outputs stay live (2 x 128 H fp32 per
    token; the TPU compiler's buffer assignment).
    """
    out = activation_elements(cfg, seq_len, layout=layout, dropout=dropout)
    d, ff = cfg.d_model, _token_mlp_width(cfg)
    h, hd = cfg.n_heads, cfg.resolved_head_dim
    tp, sp = layout.tp, layout.tp if layout.sequence_parallel else 1
    out = {**out, "norm_out": 0, "mlp": (3 if cfg.gated else 1) * ff / tp, "qk_norm": 0,
           "extra_norms": d * (cfg.norms_per_layer - 2) / sp}
    if cfg.is_mla:  # the latents' norm inputs, not their outputs
        out["latent"] = (cfg.q_lora_rank or 0) + cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if layout.attention == "flash" and layout.flash_kernel == "pallas":
        hdp = lane_padded(hd)
        out = {**out, "qk": 2 * h * hdp / tp, "v": h * hdp / tp, "context": h * (hdp + hd) / tp,
               "lse": 2 * LANES * h / tp}
    return out


#: Bytes per element of each activation kind: the compute dtype ("act"), one-byte dropout masks,
#: the fp32 log-sum-exp of flash attention. The dropped scores: one byte of mask + one of value.
def _element_bytes(name: str, act: int) -> float:
    if name == "lse":
        return FP32
    if name == "dropout_masks":
        return 1
    if name == "dropout_scores":
        return (1 + act) / 2  # mask (1 byte) + dropout output (act bytes), over 2 elements counted
    return act


def saved_activation_elements(cfg: TransformerConfig, seq_len, *, layout: Layout = Layout(),
                              dropout: bool = False, bookkeeping: str = "xla") -> dict[str, Any]:
    """Elements per token one layer keeps for its backward pass under ``layout.remat``.

    ``bookkeeping`` (`BOOKKEEPINGS`): "xla" starts from `fused_activation_elements`,
    "korthikanti" from `activation_elements`; the policies then drop:

    - "none": nothing (every tensor of the starting set).
    - "selective": all but the attention scores, softmax and score-value product's (t x t)
      inputs (Korthikanti et al. 2022, Sec. 5, Table 2: 34 sbh): ``scores`` and ``dropout_scores``.
    - "dots" (``dots_with_no_batch_dims_saveable``): the block input (d), the q/k/v projections
      ((H + 2K) hd), the output projection's result (d) and the MLP's up/gate outputs (1 or 2 ff):
      the saved matmul outputs the recomputation reads. Everything else is recomputed.
    - "full" (``nothing_saveable``): the block input only, d per token (Table 2: 2 sbh).
    """
    _check_bookkeeping(bookkeeping)
    full = (fused_activation_elements if bookkeeping == "xla" else activation_elements)(
        cfg, seq_len, layout=layout, dropout=dropout)
    d, ff = cfg.d_model, _token_mlp_width(cfg)
    h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
    tp, sp = layout.tp, layout.tp if layout.sequence_parallel else 1
    zero = dict.fromkeys(full, 0)
    if layout.remat == "none":
        return full
    if layout.remat == "selective":
        return {**full, "scores": 0, "dropout_scores": 0, "softcap_scores": 0}
    if layout.remat == "full":
        return {**zero, "norm_in": d / sp}
    # dots
    return {**zero, "norm_in": 2 * d / sp, "qk": full["qk"] if cfg.is_mla else (h + kv) * hd / tp,
            "v": full["v"] if cfg.is_mla else kv * hd / tp, "mlp": (2 if cfg.gated else 1) * ff / tp}


def _bytes(elements: dict[str, Any], tokens, act: int) -> Any:
    return tokens * sum(v * _element_bytes(k, act) for k, v in elements.items())


def activation_bytes_per_layer(cfg: TransformerConfig, batch_size, seq_len, *, dtype: str = "fp32",
                               remat=False, layout: Layout | None = None, dropout: bool = False,
                               bookkeeping: str = "xla"):
    """Bytes one layer keeps for its backward pass, for ``batch_size`` sequences of ``seq_len``.

    ``remat``: a policy name of `models.layout.REMAT_POLICIES`, or True for "full" / False for
    "none" (the old form). ``layout`` gives the policy, attention kind and tp/sequence-parallel
    split instead (its dtype then wins over ``dtype``). Per token: `saved_activation_elements`.
    """
    if layout is None:
        policy = {True: "full", False: "none"}.get(remat, remat) if isinstance(remat, bool) else remat
        layout = Layout(remat=policy, dtype=dtype)
    act = _dtype_bytes("dtype", layout.dtype)
    return _bytes(saved_activation_elements(cfg, seq_len, layout=layout, dropout=dropout, bookkeeping=bookkeeping),
                  batch_size * seq_len, act)


#: Activation kinds of the MLP (or MoE) sub-layer, back-propagated before the attention's.
_MLP_KINDS = ("mlp", "moe")


def transient_bytes(cfg: TransformerConfig, micro_batch, seq_len, *, layout: Layout,
                    block_size: int = DEFAULT_BLOCK, dropout: bool = False,
                    bookkeeping: str = "xla") -> dict[str, Any]:
    """The peak of the one layer being back-propagated, beyond what every layer keeps (bytes).

    - ``recompute``: what the layer re-materialises before its backward (all of the starting
      set of `saved_activation_elements` it did not save; for "selective" the scores again) and
      still holds at its peak. The MLP's backward runs first and frees the MLP's share before
      the attention's backward makes its working set, so that share counts only where the MLP's
      sub-phase is the larger (the TPU compiler's buffer assignment);
    - ``score_grad``: dot attention: (t x t) tensors per head in the compute dtype: "xla" two,
      the gradient of the softmax output dP and of the scores dS, both live beside P (the TPU
      compiler's buffer assignment); "korthikanti" one (the softmax backward in place);
    - ``flash``: flash attention's working set (Dao et al. 2022, Algorithm 2): four fp32 score
      blocks (S, P, dP, dS) of block x block per head, the fp32 dQ accumulator (H hd per
      token), the fp32 row statistics D (H per token) and the fp32 dK, dV block accumulators.
      The Pallas TPU kernel keeps its blocks in VMEM; in HBM its backward holds the row
      statistics broadcast over lanes, fp32 (`jax.experimental.pallas.ops.tpu.flash_attention`,
      ``_flash_attention_bwd_dkv`` and ``_bwd_dq``): l and m over 128 lanes (``MIN_BLOCK_SIZE``)
      for both passes, and D over 128 lanes for the dK/dV pass, then over ``block_k_major``
      lanes (the block, 512) for the dQ pass, after the first is freed; and dQ, dK, dV for all
      H heads, head_dim lane-padded (`lane_padded`).
    - ``layer_grads``: the residual-stream gradient entering and leaving the layer, 2d per token.
    """
    _check_bookkeeping(bookkeeping)
    act = _dtype_bytes("dtype", layout.dtype)
    b, s = micro_batch, seq_len / layout.cp
    tokens = b * s
    full = (fused_activation_elements if bookkeeping == "xla" else activation_elements)(
        cfg, seq_len, layout=layout, dropout=dropout)
    saved = saved_activation_elements(cfg, seq_len, layout=layout, dropout=dropout, bookkeeping=bookkeeping)
    recompute = {k: full[k] - saved[k] for k in full}
    h, kv, hd = cfg.n_heads / layout.tp, cfg.resolved_n_kv_heads / layout.tp, cfg.resolved_head_dim
    sp = layout.tp if layout.sequence_parallel else 1
    out = {"recompute": 0, "score_grad": 0, "flash": 0,
           "layer_grads": 2 * tokens * cfg.d_model / sp * act}
    if layout.attention == "dot":
        out["score_grad"] = (2 if bookkeeping == "xla" else 1) * tokens * h * seq_len * act
    elif layout.flash_kernel == "pallas":
        out["flash"] = tokens * h * ((2 * LANES + _max(LANES, _min(block_size, s))) * FP32 + 3 * lane_padded(hd) * act)
    else:
        blk = _min(block_size, s)
        out["flash"] = FP32 * (4 * b * h * blk * blk + tokens * h * hd + tokens * h + 2 * b * blk * kv * hd)
    # The MLP's backward runs first and frees its re-materialised tensors before the attention's
    # backward makes its working set: the two sub-phases peak apart.
    mlp = _bytes({k: recompute[k] for k in _MLP_KINDS}, tokens, act)
    out["recompute"] = _bytes(recompute, tokens, act) - mlp + _max(mlp - out["score_grad"] - out["flash"], 0)
    return out


# ----------------------------------------------------------------------------- state
def _split_params(cfg: TransformerConfig, layout: Layout) -> dict[str, Any]:
    """Parameters per chip before fsdp: (all layers' matrices / tp + their norms) / pp, the
    embedding and head / tp (vocabulary parallel), on the first (and last) pipeline stage."""
    comps = param_components(cfg)
    norms = comps["attn_norm"] + comps["mlp_norm"] + comps["q_a_norm"] + comps["kv_a_norm"] + comps["router"]
    layers = sum(comps[k] for k in ("q", "k", "v", "attn_out", "mlp_in", "mlp_gate", "mlp_out",
                                    "q_a", "q_b", "kv_a", "kv_b", "shared_experts"))
    tables = comps["embedding"] + comps["position"] + comps["head"] + comps["final_norm"]
    if layout.pp > 1:  # the first stage has the token (and position) table; the last the head
        first = comps["embedding"] + comps["position"] + (comps["embedding"] if cfg.tied_embeddings else 0)
        last = comps["head"] + comps["final_norm"] + (comps["embedding"] if cfg.tied_embeddings else 0)
        tables = _max(first, last)
    # routed experts: the expert dimension over ep (data axes), their width over tp, and over
    # fsdp too unless ep's axes include it (models.sharding.expert_axes: one dimension per axis)
    from models.sharding import expert_axes

    if comps["experts"] == 0:
        experts = 0
    else:
        ep_axes = expert_axes(layout) if layout.ep > 1 else ()
        fsdp_rest = 1 if "fsdp" in ep_axes else layout.fsdp
        experts = comps["experts"] / (layout.tp * layout.ep * fsdp_rest * layout.pp)
    return {"layers": (layers / layout.tp + norms) / layout.pp, "tables": tables / layout.tp, "experts": experts}


def _head_bytes(cfg: TransformerConfig, layout: Layout, act: int) -> Any:
    """A (d_model x vocab) head-sized array in the compute dtype per chip, vocabulary-parallel
    over ``tp``: the head's weight gradient (the tied table's, tied), the one gradient the
    compiled step holds through the layers' backward (see `estimate_memory`), is whole over
    ``fsdp`` (each chip's partial sum before the reduce-scatter)."""
    return cfg.vocab_size * cfg.d_model / layout.tp * act


def _in_flight(layout: Layout, micro_batches) -> Any:
    """Micro-batches of activations the busiest (first) pipeline stage holds at its peak.

    1F1B: min(pp, m) (Narayanan et al. 2021, Sec. 2.2.1; Korthikanti et al. 2022, Sec. 4.2.3:
    the first stage holds L layers' worth); interleaved: pp (1 + (pp - 1) / (pp v)) (same
    sections); GPipe: all m (Huang et al. 2019). No pipeline: one.
    """
    if layout.pp == 1:
        return 1
    if layout.schedule == "gpipe":
        return micro_batches
    if layout.schedule == "interleaved":
        return _min(micro_batches, layout.pp) * (1 + (layout.pp - 1) / (layout.pp * layout.virtual_stages))
    return _min(micro_batches, layout.pp)


def estimate_memory(cfg: TransformerConfig, *, batch_size=1, seq_len=None, chips=None, dtype: str | None = None,
                    param_dtype: str | None = None, master_weights: bool | None = None, remat: bool | None = None,
                    shard_state: bool | None = None, hardware=None, layout: Layout | None = None,
                    dropout: bool = False, block_size: int = DEFAULT_BLOCK,
                    bookkeeping: str = "xla") -> MemoryEstimate:
    """Memory per chip of one training step of ``models.Transformer(cfg)`` under AdamW.

    Args:
      batch_size: global sequences per step, split evenly over the data-parallel replicas.
      seq_len: tokens per sequence (None = cfg.seq_len).
      layout: a `models.Layout`: remat policy, attention kind, micro-batch, precision and mesh
        degrees. Without it, the older keywords describe the step: ``chips`` data-parallel chips
        (default 1), ``dtype`` (activations, default fp32), ``param_dtype`` (default fp32),
        ``master_weights``, ``remat`` (True = full rematerialisation) and ``shard_state`` (FSDP
        over the chips); with it, those keywords must be left out (``chips``, if given, must be
        ``layout.chips``).
      hardware: a `hardware.Spec` (or name) for the ``fits`` answer.
      dropout: count dropout masks as Korthikanti et al. do (the Flax model has no dropout).
      block_size: flash-attention block (`models.flash`).
      bookkeeping: "xla" (default: what the compiled JAX step keeps, elementwise outputs fused
        into their consumers; one logits buffer, the loss gradient written over it) or
        "korthikanti" (eager autodiff, as Megatron-LM: every tensor of Korthikanti et al. 2022
        Sec. 4.1; the logits and their gradient apart). See `BOOKKEEPINGS`.

    Per chip: state / (fsdp x tp x pp) (optimizer also / dp with ``optimizer_sharding``),
    activations for ``layout.micro_batch`` sequences (default the whole per-replica batch) of
    ``seq_len / cp`` tokens over ``n_layers / pp`` layers x the micro-batches in flight
    (`_in_flight`), plus the transient of the layer being back-propagated (`transient_bytes`),
    or, if larger, the loss phase: micro x seq x vocab / tp logits in the compute dtype, once
    ("xla": the compiler writes their gradient in place or computes it inside the head's
    backward matmuls) or twice ("korthikanti": logits and gradient), and with tied embeddings
    ("xla") the table's compute-dtype copy the head reads. ``grads``: "xla", the head's weight
    gradient in the compute dtype (`_head_bytes`), the one the compiled step holds through
    both phases (the head's AdamW update waits for the end of the step; every other gradient
    is fused into its update as it is made); "korthikanti", every weight's. The step donates
    its parameters and optimizer state, so the updated ones reuse their buffers. ``breakdown``
    lists every term.
    """
    require_config(cfg)
    layout = _resolve_layout(layout, chips=chips, dtype=dtype, param_dtype=param_dtype,
                             master_weights=master_weights, remat=remat, shard_state=shard_state)
    if not isinstance(dropout, bool):
        raise ValueError(f"dropout={dropout!r}: must be True or False")
    _check_bookkeeping(bookkeeping)
    seq_len = cfg.seq_len if seq_len is None else seq_len
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        check_size(name, v)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: must be a positive int")
    layout.check(cfg, batch_size=batch_size if isinstance(batch_size, int) else None,
                 seq_len=seq_len if isinstance(seq_len, int) else None)
    cfg, batch_size, seq_len = promote(cfg, batch_size, seq_len)
    act = _dtype_bytes("dtype", layout.dtype)
    pbytes = _dtype_bytes("param_dtype", layout.param_dtype)
    master = layout.master_fp32 and layout.param_dtype != "fp32"
    opt_bytes = FP32 if master else pbytes  # optax keeps the moments in the dtype of the weights

    # state
    split = _split_params(cfg, layout)
    local_params = (split["layers"] + split["tables"]) / layout.fsdp + split["experts"]
    opt_share = layout.dp if layout.optimizer_sharding else 1
    per_replica = batch_size / layout.data_parallel
    micro = per_replica if layout.micro_batch is None else layout.micro_batch
    steps = per_replica / micro
    accumulating = layout.micro_batch is not None and not (
        isinstance(steps, (int, float)) and steps <= 1)
    b = {
        "params": local_params * pbytes,
        "grads": local_params * pbytes if bookkeeping == "korthikanti" else _head_bytes(cfg, layout, act),
        "moments": 2 * local_params * opt_bytes / opt_share,
        "master": local_params * FP32 / opt_share if master else 0,
        "accumulation": local_params * FP32 if accumulating else 0,
    }

    # activations
    tokens = micro * seq_len / layout.cp
    layers = cfg.n_layers / layout.pp
    per_layer = _bytes(saved_activation_elements(cfg, seq_len, layout=layout, dropout=dropout,
                                                 bookkeeping=bookkeeping), tokens, act)
    b["saved_activations"] = per_layer * layers * _in_flight(layout, steps)
    trans = transient_bytes(cfg, micro, seq_len, layout=layout, block_size=block_size, dropout=dropout,
                            bookkeeping=bookkeeping)
    logits = (1 if bookkeeping == "xla" else 2) * tokens * cfg.vocab_size / layout.tp * act
    if bookkeeping == "xla" and cfg.tied_embeddings:  # the table's compute-dtype copy the head reads
        logits = logits + _head_bytes(cfg, layout, act) / layout.fsdp
    transient = sum(trans.values())
    # Two phases of the backward pass peak one after the other, not together: the loss (the
    # logits and their gradient) and then each layer's backward (its transient). Every saved
    # activation is live in both. The model makes it so: the head's weight gradient is taken
    # before the layers' backward starts (models.transformer.head_gradients_together); left to
    # itself the TPU compiler deferred it and kept the logits live through every layer.
    phases = {f"layer_{k}": v for k, v in trans.items()}
    phases["loss_logits"] = logits
    b["peak_phase"] = _max(transient, logits)

    activations = b["saved_activations"] + b["peak_phase"]
    optimizer = b["moments"] + b["master"] + b["accumulation"]
    total = b["params"] + b["grads"] + optimizer + activations
    hbm = fits = None
    if hardware is not None:
        import hardware as hw

        spec = hw.resolve(hardware)
        hbm = spec.hbm_bytes
        fits = total <= hbm
    return MemoryEstimate(b["params"], b["grads"], optimizer, activations, logits, total, hbm, fits,
                          master=b["master"], accumulation=b["accumulation"], transient=transient,
                          breakdown=b, layout=layout, phases=phases)


def _resolve_layout(layout, *, chips, dtype, param_dtype, master_weights, remat, shard_state) -> Layout:
    """The layout of the step: ``layout`` itself, or one built from the older keywords."""
    old = {"dtype": dtype, "param_dtype": param_dtype, "master_weights": master_weights, "remat": remat,
           "shard_state": shard_state}
    if layout is not None:
        if not isinstance(layout, Layout):
            raise ValueError(f"layout={layout!r}: must be a Layout (e.g. Layout.parse('fsdp=8,remat=full'))")
        given = sorted(k for k, v in old.items() if v is not None)
        if given:
            raise ValueError(f"{', '.join(given)}: give these as fields of layout= (e.g. "
                             f"layout.replace(...)), not beside it")
        if chips is not None and chips != layout.chips:
            raise ValueError(f"chips={chips!r} differs from layout.chips={layout.chips}; leave chips out")
        return layout
    chips = 1 if chips is None else chips
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ValueError(f"chips={chips!r}: must be a positive int (a mesh needs whole chips)")
    for name in ("master_weights", "remat", "shard_state"):
        if old[name] is not None and not isinstance(old[name], bool):
            raise ValueError(f"{name}={old[name]!r}: must be True or False")
    dtype = "fp32" if dtype is None else dtype
    param_dtype = "fp32" if param_dtype is None else param_dtype
    _dtype_bytes("dtype", dtype)
    _dtype_bytes("param_dtype", param_dtype)
    return Layout(remat="full" if remat else "none", dtype=dtype, param_dtype=param_dtype,
                  master_fp32=bool(master_weights), **({"fsdp": chips} if shard_state else {"dp": chips}))


def kv_cache_bytes(cfg: TransformerConfig, *, batch_size=1, seq_len=None, dtype: str = "bf16"):
    """Inference KV cache: keys and values of every layer, 2 L K hd per token (GQA-aware). A
    windowed layer (``cfg.sliding_window``) keeps only its last ``sliding_window`` tokens
    (Mistral's rolling buffer cache, Jiang et al. 2023, §2)."""
    require_config(cfg)
    seq_len = cfg.seq_len if seq_len is None else seq_len
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        check_size(name, v)
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


__all__ = ["MemoryEstimate", "activation_bytes_per_layer", "activation_elements", "estimate_memory",
           "kv_cache_bytes", "saved_activation_elements", "transient_bytes", "count_params"]
