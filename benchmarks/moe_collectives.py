"""Expert-parallel all-to-alls: the closed form (planner.collectives) against the compiled
sharded step (models.sharding, the MoE layer's dense dispatch with a capacity factor) on
compile-only targets: bytes per device per step of every all-to-all, closed form vs compiled.

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu python benchmarks/moe_collectives.py [--target tpu-v5p:2x2x2]
        [--target h100:8] [--dropless]

XLA:GPU writes an all-to-all as an async pair (``all-to-all-start`` / ``-done``, tuple-shaped);
`planner.hlo.parse_collectives` reads XLA:TPU's synchronous form, so on GPU targets the
all-to-alls are read from the ``-start`` ops (`planner.hlo.async_all_to_all_bytes`).
``--dropless`` adds the dropless (ragged_dot) configs: the sharded model has no token
all-to-all there (see the printed rows), so the closed form's dispatch/combine describe a
token-dispatching runtime (Megatron-core, DeepSpeed-MoE), not this program.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from models.config import TransformerConfig  # noqa: E402
from models.layout import Layout  # noqa: E402

def grid(dropless: bool = False) -> list[tuple[str, TransformerConfig, str]]:
    base = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32, mlp="swiglu",
                norm="rmsnorm", position="rope", bias=False, n_experts=8, experts_per_token=2, d_ff_expert=32)
    configs = [
        ("top2-cf1.5", TransformerConfig(**base, capacity_factor=1.5)),
        ("top1-cf1.0-gelu", TransformerConfig(**dict(base, mlp="gelu", experts_per_token=1), capacity_factor=1.0)),
        ("dense1-shared", TransformerConfig(**dict(base, n_layers=3), dense_layers=1, n_shared_experts=1,
                                            capacity_factor=2.0)),
    ]
    if dropless:
        configs.append(("top2-dropless", TransformerConfig(**base)))
    layouts = ("fsdp=8,ep=8", "dp=8,ep=8", "dp=2,fsdp=4,ep=4", "dp=4,fsdp=2,ep=4", "dp=2,fsdp=4,ep=8",
               "fsdp=4,tp=2,ep=4", "dp=2,fsdp=4,ep=4,remat=full")
    return [(name, c, lay + ",dtype=bf16") for name, c in configs for lay in layouts]


def measure(cfg, layout: Layout, target: str, batch_size: int = 8, seq_len: int = 32) -> dict:
    """Closed-form and compiled all-to-all bytes of one sharded step on ``target``."""
    from planner.collectives import collectives
    from planner.hlo import async_all_to_all_bytes, parse_collectives
    from planner.targets import target_devices
    from planner.validation import TPU_OPTIONS, compile_sharded_step

    tpu = target.startswith("tpu")
    devs = target_devices(target)
    compiled, _ = compile_sharded_step(cfg, layout, batch_size=batch_size, seq_len=seq_len, devices=devs,
                                       compiler_options=TPU_OPTIONS if tpu else None)
    text = compiled.as_text()
    pred = [c for c in collectives(cfg, layout, batch_size=batch_size, seq_len=seq_len, dtype="bf16")
            if c.kind == "all-to-all"]
    if tpu:
        got = [c for c in parse_collectives(text, layout.mesh_shape) if c.kind == "all-to-all"]
        comp, n = sum(c.total_bytes for c in got), len(got)
    else:
        comp, n = async_all_to_all_bytes(text)
    return {"predicted": sum(c.total_bytes for c in pred), "compiled": comp, "compiled_ops": n,
            "predicted_ops": sum(c.count for c in pred)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", help="tpu-v5p:2x2x2 and/or h100:8 (default both)")
    ap.add_argument("--dropless", action="store_true")
    args = ap.parse_args(argv)
    targets = args.target or ["tpu-v5p:2x2x2", "h100:8"]
    print(f"{'config':16s} {'layout':34s} {'target':14s} {'closed form B':>13s} {'compiled B':>10s} "
          f"{'ops':>7s} {'error':>7s}")
    worst = 0.0
    for target in targets:
        for name, cfg, lay in grid(args.dropless):
            t0 = time.time()
            r = measure(cfg, Layout.parse(lay), target)
            err = r["predicted"] / r["compiled"] - 1 if r["compiled"] else float("inf")
            if cfg.capacity_factor is not None:
                worst = max(worst, abs(err))
            print(f"{name:16s} {lay:34s} {target:14s} {r['predicted']:13d} {r['compiled']:10d} "
                  f"{r['predicted_ops']:3d}/{r['compiled_ops']:<3d} {100 * err:+6.1f}%  ({time.time() - t0:.0f} s)",
                  flush=True)
    print(f"worst |error| over the capacity-factor rows: {100 * worst:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
