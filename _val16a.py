from tests.test_moe_flops import GRID
from planner.validation import validate
for name, cfg in GRID.items():
    for mode in ("forward", "train"):
        r = validate(cfg, batch_size=2, seq_len=8, mode=mode)
        print(f"| {name} | {mode} | {r.xla_dot_flops:,} | {int(r.predicted_dot_flops):,} | {'yes' if r.dots_exact else 'NO'} | {r.components['experts'].hlo_dots:,} | {100*r.rel_error:+.2f}% |")
