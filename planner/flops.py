"""Closed-form FLOP counts of `models.Transformer`, under named conventions.

Every count is plain arithmetic on the config's numbers (the conventions and their sources: README.md, "FLOP conventions"):

- Python ints give exact integers (no float rounding, even at 10^26 FLOPs);
- `jnp` floats (a relaxed config, see `models.config`) give the continuous relaxation, under
  `jax.jit`, `jax.vmap` and `jax.grad`.

A matmul (m x n) @ (n x p) costs 2*m*n*p FLOPs with one FMA = 2 FLOPs ("fma", what XLA and
nanoGPT count), and m*p*(2n - 1) counted as separate multiplies and adds ("no_fma"). The
"xla" convention adds the elementwise, reduction, softmax, norm, activation, loss and AdamW work
exactly as XLA's HLO cost analysis counts it for `models.Transformer` and `models.train_step`
(lowered, float32). The published formulas ("6nd", "kaplan", "palm", "megatron", "chinchilla",
"deepseek") are reproduced as printed, each with its source.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from models.config import TransformerConfig, check_size
from planner.params import count_params, promote, require_config

MODES = ("forward", "backward", "train")

#: Component names of a FlopCount, in the order of the forward pass (all present, 0 if absent).
FLOP_COMPONENTS = (
    "embedding", "rope", "norms", "q", "k", "v", "q_a", "q_b", "kv_a", "kv_b", "attn_scores", "softmax",
    "attn_values", "attn_out", "mlp_in", "mlp_gate", "activation", "mlp_out", "router", "experts",
    "shared_experts", "dispatch", "residual", "logits", "loss", "optimizer",
)

#: Components that are matmuls, and the (m, n, p, count) of each in the forward pass.
MATMUL_COMPONENTS = ("q", "k", "v", "q_a", "q_b", "kv_a", "kv_b", "attn_scores", "attn_values", "attn_out",
                     "mlp_in", "mlp_gate", "mlp_out", "router", "experts", "shared_experts", "dispatch", "logits")

#: `forward_matmuls` keys that are one of several products of a component (the rest are their own).
MATMUL_COMPONENT_OF = {
    "experts_gate": "experts", "experts_out": "experts", "experts_combine": "experts",
    "shared_experts_gate": "shared_experts", "shared_experts_out": "shared_experts",
    "dispatch_combine": "dispatch",
}
#: Matmuls whose backward computes only the gradient of their second operand: the dispatch
#: einsum's first operand is the 0/1 dispatch mask, a function of the router's integer choices.
_SECOND_OPERAND_ONLY = ("dispatch",)


class Matmul(NamedTuple):
    """``count`` products of an (m x n) and an (n x p) matrix."""

    m: Any
    n: Any
    p: Any
    count: Any


class FlopCount(NamedTuple):
    """FLOPs of one step.

    Attributes:
      total: sum of ``components``.
      components: FLOPs per component (keys: `FLOP_COMPONENTS`).
      transcendentals: exp, log, tanh, rsqrt, ... elements (the "xla" convention only; else None).
      convention, mode: what was counted.
    """

    total: Any
    components: dict[str, Any]
    transcendentals: Any
    convention: str
    mode: str


# ----------------------------------------------------------------------------- helpers
def _half(x):
    """x / 2, exact: an int when x is even, a Fraction when odd, a float for arrays."""
    if isinstance(x, int):
        return x // 2 if x % 2 == 0 else Fraction(x, 2)
    return x / 2


def _zeros() -> dict[str, Any]:
    return dict.fromkeys(FLOP_COMPONENTS, 0)


def forward_matmuls(cfg: TransformerConfig, batch_size, seq_len) -> dict[str, Matmul]:
    """The matmuls of one forward pass of `models.Transformer`, per component.

    Attention is counted in full (the masked half too), as XLA does; ``causal=True`` in
    `count_flops` halves it. ``count`` folds the layers, and batch x heads for attention.
    """
    b, t, n_layers = batch_size, seq_len, cfg.n_layers
    d, ff, vocab = cfg.d_model, cfg.d_ff, cfg.vocab_size
    hd = cfg.resolved_head_dim
    q_width, kv_width = cfg.n_heads * hd, cfg.resolved_n_kv_heads * hd
    tokens = b * t
    heads = n_layers * b * cfg.n_heads
    dense = n_layers - cfg.moe_layers  # layers with the dense MLP (all of a dense model)
    mm = {
        "q": Matmul(tokens, d, q_width, n_layers),
        "k": Matmul(tokens, d, kv_width, n_layers),
        "v": Matmul(tokens, d, kv_width, n_layers),
        "attn_scores": Matmul(t, hd, t, heads),  # Q K^T per (batch, head)
        "attn_values": Matmul(t, t, hd, heads),  # softmax(.) V per (batch, head)
        "attn_out": Matmul(tokens, q_width, d, n_layers),
        "mlp_in": Matmul(tokens, d, ff, dense),
        "mlp_out": Matmul(tokens, ff, d, dense),
        # Tied or not, the logits are a (tokens x d) @ (d x vocab) product.
        "logits": Matmul(tokens, d, vocab, 1),
    }
    if cfg.gated:
        mm["mlp_gate"] = Matmul(tokens, d, ff, dense)
    if cfg.is_mla:
        mm.update(mla_matmuls(cfg, b, t))
    if cfg.is_moe:
        mm.update(moe_matmuls(cfg, b, t))
    return mm


def mla_matmuls(cfg: TransformerConfig, b, t) -> dict[str, Matmul]:
    """Latent attention's matmuls (DeepSeek-V2 §2.1, `models.mla`), replacing q, k, v and the
    attention products: q directly (d -> h (d_h + d_R)) or through q_a (d -> q_lora_rank) and q_b;
    kv_a (d -> kv_lora_rank + d_R), kv_b (kv_lora_rank -> h (d_h + d_v)); scores over
    d_h + d_R dims per head, values of d_v dims; the output projection from h d_v."""
    L, d, h = cfg.n_layers, cfg.d_model, cfg.n_heads
    qk, vhd = cfg.qk_head_dim, cfg.resolved_v_head_dim
    tokens, heads = b * t, L * b * h
    mm = {"k": Matmul(tokens, d, 0, L), "v": Matmul(tokens, d, 0, L),
          "kv_a": Matmul(tokens, d, cfg.kv_lora_rank + cfg.qk_rope_head_dim, L),
          "kv_b": Matmul(tokens, cfg.kv_lora_rank, h * (cfg.resolved_head_dim + vhd), L),
          "attn_scores": Matmul(t, qk, t, heads), "attn_values": Matmul(t, t, vhd, heads),
          "attn_out": Matmul(tokens, h * vhd, d, L)}
    if cfg.q_lora_rank is None:
        mm["q"] = Matmul(tokens, d, h * qk, L)
    else:
        mm.update(q=Matmul(tokens, d, 0, L), q_a=Matmul(tokens, d, cfg.q_lora_rank, L),
                  q_b=Matmul(tokens, cfg.q_lora_rank, h * qk, L))
    return mm


def moe_matmuls(cfg: TransformerConfig, b, t) -> dict[str, Matmul]:
    """The MoE layers' matmuls (`models.moe`), per layer times ``moe_layers``:

    - router: (tokens x d) @ (d x n_experts);
    - dropless (capacity_factor None): every token through its k experts, tokens*k rows of the
      expert MLP (the active FLOPs; Fedus et al. 2022 §2: a token's cost is its k experts'), and
      the gate-weighted sum of the k outputs, a (1 x k) @ (k x d) product per token;
    - with capacity: n_experts * C rows per sequence (C = `TransformerConfig.expert_capacity` of
      seq_len), whether filled or not, and the dispatch and combine einsums of GShard (§2.2),
      (E C x t) @ (t x d) and (t x E C) @ (E C x d) per sequence ("dispatch");
    - shared experts: every token through an MLP of n_shared_experts * d_ff_shared.
    """
    L, d, E, k = cfg.moe_layers, cfg.d_model, cfg.n_experts, cfg.experts_per_token
    ff, tokens = cfg.resolved_d_ff_expert, b * t
    mm = {"router": Matmul(tokens, d, E, L)}
    if cfg.capacity_factor is None:
        rows = tokens * k
        mm["experts_combine"] = Matmul(1, k, d, tokens * L)
    else:
        cap = cfg.expert_capacity(t) if isinstance(t, int) else cfg.capacity_factor * t * k / E
        rows = b * E * cap
        mm["dispatch"] = Matmul(E * cap, t, d, b * L)
        mm["dispatch_combine"] = Matmul(t, E * cap, d, b * L)
    mm["experts"] = Matmul(rows, d, ff, L)
    if cfg.gated:
        mm["experts_gate"] = Matmul(rows, d, ff, L)
    mm["experts_out"] = Matmul(rows, ff, d, L)
    if cfg.n_shared_experts:
        width = cfg.n_shared_experts * cfg.resolved_d_ff_shared
        mm["shared_experts"] = Matmul(tokens, d, width, L)
        if cfg.gated:
            mm["shared_experts_gate"] = Matmul(tokens, d, width, L)
        mm["shared_experts_out"] = Matmul(tokens, width, d, L)
    return mm


def backward_matmuls(forward: dict[str, Matmul]) -> dict[str, list[Matmul]]:
    """The two products of each matmul's backward pass: dA = dC B^T and dB = A^T dC.

    (m x n)(n x p) -> dA: (m x p)(p x n), dB: (n x m)(m x p). Every input of every matmul of
    the model needs its gradient (all of them depend on parameters), so both are always done.
    """
    return {k: ([] if k in _SECOND_OPERAND_ONLY else [Matmul(m.m, m.p, m.n, m.count)])
            + [Matmul(m.n, m.m, m.p, m.count)] for k, m in forward.items()}


def step_matmuls(cfg: TransformerConfig, batch_size, seq_len, mode: str) -> dict[str, list[Matmul]]:
    """All matmuls of a forward, backward or train step, per component (`MATMUL_COMPONENT_OF`
    folds the several products of the MoE components into theirs)."""
    fwd = forward_matmuls(cfg, batch_size, seq_len)
    of = lambda k: MATMUL_COMPONENT_OF.get(k, k)  # noqa: E731
    out: dict[str, list[Matmul]] = {of(k): [] for k in fwd}
    if mode in ("forward", "train"):
        for k, m in fwd.items():
            out[of(k)].append(m)
    if mode in ("backward", "train"):
        for k, ms in backward_matmuls(fwd).items():
            out[of(k)].extend(ms)
    return out


def per_device_dot_flops(cfg: TransformerConfig, layout, *, batch_size, seq_len=None, mode: str = "train"):
    """Matmul FLOPs (2 m n p, "fma") one device runs in a step under a `models.Layout`.

    The batch is split over dp x fsdp, the queries' sequence over cp (keys and values are
    gathered: each device scores its t / cp queries against all t keys), the heads, the MLP
    width and the vocabulary over tp (a vocabulary tp does not divide stays whole, as
    `models.sharding` keeps it), the layers over pp. FSDP and sequence parallelism move data, not matmul work (Shoeybi
    et al. 2019 Sec. 3; Korthikanti et al. 2022 Sec. 4.2.2). The backward does two products
    per forward matmul (`backward_matmuls`).
    """
    seq_len = cfg.seq_len if seq_len is None else seq_len
    if cfg.is_moe or cfg.is_mla:
        return _per_device_moe_mla(cfg, layout, batch_size, seq_len, mode)
    cfg, batch_size, seq_len = promote(cfg, batch_size, seq_len)
    exact = isinstance(batch_size, int) and not cfg.relaxed
    div = (lambda n, g: -(-n // g)) if exact else (lambda n, g: n / g)  # noqa: E731
    b, t, t_all = div(batch_size, layout.dp * layout.fsdp), div(seq_len, layout.cp), seq_len
    layers, tp = div(cfg.n_layers, layout.pp), layout.tp
    d, hd = cfg.d_model, cfg.resolved_head_dim
    heads = div(cfg.n_heads, tp)
    qw, kvw = heads * hd, div(cfg.resolved_n_kv_heads, tp) * hd
    ff = div(cfg.d_ff, tp)
    tokens = b * t
    per_layer = 2 * tokens * d * (qw + 2 * kvw) + 2 * tokens * qw * d
    per_layer += 2 * tokens * d * ff * (3 if cfg.gated else 2)
    per_layer += 2 * 2 * b * heads * t * t_all * hd  # scores and values
    # the vocabulary is split only where tp divides it (models.sharding keeps it whole otherwise)
    vocab = cfg.vocab_size if exact and cfg.vocab_size % tp else div(cfg.vocab_size, tp)
    total = layers * per_layer + 2 * tokens * d * vocab
    factor = {"forward": 1, "backward": 2, "train": 3}[mode]
    return factor * total


#: Matmul components whose output (or contracted) width `models.sharding` splits over tp.
_TP_SPLIT = ("q", "k", "v", "q_b", "kv_b", "attn_scores", "attn_values", "attn_out", "mlp_in", "mlp_gate",
             "mlp_out", "experts", "shared_experts")


def _per_device_moe_mla(cfg: TransformerConfig, layout, batch_size, seq_len, mode: str):
    """`per_device_dot_flops` for a mixture of experts or latent attention: each component's
    step matmuls over the chips that split it. Tokens over dp x fsdp (and the queries over cp),
    the tp-split components (`_TP_SPLIT`: heads, MLP and expert widths) over tp, the vocabulary
    over tp where it divides, the layers over pp; the router, q_a, kv_a and the capacity path's
    dispatch are not split by tp. Routed experts assume balanced routing: under ep each chip
    runs its experts for the tokens sent to them, on average its own tokens' k choices. Exact on
    the 8-device CPU mesh for latent attention with capacity dispatch on dp=2,fsdp=2,tp=2,ep=2
    (tests/test_moe_flops.py), per component; the dropless path's ragged_dot is counted at top-k
    (what a grouped kernel does), not as the CPU lowering's dense form."""
    cfg, batch_size, seq_len = promote(cfg, batch_size, seq_len)
    data = layout.dp * layout.fsdp * layout.cp * layout.pp
    vocab_tp = layout.tp if isinstance(cfg.vocab_size, int) and cfg.vocab_size % layout.tp == 0 else 1
    fwd = forward_matmuls(cfg, batch_size, seq_len)
    bwd = backward_matmuls(fwd)
    total = 0
    for key, m in fwd.items():
        name = MATMUL_COMPONENT_OF.get(key, key)
        products = ([m] if mode in ("forward", "train") else []) + (bwd[key] if mode != "forward" else [])
        split = data if name != "logits" else layout.dp * layout.fsdp * layout.cp
        split *= layout.tp if name in _TP_SPLIT else (vocab_tp if name == "logits" else 1)
        for i, p in enumerate(products):
            work = fma_matmul(p)
            # the weight gradient of a projection tp does not split: GSPMD splits it over tp too
            # (its output gradient arrives tp-split; measured on the 8-device CPU mesh)
            last = mode != "forward" and i == len(products) - 1 and name in _TP_REPLICATED
            s = split * (layout.tp if last else 1)
            total = total + (work // s if isinstance(work, int) and work % s == 0 else
                             (Fraction(work, s) if isinstance(work, int) else work / s))
    return total


