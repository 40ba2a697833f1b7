"""The collectives of one training step under a `Layout`, in closed form.

`collectives` lists every collective a step of `models.Transformer` runs on one device when
`models.sharding` places it on a mesh: its kind, the mesh axis (or axes) it runs over, the
group size, the bytes of the buffer and how many times per step. Pure arithmetic on the
config's numbers, like the FLOP counts: exact ints from Python ints, differentiable floats from
a relaxed config (the group sizes are the layout's ints; only the sizes vary).

What each parallelism sends (b = sequences per micro-batch per data replica, t = seq_len / cp,
d = d_model, e = bytes of the compute dtype; L = n_layers / pp layers on one device):

- FSDP (ZeRO-3; Rajbhandari et al. 2020, Sec. 5.3): every weight is all-gathered over ``fsdp``
  before its forward use and, with ``gather_in_backward``, again before its backward use (the
  compiler frees the gathered copy between them); its gradient is reduce-scattered over
  ``fsdp``. The embedding lookup needs no table in the backward, and the output head (tied or
  untied) keeps its gathered copy: its backward follows its forward at once.
- DP: the gradient of every parameter is all-reduced over the data axes it is replicated on
  (``dp``, and ``cp``, whose shards saw different tokens); ZeRO-1 (``optimizer_sharding``)
  reduce-scatters it over ``dp`` and all-gathers the updated parameters (Megatron's
  distributed optimizer).
- TP (Shoeybi et al. 2019, Sec. 3, their f and g operators): per layer an all-reduce of the
  (b, t, d) activations after ``attn_out`` and after ``mlp_out`` in the forward, and of the
  input gradients of q/k/v and of ``mlp_in`` in the backward: 4 per layer. With
  ``sequence_parallel`` (Korthikanti et al. 2022, Sec. 4.2.2) each all-reduce becomes an
  all-gather before and a reduce-scatter after the layer's tensor-parallel part: 4 all-gathers
  and 4 reduce-scatters per layer, each of the full (b, t, d) buffer. The vocabulary is split
  over ``tp`` too: the embedding lookup all-reduces (or reduce-scatters) its output, the loss
  all-reduces its max, its sum of exponentials and the label's logit over the vocabulary
  ((b, t) each, in the logits' dtype), and the head's input gradient is all-reduced.
- CP: the keys and values of every layer are all-gathered over ``cp`` ((b, seq_len, kv x hd /
  tp) each), and their gradients all-reduced in the backward (XLA's transpose of the gather:
  the whole gradient reduced, each device keeping its slice); or with
  ``cp_attention="ring"`` passed around a ring, cp - 1 collective-permutes of each shard
  (Liu et al. 2023, "Ring Attention"; the backward sends keys, values and their gradients).
- PP: one collective-permute of the (b, t, d) activations per micro-batch and virtual stage in
  the forward, and of its gradient in the backward (Narayanan et al. 2021); a device holds
  n_layers / pp layers, so the per-layer collectives above count L = n_layers / pp.

Bytes are those of the HLO buffer the op is printed with: the all-gather's result, the
reduce-scatter's operand (the unscattered buffer), the all-reduce's operand, the permute's
operand. Sizes that do not divide a degree are padded, as XLA pads them (ceiling division).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from models.config import TransformerConfig, check_size, is_relaxed
from models.layout import Layout
from models.sharding import mesh_axes
from planner.memory import DTYPE_BYTES
from planner.params import promote

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
PHASES = ("forward", "backward", "optimizer")
GRAD_REDUCE = ("reduce-scatter", "all-reduce")
CP_ATTENTION = ("all-gather", "ring")
#: The per-layer weight matrices FSDP can gather for the backward (`collectives`' ``regather``).
MATRIX_COMPONENTS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_gate", "mlp_out", "head")
COLLECTIVE_MODES = ("train", "forward")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a step, on one device.

    Attributes:
      kind: one of `KINDS`.
      axis: the mesh axis it runs over ("fsdp", "tp", "dp", "cp", "pp"), or a tuple of axes
        for one collective over several (its group is their product).
      group_size: devices in its group.
      bytes: bytes of the buffer per device per occurrence, as the HLO op shows it: the
        all-gather's result, the reduce-scatter's operand, the all-reduce's operand, the
        all-to-all's operand, the collective-permute's operand.
      count: occurrences per step.
      component: what it serves (a parameter or FLOP component: "mlp_in", "attn_out",
        "embedding", "qkv", "kv", "loss", "pipeline", ...).
      phase: "forward", "backward" or "optimizer".
      dtype: the dtype of the buffer.
      purpose: "weights" (FSDP/ZeRO gathers), "gradients", or "activations".
    """

    kind: str
    axis: str | tuple[str, ...]
    group_size: int
    bytes: Any
    count: Any
    component: str
    phase: str
    dtype: str
    purpose: str

    @property
    def wire_bytes(self) -> Any:
        """Bytes one device sends per occurrence with a ring (bandwidth-optimal) algorithm:
        (g-1)/g x bytes for all-gather, reduce-scatter and all-to-all, 2 (g-1)/g x bytes for
        all-reduce (a reduce-scatter then an all-gather), the whole buffer for a permute
        (Thakur et al. 2005; Patarasuk & Yuan 2009)."""
        g = self.group_size
        if self.kind == "collective-permute":
            return self.bytes
        factor = 2 if self.kind == "all-reduce" else 1
        return factor * (g - 1) * self.bytes / g

    @property
    def total_bytes(self) -> Any:
        return self.bytes * self.count

    @property
    def total_wire_bytes(self) -> Any:
        return self.wire_bytes * self.count

    @property
    def axis_name(self) -> str:
        """The axis as one string: "fsdp", or "dp+cp" for a collective over several."""
        return self.axis if isinstance(self.axis, str) else "+".join(self.axis)

    def to_dict(self) -> dict[str, Any]:
        num = lambda x: x if isinstance(x, int) else float(x)  # noqa: E731
        return {"kind": self.kind, "axis": self.axis_name, "group_size": self.group_size,
                "bytes": num(self.bytes), "count": num(self.count), "component": self.component,
                "phase": self.phase, "dtype": self.dtype, "purpose": self.purpose,
                "wire_bytes": num(self.wire_bytes), "total_bytes": num(self.total_bytes)}


