"""The planner: the compute-optimal shape for a budget, by gradient, then rounded and checked.

Method (`plan`):

1. **Relax.** A shape is (log d_model, log n_layers) — and log(d_ff / d_model) with
   ``free_mlp_ratio`` — on top of a base config that fixes vocabulary, sequence length, MLP,
   norm and position kind, tying and the KV-head grouping. Sizes become `jnp` floats and the
   closed forms (`count_params`, `count_flops`, `roofline`) become differentiable functions.
2. **Eliminate tokens through the budget.** D = budget / (training FLOPs per token of that shape,
   under the chosen convention); with a hardware budget, D = the run's wall time / (roofline
   step time per token on ``chips`` chips), so shapes that run efficiently earn more tokens. The
   predicted loss L(N, D) of the scaling law is then a function of the shape alone.
3. **Minimise with Optax** (Adam on the log-sizes, a projection onto the bounds and
   constraints after each step), from a few starting points at once (`vmap`), under `jit`.
4. **Round** to hardware-friendly shapes around the optimum (d_model a multiple of 128, head_dim
   64 or 128, integer layers, d_ff a multiple of 128), evaluate that neighbourhood exactly
   (integer FLOPs, whole steps; on hardware budgets, memory with FSDP-sharded state and the
   largest gradient-accumulation micro-batch that fits), and keep the best one that satisfies
   the constraints. Its exact cost never exceeds the budget.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import presets
from models.config import TransformerConfig
from models.layout import Layout
from planner.flops import CONVENTIONS, count_flops
from planner.laws import ScalingLaw, get_law
from planner.memory import estimate_memory
from planner.params import count_params

#: A Llama-style base: SwiGLU (d_ff = 2.6875 d_model as Llama 2 7B), RMSNorm, RoPE, no biases,
#: untied head, Llama's 32k vocabulary, 2048-token context.
DEFAULT_BASE = TransformerConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                                 seq_len=2048, mlp="swiglu", norm="rmsnorm", position="rope", bias=False,
                                 tied_embeddings=False)

#: Default d_model / n_layers range. The scaling law has no shape term, and under a FLOP count
#: with attention (every convention but 6nd) wider-and-shallower is always cheaper per parameter,
#: so without a bound the optimum runs to one layer. Kaplan et al. 2020 (Fig. 5) find the loss
#: within a few percent over d_model / n_layer of about 20 to 200 at fixed N; trained models sit
#: near 100-130 (GPT-3 175B 128, Chinchilla 102, Llama 2 7B 128, Llama 2 70B 102).
DEFAULT_ASPECT = (64.0, 192.0)
D_MODEL_RANGE = (128, 2**17)
LAYER_RANGE = (1, 1024)


class Plan(NamedTuple):
    """A planned training run.

    Attributes:
      config: the rounded, valid shape.
      params: its parameters (in the law's N: total or non-embedding).
      tokens: training tokens (whole steps x batch tokens).
      flops: exact training FLOPs under ``convention`` (steps x FLOPs of one step).
      loss: the law's predicted loss.
      budget_used: flops / budget (the hardware budget's FLOPs at the achieved rate).
      steps, batch_size: optimiser steps and sequences per step.
      continuous: the optimum before rounding: d_model, n_layers, d_ff, params, tokens, loss.
      step_time, mfu, days, memory_per_chip: with a hardware target, else None.
      inference: with ``inference_tokens``, both plans' training + inference FLOPs (else None).
      micro_batch: sequences per chip per forward/backward pass (gradient accumulation), chosen
        as the largest divisor of the per-chip batch whose memory fits; hardware budgets only.
      convention, law: what was counted and predicted with.
      notes: warnings about the result: a bound the optimum sits at, an unusual shape (an odd
        head count, a KV grouping other than the base's), memory within 3% of the limit, a
        predicted loss above ln(vocab) (worse than a uniform guess). Empty when none applies.
    """

    config: TransformerConfig
    params: int
    tokens: int
    flops: Any
    loss: float
    budget_used: float
    steps: int
    batch_size: int
    continuous: dict
    step_time: float | None
    mfu: float | None
    days: float | None
    memory_per_chip: float | None
    micro_batch: int | None
    inference: dict | None
    convention: str
    law: ScalingLaw
    budget: float
    notes: tuple[str, ...] = ()
    layout: Any = None  # hardware budgets: the chosen models.Layout (mesh, remat policy, micro-batch)
    memory: Any = None  # hardware budgets: its planner.memory.MemoryEstimate (breakdown per chip)
    layout_result: Any = None  # hardware budgets searched by planner.layouts: the best LayoutResult
    moe: dict | None = None  # plan(moe=True): the experts chosen, total and active parameters, per-G losses


def inference_aware(law: ScalingLaw, target_loss: float, inference_tokens: float, *,
                    reference_params: float) -> dict:
    """Sardana et al. 2024 ("Beyond Chinchilla-Optimal"): the (N, D_train) that reaches
    ``target_loss`` for the least training + inference compute, 6 N D_train + 2 N D_inference.

    On the iso-loss curve D(N) = (B / (L - E - A N^-alpha))^(1/beta), defined for
    N > (A / (L - E))^(1/alpha); the total is minimised over log N on a fine grid, then refined by
    golden-section search. ``reference_params`` (the compute-optimal N) sets the search range.
    """
    if not (isinstance(inference_tokens, int | float) and math.isfinite(inference_tokens) and inference_tokens >= 0):
        raise ValueError(f"inference_tokens={inference_tokens!r}: must be a non-negative number of tokens")
    gap = target_loss - law.E
    if gap <= 0:
        raise ValueError(f"target loss {target_loss:.4g} is at or below the law's E={law.E:.4g}: unreachable")
    n_min = (law.A / gap) ** (1 / law.alpha)

    def tokens(log_n):
        rest = gap - law.A * math.exp(-law.alpha * log_n)
        return (law.B / rest) ** (1 / law.beta) if rest > 0 else math.inf

    def cost(log_n):
        n = math.exp(log_n)
        return 6 * n * tokens(log_n) + 2 * n * inference_tokens

    lo, hi = math.log(n_min) + 1e-9, math.log(reference_params) + math.log(100.0)
    grid = np.linspace(lo, hi, 400)
    k = int(np.argmin([cost(g) for g in grid]))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if cost(c) < cost(d):
            b = d
        else:
            a = c
    log_n = (a + b) / 2
    n, d = math.exp(log_n), tokens(log_n)
    return {"params": n, "tokens": d, "train_flops": 6 * n * d, "inference_flops": 2 * n * inference_tokens,
            "total_flops": 6 * n * d + 2 * n * inference_tokens, "loss": float(law.loss(n, d))}


def deepseek_batch_tokens(budget_flops: float) -> float:
    """Optimal batch size in tokens, B_opt = 0.2920 C^0.3271 (DeepSeek-AI 2024, "DeepSeek LLM",
    §3.1, fitted on their IsoFLOP runs). The default batch of a plan."""
    return 0.2920 * budget_flops**0.3271


class _Setup(NamedTuple):
    """Everything static about one search (hashable, so the jitted search is compiled once)."""

    base: TransformerConfig
    law: ScalingLaw
    convention: str
    head_dim: int
    kv_group: int
    free_mlp_ratio: bool
    mlp_ratio: float
    aspect: tuple[float, float] | None
    fixed_layers: int | None
    fixed_d_model: int | None
    hw: Any  # hardware.Spec or None
    chips: int
    dtype: str
    mfu: float | None
    moe: tuple[int, int] | None = None  # (expansion E, granularity G) of a mixture-of-experts search


def _shape(s: _Setup, x, batch_size):
    """A relaxed config from the log-sizes x = (log d, log L, log ratio)."""
    d, n_layers, ratio = jnp.exp(x[0]), jnp.exp(x[1]), jnp.exp(x[2])
    n_heads = d / s.head_dim
    return dataclasses.replace(
        s.base, d_model=d, n_layers=n_layers, d_ff=ratio * d, n_heads=n_heads,
        n_kv_heads=None if s.kv_group == 1 else n_heads / s.kv_group, head_dim=jnp.float32(s.head_dim),
    )


def _log_loss(law: ScalingLaw, log_n, log_d):
    """L = E + A N^-alpha + B D^-beta from log N and log D. The search works in logs: a budget of
    1e21 over a step of 1e18 FLOPs would otherwise send cotangents below float32's normal range
    (XLA on CPU flushes those to zero, and the gradient with them)."""
    return law.E + law.A * jnp.exp(-law.alpha * log_n) + law.B * jnp.exp(-law.beta * log_d)


def _law_params(s: _Setup, cfg):
    """N as the law counts it: all parameters or the non-embedding ones (for the MoE law, the
    non-embedding parameters with every expert)."""
    if s.moe is not None and not cfg.is_moe:  # the relaxation: the dense shape plus its experts
        return count_params(cfg).non_embedding + _moe_extra(s, cfg)[0]
    pc = count_params(cfg)
    return pc.total if s.law.params == "total" else pc.non_embedding


def _moe_extra(s: _Setup, cfg):
    """(parameters, training FLOPs per token) an MoE of the law's family adds to its dense
    shape: E x G experts of width d_ff / G replace each MLP, G routed per token (Krajewski et
    al. 2024 §3), so a token's MLP FLOPs are unchanged; the experts add (E - 1) MLPs of
    parameters per layer and the router a d_model x (E G) matrix, 2 FLOPs per weight per token
    forward, 4 backward. The relaxation's form; rounded shapes are counted exactly
    (`count_params`, `count_flops` of the MoE config)."""
    expansion, g = s.moe
    mats = 3 if cfg.gated else 2
    mlp = mats * cfg.d_model * cfg.d_ff
    router = cfg.d_model * expansion * g
    return cfg.n_layers * ((expansion - 1) * mlp + router), 6 * cfg.n_layers * router


def dense_base(cfg: TransformerConfig) -> TransformerConfig:
    """The dense counterpart of a mixture-of-experts base (a dense config unchanged): the same
    model with one MLP per layer, the wider of the config's dense MLP (d_ff) and the MLP a token
    uses, top-k x d_ff_expert plus the shared experts (OLMoE-1B-7B: 8 x 1024 = 8192; DeepSeek-V3:
    both 18432). The planner searches dense shapes on it; ``plan(moe=True)`` puts experts back
    on them (`moe_shape`)."""
    if not cfg.is_moe:
        return cfg
    from planner.timing import dense_fields

    width = cfg.experts_per_token * cfg.resolved_d_ff_expert + cfg.n_shared_experts * cfg.resolved_d_ff_shared
    return cfg.replace(**dense_fields(), d_ff=max(cfg.d_ff, width))


def moe_shape(cfg: TransformerConfig, granularity: int, expansion: int = 64, *, multiple: int = 32
              ) -> TransformerConfig:
    """The mixture of experts of Krajewski et al. 2024's family on a dense shape: every MLP
    replaced by ``expansion x granularity`` experts of width d_ff / granularity (rounded to
    ``multiple``), ``granularity`` of them routed per token (softmax router, dropless).

    >>> from models import presets
    >>> m = moe_shape(presets.get("gpt2"), 4)
    >>> m.n_experts, m.experts_per_token, m.d_ff_expert
    (256, 4, 768)
    """
    width = max(multiple, multiple * round(cfg.d_ff / granularity / multiple))
    return cfg.replace(n_experts=expansion * granularity, experts_per_token=granularity, d_ff_expert=width)


def moe_counts(cfg: TransformerConfig, *, batch_size: int, convention: str = "xla") -> dict:
    """Exact counts of an MoE of `moe_shape`'s family (every layer routed, no shared experts,
    softmax router, no biases) from dense counts: its routed experts hold as many parameters as
    a dense MLP of width n_experts x d_ff_expert, a token's experts compute as a dense MLP of
    width top-k x d_ff_expert, and the router adds a d_model x n_experts matrix per layer
    (2 FLOPs per weight per token forward, 4 backward). Keys: ``non_embedding`` and ``total``
    (all experts), ``active`` (what a token touches), ``step_flops`` (one training step under
    ``convention``). Exact ints from ints."""
    if not cfg.is_moe or cfg.n_shared_experts or cfg.dense_layers or cfg.attention_kind != "mha":
        raise ValueError("moe_counts: a config of moe_shape's family (routed experts in every layer, no shared "
                         "experts, standard attention)")
    w, n, k = cfg.resolved_d_ff_expert, cfg.n_experts, cfg.experts_per_token
    from planner.timing import dense_fields

    plain = dense_fields()
    router = cfg.n_layers * cfg.d_model * n
    every = count_params(cfg.replace(**plain, d_ff=n * w))
    touched = count_params(cfg.replace(**plain, d_ff=k * w))
    flops = count_flops(cfg.replace(**plain, d_ff=k * w), batch_size=batch_size, seq_len=cfg.seq_len, mode="train",
                        convention=convention).total
    return {"non_embedding": every.non_embedding + router, "total": every.total + router,
            "active": touched.total + router, "step_flops": flops + 6 * router * batch_size * cfg.seq_len}


def granularity_of(cfg: TransformerConfig) -> int:
    """G of an MoE config in the law's sense: the experts each token is routed to."""
    return cfg.experts_per_token


def _predict(s: _Setup, n, tokens, cfg) -> float:
    if s.moe is not None:
        return float(s.law.loss(float(n), float(tokens), float(granularity_of(cfg))))
    return float(s.law.loss(float(n), float(tokens)))


def _hw_step(s: _Setup, cfg, batch_size, layout=None):
    """(time of one step, its MFU) on the hardware budget: the cluster step time of ``layout``
    (`planner.roofline(layout=)`), or without one the relaxation's proxy layout
    (`_proxy_step`), or the fma training FLOPs at the given MFU. Works on exact and relaxed
    configs (a layout only on exact ones)."""
    from planner.timing import roofline

    if s.mfu is None:
        if layout is None:
            return _proxy_step(s, cfg, batch_size)
        r = roofline(cfg, hardware=s.hw, batch_size=batch_size, seq_len=cfg.seq_len, layout=layout,
                     slices=slices_for(s.hw, s.chips))
        return r.step_time, r.mfu
    model = count_flops(cfg, batch_size=batch_size, seq_len=cfg.seq_len, mode="train", convention="fma").total
    return model / (s.chips * s.hw.peak(s.dtype) * s.mfu), s.mfu


def _proxy_step(s: _Setup, cfg, batch_size):
    """(step time, MFU) of the relaxation: `planner.timing.cluster_step` under a fixed layout
    that any shape can use: FSDP inside the fast domain (an NVLink node, or a TPU slice), data
    parallel across domains, no recomputation, flash attention, the whole per-chip batch in one
    micro-batch (memory is checked at the rounding, with each candidate's best layout). Works
    on relaxed configs and a traced chip count."""
    from hardware.network import network, numbers, with_numbers
    from planner.timing import cluster_step

    spec, chips = s.hw, jnp.asarray(s.chips, jnp.float32)
    tpu = spec.interconnect.startswith("ici")
    net = network(spec, 1)
    if tpu:
        fsdp = jnp.minimum(chips, float(spec.domain_size))
        net = with_numbers(net, dict(numbers(net), fast_size=fsdp, fast_wraparound=1.0))
    else:
        fsdp = jnp.minimum(chips, float(spec.domain_size))
    dp = chips / fsdp
    x = {"tp": 1.0, "pp": 1.0, "cp": 1.0, "dp": dp, "fsdp": fsdp, "v": 1.0, "mb": batch_size / chips, "remat": 0,
         "flash": 1, "sp": 0, "opt_shard": 1, "act_bytes": 2, "param_bytes": 2, "master": 1,
         "fp8": int(s.dtype == "fp8"), "tp_overlap": int(tpu), "dp_overlap": int(not tpu)}
    r = cluster_step(cfg, spec, net, x, batch_size=batch_size, seq_len=cfg.seq_len)
    return r.step_time, r.model_flops / (r.step_time * chips * spec.peak(s.dtype))


def _tokens_and_loss(s: _Setup, cfg, log_budget, batch_size):
    """(log N, log D, loss) of a relaxed shape: D from the budget (FLOPs, or seconds on the
    machine with a hardware budget)."""
    t = cfg.seq_len
    if s.hw is None:
        step_cost = count_flops(cfg, batch_size=batch_size, seq_len=t, mode="train", convention=s.convention).total
        if s.moe is not None:
            step_cost = step_cost + _moe_extra(s, cfg)[1] * batch_size * t
    else:
        step_cost = _hw_step(s, cfg, batch_size)[0]
    log_n = jnp.log(_law_params(s, cfg))
    log_d = log_budget - jnp.log(step_cost) + jnp.log(batch_size * t)
    if s.moe is not None:
        return log_n, log_d, s.law.log_loss(log_n, log_d, jnp.float32(s.moe[1]))
    return log_n, log_d, _log_loss(s.law, log_n, log_d)


def _project(s: _Setup, x):
    lo_d, hi_d = math.log(D_MODEL_RANGE[0]), math.log(D_MODEL_RANGE[1])
    ld = jnp.clip(x[0], lo_d, hi_d) if s.fixed_d_model is None else jnp.float32(math.log(s.fixed_d_model))
    lo_l, hi_l = math.log(LAYER_RANGE[0]), math.log(LAYER_RANGE[1])
    if s.aspect is not None:  # d_model / n_layers within [lo, hi]
        lo_l = jnp.maximum(lo_l, ld - math.log(s.aspect[1]))
        hi_l = jnp.minimum(hi_l, ld - math.log(s.aspect[0]))
    ll = jnp.clip(x[1], lo_l, hi_l) if s.fixed_layers is None else jnp.float32(math.log(s.fixed_layers))
    lr = jnp.clip(x[2], math.log(1.0), math.log(8.0)) if s.free_mlp_ratio else jnp.float32(math.log(s.mlp_ratio))
    return jnp.stack([ld, ll, lr])


def _search_fn(s: _Setup, steps: int, lr: float):
    """jit(vmap over budgets(vmap over starts(Adam loop))) -> best log-sizes per budget. The chip
    count is a traced argument, so one compilation serves every cluster size of a chip."""
    fn = _search_fn_cached(s._replace(chips=1), steps, lr)
    chips = jnp.float32(s.chips)
    return lambda budgets, batches, starts: fn(budgets, batches, starts, chips)


@functools.lru_cache(maxsize=32)
def _search_fn_cached(s0: _Setup, steps: int, lr: float):
    opt = optax.adam(lr)

    def run_one(x0, budget, batch_size, chips):
        s = s0._replace(chips=chips)

        def objective(x, log_budget, batch_size):
            return _tokens_and_loss(s, _shape(s, x, batch_size), log_budget, batch_size)[2]

        x0 = _project(s, x0)
        grad = jax.value_and_grad(objective)

        def body(carry, _):
            x, state = carry
            _, g = grad(x, budget, batch_size)
            upd, state = opt.update(g, state, x)
            return (_project(s, optax.apply_updates(x, upd)), state), None

        (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
        return x, objective(x, budget, batch_size)

    def run(budget, batch_size, starts, chips):
        xs, losses = jax.vmap(run_one, in_axes=(0, None, None, None))(starts, budget, batch_size, chips)
        best = jnp.nanargmin(losses)
        return xs[best], losses[best]

    return jax.jit(jax.vmap(run, in_axes=(0, 0, None, None)))


def _starts(s: _Setup) -> jnp.ndarray:
    ratio = math.log(s.mlp_ratio)
    pts = [(math.log(d), math.log(n), ratio) for d in (512, 2048, 8192) for n in (8, 32)]
    return jnp.asarray(pts, jnp.float32)


def _kv_heads(s: _Setup, heads: int) -> int | None:
    """KV heads for ``heads`` query heads, keeping the base's grouping valid: heads / group when
    the group divides the heads; else (a shape with few heads) the divisor of ``heads`` nearest
    to heads / group, so that every preset works as a base. None for multi-head attention; 1
    for a multi-query base (Gemma 2B, PaLM)."""
    if s.kv_group == 1:
        return None
    if s.base.resolved_n_kv_heads == 1:
        return 1
    if heads % s.kv_group == 0:
        return heads // s.kv_group
    target = heads / s.kv_group
    return min(_divisors(heads), key=lambda k: (abs(math.log(k / target)), k))


def _candidates(s: _Setup, d_cont: float, l_cont: float, ratio: float, *, multiple: int, head_dims,
                ff_multiple: int) -> list[TransformerConfig]:
    """Hardware-friendly shapes around a continuous optimum."""
    if s.hw is not None and d_cont >= 2048:
        # heads even (a multiple of 4 at head_dim 64; of 4, or 8 at head_dim 64, from d_model
        # 8192 on), so that tensor-parallel degrees divide them
        multiple = max(multiple, 256 if d_cont < 8192 else 512)
    if s.fixed_d_model is not None:
        ds = [s.fixed_d_model]
    else:
        k = d_cont / multiple
        ds = sorted({max(1, m) * multiple for m in (math.floor(k) - 1, math.floor(k), math.ceil(k), math.ceil(k) + 1)})
        ds = [d for d in ds if D_MODEL_RANGE[0] <= d <= D_MODEL_RANGE[1]] or ds  # the search's bounds
    if s.fixed_layers is not None:
        ls = [s.fixed_layers]
    else:
        ls = sorted({max(1, n) for n in (math.floor(l_cont) - 1, math.floor(l_cont), math.ceil(l_cont),
                                          math.ceil(l_cont) + 1)})
        ls = [n for n in ls if n <= LAYER_RANGE[1]]
    out = []
    for d in ds:
        for hd in head_dims:
            if d % hd:
                continue
            heads = d // hd
            ff = max(ff_multiple, ff_multiple * round(ratio * d / ff_multiple))
            for n_layers in ls:
                if s.aspect is not None and not (s.aspect[0] <= d / n_layers <= s.aspect[1]):
                    continue
                out.append(dataclasses.replace(
                    s.base, d_model=d, n_layers=n_layers, n_heads=heads, head_dim=hd, d_ff=ff,
                    n_kv_heads=_kv_heads(s, heads)))
    # The base's KV grouping wherever a candidate allows it; other groupings only if none does.
    exact = [c for c in out if c.n_heads // c.resolved_n_kv_heads == s.kv_group or s.base.resolved_n_kv_heads == 1]
    return exact or out


def _divisors(n: int) -> list[int]:
    """The divisors of n, ascending (trial division up to sqrt(n))."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


#: Remat policies from the least recomputation to the most (the order the planner tries them).
REMAT_ORDER = ("none", "selective", "dots", "full")


def default_layout(chips: int, dtype: str) -> Layout:
    """The layout a hardware budget assumes unless given one: FSDP over every chip (ZeRO-3) and
    flash attention, as runs of this size are trained; remat and micro-batch are searched."""
    return Layout(fsdp=chips, attention="flash", dtype=dtype)


def _fitting_layout(cfg: TransformerConfig, batch_size: int, layout: Layout, max_memory):
    """The cheapest (remat policy, micro-batch) of ``layout`` whose memory fits: the least
    recomputation first (`REMAT_ORDER`), then the largest micro-batch (a divisor of the
    per-replica batch). A remat or micro_batch set in ``layout`` is kept, not searched.
    Returns (layout, MemoryEstimate) or None."""
    from planner.memory import estimate_memory

    t = cfg.seq_len
    policies = REMAT_ORDER if layout.remat == "none" else (layout.remat,)
    if layout.attention == "flash":  # no score matrix to spare: selective keeps what none keeps
        policies = tuple(p for p in policies if p != "selective")
    per_replica = batch_size // layout.data_parallel
    micros = [layout.micro_batch] if layout.micro_batch is not None else _divisors(per_replica)[::-1]
    for policy in policies:
        for micro in micros:
            lay = layout.replace(remat=policy, micro_batch=None if micro == per_replica else micro)
            mem = estimate_memory(cfg, batch_size=batch_size, seq_len=t, layout=lay)
            if max_memory is None or float(mem.total) <= max_memory:
                return lay, mem
    return None


def _exact(s: _Setup, cfg: TransformerConfig, budget: float, batch_size: int, max_memory, layout=None):
    """Exact evaluation of one shape: whole steps within the budget, integer FLOPs."""
    t = cfg.seq_len
    if s.moe is not None:
        mc = moe_counts(cfg, batch_size=batch_size, convention=s.convention)
        n, step_flops = mc["non_embedding"], mc["step_flops"]
    else:
        n = _law_params(s, cfg)
        step_flops = count_flops(cfg, batch_size=batch_size, seq_len=t, mode="train", convention=s.convention).total
    out = {"n": n, "step_flops": step_flops, "step_time": None, "mfu": None, "memory": None, "micro_batch": None}
    if s.hw is None:
        steps = int(budget // step_flops) if isinstance(step_flops, int) else int(math.floor(budget / float(step_flops)))
    else:
        if layout is not None:
            # The user's layout, with the cheapest remat policy and micro-batch that fit (those
            # it leaves at their defaults are searched); its cluster step time.
            try:
                layout.check(cfg, batch_size=batch_size, seq_len=t)
            except ValueError:
                return None  # this shape cannot be split as the layout asks
            found = _fitting_layout(cfg, batch_size, layout, max_memory)
            if found is None:
                return None
            lay, mem = found
            step_time, mfu = _hw_step(s, cfg, batch_size, lay)
            result = None
        else:
            # The best layout of this shape on the chips (planner.layouts): the fastest valid mesh,
            # micro-batch and recomputation whose memory fits.
            result = _best_layout(s, cfg, batch_size, max_memory)
            if result is None:
                return None
            lay = result.layout
            step_time, mfu = result.step_time, result.mfu
            if s.mfu is not None:
                step_time, mfu = _hw_step(s, cfg, batch_size)
            mem = estimate_memory(cfg, batch_size=batch_size, seq_len=t, layout=lay)
        steps = int(math.floor(budget / step_time))
        micro = lay.micro_batch or batch_size // lay.data_parallel
        out.update(step_time=step_time, mfu=mfu, memory=float(mem.total), micro_batch=micro, layout=lay,
                   memory_estimate=mem, layout_result=result)
    if steps < 1:
        return None
    tokens = steps * batch_size * t
    out.update(steps=steps, tokens=tokens, flops=steps * step_flops,
               loss=_predict(s, n, tokens, cfg), cfg=cfg)
    return out


#: Memory within this fraction of the limit gets a note: allocators hold back a few percent of
#: HBM (the XLA GPU client preallocates 75% by default and fragments), so "fits" is marginal.
MEMORY_MARGIN = 0.03


def _notes(s: _Setup, best: dict, cont: dict, max_memory) -> tuple[str, ...]:
    """Warnings about a rounded plan: bounds it sits at, unusual shapes, marginal memory, a
    predicted loss no model should have. See `Plan.notes`."""
    cfg, notes = best["cfg"], []
    if s.fixed_d_model is None:
        if cont["d_model"] >= D_MODEL_RANGE[1] * 0.999:
            notes.append(f"d_model sits at the search's upper bound {D_MODEL_RANGE[1]}: the budget is past the "
                         "range the planner covers, so this is not the law's optimum")
        elif cont["d_model"] <= D_MODEL_RANGE[0] * 1.001:
            notes.append(f"d_model sits at the search's lower bound {D_MODEL_RANGE[0]}: the budget is too small "
                         "for this base to choose its width")
    if s.fixed_layers is None and cont["n_layers"] >= LAYER_RANGE[1] * 0.999:
        notes.append(f"n_layers sits at the search's upper bound {LAYER_RANGE[1]}")
    h, kv = cfg.n_heads, cfg.resolved_n_kv_heads
    if h % 2:
        notes.append(f"n_heads={h} is odd: tensor parallelism can split the heads only over "
                     f"{' or '.join(map(str, _divisors(h)))} chips; fix d_model (--d-model) for a multiple of 8")
    if s.kv_group > 1 and kv > 1 and h // kv != s.kv_group:
        notes.append(f"{kv} KV heads for {h} heads (groups of {h // kv}): the base's groups of {s.kv_group} "
                     f"do not divide {h} heads")
    if best["memory"] is not None and max_memory is not None and best["memory"] > (1 - MEMORY_MARGIN) * max_memory:
        notes.append(f"memory per chip {best['memory'] / 1e9:.2f} GB is within {100 * MEMORY_MARGIN:g}% of the "
                     f"limit {max_memory / 1e9:.2f} GB: allocator reserve and fragmentation may push it over; "
                     "lower max_memory_per_chip (--max-memory) to keep headroom")
    uniform = math.log(cfg.vocab_size)
    if best["loss"] > uniform:
        notes.append(f"predicted loss {best['loss']:.3f} is above ln(vocab_size) = {uniform:.3f}, the loss of a "
                     "uniform guess: the law is extrapolated far outside its data (raise the budget or the MFU)")
    return tuple(notes)


def slices_for(spec, chips: int) -> int:
    """TPU slices needed for ``chips`` chips: the fewest that divide them and fit the pod (1 on GPUs)."""
    if not spec.interconnect.startswith("ici") or chips <= spec.domain_size:
        return 1
    return next(k for k in range(math.ceil(chips / spec.domain_size), chips + 1)
                if chips % k == 0 and chips // k <= spec.domain_size)


def _best_layout(s: _Setup, cfg: TransformerConfig, batch_size: int, max_memory):
    from planner.layouts import search_layouts

    try:
        res = search_layouts(cfg, hardware=s.hw, chips=s.chips, batch_size=batch_size, seq_len=cfg.seq_len,
                             dtype=s.dtype, top=BEST_LAYOUTS_CHECKED, slices=slices_for(s.hw, s.chips),
                             tp_overlap=s.hw.interconnect.startswith("ici"),
                             dp_overlap=not s.hw.interconnect.startswith("ici"), remat=("none", "selective", "full"),
                             attention=("flash",), max_memory_per_chip=max_memory)
    except ValueError:
        return None
    # The search screens memory with its array estimate; the plan reports `estimate_memory`'s
    # breakdown, so take the fastest layout that this closed form also fits.
    limit = s.hw.hbm_bytes if max_memory is None else max_memory
    for r in res.best:
        if estimate_memory(cfg, batch_size=batch_size, seq_len=cfg.seq_len, layout=r.layout).total <= limit:
            return r
    return None


#: How many of the layout search's fastest layouts a plan checks with `estimate_memory`.
BEST_LAYOUTS_CHECKED = 10


def plan_note(p: Plan) -> str | None:
    """Why a hardware budget is not used well (MFU below 45%), from the plan's layout breakdown:
    the largest of bubble, exposed communication per axis, and the work per chip."""
    lay = p.layout_result
    if lay is None or p.mfu is None or p.mfu >= 0.45:
        return None
    losses = {"the pipeline bubble": lay.bubble_time}
    losses.update({f"exposed {axis} communication": t for axis, t in lay.exposed_comm.items()})
    what, t = max(losses.items(), key=lambda kv: kv[1])
    per_chip = p.batch_size * p.config.seq_len / lay.layout.chips
    why = (f"{what} takes {t:.3g} s of the {p.step_time:.3g} s step" if t > 0.1 * p.step_time else
           f"each chip gets {per_chip:.0f} tokens per step, too few to keep it busy")
    return (f"MFU {100 * p.mfu:.0f}%: {why}. The budget buys more chips than this model and batch can keep "
            "busy: more days (a bigger model) or fewer chips use it better.")


def _inference(s: _Setup, best: dict, inference_tokens) -> dict | None:
    if inference_tokens is None:
        return None
    n, d = float(best["n"]), float(best["tokens"])
    mine = {"params": n, "tokens": d, "train_flops": 6 * n * d, "inference_flops": 2 * n * inference_tokens,
            "total_flops": 6 * n * d + 2 * n * inference_tokens, "loss": best["loss"]}
    return {"inference_tokens": float(inference_tokens), "compute_optimal": mine,
            "inference_optimal": inference_aware(s.law, best["loss"], inference_tokens, reference_params=n)}


def _batch_size(budget_flops: float, seq_len: int, batch_tokens, chips: int) -> int:
    tokens = deepseek_batch_tokens(budget_flops) if batch_tokens is None else batch_tokens
    b = max(1, round(tokens / seq_len))
    return max(chips, chips * round(b / chips))  # whole sequences per chip


def _setup(*, law, base, convention, hardware, chips, days, mfu, dtype, head_dim, free_mlp_ratio,
           mlp_ratio, aspect_ratio, n_layers, d_model) -> tuple[_Setup, float | None]:
    law = get_law(law)
    if base is None:
        base = DEFAULT_BASE
    elif isinstance(base, str):
        base = presets.get(base)
    elif not isinstance(base, TransformerConfig):
        raise ValueError(f"base={base!r}: give a TransformerConfig or a preset name ({', '.join(presets.names())})")
    base = dense_base(base)
    if not isinstance(convention, str) or convention not in CONVENTIONS or convention == "megatron-recompute":
        valid = [c for c in CONVENTIONS if c != "megatron-recompute"]
        raise ValueError(f"convention={convention!r}: unknown for planning; valid: {', '.join(valid)}")
    if head_dim not in (64, 128) and not (isinstance(head_dim, int) and head_dim > 0 and head_dim % 2 == 0):
        raise ValueError(f"head_dim={head_dim!r}: must be a positive even int (64 or 128 usually)")
    kv_group = base.n_heads // base.resolved_n_kv_heads
    ratio = base.d_ff / base.d_model if mlp_ratio is None else _number("mlp_ratio", mlp_ratio, 1, 8)
    if not 1 <= ratio <= 8:
        raise ValueError(f"base d_ff / d_model = {ratio:.3g}: the search keeps it in [1, 8]; pass mlp_ratio")
    if aspect_ratio is not None:
        if isinstance(aspect_ratio, str) or not hasattr(aspect_ratio, "__len__") or len(aspect_ratio) != 2:
            raise ValueError(f"aspect_ratio={aspect_ratio!r}: give (min, max) of d_model / n_layers, or None")
        lo = _number("aspect_ratio[0]", aspect_ratio[0], 0)
        hi = _number("aspect_ratio[1]", aspect_ratio[1], 0)
        if not (0 < lo <= hi):
            raise ValueError(f"aspect_ratio={aspect_ratio!r}: infeasible; give (min, max) of d_model / n_layers "
                             "with 0 < min <= max")
        aspect_ratio = (float(lo), float(hi))
    for name, v, rng in (("n_layers", n_layers, LAYER_RANGE), ("d_model", d_model, D_MODEL_RANGE)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not rng[0] <= v <= rng[1]):
            raise ValueError(f"{name}={v!r}: must be an int in [{rng[0]}, {rng[1]}]")
    if d_model is not None and n_layers is not None and aspect_ratio is not None \
            and not aspect_ratio[0] <= d_model / n_layers <= aspect_ratio[1]:
        raise ValueError(f"aspect_ratio={aspect_ratio}: infeasible with d_model={d_model} and n_layers={n_layers}")
    spec, seconds = None, None
    if hardware is not None or chips is not None or days is not None:
        import hardware as hw

        if hardware is None or chips is None or days is None:
            raise ValueError("a hardware budget needs hardware=, chips= and days= together "
                             f"(got hardware={hardware!r}, chips={chips!r}, days={days!r})")
        spec = hw.resolve(hardware)
        if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
            raise ValueError(f"chips={chips!r}: must be a positive int")
        if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) \
                or not 0 < days <= 36500:
            raise ValueError(f"days={days!r}: must be a number of days in (0, 36500]")
        if chips > 10**8:
            raise ValueError(f"chips={chips!r}: at most 10^8")
        if mfu is not None and not (_number("mfu", mfu, 0, 1) > 0):
            raise ValueError(f"mfu={mfu!r}: must be in (0, 1]")
        spec.peak(dtype)  # a dtype the chip lacks fails here, naming it
        for name, v in ((f"peak_flops.{dtype}", spec.peak(dtype)), ("hbm_bandwidth", spec.hbm_bandwidth),
                        ("interconnect_bandwidth", spec.interconnect_bandwidth),
                        ("inter_node_bandwidth", spec.inter_node_bandwidth)):
            if not 1.0 <= v <= HARDWARE_RATE_RANGE:  # float32 relaxation: 1e300 would be inf, then NaN
                raise ValueError(f"hardware {spec.name}: {name}={v:g} is outside [1, {HARDWARE_RATE_RANGE:g}], "
                                 "the range the search handles; check the spec file's number")
        seconds = float(days) * 86400.0
    elif mfu is not None:
        raise ValueError("mfu= applies to a hardware budget (hardware=, chips=, days=)")
    s = _Setup(base, law, convention, head_dim, kv_group, free_mlp_ratio, float(ratio), aspect_ratio,
               n_layers, d_model, spec, chips or 1, dtype, None if mfu is None else float(mfu))
    return s, seconds


#: The largest rate (FLOP/s, B/s) a hardware spec may give the search: 1e6 times a 2025 chip's.
HARDWARE_RATE_RANGE = 1e22

#: The largest budget the search takes (its float32 relaxation; 1e35 FLOP is 1e7 times 2025's
#: largest training runs).
MAX_BUDGET = 1e35


def _number(name: str, value, lo: float, hi: float = math.inf) -> float:
    """A real number in [lo, hi] (bools, strings, NaN and inf refused), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name}={value!r}: must be a number")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name}={value!r}: must be a finite number in [{lo:g}, {hi:g}]")
    return v


def _check_budget(budget_flops) -> float:
    if isinstance(budget_flops, bool) or not isinstance(budget_flops, int | float) \
            or not math.isfinite(budget_flops) or budget_flops <= 0:
        raise ValueError(f"budget_flops={budget_flops!r}: must be a positive finite number of FLOPs, e.g. 1e21")
    if budget_flops > MAX_BUDGET:
        raise ValueError(f"budget_flops={budget_flops!r}: above the planner's range (at most {MAX_BUDGET:g} FLOPs)")
    return float(budget_flops)


def plan(budget_flops: float | None = None, *, law="chinchilla", base=None, convention: str = "xla",
         hardware=None, chips: int | None = None, days: float | None = None, mfu: float | None = None,
         dtype: str = "bf16", batch_tokens: float | None = None, head_dims=(64, 128), head_dim: int = 128,
         d_model_multiple: int = 128, d_ff_multiple: int = 128, free_mlp_ratio: bool = False,
         mlp_ratio: float | None = None, aspect_ratio: tuple[float, float] | None = DEFAULT_ASPECT,
         n_layers: int | None = None, d_model: int | None = None, max_memory_per_chip: float | None = None,
         inference_tokens: float | None = None, steps: int = 300, learning_rate: float = 0.05,
         layout: Layout | None = None, moe: bool = False, granularities=None,
         param_dtype: str = "bf16") -> Plan:
    """The shape that spends a compute budget for the lowest predicted loss.

    Args:
      budget_flops: training FLOPs to spend (under ``convention``). Or, instead, a hardware
        budget: ``hardware`` (name or `hardware.Spec`), ``chips`` and ``days``, with ``mfu`` (the
        fraction of peak you expect) or, when omitted, the roofline's predicted time per step.
      law: a `ScalingLaw` or a preset name ("chinchilla", "chinchilla-rounded", "epoch").
      base: TransformerConfig or preset name fixing what is not searched (vocabulary, sequence
        length, MLP/norm/position kind, tying, KV grouping); default `DEFAULT_BASE` (Llama-style).
      convention: how a step's FLOPs are counted ("xla" = what the program executes).
      batch_tokens: tokens per step; default DeepSeek's B_opt(C) (`deepseek_batch_tokens`).
      head_dims: head widths the rounding may use; head_dim: the one used by the relaxation.
      d_model_multiple, d_ff_multiple: rounding granularity.
      free_mlp_ratio: search d_ff / d_model too (else the base's ratio, or ``mlp_ratio``).
      aspect_ratio: (min, max) of d_model / n_layers; default `DEFAULT_ASPECT` (64, 192); None
        lifts it. n_layers, d_model: fix one of them (the aspect range then applies to the other).
      max_memory_per_chip: bytes (hardware budgets: default the chip's HBM).
      inference_tokens: tokens you expect to serve; adds ``inference`` to the plan: this plan's
        training + inference FLOPs (6ND + 2N D_inf) next to the inference-aware plan that reaches
        the same loss for the least total (Sardana et al. 2024; `inference_aware`).
      steps, learning_rate: the Adam search.
      layout: hardware budgets: the `models.Layout` of the run (its chips must be ``chips``);
        default `default_layout` (FSDP over the chips, flash attention). Its remat policy and
        micro-batch are searched when left at "none" / None: the plan takes the cheapest that
        fits (`REMAT_ORDER`, then the largest micro-batch) and reports it in ``Plan.layout``.
      moe: plan a mixture of experts under an MoE law (``law`` then names one of
        `planner.laws.MOE_LAWS`, default "krajewski"): the dense shape is searched as above for
        every granularity G in ``granularities`` (default `MOE_GRANULARITIES`) at the law's
        expansion rate E (E x G experts of width d_ff / G, top-G; `moe_shape`), FLOPs per token
        from the active parameters, N from all of them; the lowest predicted loss wins.
        ``Plan.moe`` reports the experts, total and active parameters, and the memory of the
        experts' weights, gradients and AdamW state (``param_dtype`` weights and gradients,
        fp32 moments and master copy) in all and per chip when a ``chips`` count is given.
        FLOP budgets only.

    Raises:
      ValueError: invalid arguments; a budget below the smallest allowed shape's one step (the
        message names that minimum); constraints no shape satisfies (naming the constraint).
    """
    if budget_flops is not None and hardware is not None and chips is not None and days is not None:
        raise ValueError(f"budget_flops={budget_flops!r} and a hardware budget (hardware={hardware!r}, chips={chips!r}, "
                         f"days={days!r}): give one budget, not both")
    if not isinstance(moe, bool):
        raise ValueError(f"moe={moe!r}: must be True or False")
    if moe:
        return _plan_moe(budget_flops, law=law, base=base, convention=convention, hardware=hardware, chips=chips,
                         days=days, granularities=granularities, param_dtype=param_dtype,
                         inference_tokens=inference_tokens, layout=layout, mfu=mfu,
                         kw=dict(dtype=dtype, batch_tokens=batch_tokens, head_dims=head_dims, head_dim=head_dim,
                                 d_model_multiple=d_model_multiple, d_ff_multiple=d_ff_multiple,
                                 free_mlp_ratio=free_mlp_ratio, mlp_ratio=mlp_ratio, aspect_ratio=aspect_ratio,
                                 n_layers=n_layers, d_model=d_model, max_memory_per_chip=max_memory_per_chip,
                                 steps=steps, learning_rate=learning_rate))
    if granularities is not None:
        raise ValueError(f"granularities={granularities!r}: applies with moe=True")
    return frontier([budget_flops], law=law, base=base, convention=convention, hardware=hardware, chips=chips,
                    days=days, mfu=mfu, dtype=dtype, batch_tokens=batch_tokens, head_dims=head_dims,
                    head_dim=head_dim, d_model_multiple=d_model_multiple, d_ff_multiple=d_ff_multiple,
                    free_mlp_ratio=free_mlp_ratio, mlp_ratio=mlp_ratio, aspect_ratio=aspect_ratio,
                    n_layers=n_layers, d_model=d_model, max_memory_per_chip=max_memory_per_chip,
                    inference_tokens=inference_tokens, steps=steps, learning_rate=learning_rate,
                    layout=layout)[0]


def frontier(budgets, *, law="chinchilla", base=None, convention: str = "xla", hardware=None,
             chips: int | None = None, days: float | None = None, mfu: float | None = None,
             dtype: str = "bf16", batch_tokens: float | None = None, head_dims=(64, 128), head_dim: int = 128,
             d_model_multiple: int = 128, d_ff_multiple: int = 128, free_mlp_ratio: bool = False,
             mlp_ratio: float | None = None, aspect_ratio=DEFAULT_ASPECT, n_layers=None, d_model=None,
             max_memory_per_chip=None, inference_tokens: float | None = None, steps: int = 300,
             learning_rate: float = 0.05, layout: Layout | None = None, _moe=None) -> list[Plan]:
    """`plan` for many budgets at once: one vectorised continuous search (vmap over budgets),
    then the exact rounding of each. With a hardware budget, ``budgets`` are ignored (pass
    [None]) and ``days`` may be a list instead."""
    s, seconds = _setup(law=law if _moe is None else "chinchilla", base=base, convention=convention,
                        hardware=hardware, chips=chips, days=days,
                        mfu=mfu, dtype=dtype, head_dim=head_dim, free_mlp_ratio=free_mlp_ratio,
                        mlp_ratio=mlp_ratio, aspect_ratio=aspect_ratio, n_layers=n_layers, d_model=d_model)
    if _moe is not None:
        from planner.laws import get_moe_law

        s = s._replace(law=get_moe_law(law), moe=_moe)
    if isinstance(head_dims, str) or not hasattr(head_dims, "__iter__") or not head_dims \
            or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 or h % 2 for h in head_dims):
        raise ValueError(f"head_dims={head_dims!r}: give positive even ints, e.g. (64, 128)")
    for name, v in (("d_model_multiple", d_model_multiple), ("d_ff_multiple", d_ff_multiple)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}={v!r}: must be a positive int")
    if any(d_model_multiple % h and h % d_model_multiple for h in head_dims):
        raise ValueError(f"head_dims={head_dims} and d_model_multiple={d_model_multiple}: every head_dim must "
                         "divide d_model_multiple (or be a multiple of it)")
    if max_memory_per_chip is not None and s.hw is None:
        raise ValueError(f"max_memory_per_chip={max_memory_per_chip!r}: applies to a hardware budget "
                         "(hardware=, chips=, days=); a FLOP budget plans no chip")
    if layout is not None:
        if not isinstance(layout, Layout):
            raise ValueError(f"layout={layout!r}: must be a Layout (e.g. Layout.parse('fsdp=8,attention=flash'))")
        if s.hw is None:
            raise ValueError("layout= describes a run on hardware; give hardware=, chips= and days= with it")
        if layout.chips != s.chips:
            raise ValueError(f"layout has {layout.chips} chips (its mesh degrees multiply to that) but "
                             f"chips={s.chips}; make them agree")
    if max_memory_per_chip is None and s.hw is not None:
        max_memory_per_chip = s.hw.hbm_bytes
    if max_memory_per_chip is not None:
        max_memory_per_chip = _number("max_memory_per_chip", max_memory_per_chip, 1)
    if batch_tokens is not None:
        batch_tokens = _number("batch_tokens", batch_tokens, 1, 1e15)
    if inference_tokens is not None:
        inference_tokens = _number("inference_tokens", inference_tokens, 0, 1e30)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise ValueError(f"steps={steps!r}: must be an int in [1, 100000]")
    learning_rate = _number("learning_rate", learning_rate, 1e-6, 10)

    if s.hw is not None:
        if isinstance(budgets, str) or not hasattr(budgets, "__iter__") or any(b is not None for b in budgets):
            raise ValueError(f"budgets={budgets!r}: a hardware budget (hardware=, chips=, days=) replaces the FLOP "
                             "budgets; pass [None]")
        budget_list = [seconds]
        nominal = s.hw.peak(dtype) * s.chips * seconds * (s.mfu or 0.4)  # only to size the default batch
        batches = [_batch_size(nominal, s.base.seq_len, batch_tokens, s.chips)]
    else:
        if isinstance(budgets, str) or not hasattr(budgets, "__len__") or not 1 <= len(budgets) <= 10_000:
            raise ValueError(f"budgets={budgets!r}: give 1 to 10000 budgets in FLOPs")
        budget_list = [_check_budget(b) for b in budgets]
        batches = [_batch_size(b, s.base.seq_len, batch_tokens, 1) for b in budget_list]

    # Smallest allowed shape: one step of it must fit in the budget.
    d0 = d_model_multiple if s.fixed_d_model is None else s.fixed_d_model
    if s.fixed_d_model is None and s.fixed_layers is not None and s.aspect is not None:
        d0 = d_model_multiple * max(1, math.ceil(s.aspect[0] * s.fixed_layers / d_model_multiple))
    l0 = s.fixed_layers or (1 if s.aspect is None else max(1, math.ceil(d0 / s.aspect[1])))
    smallest = _candidates(s, d0, l0, s.mlp_ratio, multiple=d_model_multiple, head_dims=head_dims,
                           ff_multiple=d_ff_multiple)
    smallest.sort(key=lambda c: count_params(c).total)
    if not smallest:
        raise ValueError("no shape satisfies the constraints (aspect_ratio, n_layers, d_model, head_dims)")

    fn = _search_fn(s, steps, learning_rate)
    xs, _ = fn(jnp.log(jnp.asarray(budget_list, jnp.float32)), jnp.asarray(batches, jnp.float32), _starts(s))
    xs = np.asarray(xs, np.float64)
    if not np.all(np.isfinite(xs)):
        what = ("the hardware's numbers (peak, bandwidths) " if s.hw is not None else "")
        raise ValueError(f"the search found no finite optimum: {what}or the budget overflow the float32 "
                         "relaxation; give values in the range of real chips and runs")

    plans = []
    for budget, batch, x in zip(budget_list, batches, xs):
        minimum = float(count_flops(smallest[0], batch_size=batch, seq_len=smallest[0].seq_len, mode="train",
                                    convention=s.convention).total)
        if s.hw is None and budget < minimum:
            raise ValueError(f"budget_flops={budget:.3g}: below the minimum {minimum:.3g} FLOPs, one step of "
                             f"the smallest allowed shape (d_model={smallest[0].d_model}, "
                             f"n_layers={smallest[0].n_layers}, batch {batch} x {s.base.seq_len} tokens)")
        d_c, l_c, r_c = (float(math.exp(v)) for v in x)
        cont_cfg = _shape(s, jnp.asarray(x, jnp.float32), batch)
        log_n, log_d, loss_c = _tokens_and_loss(s, cont_cfg, math.log(budget), jnp.float32(batch))
        n_c, d_tok = math.exp(float(log_n)), math.exp(float(log_d))
        cands = _candidates(s, d_c, l_c, r_c, multiple=d_model_multiple, head_dims=head_dims,
                            ff_multiple=d_ff_multiple)
        if s.moe is not None:
            cands = [moe_shape(c, s.moe[1], s.moe[0]) for c in cands]
        if not cands:
            raise ValueError("no shape satisfies the constraints (aspect_ratio, n_layers, d_model, head_dims) "
                             f"near the optimum d_model={d_c:.0f}, n_layers={l_c:.1f}")
        scored = [e for e in (_exact(s, c, budget, batch, max_memory_per_chip, layout) for c in cands)
                  if e is not None]
        if not scored:
            why = (f"max_memory_per_chip={max_memory_per_chip:.3g} bytes" if max_memory_per_chip is not None
                   else "the budget (not one whole step fits)")
            raise ValueError(f"no shape near the optimum satisfies {why}; raise it, add chips, or shrink the batch")
        best = min(scored, key=lambda e: (e["loss"], e["flops"]))
        flops = best["flops"]
        if s.hw is None:
            used = float(flops) / budget
            step_time = mfu_out = days_out = memory = None
        else:
            achieved = float(best["steps"] * best["step_time"])
            used = achieved / budget
            step_time, mfu_out, memory = float(best["step_time"]), float(best["mfu"]), best["memory"]
            days_out = achieved / 86400
        plans.append(Plan(
            config=best["cfg"], params=best["n"], tokens=best["tokens"], flops=flops, loss=best["loss"],
            budget_used=used, steps=best["steps"], batch_size=batch,
            continuous={"d_model": d_c, "n_layers": l_c, "d_ff": r_c * d_c, "params": float(n_c),
                        "tokens": float(d_tok), "loss": float(loss_c)},
            step_time=step_time, mfu=mfu_out, days=days_out, memory_per_chip=memory,
            micro_batch=best["micro_batch"], inference=_inference(s, best, inference_tokens), convention=s.convention, law=s.law, budget=budget,
            notes=_notes(s, best, {"d_model": d_c, "n_layers": l_c}, max_memory_per_chip),
            layout=best.get("layout"), memory=best.get("memory_estimate"), layout_result=best.get("layout_result"),
        ))
    return plans


#: Granularities `plan(moe=True)` tries: the range Krajewski et al. 2024 fit (Fig. 3: G = 1 to 16).
#: The law is smooth in G, but a shape needs a whole number of experts per token, and
#: routing cost and expert width make the rounded candidates differ, so G is searched as this
#: discrete set (one continuous search over the dense shape per G), not relaxed.
MOE_GRANULARITIES = (1, 2, 4, 8, 16)


def expert_memory(cfg: TransformerConfig, *, param_dtype: str = "bf16", chips: int | None = None,
                  ep: int | None = None) -> dict:
    """Bytes the routed experts need for training: their weights and gradients in
    ``param_dtype``, AdamW's two fp32 moments and an fp32 master copy (16 bytes per parameter
    with bf16 weights; Rajbhandari et al. 2020 §3.1). In all, and per chip when sharded over
    ``ep`` chips (default: ``chips``; expert weights split over the expert-parallel group)."""
    from planner.memory import DTYPE_BYTES

    mats = 3 if cfg.gated else 2
    experts = cfg.moe_layers * cfg.n_experts * mats * cfg.d_model * cfg.resolved_d_ff_expert
    pb = DTYPE_BYTES[param_dtype]
    per_param = 2 * pb + 8 + (4 if pb < 4 else 0)
    out = {"expert_params": experts, "bytes_per_param": per_param, "total_bytes": experts * per_param}
    group = ep if ep is not None else chips
    if group is not None:
        out.update(ep=group, bytes_per_chip=experts * per_param / group)
    return out


def _plan_moe(budget_flops, *, law, base, convention, hardware, chips, days, granularities, param_dtype,
              inference_tokens, layout, mfu, kw) -> Plan:
    """`plan(moe=True)`: the dense-shape search once per granularity, the lowest loss kept."""
    from planner.laws import MoEScalingLaw, get_moe_law
    from planner.memory import DTYPE_BYTES

    if days is not None or mfu is not None or layout is not None:
        raise ValueError("moe=True plans a FLOP budget (budget_flops=); hardware budgets (days=, mfu=, layout=) with "
                         "a mixture of experts are not implemented. Give hardware= and chips= to size the experts' "
                         "memory on that target")
    if budget_flops is None:
        raise ValueError("moe=True needs budget_flops= (training FLOPs to spend, e.g. 1e23)")
    spec = None
    if hardware is not None:
        import hardware as hw

        spec = hw.resolve(hardware)
        if chips is None:
            raise ValueError(f"hardware={hardware!r}: give chips= too (the expert-parallel chips the experts are "
                             "spread over)")
    if inference_tokens is not None:
        raise ValueError("inference_tokens= applies to dense plans (the inference-aware plan uses a dense law)")
    if chips is not None and (isinstance(chips, bool) or not isinstance(chips, int) or chips < 1):
        raise ValueError(f"chips={chips!r}: must be a positive int")
    if not isinstance(param_dtype, str) or param_dtype not in DTYPE_BYTES:
        raise ValueError(f"param_dtype={param_dtype!r}: unknown; valid: {', '.join(DTYPE_BYTES)}")
    law = get_moe_law("krajewski" if law in (None, "chinchilla") else law)
    if isinstance(law, MoEScalingLaw) is False:  # pragma: no cover - get_moe_law returns one
        raise ValueError(f"law={law!r}: not an MoE law")
    gs = MOE_GRANULARITIES if granularities is None else granularities
    if isinstance(gs, str) or not hasattr(gs, "__iter__") or not list(gs) or any(
            isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 64 for g in gs):
        raise ValueError(f"granularities={granularities!r}: give ints in [1, 64], e.g. (1, 2, 4, 8, 16)")
    plans = {g: frontier([budget_flops], law=law, base=base, convention=convention, _moe=(law.expansion, g),
                         **kw)[0] for g in gs}
    g_best = min(plans, key=lambda g: (plans[g].loss, g))
    best = plans[g_best]
    cfg = best.config
    pc = moe_counts(cfg, batch_size=best.batch_size, convention=best.convention)
    info = {"law": dataclasses.asdict(law), "granularity": g_best, "expansion": law.expansion,
            "n_experts": cfg.n_experts, "experts_per_token": cfg.experts_per_token, "d_ff_expert": cfg.d_ff_expert,
            "total_params": pc["total"], "active_params": pc["active"], "non_embedding_total": pc["non_embedding"],
            "loss_by_granularity": {g: p.loss for g, p in plans.items()},
            "memory": expert_memory(cfg, param_dtype=param_dtype, chips=chips)}
    if spec is not None:
        per_chip = info["memory"]["bytes_per_chip"]
        info["memory"].update(target=spec.name, hbm_bytes=spec.hbm_bytes, hbm_fraction=per_chip / spec.hbm_bytes,
                              fits=per_chip <= spec.hbm_bytes)
    return best._replace(moe=info)
