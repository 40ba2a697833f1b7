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
import dataclasses

from hardware.network import collective_time, network, strides
from models.layout import Layout
from planner.flops import FLOP_COMPONENTS, Matmul, count_flops, forward_matmuls, step_matmuls
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
    # With a layout (else None): the cluster breakdown.
    hfu: Any = None  # hardware FLOPs (recomputation included) / (step_time x chips x peak)
    hardware_flops: Any = None  # what the chips execute: model FLOPs + the layout's recomputation
    bubble_time: Any = None
    exposed_comm: dict | None = None  # mesh axis -> exposed seconds per step
    optimizer_time: Any = None
    memory_per_chip: Any = None
    fits: Any = None
    layout: Layout | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("step_time", "compute_time", "comm_time", "tokens_per_s", "mfu",
                                             "model_flops", "hfu", "hardware_flops", "bubble_time", "optimizer_time",
                                             "memory_per_chip", "fits")}
        out = {k: (None if v is None else float(v) if not isinstance(v, bool) else v) for k, v in out.items()}
        out.update(hardware=self.hardware, chips=int(self.chips), dtype=self.dtype,
                   exposed_comm=None if self.exposed_comm is None else {k: float(v) for k, v in self.exposed_comm.items()},
                   layout=None if self.layout is None else self.layout.to_string(),
                   components={k: {"flops": float(c.flops), "bytes": float(c.bytes), "time": float(c.time)}
                               for k, c in self.components.items()})
        return out


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


def roofline(cfg: TransformerConfig, *, hardware, chips=None, batch_size=1, seq_len=None,
             dtype: str | None = None, mode: str = "train", param_dtype: str | None = None,
             layout: Layout | None = None, slices: int = 1, dropout: bool = False,
             uneven_stages: bool = False) -> StepTime:
    """Roofline time of one step of ``models.Transformer(cfg)`` on ``chips`` chips of ``hardware``.

    Args:
      hardware: a `hardware.Spec` or a name (``"h100"``, ``"tpu-v5p"``, a spec file path).
      chips: data-parallel chips; the global ``batch_size`` is split evenly over them.
      dtype: compute dtype: picks the peak (``spec.peak(dtype)``; a chip without it is an error,
        never another dtype's peak) and the activation bytes.
      mode: "train" (forward, backward, AdamW), "forward" or "backward".

      layout: a `Layout`: the cluster step time (`cluster_step`) of that mesh, micro-batch,
        recomputation and precision; ``chips`` (if given) must equal ``layout.chips``, ``dtype``
        and ``param_dtype`` (if given) must equal the layout's. Train mode only.
      slices: TPU slices the chips span (DCN between them); see `hardware.network.network`.
      dropout: with a layout, count the HBM traffic of dropout masks (the model itself has no
        dropout; the published Megatron runs trained with it).
      uneven_stages: with a layout, let pp x virtual_stages not divide the layers (DeepSeek-V3's
        61 layers on 16 stages): the step model then takes the average stage, n_layers / pp.

    Without a layout: FLOPs per component are the "xla" convention's (what the program
    executes); bytes per component are `component_bytes`. ``mfu`` counts model FLOPs, ``hfu``
    hardware FLOPs. The gradient all-reduce moves 2 (chips - 1) / chips x
    parameter bytes over the slowest link it crosses (ring algorithm; Patarasuk & Yuan 2009).
    """
    import hardware as hw

    spec = hw.resolve(hardware)
    if layout is not None:
        return _layout_roofline(cfg, spec, layout, chips=chips, batch_size=batch_size, seq_len=seq_len,
                                dtype=dtype, mode=mode, param_dtype=param_dtype, slices=slices, dropout=dropout,
                                uneven_stages=uneven_stages)
    if slices != 1 or dropout or uneven_stages:
        raise ValueError(f"slices={slices!r}, dropout={dropout!r}, uneven_stages={uneven_stages!r}: apply with a "
                         "layout= only")
    chips = 1 if chips is None else chips
    dtype = "bf16" if dtype is None else dtype
    param_dtype = "fp32" if param_dtype is None else param_dtype
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
    flops = count_flops(cfg, batch_size=local, seq_len=seq_len, mode=mode, convention="xla")
    cfg_p, local_p, seq_p = promote(cfg, local, seq_len)
    moved = component_bytes(cfg_p, local_p, seq_p, mode=mode, act_bytes=act_bytes, param_bytes=param_bytes)
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
    executed = model  # no layout: nothing is recomputed
    tokens = batch_size * seq_len
    return StepTime(step_time=step, compute_time=compute, comm_time=comm, tokens_per_s=tokens / step,
                    mfu=model / (step * chips * peak), model_flops=model, components=comps,
                    hardware=spec.name, chips=chips, dtype=dtype, hfu=executed / (step * chips * peak),
                    hardware_flops=executed)


