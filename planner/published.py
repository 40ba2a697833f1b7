"""Published training runs, shipped with the package, and how far the step-time model is from them.

`published_runs()` reads ``planner/data/published_runs.json``: for each run its source table or
file, the model (a `TransformerConfig`), the `Layout`, the hardware, the batch, and what was
measured (step time, or MFU / TFLOP/s per chip under the paper's own FLOP convention). Every
measurement is turned into a step time in seconds (`PublishedRun.step_time`), the one quantity
the model predicts, so runs counted under different conventions compare alike:

- "step time": the paper prints seconds per iteration (Korthikanti et al. 2022, Table 5; NVIDIA);
- "megatron-recompute": Narayanan et al. 2021, Eq. 3, 96 B s l h^2 (1 + s/6h + V/16lh) per
  iteration (an extra forward for recomputation), TFLOP/s per GPU as printed in Table 1;
- "megatron": the same without recomputation, 72 B s l h^2 (1 + s/6h + V/12lh) (NeMo's MFU);
- "maxtext-2023": MaxText train.py at 76bd53b0, 6 N T + 6 L H Q T^2 per sequence (the PaLM
  count with the attention term halved for the causal mask), MFU against 459 TFLOP/s (v5p);
- "gpu-hours": the paper prints GPU-hours for a number of training tokens (DeepSeek-V3,
  arXiv:2412.19437 Table 1): seconds per step = GPU-hours x 3600 / chips / (tokens / tokens per
  step).

Mixture-of-experts runs (``model.is_moe``) are reported beside the dense ones; the step model's
accuracy targets (tests/test_published.py) are the dense runs'.

`FIT_RUNS` names the runs the step model's fitted constants were fitted on; every other run
is held out (`compare` reports both).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, NamedTuple

from models.config import TransformerConfig
from models.layout import Layout
from planner.flops import count_flops

CONVENTIONS = ("step time", "megatron-recompute", "megatron", "maxtext-2023", "gpu-hours")

#: Runs the fitted constants of `planner.timing` (matmul efficiency, elementwise efficiency)
#: were fitted on: one per source family and chip, small and large. The rest are held out.
FIT_RUNS = (
    "korthikanti22-22b-full",
    "korthikanti22-1t-seqsel",
    "narayanan21-18b",
    "maxtext-v5p-64b-1x128",
    "maxtext-v5p-512b-1x1024",
    "nvidia-dgxc-gpt3-175b-128xh100",
)


class PublishedRun(NamedTuple):
    """One published run. ``measured`` holds what the source prints (keys ``step_time_s``,
    ``mfu``, ``tflops_per_chip``); ``step_time`` is the measured seconds per step."""

    name: str
    title: str
    source: str
    hardware: str
    chips: int
    slices: int
    model: TransformerConfig
    layout: Layout
    batch_size: int
    seq_len: int
    measured: dict
    flop_convention: str
    peak_tflops: float
    assumed: tuple[str, ...]
    evidence: tuple[str, ...]
    dropout: bool = False  # trained with dropout (Megatron's GPT runs)
    uneven_stages: bool = False  # pipeline stages of different depths (pp does not divide the layers)

    @property
    def paper_flops(self) -> float | None:
        """FLOPs of one step under the paper's convention (None for "step time")."""
        return paper_flops(self.model, self.batch_size, self.seq_len, self.flop_convention)

    @property
    def step_time(self) -> float:
        """Measured seconds per step: printed, or the paper's FLOPs / (chips x achieved rate)."""
        m = self.measured
        if "step_time_s" in m:
            return float(m["step_time_s"])
        if "gpu_hours" in m:
            steps = m["tokens"] / (self.batch_size * self.seq_len)
            return float(m["gpu_hours"]) * 3600 / self.chips / steps
        rate = m["tflops_per_chip"] * 1e12 if "tflops_per_chip" in m else m["mfu"] * self.peak_tflops * 1e12
        return float(self.paper_flops) / (self.chips * rate)

    @property
    def fit(self) -> bool:
        return self.name in FIT_RUNS

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["model"] = {k: getattr(self.model, k) for k in self.model.__dataclass_fields__}
        d["layout"] = self.layout.to_string()
        d["step_time"] = self.step_time
        d["fit"] = self.fit
        return d


def paper_flops(cfg: TransformerConfig, batch_size: int, seq_len: int, convention: str) -> float | None:
    """One step's FLOPs as the paper counted them (see the module docstring)."""
    if convention in ("step time", "gpu-hours"):
        return None
    if convention in ("megatron-recompute", "megatron"):
        return float(count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="train",
                                 convention=convention).total)
    if convention == "maxtext-2023":
        c = count_flops(cfg, batch_size=batch_size, seq_len=seq_len, mode="train", convention="palm").components
        return float(c["6N"] + c["12LHQT"] / 2)
    raise ValueError(f"flop_convention={convention!r}: unknown; valid: {', '.join(CONVENTIONS)}")


def _run(raw: dict) -> PublishedRun:
    model = TransformerConfig(**raw["model"])
    layout = Layout(**raw["layout"])
    uneven = bool(raw.get("uneven_stages", False))
    layout.check(model, batch_size=raw["batch_size"], seq_len=raw["seq_len"], uneven_stages=uneven)
    if layout.chips != raw["chips"]:
        raise ValueError(f"published run {raw['name']}: layout has {layout.chips} chips, run has {raw['chips']}")
    return PublishedRun(raw["name"], raw["title"], raw["source"], raw["hardware"], raw["chips"], raw["slices"],
                        model, layout, raw["batch_size"], raw["seq_len"], dict(raw["measured"]),
                        raw["flop_convention"], float(raw["peak_tflops"]), tuple(raw["assumed"]),
                        tuple(raw.get("evidence", ())), bool(raw.get("dropout", False)), uneven)


@functools.cache
def _load() -> tuple[PublishedRun, ...]:
    text = resources.files("planner").joinpath("data", "published_runs.json").read_text(encoding="utf-8")
    return tuple(_run(r) for r in json.loads(text)["runs"])


def published_runs(name: str | None = None):
    """All shipped runs (a tuple of `PublishedRun`), or the one called ``name``."""
    runs = _load()
    if name is None:
        return runs
    for r in runs:
        if r.name == name:
            return r
    raise ValueError(f"published run {name!r}: unknown; valid: {', '.join(r.name for r in runs)}")


class Comparison(NamedTuple):
    name: str
    published: float  # seconds per step
    predicted: float
    error: float  # predicted / published - 1
    fit: bool
    hardware: str
    chips: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def compare(runs=None) -> list[Comparison]:
    """Predicted against published step time for each run (`planner.roofline` with its layout)."""
    from planner.timing import roofline

    out = []
    for r in runs or published_runs():
        p = roofline(r.model, hardware=r.hardware, layout=r.layout, batch_size=r.batch_size, seq_len=r.seq_len,
                     slices=r.slices, dropout=r.dropout, uneven_stages=r.uneven_stages)
        pred = float(p.step_time)
        out.append(Comparison(r.name, r.step_time, pred, pred / r.step_time - 1, r.fit, r.hardware, r.chips))
    return out


def error_summary(rows: list[Comparison]) -> dict[str, float]:
    """Median and worst |relative error|, over all rows, the fit rows and the held-out rows."""
    import statistics

    def stats(rs):
        errs = [abs(r.error) for r in rs]
        return {"median": statistics.median(errs), "worst": max(errs), "n": len(errs)} if errs else {}

    return {"all": stats(rows), "fit": stats([r for r in rows if r.fit]),
            "held_out": stats([r for r in rows if not r.fit])}
