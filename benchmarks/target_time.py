"""XLA's TPU cost model (``optimal_seconds``) against the roofline, compile-only.

    python benchmarks/target_time.py [TARGET ...] [--shapes N]

1. Efficiency factors: one large bf16 matmul and one large elementwise add, compiled for each
   TPU; ``optimal_seconds`` against FLOPs / peak and bytes / HBM bandwidth gives the fraction of
   peak and of bandwidth the cost model assumes.
2. A grid of model shapes (training step, bf16 compute, one device): `planner.roofline` step
   time beside ``optimal_seconds``, and the spread of roofline / XLA.

Needs libtpu (pip install 'scaling-planner[tpu]'); no TPU is used.
"""

from __future__ import annotations

import os
import statistics

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from models import TransformerConfig  # noqa: E402
from models.layout import Layout  # noqa: E402
from planner.targets import ModelProgram, compile_in_process, parse_target  # noqa: E402
from planner.timing import roofline  # noqa: E402

TARGETS = ("tpu-v5p:2x2x1", "tpu-v5e:2x2")


def _arg(devices, shape, dtype=jnp.bfloat16):
    mesh = Mesh(np.array(devices[:1]), ("x",))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def matmul(n):
    def build(devices):
        return jax.jit(lambda a, b: a @ b), (_arg(devices, (n, n)), _arg(devices, (n, n)))
    return build


def add(n):
    def build(devices):
        return jax.jit(lambda a, b: a + b), (_arg(devices, (n, n)), _arg(devices, (n, n)))
    return build


def efficiency(target):
    t = parse_target(target)
    peak, bw = t.spec.peak("bf16"), t.spec.hbm_bandwidth
    rows = []
    for n in (4096, 8192, 16384):
        (r,) = compile_in_process([matmul(n)], t)
        rows.append((f"matmul {n}^3 bf16", r.flops / peak / r.optimal_seconds, "of peak"))
    for n in (4096, 16384):
        (r,) = compile_in_process([add(n)], t)
        rows.append((f"add {n}x{n} bf16", r.bytes_accessed / bw / r.optimal_seconds, "of HBM bandwidth"))
    return rows


GRID = [  # (config, batch, seq): two layers, Llama-style, from memory- to compute-bound
    (TransformerConfig(vocab_size=8192, d_model=d, n_layers=2, n_heads=d // 64, d_ff=4 * d, seq_len=s,
                       mlp=mlp, norm="rmsnorm", position="rope", bias=False, tied_embeddings=False), b, s)
    for d, b, s, mlp in [(256, 1, 256, "gelu"), (256, 8, 512, "swiglu"), (512, 2, 512, "swiglu"),
                         (512, 8, 1024, "gelu"), (1024, 1, 1024, "swiglu"), (1024, 4, 1024, "swiglu")]
]


def grid(target):
    t = parse_target(target)
    rows = []
    for cfg, b, s in GRID:
        (r,) = compile_in_process([ModelProgram(cfg, batch_size=b, seq_len=s, layout=Layout(dtype="bf16"))], t)
        roof = roofline(cfg, hardware=t.spec, batch_size=b, seq_len=s, dtype="bf16").step_time
        rows.append((f"d{cfg.d_model} L{cfg.n_layers} {cfg.mlp} b{b} s{s}", roof, r.optimal_seconds))
        print(f"  {rows[-1][0]:32s} {roof * 1e3:12.3f} {r.optimal_seconds * 1e3:10.3f} {roof / r.optimal_seconds:13.3f}"
              f"   ({r.compile_seconds:.0f} s to compile)", flush=True)
    return rows


def main(argv):
    shapes = int(argv[argv.index("--shapes") + 1]) if "--shapes" in argv else len(GRID)
    targets = [a for a in argv if ":" in a] or TARGETS
    del GRID[shapes:]
    for target in targets:
        print(f"== {target}: optimal_seconds' efficiency factors")
        for label, frac, what in efficiency(target):
            print(f"  {label:22s} {frac:.3f} {what}", flush=True)
        print(f"== {target}: training step (bf16, one device), roofline vs XLA's optimal_seconds")
        print(f"  {'shape':32s} {'roofline ms':>12s} {'XLA ms':>10s} {'roofline/XLA':>13s}")
        rows = grid(target)
        ratios = [roof / opt for _, roof, opt in rows if opt > 0]
        if len(ratios) < len(rows):
            print(f"  {len(rows) - len(ratios)} shape(s) with a negative optimal_seconds (no estimate): left out")
        if not ratios:
            continue
        print(f"  roofline/XLA over {len(ratios)} shapes: min {min(ratios):.3f}, median "
              f"{statistics.median(ratios):.3f}, max {max(ratios):.3f}\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