_TP_REPLICATED = ("router", "q_a", "kv_a")


def _matmul_convention(cost: Callable[[Matmul], Any]):
    def count(cfg, batch_size, seq_len, mode, causal):
        comps = _zeros()
        for name, ms in step_matmuls(cfg, batch_size, seq_len, mode).items():
            comps[name] = sum(cost(m) for m in ms)
        if causal:
            comps["attn_scores"] = _half(comps["attn_scores"])
            comps["attn_values"] = _half(comps["attn_values"])
        return comps, None

    return count


def fma_matmul(m: Matmul):
    """2*m*n*p per product: one fused multiply-add = 2 FLOPs (XLA's kFmaFlops = 2)."""
    return 2 * m.m * m.n * m.p * m.count


def no_fma_matmul(m: Matmul):
    """m*p*(2n - 1) per product: n multiplies and n - 1 adds per output element."""
    return m.m * m.p * (2 * m.n - 1) * m.count


_count_fma = _matmul_convention(fma_matmul)
_count_fma.__doc__ = "Every matmul as 2*m*n*p (one FMA = 2 FLOPs); nothing else (XLA's kFmaFlops = 2, xla/service/hlo_cost_analysis.cc)."
_count_no_fma = _matmul_convention(no_fma_matmul)
_count_no_fma.__doc__ = "Every matmul as m*p*(2n-1) (separate multiply and add: n multiplies, n - 1 adds per output); nothing else."


