"""The closed form against the real compilers, compile-only: a grid of 8 micro configs.

    python benchmarks/target_validation.py [--gpu]

For each config, the training step on tpu-v5p:2x2x1, on one device (batch 2) and 4-way data
parallel (batch 8): dot FLOPs per device (exact?), total FLOPs (relative error), argument
bytes (exact?), optimal_seconds. With --gpu, the same configs 8-way data parallel on h100:8:
memory per device and the collectives. Needs the tpu (and gpu) extras; no accelerator is used.
"""

from __future__ import annotations

import sys
import time

from models import TransformerConfig
from planner.targets import validate_target_many


def configs():
    out = []
    for i, (mlp, norm, pos, tied) in enumerate([
        ("gelu", "layernorm", "learned", True), ("gelu", "rmsnorm", "rope", False),
        ("swiglu", "rmsnorm", "rope", False), ("swiglu", "layernorm", "learned", True),
        ("geglu", "rmsnorm", "rope", True), ("geglu", "layernorm", "learned", False),
        ("swiglu", "rmsnorm", "rope", True), ("gelu", "layernorm", "rope", False),
    ]):
        cfg = TransformerConfig(
            vocab_size=(256, 384, 512)[i % 3], d_model=128, n_layers=1 + i % 2, n_heads=(4, 2, 8)[i % 3],
            n_kv_heads=(None, 1, 2, None)[i % 4], d_ff=(512, 384, 256)[i % 3], seq_len=128,
            mlp=mlp, norm=norm, position=pos, tied_embeddings=tied, bias=i % 2 == 0)
        label = f"{mlp}/{norm}/{pos}/{'tied' if tied else 'untied'}/L{cfg.n_layers}/h{cfg.n_heads}" \
                f"/kv{cfg.resolved_n_kv_heads}"
        out.append((label, cfg))
    return out


def main(argv):
    grid = configs()
    cases = []
    for _, cfg in grid:
        cases += [(cfg, 2, None, "train", None, False), (cfg, 8, None, "train", "dp=4", False)]
    t0 = time.perf_counter()
    results = validate_target_many(cases, "tpu-v5p:2x2x1", timeout=3600)
    print(f"tpu-v5p:2x2x1: {len(results)} compiles in {time.perf_counter() - t0:.0f} s\n")
    print(f"| config | devices | dot FLOPs/device (closed form) | TPU dots | total FLOPs err | args exact "
          f"| optimal_seconds | temp MiB |")
    print("|---|---|---|---|---|---|---|---|")
    errs = []
    for i, v in enumerate(results):
        r = v.report
        errs.append(v.flops_rel_error)
        print(f"| {grid[i // 2][0]} | {v.program.layout.data_parallel} | {int(v.predicted_dot_flops):,} | "
              f"{'exact' if v.dots_exact else r.dot_flops} | {v.flops_rel_error:+.2%} | "
              f"{'yes' if v.argument_bytes_exact else 'NO'} | {r.optimal_seconds:.3g} | {r.memory.temp / 2**20:.1f} |")
    print(f"\ndots exact {sum(v.dots_exact for v in results)}/{len(results)}, arguments exact "
          f"{sum(v.argument_bytes_exact for v in results)}/{len(results)}; total FLOPs error min {min(errs):+.2%} "
          f"max {max(errs):+.2%}; within 1%: {sum(abs(e) <= 0.01 for e in errs)}/{len(errs)}")
    if "--gpu" in argv:
        t0 = time.perf_counter()
        gpu = validate_target_many([(cfg, 16, None, "train", "dp=8", False) for _, cfg in grid], "h100:8",
                                   timeout=3600)
        print(f"\nh100:8: {len(gpu)} compiles in {time.perf_counter() - t0:.0f} s\n")
        print("| config | dots exact | args exact | peak MiB | temp MiB | collectives | all-reduce bytes |")
        print("|---|---|---|---|---|---|---|")
        for (label, _), v in zip(grid, gpu):
            r = v.report
            kinds = sorted({c.kind + ("-start" if c.asynchronous else "") for c in r.collectives})
            print(f"| {label} | {'yes' if v.dots_exact else 'NO'} | {'yes' if v.argument_bytes_exact else 'NO'} | "
                  f"{r.memory.peak / 2**20:.1f} | {r.memory.temp / 2**20:.1f} | {len(r.collectives)} "
                  f"({', '.join(kinds)}) | {r.collective_bytes:,} |")


if __name__ == "__main__":
    main(sys.argv[1:])
