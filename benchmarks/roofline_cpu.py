"""The roofline and memory model against this machine, in one run.

    python benchmarks/roofline_cpu.py

1. Calibrates this machine (`hardware.calibrate()`): attained matmul FLOP/s and memory bandwidth.
2. For shapes spanning compute- and memory-bound, runs the jitted training step of
   `models.Transformer` (float32) and takes the median step time; predicts it with
   `planner.roofline` on the calibrated spec; prints predicted / measured.
3. Compares `planner.estimate_memory` with XLA's ``compiled.memory_analysis()`` of the same step
   (arguments + outputs + temporaries - aliased), and prints predicted / measured.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import hardware  # noqa: E402
from models import TransformerConfig, abstract_model, adamw, init_train_state, train_step  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from planner.timing import roofline  # noqa: E402

SHAPES = [  # (label, config, batch, seq)
    ("wide MLP, short seq", dict(d_model=512, n_layers=4, n_heads=8, d_ff=2048), 8, 128),
    ("wide, compute-bound", dict(d_model=1024, n_layers=2, n_heads=16, d_ff=4096), 4, 128),
    ("llama-style swiglu", dict(d_model=384, n_layers=4, n_heads=6, d_ff=1024, mlp="swiglu",
                                norm="rmsnorm", position="rope", bias=False), 4, 256),
    ("long seq, attention", dict(d_model=128, n_layers=2, n_heads=4, d_ff=512), 2, 1024),
    ("narrow, memory-bound", dict(d_model=64, n_layers=4, n_heads=2, d_ff=256), 16, 128),
    ("tiny, overhead", dict(d_model=32, n_layers=2, n_heads=2, d_ff=64), 2, 32),
]


def measure_step(cfg, batch, seq, repeats=7):
    state = init_train_state(cfg, tx=adamw())
    tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab_size)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params, opt = state.params, state.opt_state
    for _ in range(2):
        params, opt, loss = train_step(params, opt, x, y, graphdef=state.graphdef, tx=state.tx)
    jax.block_until_ready(loss)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, opt, loss = train_step(params, opt, x, y, graphdef=state.graphdef, tx=state.tx)
        jax.block_until_ready((params, loss))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def xla_memory(cfg, batch, seq):
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    tx = adamw()
    tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    compiled = train_step.lower(params, jax.eval_shape(tx.init, params), tok, tok,
                                graphdef=graphdef, tx=tx).compile()
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def main() -> None:
    t0 = time.perf_counter()
    spec = hardware.calibrate()
    print(f"calibrated {spec.name}: {spec.peak('fp32'):.3g} FLOP/s fp32 matmul, "
          f"{spec.hbm_bandwidth:.3g} B/s memory ({time.perf_counter() - t0:.1f} s)\n")
    rows = []
    for label, kw, batch, seq in SHAPES:
        cfg = TransformerConfig(vocab_size=4096, seq_len=seq, **kw)
        measured = measure_step(cfg, batch, seq)
        pred = roofline(cfg, hardware=spec, batch_size=batch, seq_len=seq, dtype="fp32", param_dtype="fp32")
        mem_pred = estimate_memory(cfg, batch_size=batch, seq_len=seq, dtype="fp32").total
        mem_xla = xla_memory(cfg, batch, seq)
        bound = max(pred.components.values(), key=lambda c: c.time).bound
        compute_share = sum(c.time for c in pred.components.values() if c.bound == "compute") / pred.compute_time
        rows.append((label, measured, pred.step_time, bound, compute_share, mem_pred, mem_xla))
    print(f"{'shape':24s} {'measured':>10s} {'predicted':>10s} {'ratio':>6s}  {'compute-bound time':>18s}"
          f"  {'mem pred':>9s} {'mem XLA':>9s} {'ratio':>6s}")
    for label, m, p, bound, share, mp, mx in rows:
        print(f"{label:24s} {m * 1e3:8.2f}ms {p * 1e3:8.2f}ms {p / m:6.2f}  {100 * share:17.0f}%"
              f"  {mp / 2**20:7.1f}MB {mx / 2**20:7.1f}MB {mp / mx:6.2f}")
    print(f"\nstep time within +-30%: {sum(0.7 <= p / m <= 1.3 for _, m, p, *_ in rows)}/{len(rows)}; "
          f"memory within +-15%: {sum(0.85 <= mp / mx <= 1.15 for *_, mp, mx in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
