"""Validate the closed form against XLA's own cost analysis, component by component.

`validate` builds `models.Transformer` abstractly (`nnx.eval_shape`: no weights allocated, so a
7B preset validates on a laptop), lowers ``model(tokens)`` or the jitted training step from
`jax.ShapeDtypeStruct` inputs in float32, reads XLA's ``cost_analysis()``, sums the dot FLOPs of
the HLO text op by op, and reconciles both with `count_flops(..., convention="xla")`,
explaining every known cause of difference it finds (the counting rules: xla/service/hlo_cost_analysis.cc).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import TransformerConfig
from models.train import abstract_model, adamw, train_step
from planner.flops import (
    FLOP_COMPONENTS, MATMUL_COMPONENTS, FlopCount, count_flops, layer_norm_elements, xla_optimizer_flops,
    xla_ragged_dot_extra,
)
from planner.hlo import Cost, HloSummary, cost_of, parse_hlo

VALIDATE_MODES = ("forward", "train")
STAGES = ("lowered", "compiled")
#: Tolerances of `ValidationReport.ok`: relative, on total FLOPs and on transcendentals.
FLOP_TOLERANCE = 0.005
TRANSCENDENTAL_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class ComponentRow:
    """One component: predicted FLOPs ("xla" convention), predicted and HLO dot FLOPs."""

    predicted: Any
    predicted_dots: Any
    hlo_dots: int


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """XLA's count of one program next to the closed form's.

    ``rel_error`` = (xla_flops - predicted_flops) / predicted_flops, likewise
    ``transcendental_rel_error``. ``xla_dot_flops`` is the sum of 2 |out| |contracting| over the
    program's dot instructions as XLA counts them (a loop body once); ``predicted_dot_flops`` the
    closed form's matmuls under the same rule. ``notes`` explain the differences found.
    """

    config: TransformerConfig
    batch_size: int
    seq_len: int
    mode: str
    stage: str
    scan_layers: bool
    xla_flops: float
    predicted_flops: Any
    rel_error: float
    xla_dot_flops: int
    predicted_dot_flops: Any
    xla_transcendentals: float
    predicted_transcendentals: Any
    transcendental_rel_error: float
    components: dict[str, ComponentRow]
    notes: tuple[str, ...]
    unrolled_flops: Any  # the closed form of the whole program, every layer counted
    collectives: Any = None  # a CollectiveReport, when validate() was given a layout

    @property
    def dots_exact(self) -> bool:
        return self.xla_dot_flops == self.predicted_dot_flops

    @property
    def ok(self) -> bool:
        """Lowered: dot FLOPs exact, total within 0.5%, transcendentals within 1%. Compiled:
        dot FLOPs exact. With a layout, its collectives within tolerance too (compiled: dot FLOPs exact (XLA's optimiser rewrites elementwise work the closed form describes
        before optimisation; ``rel_error`` still says by how much)."""
        if self.collectives is not None and not self.collectives.ok:
            return False
        if self.stage == "compiled":
            return self.dots_exact
        return (self.dots_exact and abs(self.rel_error) <= FLOP_TOLERANCE
                and abs(self.transcendental_rel_error) <= TRANSCENDENTAL_TOLERANCE)

    def to_json(self) -> dict:
        num = lambda x: x if isinstance(x, int) else float(x)  # noqa: E731
        return {
            "config": dataclasses.asdict(self.config),
            "batch_size": self.batch_size, "seq_len": self.seq_len, "mode": self.mode,
            "stage": self.stage, "scan_layers": self.scan_layers,
            "xla_flops": self.xla_flops, "predicted_flops": num(self.predicted_flops),
            "rel_error": self.rel_error,
            "xla_dot_flops": self.xla_dot_flops, "predicted_dot_flops": num(self.predicted_dot_flops),
            "xla_transcendentals": self.xla_transcendentals,
            "predicted_transcendentals": num(self.predicted_transcendentals),
            "transcendental_rel_error": self.transcendental_rel_error,
            "unrolled_flops": num(self.unrolled_flops),
            "ok": self.ok,
            "components": {k: {"predicted": num(r.predicted), "predicted_dots": num(r.predicted_dots),
                               "hlo_dots": r.hlo_dots} for k, r in self.components.items()},
            "notes": list(self.notes),
            **({"collectives": self.collectives.to_json()} if self.collectives is not None else {}),
        }


def _rel(measured: float, predicted) -> float:
    predicted = float(predicted)
    if predicted == 0:
        return 0.0 if measured == 0 else float("inf")
    return (measured - predicted) / predicted


def lower_program(cfg: TransformerConfig, *, batch_size: int, seq_len: int, mode: str,
                  scan_layers: bool = False):
    """``jax.jit(...).lower(...)`` of ``model(tokens)`` or of `models.train_step`, from
    ShapeDtypeStructs only (float32 parameters, int32 tokens)."""
    graphdef, params = nnx.split(abstract_model(cfg, scan_layers=scan_layers), nnx.Param)
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    if mode == "forward":
        return jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, tokens)
    tx = adamw()
    opt_state = jax.eval_shape(tx.init, params)
    return train_step.lower(params, opt_state, tokens, tokens, graphdef=graphdef, tx=tx)


def _read_stage(lowered, stage: str, notes: list[str]) -> tuple[str, Cost, str]:
    """(stage actually read, its cost, its HLO text), falling back to the other stage if the
    requested one has no cost analysis."""
    def read(which):
        if which == "lowered":
            return cost_of(lowered.cost_analysis()), lowered.as_text(dialect="hlo", debug_info=True)
        compiled = lowered.compile()
        return cost_of(compiled.cost_analysis()), compiled.as_text()

    cost, text = read(stage)
    if cost is None:
        other = "compiled" if stage == "lowered" else "lowered"
        notes.append(f"the {stage} program has no cost analysis on this backend "
                     f"({jax.default_backend()}); read the {other} one instead")
        stage = other
        cost, text = read(stage)
        if cost is None:
            raise ValueError(f"XLA gives no cost analysis for this program on {jax.default_backend()}")
    return stage, cost, text


def _scan_adjusted(cfg: TransformerConfig, batch_size: int, seq_len: int, mode: str):
    """The closed form of a scanned program as XLA counts it: one layer plus the rest.

    XLA's cost analysis counts a while body once (HandleWhile in
    xla/service/hlo_cost_analysis.cc: the cost of a single iteration). The layer terms of the
    closed form are linear in n_layers, so one layer + the rest is the count at n_layers=1,
    with the AdamW update (outside the loop, over all stacked parameters) taken at full size.
    The loops themselves add their counters: 2 FLOPs for the forward loop, 4 for the backward
    one (which also reverses the index); and the partial evaluation of the scanned RMSNorm
    recomputes 2 * tokens * d_model in the backward body (measured, jax 0.10).
    """
    one = cfg.replace(n_layers=1)
    c = count_flops(one, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="xla")
    comps = dict(c.components)
    trans = c.transcendentals
    if mode == "train":
        full_opt, full_opt_t = xla_optimizer_flops(cfg)
        one_opt, one_opt_t = xla_optimizer_flops(one)
        comps["optimizer"] += full_opt - one_opt
        trans += full_opt_t - one_opt_t
        if cfg.norm == "rmsnorm":  # 2 x tokens x d_model for the two norms of a Llama block
            comps["norms"] += layer_norm_elements(cfg, batch_size * seq_len)
    loops = 2 if mode == "forward" else 6
    dots = xla_dot_flops(one, batch_size=batch_size, seq_len=seq_len, mode=mode)
    return comps, trans, dots.components, loops


def xla_dot_flops(cfg: TransformerConfig, *, batch_size: int, seq_len: int, mode: str) -> FlopCount:
    """The dot FLOPs XLA counts for the lowered program: the "fma" matmuls, with the dropless
    experts' ragged_dot counted as the default lowering executes it (`xla_ragged_dot_extra`:
    densely over all n_experts groups)."""
    c = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="fma")
    comps = dict(c.components)
    comps["experts"] = comps["experts"] + xla_ragged_dot_extra(cfg, batch_size, seq_len, mode)
    return c._replace(components=comps, total=sum(comps.values()))


#: The most layers `validate` lowers unrolled. Building and lowering is linear in the layers
#: (about 0.1-0.2 s a layer on a 2-core CPU), so 512 take a minute or two; beyond that the
#: scanned program (one layer body, a second or two at any depth) validates the same closed form.
MAX_UNROLLED_LAYERS = 512


def validate(cfg: TransformerConfig, *, batch_size: int = 1, seq_len: int | None = None,
             mode: str = "forward", stage: str = "lowered", scan_layers: bool = False,
             layout=None, target: str | None = None, devices: int | str | None = None):
    """Compare XLA's cost analysis of `models.Transformer` (or its training step) with the
    closed form, component by component.

    Args:
      cfg: the model (integer sizes).
      batch_size, seq_len: the input shape; seq_len None = cfg.seq_len.
      mode: "forward" (``model(tokens)``, the logits) or "train" (`models.train_step`: loss,
        gradients and the AdamW update).
      stage: "lowered" (the unoptimised HLO, what the "xla" convention describes) or "compiled"
        (optimised for this backend; may fuse or simplify elementwise work).
      scan_layers: build the layers under ``nnx.scan`` (XLA then counts one layer's body).
      target: a compile-only TPU or GPU target ("tpu-v5p:2x2x1", "h100:8"; planner.targets).
        Without a layout, or with a data-parallel one ("dp=4"), the optimised program for that
        chip is compiled in a subprocess and its per-device numbers are compared
        (`planner.targets.validate_target`).
      layout, devices: with a sharded `Layout` (or its string; fsdp, tp, cp, ...), compile the
        sharded training step on ``target`` (a TPU slice) or ``devices`` (N simulated CPU devices)
        and compare its collectives per mesh axis and its per-device dot FLOPs with the closed form
        (`validate_layout`; the report's ``collectives``).

    Returns:
      A `ValidationReport`; with ``target``, a `planner.targets.TargetValidation` (the
      compiler's per-device numbers beside the closed form).
    """
    if layout is not None and target is None and devices is None:
        raise ValueError("layout= needs target= (a compile-only TPU or GPU target, e.g. 'tpu-v5p:2x2x2') "
                         "or devices= (N simulated CPU devices) to shard over")
    if layout is not None:  # bad layouts fail before any compile
        from models.layout import Layout

        layout = Layout.parse(layout) if isinstance(layout, str) else layout
        layout.check(cfg, batch_size=batch_size, seq_len=cfg.seq_len if seq_len is None else seq_len)
    if target is not None and devices is None:
        from planner.targets import unsupported_layout_fields, validate_target

        if layout is None or not unsupported_layout_fields(layout):
            if stage != "lowered":
                raise ValueError(f"stage={stage!r}: with target= the optimised program is read; drop stage")
            return validate_target(cfg, target, batch_size=batch_size, seq_len=seq_len, mode=mode,
                                   layout=layout, scan_layers=scan_layers)
    if layout is None and devices is not None:
        raise ValueError("devices= validates a sharded step: give layout= too (e.g. 'fsdp=4,tp=2')")
    if layout is not None and (target is None) == (devices is None):
        raise ValueError("give layout= with exactly one of target= (a TPU slice) or devices= (N CPU devices)")
    if not isinstance(mode, str) or mode not in VALIDATE_MODES:
        raise ValueError(f"mode={mode!r}: unknown; valid: {', '.join(VALIDATE_MODES)}")
    if not isinstance(stage, str) or stage not in STAGES:
        raise ValueError(f"stage={stage!r}: unknown; valid: {', '.join(STAGES)}")
    if cfg.relaxed:
        raise ValueError("validate needs integer sizes; got a relaxed (array) config")
    if not isinstance(scan_layers, bool):
        raise ValueError(f"scan_layers={scan_layers!r}: must be True or False")
    sizes = {n: getattr(cfg, n, None) for n in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len",
                                                 "n_kv_heads", "head_dim")}
    for name, v in {**sizes, "batch_size": batch_size, "seq_len": seq_len if seq_len is not None else cfg.seq_len}.items():
        if isinstance(v, int) and not isinstance(v, bool) and v >= 2**31:
            raise ValueError(f"{name}={v}: at least 2^31, too large an array dimension for XLA to lower "
                             "(validate lowers the real program); the closed forms (planner count) take any size")
    if not scan_layers and cfg.n_layers > MAX_UNROLLED_LAYERS:
        raise ValueError(f"n_layers={cfg.n_layers}: more than {MAX_UNROLLED_LAYERS} layers unrolled would take "
                         f"minutes to lower (about 0.1-0.2 s a layer); validate with the layers under nnx.scan "
                         "(--scan, scan_layers=True), which lowers one layer body and checks the same closed form")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    # count_flops checks batch_size and seq_len (positive ints, within a learned table).
    full = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="xla")
    full_dots = xla_dot_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode)

    notes: list[str] = []
    lowered = lower_program(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, scan_layers=scan_layers)
    stage, cost, text = _read_stage(lowered, stage, notes)
    hlo: HloSummary = parse_hlo(text)

    if scan_layers:
        comps, trans, dot_comps, loop_flops = _scan_adjusted(cfg, batch_size, seq_len, mode)
        predicted = sum(comps.values()) + loop_flops
        notes.append(
            f"the {cfg.n_layers} layers run under nnx.scan ({hlo.n_while} while loop(s)): XLA counts a "
            f"loop body once, so the prediction is one layer plus the rest ({float(predicted):.4g}); "
            f"every layer counted, the program does {float(full.total):.4g} FLOPs"
        )
        notes.append(f"the loop counters add {loop_flops} FLOPs"
                     + ("; the scanned RMSNorm's backward recomputes each normalised element once"
                        if mode == "train" and cfg.norm == "rmsnorm" else ""))
    else:
        comps, trans, dot_comps = dict(full.components), full.transcendentals, dict(full_dots.components)
        predicted = full.total
        if hlo.n_while:
            notes.append(f"{hlo.n_while} while loop(s) in an unrolled program: their bodies are counted once")
    predicted_dots = sum(dot_comps.values())

    by_comp = hlo.dot_flops_by_component()
    components = {
        name: ComponentRow(comps[name], dot_comps[name], by_comp.get(name, 0)) for name in FLOP_COMPONENTS
    }
    if by_comp.get(None):
        notes.append(f"{by_comp[None]:.4g} dot FLOPs carry no component tag (ops outside models.Transformer)")
    for name in MATMUL_COMPONENTS:
        row = components[name]
        if row.hlo_dots != row.predicted_dots:
            notes.append(f"{name}: HLO dots {row.hlo_dots:,} vs closed form {int(row.predicted_dots):,}")
    if hlo.custom_calls:
        notes.append(f"{len(hlo.custom_calls)} custom call(s) ({', '.join(sorted(set(hlo.custom_calls)))}): "
                     "XLA counts each as -1 FLOP, so the total undercounts their work")
    if hlo.remat:
        notes.append("rematerialised (jax.checkpoint) ops: the recomputed forward is counted as extra work")
    if stage == "compiled":
        notes.append("compiled stage: XLA's optimised HLO for this backend; fusion and algebraic "
                     "simplification change elementwise counts, the closed form describes the lowered program")
    notes.append("XLA reports float32 counts: totals above 2^24 are rounded to about 1e-7 relative")

    coll = None
    if layout is not None:
        coll = validate_layout(cfg, layout, batch_size=batch_size, seq_len=seq_len, target=target,
                               devices=devices)
    return ValidationReport(
        collectives=coll,
        config=cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, stage=stage, scan_layers=scan_layers,
        xla_flops=cost.flops, predicted_flops=predicted, rel_error=_rel(cost.flops, predicted),
        xla_dot_flops=hlo.dot_flops, predicted_dot_flops=predicted_dots,
        xla_transcendentals=cost.transcendentals, predicted_transcendentals=trans,
        transcendental_rel_error=_rel(cost.transcendentals, trans),
        components=components, notes=tuple(notes), unrolled_flops=full.total,
    )


def default_grid() -> list[tuple[str, TransformerConfig, int, int]]:
    """The built-in sweep: 24 small configs, (label, config, batch_size, seq_len).

    Every combination of MLP (gelu, swiglu, geglu) x norm (layernorm, rmsnorm) x position
    (learned, rope) x tying, with biases, GQA, Qwen-style q/k/v biases, Gemma's embedding scale,
    explicit head_dim and odd sizes (d_model 48, vocab 97, d_ff 136) spread across them.
    """
    grid = []
    i = 0
    for mlp in ("gelu", "swiglu", "geglu"):
        for norm in ("layernorm", "rmsnorm"):
            for position in ("learned", "rope"):
                for tied in (True, False):
                    gqa = i % 3 == 1
                    odd = i % 4 == 2
                    cfg = TransformerConfig(
                        vocab_size=97 if odd else 128,
                        d_model=48 if odd else 64,
                        n_layers=2 + i % 2,
                        n_heads=4,
                        n_kv_heads=2 if gqa else (1 if i % 7 == 3 else None),
                        head_dim=24 if i % 5 == 4 else None,
                        d_ff=136 if odd else 4 * 64,
                        seq_len=32,
                        tied_embeddings=tied, mlp=mlp, norm=norm, position=position,
                        bias=i % 2 == 0,
                        qkv_bias=True if i % 6 == 5 else None,
                        embed_scale=i % 8 == 7,
                    )
                    label = (f"{mlp}/{norm}/{position}/{'tied' if tied else 'untied'}"
                             f"{'/gqa' if gqa else ''}{'/odd' if odd else ''}")
                    grid.append((label, cfg, 1 + i % 2, 8 + 4 * (i % 3)))
                    i += 1
    return grid


# ----------------------------------------------------------------------------- memory
@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """The compiler's ``memory_analysis()`` of one training step next to `estimate_memory`.

    ``peak`` = argument + temp + output - alias bytes (what the step needs on the chip at once;
    the step donates its parameters and optimizer state, so the outputs alias them).
    ``rel_error`` = (closed form - peak) / peak.
    """

    target: str
    layout: str
    batch_size: int
    seq_len: int
    argument: int
    temp: int
    output: int
    alias: int
    closed_form: Any  # planner.memory.MemoryEstimate

    @property
    def peak(self) -> int:
        return self.argument + self.temp + self.output - self.alias

    @property
    def rel_error(self) -> float:
        return (float(self.closed_form.total) - self.peak) / self.peak

    def to_dict(self) -> dict:
        return {"target": self.target, "layout": self.layout, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "argument": self.argument, "temp": self.temp, "output": self.output,
                "alias": self.alias, "peak": self.peak, "closed_form": self.closed_form.to_dict(),
                "rel_error": self.rel_error}


#: The compile-only TPU topology `validate_memory` compiles for (one chip of it).
TPU_TOPOLOGY = "v5p:2x2x1"


def compile_train_step(cfg: TransformerConfig, layout, *, batch_size: int, seq_len: int,
                       topology: str = TPU_TOPOLOGY):
    """Compile `models.train_step` under ``layout`` for one chip of a compile-only TPU topology
    (libtpu, no TPU needed; `jax.experimental.topologies`). Returns the compiled executable."""
    import os

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several processes may load libtpu
    from jax.experimental import topologies

    from models.train import jax_dtype, layout_train_step

    try:
        topo = topologies.get_topology_desc(topology, "tpu")
    except Exception as err:  # noqa: BLE001 (libtpu missing or the name unknown)
        raise ValueError(f"topology={topology!r}: cannot build the compile-only TPU target ({err}); "
                         "install libtpu (pip install 'scaling-planner[tpu]')") from None
    sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
    model = abstract_model(cfg, layout=layout, dtype=jax_dtype(layout.dtype))
    graphdef, params = nnx.split(model, nnx.Param)
    store = jnp.float32 if layout.master_fp32 else jax_dtype(layout.param_dtype)
    put = lambda a, dt=None: jax.ShapeDtypeStruct(a.shape, dt or a.dtype, sharding=sharding)  # noqa: E731
    params = jax.tree.map(lambda a: put(a, store), params)
    tx = adamw()
    opt_state = jax.tree.map(put, jax.eval_shape(tx.init, params))
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=sharding)
    step = layout_train_step(graphdef, tx, layout, batch_size)
    return step.func.lower(params, opt_state, tokens, tokens, **step.keywords).compile()


def validate_memory(cfg: TransformerConfig, layout=None, *, batch_size: int = 1, seq_len: int | None = None,
                    topology: str = TPU_TOPOLOGY) -> MemoryReport:
    """The TPU compiler's memory of one training step (compile-only) next to the closed form.

    The model runs the layout as `models.Transformer` implements it: flash attention is
    `models.flash` (blockwise JAX, compiled by XLA:TPU), not the Pallas kernel.
    """
    from models.layout import Layout
    from planner.memory import estimate_memory

    layout = Layout() if layout is None else layout
    if layout.chips != 1:
        raise ValueError(f"validate_memory compiles for one chip; layout has {layout.chips} "
                         "(estimate_memory divides by the mesh, the compiled check does not)")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    estimate = estimate_memory(cfg, batch_size=batch_size, seq_len=seq_len, layout=layout)
    m = compile_train_step(cfg, layout, batch_size=batch_size, seq_len=seq_len, topology=topology).memory_analysis()
    return MemoryReport(target=f"tpu {topology} (compile-only)", layout=layout.to_string() or "default",
                        batch_size=batch_size, seq_len=seq_len, argument=int(m.argument_size_in_bytes),
                        temp=int(m.temp_size_in_bytes), output=int(m.output_size_in_bytes),
                        alias=int(m.alias_size_in_bytes), closed_form=estimate)
# ----------------------------------------------------------------------------- collectives
#: Relative tolerance of `CollectiveReport.ok`, per mesh axis, on bytes per device per step.
COLLECTIVE_TOLERANCE = 0.02
#: Absolute slack of `CollectiveReport.ok`: a few float32 scalars (the mean loss).
COLLECTIVE_SLACK_BYTES = 16


@dataclasses.dataclass(frozen=True)
class AxisRow:
    """One mesh axis: closed-form and compiled bytes per device per step, buffer and ring-wire
    bytes, and the bytes per collective kind on each side."""

    axis: str
    predicted: Any
    compiled: int
    predicted_wire: Any
    compiled_wire: float
    predicted_kinds: dict[str, Any]
    compiled_kinds: dict[str, int]

    @property
    def rel_error(self) -> float:
        return _rel(self.compiled, self.predicted)

    @property
    def wire_rel_error(self) -> float:
        return _rel(self.compiled_wire, self.predicted_wire)

    @property
    def within(self) -> bool:
        diff = abs(self.compiled - float(self.predicted))
        return diff <= COLLECTIVE_SLACK_BYTES or diff <= COLLECTIVE_TOLERANCE * abs(float(self.predicted))


@dataclasses.dataclass(frozen=True)
class CollectiveReport:
    """The collectives of one sharded training step: the closed form (`planner.collectives`)
    against the partitioned program a compiler produced, per mesh axis.

    ``where`` names the compiler (a target such as "tpu-v5p:2x2x2", or "cpu:8" for the
    simulated CPU mesh); ``options`` the compiler behaviour the closed form assumed.
    ``dot_flops`` is (closed form, compiled HLO) per-device matmul FLOPs, the HLO side None
    where its dots are not readable (TPU writes them as convolutions); ``memory`` the
    compiler's ``memory_analysis()`` per device (bytes), when it gives one.
    """

    config: TransformerConfig
    layout: Any
    batch_size: int
    seq_len: int
    where: str
    options: dict[str, Any]
    rows: dict[str, AxisRow]
    predicted: tuple
    compiled: tuple
    dot_flops: tuple[Any, int | None]
    memory: dict[str, int] | None
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every mesh axis within `COLLECTIVE_TOLERANCE` (bytes per device per step), or within
        `COLLECTIVE_SLACK_BYTES` (the compiler may split the loss's scalar all-reduce over
        its axes, or merge it, as it likes). On the CPU mesh, whose collectives are not the
        accelerators' (f32, all-reduces), the per-device dot FLOPs exact instead."""
        if self.where.startswith("cpu"):
            return self.dot_flops[1] is not None and self.dot_flops[1] == self.dot_flops[0]
        return all(r.within for r in self.rows.values())

    @property
    def max_rel_error(self) -> float:
        """The largest |relative error| of an axis not within the byte slack."""
        return max((abs(r.rel_error) for r in self.rows.values()
                    if abs(r.compiled - r.predicted) > COLLECTIVE_SLACK_BYTES), default=0.0)

    def to_json(self) -> dict:
        num = lambda x: x if x is None or isinstance(x, int) else float(x)  # noqa: E731
        return {
            "config": dataclasses.asdict(self.config), "layout": self.layout.to_dict(),
            "batch_size": self.batch_size, "seq_len": self.seq_len, "where": self.where,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
            "ok": self.ok,
            "axes": {a: {"predicted_bytes": num(r.predicted), "compiled_bytes": r.compiled,
                         "rel_error": r.rel_error, "predicted_wire_bytes": num(r.predicted_wire),
                         "compiled_wire_bytes": r.compiled_wire,
                         "predicted_kinds": {k: num(v) for k, v in r.predicted_kinds.items()},
                         "compiled_kinds": r.compiled_kinds} for a, r in self.rows.items()},
            "predicted": [c.to_dict() for c in self.predicted],
            "compiled": [dict(c._asdict(), axes=c.axis_name) for c in self.compiled],
            "dot_flops": {"predicted": num(self.dot_flops[0]), "compiled": self.dot_flops[1]},
            "memory": self.memory, "notes": list(self.notes),
        }


#: The compiler behaviour the closed form assumes on each platform (planner.collectives options),
#: as measured on compile-only targets (benchmarks/collectives.py).
COMPILER_BEHAVIOUR: dict[str, dict[str, Any]] = {
    "tpu": {"gather_in_backward": True, "grad_reduce": "reduce-scatter"},
    "gpu": {"gather_in_backward": False, "grad_reduce": "reduce-scatter", "sp_regather": False,
            "sp_gather_dtype": "fp32", "loss_sum_dtype": "fp32", "reduce_after_accumulation": True},
    "cpu": {"gather_in_backward": False, "grad_reduce": "all-reduce"},
}

#: What XLA:GPU gathers again for the backward when the MLP is also split over tp (measured on
#: h100:8, jax 0.10: the MLP's matrices are gathered a second time, in the layout of the
#: backward's products; attention's are not).
GPU_TP_REGATHER = ("mlp_in", "mlp_gate", "mlp_out")
#: ... and with sequence parallelism also attention's output matrix and the untied head (when
#: tp splits its vocabulary).
GPU_SP_REGATHER = ("attn_out", "head")


def compiler_behaviour(platform: str, layout, cfg=None) -> dict[str, Any]:
    """The `planner.collectives` options for ``platform``'s compiler under ``layout``:
    `COMPILER_BEHAVIOUR`, and on GPU (measured on h100:8, jax 0.10) the MLP's second gather with
    tp > 1 (`GPU_TP_REGATHER`) and a tied embedding table gathered in its storage dtype (its
    cast to the compute dtype has two users, the lookup and the head, and stays after the
    gather; an untied table is cast first)."""
    if platform not in COMPILER_BEHAVIOUR:
        raise ValueError(f"platform={platform!r}: unknown; valid: {', '.join(COMPILER_BEHAVIOUR)}")
    out = dict(COMPILER_BEHAVIOUR[platform])
    if platform == "gpu" and layout.fsdp > 1:
        if layout.tp > 1:
            sp = GPU_SP_REGATHER if layout.sequence_parallel else ()
            if cfg is not None and cfg.vocab_size % layout.tp:  # a head tp does not split: gathered once
                sp = tuple(c for c in sp if c != "head")
            out["regather"] = GPU_TP_REGATHER + sp
        if cfg is not None and cfg.tied_embeddings:
            out["embedding_gather_dtype"] = "param"
    return out


def _hlo_wire(c) -> float:
    g = c.group_size
    if c.kind == "collective-permute":
        return float(c.total_bytes)
    if g <= 1:
        return 0.0
    return (2 if c.kind == "all-reduce" else 1) * (g - 1) / g * c.total_bytes


def compare_collectives(predicted, compiled) -> dict[str, AxisRow]:
    """Rows per mesh axis of closed-form `planner.collectives.Collective`s against
    `planner.hlo.HloCollective`s (collectives over no axis of degree > 1 are dropped)."""
    rows: dict[str, dict] = {}

    def row(axis):
        return rows.setdefault(axis, {"p": 0, "c": 0, "pw": 0, "cw": 0.0, "pk": {}, "ck": {}})

    for c in predicted:
        r = row(c.axis_name)
        r["p"] += c.total_bytes
        r["pw"] += c.total_wire_bytes
        r["pk"][c.kind] = r["pk"].get(c.kind, 0) + c.total_bytes
    for c in compiled:
        if not c.axes:
            continue
        r = row(c.axis_name)
        r["c"] += c.total_bytes
        r["cw"] += _hlo_wire(c)
        r["ck"][c.kind] = r["ck"].get(c.kind, 0) + c.total_bytes
    return {a: AxisRow(a, r["p"], r["c"], r["pw"], r["cw"], r["pk"], r["ck"]) for a, r in sorted(rows.items())}


def compile_sharded_step(cfg: TransformerConfig, layout, *, batch_size: int, seq_len: int, devices,
                         dtype: str = "bf16", compiler_options: dict | None = None):
    """Lower and compile the sharded training step (`models.sharding`) on ``devices`` (real,
    simulated CPU, or compile-only target devices); returns (compiled, mesh)."""
    from models.sharding import lower_sharded_step

    jdtype = {"bf16": jnp.bfloat16, "fp32": jnp.float32, "fp16": jnp.float16}[dtype]
    lowered, mesh = lower_sharded_step(cfg, layout, batch_size=batch_size, seq_len=seq_len,
                                       devices=devices, dtype=jdtype)
    compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    return compiled, mesh


def collective_report(cfg: TransformerConfig, layout, text: str, *, batch_size: int, seq_len: int,
                      where: str, platform: str, dtype: str = "bf16", memory: dict | None = None,
                      **options) -> CollectiveReport:
    """Read a compiled sharded step's HLO text and compare its collectives with the closed form,
    under ``platform``'s `COMPILER_BEHAVIOUR` (``options`` override it)."""
    from models.layout import MESH_DEGREES
    from planner.collectives import collectives
    from planner.flops import per_device_dot_flops
    from planner.hlo import parse_collectives

    behaviour = {**compiler_behaviour(platform, layout, cfg), **options}
    hlo = parse_collectives(text, {a: getattr(layout, a) for a in MESH_DEGREES})
    pred = collectives(cfg, layout, batch_size=batch_size, seq_len=seq_len, dtype=dtype, **behaviour)
    notes = []
    unknown = [c for c in hlo if not c.trip_count_known]
    if unknown:
        notes.append(f"{len(unknown)} collective(s) in loops of unknown trip count, counted once")
    if platform == "cpu":
        notes.append("XLA:CPU upcasts bf16 collectives to f32 and replaces reduce-scatters with "
                     "all-reduces: use the CPU mesh for numerics and dot FLOPs, the TPU/GPU targets for bytes")
    if platform == "tpu":
        notes.append("XLA:TPU writes dots as convolutions: per-device dot FLOPs are read on the CPU mesh "
                     "(--devices 8)")
    rows = compare_collectives(pred, hlo)
    for r in rows.values():
        if set(r.predicted_kinds) != set(r.compiled_kinds) and r.within:
            notes.append(f"{r.axis}: same bytes, other kinds (closed form {sorted(r.predicted_kinds)}, compiler "
                         f"{sorted(r.compiled_kinds)}): the compiler may run a reduce-scatter as an all-reduce "
                         "and a slice, or gather a small array by all-reduce")
    hlo_dots = parse_hlo(text).dot_flops if " dot(" in text else None
    return CollectiveReport(cfg, layout, batch_size, seq_len, where, behaviour, rows, tuple(pred), tuple(hlo),
                            (per_device_dot_flops(cfg, layout, batch_size=batch_size, seq_len=seq_len), hlo_dots),
                            memory, tuple(notes))


def _memory(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
        return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                "temp_size_in_bytes", "alias_size_in_bytes")}
    except Exception:  # noqa: BLE001 - some backends have none
        return None


#: What the TPU compiler is told for every collective check: no windowed einsums (collective
#: matmuls), which turn a gather or reduce-scatter beside a matmul into a loop of permutes.
TPU_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
               "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def _compile_where(cfg, layout, *, batch_size, seq_len, target, devices, dtype):
    """(HLO text, memory, where, platform) of the sharded step on a TPU target or on this
    process's devices ("local")."""
    import os

    if target is not None:
        from planner.targets import parse_target, target_devices

        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        tgt = parse_target(target)
        try:
            devs = target_devices(tgt)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - the compiler's own error
            raise ValueError(f"target={target!r}: the compiler cannot describe it ({e})") from None
        if len(devs) != layout.chips:
            raise ValueError(f"target {target} has {len(devs)} chips, layout {layout.to_string()} needs "
                             f"{layout.chips}; change the degrees or the slice")
        compiled, _ = compile_sharded_step(cfg, layout, batch_size=batch_size, seq_len=seq_len, devices=devs,
                                           dtype=dtype, compiler_options=TPU_OPTIONS if tgt.platform == "tpu" else None)
        return compiled.as_text(), _memory(compiled), tgt.name, tgt.platform
    devs = jax.devices()[: layout.chips]
    if len(devs) < layout.chips:
        raise ValueError(f"layout {layout.to_string()} needs {layout.chips} devices, this process has "
                         f"{len(jax.devices())}; use devices={layout.chips} (a simulated CPU mesh)")
    compiled, _ = compile_sharded_step(cfg, layout, batch_size=batch_size, seq_len=seq_len, devices=devs,
                                       dtype=dtype)
    return compiled.as_text(), _memory(compiled), f"{jax.default_backend()}:{layout.chips}", jax.default_backend()


def validate_layout(cfg: TransformerConfig, layout, *, batch_size: int, seq_len: int | None = None,
                    target: str | None = None, devices: int | str | None = None, dtype: str = "bf16",
                    **options) -> CollectiveReport:
    """The collectives of the sharded training step on a compiler, against `planner.collectives`.

    Args:
      cfg, layout: the model and its `Layout` (pp = 1: the model has no pipeline stages).
      batch_size, seq_len: the global batch (seq_len None = cfg.seq_len).
      target: a compile-only target (`planner.targets`): a TPU slice ("tpu-v5p:2x2x2") or GPUs
        ("h100:8"); its chips = layout.chips.
      devices: an int N runs a simulated CPU mesh of N devices in a subprocess (the XLA flag
        must be set before JAX starts); "local" uses this process's devices.
      dtype: compute dtype ("bf16" default; parameters stay float32).
      options: override the closed form's compiler behaviour (`COMPILER_BEHAVIOUR`).
    """
    from models.layout import Layout

    if isinstance(layout, str):
        layout = Layout.parse(layout)
    if (target is None) == (devices is None):
        raise ValueError("give exactly one of target= (a TPU slice, e.g. 'tpu-v5p:2x2x2') or devices= "
                         "(an int: a simulated CPU mesh)")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    layout.check(cfg, batch_size=batch_size, seq_len=seq_len)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices != layout.chips:
            raise ValueError(f"devices={devices}: layout {layout.to_string()} needs {layout.chips}")
        text, memory, platform = _cpu_mesh_subprocess(cfg, layout, batch_size, seq_len, devices, dtype)
        where = f"cpu:{devices}"
    elif devices not in (None, "local"):
        raise ValueError(f"devices={devices!r}: an int (simulated CPU devices) or 'local'")
    else:
        text, memory, where, platform = _compile_where(cfg, layout, batch_size=batch_size, seq_len=seq_len,
                                                       target=target, devices=devices, dtype=dtype)
    if platform not in COMPILER_BEHAVIOUR:
        platform = "gpu"
    return collective_report(cfg, layout, text, batch_size=batch_size, seq_len=seq_len, where=where,
                             platform=platform, dtype=dtype, memory=memory, **options)


def _cpu_mesh_subprocess(cfg, layout, batch_size, seq_len, n, dtype):
    """Compile the sharded step on N simulated CPU devices in a fresh interpreter; returns
    (HLO text, memory, "cpu")."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import json, sys\n"
        "from models.config import TransformerConfig\n"
        "from models.layout import Layout\n"
        "from planner.validation import _compile_where\n"
        "a = json.load(open(sys.argv[1]))\n"
        "text, mem, _, _ = _compile_where(TransformerConfig(**a['cfg']), Layout(**a['layout']), "
        "batch_size=a['b'], seq_len=a['t'], target=None, devices='local', dtype=a['dtype'])\n"
        "open(sys.argv[2], 'w').write(json.dumps({'text': text, 'memory': mem}))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        args, out = Path(tmp) / "args.json", Path(tmp) / "out.json"
        args.write_text(json.dumps({"cfg": dataclasses.asdict(cfg), "layout": layout.to_dict(), "b": batch_size,
                                    "t": seq_len, "dtype": dtype}))
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
                   ALLOW_MULTIPLE_LIBTPU_LOAD="1",
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", code, str(args), str(out)], env=env, capture_output=True,
                             text=True, timeout=1800)
        if run.returncode:
            raise ValueError(f"the {n}-device CPU compile failed: {run.stderr.strip().splitlines()[-1:]}")
        data = json.loads(out.read_text())
    return data["text"], data["memory"], "cpu"
def architecture_grid() -> list[tuple[str, TransformerConfig, int, int]]:
    """Small configs shaped like each public family (models.hf), every architecture option in
    at least one: (label, config, batch_size, seq_len). Windows are shorter than the sequence."""
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=72, seq_len=16, position="rope")
    rms = dict(norm="rmsnorm", bias=False)
    grid = [
        ("gptj", dict(bias=False, norm_bias=True, mlp_bias=True, head_bias=True, tied_embeddings=False,
                      parallel_residual=True, shared_norm=True, rotary_fraction=0.5)),
        ("neox", dict(parallel_residual=True, rotary_fraction=0.25, mlp="gelu_exact", d_model=64)),
        ("gemma2", dict(rms, mlp="geglu", n_kv_heads=2, head_dim=12, embed_scale=True,
                        norm_placement="sandwich", norm_offset=True, attn_softcap=5.0, final_softcap=3.0,
                        sliding_window=4, global_every=2)),
        ("gemma3", dict(rms, mlp="geglu", n_layers=3, n_kv_heads=1, head_dim=16, embed_scale=True,
                        norm_placement="sandwich", norm_offset=True, qk_norm="head", sliding_window=3,
                        global_every=3)),
        ("olmo2", dict(rms, mlp="swiglu", n_kv_heads=2, tied_embeddings=False, norm_placement="post",
                       qk_norm="full")),
        ("falcon", dict(bias=False, norm_bias=True, n_kv_heads=1, mlp="gelu_exact", parallel_residual=True,
                        shared_norm=True)),
        ("nemotron", dict(bias=False, norm_offset=True, norm_bias=True, mlp="relu2", rotary_fraction=0.5,
                          n_kv_heads=2, tied_embeddings=False)),
        ("mistral", dict(rms, mlp="swiglu", n_kv_heads=2, sliding_window=5, tied_embeddings=False)),
        ("starcoder2", dict(n_kv_heads=2, sliding_window=6, mlp="gelu")),
        ("qwen3", dict(rms, mlp="swiglu", n_kv_heads=2, head_dim=16, qk_norm="head")),
    ]
    return [(label, TransformerConfig(**(base | kw)), 1 + i % 2, 8 + 4 * (i % 2)) for i, (label, kw) in enumerate(grid)]