# ----------------------------------------------------------------------------- the "xla" convention
def _norm_forward(cfg: TransformerConfig, tokens, width=None):
    """One norm over (tokens, d_model) as XLA counts it; returns (flops, transcendentals).

    flax LayerNorm (use_fast_variance): mean and mean of squares (two reductions of d - 1 adds
    and a divide), the square, var = E[x^2] - E[x]^2 clamped at 0, + eps, rsqrt (1
    transcendental), x - mean, scale * rsqrt, the product, and + bias: 6 d + 4 per token,
    7 d + 4 with the bias. RMSNorm: square, one reduction, divide, + eps, rsqrt, two products:
    4 d + 1 per token. Measured on jax 0.10 (tests/test_flops.py checks them against XLA).
    ``width`` (default d_model) is the normalised axis, e.g. head_dim for a QK-norm.
    """
    d = cfg.d_model if width is None else width
    if cfg.norm == "layernorm":
        per_token = (7 if cfg.resolved_norm_bias else 6) * d + 4
    else:
        per_token = 4 * d + 1
    return tokens * per_token, tokens


def _norm_backward(cfg: TransformerConfig, tokens, width=None):
    """Backward of one norm, including its parameter-gradient reductions over the tokens."""
    d = cfg.d_model if width is None else width
    if cfg.norm == "layernorm":
        return (13 * d + 13) * tokens - 2 * d if cfg.resolved_norm_bias else (12 * d + 13) * tokens - d
    return (9 * d + 3) * tokens - d


_ACTIVATION_FORWARD = {"gelu": 8, "swiglu": 5, "geglu": 9, "gelu_exact": 66, "relu2": 2}  # per hidden element, gate product included
_ACTIVATION_BACKWARD = {"gelu": 14, "swiglu": 8, "geglu": 16, "gelu_exact": 10, "relu2": 4}
#: Transcendentals per hidden element, forward: tanh (gelu, geglu), logistic (swiglu), the exp
#: of jax's erf expansion (gelu_exact); squared ReLU has none.
_ACTIVATION_TRANSCENDENTALS = {"gelu": 1, "swiglu": 1, "geglu": 1, "gelu_exact": 1, "relu2": 0}


def _xla_forward_extra(cfg: TransformerConfig, b, t) -> tuple[dict[str, Any], Any]:
    """Non-matmul FLOPs and transcendentals of ``model(tokens)`` (logits), as XLA counts them."""
    n_layers, d, ff = cfg.n_layers, cfg.d_model, cfg.d_ff
    hd = cfg.resolved_head_dim
    h, kv = cfg.n_heads, cfg.resolved_n_kv_heads
    tokens = b * t
    scores = b * h * t * t  # elements of the score tensor, per layer
    c = _zeros()
    trans = 0

    # jnp.take (nnx.Embed) in "fill" mode: index bounds checks (6 per token) and a select per
    # gathered element; then the sqrt(d_model) scale (Gemma) and the learned-position add.
    c["embedding"] = (tokens * d + 6 * tokens + (tokens * d if cfg.embed_scale else 0)
                      + (tokens * d if cfg.position == "learned" else 0))
    norm_flops, norm_trans = _norm_forward(cfg, tokens)
    c["norms"] = (cfg.norms_per_layer * n_layers + 1) * norm_flops
    trans += (cfg.norms_per_layer * n_layers + 1) * norm_trans

    qkv_bias = 1 if cfg.resolved_qkv_bias else 0
    bias = 1 if cfg.bias else 0
    c["q"] = n_layers * qkv_bias * tokens * h * hd
    c["k"] = n_layers * qkv_bias * tokens * kv * hd
    c["v"] = n_layers * qkv_bias * tokens * kv * hd
    if cfg.position == "rope":
        # x1*cos - x2*sin and x2*cos + x1*sin on each half: 6 ops per pair = 3 per element,
        # on q and k, every layer; plus the cos/sin tables once per forward.
        rot = cfg.rotary_dim  # = hd unless partial rotary
        rope_heads = h + (1 if cfg.is_mla else kv)  # latent attention: one shared rotary key
        c["rope"] = 3 * n_layers * tokens * rope_heads * rot + _rope_table_flops(t, rot)
        trans += _rope_table_transcendentals(t, rot)
    # 1/sqrt(head_dim) scaling and the causal select on every score; the mask itself (iota
    # compare and tril select) on (t, t), built in every layer.
    c["attn_scores"] = n_layers * (2 * scores + 2 * t * t)
    # max-reduce (t - 1 per row), max with -inf (1 per row), subtract, exp (transcendental),
    # sum-reduce (t - 1 per row), divide: 4 per score - 1 per row.
    c["softmax"] = n_layers * (4 * scores - b * h * t)
    trans += n_layers * scores
    c["attn_out"] = n_layers * bias * tokens * d
    mlp_bias = 1 if cfg.resolved_mlp_bias else 0
    dense = n_layers - cfg.moe_layers  # the experts have no biases
    c["mlp_in"] = dense * mlp_bias * tokens * ff
    c["mlp_gate"] = dense * mlp_bias * tokens * ff if cfg.gated else 0
    c["mlp_out"] = dense * mlp_bias * tokens * d
    hidden = _hidden_elements(cfg, b, t)
    c["activation"] = _ACTIVATION_FORWARD[cfg.mlp] * hidden
    trans += _ACTIVATION_TRANSCENDENTALS[cfg.mlp] * hidden
    if cfg.is_moe:  # the router's exp (softmax) or logistic (sigmoid) on every (token, expert)
        trans += cfg.moe_layers * tokens * cfg.n_experts
    c["residual"] = n_layers * 2 * tokens * d
    return c, trans


