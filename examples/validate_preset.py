"""Validate a preset: XLA's cost analysis of the Flax model next to the closed form.

    python examples/validate_preset.py [--preset gpt2] [--seq 256] [--mode forward|train]

Nothing is allocated: the model is built with nnx.eval_shape and lowered from ShapeDtypeStructs.
"""

import argparse

import planner
from models import presets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--mode", default="forward", choices=("forward", "train"))
    args = ap.parse_args()

    r = planner.validate(presets.get(args.preset), seq_len=args.seq, mode=args.mode)
    print(f"{args.preset} {args.mode}, seq {args.seq}: XLA {r.xla_flops:.6g} FLOPs, closed form "
          f"{float(r.predicted_flops):.6g} ({r.rel_error:+.2e}); dot FLOPs "
          f"{'exact' if r.dots_exact else 'DIFFER'}; transcendentals {r.transcendental_rel_error:+.2e}")
    for name, row in r.components.items():
        if row.hlo_dots:
            print(f"  {name:12s} HLO dots {row.hlo_dots:.4g}  closed form {float(row.predicted_dots):.4g}")
    for note in r.notes:
        print(f"  note: {note}")
    print("OK" if r.ok else "OUTSIDE TOLERANCE")


if __name__ == "__main__":
    main()
