"""The gradient search against brute-force enumeration of the discrete shape grid, same objective.

    python benchmarks/search_vs_enumeration.py [--budgets 1e19 1e21 1e23] [--max-d 16384] [--max-layers 128]

The objective is the plan's: the exact predicted loss of a hardware-friendly shape (d_model a
multiple of 128, head_dim 64 or 128, integer layers, d_ff the base's ratio rounded to 128) trained
for the whole steps its budget buys ("xla" convention, default Llama-style base). Enumeration
scores every shape of the grid exactly; the search is `planner.plan`. Also times a cold
`planner plan` command (a fresh process: imports, compilation and all).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from planner.search import DEFAULT_ASPECT, _batch_size, _exact, _setup, plan  # noqa: E402


def compare(budget: float, aspect, max_d: int, max_layers: int) -> None:
    s, _ = _setup(law="chinchilla", base=None, convention="xla", hardware=None, chips=None, days=None, mfu=None,
                  dtype="bf16", head_dim=128, free_mlp_ratio=False, mlp_ratio=None, aspect_ratio=aspect,
                  n_layers=None, d_model=None)
    batch = _batch_size(budget, s.base.seq_len, None, 1)

    t0 = time.perf_counter()
    p = plan(budget, aspect_ratio=aspect)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = plan(budget, aspect_ratio=aspect)
    warm = time.perf_counter() - t0

    t0 = time.perf_counter()
    best, n_shapes = None, 0
    for d in range(128, max_d + 1, 128):
        ff = max(128, 128 * round(s.mlp_ratio * d / 128))
        for hd in (64, 128):
            for n_layers in range(1, max_layers + 1):
                if aspect is not None and not aspect[0] <= d / n_layers <= aspect[1]:
                    continue
                cfg = s.base.replace(d_model=d, n_layers=n_layers, n_heads=d // hd, head_dim=hd, d_ff=ff,
                                     n_kv_heads=None)
                e = _exact(s, cfg, budget, batch, None)
                n_shapes += 1
                if e is not None and (best is None or e["loss"] < best["loss"]):
                    best = e
    enum = time.perf_counter() - t0
    gap = (p.loss - best["loss"]) / best["loss"]
    print(f"budget {budget:.3g} FLOPs, batch {batch} x {s.base.seq_len}, law chinchilla, convention xla, "
          f"d_model/n_layers in {aspect or 'any'}")
    print(f"  enumeration: {n_shapes:,} shapes in {enum:.2f} s -> loss {best['loss']:.6f} at d_model "
          f"{best['cfg'].d_model}, n_layers {best['cfg'].n_layers}, head_dim {best['cfg'].resolved_head_dim}")
    print(f"  search:      loss {p.loss:.6f} at d_model {p.config.d_model}, n_layers {p.config.n_layers}, "
          f"head_dim {p.config.resolved_head_dim}; {warm * 1e3:.1f} ms warm ({first:.2f} s first call, with compile)")
    print(f"  loss gap search - enumeration: {100 * gap:+.5f}%  (target <= +0.01%)")
    print(f"  speed-up: {enum / warm:,.0f}x warm, {enum / first:.1f}x including compilation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[1e19, 1e21, 1e23])
    ap.add_argument("--max-d", type=int, default=16384)
    ap.add_argument("--max-layers", type=int, default=128)
    args = ap.parse_args()
    for budget in args.budgets:
        for aspect in (DEFAULT_ASPECT, None):
            compare(budget, aspect, args.max_d, args.max_layers)

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "planner", "plan", "--budget", "1e21"], capture_output=True, text=True)
    cli = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    print(f"\n`planner plan --budget 1e21` from a cold start (new process): {cli:.2f} s wall")


if __name__ == "__main__":
    main()