def _hidden_elements(cfg: TransformerConfig, b, t):
    """MLP hidden units over all layers: tokens x d_ff per dense layer; per MoE layer the expert
    rows (tokens x k dropless, n_experts x capacity per sequence with a capacity factor) x
    d_ff_expert, and tokens x the shared experts' width."""
    tokens = b * t
    out = (cfg.n_layers - cfg.moe_layers) * tokens * cfg.d_ff
    if cfg.is_moe:
        mm = moe_matmuls(cfg, b, t)
        out = out + cfg.moe_layers * mm["experts"].m * cfg.resolved_d_ff_expert
        if cfg.n_shared_experts:
            out = out + cfg.moe_layers * tokens * cfg.n_shared_experts * cfg.resolved_d_ff_shared
    return out


def _rope_table_flops(t, hd):
    """positions x frequencies: one multiply per (position, pair); the frequencies are constants."""
    return _half(t * hd)


def _rope_table_transcendentals(t, hd):
    """cos and sin of every angle: t * head_dim / 2 each."""
    return t * hd


def _xla_backward_extra(cfg: TransformerConfig, b, t) -> dict[str, Any]:
    """Non-matmul FLOPs of the backward pass (loss forward and backward included), as XLA counts
    them. The backward has no transcendentals of its own: the forward's are reused."""
    n_layers, d, ff, vocab = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
    hd = cfg.resolved_head_dim
    h, kv = cfg.n_heads, cfg.resolved_n_kv_heads
    tokens = b * t
    scores = b * h * t * t
    c = _zeros()

    def bias_grad(width):  # sum of the output gradient over the tokens: (tokens - 1) adds each
        return tokens * width - width

    qkv_bias, bias = cfg.resolved_qkv_bias, cfg.bias
    # The gather's transpose: a select per gathered element; the sqrt(d_model) scale; the
    # position table's gradient (summed over the batch); tied: the head's and the lookup's
    # gradients of the one shared table are added (vocab * d_model).
    c["embedding"] = (tokens * d + (tokens * d if cfg.embed_scale else 0)
                      + (tokens * d - t * d if cfg.position == "learned" else 0)
                      + (vocab * d if cfg.tied_embeddings else 0))
    c["norms"] = (cfg.norms_per_layer * n_layers + 1) * _norm_backward(cfg, tokens)
    c["q"] = n_layers * (bias_grad(h * hd) if qkv_bias else 0)
    # k and v each add their input gradient to q's (the normed x fans out three ways).
    c["k"] = n_layers * ((bias_grad(kv * hd) if qkv_bias else 0) + tokens * d)
    c["v"] = n_layers * ((bias_grad(kv * hd) if qkv_bias else 0) + tokens * d)
    if cfg.position == "rope":
        # the transposed rotation: 4.5 per element of q and k
        c["rope"] = n_layers * 9 * tokens * (h + (1 if cfg.is_mla else kv)) * _half(cfg.rotary_dim)
    c["attn_scores"] = n_layers * 2 * scores  # through the causal select and the 1/sqrt(hd) scale
    c["softmax"] = n_layers * (6 * scores + 2 * b * h * t)
    c["attn_out"] = n_layers * (bias_grad(d) if bias else 0)
    mlp_bias = cfg.resolved_mlp_bias
    dense = n_layers - cfg.moe_layers
    c["mlp_in"] = dense * (bias_grad(ff) if mlp_bias else 0)
    if cfg.gated:
        c["mlp_gate"] = dense * ((bias_grad(ff) if mlp_bias else 0) + tokens * d)
    c["activation"] = _ACTIVATION_BACKWARD[cfg.mlp] * _hidden_elements(cfg, b, t)
    c["mlp_out"] = dense * (bias_grad(d) if mlp_bias else 0)
    # x feeds both the norm and the residual add, twice per block: one add each for its gradient.
    c["residual"] = n_layers * 2 * tokens * d
    # optax.softmax_cross_entropy_with_integer_labels, then the mean: forward 3 per logit +
    # 13 per token + 6, backward 2 per logit + 8 per token.
    c["loss"] = 5 * tokens * vocab + 21 * tokens + 6
    return c


def _norm_rows(cfg: TransformerConfig, tokens):
    """The QK-norms of one layer as (rows, width) pairs: per head, each of the tokens x heads
    rows of head_dim; full width, one row per token over the whole q or k projection."""
    hd, h, kv = cfg.resolved_head_dim, cfg.n_heads, cfg.resolved_n_kv_heads
    if cfg.qk_norm == "head":
        return [(tokens * h, hd), (tokens * kv, hd)]
    if cfg.qk_norm == "full":
        return [(tokens, h * hd), (tokens, kv * hd)]
    return []


def _latent_norm_widths(cfg: TransformerConfig) -> list:
    """Widths of latent attention's norms in one layer: q_lora_rank (when q is compressed) and
    kv_lora_rank (`models.mla`)."""
    if not cfg.is_mla:
        return []
    return ([cfg.q_lora_rank] if cfg.q_lora_rank is not None else []) + [cfg.kv_lora_rank]


def layer_norm_elements(cfg: TransformerConfig, tokens):
    """Elements one layer's norms normalise: its d_model norms on every token, and its QK-norms."""
    return cfg.norms_per_layer * tokens * cfg.d_model + sum(n * w for n, w in _norm_rows(cfg, tokens))


