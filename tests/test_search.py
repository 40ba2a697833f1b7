"""planner.plan / frontier: the gradient search against the closed-form optimum, exact budgets,
determinism, monotonicity, edge budgets, constraints, hardware budgets, inference-aware plans."""

import json
import math
import sys

import numpy as np
import pytest

from planner.laws import get_law
from planner.search import frontier, plan

BUDGETS = [1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26]


@pytest.fixture(scope="module")
def six_nd_plans():
    return frontier(BUDGETS, convention="6nd")


@pytest.fixture(scope="module")
def xla_plans():
    return frontier(BUDGETS)


def test_6nd_search_matches_hoffmann_closed_form(six_nd_plans):
    # With C = 6ND the search must land on Hoffmann et al. 2022 Eq. 4 before rounding.
    law = get_law("chinchilla")
    for p in six_nd_plans:
        n_opt, d_opt = law.optimal_allocation(p.budget)
        assert p.continuous["params"] == pytest.approx(n_opt, rel=0.01), p.budget
        assert p.continuous["tokens"] == pytest.approx(d_opt, rel=0.01), p.budget


def test_xla_plans_spend_99_to_100_percent_exactly(xla_plans):
    for p in xla_plans:
        assert isinstance(p.flops, int)  # exact integer FLOPs of whole steps
        assert p.flops <= p.budget
        assert 0.99 <= p.budget_used <= 1.0, (p.budget, p.budget_used)
        assert p.tokens == p.steps * p.batch_size * p.config.seq_len


def test_plans_are_valid_hardware_friendly_shapes(xla_plans):
    for p in xla_plans:
        c = p.config
        assert c.d_model % 128 == 0 and c.resolved_head_dim in (64, 128) and c.d_ff % 128 == 0
        assert 64 <= c.d_model / c.n_layers <= 192  # the default aspect-ratio range
        # rounding moves the loss only a little from the continuous optimum
        assert p.loss == pytest.approx(p.continuous["loss"], rel=0.01)


def test_deterministic_and_monotone(xla_plans):
    again = frontier(BUDGETS)
    assert [(p.config, p.tokens, p.loss) for p in again] == [(p.config, p.tokens, p.loss) for p in xla_plans]
    params = [p.params for p in xla_plans]
    assert all(a < b for a, b in zip(params, params[1:]))
    losses = [p.loss for p in xla_plans]
    assert all(a > b for a, b in zip(losses, losses[1:]))


def test_no_nan_or_inf_from_1e15_to_1e28():
    for p in frontier([1e15, 1e17, 1e20, 1e23, 1e25, 1e27, 1e28]):
        for v in (p.params, p.tokens, float(p.flops), p.loss, p.budget_used, *p.continuous.values()):
            assert math.isfinite(v) and v > 0, p


def test_budget_below_the_smallest_shape_names_the_minimum():
    with pytest.raises(ValueError, match=r"budget_flops=1e\+10: below the minimum [\d.e+]+ FLOPs, one step of "
                                         r"the smallest allowed shape"):
        plan(1e10)