# ---------------------------------------------------------------------------------------------
# Cluster step time under a Layout: compute of the sharded step at achievable rates, each
# collective overlapped or exposed by a stated rule, the pipeline bubble, the optimizer.

#: Achievable fraction of the dense peak for a large matmul, by chip family; a matmul whose
#: smallest dimension is k runs at MATMUL_EFFICIENCY x k / (k + MATMUL_HALF_DIM) (the usual
#: saturating fit of cuBLAS / MXU efficiency against tile occupancy; Calculon's "gflops
#: efficiency" table has the same shape). Fitted on `planner.published.FIT_RUNS` by
#: benchmarks/published_runs.py --fit; every other published run is held out.
MATMUL_EFFICIENCY = {"gpu": 0.751, "tpu": 0.816}
MATMUL_HALF_DIM = 40.7
#: Achievable fraction of HBM bandwidth for the elementwise passes, by chip family. Started at
#: 0.85 (STREAM-like kernels reach 80-90% of the datasheet bandwidth; Calculon's A100 file uses
#: 0.9 for >100 MB transfers), then fitted on FIT_RUNS with the two above.
HBM_EFFICIENCY = {"gpu": 0.817, "tpu": 0.683}

REMAT_CODES = {"none": 0, "selective": 1, "dots": 2, "full": 3}
SCHEDULE_CODES = {"1f1b": 0, "gpipe": 1, "interleaved": 2}
_LAYER_MATMULS = ("q", "k", "v", "attn_scores", "attn_values", "attn_out", "mlp_in", "mlp_gate", "mlp_out")
_ATTN = ("attn_scores", "attn_values")
_ELEMENTWISE = ("embedding", "rope", "norms", "softmax", "activation", "residual", "loss")


class ClusterStep(NamedTuple):
    """Per-chip times of one step under a layout (seconds; jnp scalars or arrays)."""

    step_time: Any
    compute_time: Any  # forward + backward + recompute of all micro-batches on the busiest stage
    bubble_time: Any
    exposed: dict  # axis -> exposed seconds per step ("tp", "cp", "fsdp", "dp", "pp")
    optimizer_time: Any
    model_flops: Any
    hardware_flops: Any  # model flops + recomputation, per step, all chips
    memory_per_chip: Any
    micro_batches: Any
    wire_bytes: dict  # axis -> bytes one chip sends per step (ring algorithms)


def _family(spec) -> str:
    return "tpu" if spec.interconnect.startswith("ici") else "gpu"


def _matmul_time(m: Matmul, peak, k_half):
    k = jnp.minimum(jnp.minimum(m.m, m.n), m.p)
    # an absent projection (MLA has no plain q/k/v: p = 0) takes no time
    return jnp.where(k > 0, 2 * m.m * m.n * m.p * m.count / (peak * jnp.maximum(k, 1e-30) / (k + k_half)), 0.0)