def _xla_arch_forward(cfg: TransformerConfig, b, t) -> tuple[dict[str, Any], Any]:
    """The forward work of the architecture options (`TransformerConfig`'s second group of
    fields) on top of `_xla_forward_extra`, as XLA counts it (measured on jax 0.10, float32,
    checked by tests/test_architectures.py against XLA on shapes not used to read them off)."""
    n_layers, d, vocab = cfg.n_layers, cfg.d_model, cfg.vocab_size
    tokens = b * t
    scores = b * cfg.n_heads * t * t
    c = _zeros()
    trans = 0
    rows = _norm_rows(cfg, tokens)
    for n, w in rows:  # QK-norms: the same per-row cost as a d_model norm, at their width
        f, tr = _norm_forward(cfg, n, w)
        c["norms"] += n_layers * f
        trans += n_layers * tr
    for w in _latent_norm_widths(cfg):  # latent attention's RMSNorms on c_Q and c_KV
        f, tr = _norm_forward(cfg, tokens, w)
        c["norms"] += n_layers * f
        trans += n_layers * tr
    if cfg.norm_offset:  # 1 + scale, once per norm (a vector, not per token)
        n_norms = cfg.norms_per_layer * n_layers + 1
        c["norms"] += n_norms * d + n_layers * sum(w for _, w in rows)
    if cfg.attn_softcap is not None:  # divide, tanh, multiply on every score
        c["attn_scores"] += n_layers * 2 * scores
        trans += n_layers * scores
    if cfg.sliding_window is not None:  # i - j and i - j < w beside the causal compare, then the and
        c["attn_scores"] += n_layers * _WINDOW_MASK_FORWARD * t * t
    if cfg.head_bias:
        c["logits"] += tokens * vocab
    if cfg.final_softcap is not None:
        c["logits"] += 2 * tokens * vocab
        trans += tokens * vocab
    return c, trans


_WINDOW_MASK_FORWARD = 2


def _xla_arch_backward(cfg: TransformerConfig, b, t) -> tuple[dict[str, Any], Any]:
    """The backward work of the architecture options, beside `_xla_backward_extra`."""
    n_layers, d, vocab = cfg.n_layers, cfg.d_model, cfg.vocab_size
    tokens = b * t
    scores = b * cfg.n_heads * t * t
    c = _zeros()
    trans = 0
    for n, w in _norm_rows(cfg, tokens):
        c["norms"] += n_layers * _norm_backward(cfg, n, w)
    for w in _latent_norm_widths(cfg):
        c["norms"] += n_layers * _norm_backward(cfg, tokens, w)
    if cfg.position == "rope" and cfg.rotary_fraction != 1:
        # partial rotary: the transposed slice and concatenate add the two zero-padded halves
        # of the cotangent, one add per element of q and k
        c["rope"] += n_layers * tokens * (cfg.n_heads + cfg.resolved_n_kv_heads) * cfg.resolved_head_dim
    if cfg.mlp == "gelu_exact":  # the erf's derivative, exp(-x^2 / 2)
        trans += _hidden_elements(cfg, b, t)
    if cfg.attn_softcap is not None:
        c["attn_scores"] += n_layers * 6 * scores
    if cfg.head_bias:
        c["logits"] += tokens * vocab - vocab
    if cfg.final_softcap is not None:
        c["logits"] += 6 * tokens * vocab
    return c, trans


def xla_optimizer_flops(cfg: TransformerConfig) -> tuple[Any, Any]:
    """optax.adamw update + apply_updates: 15 FLOPs and 1 sqrt per parameter, plus 7 FLOPs and
    2 powers for the bias corrections (measured; independent of how the parameters are split)."""
    p = count_params(cfg).total
    return 15 * p + 7, p + 2


def xla_ragged_dot_extra(cfg: TransformerConfig, batch_size, seq_len, mode: str):
    """Dot FLOPs XLA counts for the dropless experts beyond the top-k ("fma") count.

    `jax.lax.ragged_dot` lowers, on CPU (and on every platform but TPU and GPU), to
    ``_ragged_dot_general_impl`` (jax/_src/lax/lax.py): the lhs is broadcast to all n_experts
    groups, masked to each group's rows, and contracted densely, one dot of 2 m k n E FLOPs
    instead of 2 m k n; its transposes (the backward's two products) lower the same way. So XLA
    counts every expert matmul n_experts times over the (tokens * k) sorted rows: n_experts / k
    times the dense-equivalent work and n_experts times the active work (measured exactly,
    tests/test_moe_flops.py). On TPU, jax emits ``chlo.ragged_dot`` and XLA's compiled cost
    analysis of the forward counts 2 m k n, the active count (README, "Mixture of experts").
    The gate-weighted combine and the capacity path's einsums are plain dots, counted as is."""
    if not cfg.is_moe or cfg.capacity_factor is not None:
        return 0
    fwd = moe_matmuls(cfg, batch_size, seq_len)
    ragged = sum(fma_matmul(fwd[k]) for k in ("experts", "experts_gate", "experts_out") if k in fwd)
    return (cfg.n_experts - 1) * ragged * {"forward": 1, "backward": 2, "train": 3}[mode]


def _ragged_dot_masks(cfg: TransformerConfig, b, t, mode: str):
    """The elementwise work of the default ragged_dot lowering (`xla_ragged_dot_extra`): per
    (m x k) @ (g, k, n) product, forward, the two bound compares, their and, and the select of
    the lhs broadcast to (g, m, k): 4 g m k; backward (both products), 5 g m n + 4 g m k
    (measured on a bare ragged_dot, jax 0.10: within 2% of XLA's count of that part)."""
    if not cfg.is_moe or cfg.capacity_factor is not None:
        return 0
    mm = moe_matmuls(cfg, b, t)
    E = cfg.n_experts
    out = 0
    for key in ("experts", "experts_gate", "experts_out"):
        if key not in mm:
            continue
        m = mm[key]
        if mode in ("forward", "train"):
            out += 4 * E * m.m * m.n * m.count
        if mode in ("backward", "train"):
            out += (5 * E * m.m * m.p + 4 * E * m.m * m.n) * m.count
    return out


def _count_xla(cfg, batch_size, seq_len, mode, causal):
    """What XLA's HLO cost analysis counts for `models.Transformer` (mode "forward": the logits
    of ``model(tokens)``) and `models.train_step` (mode "train": forward, loss, backward and the
    AdamW update), lowered, float32, layers unrolled. The rules are those of xla/service/hlo_cost_analysis.cc.

    Matmuls count 2*m*n*p; elementwise ops 1 per output element; reductions (n - 1) per output;
    exp, log, tanh, logistic, rsqrt, sin, cos, power, sqrt count as transcendentals, not FLOPs.
    Mode "backward" is everything of "train" that is neither the forward nor the optimizer:
    the loss (forward and backward) and the backward pass. Exact (up to XLA's float32 rounding)
    when every size is >= 2 and head_dim >= 4: a size-1 axis lets jnp fold or reshape a few ops,
    which moves the count by a handful of FLOPs (tests/test_flops.py).
    """
    comps, _ = _count_fma(cfg, batch_size, seq_len, mode, causal)
    comps["experts"] = (comps["experts"] + xla_ragged_dot_extra(cfg, batch_size, seq_len, mode)
                        + _ragged_dot_masks(cfg, batch_size, seq_len, mode))
    trans = 0
    fwd_extra, fwd_trans = _xla_forward_extra(cfg, batch_size, seq_len)
    tokens = batch_size * seq_len
    parts = []
    if mode in ("forward", "train"):
        parts.append(fwd_extra)
        trans += fwd_trans
        arch, arch_trans = _xla_arch_forward(cfg, batch_size, seq_len)
        parts.append(arch)
        trans += arch_trans
    if mode in ("backward", "train"):
        parts.append(_xla_backward_extra(cfg, batch_size, seq_len))
        trans += tokens * cfg.vocab_size + tokens  # the loss's exp and log
        arch, arch_trans = _xla_arch_backward(cfg, batch_size, seq_len)
        parts.append(arch)
        trans += arch_trans
    if mode == "train":
        opt_flops, opt_trans = xla_optimizer_flops(cfg)
        parts.append({"optimizer": opt_flops})
        trans += opt_trans
    for part in parts:
        for name, value in part.items():
            comps[name] = comps[name] + value
    return comps, trans


