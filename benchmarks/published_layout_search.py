"""For every shipped published run: the step time of its published layout under the cluster model,
and the fastest layout `planner.search_layouts` finds for the same model, chips, batch, precision
and overlap settings. Prints one line a run and how many the search matches or beats.

    python benchmarks/published_layout_search.py
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from planner import published_runs, roofline, search_layouts  # noqa: E402


def main() -> None:
    start = time.time()
    rows = []
    for run in published_runs():
        lay = run.layout
        mine = roofline(run.model, hardware=run.hardware, layout=lay, batch_size=run.batch_size,
                        seq_len=run.seq_len, slices=run.slices, dropout=run.dropout)
        res = search_layouts(run.model, hardware=run.hardware, chips=lay.chips, batch_size=run.batch_size,
                             seq_len=run.seq_len, dtype=lay.dtype if lay.dtype != "fp32" else "bf16",
                             param_dtype=lay.param_dtype, master_fp32=lay.master_fp32, top=1, slices=run.slices,
                             dropout=run.dropout, tp_overlap=lay.tp_overlap, dp_overlap=lay.dp_overlap)
        best = res.best[0]
        rows.append((run.name, mine.step_time, best.step_time))
        print(f"{run.name:36s} published layout {mine.step_time:9.3f} s (fits: {bool(mine.fits)})  "
              f"best found {best.step_time:9.3f} s  ratio {best.step_time / mine.step_time:.3f}  "
              f"{best.layout.to_string()}", flush=True)
    matched = sum(b <= a * (1 + 1e-6) for _, a, b in rows)
    print(f"\nthe search matched or beat the published layout on {matched} of {len(rows)} runs "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
