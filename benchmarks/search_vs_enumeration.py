"""The gradient search against brute-force enumeration of the discrete shape grid, same objective.

    python benchmarks/search_vs_enumeration.py [--budget 1e21] [--max-d 16384] [--max-layers 128]

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

from planner.search import _batch_size, _exact, _setup, plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1e21)
    ap.add_argument("--max-d", type=int, default=16384)
    ap.add_argument("--max-layers", type=int, default=128)
    args = ap.parse_args()

    s, _ = _setup(law="chinchilla", base=None, convention="xla", hardware=None, chips=None, days=None, mfu=None,
                  dtype="bf16", head_dim=128, free_mlp_ratio=False, mlp_ratio=None, aspect_ratio=None,
                  n_layers=None, d_model=None)
    batch = _batch_size(args.budget, s.base.seq_len, None, 1)

    t0 = time.perf_counter()
    p = plan(args.budget)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = plan(args.budget)
    warm = time.perf_counter() - t0

    t0 = time.perf_counter()
    best, n_shapes = None, 0
    for d in range(128, args.max_d + 1, 128):
        ff = max(128, 128 * round(s.mlp_ratio * d / 128))
        for hd in (64, 128):
            for n_layers in range(1, args.max_layers + 1):
                cfg = s.base.replace(d_model=d, n_layers=n_layers, n_heads=d // hd, head_dim=hd, d_ff=ff,
                                     n_kv_heads=None)
                e = _exact(s, cfg, args.budget, batch, None)
                n_shapes += 1
                if e is not None and (best is None or e["loss"] < best["loss"]):
                    best = e
    enum = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "planner", "plan", "--budget", f"{args.budget:g}"],
                         capture_output=True, text=True)
    cli = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr

    gap = (p.loss - best["loss"]) / best["loss"]
    print(f"budget {args.budget:.3g} FLOPs, batch {batch} x {s.base.seq_len}, law chinchilla, convention xla")
    print(f"enumeration: {n_shapes:,} shapes in {enum:.2f} s -> loss {best['loss']:.6f} at d_model "
          f"{best['cfg'].d_model}, n_layers {best['cfg'].n_layers}, head_dim {best['cfg'].resolved_head_dim}")
    print(f"search:      loss {p.loss:.6f} at d_model {p.config.d_model}, n_layers {p.config.n_layers}, "
          f"head_dim {p.config.resolved_head_dim}; {warm * 1e3:.0f} ms warm, {cold:.2f} s cold (incl. compile)")
    print(f"loss gap search - enumeration: {100 * gap:+.4f}%  (must be <= +0.01%)")
    print(f"speed-up: {enum / warm:.0f}x warm, {enum / cold:.1f}x cold")
    print(f"`planner plan --budget {args.budget:g}` from a cold start (new process): {cli:.2f} s wall")


if __name__ == "__main__":
    main()
