"""Closed-form collectives (planner.collectives) against XLA's SPMD partitioner, on compile-only
targets: per (config, layout), bytes per device and mesh axis, closed form vs compiled.

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu python benchmarks/collectives.py [--target tpu-v5p:2x2x2]
        [--only N] [--verbose] [--windowed]

--windowed keeps the TPU compiler's windowed einsums (collective matmuls: the gathers and
reduce-scatters next to a matmul become loops of collective-permutes); the closed form then
matches in ring wire bytes, not in buffer bytes.
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


def grid() -> list[tuple[str, TransformerConfig, str, int, int]]:
    """(label, config, layout, batch, seq): GQA and MHA, gated and plain MLPs, tied and untied
    heads, an odd vocabulary, biases, learned and rotary positions; every mesh degree."""
    def cfg(**kw):
        base = dict(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=512, seq_len=64,
                    mlp="swiglu", norm="rmsnorm", position="rope", bias=False, tied_embeddings=True)
        base.update(kw)
        return TransformerConfig(**base)

    llama = cfg()
    gqa = cfg(n_kv_heads=2, tied_embeddings=False)
    gpt = cfg(mlp="gelu", norm="layernorm", position="learned", bias=True, vocab_size=250)
    odd = cfg(vocab_size=251, tied_embeddings=False, n_kv_heads=4, mlp="geglu")
    wide = cfg(d_model=256, n_heads=8, d_ff=768, n_layers=3, n_kv_heads=2)
    rows = []
    for name, c in (("llama", llama), ("gqa-untied", gqa), ("gpt-bias", gpt), ("odd-vocab", odd), ("wide3", wide)):
        for lay in ("fsdp=8", "tp=8" if c.resolved_n_kv_heads % 8 == 0 else "tp=2,dp=4", "fsdp=4,tp=2",
                    "dp=2,fsdp=2,tp=2", "fsdp=4,tp=2,sequence_parallel=true", "dp=2,cp=2,tp=2", "fsdp=4,cp=2",
                    "dp=8"):
            rows.append((name, c, lay, 8, 64))
    # ZeRO-1 (optimizer state over dp) and gradient accumulation (micro-batches)
    for name, c, lay in (("llama", llama, "dp=4,tp=2,optimizer_sharding=true"),
                         ("gqa-untied", gqa, "dp=8,optimizer_sharding=true"),
                         ("gpt-bias", gpt, "dp=2,fsdp=4,optimizer_sharding=true"),
                         ("llama", llama, "fsdp=4,tp=2,micro_batch=1"),
                         ("odd-vocab", odd, "dp=2,tp=4,micro_batch=2"),
                         ("wide3", wide, "dp=2,fsdp=2,tp=2,sequence_parallel=true,micro_batch=1")):
        rows.append((name, c, lay, 8, 64))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="tpu-v5p:2x2x2")
    ap.add_argument("--only", type=int, default=None, help="run one row of the grid")
    ap.add_argument("--start", type=int, default=0, help="skip the first rows")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--windowed", action="store_true")
    ap.add_argument("--hlo-dir", metavar="DIR", help="keep each compiled HLO text there and reuse it "
                    "(the closed form can then be re-checked without compiling)")
    args = ap.parse_args(argv)

    from planner.targets import parse_target, target_devices
    from planner.validation import TPU_OPTIONS, collective_report, compile_sharded_step

    target = parse_target(args.target)
    devices = target_devices(target)
    opts = None if args.windowed or target.platform != "tpu" else TPU_OPTIONS
    rows = grid()
    if args.only is not None:
        rows = [rows[args.only]]
    rows = rows[args.start:]
    worst = 0.0
    print(f"{'model':<11} {'layout':<36} {'axis':<8} {'closed form':>12} {'compiled':>12} {'err %':>7} "
          f"{'wire err %':>10}  kinds (compiled)")
    for label, cfg, lay_s, b, t in rows:
        lay = Layout.parse(lay_s)
        t0 = time.time()
        cache = None
        if args.hlo_dir:
            os.makedirs(args.hlo_dir, exist_ok=True)
            cache = os.path.join(args.hlo_dir, f"{target.name}_{label}_{lay_s}{'_w' if args.windowed else ''}.hlo"
                                 .replace(":", "-").replace(",", "_").replace("=", ""))
        if cache and os.path.exists(cache):
            text = open(cache).read()
        else:
            compiled, _ = compile_sharded_step(cfg, lay, batch_size=b, seq_len=t, devices=devices,
                                               compiler_options=opts)
            text = compiled.as_text()
            if cache:
                with open(cache, "w") as f:
                    f.write(text)
        rep = collective_report(cfg, lay, text, batch_size=b, seq_len=t, where=target.name,
                                platform=target.platform)
        for axis, r in rep.rows.items():
            kinds = ",".join(f"{k}:{v}" for k, v in sorted(r.compiled_kinds.items()))
            print(f"{label:<11} {lay_s:<36} {axis:<8} {int(r.predicted):>12} {r.compiled:>12} "
                  f"{100 * r.rel_error:>7.2f} {100 * r.wire_rel_error:>10.2f}  {kinds}")
            worst = max(worst, abs(r.rel_error))
            if args.verbose and abs(r.rel_error) > 0.001:
                pk = ",".join(f"{k}:{int(v)}" for k, v in sorted(r.predicted_kinds.items()))
                print(f"{'':<57}predicted kinds: {pk}")
        if args.verbose:
            for c in rep.compiled:
                print("   ", c.kind, c.axis_name, c.group_size, c.bytes, c.count, c.dtype, c.op_name[:80])
        sys.stdout.flush()
    print(f"worst per-axis error: {100 * worst:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
