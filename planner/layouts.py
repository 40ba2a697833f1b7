"""The layout search: every valid way to run one training step of a model on ``chips`` chips,
evaluated at once, fastest first.

`search_layouts` enumerates (with NumPy) every combination of

- mesh degrees ``pp x dp x fsdp x cp x tp = chips`` (tp dividing heads, KV heads and d_ff;
  pp x virtual_stages dividing the layers; cp dividing the sequence; dp x fsdp the batch),
- sequence parallelism (tp > 1), virtual stages (pp > 1, interleaved schedule), the
  micro-batch (every divisor of the per-replica batch), the recomputation policy, the attention
  kernel and optimizer sharding (dp > 1),

then evaluates all of them in one jitted, vmapped pass of `planner.timing.cluster_step` (the
same function `planner.roofline(layout=...)` calls), drops those whose memory per chip exceeds
the chip's HBM, and returns the fastest with their breakdowns.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.config import TransformerConfig
from models.layout import Layout
from planner.memory import _dtype_bytes
from hardware.network import numbers, skeleton, with_numbers
from planner.timing import REMAT_CODES, cluster_step

_REMAT_NAMES = {v: k for k, v in REMAT_CODES.items()}
_KEYS = ("tp", "pp", "dp", "fsdp", "cp", "v", "mb", "remat", "flash", "sp", "opt_shard", "ep")


class LayoutResult(NamedTuple):
    """One evaluated layout: its predicted step time and breakdown (seconds, bytes)."""

    layout: Layout
    step_time: float
    tokens_per_s: float
    mfu: float
    hfu: float
    bubble_time: float
    exposed_comm: dict
    memory_per_chip: float

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["layout"] = self.layout.to_string()
        return d


class LayoutSearch(NamedTuple):
    best: list[LayoutResult]
    evaluated: int  # layouts evaluated
    fitting: int  # of those, layouts whose memory fits

    def to_dict(self) -> dict[str, Any]:
        return {"best": [r.to_dict() for r in self.best], "evaluated": self.evaluated, "fitting": self.fitting}


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def _factorisations(chips: int, parts: int):
    """Ordered tuples of ``parts`` positive ints whose product is ``chips``."""
    if parts == 1:
        yield (chips,)
        return
    for d in _divisors(chips):
        for rest in _factorisations(chips // d, parts - 1):
            yield (d, *rest)


def enumerate_layouts(cfg: TransformerConfig, *, chips: int, batch_size: int, seq_len: int,
                      remat=("none", "selective", "dots", "full"), attention=("dot", "flash"),
                      max_virtual_stages: int = 8, max_cp: int = 8) -> dict[str, np.ndarray]:
    """Every valid layout as arrays (keys `_KEYS`), one entry per layout."""
    heads, kv, ff, n_layers = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.d_ff, cfg.n_layers
    rows = []
    for tp, cp, fsdp, dp, pp in _factorisations(chips, 5):
        if heads % tp or kv % tp or ff % tp or n_layers % pp or seq_len % cp or cp > max_cp:
            continue
        if batch_size % (dp * fsdp):
            continue
        per_replica = batch_size // (dp * fsdp)
        vs = [1] if pp == 1 else [v for v in _divisors(n_layers // pp) if v <= max_virtual_stages]
        sps = [0, 1] if tp > 1 and seq_len % (cp * tp) == 0 else [0]
        opts = [0, 1] if dp > 1 else [0]
        mbs = _divisors(per_replica)
        # expert parallelism (MoE only): every degree dividing both the data chips and the experts
        eps = [e for e in _divisors(dp * fsdp) if cfg.n_experts % e == 0] if cfg.is_moe else [1]
        for v, sp, opt, mb, ep in itertools.product(vs, sps, opts, mbs, eps):
            if pp > 1 and per_replica // mb < pp:  # fewer micro-batches than stages: mostly bubble
                continue
            rows.append((tp, pp, dp, fsdp, cp, v, mb, sp, opt, ep))
    if not rows:
        return {k: np.zeros(0, np.int32) for k in _KEYS}
    base = np.asarray(rows, np.int64)
    rc = [REMAT_CODES[r] for r in remat]
    fl = [int(a == "flash") for a in attention]
    grid = np.array(list(itertools.product(range(len(base)), rc, fl)), np.int64)
    b = base[grid[:, 0]]
    out = dict(zip(("tp", "pp", "dp", "fsdp", "cp", "v", "mb", "sp", "opt_shard", "ep"), b.T))
    out["remat"], out["flash"] = grid[:, 1], grid[:, 2]
    return out


_SIZES = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "n_kv_heads", "head_dim")


@functools.lru_cache(maxsize=64)
def _evaluator(template, spec, net, act_bytes, param_bytes, master, fp8, tp_overlap, dp_overlap, dropout):
    """jit(vmap) of `cluster_step` over layouts; the model's sizes, batch and sequence are traced
    arguments, so one compilation serves every shape of the same kind (and the planner's
    candidate shapes) for a bucket of layout counts."""
    def one(x, sizes, batch_size, seq_len, nums):
        cfg = template.replace(**sizes, seq_len=seq_len)
        net_ = with_numbers(net, nums)
        x = dict(x, act_bytes=act_bytes, param_bytes=param_bytes, master=master, fp8=fp8, tp_overlap=tp_overlap,
                 dp_overlap=dp_overlap, dropout=dropout)
        r = cluster_step(cfg, spec, net_, x, batch_size=batch_size, seq_len=seq_len)
        return (r.step_time, r.bubble_time, r.memory_per_chip, r.hardware_flops, r.model_flops,
                jnp.stack([r.exposed[k] for k in _exposed_keys(template)]))

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None)))


def _exposed_keys(cfg) -> tuple[str, ...]:
    return ("tp", "cp", "fsdp", "dp", "pp") + (("ep",) if cfg.is_moe else ())


def evaluate(cfg, spec, net, arrays: dict, *, batch_size: int, seq_len: int, dtype: str = "bf16",
             param_dtype: str = "bf16", master_fp32: bool = True, tp_overlap: bool = False,
             dp_overlap: bool = False, dropout: bool = False):
    """Step time, bubble, memory, FLOPs and exposed comm of every layout in ``arrays`` (one pass;
    the arrays are padded to a power of two so that compilations are reused)."""
    sizes = {k: jnp.float32(v) for k, v in (("vocab_size", cfg.vocab_size), ("d_model", cfg.d_model),
                                             ("n_layers", cfg.n_layers), ("n_heads", cfg.n_heads), ("d_ff", cfg.d_ff),
                                             ("n_kv_heads", cfg.resolved_n_kv_heads),
                                             ("head_dim", cfg.resolved_head_dim))}
    # The compiled pass depends on the model's kind only: sizes are traced (a canonical template).
    template = cfg.replace(vocab_size=2, d_model=2, n_layers=1 + cfg.dense_layers, n_heads=1, d_ff=2, n_kv_heads=1, head_dim=2,
                           seq_len=max(2, cfg.seq_len) if cfg.position == "learned" else 2)
    fn = _evaluator(template, spec, skeleton(net), _dtype_bytes("dtype", dtype), _dtype_bytes("param_dtype", param_dtype),
                    int(master_fp32), int(dtype == "fp8"), int(tp_overlap), int(dp_overlap), int(dropout))
    n = len(arrays["tp"])
    size = 1 << max(10, (n - 1).bit_length())
    x = {k: jnp.asarray(np.pad(np.asarray(arrays[k], np.float32), (0, size - n), mode="edge")) for k in _KEYS}
    nums = {k: jnp.float32(v) for k, v in numbers(net).items()}
    out = fn(x, sizes, jnp.float32(batch_size), jnp.float32(seq_len), nums)
    return [np.asarray(a)[:n] for a in out]


def search_layouts(cfg: TransformerConfig, *, hardware, chips: int, batch_size: int, seq_len: int | None = None,
                   dtype: str = "bf16", param_dtype: str = "bf16", master_fp32: bool = True, top: int = 10,
                   slices: int = 1, tp_overlap: bool = False, dp_overlap: bool = False, dropout: bool = False,
                   remat=("none", "selective", "dots", "full"),
                   attention=("dot", "flash"), max_memory_per_chip: float | None = None) -> LayoutSearch:
    """The fastest layouts of one training step of ``cfg`` on ``chips`` chips of ``hardware``.

    Args:
      batch_size: global sequences per step; seq_len: tokens per sequence (None = cfg.seq_len).
      dtype, param_dtype, master_fp32: the precision every candidate uses.
      top: how many layouts to return (fastest first).
      slices: TPU slices the chips span (see `hardware.network.network`).
      tp_overlap, dp_overlap: whether the software stack overlaps the TP collectives with the
        matmuls, and the DP gradient reduction with the backward pass (`Layout`).
      dropout: count dropout's HBM traffic (see `planner.roofline`).
      remat, attention: the policies and kernels to try.
      max_memory_per_chip: bytes (default the chip's HBM).

    Raises:
      ValueError: bad arguments, or no valid layout fits in memory (the message says what to change).
    """
    import hardware as hw
    from hardware.network import network

    spec = hw.resolve(hardware)
    seq_len = cfg.seq_len if seq_len is None else seq_len
    for name, v in (("chips", chips), ("batch_size", batch_size), ("seq_len", seq_len), ("top", top)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a positive int")
    if chips > 2**20:
        raise ValueError(f"chips={chips}: at most 2^20")
    if cfg.relaxed:
        raise ValueError("search_layouts needs an exact config (int sizes), not a relaxed one")
    for r in remat:
        if r not in REMAT_CODES:
            raise ValueError(f"remat={r!r}: unknown; valid: {', '.join(REMAT_CODES)}")
    for a in attention:
        if a not in ("dot", "flash"):
            raise ValueError(f"attention={a!r}: unknown; valid: dot, flash")
    spec.peak("bf16" if dtype in ("fp16", "fp32") else dtype)
    net = network(spec, chips, slices=slices)
    limit = spec.hbm_bytes if max_memory_per_chip is None else float(max_memory_per_chip)
    arrays = enumerate_layouts(cfg, chips=chips, batch_size=batch_size, seq_len=seq_len, remat=tuple(remat),
                               attention=tuple(attention))
    n = len(arrays["tp"])
    if n == 0:
        raise ValueError(f"no layout of {chips} chips divides this model and batch (heads {cfg.n_heads}, "
                         f"d_ff {cfg.d_ff}, layers {cfg.n_layers}, batch {batch_size}); change chips or the batch")
    step, bubble, mem, hw_flops, model_flops, exposed = evaluate(
        cfg, spec, net, arrays, batch_size=batch_size, seq_len=seq_len, dtype=dtype, param_dtype=param_dtype,
        master_fp32=master_fp32, tp_overlap=tp_overlap, dp_overlap=dp_overlap, dropout=dropout)
    ok = np.isfinite(step) & (mem <= limit)
    if not ok.any():
        raise ValueError(f"none of the {n} valid layouts fits in {limit / 1e9:.0f} GB per chip (smallest need "
                         f"{np.nanmin(mem) / 1e9:.0f} GB); add chips, shrink the batch or the model")
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(step[idx], kind="stable")][:top]
    peak = spec.peak("bf16" if dtype in ("fp16", "fp32") else dtype)
    best = []
    for i in order:
        lay = Layout(tp=int(arrays["tp"][i]), pp=int(arrays["pp"][i]), dp=int(arrays["dp"][i]),
                     fsdp=int(arrays["fsdp"][i]), cp=int(arrays["cp"][i]), micro_batch=int(arrays["mb"][i]),
                     virtual_stages=int(arrays["v"][i]),
                     schedule="interleaved" if arrays["v"][i] > 1 else "1f1b",
                     sequence_parallel=bool(arrays["sp"][i]), optimizer_sharding=bool(arrays["opt_shard"][i]),
                     remat=_REMAT_NAMES[int(arrays["remat"][i])],
                     attention="flash" if arrays["flash"][i] else "dot", dtype=dtype, param_dtype=param_dtype,
                     master_fp32=master_fp32, tp_overlap=tp_overlap, dp_overlap=dp_overlap, ep=int(arrays["ep"][i]))
        t = float(step[i])
        best.append(LayoutResult(lay, t, batch_size * seq_len / t, float(model_flops[i]) / (t * chips * peak),
                                 float(hw_flops[i]) / (t * chips * peak), float(bubble[i]),
                                 dict(zip(_exposed_keys(cfg), map(float, exposed[i]))), float(mem[i])))
    return LayoutSearch(best, n, int(ok.sum()))
