"""`planner validate` time against depth: unrolled layers (built one trace each) and nnx.scan.

    python benchmarks/validate_depth.py [--layers 25 50 100 200] [--mode forward]

Prints seconds per validation and per layer; linear in n_layers means a flat seconds/layer
column. (Building all unrolled layers in one nnx.eval_shape trace was quadratic: 150 layers
took 129 s and 300 took 541 s on a 2-core machine.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from models import presets  # noqa: E402
from planner.validation import validate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[25, 50, 100, 200])
    ap.add_argument("--mode", default="forward", choices=("forward", "train"))
    ap.add_argument("--preset", default="tiny-llama")
    args = ap.parse_args()
    print(f"{'layers':>7} {'layout':>6} {'seconds':>8} {'s/layer':>8}  ok")
    for n in args.layers:
        cfg = dataclasses.replace(presets.get(args.preset), n_layers=n)
        for scan in (False, True):
            t0 = time.perf_counter()
            r = validate(cfg, seq_len=8, mode=args.mode, scan_layers=scan)
            dt = time.perf_counter() - t0
            print(f"{n:>7} {'scan' if scan else 'loop':>6} {dt:>8.2f} {dt / n:>8.3f}  {r.ok}", flush=True)


if __name__ == "__main__":
    main()
