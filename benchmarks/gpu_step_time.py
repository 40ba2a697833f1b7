"""Time the Flax training step on one GPU across a few shapes and compare with the prediction.

    python benchmarks/gpu_step_time.py [--hardware h100]

Without a GPU it says so and exits 0 after a CPU smoke check of the prediction path (so it
runs anywhere); with one, it times `models.train_step` (after warm-up, median of 5) and prints
measured against `planner.roofline(layout=Layout(dtype="bf16", ...))`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from models import presets  # noqa: E402
from planner import Layout  # noqa: E402
from planner.timing import roofline  # noqa: E402

SHAPES = [("gpt2", 8, 1024), ("gpt2-medium", 8, 1024), ("llama-2-7b", 1, 2048)]


def predicted(name, batch, seq, hw):
    cfg = presets.get(name)
    return roofline(cfg, hardware=hw, layout=Layout(dtype="bf16", param_dtype="fp32", attention="dot"),
                    batch_size=batch, seq_len=seq).step_time


def measure(name, batch, seq):
    """Median seconds of `models.train_step` (bf16 compute) after three warm-up steps."""
    import jax.numpy as jnp

    from models.train import init_train_state, train_step

    cfg = presets.get(name)
    state = init_train_state(cfg, seed=0, dtype=jnp.bfloat16)
    params, opt_state = state.params, state.opt_state
    tokens = jnp.zeros((batch, seq + 1), jnp.int32)
    times = []
    for i in range(8):
        t = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, tokens[:, :-1], tokens[:, 1:],
                                             graphdef=state.graphdef, tx=state.tx)
        jax.block_until_ready(loss)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="h100")
    args = ap.parse_args()
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        print("no GPU visible to JAX: nothing measured. Prediction path smoke check on CPU:")
        for name, b, s in SHAPES:
            print(f"  {name:12s} batch {b} x {s}: predicted {predicted(name, b, s, args.hardware) * 1e3:.1f} ms "
                  f"on one {args.hardware}")
        return 0
    print(f"{'shape':12s} {'batch':>9s} {'measured ms':>12s} {'predicted ms':>13s} {'error':>7s}")
    for name, b, s in SHAPES:
        m, p = measure(name, b, s), predicted(name, b, s, args.hardware)
        print(f"{name:12s} {b:3d} x {s:4d} {m * 1e3:12.1f} {p * 1e3:13.1f} {100 * (p / m - 1):+6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
