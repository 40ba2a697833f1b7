"""Plans for any cluster: every hardware x chip count of the issue's sweep gets a real plan (at
7 days; the day budgets are swept on one of them), with a layout whose memory fits, within the
budget, at an MFU real runs reach. benchmarks/plan_sweep.py runs all 100 cells (all plan)."""

import pytest

import hardware
from planner import plan

HARDWARE = ("h100", "a100-80gb", "b200", "tpu-v5p", "tpu-v4")
CHIPS = (8, 64, 512, 4096, 16384)
CELLS = [(hw, chips, 7) for hw in HARDWARE for chips in CHIPS] + [("h100", 512, d) for d in (1, 30, 90)]


def _check(hw, chips, days):
    spec = hardware.get(hw)
    p = plan(hardware=hw, chips=chips, days=days, steps=100)
    lay = p.layout_result  # the layout search's best (p.layout is its Layout)
    assert lay is not None and lay.layout == p.layout and lay.layout.chips == chips
    assert p.memory_per_chip <= spec.hbm_bytes  # estimate_memory's breakdown of that layout
    lay.layout.check(p.config, batch_size=p.batch_size, seq_len=p.config.seq_len)
    assert p.config.n_heads % lay.layout.tp == 0 and p.config.d_ff % lay.layout.tp == 0
    assert p.config.n_layers % (lay.layout.pp * lay.layout.virtual_stages) == 0
    assert lay.memory_per_chip <= spec.hbm_bytes
    assert 0.98 * days <= p.days <= days * (1 + 1e-9)
    # Real runs: 72% MFU on A100 with FlashAttention-2 (Dao 2023, Sec. 4.3), 55-71% on v5p
    # (MaxText), 53% on H100 (NVIDIA DGXC); planner/data/published_runs.json.
    assert 0.3 <= p.mfu <= 0.85, p.mfu
    return p


@pytest.mark.parametrize("hw", HARDWARE)
def test_every_chip_count_plans(hw):
    plans = [_check(h, c, d) for h, c, d in CELLS if h == hw]
    if hw == "h100":  # more days on the same chips: more compute, a bigger model
        by_days = {p.days: p.params for p in plans if p.layout.chips == 512}
        sizes = [by_days[d] for d in sorted(by_days)]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
