"""Validate the closed form against XLA's own cost analysis, component by component.

`validate` builds `models.Transformer` abstractly (`nnx.eval_shape`: no weights allocated, so a
7B preset validates on a laptop), lowers ``model(tokens)`` or the jitted training step from
`jax.ShapeDtypeStruct` inputs in float32, reads XLA's ``cost_analysis()``, sums the dot FLOPs of
the HLO text op by op, and reconciles both with `count_flops(..., convention="xla")`,
explaining every known cause of difference it finds (REFERENCES.md §3).
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
    FLOP_COMPONENTS, MATMUL_COMPONENTS, count_flops, layer_norm_elements, xla_optimizer_flops,
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

    @property
    def dots_exact(self) -> bool:
        return self.xla_dot_flops == self.predicted_dot_flops

    @property
    def ok(self) -> bool:
        """Lowered: dot FLOPs exact, total within 0.5%, transcendentals within 1%. Compiled:
        dot FLOPs exact (XLA's optimiser rewrites elementwise work the closed form describes
        before optimisation; ``rel_error`` still says by how much)."""
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

    XLA's cost analysis counts a while body once (REFERENCES.md §3). The layer terms of the
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
    dots = count_flops(one, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="fma")
    return comps, trans, dots.components, loops


def validate(cfg: TransformerConfig, *, batch_size: int = 1, seq_len: int | None = None,
             mode: str = "forward", stage: str = "lowered", scan_layers: bool = False) -> ValidationReport:
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

    Returns:
      A `ValidationReport`.
    """
    if not isinstance(mode, str) or mode not in VALIDATE_MODES:
        raise ValueError(f"mode={mode!r}: unknown; valid: {', '.join(VALIDATE_MODES)}")
    if not isinstance(stage, str) or stage not in STAGES:
        raise ValueError(f"stage={stage!r}: unknown; valid: {', '.join(STAGES)}")
    if cfg.relaxed:
        raise ValueError("validate needs integer sizes; got a relaxed (array) config")
    if not isinstance(scan_layers, bool):
        raise ValueError(f"scan_layers={scan_layers!r}: must be True or False")
    seq_len = cfg.seq_len if seq_len is None else seq_len
    # count_flops checks batch_size and seq_len (positive ints, within a learned table).
    full = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="xla")
    full_dots = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode=mode, convention="fma")

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

    return ValidationReport(
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