# ----------------------------------------------------------------------------- published formulas
_MODE_SHARE = {"forward": (1, 3), "backward": (2, 3), "train": (3, 3)}


def _share(x, mode: str):
    """The forward (1/3), backward (2/3) or whole (3/3) part of a training count, exactly."""
    num, den = _MODE_SHARE[mode]
    if num == den:
        return x
    if isinstance(x, int):
        return x * num // den if (x * num) % den == 0 else Fraction(x * num, den)
    return x * num / den


def _count_6nd(cfg, batch_size, seq_len, mode, causal):
    """C = 6 N D for training: 2 N D forward, 4 N D backward (Kaplan et al. 2020 §2.1; Hoffmann
    et al. 2022). N = all parameters (Hoffmann's convention; tied embeddings counted once),
    D = batch_size * seq_len tokens. For a mixture of experts N is the active parameters
    (`ParamCount.active`: the k routed experts a token uses, not all of them), as MoE papers
    quote training compute (DeepSeek-V2 §3.2.1 and DeepSeek-V3 §4: FLOPs from activated
    parameters; Muennighoff et al. 2024, OLMoE §2)."""
    n, tokens = count_params(cfg).active, batch_size * seq_len
    per = {"forward": 2, "backward": 4, "train": 6}[mode]
    return {"6ND": per * n * tokens}, None


def _active_ff(cfg: TransformerConfig):
    """The MLP width one token passes through, averaged over the layers: d_ff in a dense layer,
    k * d_ff_expert + n_shared_experts * d_ff_shared in a MoE layer."""
    if not cfg.is_moe:
        return cfg.d_ff
    moe_ff = cfg.experts_per_token * cfg.resolved_d_ff_expert + cfg.n_shared_experts * cfg.resolved_d_ff_shared
    summed = cfg.dense_layers * cfg.d_ff + cfg.moe_layers * moe_ff
    if not isinstance(summed, int) or not isinstance(cfg.n_layers, int):
        return summed / cfg.n_layers
    q = Fraction(summed, cfg.n_layers)
    return q.numerator if q.denominator == 1 else q


def _count_kaplan(cfg, batch_size, seq_len, mode, causal):
    """Kaplan et al. 2020, Table 1, the non-embedding total: C_forward = 2N + 2 n_layer n_ctx d_attn
    per token with N = 2 d_model n_layer (2 d_attn + d_ff), row by row (QKV, mask, project,
    feedforward); backward = 2 x forward. d_attn = n_heads * head_dim, n_ctx = seq_len. The
    formula assumes multi-head attention and a two-matrix MLP: GQA and gated MLPs are not in it.
    For a mixture of experts the feedforward row takes the width a token passes through, the
    active one (k routed experts + the shared ones, averaged over the layers), and no router;
    latent attention is not in the formula (its d_attn is n_heads * head_dim as printed)."""
    n_layers, d, ff = cfg.n_layers, cfg.d_model, _active_ff(cfg)
    d_attn = cfg.n_heads * cfg.resolved_head_dim
    tokens = batch_size * seq_len
    rows = {
        "qkv": 2 * n_layers * d * 3 * d_attn,
        "mask": 2 * n_layers * seq_len * d_attn,
        "project": 2 * n_layers * d_attn * d,
        "feedforward": 2 * n_layers * 2 * d * ff,
    }
    factor = {"forward": 1, "backward": 2, "train": 3}[mode]
    return {k: factor * tokens * v for k, v in rows.items()}, None


def _count_palm(cfg, batch_size, seq_len, mode, causal):
    """PaLM (Chowdhery et al. 2022), Appendix B: training FLOPs per token = 6N + 12 L H Q T
    (N parameters, L layers, H heads, Q head dim, T sequence length), as nanoGPT's
    `estimate_mfu`; forward is one third of it. N = all parameters, as PaLM 540B's 540.35B; for
    a mixture of experts the active parameters (MaxText's and Megatron's MoE MFU count the
    experts a token is routed to). Q is head_dim (latent attention: its non-rotary part, as printed)."""
    tokens = batch_size * seq_len
    n = count_params(cfg).active
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len
    return {"6N": _share(6 * n * tokens, mode), "12LHQT": _share(attn * tokens, mode)}, None


def _count_megatron(cfg, batch_size, seq_len, mode, causal, *, recompute: bool = False):
    """Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters",
    §5.1): per iteration 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) without activation
    recomputation, 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) with it (an extra forward). Expanded
    to integers; h = d_model, l = n_layers, V = vocab; assumes d_ff = 4h and multi-head attention.
    Forward is one third of the no-recompute count. A dense-model formula: it has no experts or
    latent attention and is reproduced as printed for every config (for a mixture of experts
    it counts one d_ff = 4h MLP per layer, whatever the experts)."""
    b, s, n_layers, h, v = batch_size, seq_len, cfg.n_layers, cfg.d_model, cfg.vocab_size
    if recompute:
        terms = {"dense": 96 * b * s * n_layers * h * h, "attention": 16 * b * s * s * n_layers * h,
                 "logits": 6 * b * s * h * v}
        if mode != "train":
            raise ValueError("megatron-recompute counts a whole training iteration; use mode='train'")
        return terms, None
    terms = {"dense": 72 * b * s * n_layers * h * h, "attention": 12 * b * s * s * n_layers * h,
             "logits": 6 * b * s * h * v}
    return {k: _share(x, mode) for k, x in terms.items()}, None


def _count_megatron_recompute(cfg, batch_size, seq_len, mode, causal):
    """Megatron's count with full activation recomputation (96 instead of 72); train only."""
    return _count_megatron(cfg, batch_size, seq_len, mode, causal, recompute=True)


def _count_chinchilla(cfg, batch_size, seq_len, mode, causal):
    """Hoffmann et al. 2022, Appendix F, forward pass per sequence: embeddings 2 s V d; QKV
    2*3 s d (k h); attention logits 2 s^2 (k h); softmax 3 h s^2; softmax @ value 2 s^2 (k h);
    final linear 2 s (k h) d; dense block 2 s (d ff + d ff) per layer; final logits 2 s d V.
    Backward = 2 x forward. k = head_dim (key size), h = n_heads. For a mixture of experts the
    dense block takes the active width (k routed experts + shared, averaged over the layers)."""
    s, n_layers, d, ff, v = seq_len, cfg.n_layers, cfg.d_model, _active_ff(cfg), cfg.vocab_size
    kh, h = cfg.n_heads * cfg.resolved_head_dim, cfg.n_heads
    rows = {
        "embeddings": 2 * s * v * d,
        "qkv": n_layers * 2 * 3 * s * d * kh,
        "attention_logits": n_layers * 2 * s * s * kh,
        "softmax": n_layers * 3 * h * s * s,
        "softmax_values": n_layers * 2 * s * s * kh,
        "final_linear": n_layers * 2 * s * kh * d,
        "dense": n_layers * 2 * s * (d * ff + d * ff),
        "final_logits": 2 * s * d * v,
    }
    factor = {"forward": 1, "backward": 2, "train": 3}[mode]
    return {k: factor * batch_size * x for k, x in rows.items()}, None


