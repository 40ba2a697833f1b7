"""Layouts evaluated per second by `planner.search_layouts` (one jitted, vmapped pass).

    python benchmarks/layout_search.py

Each case is run twice; the second (warm) run measures the evaluation, without compilation.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from models import presets  # noqa: E402
from planner.layouts import search_layouts  # noqa: E402
from planner.published import published_runs  # noqa: E402

CASES = [("llama-2-7b on 1024 h100, 4M tokens", presets.get("llama-2-7b"), "h100", 1024, 1024, 4096),
         ("GPT 1T on 3072 a100 (Narayanan 2021)", published_runs("narayanan21-1t").model, "a100-80gb", 3072, 3072, 2048),
         ("GPT-3 175B on 2048 h100", published_runs("nvidia-dgxc-gpt3-175b-2048xh100").model, "h100", 2048, 4096,
          2048)]

if __name__ == "__main__":
    print(f"{'case':40s} {'layouts':>9s} {'fit':>8s} {'cold s':>7s} {'warm s':>7s} {'layouts/s':>10s}  best")
    for name, cfg, hw, chips, batch, seq in CASES:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            res = search_layouts(cfg, hardware=hw, chips=chips, batch_size=batch, seq_len=seq, top=1)
            times.append(time.perf_counter() - t)
        print(f"{name:40s} {res.evaluated:9d} {res.fitting:8d} {times[0]:7.2f} {times[1]:7.2f} "
              f"{res.evaluated / times[1]:10.3g}  {res.best[0].layout.to_string()} {res.best[0].step_time:.3f}s")
