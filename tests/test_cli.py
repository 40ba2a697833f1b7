"""The `planner` CLI: readable tables, JSON, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest





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
    # jax-cuda12-plugin (the gpu extra) logs two lines at `import jax` on a machine without CUDA;
    # they are the plugin's, not the CLI's: leave them out.
    own = "".join(line for line in res.stderr.splitlines(keepends=True)
                  if "absl::InitializeLog" not in line and "cudart_stub.cc" not in line)
    assert res.returncode == 2 and own.startswith("error: unknown preset") and "Traceback" not in own
    assert own.count("\n") == 1
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