def _count_deepseek(cfg, batch_size, seq_len, mode, causal):
    """DeepSeek LLM (DeepSeek-AI 2024), Eq. 2: non-embedding training FLOPs per token
    M = 72 n_layer d_model^2 + 12 n_layer d_model l_seq; forward is one third of it. A dense-model
    formula, as printed for every config: DeepSeekMoE, V2 and V3 publish no closed form of their
    own, quoting FLOPs from activated parameters (which "6nd" gives, with N active)."""
    tokens, n_layers, d = batch_size * seq_len, cfg.n_layers, cfg.d_model
    terms = {"72Ld^2": 72 * n_layers * d * d * tokens, "12Ld*seq": 12 * n_layers * d * seq_len * tokens}
    return {k: _share(x, mode) for k, x in terms.items()}, None


#: convention name -> function(cfg, batch_size, seq_len, mode, causal) -> (components, transcendentals)
CONVENTIONS: dict[str, Callable] = {
    "fma": _count_fma,
    "no_fma": _count_no_fma,
    "xla": _count_xla,
    "6nd": _count_6nd,
    "kaplan": _count_kaplan,
    "palm": _count_palm,
    "megatron": _count_megatron,
    "megatron-recompute": _count_megatron_recompute,
    "chinchilla": _count_chinchilla,
    "deepseek": _count_deepseek,
}
#: The conventions that count our model's own components (and take ``causal``).
COMPONENT_CONVENTIONS = ("fma", "no_fma", "xla")


# ----------------------------------------------------------------------------- recomputation
#: Layer components the backward pass can re-run (the forward work of one block).
_LAYER_COMPONENTS = ("norms", "q", "k", "v", "rope", "attn_scores", "softmax", "attn_values", "attn_out",
                     "mlp_in", "mlp_gate", "activation", "mlp_out", "residual",
                     # mixture of experts and latent attention (recomputation not validated for them)
                     "q_a", "q_b", "kv_a", "kv_b", "router", "experts", "shared_experts", "dispatch")
#: Matmuls without batch dimensions: their outputs are what ``dots_with_no_batch_dims_saveable``
#: keeps, so the "dots" policy does not redo them.
_NO_BATCH_DOTS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_gate", "q_a", "q_b", "kv_a", "kv_b", "router",
                  "shared_experts")


def recompute_flops(cfg: TransformerConfig, *, batch_size=1, seq_len=None, layout=None,
                    convention: str = "xla", causal: bool = False) -> dict[str, Any]:
    """FLOPs the backward pass spends re-running forward work under ``layout``, per component.

    Hardware FLOPs (HFU) = model FLOPs (MFU) + these (Chowdhery et al. 2022, "PaLM", App. B:
    HFU counts the rematerialised work, MFU does not). Per policy, as JAX's partial evaluation
    replays a ``jax.checkpoint``-ed block (only what its backward reads):

    - "none": nothing; "selective": the score matmul, its scale and causal select, and the
      softmax forward (the backward of the score-value product reads the probabilities and v,
      not its output; Korthikanti et al. 2022, Sec. 5);
    - "full": every forward op of the layer except the down projection (matmul and bias) and
      the last residual add, whose outputs no backward op reads;
    - "dots": "full" less the matmuls without batch dimensions (q, k, v, output projection, up and
      gate projections), whose saved outputs are read instead;
    - ``attention="flash"``: the backward recomputes each score block once more (Dao et al.
      2022, Algorithm 2, line 11): one more score matmul, whatever the policy. Flash's own
      elementwise work (online-softmax rescales) is counted as the dot path's softmax.

    Exact for "full" and "selective" against XLA's count of the lowered step (tests); the "dots"
    and flash elementwise terms are within 0.2% (tests/test_flops_remat.py says by how much).
    """
    from models.layout import Layout

    layout = Layout() if layout is None else layout
    if not isinstance(layout, Layout):
        raise ValueError(f"layout={layout!r}: must be a Layout (e.g. Layout.parse('remat=full'))")
    if not isinstance(convention, str) or convention not in COMPONENT_CONVENTIONS:
        raise ValueError(f"convention={convention!r}: recomputation is counted for "
                         f"{', '.join(COMPONENT_CONVENTIONS)}")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    fwd = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="forward", convention=convention,
                      causal=causal).components
    cfg, b, t = promote(cfg, batch_size, seq_len)
    out = _zeros()
    layer = {k: fwd[k] for k in _LAYER_COMPONENTS}
    if convention == "xla":
        # the final norm and the rope tables are outside the blocks
        layer["norms"] = layer["norms"] - _norm_forward(cfg, b * t)[0]
        if cfg.position == "rope":
            layer["rope"] = layer["rope"] - _rope_table_flops(t, cfg.resolved_head_dim)
    if layout.remat in ("full", "dots"):
        keep = dict(layer)
        mlp_out_matmul = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="forward",
                                     convention="fma" if convention == "xla" else convention,
                                     causal=causal).components
        keep["mlp_out"] = 0
        if convention == "xla":
            keep["residual"] = layer["residual"] - cfg.n_layers * b * t * cfg.d_model
        if layout.remat == "dots":
            for k in _NO_BATCH_DOTS:
                keep[k] = keep[k] - mlp_out_matmul[k]
        out.update(keep)
    elif layout.remat == "selective" and layout.attention == "dot":
        out["attn_scores"] = layer["attn_scores"]
        out["softmax"] = layer["softmax"]
    if layout.attention == "flash":
        matmul = fma_matmul if convention != "no_fma" else no_fma_matmul
        extra = matmul(forward_matmuls(cfg, b, t)["attn_scores"])
        out["attn_scores"] = out["attn_scores"] + (_half(extra) if causal else extra)
    return out


