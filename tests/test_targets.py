"""Compile-only TPU and GPU targets (planner.targets) against the closed form.

Each fixture compiles its programs in ONE subprocess (libtpu or the CUDA plugin loads once);
the module's tests run serially, so two processes never load libtpu at the same time. The
oracle is the real compilers' own analysis: ``cost_analysis()`` (TPU), ``memory_analysis()``
and the optimised HLO, none of which the closed form reads.
"""

import json

import pytest

import hardware
from hardware.spec import Spec, from_toml, to_toml
from models.config import TransformerConfig
from models.layout import Layout
from planner.params import count_params
from planner.targets import (
    ModelProgram,
    compile_many,
    entry_parameter_bytes,
    find_collectives,
    gpu_target_config,
    parse_target,
    tiled_bytes,
    validate_target_many,
)

# Micro configs (d_model 128, seq 128) that differ in every option the closed form branches on.
CONFIGS = {
    "gelu/layernorm/learned/tied": TransformerConfig(
        vocab_size=256, d_model=128, n_layers=1, n_heads=4, d_ff=512, seq_len=128),
    "swiglu/rmsnorm/rope/untied/gqa": TransformerConfig(
        vocab_size=384, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=384, seq_len=128,
        mlp="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False, bias=False),
}


# ------------------------------------------------------------------------------ target strings


def test_parse_target_tpu_and_gpu():
    t = parse_target("tpu-v5p:2x2x1")
    assert (t.platform, t.topology, t.chips, t.spec.name) == ("tpu", "v5p:2x2x1", 4, "tpu-v5p")
    assert parse_target("tpu-v5e:4x4").chips == 16
    assert parse_target("tpu-v6e:2x2").topology == "v6e:2x2"
    v4 = parse_target("tpu-v4:2x2x1")
    assert v4.spec.tpu_chip_config == "megacore"  # one device per chip, not per TensorCore
    g = parse_target("h100:8")
    assert (g.platform, g.topology, g.chips, g.spec.name) == ("gpu", "1x1x8", 8, "h100-sxm")
    assert parse_target("a100-80gb:16").topology == "1x2x8"  # two 8-GPU NVLink nodes


@pytest.mark.parametrize("text, fragment", [
    ("h100", "CHIP:SHAPE"),
    ("tpu-v5p:2x2x2x2", "2 or 3 positive ints"),
    ("tpu-v5p:2x0x1", "2 or 3 positive ints"),
    ("h100:0", "number of GPUs"),
    ("h100:12", "multiple of 8"),
    ("mi300x:8", "no compiler target"),
    ("nochip:8", "unknown chip"),
])
def test_parse_target_rejects_bad_strings(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_target(text)


def test_gpu_target_config_from_the_spec():
    spec = hardware.get("h100")
    text = gpu_target_config(spec)
    # H100 SXM5: 132 SMs (NVIDIA H100 whitepaper, Table 3), compute capability 9.0, 3.35 TB/s.
    assert "core_count: 132" in text and "major: 9 minor: 0" in text
    assert "memory_bandwidth: 3350000000000" in text and "device_memory_size: 80000000000" in text
    with pytest.raises(ValueError, match="no gpu_device"):
        gpu_target_config(hardware.get("tpu-v5p"))


def test_spec_target_fields_are_checked():
    text = to_toml(hardware.get("h100"))
    assert from_toml(text) == hardware.get("h100")
    without_source = "\n".join(l for l in text.splitlines() if not l.startswith('"gpu_device.core_count"'))
    with pytest.raises(ValueError, match="gpu_device.core_count"):
        from_toml(without_source)
    with pytest.raises(ValueError, match="positive integer"):
        from_toml(text.replace("core_count = 132", "core_count = 0"))
    with pytest.raises(ValueError, match="unknown TPU family"):
        from_toml(to_toml(hardware.get("tpu-v5p")).replace('tpu_topology = "v5p"', 'tpu_topology = "v9"'))


def test_validate_target_arguments_are_checked():
    from planner import validate

    cfg = CONFIGS["gelu/layernorm/learned/tied"]
    with pytest.raises(ValueError, match="layout= needs target="):
        validate(cfg, layout="dp=2")
    with pytest.raises(ValueError, match="stage='compiled'"):
        validate(cfg, target="tpu-v5p:2x2x1", stage="compiled")
    with pytest.raises(ValueError, match="unknown chip"):
        validate(cfg, target="tpu-v9:2x2")


def test_model_program_rejects_what_it_cannot_build():
    cfg = CONFIGS["gelu/layernorm/learned/tied"]
    with pytest.raises(ValueError, match="tp=2"):
        ModelProgram(cfg, layout=Layout(tp=2))
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        ModelProgram(cfg, batch_size=6, layout=Layout(dp=4))
    with pytest.raises(ValueError, match="mode="):
        ModelProgram(cfg, mode="backward")


# ------------------------------------------------------------------------------ HLO readers


def test_tiled_bytes_rounds_to_the_tile():
    assert tiled_bytes("f32", [256, 128], "{1,0:T(8,128)}") == 256 * 128 * 4
    assert tiled_bytes("f32", [3, 100], "{1,0:T(8,128)}") == 8 * 128 * 4
    assert tiled_bytes("s32", [], "{:T(128)}") == 128 * 4  # a scalar takes a whole tile
    assert tiled_bytes("f32", [5, 7], "{1,0}") == 140
    text = "HloModule m, entry_computation_layout={(f32[3,100]{1,0:T(8,128)}, s32[]{:T(128)})->f32[]}"
    assert entry_parameter_bytes(text) == (3 * 100 * 4 + 4, 8 * 128 * 4 + 512)


def test_find_collectives_sync_and_async():
    text = "\n".join([
        "  %ar = f32[256,128]{1,0} all-reduce(%x), replica_groups={}, to_apply=%add",
        "  %ags = (bf16[4,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(%y), dimensions={0}",
        "  %agd = bf16[16,8]{1,0} all-gather-done(%ags)",
        "  %t = (f32[2]{0}, f32[3]{0}) all-reduce(%a, %b), to_apply=%add",
    ])
    got = [(c.kind, c.bytes, c.asynchronous) for c in find_collectives(text)]
    assert got == [("all-reduce", 256 * 128 * 4, False), ("all-gather", 16 * 8 * 2, True),
                   ("all-reduce", 20, False)]


# ------------------------------------------------------------------------------ TPU v5p, compiled


@pytest.fixture(scope="module")
def tpu():
    """Each config's training step on one device (batch 2) and 4-way data parallel (batch 8),
    plus a scanned step: one subprocess (the forward pass is compiled in the dump test)."""
    cases = []
    for cfg in CONFIGS.values():
        cases += [(cfg, 2, None, "train", None, False), (cfg, 8, None, "train", "dp=4", False)]
    cases.append((CONFIGS["swiglu/rmsnorm/rope/untied/gqa"], 2, None, "train", None, True))
    return validate_target_many(cases, "tpu-v5p:2x2x1")


def test_tpu_dot_flops_per_device_are_exact(tpu):
    for v in tpu:
        assert v.report.device_kind == "TPU v5"
        assert v.report.dot_flops == v.predicted_dot_flops, v.program.describe()
        for name, c in v.components.items():
            assert c.hlo_dots == c.predicted_dots, (name, v.program.describe())


def test_tpu_argument_bytes_are_exact(tpu):
    for v in tpu:
        assert v.report.argument_bytes_unpadded == v.predicted_argument_bytes, v.program.describe()
        # the device's own buffer size = the arrays padded to the layout's tiles
        assert entry_parameter_bytes(v.report.hlo_text)[1] == v.report.memory.argument


def test_tpu_total_flops_and_cost_model(tpu):
    for v in tpu:
        err = v.flops_rel_error
        # the compiler only adds elementwise work to the dots (fusion duplicates, expansions):
        # never fewer FLOPs than the closed form, and within a few percent at these sizes.
        assert 0 <= err < 0.02, (err, v.program.describe())
        assert v.report.transcendentals > 0 and v.report.bytes_accessed > 0
        # the HLO's FLOPs per component (dots + the rest) account for the compiler's total
        attributed = sum(c.hlo for c in v.components.values())
        assert abs(attributed - v.report.flops) <= 0.005 * v.report.flops
        # optimal_seconds is at least the roofline of the compiler's own FLOPs and bytes
        spec = hardware.get("tpu-v5p")
        roof = max(v.report.flops / spec.peak("bf16"), v.report.bytes_accessed / spec.hbm_bandwidth)
        assert v.report.optimal_seconds >= roof


def test_tpu_data_parallel_reduces_every_gradient(tpu):
    for v in tpu:
        reduced = sum(c.bytes for c in v.report.collectives if c.kind == "all-reduce")
        if v.program.layout.data_parallel == 1:
            assert v.report.collectives == ()
        else:
            assert v.report.devices == 4
            assert reduced >= 4 * count_params(v.program.cfg).total  # fp32 gradients, all of them


def test_tpu_report_serialises(tpu):
    v = tpu[0]
    d = json.loads(json.dumps(v.to_dict()))
    assert d["dots_exact"] and d["compiler"]["memory"]["peak"] == v.report.memory.peak
    from planner.targets import TargetReport

    assert TargetReport.from_dict(v.report.to_dict(hlo=True)) == v.report


def test_tpu_dump_fallback_and_bad_topology():
    cfg = CONFIGS["gelu/layernorm/learned/tied"]
    (r,) = compile_many([ModelProgram(cfg, mode="forward", batch_size=2)], "tpu-v5p:2x2x1", hlo_source="dump")
    assert r.hlo_source == "dump"
    from planner.flops import count_flops

    assert r.dot_flops == count_flops(cfg, batch_size=2, mode="forward", convention="fma").total
    with pytest.raises(ValueError, match="not divisible"):  # libtpu's own message
        compile_many([ModelProgram(cfg)], "tpu-v5p:3x3x3")


# ------------------------------------------------------------------------------ H100, compiled


def test_h100_data_parallel_step():
    cfg = CONFIGS["gelu/layernorm/learned/tied"]
    (v,) = validate_target_many([(cfg, 16, None, "train", "dp=8", False)], "h100:8")
    r = v.report
    assert r.device_kind == "h100-sxm" and r.devices == 8
    assert r.flops is None and r.optimal_seconds is None and v.flops_rel_error is None
    assert v.dots_exact  # in total; the GPU compiler merges q, k, v dots under one name
    assert r.memory.argument == v.predicted_argument_bytes  # no tile padding on GPU
    assert r.memory.peak > r.memory.argument
    kinds = {(c.kind, c.asynchronous) for c in r.collectives}
    assert ("all-reduce", True) in kinds  # the GPU compiler's async all-reduce-start/done
    assert v.ok


def test_cli_validate_target(cli, tpu):
    from planner.cli import _target_validation_text

    text = _target_validation_text("micro", tpu[1])
    assert "micro on tpu-v5p:2x2x1 (TPU v5, compile-only): train, batch 8 x seq 128, dp=4" in text
    assert "dot FLOPs (HLO)" in text and "exact" in text and "optimal_seconds" in text
    assert "collectives: " in text and "all-reduce" in text
    code, out, err = cli("validate", "--preset", "tiny-gpt", "--target", "mi300x:8")
    assert code == 2 and err.startswith("error: ") and "no compiler target" in err
    code, out, err = cli("validate", "--preset", "tiny-gpt", "--layout", "dp=2")
    assert code == 2 and "--layout needs --target" in err
    code, out, err = cli("time", "--preset", "tiny-gpt", "--hardware", "h100", "--target", "tpu-v5p:2x2x1")
    assert code == 2 and "is a tpu-v5p" in err
