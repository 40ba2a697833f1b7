"""Roofline time of a training step on a hardware target, component by component.

For each component of the step: time = max(FLOPs / peak, bytes moved / HBM bandwidth) (Williams
et al. 2009, "Roofline"; scaling-book roofline.md), summed over the components, plus the data-
parallel gradient all-reduce over the interconnect. Pure arithmetic on the config's numbers:
floats from ints, differentiable `jnp` floats from a relaxed config (``jnp.maximum`` then).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from models.config import TransformerConfig, check_size
from planner.flops import FLOP_COMPONENTS, count_flops, step_matmuls
from planner.memory import _dtype_bytes
from planner.params import count_params, promote


class ComponentTime(NamedTuple):
    flops: Any
    bytes: Any
    time: Any  # seconds
    bound: str | None  # "compute" or "memory"; for arrays, of the first element; None when traced


class StepTime(NamedTuple):
    """Predicted time of one step on ``chips`` chips (data parallel).

    ``step_time`` = ``compute_time`` (the roofline sum over components, per chip) +
    ``comm_time`` (the gradient all-reduce, not overlapped). ``mfu`` = model FLOPs (the "fma"
    training count of the global batch, attention in full) / (step_time x chips x peak).
    """

    step_time: Any
    compute_time: Any
    comm_time: Any
    tokens_per_s: Any
    mfu: Any
    model_flops: Any
    components: dict[str, ComponentTime]
    hardware: str
    chips: Any
    dtype: str
    hfu: Any = None  # hardware FLOPs (recomputation included) / (step_time x chips x peak)
    hardware_flops: Any = None  # what the chips execute: model FLOPs + the layout's recomputation


def _max(a, b):
    if isinstance(a, jax.Array) or isinstance(b, jax.Array):
        return jnp.maximum(a, b)
    return max(a, b)


def _bound(compute_time, memory_time) -> str | None:
    try:
        tc = float(jnp.ravel(jnp.asarray(compute_time))[0])
        tm = float(jnp.ravel(jnp.asarray(memory_time))[0])
    except jax.errors.ConcretizationTypeError:  # under jit / grad: no concrete value to compare
        return None
    return "compute" if tc >= tm else "memory"


def component_bytes(cfg: TransformerConfig, batch_size, seq_len, *, mode: str = "train",
                    act_bytes: int = 2, param_bytes: int = 4) -> dict[str, Any]:
    """HBM bytes each component moves in one step, assuming XLA fuses each elementwise chain
    into one pass (read its inputs once, write its outputs once) and matmuls read both operands
    and write their output once. Keys: `FLOP_COMPONENTS`."""
    b, t = batch_size, seq_len
    d, ff, vocab, n_layers = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    h, kv, hd = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
    tokens = b * t
    scores = b * h * t * t
    out = dict.fromkeys(FLOP_COMPONENTS, 0)
    for name, ms in step_matmuls(cfg, b, t, mode).items():
        out[name] = sum(m.count * (m.m * m.n + m.n * m.p + m.m * m.p) for m in ms) * act_bytes
    fwd, bwd = mode in ("forward", "train"), mode in ("backward", "train")
    gated = 3 if cfg.gated else 2
    # (elements moved forward, elements moved backward) per fused elementwise region
    regions = {
        "embedding": (2 * tokens * d, 2 * tokens * d + vocab * d),
        "norms": ((2 * n_layers + 1) * 2 * tokens * d, (2 * n_layers + 1) * 3 * tokens * d),
        "rope": ((2 * n_layers * tokens * (h + kv) * hd,) * 2 if cfg.position == "rope" else (0, 0)),
        "softmax": (n_layers * 2 * scores, n_layers * 3 * scores),
        "activation": (n_layers * gated * tokens * ff, n_layers * (2 * gated - 1) * tokens * ff),
        "residual": (n_layers * 2 * 3 * tokens * d, n_layers * 2 * 3 * tokens * d),
    }
    for name, (f, bk) in regions.items():
        out[name] = ((f if fwd else 0) + (bk if bwd else 0)) * act_bytes
    if bwd:
        out["loss"] = 2 * tokens * vocab * 4  # fp32 logits read, their gradient written
    if mode == "train":
        n = count_params(cfg).total
        out["optimizer"] = n * (2 * param_bytes + 5 * 4)  # read p, g; read m, v; write p, m, v
    return out


def _link_bandwidth(spec, chips):
    """The all-reduce's bottleneck link: the fast domain (ICI / NVLink) while ``chips`` fits in
    one, else the inter-node network."""
    if isinstance(chips, int) and chips <= spec.domain_size:
        return spec.interconnect_bandwidth
    if isinstance(chips, int):
        return spec.inter_node_bandwidth
    return jnp.where(chips <= spec.domain_size, spec.interconnect_bandwidth, spec.inter_node_bandwidth)


def roofline(cfg: TransformerConfig, *, hardware, chips=1, batch_size=1, seq_len=None,
             dtype: str = "bf16", mode: str = "train", param_dtype: str = "fp32", layout=None) -> StepTime:
    """Roofline time of one step of ``models.Transformer(cfg)`` on ``chips`` chips of ``hardware``.

    Args:
      hardware: a `hardware.Spec` or a name (``"h100"``, ``"tpu-v5p"``, a spec file path).
      chips: data-parallel chips; the global ``batch_size`` is split evenly over them.
      dtype: compute dtype: picks the peak (``spec.peak(dtype)``; a chip without it is an error,
        never another dtype's peak) and the activation bytes.
      mode: "train" (forward, backward, AdamW), "forward" or "backward".

    FLOPs per component are the "xla" convention's (what the program executes), with the forward
    work ``layout`` (a `models.Layout`) recomputes (`planner.flops.recompute_flops`); bytes per
    component are `component_bytes` (flash attention moves no score matrix through HBM). ``mfu``
    counts model FLOPs, ``hfu`` hardware FLOPs (recomputation included). The gradient all-reduce moves 2 (chips - 1) / chips x
    parameter bytes over the slowest link it crosses (ring algorithm; Patarasuk & Yuan 2009).
    """
    import hardware as hw

    spec = hw.resolve(hardware)
    peak = spec.peak(dtype)
    act_bytes = _dtype_bytes("dtype", dtype)
    param_bytes = _dtype_bytes("param_dtype", param_dtype)
    seq_len = cfg.seq_len if seq_len is None else seq_len
    check_size("batch_size", batch_size)
    check_size("seq_len", seq_len)
    if isinstance(chips, bool) or not (isinstance(chips, int) or isinstance(chips, jax.Array)) or (
            isinstance(chips, int) and chips <= 0):
        raise ValueError(f"chips={chips!r}: must be a positive int")
    local = batch_size / chips if isinstance(batch_size, jax.Array) or isinstance(chips, jax.Array) else None
    if local is None:
        if batch_size % chips:
            raise ValueError(f"batch_size={batch_size}: must be divisible by chips={chips} "
                             "(each chip takes batch_size / chips sequences)")
        local = batch_size // chips
    flops = count_flops(cfg, batch_size=local, seq_len=seq_len, mode=mode, convention="xla", layout=layout)
    cfg_p, local_p, seq_p = promote(cfg, local, seq_len)
    moved = component_bytes(cfg_p, local_p, seq_p, mode=mode, act_bytes=act_bytes, param_bytes=param_bytes)
    if layout is not None and layout.attention == "flash":
        moved["softmax"] = 0  # the online softmax stays on chip (Dao et al. 2022, Sec. 3.1)
    comps = {}
    for name in FLOP_COMPONENTS:
        f, by = flops.components[name], moved[name]
        tc, tm = f / peak, by / spec.hbm_bandwidth
        bound = _bound(tc, tm)
        comps[name] = ComponentTime(f, by, _max(tc, tm), bound)
    compute = sum(c.time for c in comps.values())
    comm = 0.0
    if mode == "train":
        grad_bytes = count_params(cfg_p).total * param_bytes
        comm = 2 * (chips - 1) / chips * grad_bytes / _link_bandwidth(spec, chips)
    step = compute + comm
    model = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="fma").total
    executed = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="fma",
                           layout=layout).total
    tokens = batch_size * seq_len
    return StepTime(step_time=step, compute_time=compute, comm_time=comm, tokens_per_s=tokens / step,
                    mfu=model / (step * chips * peak), model_flops=model, components=comps,
                    hardware=spec.name, chips=chips, dtype=dtype, hfu=executed / (step * chips * peak),
                    hardware_flops=executed)
