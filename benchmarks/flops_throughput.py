"""Configs per second of the FLOP model: the vectorised jitted path vs the scalar Python path.

    python benchmarks/flops_throughput.py [--n 1000000] [--scalar 20000]

One run measures both on the same random Llama-style shapes (training step, "xla" convention),
checks they agree, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from models import presets  # noqa: E402
from planner import count_flops, count_flops_many  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="configs for the vectorised path")
    ap.add_argument("--scalar", type=int, default=20_000, help="configs for the scalar Python path")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    template = presets.get("llama-2-7b")
    rng = np.random.default_rng(0)
    d = (rng.integers(1, 129, args.n) * 64).astype(np.float32)
    layers = rng.integers(1, 129, args.n).astype(np.float32)
    ff = (rng.integers(1, 513, args.n) * 64).astype(np.float32)
    kw = dict(batch_size=8, seq_len=4096, mode="train", convention="xla")

    # Vectorised: arrays already on the device, so we time the computation, not the copy.
    dd, ll, fff = (jax.device_put(jnp.asarray(a)) for a in (d, layers, ff))
    count_flops_many(template, d_model=dd, n_layers=ll, d_ff=fff, **kw).block_until_ready()  # compile
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = count_flops_many(template, d_model=dd, n_layers=ll, d_ff=fff, **kw)
        out.block_until_ready()
        times.append(time.perf_counter() - t0)
    vec = args.n / float(np.median(times))
    t0 = time.perf_counter()
    count_flops_many(template, d_model=d, n_layers=layers, d_ff=ff, **kw).block_until_ready()
    vec_host = args.n / (time.perf_counter() - t0)

    # Scalar: exact Python ints, one config at a time.
    t0 = time.perf_counter()
    exact = [count_flops(template.replace(d_model=int(a), n_layers=int(b), d_ff=int(c)), **kw).total
             for a, b, c in zip(d[: args.scalar], layers[: args.scalar], ff[: args.scalar])]
    scalar = args.scalar / (time.perf_counter() - t0)

    rel = np.max(np.abs(np.asarray(out[: args.scalar], np.float64) / np.array(exact, np.float64) - 1))
    print(f"backend                           : {jax.default_backend()} ({os.cpu_count()} CPUs)")
    print(f"vectorised jitted, {args.n:,} configs : {vec:,.0f} configs/s (median of {args.repeat})")
    print(f"  including the host->device copy  : {vec_host:,.0f} configs/s")
    print(f"scalar exact ints, {args.scalar:,} configs  : {scalar:,.0f} configs/s")
    print(f"ratio vectorised / scalar         : {vec / scalar:,.0f}x")
    print(f"max relative difference (float32 vs exact): {rel:.2e}")


if __name__ == "__main__":
    main()
