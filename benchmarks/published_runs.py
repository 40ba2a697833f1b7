"""Predicted against published step time for every shipped published run.

    python benchmarks/published_runs.py          # the table, median and worst |error|
    python benchmarks/published_runs.py --fit    # refit the efficiency constants on FIT_RUNS

The fitted constants (`planner.timing.MATMUL_EFFICIENCY`, `MATMUL_HALF_DIM`, `HBM_EFFICIENCY`)
are fitted on `planner.published.FIT_RUNS` only (coordinate descent on the median |log error|
plus the worst); the held-out rows are the test.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from planner import published, timing  # noqa: E402


def table(rows) -> str:
    lines = [f"{'run':40s} {'chips':>5s} {'published s':>11s} {'predicted s':>11s} {'error':>7s}  set"]
    for r in rows:
        lines.append(f"{r.name:40s} {r.chips:5d} {r.published:11.3f} {r.predicted:11.3f} {100 * r.error:+6.1f}%  "
                     f"{'fit' if r.fit else 'held out'}")
    moe = {r.name for r in published.published_runs() if r.model.is_moe}
    s = published.error_summary([r for r in rows if r.name not in moe])
    for k in ("all", "fit", "held_out"):
        lines.append(f"{k:9s} n={s[k]['n']:2d}  median |error| {100 * s[k]['median']:.1f}%  "
                     f"worst {100 * s[k]['worst']:.1f}%  (dense runs)")
    for r in rows:
        if r.name in moe:
            lines.append(f"MoE       {r.name}: {100 * r.error:+.1f}% (no accuracy target; README, expert parallelism)")
    return "\n".join(lines)


def _objective(runs) -> float:
    errs = sorted(abs(math.log(r.predicted / r.published)) for r in published.compare(runs))
    return errs[len(errs) // 2] + max(errs)


def fit() -> None:
    runs = [r for r in published.published_runs() if r.fit]
    params = [("MATMUL_EFFICIENCY", "gpu"), ("MATMUL_EFFICIENCY", "tpu"), ("MATMUL_HALF_DIM", None),
              ("HBM_EFFICIENCY", "gpu"), ("HBM_EFFICIENCY", "tpu")]

    def get(p):
        v = getattr(timing, p[0])
        return v[p[1]] if p[1] else v

    def put(p, val):
        if p[1]:
            getattr(timing, p[0])[p[1]] = val
        else:
            setattr(timing, p[0], val)

    best = _objective(runs)
    step = 0.08
    for _ in range(6):
        for p in params:
            for sign in (1, -1):
                old = get(p)
                put(p, old * (1 + sign * step))
                if p[0] != "MATMUL_HALF_DIM" and get(p) > 1:
                    put(p, old)
                    continue
                val = _objective(runs)
                if val < best:
                    best = val
                else:
                    put(p, old)
        step /= 2
    print("fitted on", ", ".join(r.name for r in runs))
    for p in params:
        print(f"  {p[0]}{'[' + repr(p[1]) + ']' if p[1] else ''} = {get(p):.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the constants on FIT_RUNS first")
    args = ap.parse_args()
    if args.fit:
        fit()
    print(table(published.compare()))