def dense_fields() -> dict:
    """The expert fields of `TransformerConfig` at their defaults (a dense MLP in every layer)."""
    names = ("n_experts", "experts_per_token", "n_shared_experts", "d_ff_expert", "d_ff_shared", "dense_layers",
             "router", "capacity_factor", "aux_loss_coef")
    return {f.name: f.default for f in dataclasses.fields(TransformerConfig) if f.name in names}


def _stage_matmuls(cfg, local, mb, s_loc):
    """[(weight, forward matmuls)] of one pipeline stage's layers. A dense model, or an MoE with
    every layer routed: the stage itself. An MoE whose first ``dense_layers`` are dense: its
    n_layers / pp layers taken as that share dense and the rest routed (the average stage; a
    config's dense_layers is a whole number, the stage's share need not be)."""
    if not cfg.is_moe or not cfg.dense_layers:
        return [(1.0, forward_matmuls(local, mb, s_loc))]
    f = cfg.dense_layers / cfg.n_layers
    routed = local.replace(dense_layers=0)
    dense = local.replace(**dense_fields())
    return [(1.0 - f, forward_matmuls(routed, mb, s_loc)), (f, forward_matmuls(dense, mb, s_loc))]


def cluster_step(cfg: TransformerConfig, spec, net, x: dict, *, batch_size, seq_len) -> ClusterStep:
    """One training step of ``cfg`` under the layout in ``x`` (numbers or `jnp` arrays, so one
    call can evaluate many layouts under `vmap`).

    ``x`` keys: tp, pp, dp, fsdp, cp, v (virtual stages), mb (sequences per micro-batch per
    replica), remat (`REMAT_CODES`), flash, sp, opt_shard (0/1), act_bytes, param_bytes,
    master (0/1).

    Rules:
      - compute: each matmul of the chip's shard (heads, d_ff and vocabulary / tp; layers / pp,
        the busiest stage holding the output head; tokens / cp) at
        ``peak x MATMUL_EFFICIENCY x k / (k + MATMUL_HALF_DIM)``; elementwise passes at
        ``HBM_EFFICIENCY x`` HBM bandwidth (`component_bytes`), norms and residuals / tp with
        sequence parallelism; flash attention keeps scores out of HBM, skips the masked half and
        recomputes them in the backward pass. Recomputation adds the forward of what the policy
        drops (full: the layers; selective: attention scores and values; dots: the elementwise
        and the attention matmuls, which have batch dimensions, as JAX's
        ``dots_with_no_batch_dims_saveable`` keeps only the others).
      - tp: 2 all-reduces of the activations per layer forward, 2 backward, 2 more when the
        layer is recomputed (as reduce-scatter + all-gather with sequence parallelism, the same
        bytes); exposed (Megatron runs them on the critical path; Shoeybi et al. 2019, Sec. 3),
        unless ``tp_overlap``: then only their excess over the layer's matmuls.
      - cp: keys and values all-gathered forward, reduce-scattered backward, overlapped with the
        attention of the chip's own block (ring attention); the excess is exposed.
      - fsdp: each layer's weights all-gathered before its forward and backward, its gradients
        reduce-scattered after; prefetched one layer ahead, so per layer only the excess over
        that layer's compute is exposed (ZeRO-3; Rajbhandari et al. 2020).
      - dp: one all-reduce of the chip's gradients per step (reduce-scatter + all-gather with
        ``optimizer_sharding``); with ``dp_overlap`` bucketed behind the backward pass of the
        last micro-batch (only the excess exposed), else exposed after it.
      - dropout (``x["dropout"]``, the published Megatron runs): masks read and written on the
        attention probabilities (not with flash) and on both residual branches.
      - pp: each micro-batch sends its activations forward and its gradients back at every
        stage (and chunk) boundary, exposed; the bubble adds (pp - 1) / v micro-batch times
        (GPipe and 1F1B: v = 1; interleaved: v = virtual_stages; Narayanan et al. 2021, Sec. 2.2).
      - optimizer: AdamW reads and writes the chip's shard of the state at HBM bandwidth.
    """
    fam = _family(spec)
    peak = spec.peak("bf16" if x.get("fp8", 0) == 0 else "fp8")
    eff = MATMUL_EFFICIENCY[fam]
    bw = spec.hbm_bandwidth * HBM_EFFICIENCY[fam]
    tp, pp, dp, fsdp, cp = (jnp.asarray(x[k], jnp.float32) for k in ("tp", "pp", "dp", "fsdp", "cp"))
    v, mb = jnp.asarray(x["v"], jnp.float32), jnp.asarray(x["mb"], jnp.float32)
    remat, flash, sp = x["remat"], x["flash"], x["sp"]
    act, pbytes = x["act_bytes"], x["param_bytes"]
    hd = cfg.resolved_head_dim
    kv = cfg.resolved_n_kv_heads
    local = dataclasses.replace(cfg, n_heads=cfg.n_heads / tp, n_kv_heads=kv / tp, head_dim=jnp.float32(hd),
                                d_ff=cfg.d_ff / tp, n_layers=cfg.n_layers / pp, vocab_size=cfg.vocab_size / tp,
                                d_model=jnp.float32(cfg.d_model), seq_len=jnp.float32(seq_len))
    s_loc = seq_len / cp
    attn_scale = cp * jnp.where(flash, 0.5, 1.0)  # keys of the whole sequence; causal blocks skipped
    t_mm = {}
    for weight, fwd in _stage_matmuls(cfg, local, mb, s_loc):
        for name, m in fwd.items():
            t = weight * _matmul_time(m, peak * eff, MATMUL_HALF_DIM)
            t_mm[name] = t_mm.get(name, 0.0) + (t * attn_scale if name in _ATTN else t)
    by_f = component_bytes(local, mb, s_loc, mode="forward", act_bytes=act)
    by_b = component_bytes(local, mb, s_loc, mode="backward", act_bytes=act)
    shard = jnp.where(sp, tp, 1.0)
    scale = {"norms": shard, "residual": shard, "softmax": jnp.where(flash, jnp.inf, 1.0 / cp)}
    t_ew_f = {k: by_f[k] / scale.get(k, 1.0) / bw for k in _ELEMENTWISE}
    t_ew_b = {k: by_b[k] / scale.get(k, 1.0) / bw for k in _ELEMENTWISE}
    # Dropout (Megatron's GPT: on the attention probabilities and on both residual branches;
    # Calculon llm.py's three DropOut layers per block): read, write and a 1-byte mask each way.
    drop = x.get("dropout", 0)
    scores_el = mb * local.n_heads * s_loc * seq_len
    branch_el = 2 * mb * s_loc * cfg.d_model / shard
    t_drop_attn = jnp.where(flash, 0.0, scores_el * (2 * act + 1) / bw) * drop
    t_drop_res = branch_el * (2 * act + 1) / bw * drop * local.n_layers
    t_ew_f["softmax"] = t_ew_f["softmax"] + t_drop_attn * local.n_layers
    t_ew_b["softmax"] = t_ew_b["softmax"] + t_drop_attn * local.n_layers
    t_ew_f["residual"] = t_ew_f["residual"] + t_drop_res
    t_ew_b["residual"] = t_ew_b["residual"] + t_drop_res
    mm_f = sum(t_mm.values())
    mm_layers_f = sum(t_mm[k] for k in _LAYER_MATMULS if k in t_mm)
    attn_f = sum(t_mm[k] for k in _ATTN)
    ew_f, ew_b = sum(t_ew_f.values()), sum(t_ew_b.values())
    ew_layers_f = ew_f - t_ew_f["embedding"] - t_ew_f["loss"]
    t_f = mm_f + ew_f
    t_b = 2 * mm_f + ew_b + jnp.where(flash, attn_f, 0.0)  # flash recomputes the scores
    t_re = jnp.select([remat == 3, remat == 2, remat == 1],
                      [mm_layers_f + ew_layers_f, ew_layers_f + attn_f,
                       jnp.where(flash, 0.0, attn_f + t_ew_f["softmax"])],
                      0.0)
    compute_mb = t_f + t_b + t_re
    # Collectives of one micro-batch on one stage.
    st = strides({"tp": tp, "cp": cp, "fsdp": fsdp, "dp": dp, "pp": pp})
    layers = cfg.n_layers / pp
    tokens = mb * s_loc
    ar_tp = collective_time(net, "all_reduce", tokens * cfg.d_model * act, tp, st["tp"])
    n_ar = 4 + jnp.where(remat == 3, 2, 0)
    layer_mm = (3 * mm_layers_f + jnp.where(remat == 3, mm_layers_f, 0.0)) / layers
    exp_tp = layers * jnp.where(x["tp_overlap"], jnp.maximum(0.0, n_ar * ar_tp - layer_mm), n_ar * ar_tp)
    kv_bytes = tokens * 2 * kv * hd * act / tp
    t_cp = collective_time(net, "all_gather", kv_bytes * cp, cp, st["cp"])
    per_layer_attn = attn_f / layers
    exp_cp = layers * (jnp.maximum(0.0, t_cp - per_layer_attn) + jnp.maximum(0.0, t_cp - 2 * per_layer_attn))
    p_layer = _layer_params(cfg) / tp
    ag = collective_time(net, "all_gather", p_layer * act, fsdp, st["fsdp"])
    rs = collective_time(net, "reduce_scatter", p_layer * pbytes, fsdp, st["fsdp"])
    if cfg.is_moe:  # a chip gathers only its n_experts / ep experts, over what ep leaves of fsdp
        ep_, fsdp_rest_ = _expert_split(x)
        p_exp = _expert_params(cfg) / cfg.n_layers / tp
        p_layer = p_layer - p_exp
        p_exp_chip = p_exp / ep_
        ag = (collective_time(net, "all_gather", p_layer * act, fsdp, st["fsdp"])
              + collective_time(net, "all_gather", p_exp_chip * act, fsdp_rest_, st["fsdp"]))
        rs = (collective_time(net, "reduce_scatter", p_layer * pbytes, fsdp, st["fsdp"])
              + collective_time(net, "reduce_scatter", p_exp_chip * pbytes, fsdp_rest_, st["fsdp"]))
    layer_f, layer_b = t_f / layers, (t_b + t_re) / layers
    exp_fsdp = layers * (jnp.maximum(0.0, ag - layer_f) + jnp.maximum(0.0, ag + rs - layer_b))
    # Each tensor-parallel rank sends its 1/tp slice over its own NIC (the scatter/gather
    # optimisation, Narayanan et al. 2021 Sec. 4.1; with sequence parallelism the activations
    # are sharded over tp anyway).
    send = collective_time(net, "send", tokens * cfg.d_model * act / tp, 2.0, st["pp"])
    exp_pp = jnp.where(pp > 1, 2 * v * send, 0.0)
    per_replica = batch_size / (dp * fsdp)
    m = per_replica / mb
    exp_ep, wire_ep = 0.0, 0.0
    if cfg.is_moe:
        exp_ep, wire_ep = _expert_parallel(cfg, net, x, st, mb=mb, s_loc=s_loc, layers=layers,
                                           layer_time=(t_f + t_b + t_re) / layers, act=act)
    t_mb = compute_mb + exp_tp + exp_cp + exp_fsdp + exp_pp + exp_ep
    bubble = (pp - 1) / v * t_mb
    n_params = _num(count_params(promote(cfg)).total)
    p_chip = n_params / (tp * pp * fsdp)
    t_dp = collective_time(net, "all_reduce", p_chip * pbytes, dp, st["dp"])
    if cfg.is_moe:  # the routed experts: over ep (and the rest of fsdp), reduced over the rest of dp
        ep, fsdp_rest = _expert_split(x)
        experts = _expert_params(cfg)
        dp_rest = dp * fsdp / (ep * fsdp_rest)
        p_experts = experts / (tp * pp * ep * fsdp_rest)
        p_chip = (n_params - experts) / (tp * pp * fsdp) + p_experts
        t_dp = (collective_time(net, "all_reduce", (p_chip - p_experts) * pbytes, dp, st["dp"])
                + collective_time(net, "all_reduce", p_experts * pbytes, dp_rest, st["dp"]))
    exp_dp = jnp.where(x.get("dp_overlap", 0), jnp.maximum(0.0, t_dp - t_b), t_dp)
    opt_share = jnp.where(x["opt_shard"], dp, 1.0)
    master = x["master"]
    t_opt = p_chip / opt_share * (2 * pbytes + 5 * 4 + 8 * master) / bw
    step = m * t_mb + bubble + exp_dp + t_opt
    model = _num(count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="train", convention="fma").total)
    fl = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="forward", convention="fma").components
    layer_fwd = _num(sum(fl[k] for k in _LAYER_MATMULS))
    attn_fwd = _num(fl["attn_scores"] + fl["attn_values"])
    recompute = jnp.select([remat == 3, remat == 2, remat == 1],
                           [layer_fwd, attn_fwd, jnp.where(flash, 0.0, attn_fwd)], 0.0)
    hw_flops = model + recompute + jnp.where(flash, attn_fwd, 0.0)
    mem = _memory_per_chip(cfg, local, x, mb, s_loc, p_chip, opt_share, m)
    exposed = {"tp": m * exp_tp, "cp": m * exp_cp, "fsdp": m * exp_fsdp, "dp": exp_dp, "pp": m * exp_pp}
    if cfg.is_moe:
        exposed["ep"] = m * exp_ep
    ring = lambda g: (g - 1) / g  # noqa: E731
    wire = {"tp": m * layers * n_ar * 2 * ring(tp) * tokens * cfg.d_model * act,
            "cp": m * layers * 3 * ring(cp) * kv_bytes * cp,
            "fsdp": m * layers * ring(fsdp) * p_layer * (2 * act + pbytes)
            + (m * layers * ring(fsdp_rest_) * p_exp_chip * (2 * act + pbytes) if cfg.is_moe else 0.0),
            "dp": 2 * ring(dp) * p_chip * pbytes,
            "pp": jnp.where(pp > 1, m * 2 * v * tokens * cfg.d_model * act / tp, 0.0)}
    if cfg.is_moe:
        wire["ep"] = m * wire_ep
    return ClusterStep(step, m * compute_mb, bubble, exposed, t_opt, model, hw_flops, mem, m, wire)


