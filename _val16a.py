import sys
from models import presets
from planner.validation import validate
for name, kw in [("tiny-moe", {}), ("tiny-mla", {}), ("tiny-moe", {"capacity_factor": 1.25})]:
    cfg = presets.get(name, **kw)
    for mode in ("forward", "train"):
        r = validate(cfg, batch_size=2, seq_len=8, mode=mode)
        print(name, kw, mode, "dots exact", r.dots_exact, r.xla_dot_flops, r.predicted_dot_flops, "total rel", round(r.rel_error,4))
        for k, row in r.components.items():
            if row.hlo_dots != row.predicted_dots:
                print("   ", k, row.hlo_dots, row.predicted_dots, row.hlo_dots / max(1,row.predicted_dots))
        for n in r.notes:
            if "carry no" in n: print("   ", n)
from planner.hlo import elementwise_flops_by_component
from planner.validation import lower_program
from planner.flops import count_flops
for name, kw in [("tiny-moe", {}), ("tiny-mla", {})]:
    cfg = presets.get(name, **kw)
    for mode in ("forward", "train"):
        lo = lower_program(cfg, batch_size=2, seq_len=8, mode=mode)
        ew = elementwise_flops_by_component(lo.as_text(dialect="hlo") if False else lo.compiler_ir("hlo").as_hlo_text())
        pred = count_flops(cfg, batch_size=2, seq_len=8, mode=mode, convention="xla").components
        fma = count_flops(cfg, batch_size=2, seq_len=8, mode=mode, convention="fma").components
        print(name, mode)
        for k in sorted(set(ew) | set(pred), key=str):
            e = ew.get(k, 0); p = (pred.get(k, 0) - fma.get(k, 0)) if k else 0
            if k == "experts": p = 0
            if e != p: print("   ", k, "hlo_ew", e, "pred_ew", p)
