"""planner.validate: the closed form against XLA's cost analysis, over a grid of configs, both
layer layouts and both stages; the HLO reader on real and synthetic programs."""

import json

import jax
import pytest

from models import presets
from planner import validation as vmod
from planner.hlo import cost_of, parse_hlo
from planner.validation import default_grid, validate

GRID = default_grid()


def test_grid_covers_every_option():
    cfgs = [c for _, c, _, _ in GRID]
    assert len(cfgs) >= 24
    for field, values in [("mlp", {"gelu", "swiglu", "geglu"}), ("norm", {"layernorm", "rmsnorm"}),
                          ("position", {"learned", "rope"}), ("tied_embeddings", {True, False}),
                          ("bias", {True, False}), ("embed_scale", {True, False})]:
        assert {getattr(c, field) for c in cfgs} == values, field
    assert any(c.resolved_n_kv_heads < c.n_heads for c in cfgs)  # GQA / MQA
    assert any(c.resolved_n_kv_heads == c.n_heads for c in cfgs)  # MHA
    assert any(c.qkv_bias for c in cfgs) and any(c.head_dim for c in cfgs)
    assert any(c.d_model == 48 and c.vocab_size == 97 for c in cfgs)  # odd sizes


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize(("label", "cfg", "b", "t"), GRID, ids=[g[0] for g in GRID])
def test_grid_matches_xla(label, cfg, b, t, mode, scan):
    r = validate(cfg, batch_size=b, seq_len=t, mode=mode, scan_layers=scan)
    assert r.xla_dot_flops == r.predicted_dot_flops  # op by op, exactly
    assert abs(r.rel_error) <= 0.005
    assert abs(r.transcendental_rel_error) <= 0.01
    for name, row in r.components.items():
        assert row.hlo_dots == row.predicted_dots, name  # each matmul component, exactly
    assert r.ok
    if scan:
        assert any("nnx.scan" in n and "body once" in n for n in r.notes)
        assert float(r.unrolled_flops) > float(r.predicted_flops)  # XLA saw one layer of several
    else:
        assert not any("nnx.scan" in n for n in r.notes)


def test_seven_billion_forward_without_allocating():
    before = sum(a.nbytes for a in jax.live_arrays())
    r = validate(presets.get("llama-2-7b"), seq_len=2048)
    after = sum(a.nbytes for a in jax.live_arrays())
    assert r.ok and r.dots_exact and abs(r.rel_error) < 1e-5
    assert after - before < 50e6  # 27 GB of float32 weights were never allocated


def test_compiled_stage_keeps_dots_exact_and_says_why_totals_move():
    r = validate(presets.get("tiny-llama"), batch_size=2, seq_len=8, mode="train", stage="compiled")
    assert r.stage == "compiled" and r.dots_exact and r.ok
    assert any("compiled stage" in n for n in r.notes)


def test_stage_fallback_when_cost_analysis_is_missing(monkeypatch):
    class NoCost:  # a PJRT plugin's lowered program: cost_analysis() is None
        def __init__(self, inner):
            self.inner = inner

        def cost_analysis(self):
            return None

        def as_text(self, **kw):
            return self.inner.as_text(**kw)

        def compile(self):
            return self.inner.compile()

    real = vmod.lower_program
    monkeypatch.setattr(vmod, "lower_program", lambda *a, **k: NoCost(real(*a, **k)))
    r = validate(presets.get("tiny-gpt"), batch_size=1, seq_len=8)
    assert r.stage == "compiled" and r.dots_exact
    assert any("no cost analysis" in n and "compiled" in n for n in r.notes)


def test_cost_of_across_jax_versions():
    assert cost_of(None) is None
    assert cost_of({"flops": 10.0}) == (10.0, 0.0, 0.0)  # absent keys are 0
    assert cost_of([{"flops": 10.0, "transcendentals": 2.0}, {"flops": 5.0}]).flops == 15.0  # jax <= 0.4.38
    assert cost_of([]) is None


SYNTHETIC = """HloModule jit_f, entry_computation_layout={(f32[4,3]{1,0})->f32[4,3]{1,0}}

%body.1 (p: (s32[], f32[4,3])) -> (s32[], f32[4,3]) {
  %p = (s32[], f32[4,3]{1,0}) parameter(0)
  %w = f32[3,3]{1,0} constant({...})
  %x = f32[4,3]{1,0} get-tuple-element(%p), index=1
  %d = f32[4,3]{1,0} dot(f32[4,3]{1,0} %x, f32[3,3]{1,0} %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/while/body/transpose(jvp(mlp_in))/dot_general"}
  ROOT %t = (s32[], f32[4,3]{1,0}) tuple(%i, %d)
}

%cond.2 (p: (s32[], f32[4,3])) -> pred[] {
  %p = (s32[], f32[4,3]{1,0}) parameter(0)
  ROOT %c = pred[] compare(%i, %n), direction=LT
}

ENTRY %main.3 (a: f32[4,3]) -> f32[4,3] {
  %a = f32[4,3]{1,0} parameter(0)
  %b = f32[3,5]{1,0} parameter(1)
  %e = f32[4,5]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %g = f32[4,5]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm"
  %w0 = (s32[], f32[4,3]{1,0}) tuple(%z, %a)
  %w1 = (s32[], f32[4,3]{1,0}) while(%w0), condition=%cond.2, body=%body.1
  ROOT %r = f32[4,3]{1,0} get-tuple-element(%w1), index=1
}
"""


