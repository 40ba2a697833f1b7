"""Compare two hardware targets: roofline step time, MFU and memory of one model, and the plan
each buys for the same number of chips and days.

    python examples/compare_hardware.py [--preset llama-2-7b] [--a h100] [--b tpu-v5p] [--chips 8]
"""

import argparse

import hardware
import planner
from models import presets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-2-7b")
    ap.add_argument("--a", default="h100")
    ap.add_argument("--b", default="tpu-v5p")
    ap.add_argument("--chips", type=int, default=8)
    ap.add_argument("--days", type=float, default=7)
    args = ap.parse_args()

    cfg = presets.get(args.preset)
    batch, seq = 8 * args.chips, min(2048, cfg.seq_len)
    for name in (args.a, args.b):
        spec = hardware.get(name)
        r = planner.roofline(cfg, hardware=spec, chips=args.chips, batch_size=batch, seq_len=seq)
        m = planner.estimate_memory(cfg, batch_size=batch, seq_len=seq, chips=args.chips, dtype="bf16",
                                    remat=True, shard_state=True, hardware=spec)
        p = planner.plan(hardware=spec, chips=args.chips, days=args.days)
        print(f"{spec.name:10s} {args.preset}: step {r.step_time * 1e3:7.1f} ms, {r.tokens_per_s:9.0f} tokens/s, "
              f"MFU {100 * r.mfu:4.1f}%, memory/chip {m.total / 1e9:5.1f} GB ({'fits' if m.fits else 'does not fit'})")
        print(f"{'':10s} {args.days:g} days on {args.chips} chips buy {p.params / 1e9:.2f} B params on "
              f"{p.tokens / 1e9:.0f} B tokens (loss {p.loss:.4f})")


if __name__ == "__main__":
    main()