@pytest.mark.parametrize(("kwargs", "needle"), [
    (dict(aspect_ratio=(200, 100)), "aspect_ratio=(200, 100): infeasible"),
    (dict(d_model=1024, n_layers=64), "infeasible with d_model=1024 and n_layers=64"),
    (dict(n_layers=0), "n_layers=0"),
    (dict(head_dims=(96,)), "head_dims=(96,) and d_model_multiple=128"),
    (dict(law="kaplan"), "unknown"),
    (dict(convention="megatron-recompute"), "unknown for planning"),
    (dict(base="gpt-5"), "unknown preset"),
    (dict(mfu=0.5), "mfu= applies to a hardware budget"),
    (dict(hardware="h100"), "needs hardware=, chips= and days= together"),
])
def test_bad_arguments_and_infeasible_constraints(kwargs, needle):
    with pytest.raises(ValueError, match=None) as err:
        plan(1e21, **kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("budget", [0, -1e21, float("nan"), float("inf"), "1e21", True])
def test_bad_budgets(budget):
    with pytest.raises(ValueError, match="budget_flops="):
        plan(budget)


def test_memory_constraint_is_respected_or_named():
    p = plan(hardware="h100", chips=8, days=1, mfu=0.4)
    assert p.memory_per_chip <= 80e9 and p.micro_batch >= 1
    with pytest.raises(ValueError, match="max_memory_per_chip=1e\\+06 bytes"):
        plan(hardware="h100", chips=8, days=1, mfu=0.4, max_memory_per_chip=1e6)


def test_constraints_steer_the_shape():
    deep = plan(1e21, aspect_ratio=(16, 32))
    assert 16 <= deep.config.d_model / deep.config.n_layers <= 32
    fixed = plan(1e21, n_layers=24)
    assert fixed.config.n_layers == 24
    gqa = plan(1e21, base="mistral-7b")  # the base's 4:1 KV grouping and its vocab carry over
    assert gqa.config.n_heads == 4 * gqa.config.resolved_n_kv_heads and gqa.config.vocab_size == 32000
    free = plan(1e21, free_mlp_ratio=True)
    assert 1 <= free.config.d_ff / free.config.d_model <= 8


def test_hardware_budget():
    p = plan(hardware="h100", chips=8, days=1)
    assert p.step_time > 0 and 0 < p.mfu <= 1 and p.days <= 1.0
    assert p.days >= 0.99  # whole steps fill the day
    assert p.memory_per_chip <= 80e9
    # a faster chip for the same time buys more compute, a bigger model and a lower loss
    q = plan(hardware="b200", chips=8, days=1)
    assert q.loss < p.loss and q.params > p.params
    # with a fixed MFU the FLOPs follow from the peak
    r = plan(hardware="h100", chips=8, days=1, mfu=0.4)
    assert r.mfu == 0.4


def test_hardware_budget_moves_toward_efficient_shapes():
    # With the roofline's time, the objective sees each shape's achievable FLOP rate, not only
    # its FLOPs: the optimum differs from the plan at the same FLOPs and a fixed MFU.
    p = plan(hardware="tpu-v5e", chips=16, days=2)
    q = plan(hardware="tpu-v5e", chips=16, days=2, mfu=p.mfu)
    assert p.config != q.config or p.tokens != q.tokens


def test_inference_aware_plan_is_cheaper_in_total():
    p = plan(1e21, inference_tokens=1e13)
    mine, best = p.inference["compute_optimal"], p.inference["inference_optimal"]
    assert best["total_flops"] < mine["total_flops"]
    assert best["params"] < mine["params"] and best["tokens"] > mine["tokens"]  # smaller, trained longer
    assert best["loss"] == pytest.approx(mine["loss"], rel=1e-9)
    # no inference: the compute-optimal plan is (nearly) its own inference-aware optimum
    q = plan(1e21, inference_tokens=0)
    assert q.inference["inference_optimal"]["total_flops"] == pytest.approx(
        q.inference["compute_optimal"]["total_flops"], rel=0.02)


def test_frontier_vectorised_equals_single_plans():
    budgets = [1e19, 1e22]
    many = frontier(budgets)
    for b, p in zip(budgets, many):
        assert plan(b).config == p.config


def test_fitted_law_plans():
    # a law fitted to data plans like any preset: Epoch's refit of Chinchilla's data
    law = get_law("epoch")
    p = plan(1e22, law=law)
    assert p.law == law and np.isfinite(p.loss)


# ----------------------------------------------------------------------------- CLI





def test_cli_plan_table_and_json(cli):
    code, out, _ = cli("plan", "--budget", "1e21")
    assert code == 0 and "params" in out and "of the budget" in out and "loss" in out
    code, out, _ = cli("plan", "--budget", "1e21", "--json", "--law", "epoch", "--aspect", "32:128")
    data = json.loads(out)
    assert code == 0 and data["flops"] <= 1e21 and data["budget_used"] >= 0.99
    assert 32 <= data["config"]["d_model"] / data["config"]["n_layers"] <= 128
    code, out, _ = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "1", "--mfu", "0.4")
    assert code == 0 and "MFU 40.0%" in out and "days" in out


def test_cli_frontier(cli):
    code, out, err = cli("frontier", "--from", "1e18", "--to", "1e22", "--points", "3")
    assert code == 0 and "N (6ND law)" in out and out.count("\n") >= 5


def test_cli_fit_then_plan_with_it(cli, tmp_path):
    law_file = tmp_path / "law.json"
    code, out, _ = cli("fit", "--dataset", "chinchilla-epoch", "--exclude-highest", "5", "--out", str(law_file))
    assert code == 0 and "alpha" in out
    fitted = json.loads(law_file.read_text())
    assert abs(fitted["alpha"] - 0.34781) < 0.015 and abs(fitted["E"] - 1.8172) < 0.026  # Epoch's, within SE
    code, out, _ = cli("plan", "--budget", "1e21", "--law-file", str(law_file), "--json")
    assert code == 0 and json.loads(out)["law"]["alpha"] == pytest.approx(fitted["alpha"])


def test_cli_plot_without_matplotlib_is_a_clear_error(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on a machine without the plot extra
    code, out, err = cli("frontier", "--from", "1e18", "--to", "1e20", "--points", "2", "--plot", "x.png")
    assert code == 2 and "pip install 'scaling-planner[plot]'" in err


@pytest.mark.parametrize(("argv", "needle"), [
    (["plan"], "give --budget FLOPS"),
    (["plan", "--budget", "1e21", "--hardware", "h100", "--chips", "8", "--days", "1"], "not both"),
    (["plan", "--budget", "-5"], "budget_flops=-5.0"),
    (["plan", "--budget", "nan"], "budget_flops=nan"),
    (["plan", "--budget", "1e8"], "below the minimum"),
    (["plan", "--budget", "1e21", "--law", "gpt"], "unknown"),
    (["plan", "--budget", "1e21", "--aspect", "wide"], "--aspect 'wide'"),
    (["plan", "--budget", "1e21", "--aspect", "300:100"], "infeasible"),
    (["plan", "--budget", "1e21", "--law-file", "/nonexistent.json"], "--law-file"),
    (["plan", "--hardware", "h100", "--chips", "8"], "days"),
    (["frontier", "--from", "1e22", "--to", "1e20"], "need 0 < from < to"),
    (["fit", "/nonexistent.csv"], "nonexistent.csv"),
])
def test_cli_plan_bad_input(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and needle in err