def test_parse_hlo_dots_loops_and_custom_calls():
    s = parse_hlo(SYNTHETIC)
    assert s.n_while == 1 and s.custom_calls == ["__cublas$gemm"]
    by = {d.component: d for d in s.dots}
    assert by["mlp_in"].flops == 2 * 4 * 3 * 3 and by["mlp_in"].in_loop
    assert by[None].flops == 2 * 4 * 5 * 3 and not by[None].in_loop
    assert s.dot_flops == 72 + 120


def test_bad_arguments():
    cfg = presets.get("tiny-gpt")
    with pytest.raises(ValueError, match="mode='backward': unknown; valid: forward, train"):
        validate(cfg, mode="backward")
    with pytest.raises(ValueError, match="stage='optimized': unknown; valid: lowered, compiled"):
        validate(cfg, stage="optimized")
    with pytest.raises(ValueError, match="seq_len=17: exceeds the learned position table"):
        validate(cfg, seq_len=17)
    with pytest.raises(ValueError, match="batch_size=0"):
        validate(cfg, batch_size=0)


# ----------------------------------------------------------------------------- CLI


def test_cli_validate_table_and_json(cli):
    code, out, _ = cli("validate", "--preset", "gpt2", "--seq", "64")
    assert code == 0 and "verdict: OK" in out and "dot FLOPs (HLO text)" in out and "exact" in out
    code, out, _ = cli("validate", "--preset", "tiny-llama", "--mode", "train", "--scan", "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["scan_layers"] and data["mode"] == "train"
    assert data["xla_dot_flops"] == data["predicted_dot_flops"]


def test_cli_grid_summary_and_exit_status(cli, monkeypatch):
    monkeypatch.setattr(vmod, "default_grid", lambda: GRID[:2])
    code, out, err = cli("validate", "--grid", "--mode", "forward")
    assert code == 0 and "4 validations" in out and "max |error|" in out and "0 outside tolerance" in out
    assert "4/4" in err  # the progress bar
    monkeypatch.setattr(vmod.ValidationReport, "ok", property(lambda self: False))
    code, out, _ = cli("validate", "--grid", "--mode", "forward")
    assert code == 1 and "4 outside tolerance" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["validate"], "give --preset NAME"),
    (["validate", "--grid", "--preset", "gpt2"], "--grid runs the built-in sweep"),
    (["validate", "--preset", "gpt2", "--stage", "jit"], "invalid choice: 'jit'"),
    (["validate", "--preset", "gpt2", "--mode", "backward"], "invalid choice: 'backward'"),
    (["validate", "--preset", "gpt2", "--seq", "5000"], "exceeds the learned position table"),
])
def test_cli_validate_bad_input(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and needle in err


# ------------------------------------------------------------ deep unrolled models (issue 10)
@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-gemma"])
def test_abstract_model_built_layer_by_layer_equals_one_trace(name):
    """abstract_model builds unrolled layers one trace each (linear in n_layers); the result is
    the same model as building it all in one nnx.eval_shape: graph, state tree, shapes, dtypes."""
    import dataclasses

    from flax import nnx

    from models import abstract_model
    from models.transformer import Transformer

    cfg = dataclasses.replace(presets.get(name), n_layers=4)
    fast = abstract_model(cfg)
    one = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    (g1, s1), (g2, s2) = nnx.split(fast), nnx.split(one)
    assert g1 == g2 and fast.cfg == cfg and len(fast.layers) == 4
    assert jax.tree.map(lambda x: (x.shape, x.dtype), s1) == jax.tree.map(lambda x: (x.shape, x.dtype), s2)


def test_deep_unrolled_validation_is_refused_up_front_with_the_fix(cli):
    import dataclasses

    cfg = dataclasses.replace(presets.get("tiny-llama"), n_layers=2000)
    with pytest.raises(ValueError, match=r"n_layers=2000: more than 512 layers unrolled .* \(--scan"):
        validate(cfg)
    code, out, err = cli("validate", "--preset", "tiny-llama", "--set", "n_layers=2000")
    assert code == 2 and not out and "--scan" in err.splitlines()[-1]
    assert err.splitlines()[0].startswith("note: lowering 2000 unrolled layers")
