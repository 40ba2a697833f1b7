"""Memory per chip: the closed form (planner.estimate_memory) vs the TPU compiler's
memory_analysis() of the training step (compile-only, libtpu), per layout and sequence length.

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu python benchmarks/memory.py \
        --d-model 256 --layers 2 --batch 2 --seqs 1024,2048,4096

Prints one row per (sequence, layout): the compiler's argument / temp / peak (= argument + temp
+ output - alias) and the closed form's total and its error. Flash attention is the model's own
blockwise JAX kernel (models.flash) compiled by XLA:TPU. Each compile takes seconds to minutes
on a CPU host; --json-out keeps the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import Layout, TransformerConfig  # noqa: E402
from planner.validation import TPU_TOPOLOGY, validate_memory  # noqa: E402

LAYOUTS = ("remat=none", "remat=full", "remat=dots", "remat=selective", "attention=flash",
           "attention=flash,remat=full")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--layouts", default=";".join(LAYOUTS), help="';'-separated Layout strings")
    ap.add_argument("--topology", default=TPU_TOPOLOGY)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    d = args.d_model
    cfg = TransformerConfig(vocab_size=args.vocab, d_model=d, n_layers=args.layers, n_heads=max(1, d // 64),
                            d_ff=4 * d, seq_len=max(int(s) for s in args.seqs.split(",")))
    print(f"d_model={d} n_layers={args.layers} heads={cfg.n_heads} vocab={args.vocab} batch={args.batch}, "
          f"fp32, AdamW; TPU {args.topology} compile-only; MiB")
    print(f"{'seq':>6} {'layout':28} {'arg':>9} {'temp':>9} {'peak':>9} {'closed':>9} {'error':>7} {'s':>4}")
    rows = []
    for t in (int(s) for s in args.seqs.split(",")):
        for text in args.layouts.split(";"):
            t0 = time.time()
            r = validate_memory(cfg, Layout.parse(text), batch_size=args.batch, seq_len=t, topology=args.topology)
            mib = lambda x: f"{x / 2**20:9.1f}"  # noqa: E731
            print(f"{t:6d} {text:28} {mib(r.argument)} {mib(r.temp)} {mib(r.peak)} "
                  f"{mib(float(r.closed_form.total))} {100 * r.rel_error:+6.1f}% {time.time() - t0:4.0f}", flush=True)
            rows.append(r.to_dict())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
