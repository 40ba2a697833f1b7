"""CLI: `planner time --run NAME` and `planner layout`."""

import json

from planner.published import published_runs


def test_time_run_prints_predicted_against_published(cli):
    code, out, _ = cli("time", "--run", "korthikanti22-22b-full")
    assert code == 0
    assert "published   1.420 s/step" in out and "predicted" in out and "[fit]" in out
    code, out, _ = cli("time", "--run", "korthikanti22-22b-full", "--json")
    d = json.loads(out)
    assert d["run"]["step_time"] == published_runs("korthikanti22-22b-full").step_time
    assert d["predicted"]["step_time"] > 0 and d["predicted"]["layout"].startswith("remat=full")
    code, _, err = cli("time", "--run", "nope")
    assert code == 2 and err.startswith("error: published run 'nope': unknown")


def test_layout_table(cli):
    code, out, _ = cli("layout", "--preset", "gpt2", "--hardware", "h100", "--chips", "8", "--batch-tokens", "64k",
                       "--top", "3")
    assert code == 0 and "valid layouts" in out and "MFU" in out
    assert len([line for line in out.splitlines() if "micro_batch=" in line]) == 3
    code, _, err = cli("layout", "--preset", "gpt2", "--hardware", "h100", "--chips", "8", "--batch-tokens", "lots")
    assert code == 2 and "--batch-tokens 'lots'" in err