def bytes_per_axis(colls: list[Collective], *, wire: bool = False) -> dict[str, Any]:
    """Total bytes per step per mesh axis ("fsdp", "tp", "dp+cp", ...): buffer bytes x count
    (``wire=True``: the ring algorithm's bytes sent per device)."""
    out: dict[str, Any] = {}
    for c in colls:
        out[c.axis_name] = out.get(c.axis_name, 0) + (c.total_wire_bytes if wire else c.total_bytes)
    return out


def bytes_per_kind(colls: list[Collective]) -> dict[tuple[str, str], Any]:
    """Total buffer bytes per step per (axis, kind)."""
    out: dict[tuple[str, str], Any] = {}
    for c in colls:
        key = (c.axis_name, c.kind)
        out[key] = out.get(key, 0) + c.total_bytes
    return out


# ----------------------------------------------------------------------------- helpers
def _div(n, g: int):
    """n / g: the ceiling for ints (XLA pads a dimension a degree does not divide), a float
    division for relaxed sizes."""
    if g == 1:
        return n
    if isinstance(n, int):
        return -(-n // g)
    return n / g


def _dtype(name: str, value: str) -> int:
    if not isinstance(value, str) or value not in DTYPE_BYTES:
        raise ValueError(f"{name}={value!r}: unknown dtype; valid: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[value]


def _choice(name: str, value, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name}={value!r}: unknown; valid: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class _Param:
    """One parameter (per layer for layer parameters): its component, its logical axes with
    their sizes, how many copies a device holds (layers), whether the compiler gathers it again
    for the backward pass, and whether it acts on the sequence-parallel residual stream."""

    component: str
    shape: tuple  # ((logical axis, size), ...)
    copies: Any
    backward_use: bool
    on_residual: bool
    fp32_grad: bool = False  # a norm scale: flax's norms compute in float32


def parameters(cfg: TransformerConfig, layers) -> list[_Param]:
    """The parameters of `models.Transformer` with the logical axes it annotates them with
    (models.transformer, models.sharding.RULES)."""
    d, ff, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    hd = cfg.resolved_head_dim
    qw, kvw = cfg.n_heads * hd, cfg.resolved_n_kv_heads * hd
    ps = [_Param("embedding", (("vocab", v), ("embed", d)), 1, False, False)]
    if cfg.position == "learned":
        ps.append(_Param("position", (("position", cfg.seq_len), ("embed", d)), 1, False, True))
    # a norm's scale, and with LayerNorm and biases its bias (whose gradient comes in the compute
    # dtype: measured, XLA:TPU)
    norm = [((("norm", d),), True)] + ([((("norm", d),), False)] if cfg.norm == "layernorm" and cfg.bias else [])
    qkv_bias, bias = cfg.resolved_qkv_bias, cfg.bias
    for s, fp32 in norm * 2:
        ps.append(_Param("norms", s, layers, False, True, fp32))
    for name, width, axis in (("q", qw, "heads"), ("k", kvw, "kv_heads"), ("v", kvw, "kv_heads")):
        ps.append(_Param(name, (("embed", d), (axis, width)), layers, True, False))
        if qkv_bias:
            ps.append(_Param(name, ((axis, width),), layers, False, False))
    ps.append(_Param("attn_out", (("heads", qw), ("embed", d)), layers, True, False))
    if bias:
        ps.append(_Param("attn_out", (("embed", d),), layers, False, True))
    dense = layers if not cfg.is_moe else _dense_layers_here(cfg, layers)
    for name in ("mlp_in", "mlp_gate") if cfg.gated else ("mlp_in",):
        ps.append(_Param(name, (("embed", d), ("mlp", ff)), dense, True, False))
        if bias:
            ps.append(_Param(name, (("mlp", ff),), dense, False, False))
    ps.append(_Param("mlp_out", (("mlp", ff), ("embed", d)), dense, True, False))
    if bias:
        ps.append(_Param("mlp_out", (("embed", d),), dense, False, True))
    if cfg.is_moe:  # the router and the shared experts; the routed experts are `expert_parameters`
        moe = layers - dense
        ps.append(_Param("router", (("embed", d), (None, cfg.n_experts)), moe, True, False))
        if cfg.n_shared_experts:
            sh = cfg.n_shared_experts * cfg.resolved_d_ff_shared
            for name in ("mlp_in", "mlp_gate") if cfg.gated else ("mlp_in",):
                ps.append(_Param("shared_experts", (("embed", d), ("mlp", sh)), moe, True, False))
            ps.append(_Param("shared_experts", (("mlp", sh), ("embed", d)), moe, True, False))
    for s, fp32 in norm:
        ps.append(_Param("norms", s, 1, False, True, fp32))
    if not cfg.tied_embeddings:
        ps.append(_Param("head", (("embed", d), ("vocab", v)), 1, False, False))
    return ps


def _sharded_axes(p: _Param, layout: Layout) -> set[str]:
    return {a for name, size in p.shape for a in mesh_axes(name, layout, size=size)}


def _local_elements(p: _Param, layout: Layout, skip: tuple[str, ...] = ()):
    """Elements of the parameter on one device, with the axes in ``skip`` left unsplit."""
    n = 1
    for name, size in p.shape:
        for a in mesh_axes(name, layout, size=size):
            if a not in skip:
                size = _div(size, getattr(layout, a))
        n = n * size
    return n


def _group(axes: tuple[str, ...], layout: Layout) -> tuple[str | tuple[str, ...], int]:
    g = 1
    for a in axes:
        g *= getattr(layout, a)
    return (axes[0] if len(axes) == 1 else axes), g


# ----------------------------------------------------------------------------- the closed form
def collectives(cfg: TransformerConfig, layout: Layout, *, batch_size, seq_len=None, mode: str = "train",
                dtype: str | None = None, param_dtype: str | None = None, gather_dtype: str | None = None,
                grad_dtype: str | None = None, gather_in_backward: bool = True,
                grad_reduce: str = "reduce-scatter", cp_attention: str = "all-gather",
                keep_last_gathered: tuple[str, ...] | None = None, sp_regather: bool = True,
                regather: tuple[str, ...] = (), sp_gather_dtype: str | None = None,
                loss_sum_dtype: str | None = None, embedding_gather_dtype: str | None = None,
                optimizer_moments: int = 2, reduce_after_accumulation: bool = False) -> list[Collective]:
    """Every collective of one step of `models.Transformer` on one device under ``layout``.

    Args:
      cfg: the model (ints, or a relaxed config).
      layout: the mesh degrees (dp, fsdp, tp, cp, pp, virtual_stages), sequence_parallel,
        optimizer_sharding and micro_batch are read; ``layout.check`` is applied to ints.
      batch_size: global sequences per step; seq_len: tokens per sequence (None = cfg.seq_len).
      mode: "train" (forward, backward, gradient reduction, optimizer) or "forward".
      dtype: compute dtype of activations and of the logits (None = ``layout.dtype``).
      param_dtype: storage dtype of the parameters (None = ``layout.param_dtype``): what ZeRO-1
        gathers after the update.
      gather_dtype: the dtype FSDP gathers weights in. None = ``dtype``: the compilers move the
        cast to the compute dtype before the gather (measured on TPU and H100, XLA 2026).
      grad_dtype: the dtype gradients are reduced in. None = ``dtype`` (the gradient of a
        weight used in the compute dtype is produced in it, and reduced before the cast).
      gather_in_backward: FSDP gathers each weight again for its backward use (XLA:TPU does,
        to free the forward copy); False = the forward copy is kept (XLA:GPU, 2x).
      grad_reduce: "reduce-scatter" of the FSDP gradients, or "all-reduce" (XLA:CPU replaces
        it with one all-reduce; on large TPU tori the compiler may too).
      cp_attention: "all-gather" of keys and values over ``cp``, or "ring" permutes.
      keep_last_gathered: with ``gather_in_backward``, the last layer's weights whose gathered
        copies the compiler keeps for the backward (which starts with them, right after the
        forward) instead of gathering them again. None = what XLA:TPU does (measured): all of
        the MLP's for a gated MLP, ``mlp_out`` alone for a plain one; () = gather all again.
      sp_regather: with ``sequence_parallel``, the backward all-gathers the two block inputs of
        every layer but the last again (XLA:TPU, measured) rather than keeping the forward's.
      regather: components FSDP gathers again for the backward although ``gather_in_backward``
        is False (XLA:GPU with tp > 1 gathers the MLP's matrices a second time, in the layout
        of the backward's products; measured).
      sp_gather_dtype: the dtype sequence parallelism all-gathers the normed block inputs in
        (None = ``dtype``: XLA:TPU casts the norm's float32 output first; XLA:GPU gathers the
        float32 output and casts after: "fp32").
      loss_sum_dtype: the dtype of the loss's all-reduced sum of exponentials over a split
        vocabulary (None = ``dtype``; XLA:GPU keeps it in "fp32").
      embedding_gather_dtype: the dtype FSDP gathers the embedding table in (None =
        ``gather_dtype``; "param" = ``param_dtype``). XLA:GPU mostly gathers it in its storage
        dtype and casts after (13 of the 14 h100:8 grid rows with fsdp; benchmarks/collectives.py).
      reduce_after_accumulation: with micro-batches, the gradients of parameters replicated over
        the data axes are all-reduced once per step, after the micro-batches are summed
        (XLA:GPU; an embedding table split over tp, and an untied head, are still reduced per
        micro-batch),
        not once per micro-batch (XLA:TPU; it does so only for the float32 norm scales, whose
        gradients join the float32 accumulator unconverted).
      optimizer_moments: arrays of optimizer state per parameter (AdamW: 2). The learned
        position table under ``cp`` is updated on each device's rows and gathered over ``cp``
        with its moments (measured, XLA:TPU and XLA:GPU alike: the SPMD partitioner's choice).

    Returns:
      A list of `Collective`; `bytes_per_axis` sums it per mesh axis.

    Example:
      >>> from models import presets
      >>> cs = collectives(presets.get("llama-2-7b"), Layout(tp=2), batch_size=1, seq_len=4096, dtype="bf16")
      >>> sum(c.count for c in cs if c.component in ("attn_out", "mlp_out") and c.phase == "forward")
      64
    """
    _choice("mode", mode, COLLECTIVE_MODES)
    _choice("grad_reduce", grad_reduce, GRAD_REDUCE)
    _choice("cp_attention", cp_attention, CP_ATTENTION)
    if not isinstance(layout, Layout):
        raise ValueError(f"layout={layout!r}: expected a planner.Layout (e.g. Layout.parse('fsdp=4,tp=2'))")
    for name, flag in (("gather_in_backward", gather_in_backward), ("sp_regather", sp_regather),
                       ("reduce_after_accumulation", reduce_after_accumulation)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r}: must be True or False")
    if not isinstance(regather, (tuple, list)) or not set(regather) <= set(MATRIX_COMPONENTS):
        raise ValueError(f"regather={regather!r}: a tuple of weight matrices; valid: {', '.join(MATRIX_COMPONENTS)}")
    if isinstance(optimizer_moments, bool) or not isinstance(optimizer_moments, int) or optimizer_moments < 0:
        raise ValueError(f"optimizer_moments={optimizer_moments!r}: a non-negative int (AdamW: 2)")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    check_size("batch_size", batch_size)
    check_size("seq_len", seq_len)
    layout.check(cfg, batch_size=batch_size if not is_relaxed(batch_size) else None,
                 seq_len=seq_len if not is_relaxed(seq_len) else None)
    dtype = layout.dtype if dtype is None else dtype
    param_dtype = layout.param_dtype if param_dtype is None else param_dtype
    gather_dtype = dtype if gather_dtype is None else gather_dtype
    grad_dtype = dtype if grad_dtype is None else grad_dtype
    sp_gather_dtype = dtype if sp_gather_dtype is None else sp_gather_dtype
    loss_sum_dtype = dtype if loss_sum_dtype is None else loss_sum_dtype
    embedding_gather_dtype = {None: gather_dtype, "param": param_dtype}.get(embedding_gather_dtype,
                                                                            embedding_gather_dtype)
    e, e_gather, e_grad, e_param, e_sp, e_loss, e_table = (_dtype(n, v) for n, v in (
        ("dtype", dtype), ("gather_dtype", gather_dtype), ("grad_dtype", grad_dtype), ("param_dtype", param_dtype),
        ("sp_gather_dtype", sp_gather_dtype), ("loss_sum_dtype", loss_sum_dtype),
        ("embedding_gather_dtype", embedding_gather_dtype)))
    cfg, batch_size, seq_len = promote(cfg, batch_size, seq_len)

    train = mode == "train"
    lay = layout
    steps = lay.accumulation_steps(batch_size) if isinstance(batch_size, int) else 1
    b = _div(batch_size, lay.data_parallel) if lay.micro_batch is None else lay.micro_batch
    t = _div(seq_len, lay.cp)
    d = cfg.d_model
    layers = _div(cfg.n_layers, lay.pp)
    act = b * t * d  # one (b, t, d) activation buffer, elements
    out: list[Collective] = []

    def add(kind, axes, nbytes, count, component, phase, dt, purpose):
        axes = tuple(a for a in axes if getattr(lay, a) > 1)
        if not axes:
            return
        axis, g = _group(axes, lay)
        out.append(Collective(kind, axis, g, nbytes, count, component, phase, dt, purpose))

    # --- weights: FSDP gathers, gradient reductions, ZeRO-1 --------------------------------
    data_axes = ("dp", "fsdp", "cp")
    if keep_last_gathered is None and lay.remat != "none":
        keep_last_gathered = ()  # a rematerialised last layer gathers them again (measured)
    elif keep_last_gathered is None:
        keep_last_gathered = ("mlp_in", "mlp_gate", "mlp_out") if cfg.gated else ("mlp_out",)
    params = parameters(cfg, layers)
    for p in params:
        sharded = _sharded_axes(p, lay)
        e_g = 4 if p.fp32_grad else e_grad  # flax's norms compute in float32
        g_dt = "fp32" if p.fp32_grad else grad_dtype
        component = p.component
        # the learned position table under cp (and the sequence-parallel tp): each device's
        # gradient holds only its rows, and it updates only those
        row_axes = ("cp",) + (("tp",) if lay.sequence_parallel else ())
        row_deg = lay.cp * (lay.tp if lay.sequence_parallel else 1)
        rows_cp = p.component == "position" and row_deg > 1
        if "fsdp" in sharded:
            gathered = _local_elements(p, lay, skip=("fsdp",))
            if rows_cp:  # (seq_len / cp, d_model): the table's columns are its only split axis
                gathered = _div(seq_len, lay.cp) * d
            again = train and ((p.backward_use and gather_in_backward) or p.component in regather)
            ag_e, ag_dt = (e_table, embedding_gather_dtype) if p.component == "embedding" else (e_gather, gather_dtype)
            for phase in ("forward", "backward") if again else ("forward",):
                count = p.copies * steps
                if (phase == "backward" and gather_in_backward and p.component in keep_last_gathered
                        and not cfg.is_moe):
                    count = (p.copies - 1) * steps
                add("all-gather", ("fsdp",), gathered * ag_e, count, component, phase, ag_dt, "weights")
            if again and gather_in_backward and lay.remat == "full" and p.component in RECOMPUTE_GATHERED:
                add("all-gather", ("fsdp",), gathered * ag_e, p.copies * steps, component, "backward", ag_dt,
                    "weights")
        if not train:
            continue
        if rows_cp:
            # its gradient is whole over cp already (other rows are other devices'): reduced over
            # the batch axes, the update run on the rows, then the rows of the table and of its
            # optimizer moments all-gathered over cp (and tp) in their storage dtype
            rows = _div(seq_len, row_deg)
            add("all-reduce", ("fsdp",), rows * d * e_grad, steps, component, "backward", grad_dtype, "gradients")
            add("all-reduce", ("dp",), rows * _div(d, lay.fsdp) * e_grad, steps, component, "backward", grad_dtype,
                "gradients")
            add("all-gather", row_axes, _local_elements(p, lay) * e_param, 1 + optimizer_moments, component,
                "optimizer", param_dtype, "weights")
            continue
        token_axes = data_axes + (("tp",) if lay.sequence_parallel and p.on_residual else ())
        if p.component == "embedding" and (lay.dp > 1 or lay.cp > 1 or cfg.tied_embeddings):
            # The table as the lookup (and the tied head) read it is whole over the data axes, so
            # its gradient is reduced whole: the tied head's part on its own, then the sum; with
            # data axes besides fsdp the sum is all-reduced, not reduce-scattered (measured, TPU).
            whole = _local_elements(p, lay, skip=("fsdp",))
            if cfg.tied_embeddings:
                add("all-reduce", data_axes, whole * e_grad, steps, "logits", "backward", grad_dtype, "gradients")
            if lay.dp > 1 or lay.cp > 1:
                once = reduce_after_accumulation and "tp" not in sharded  # a table tp splits: per micro-batch
                add("all-reduce", data_axes, whole * e_grad, 1 if once else steps, component, "backward", grad_dtype,
                    "gradients")
                if lay.optimizer_sharding and lay.dp > 1:  # ZeRO-1: the updated table gathered over dp
                    add("all-gather", ("dp",), _local_elements(p, lay) * e_param, 1, component, "optimizer",
                        param_dtype, "weights")
                continue
        if lay.optimizer_sharding and lay.dp > 1 and "fsdp" in sharded and not p.on_residual:
            # ZeRO-1 beside FSDP: the state split over fsdp and dp, the gradient all-reduced over
            # both at once (whole over fsdp; each device then keeps its slice) and the updated
            # parameters all-gathered over dp (measured, XLA:TPU)
            whole = _local_elements(p, lay, skip=("fsdp",))
            add("all-reduce", data_axes, whole * e_g, p.copies * steps, component, "backward", g_dt, "gradients")
            add("all-gather", ("dp",), _local_elements(p, lay) * e_param, p.copies, component, "optimizer",
                param_dtype, "weights")
            continue
        if "fsdp" in sharded and p.on_residual and p.component != "norms" and lay.dp > 1 and not lay.sequence_parallel:
            # a d_model-wide bias (or the position table) added to the residual stream: its
            # gradient, a sum over the tokens, is all-reduced whole over every data axis at
            # once, not reduce-scattered over fsdp and then all-reduced over dp (measured on
            # XLA:TPU and XLA:GPU alike)
            whole = _local_elements(p, lay, skip=("fsdp",))
            add("all-reduce", data_axes, whole * e_g, p.copies * steps, component, "backward", g_dt, "gradients")
            continue
        if "fsdp" in sharded:
            full = _local_elements(p, lay, skip=("fsdp",))
            add(grad_reduce, ("fsdp",), full * e_g, p.copies * steps, component, "backward", g_dt, "gradients")
        rest = tuple(a for a in token_axes if a not in sharded)
        local = _local_elements(p, lay)
        if lay.optimizer_sharding and "dp" in rest and lay.dp > 1 and p.component != "norms":
            # (the norm scales' gradients stay all-reduced: measured, XLA:TPU)
            # ZeRO-1: reduce-scatter over dp (with the other replicated axes), then the updated
            # parameters all-gathered over dp in their storage dtype.
            others = tuple(a for a in rest if a != "dp")
            add("all-reduce", others, local * e_g, p.copies * steps, component, "backward", g_dt, "gradients")
            add(grad_reduce, ("dp",), local * e_g, p.copies, component, "backward", g_dt, "gradients")
            add("all-gather", ("dp",), local * e_param, p.copies, component, "optimizer", param_dtype, "weights")
        else:
            # a norm scale's float32 gradient joins the float32 accumulator as it is, so the
            # compiler sums the micro-batches first and reduces once (measured, XLA:TPU); an
            # untied head's gradient is made behind an optimization barrier in each micro-batch
            # (models.transformer.head_gradients_together), so it is reduced there (XLA:GPU)
            after = reduce_after_accumulation and p.component != "head"
            reduces = p.copies * (1 if p.fp32_grad or after else steps)
            add("all-reduce", rest, local * e_g, reduces, component, "backward", g_dt, "gradients")

    # --- activations: tensor and sequence parallelism -------------------------------------
    per_layer = layers * steps
    sp = lay.sequence_parallel
    if sp:
        pairs = [("all-gather", "qkv", "forward"), ("reduce-scatter", "attn_out", "forward"),
                 ("all-gather", "mlp_in", "forward"), ("reduce-scatter", "mlp_out", "forward")]
        if train:
            pairs += [("all-gather", "attn_out", "backward"), ("reduce-scatter", "qkv", "backward"),
                      ("all-gather", "mlp_out", "backward"), ("reduce-scatter", "mlp_in", "backward")]
    else:
        pairs = [("all-reduce", "attn_out", "forward"), ("all-reduce", "mlp_out", "forward")]
        if train:
            pairs += [("all-reduce", "qkv", "backward"), ("all-reduce", "mlp_in", "backward")]
    if train:
        pairs += recomputed_tp_collectives(lay)
    for kind, comp, phase in pairs:
        block_input = kind == "all-gather" and comp in ("qkv", "mlp_in")  # the normed input, as the norm left it
        add(kind, ("tp",), act * (e_sp if block_input else e), per_layer, comp, phase,
            sp_gather_dtype if block_input else dtype, "activations")

    # The vocabulary over tp (when tp divides it; else the table and the logits stay whole):
    # embedding lookup, logits, loss.
    vocab_tp = ("tp",) if "tp" in mesh_axes("vocab", lay, size=cfg.vocab_size) else ()
    # With sequence parallelism the lookup's output is reduce-scattered into the sequence-sharded
    # residual stream and the head's input all-gathered (Korthikanti et al. 2022, Fig. 5). An
    # unsplit vocabulary (tp does not divide it) makes the lookup local (no reduce-scatter), but
    # the head still reads the whole sequence (its logits are not split over tp): the gathers
    # stay (measured, XLA:TPU and XLA:GPU).
    if sp:
        add("reduce-scatter", vocab_tp, act * e, steps, "embedding", "forward", dtype, "activations")
        add("all-gather", ("tp",), act * e, steps, "logits", "forward", dtype, "activations")
    else:
        add("all-reduce", vocab_tp, act * e, steps, "embedding", "forward", dtype, "activations")
    if train:
        # the max, the sum of exponentials and the label's logit over the vocabulary shards
        add("all-reduce", vocab_tp, b * t * e, 2 * steps, "loss", "forward", dtype, "activations")
        add("all-reduce", vocab_tp, b * t * e_loss, steps, "loss", "forward", loss_sum_dtype, "activations")
        add("reduce-scatter" if sp else "all-reduce", vocab_tp, act * e, steps, "logits", "backward", dtype,
            "activations")
        if sp:
            add("all-gather", ("tp",), act * e, steps, "embedding", "backward", dtype, "activations")
            if sp_regather:
                # block inputs are gathered again for the weight gradients instead of being kept
                # (Korthikanti et al. 2022, Sec. 4.2.2, make the same trade in Megatron); the
                # head's input is not: its weight gradient is taken at once, while the forward's
                # gathered copy is live (models.transformer.head_gradients_together);
                # both block inputs of every layer but the last, whose backward follows the
                # forward at once (measured with 2 and 3 layers: 2 and 4 gathers)
                add("all-gather", ("tp",), act * e, 2 * (layers - 1) * steps, "block_input", "backward", dtype,
                    "activations")
        # the mean loss over the data shards: one float32 scalar
        add("all-reduce", data_axes, 4, steps, "loss", "forward", "fp32", "activations")

    # --- context parallelism: keys and values ----------------------------------------------
    kv = _div(cfg.resolved_n_kv_heads * cfg.resolved_head_dim, lay.tp) if lay.tp > 1 else \
        cfg.resolved_n_kv_heads * cfg.resolved_head_dim
    if cp_attention == "all-gather":
        full_kv = b * seq_len * kv * e
        add("all-gather", ("cp",), full_kv, 2 * per_layer, "kv", "forward", dtype, "activations")
        if train:  # the gather's transpose: the whole key/value gradient all-reduced, then sliced
            add("all-reduce", ("cp",), full_kv, 2 * per_layer, "kv", "backward", dtype, "activations")
    else:
        shard_kv = b * t * kv * e
        add("collective-permute", ("cp",), shard_kv, 2 * (lay.cp - 1) * per_layer, "kv", "forward", dtype,
            "activations")
        if train:
            add("collective-permute", ("cp",), shard_kv, 4 * (lay.cp - 1) * per_layer, "kv", "backward", dtype,
                "activations")

    # --- expert parallelism: routed experts and their all-to-alls -----------------------------
    if cfg.is_moe:
        out.extend(expert_collectives(cfg, lay, b=b, t=t, steps=steps, train=train, e=e, e_gather=e_gather,
                                      e_grad=e_grad, e_param=e_param, dtype=dtype, gather_dtype=gather_dtype,
                                      grad_dtype=grad_dtype, param_dtype=param_dtype,
                                      gather_in_backward=gather_in_backward, grad_reduce=grad_reduce))

    # --- pipeline: activations between stages -----------------------------------------------
    if lay.pp > 1:
        boundary = b * _div(t, lay.tp if sp else 1) * d * e
        sends = steps * lay.virtual_stages
        add("collective-permute", ("pp",), boundary, sends, "pipeline", "forward", dtype, "activations")
        if train:
            add("collective-permute", ("pp",), boundary, sends, "pipeline", "backward", dtype, "activations")
    return out


# ----------------------------------------------------------------------------- expert parallelism
#: The weights XLA:TPU gathers a third time under ``remat="full"`` (with ``gather_in_backward``):
#: the recomputed forward gathers q and k apart from the backward's gathers, while v and
#: attn_out's backward uses share the recomputation's copy (measured on tpu-v5p:2x2x2).
RECOMPUTE_GATHERED = ("q", "k")


def recomputed_tp_collectives(layout: Layout) -> list[tuple[str, str, str]]:
    """The tensor-parallel collectives a rematerialised layer runs again in the backward pass,
    (kind, component, "backward") once per layer and micro-batch (XLA:TPU, measured on
    tpu-v5p:2x2x1 and checked on 2x2x2 by tests/test_sharding.py). The recomputed forward
    needs the MLP's input, so ``remat="full"`` repeats the collective after ``attn_out``, but
    not the one after ``mlp_out`` (the next layer's saved input). With sequence parallelism every
    policy gathers both normed block inputs again for the recomputation (the remat boundary
    keeps the forward's gathered copies from being reused); selective and dots recompute no
    reduce-scatter."""
    if layout.tp == 1 or layout.remat == "none":
        return []
    out = []
    if layout.sequence_parallel:
        out += [("all-gather", "qkv", "backward"), ("all-gather", "mlp_in", "backward")]
        if layout.remat == "full":
            out.append(("reduce-scatter", "attn_out", "backward"))
    elif layout.remat == "full":
        out.append(("all-reduce", "attn_out", "backward"))
    return out


def _dense_layers_here(cfg: TransformerConfig, layers):
    """Dense-MLP layers among the ``layers`` a device holds: the config's ``dense_layers``
    spread over the pipeline stages as evenly as the layers are (the average device; the
    ceiling for ints, so that pp = 1 gives dense_layers exactly)."""
    if isinstance(layers, int) and isinstance(cfg.n_layers, int):
        return -(-cfg.dense_layers * layers // cfg.n_layers)
    return cfg.dense_layers * layers / cfg.n_layers


def ep_groups(layout: Layout) -> dict[str, int]:
    """How the expert-parallel group is carved from the data chips, as `models.sharding`
    places the experts: the whole fsdp axis when ep = fsdp, the whole dp axis when ep = dp,
    both when ep = dp x fsdp; any other ep (which the sharded model refuses, but a cluster
    can run) takes ``ep_fsdp = gcd(ep, fsdp)`` chips from fsdp and ``ep_dp = ep / ep_fsdp`` from
    dp (always whole: ep divides dp x fsdp). What is left shards or replicates the expert
    weights as FSDP and DP do the dense ones: ``fsdp_rest = fsdp / ep_fsdp``, ``dp_rest = dp /
    ep_dp`` (the "expert data parallel" degree is fsdp_rest x dp_rest; DeepSpeed-MoE,
    Rajbhandari et al. 2022 §4.1)."""
    import math

    ep, fsdp, dp = layout.ep, layout.fsdp, layout.dp
    if ep == 1:
        ep_f = 1
    elif ep == fsdp:
        ep_f = fsdp
    elif ep == dp:
        ep_f = 1
    elif ep == dp * fsdp:
        ep_f = fsdp
    else:
        ep_f = math.gcd(ep, fsdp)
    ep_d = ep // ep_f
    return {"ep_fsdp": ep_f, "ep_dp": ep_d, "fsdp_rest": layout.fsdp // ep_f, "dp_rest": layout.dp // ep_d}


def routed_tokens(cfg: TransformerConfig, sequences, tokens):
    """Token copies one device sends to the experts per MoE layer, for ``sequences`` local
    sequences of ``tokens`` tokens: sequences x tokens x top-k when dropless; with a capacity
    factor, every expert's slots in every sequence (a GShard group, `models.moe`: sequences x
    n_experts x ``cfg.expert_capacity(tokens)``), filled or padded, as dense dispatch sends them."""
    if cfg.capacity_factor is None:
        return sequences * tokens * cfg.experts_per_token
    if isinstance(tokens, int) and not cfg.relaxed:
        return sequences * cfg.n_experts * cfg.expert_capacity(tokens)
    return cfg.capacity_factor * sequences * tokens * cfg.experts_per_token


def expert_collectives(cfg: TransformerConfig, lay: Layout, *, b, t, steps, train: bool, e: int, e_gather: int,
                       e_grad: int, e_param: int, dtype: str, gather_dtype: str, grad_dtype: str,
                       param_dtype: str, gather_in_backward: bool, grad_reduce: str) -> list[Collective]:
    """The collectives of the routed experts of one step on one device (called by `collectives`).

    Weights: the expert dimension is split over the ``ep`` group (`ep_groups`), the expert width
    over ``tp``; the rest of the fsdp axis shards d_model as FSDP does (all-gathered before the
    forward and, with ``gather_in_backward``, the backward use; gradients reduce-scattered), and
    the rest of dp (with cp) holds replicas whose gradients are all-reduced (ZeRO-1: reduce-
    scattered, the updated weights all-gathered). A device holds n_experts / ep experts of each
    MoE layer (GShard, Lepikhin et al. 2020 §3.1; DeepSpeed-MoE §4.1).

    Tokens: per MoE layer and micro-batch, the dispatch all-to-all sends each token's copies to
    the devices holding its experts and the combine all-to-all brings the expert outputs back
    (Lepikhin et al. 2020 §3.1, Fig. 3; Megatron-core's token dispatcher): 2 forward; their
    transposes in the backward, 2 more. A rematerialised layer (any ``remat`` policy) sends the
    forward's two again when the backward recomputes it (measured on tpu-v5p:2x2x2 and h100:8:
    12 all-to-alls for 2 MoE layers, not 8). The buffer is `routed_tokens` x d_model in the compute dtype; the tokens of
    a device are b x seq_len / cp (/ tp with sequence parallelism).
    """
    g = ep_groups(lay)
    out: list[Collective] = []
    layers = _div(cfg.n_layers, lay.pp)
    moe = layers - _dense_layers_here(cfg, layers)
    d, ff = cfg.d_model, cfg.resolved_d_ff_expert
    mats = 3 if cfg.gated else 2
    experts = _div(cfg.n_experts, lay.ep)
    ff_local = _div(ff, lay.tp) if lay.tp > 1 else ff
    gathered = experts * d * ff_local  # one matrix on a device, d_model whole
    local = gathered if g["fsdp_rest"] == 1 else experts * _div(d, g["fsdp_rest"]) * ff_local

    def add(kind, axis, group, nbytes, count, component, phase, dt, purpose):
        if group > 1:
            out.append(Collective(kind, axis, group, nbytes, count, component, phase, dt, purpose))

    rest_axes = tuple(a for a, k in (("dp", g["dp_rest"]), ("cp", lay.cp)) if k > 1)
    rest = g["dp_rest"] * lay.cp
    for _ in range(mats):
        if g["fsdp_rest"] > 1:
            for phase in ("forward", "backward") if train and gather_in_backward else ("forward",):
                add("all-gather", "fsdp", g["fsdp_rest"], gathered * e_gather, moe * steps, "experts", phase,
                    gather_dtype, "weights")
        if not train:
            continue
        add(grad_reduce, "fsdp", g["fsdp_rest"], gathered * e_grad, moe * steps, "experts", "backward", grad_dtype,
            "gradients")
        if rest_axes:
            axis = rest_axes[0] if len(rest_axes) == 1 else rest_axes
            if lay.optimizer_sharding and g["dp_rest"] > 1:
                if lay.cp > 1:
                    add("all-reduce", "cp", lay.cp, local * e_grad, moe * steps, "experts", "backward", grad_dtype,
                        "gradients")
                add(grad_reduce, "dp", g["dp_rest"], local * e_grad, moe, "experts", "backward", grad_dtype,
                    "gradients")
                add("all-gather", "dp", g["dp_rest"], local * e_param, moe, "experts", "optimizer", param_dtype,
                    "weights")
            else:
                add("all-reduce", axis, rest, local * e_grad, moe * steps, "experts", "backward", grad_dtype,
                    "gradients")

    tokens = _div(t, lay.tp) if lay.sequence_parallel and lay.tp > 1 else t
    buf = routed_tokens(cfg, b, tokens) * d * e
    n_fwd = moe * steps
    add("all-to-all", "ep", lay.ep, buf, n_fwd, "moe_dispatch", "forward", dtype, "activations")
    add("all-to-all", "ep", lay.ep, buf, n_fwd, "moe_combine", "forward", dtype, "activations")
    if train:  # the transposes, and with remat the recomputed forward's two again (measured)
        n_bwd = n_fwd * (2 if lay.remat != "none" else 1)
        add("all-to-all", "ep", lay.ep, buf, n_bwd, "moe_dispatch", "backward", dtype, "activations")
        add("all-to-all", "ep", lay.ep, buf, n_bwd, "moe_combine", "backward", dtype, "activations")
    return out
