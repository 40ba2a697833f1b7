"""The `planner` CLI: readable tables, JSON, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from tests.conftest import without_runtime_logs





def test_count_table(cli):
    code, out, err = cli("count", "--preset", "gpt2")
    assert code == 0 and not err
    assert "124,439,808" in out and "124.44 M" in out
    assert "non-embedding" in out and "85,056,000" in out


def test_count_json_with_overrides(cli):
    code, out, _ = cli("count", "--preset", "llama-2-7b", "--set", "n_layers=16",
                       "--set", "tied_embeddings=true", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["config"]["n_layers"] == 16 and data["config"]["tied_embeddings"] is True
    p = data["params"]
    assert p["total"] == sum(p["components"].values())
    assert p["total"] == 16 * 202_383_360 + 32000 * 4096 + 4096  # Llama-2-7b layer from its config


def test_count_from_set_alone(cli):
    code, out, _ = cli("count", "--json", *sum((["--set", f"{k}={v}"] for k, v in dict(
        vocab_size=97, d_model=48, n_layers=2, n_heads=4, d_ff=96, seq_len=16, qkv_bias="none").items()), []))
    assert code == 0 and json.loads(out)["params"]["total"] == 43440


def test_presets_listing(cli):
    code, out, _ = cli("presets")
    assert code == 0 and "gemma-2b" in out and "huggingface.co/google/gemma-2b" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["count", "--preset", "gpt-5"], "unknown preset 'gpt-5'"),
    (["count", "--preset", "gpt2", "--set", "n_layers=two"], "n_layers='two': expected an integer"),
    (["count", "--preset", "gpt2", "--set", "n_layers=0"], "n_layers=0"),
    (["count", "--preset", "gpt2", "--set", "layers=4"], "unknown field 'layers'"),
    (["count", "--preset", "gpt2", "--set", "n_layers"], "expected field=value"),
    (["count", "--preset", "gpt2", "--set", "mlp=relu"], "mlp='relu': unknown option"),
    (["count", "--preset", "gpt2", "--set", "bias=maybe"], "expected true or false"),
    (["count", "--preset", "gpt2", "--set", "n_heads=5"], "d_model=768: must be divisible by n_heads=5"),
    (["count", "--preset", "gpt2", "--set", "n_layers=2", "--set", "n_layers=3"], "given twice"),
    (["count", "--set", "d_model=64"], "missing: vocab_size"),
    (["count", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required"),
])
def test_bad_input_is_one_line_exit_2(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and not out
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_console_entry_points():
    # The installed `python -m planner` runs the same main, with exit status and stderr as a user sees.
    res = subprocess.run([sys.executable, "-m", "planner", "count", "--preset", "nope"],
                         capture_output=True, text=True, timeout=120)
    err = without_runtime_logs(res.stderr)
    assert res.returncode == 2 and err.startswith("error: unknown preset") and err.count("\n") == 1
    assert "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "planner", "count", "--preset", "tiny-gpt"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "43,440" in res.stdout


def test_count_flops_all_conventions_json(cli):
    code, out, _ = cli("count", "--preset", "gpt2", "--convention", "all", "--mode", "train",
                       "--batch", "2", "--seq", "512", "--json")
    assert code == 0
    f = json.loads(out)["flops"]
    assert (f["mode"], f["batch_size"], f["seq_len"]) == ("train", 2, 512)
    convs = f["conventions"]
    assert {"fma", "no_fma", "xla", "6nd", "kaplan", "palm", "megatron", "chinchilla", "deepseek"} <= set(convs)
    assert convs["6nd"]["total"] == 6 * 124_439_808 * 1024
    assert convs["xla"]["total"] == sum(convs["xla"]["components"].values())
    assert convs["fma"]["per_token"] == convs["fma"]["total"] / 1024


def test_count_flops_table(cli):
    code, out, _ = cli("count", "--preset", "llama-2-7b", "--flops", "--causal")
    assert code == 0 and "attn_scores" in out and "causal" in out and "transcendentals" in out
    code, out, _ = cli("count", "--preset", "llama-2-7b", "--convention", "palm")
    assert code == 0 and "12LHQT" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["count", "--preset", "gpt2", "--batch", "0"], "batch_size=0"),
    (["count", "--preset", "gpt2", "--seq", "4096"], "exceeds the learned position table"),
    (["count", "--preset", "gpt2", "--convention", "flop"], "--convention 'flop': unknown"),
    (["count", "--preset", "gpt2", "--mode", "infer"], "invalid choice: 'infer'"),
    (["count", "--preset", "gpt2", "--convention", "6nd", "--causal"], "causal=True applies to"),
    (["count", "--preset", "gpt2", "--batch", "two"], "invalid int value: 'two'"),
])
def test_flop_flags_bad_input(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_version_and_help():
    import planner

    res = subprocess.run([sys.executable, "-m", "planner", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"planner (scaling-planner) {planner.__version__}"
    res = subprocess.run([sys.executable, "-m", "planner", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for command in ("count", "validate", "hardware", "time", "calibrate", "plan", "frontier", "fit", "presets"):
        assert command in res.stdout


# ------------------------------------------------- first contact: correct answers (issue 10)
# The dense search's bases: the mixture-of-experts and latent-attention presets are planned by
# plan(moe=True) (issue 16), not as dense shapes.
@pytest.mark.parametrize("name", [n for n in __import__("models").presets.names()
                                  if not __import__("models").presets.get(n).is_moe
                                  and not __import__("models").presets.get(n).is_mla])
def test_every_preset_is_a_valid_base(name):
    """The search keeps the base's KV grouping valid for every preset: each rounded candidate is a
    valid config whose KV heads divide its query heads (GQA groups of 7 and 8, MQA included)."""
    from models import presets
    from planner.search import _candidates, _setup

    s, _ = _setup(law="chinchilla", base=name, convention="xla", hardware=None, chips=None, days=None, mfu=None,
                  dtype="bf16", head_dim=128, free_mlp_ratio=False, mlp_ratio=None,
                  aspect_ratio=(64.0, 192.0), n_layers=None, d_model=None)
    base = presets.get(name)
    for d, n_layers in ((128, 1), (1000, 8), (2300, 12), (8200, 64)):
        cands = _candidates(s, d, n_layers, s.mlp_ratio, multiple=128, head_dims=(64, 128), ff_multiple=128)
        assert cands, (name, d)
        for c in cands:
            kv = c.resolved_n_kv_heads
            assert c.n_heads % kv == 0
            if base.resolved_n_kv_heads == base.n_heads:
                assert kv == c.n_heads  # multi-head stays multi-head
            elif base.resolved_n_kv_heads == 1:
                assert kv == 1  # multi-query stays multi-query
            elif c.n_heads % s.kv_group == 0:
                assert c.n_heads // kv == s.kv_group  # the base's group where it divides


def test_plan_on_a_gqa_preset_and_with_set(cli):
    # Qwen2.5-0.5B: 14 heads in groups of 7 (Qwen2.5 config.json); failed before on "constraints"
    code, out, err = cli("plan", "--budget", "1e20", "--base", "qwen2.5-0.5b", "--json")
    assert code == 0, err
    c = json.loads(out)["config"]
    assert c["vocab_size"] == 151936 and c["n_heads"] % c["n_kv_heads"] == 0
    # A Llama-3-style plan: 128k vocabulary, 8k context, KV heads in groups of 4 (32 / 8)
    code, out, err = cli("plan", "--budget", "1e21", "--set", "vocab_size=128256", "--set", "seq_len=8192",
                         "--set", "n_kv_heads=8", "--json")
    assert code == 0, err
    data = json.loads(out)
    c = data["config"]
    assert (c["vocab_size"], c["seq_len"]) == (128256, 8192) and c["n_heads"] // c["n_kv_heads"] == 4
    assert data["flops"] <= 1e21 and data["notes"] == []  # the base's grouping is kept: nothing to note
    code, out, _ = cli("plan", "--budget", "1e20", "--base", "gpt2", "--set", "seq_len=512")
    assert code == 0 and "vocab=50257 seq=512 gelu/layernorm/learned/tied" in out


def test_plan_prints_what_the_figures_depend_on(cli):
    code, out, err = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "1", "--mfu", "0.4", "--json")
    assert code == 0, err
    data = json.loads(out)
    hw = data["hardware"]
    assert hw["target"] == "h100-sxm" and hw["chips"] == 8 and hw["dtype"] == "bf16" and hw["mfu_given"] == 0.4
    assert data["micro_batch"] == hw["micro_batch"] >= 1
    from models import Layout

    lay = Layout.parse(data["layout"])
    assert lay.chips == 8 and hw["sequences_per_replica"] * lay.data_parallel == data["batch_size"]
    assert hw["accumulation_steps"] * hw["micro_batch"] == hw["sequences_per_replica"]
    assert hw["max_memory_per_chip"] == 80e9
    assert f"fsdp={lay.fsdp}" in hw["memory_assumes"] and f"remat={lay.remat}" in hw["memory_assumes"]
    code, out, _ = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "1", "--mfu", "0.4")
    assert f"micro-batches of {hw['micro_batch']} ({hw['accumulation_steps']} accumulation steps)" in out
    assert "step time from the given MFU" in out


def test_plan_notes_results_at_a_bound_or_unusual(cli):
    import planner

    # past the documented bounds: 1e35 FLOPs rounds inside them, and says it sits at them
    code, out, _ = cli("plan", "--budget", "1e35", "--json")
    data = json.loads(out)
    assert code == 0 and data["config"]["d_model"] <= 2**17 and data["config"]["n_layers"] <= 1024
    assert any("upper bound 131072" in n for n in data["notes"])
    # an MFU of 1e-9 buys less than one useful step: the loss is worse than a uniform guess
    code, out, _ = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "1", "--mfu", "1e-9")
    assert code == 0 and "note: predicted loss" in out and "above ln(vocab_size) = 10.373" in out
    # 29 heads (d_model 3712 = 29 x 128)
    p = planner.plan(1e21, d_model=3712, head_dims=(128,))
    assert p.config.n_heads == 29 and any("n_heads=29 is odd" in n and "1 or 29 chips" in n for n in p.notes)
    # memory within a hair of the limit
    first = planner.plan(hardware="h100", chips=8, days=1, mfu=0.4)
    tight = planner.plan(hardware="h100", chips=8, days=1, mfu=0.4, max_memory_per_chip=first.memory_per_chip * 1.001)
    assert tight.memory_per_chip <= first.memory_per_chip * 1.001
    assert any("within 3% of the limit" in n for n in tight.notes)
    assert not any("within 3%" in n for n in first.notes) or first.memory_per_chip > 0.97 * 80e9


def test_time_defaults_and_header(cli, tmp_path):
    code, out, err = cli("time", "--preset", "tiny-gpt", "--hardware", "h100", "--chips", "8")
    assert code == 0, err
    assert "tiny-gpt on 8 x h100-sxm, bf16, global batch 8 x 16 tokens" in out  # one sequence per chip
    code, out, _ = cli("time", "--preset", "tiny-gpt", "--set", "n_layers=4", "--hardware", "h100")
    assert code == 0 and out.startswith("tiny-gpt with n_layers=4 on 1 x h100-sxm")


def test_calibrated_spec_serves_time_and_plan(cli, tmp_path):
    path = tmp_path / "me.toml"
    code, out, err = cli("calibrate", "--seconds", "0.2", "--out", str(path))
    assert code == 0, err
    import hardware

    spec = hardware.get(str(path))
    assert set(spec.peak_flops) == {"fp32", "bf16"}
    code, out, err = cli("time", "--preset", "tiny-gpt", "--hardware", str(path))  # bf16 by default
    assert code == 0, err
    # a spec without bf16: the error names the flag that picks the dtype it has
    hardware.save(__import__("dataclasses").replace(spec, peak_flops={"fp32": spec.peak_flops["fp32"]}), path)
    code, out, err = cli("time", "--preset", "tiny-gpt", "--hardware", str(path))
    assert code == 2 and "no 'bf16' peak (it lists fp32); pass --dtype fp32" in err


def test_time_json_is_standard_json(cli, tmp_path):
    import dataclasses

    import hardware

    path = tmp_path / "slow.toml"  # a peak so small that the step takes longer than a float holds
    hardware.save(dataclasses.replace(hardware.get("h100"), peak_flops={"bf16": 1e-300}), path)
    code, out, err = cli("time", "--preset", "gpt2", "--hardware", str(path), "--json")
    assert code == 0, err

    def refuse(name):
        raise AssertionError(f"{name} in --json output")

    data = json.loads(out, parse_constant=refuse)
    assert data["step_time_s"] is None and data["tokens_per_s"] == 0