def _expert_params(cfg):
    """Parameters of the routed experts (all MoE layers), a float for array arithmetic."""
    return _num(cfg.moe_layers * cfg.n_experts * (3 if cfg.gated else 2) * cfg.d_model * cfg.resolved_d_ff_expert)


def _expert_split(x):
    """(ep, fsdp_rest): the expert-parallel degree and what it leaves of fsdp to shard d_model,
    as `planner.collectives.ep_groups` places the experts (the whole fsdp axis, or the whole dp
    axis with d_model then over fsdp, or both; `models.sharding.expert_axes`)."""
    ep, fsdp, dp = (jnp.asarray(x.get(k, 1), jnp.float32) for k in ("ep", "fsdp", "dp"))
    return ep, jnp.where(ep == fsdp, 1.0, jnp.where(ep == dp, fsdp, jnp.maximum(1.0, fsdp / ep)))


def _expert_parallel(cfg, net, x, st, *, mb, s_loc, layers, layer_time, act):
    """(exposed seconds, bytes sent) of one micro-batch's expert all-to-alls on one chip.

    Per MoE layer: dispatch and combine forward, their transposes backward, 4 (a recomputed
    layer does not send them again; `planner.collectives.expert_collectives` lists them). Each sends the chip's tokens x top-k copies of d_model (capacity: capacity
    factor x tokens x k) over the ``ep`` group, which is laid on the fsdp axis (on dp when ep is
    dp's degree and not fsdp's), so it stays on NVLink / ICI while ep x that axis' stride fits the fast domain
    and crosses the scale-out network beyond (`hardware.network.collective_time`). Exposed in
    full, unless ``ep_overlap`` (DeepSeek-V3's DualPipe, arXiv:2412.19437 §3.2.1, overlaps them
    with another micro-batch's compute): then only their excess over the layer's compute."""
    tp, fsdp, dp = (jnp.asarray(x[k], jnp.float32) for k in ("tp", "fsdp", "dp"))
    ep = jnp.asarray(x.get("ep", 1), jnp.float32)
    tokens = mb * s_loc / jnp.where(x["sp"], tp, 1.0)
    k = cfg.experts_per_token if cfg.capacity_factor is None else cfg.capacity_factor * cfg.experts_per_token
    nbytes = tokens * k * cfg.d_model * act
    stride = jnp.where((ep == dp) & (ep != fsdp), st["dp"], st["fsdp"])
    t = collective_time(net, "all_to_all", nbytes, ep, stride)
    n = 4.0
    moe = cfg.moe_layers * layers / cfg.n_layers
    exposed = moe * jnp.where(x.get("ep_overlap", 0), jnp.maximum(0.0, n * t - layer_time), n * t)
    return exposed, moe * n * (ep - 1) / ep * nbytes


