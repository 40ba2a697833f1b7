"""Plan every cell of hardware x chips x days and print layout, step time, MFU, bubble, memory.

    python benchmarks/plan_sweep.py [--hardware h100 ...] [--chips 8 64 ...] [--days 1 7 ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from planner import plan  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", nargs="+", default=["h100", "a100-80gb", "b200", "tpu-v5p", "tpu-v4"])
    ap.add_argument("--chips", nargs="+", type=int, default=[8, 64, 512, 4096, 16384])
    ap.add_argument("--days", nargs="+", type=float, default=[1, 7, 30, 90])
    args = ap.parse_args()
    for hw in args.hardware:
        for chips in args.chips:
            for days in args.days:
                t = time.perf_counter()
                try:
                    p = plan(hardware=hw, chips=chips, days=days)
                except ValueError as e:
                    print(f"{hw:10s} {chips:6d} {days:4g}d  NO PLAN: {e}")
                    continue
                L = p.layout_result
                print(f"{hw:10s} {chips:6d} {days:4g}d  {p.params / 1e9:8.2f}B params {p.tokens / 1e9:9.0f}B tokens "
                      f"MFU {100 * p.mfu:5.1f}% step {p.step_time:7.3f}s bubble {L.bubble_time:.3f}s "
                      f"mem {L.memory_per_chip / 1e9:5.1f}GB  {L.layout.to_string()}  ({time.perf_counter() - t:.0f}s)",
                      flush=True)
