"""Memory per chip: the closed form (planner.estimate_memory) vs the compilers' memory_analysis()
of the training step (compile-only), per shape, layout and sequence length.

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu python benchmarks/memory.py [--gpu] [--quick]
        [--shapes d768:L3:b4:t4096:v50304,...] [--layouts "remat=full;attention=flash"]

Prints one row per (shape, layout): the TPU compiler's argument / temp / peak (= argument + temp
+ output - alias), the closed form's total and its error; with --gpu the H100 compiler's peak
and the closed form's error against it beside them (the Pallas kernel is TPU-only: no GPU
figure). Every layout computes in bf16 with fp32 parameters and AdamW (the mixed precision of
real runs). The shapes are not the one the "xla" bookkeeping of planner.memory was read from
(d1024 L2 b8 t2048 v32768). Each compile takes a few minutes on a 2-core host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import Layout, TransformerConfig  # noqa: E402
from planner.validation import TPU_TOPOLOGY, validate_memory  # noqa: E402

LAYOUTS = ("remat=none", "remat=full", "remat=dots", "remat=selective", "attention=flash",
           "attention=flash,remat=full", "attention=flash,flash_kernel=pallas",
           "attention=flash,flash_kernel=pallas,remat=full")
#: Two shapes unlike the one the bookkeeping was read from: a GPT-2-like long-sequence one and a
#: Llama-like one (SwiGLU, RMSNorm, rope, GQA, untied head).
SHAPES = ("d768:L3:b4:t4096:v50304:gpt", "d2048:L2:b2:t2048:v32000:llama")
QUICK_SHAPES = ("d768:L2:b2:t2048:v50304:gpt",)


def parse_shape(text: str) -> tuple[TransformerConfig, int, int]:
    fields = dict((f[0], f[1:]) for f in text.split(":")[:5])
    kind = text.split(":")[5] if text.count(":") >= 5 else "gpt"
    d, L, b, t, v = (int(fields[k]) for k in "dLbtv")
    extra = dict(mlp="swiglu", norm="rmsnorm", position="rope", bias=False, tied_embeddings=False,
                 n_kv_heads=max(1, d // 256), d_ff=8 * d // 3 // 64 * 64) if kind == "llama" else dict(d_ff=4 * d)
    cfg = TransformerConfig(vocab_size=v, d_model=d, n_layers=L, n_heads=d // 64, seq_len=t, **extra)
    return cfg, b, t


def gpu_peak(cfg, layout, b, t, target: str) -> int | None:
    from planner.targets import compile_model

    if layout.flash_kernel == "pallas":
        return None
    return compile_model(cfg, target, batch_size=b, seq_len=t, layout=layout).memory.peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", help="comma-separated d<D>:L<L>:b<B>:t<T>:v<V>[:gpt|:llama]")
    ap.add_argument("--layouts", default=";".join(LAYOUTS), help="';'-separated Layout strings (bf16 is added)")
    ap.add_argument("--topology", default=TPU_TOPOLOGY)
    ap.add_argument("--gpu", action="store_true", help="also compile for the GPU target (--gpu-target)")
    ap.add_argument("--gpu-target", default="h100:8")
    ap.add_argument("--quick", action="store_true", help="one small shape")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    shapes = args.shapes.split(",") if args.shapes else (QUICK_SHAPES if args.quick else SHAPES)
    mib = lambda x: f"{x / 2**20:9.0f}"  # noqa: E731
    print(f"TPU {args.topology} (compile-only){' and ' + args.gpu_target if args.gpu else ''}; bf16 compute, "
          "fp32 parameters, AdamW; MiB per chip")
    print(f"{'shape':30} {'layout':36} {'arg':>7} {'temp':>9} {'TPU peak':>9} {'closed':>9} {'error':>7}"
          + (f" {'GPU peak':>9} {'error':>7}" if args.gpu else "") + f" {'s':>4}")
    rows, errors = [], []
    for shape in shapes:
        cfg, b, t = parse_shape(shape)
        for text in args.layouts.split(";"):
            layout = Layout.parse(f"{text},dtype=bf16")
            t0 = time.time()
            r = validate_memory(cfg, layout, batch_size=b, seq_len=t, topology=args.topology)
            errors.append((text, r.rel_error))
            line = (f"{shape:30} {text:36} {mib(r.argument)[2:]} {mib(r.temp)} {mib(r.peak)} "
                    f"{mib(float(r.closed_form.total))} {100 * r.rel_error:+6.1f}%")
            row = {**r.to_dict(), "shape": shape}
            if args.gpu:
                g = gpu_peak(cfg, layout, b, t, args.gpu_target)
                gerr = None if g is None else (float(r.closed_form.total) - g) / g
                line += " " + (f"{mib(g)} {100 * gerr:+6.1f}%" if g is not None else f"{'-':>9} {'':>7}")
                row.update(gpu_peak=g, gpu_rel_error=gerr)
            print(line + f" {time.time() - t0:4.0f}", flush=True)
            rows.append(row)
    worst = max(errors, key=lambda e: abs(e[1]))
    print(f"\n{sum(abs(e) <= 0.10 for _, e in errors)} of {len(errors)} within 10% of the TPU compiler's peak; "
          f"worst {worst[0]} {100 * worst[1]:+.1f}%")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