def _num(x):
    """Exact counts (Python ints, past int32) as floats for array arithmetic; arrays unchanged."""
    return float(x) if isinstance(x, int) else x


def _layer_params(cfg: TransformerConfig):
    pc = count_params(promote(cfg))
    return _num(pc.total - pc.components.get("embedding", 0) - pc.components.get("position", 0)
            - pc.components.get("head", 0) - pc.components.get("final_norm", 0)) / cfg.n_layers


def _memory_per_chip(cfg, local, x, mb, s_loc, p_chip, opt_share, m):
    """Bytes per chip: parameters and gradients (sharded over tp, pp, fsdp), AdamW moments and
    master weights (also over dp with optimizer sharding), the activations of the micro-batches
    in flight on the first stage (min(pp, m) under 1F1B; Narayanan et al. 2021 Sec. 2.2), logits."""
    pb = x["param_bytes"]
    states = p_chip * 2 * pb + p_chip / opt_share * (8 + 4 * x["master"])
    full = _dot_activation_bytes(local, mb, s_loc) * x["act_bytes"] / 2
    own = 3 * mb * local.n_heads * s_loc * s_loc * x["act_bytes"]  # the scores `full` counts
    no_scores = full - own
    full = full + own * (x["cp"] - 1)  # with cp, local queries attend to the whole sequence
    sp = jnp.where(x["sp"], x["tp"], 1.0)
    kept = jnp.select([x["remat"] == 3, (x["remat"] == 1) | (x["flash"] == 1), x["remat"] == 2],
                      [mb * s_loc * cfg.d_model * x["act_bytes"] / sp, no_scores, no_scores * 0.6], full)
    in_flight = jnp.minimum(x["pp"], m) * (1.0 + (x["v"] > 1) * (x["pp"] - 1) / (x["pp"] * x["v"]))
    acts = local.n_layers * kept * in_flight + jnp.where(x["remat"] == 3, full, 0.0)
    logits = 10 * mb * s_loc * local.vocab_size
    return states + acts + logits


