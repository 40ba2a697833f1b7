"""models.sharding: the rule table, and the sharded step against the single-device one.

The 8-device checks run in ONE subprocess (tests/sharded_worker.py), since the simulated device
count must be set before JAX starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from models import presets
from models.layout import Layout
from models.sharding import RULES, activation_spec, logical_to_spec, make_mesh, mesh_axes, param_specs
from models.train import abstract_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def worker():
    env = dict(os.environ, PYTHONPATH=str(ROOT), ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "tests.sharded_worker", "--tpu", "--grid"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_sharded_steps_match_the_single_device_step(worker):
    from tests.sharded_worker import TEST_LAYOUTS, layouts_of_8

    # (dp, fsdp, cp, tp) with product 8: 20 layouts, and sequence parallelism for the 10 with
    # tp > 1; the suite runs a few (benchmarks/sharded_equivalence.py runs all 30)
    assert len(layouts_of_8()) == 30 and set(TEST_LAYOUTS) <= set(layouts_of_8())
    rows = worker["equivalence"]
    assert [r["layout"] for r in rows] == list(TEST_LAYOUTS)
    for r in rows:
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5), r
        assert r["param_diff"] < 2e-6, r
        assert r["dots"][0] == r["dots"][1], r  # per-device dot FLOPs exact (planner.flops)
    by = {r["layout"]: r for r in rows}
    assert by["dp=2,cp=4"]["sharded_params"] == 0  # replicated state
    assert by["fsdp=8"]["sharded_params"] > 0 and by["tp=8"]["sharded_params"] > 0


def test_tpu_collectives_match_the_closed_form(worker):
    # XLA:TPU (compile-only v5p, 8 chips): Megatron's 4 all-reduces per layer for tp=8, and the
    # FSDP gathers, gradient reduce-scatters and TP all-reduces of fsdp=4,tp=2, per mesh axis.
    for rep in worker["tpu"]:
        assert rep["ok"], rep["axes"]
        for axis, row in rep["axes"].items():
            assert abs(row["rel_error"]) <= 0.02 or abs(row["compiled_bytes"] - row["predicted_bytes"]) <= 16
    tp = worker["tpu"][0]["axes"]["tp"]
    assert tp["compiled_kinds"] == {"all-reduce": tp["compiled_bytes"]}


def test_grid_rows_match_the_closed_form_on_tpu_and_gpu(worker):
    # benchmarks/collectives.py's grid, three rows on each compiler (XLA:TPU v5p 2x2x2 and
    # XLA:GPU h100:8, compile-only): learned positions and biases under dp x fsdp x tp, an odd
    # vocabulary (251, not split over tp) with sequence parallelism, ZeRO-1. Every mesh axis's
    # bytes per device per step within 2% (or 16 B, the loss's scalar).
    from tests.sharded_worker import GRID_ROWS

    rows = worker["grid"]
    assert {(r["target"], r["label"], r["layout"]) for r in rows} == {
        (t, label, lay) for t in ("tpu-v5p:2x2x2", "h100:8") for label, lay in GRID_ROWS}
    for r in rows:
        assert r["ok"], (r["target"], r["layout"], r["axes"])
        assert len(r["axes"]) >= 2
        for axis, a in r["axes"].items():
            assert abs(a["compiled_bytes"] - a["predicted_bytes"]) <= max(16, 0.02 * a["predicted_bytes"]), (
                r["target"], r["layout"], axis, a)
    by = {(r["target"], r["layout"]): r for r in rows}
    # ZeRO-1: the gradients reduce-scattered and the parameters all-gathered over dp
    zero = by[("tpu-v5p:2x2x2", "dp=4,tp=2,optimizer_sharding=true")]["axes"]["dp"]["compiled_kinds"]
    assert {"reduce-scatter", "all-gather"} <= set(zero)
    # the compilers differ and the closed form says how: XLA:GPU gathers the MLP again with tp
    gpu = by[("h100:8", "dp=2,fsdp=2,tp=2")]["options"]
    assert gpu["regather"] == ["mlp_in", "mlp_gate", "mlp_out"] and gpu["gather_in_backward"] is False
    assert by[("tpu-v5p:2x2x2", "dp=2,fsdp=2,tp=2")]["options"]["gather_in_backward"] is True


def test_rules_map_logical_axes_to_mesh_axes():
    lay = Layout.parse("fsdp=4,tp=2")
    assert mesh_axes("embed", lay) == ("fsdp",)
    assert mesh_axes("mlp", lay) == ("tp",)
    assert mesh_axes("vocab", lay, size=251) == ()  # tp=2 does not divide 251: kept whole
    assert logical_to_spec(("embed", "mlp"), lay) == P("fsdp", "tp")
    assert logical_to_spec(("embed", "mlp"), lay, shape=(3, 64, 128)) == P(None, "fsdp", "tp")  # scanned
    assert logical_to_spec(("norm",), lay) == P(None)
    assert set(RULES) >= {"vocab", "embed", "heads", "kv_heads", "mlp"}
    with pytest.raises(ValueError, match="logical axis 'experts'"):
        mesh_axes("experts", lay)


def test_every_parameter_of_the_model_has_logical_axes():
    from flax import nnx

    cfg = presets.get("tiny-gpt")
    for scan in (False, True):
        _, params = nnx.split(abstract_model(cfg, scan_layers=scan), nnx.Param)
        for path, var in nnx.to_flat_state(params):
            names = var.get_metadata().get("out_sharding")
            assert names and len(names) <= len(var.get_value().shape), path
        specs = param_specs(params, Layout(fsdp=2, tp=2))
        assert any("tp" in str(s) for s in __import__("jax").tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_activation_specs():
    sp = Layout.parse("dp=2,fsdp=2,tp=2,cp=2,sequence_parallel=true")
    assert activation_spec("residual", sp) == P(("dp", "fsdp"), ("cp", "tp"), None)
    assert activation_spec("block_input", sp) == P(("dp", "fsdp"), "cp", None)
    assert activation_spec("kv", sp) == P(("dp", "fsdp"), None, "tp", None)
    assert activation_spec("residual", Layout(tp=2)) == P(None, None, None)
    with pytest.raises(ValueError, match="activation kind"):
        activation_spec("scores", sp)


def test_mesh_needs_as_many_devices_as_the_layout():
    import jax

    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh(Layout(fsdp=4), jax.devices()[:1])
    with pytest.raises(ValueError, match="pp=2"):
        from models.sharding import lower_sharded_step

        lower_sharded_step(presets.get("tiny-gpt"), Layout(pp=2), batch_size=2, seq_len=8,
                           devices=jax.devices()[:1] * 2)


def test_cli_validate_layout_needs_a_compiler(cli):
    code, _, err = cli("validate", "--preset", "tiny-llama", "--devices", "8")
    assert code == 2 and "give --layout too" in err
    code, _, err = cli("validate", "--preset", "tiny-llama", "--layout", "fsdp=4,tp=2")
    assert code == 2 and "--target" in err and "--devices" in err
    code, _, err = cli("validate", "--preset", "tiny-llama", "--layout", "tp=3", "--devices", "3")
    assert code == 2 and "n_heads=4 is not divisible by tp=3" in err