def count_flops(cfg: TransformerConfig, *, batch_size=1, seq_len=None, mode: str = "forward",
                convention: str = "xla", causal: bool = False, layout=None,
                block_skip: int | None = None) -> FlopCount:
    """FLOPs of one forward, backward or training step of ``models.Transformer(cfg)``.

    Args:
      cfg: the model (ints for exact counts; `jnp` sizes for the differentiable relaxation).
      batch_size: sequences per step.
      seq_len: tokens per sequence; None = ``cfg.seq_len``.
      mode: "forward", "backward" or "train" (forward + backward; for "xla" also AdamW).
      convention: one of `CONVENTIONS` (see each function's docstring for what it includes).
      causal: halve the attention-score and attention-value matmuls (the MFU convention of
        MaxText and Megatron); only for "fma", "no_fma" and "xla", which otherwise count them
        in full, as XLA does.
      layout: a `models.Layout`: "backward" and "train" then include the forward work its
        remat policy and attention recompute (`recompute_flops`): hardware FLOPs (HFU). Without
        it: model FLOPs (MFU). Only for "fma", "no_fma" and "xla".
      block_skip: None (attention counted over the full s x s scores, what the materialised
        program executes and XLA counts), or a tile size k: the attention matmuls a
        block-skipping kernel executes, every k x k tile of the scores holding at least one
        visible (causal, in-window) key, and no other (`attention_tiles`); k = 1 is the exact
        visible band. "fma" convention only, integer sizes, not with ``causal``.

    Returns:
      A `FlopCount`. For "fma", "no_fma" and "xla" the components are `FLOP_COMPONENTS`; for a
      published formula they are the formula's own terms.

    Example:
      >>> from models import presets
      >>> c = count_flops(presets.get("gpt2"), convention="fma", mode="train")
      >>> c.total == 3 * count_flops(presets.get("gpt2"), convention="fma").total
      True
    """
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}: unknown; valid: {', '.join(CONVENTIONS)}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode={mode!r}: unknown; valid: {', '.join(MODES)}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal={causal!r}: must be True or False")
    if causal and convention not in COMPONENT_CONVENTIONS:
        raise ValueError(
            f"causal=True applies to the conventions {', '.join(COMPONENT_CONVENTIONS)}; "
            f"the published formula {convention!r} is reproduced as printed"
        )
    require_config(cfg)
    seq_len = cfg.seq_len if seq_len is None else seq_len
    check_size("batch_size", batch_size)
    check_size("seq_len", seq_len)
    if (cfg.position == "learned" and isinstance(seq_len, int) and isinstance(cfg.seq_len, int)
            and seq_len > cfg.seq_len):
        raise ValueError(
            f"seq_len={seq_len}: exceeds the learned position table (cfg.seq_len={cfg.seq_len}); "
            "pass at most cfg.seq_len, or raise cfg.seq_len"
        )
    cfg, batch_size, seq_len = promote(cfg, batch_size, seq_len)
    comps, trans = CONVENTIONS[convention](cfg, batch_size, seq_len, mode, causal)
    if layout is not None and mode != "forward":
        if convention not in COMPONENT_CONVENTIONS:
            raise ValueError(f"layout= counts recomputation for the conventions {', '.join(COMPONENT_CONVENTIONS)}; "
                             f"the published formula {convention!r} is reproduced as printed")
        extra = recompute_flops(cfg, batch_size=batch_size, seq_len=seq_len, layout=layout,
                                convention=convention, causal=causal)
        comps = {k: comps[k] + extra[k] for k in comps}
    if block_skip is not None:
        comps = _block_skipped(cfg, seq_len, comps, block_skip, convention, causal)
    return FlopCount(total=sum(comps.values()), components=comps, transcendentals=trans,
                     convention=convention, mode=mode)


def attention_tiles(t: int, block: int, window: int | None = None) -> int:
    """Score elements a block-skipping kernel computes for one (sequence, head, layer): the
    k x k tiles (k = ``block``; the last partial tile counted whole) that hold at least one key
    j <= i with i - j < window (window None: the causal prefix). Tile (qi, kj) at offset
    d = qi - kj >= 0 is visible iff d == 0 or its nearest pair, d k - (k - 1) apart, is inside
    the window: d <= (window + k - 2) // k. With n = ceil(t / k) tiles per side and D the largest
    visible offset, (D + 1) n - D (D + 1) / 2 tiles (FlashAttention-2's causal tile skipping, Dao
    2023, §3.1; Mistral's banded window, Jiang et al. 2023).

    >>> attention_tiles(8, 1), attention_tiles(8, 1, window=3)  # 8*9/2, 1+2+3*6
    (36, 21)
    """
    for name, v in (("t", t), ("block", block)):
        check_size(name, v)
    n = -(-t // block)
    d = n - 1 if window is None else min(n - 1, (window + block - 2) // block)
    return block * block * ((d + 1) * n - d * (d + 1) // 2)


def _block_skipped(cfg: TransformerConfig, t, comps: dict, block, convention: str, causal: bool) -> dict:
    """The attention matmuls scaled from the full t x t scores to the tiles a kernel executes."""
    if convention != "fma":
        raise ValueError(f"block_skip={block!r}: counts what a kernel executes under the 'fma' "
                         f"convention only; got convention={convention!r}")
    if causal:
        raise ValueError("block_skip already skips the masked tiles; drop causal=True")
    if cfg.relaxed or not isinstance(t, int):
        raise ValueError("block_skip needs integer sizes (a tile count is not continuous)")
    check_size("block_skip", block)
    executed = sum(attention_tiles(t, block, w) for w in cfg.layer_windows())
    full = cfg.n_layers * t * t
    out = dict(comps)
    for name in ("attn_scores", "attn_values"):
        x = comps[name] * executed
        out[name] = x // full if x % full == 0 else Fraction(x, full)
    return out


# ----------------------------------------------------------------------------- many shapes at once
#: The sizes `count_flops_many` can vary.
VARIABLE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "n_kv_heads", "head_dim")


def count_flops_many(template: TransformerConfig, *, batch_size=1, seq_len=None, mode: str = "forward",
                     convention: str = "xla", causal: bool = False, **sizes) -> Any:
    """Total FLOPs of many shapes at once: arrays of sizes in, an array of counts out (jitted).

    ``template`` fixes everything not given in ``sizes`` (the options, and the sizes not varied);
    ``sizes`` maps fields of `VARIABLE_FIELDS` to arrays (broadcast together, float32). The same
    closed form as `count_flops` runs on whole arrays, so a million shapes cost one fused XLA
    kernel. Divisibility is not checked: this is the planner's continuous relaxation.

    Example:
      >>> import numpy as np
      >>> from models import presets
      >>> out = count_flops_many(presets.get("gpt2"), d_model=np.array([768.0, 1024.0]),
      ...                        n_layers=np.array([12.0, 24.0]), convention="fma")
      >>> out.shape
      (2,)
    """
    unknown = sorted(set(sizes) - set(VARIABLE_FIELDS))
    if unknown:
        raise ValueError(f"cannot vary {unknown}; valid: {', '.join(VARIABLE_FIELDS)}")
    if not sizes:
        raise ValueError(f"give at least one array of sizes, e.g. d_model=...; valid: {', '.join(VARIABLE_FIELDS)}")
    # Validate the scalar arguments once, eagerly, with the template.
    count_flops(template, batch_size=batch_size, seq_len=seq_len, mode=mode, convention=convention, causal=causal)
    names = tuple(sorted(sizes))
    fn = _many_fn(template, names, batch_size, seq_len, mode, convention, causal)
    return fn(*(jnp.asarray(sizes[n], jnp.float32) for n in names))


@functools.lru_cache(maxsize=64)
def _many_fn(template, names, batch_size, seq_len, mode, convention, causal) -> Callable:
    """The jitted total for one template and set of varied fields (cached: compiled once)."""

    def total(*arrays):
        cfg = dataclasses.replace(template, **dict(zip(names, arrays)))
        return count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode,
                           convention=convention, causal=causal).total

    return jax.jit(total)