def _dot_activation_bytes(cfg, batch_size, seq_len):
    """bf16 bytes one layer of the dot-attention model keeps without recomputation: per token the
    norm inputs and outputs (4 d), q, k, v ((H + 2K) hd), the attention output (H hd), the MLP's
    inputs and hidden activation (2 or 3 ff), and per head three (t x t) score tensors (raw,
    masked, probabilities); Korthikanti et al. 2022, Eq. 2 without dropout. The layout search's
    array form; `planner.memory.estimate_memory` is the per-policy breakdown of one layout."""
    d, ff, hd = cfg.d_model, cfg.d_ff, cfg.resolved_head_dim
    h, kv = cfg.n_heads, cfg.resolved_n_kv_heads
    per_token = 4 * d + (h + 2 * kv) * hd + h * hd + (3 if cfg.gated else 2) * ff
    return (batch_size * seq_len * per_token + 3 * batch_size * h * seq_len * seq_len) * 2


def layout_arrays(layout: Layout) -> dict[str, Any]:
    """The numbers `cluster_step` reads from a Layout."""
    return {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "fsdp": layout.fsdp, "cp": layout.cp,
            "v": layout.virtual_stages, "mb": layout.micro_batch, "remat": REMAT_CODES[layout.remat],
            "flash": int(layout.attention == "flash"), "sp": int(layout.sequence_parallel and layout.tp > 1),
            "opt_shard": int(layout.optimizer_sharding), "act_bytes": _dtype_bytes("dtype", layout.dtype),
            "param_bytes": _dtype_bytes("param_dtype", layout.param_dtype), "master": int(layout.master_fp32),
            "fp8": int(layout.dtype == "fp8"), "tp_overlap": int(layout.tp_overlap),
            "dp_overlap": int(layout.dp_overlap), "ep": layout.ep, "ep_overlap": int(layout.ep_overlap)}


def _layout_roofline(cfg, spec, layout, *, chips, batch_size, seq_len, dtype, mode, param_dtype, slices, dropout,
                     uneven_stages=False):
    if not isinstance(layout, Layout):
        raise ValueError(f"layout={layout!r}: give a planner.Layout (e.g. Layout.parse('fsdp=8,tp=8'))")
    if mode != "train":
        raise ValueError(f"mode={mode!r}: a layout's step time is for mode='train'")
    if chips is not None and chips != layout.chips:
        raise ValueError(f"chips={chips!r}: the layout uses {layout.chips} chips; drop chips= or match it")
    for name, given, own in (("dtype", dtype, layout.dtype), ("param_dtype", param_dtype, layout.param_dtype)):
        if given is not None and given != own:
            raise ValueError(f"{name}={given!r}: the layout says {name}={own!r}; set it in the layout")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    check_size("batch_size", batch_size)
    check_size("seq_len", seq_len)
    layout.check(cfg, batch_size=batch_size, seq_len=seq_len, uneven_stages=uneven_stages)
    if layout.micro_batch is None:
        layout = layout.replace(micro_batch=max(1, batch_size // layout.data_parallel))
    peak_dtype = "bf16" if layout.dtype in ("fp16", "fp32") else layout.dtype
    peak = spec.peak(peak_dtype)
    net = network(spec, layout.chips, slices=slices)
    if not isinstance(dropout, bool):
        raise ValueError(f"dropout={dropout!r}: must be True or False")
    x = dict(layout_arrays(layout), dropout=int(dropout))
    r = cluster_step(cfg, spec, net, x, batch_size=batch_size, seq_len=seq_len)
    chips = layout.chips
    step = float(r.step_time)
    comm = sum(float(v) for v in r.exposed.values())
    mem = float(r.memory_per_chip)
    return StepTime(step_time=step, compute_time=float(r.compute_time), comm_time=comm,
                    tokens_per_s=batch_size * seq_len / step, mfu=float(r.model_flops) / (step * chips * peak),
                    model_flops=r.model_flops, components={}, hardware=spec.name, chips=chips, dtype=layout.dtype,
                    hfu=float(r.hardware_flops) / (step * chips * peak), hardware_flops=r.hardware_flops,
                    bubble_time=float(r.bubble_time),
                    exposed_comm={k: float(v) for k, v in r.exposed.items()}, optimizer_time=float(r.optimizer_time),
                    memory_per_chip=mem, fits=mem <= spec.hbm_bytes, layout=layout)
