"""Bad input never hurts: a hypothesis sweep of the CLI and the public functions with random
flags, values and files (negative, zero, NaN, inf, huge, wrong types, unknown names, malformed
TOML and CSV). The CLI must answer one line `error: ...` with exit status 2 (or succeed); the
library must raise ValueError. Never a traceback, a hang or another exception type."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardware
import planner
from models import TransformerConfig, field_names, presets
from planner.cli import main
from tests.strategies import examples

NASTY = ["0", "-1", "-0", "nan", "inf", "-inf", "1e400", "1e300", "99999999999999999999999", "abc", "",
         "1.5", "true", "none", "2", "8", "1e21", "1e10", "0.5", "3:1", "1:0", "-3:5", "64:192", "1e-300",
         "☃", "--", "'", "0x10", "1_000"]
NAMES = ["tiny-gpt", "tiny-llama", "tiny-gemma", "gpt2", "llama-2-7b", "nope", "h100", "tpu-v4", "mi300x",
         "xla", "all", "6nd", "palm", "forward", "train", "backward", "bf16", "fp8", "fp32", "epoch",
         "chinchilla", "lowered", "compiled"]
value = st.one_of(st.sampled_from(NASTY + NAMES), st.text(max_size=6))
set_item = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(list(field_names()) + ["bogus", ""]),
                     st.sampled_from(NASTY + ["swiglu", "rmsnorm", "rope", "relu", "false"]))

FLAGS = {
    "count": ["--preset", "--set", "--json", "--flops", "--mode", "--convention", "--batch", "--seq", "--causal"],
    "validate": ["--preset", "--set", "--json", "--mode", "--stage", "--batch", "--seq", "--scan"],
    "time": ["--preset", "--set", "--json", "--hardware", "--chips", "--batch", "--seq", "--dtype",
             "--param-dtype", "--remat", "--shard", "--layout"],
    "plan": ["--budget", "--law", "--base", "--convention", "--hardware", "--chips", "--days", "--mfu", "--dtype",
             "--batch-tokens", "--aspect", "--n-layers", "--d-model", "--max-memory", "--json",
             "--free-mlp-ratio", "--law-file", "--layout"],
    "frontier": ["--from", "--to", "--points", "--law", "--aspect", "--json", "--convention"],
    "fit": ["--delta", "--bootstrap", "--exclude-highest", "--params", "--json"],
    "hardware": ["--sources", "--json"],
    "presets": ["--json"],
    "calibrate": ["--seconds", "--json"],
    "bogus": ["--x"],
}
BOOL_FLAGS = {"--json", "--flops", "--causal", "--scan", "--remat", "--shard", "--free-mlp-ratio", "--sources"}
VALIDATE_PRESETS = ["tiny-gpt", "tiny-llama", "tiny-gemma", "gpt2", "nope", ""]  # bigger ones lower slowly


@st.composite
def argvs(draw):
    cmd = draw(st.sampled_from(sorted(FLAGS)))
    argv = [cmd]
    if cmd == "fit":
        argv.append(draw(st.sampled_from(["/nonexistent.csv", "CSV", "", "-1"])))
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.sampled_from(FLAGS[cmd] + ["--help-me", "-x"]))
        argv.append(flag)
        if flag in BOOL_FLAGS:
            continue
        if flag == "--set":
            argv.append(draw(set_item))
        elif flag == "--preset" and cmd == "validate":
            argv.append(draw(st.sampled_from(VALIDATE_PRESETS)))
        elif flag == "--seconds":
            argv.append(draw(st.sampled_from(["0", "-1", "nan", "inf", "1e9", "abc", "0.05"])))
        elif flag == "--hardware":
            argv.append(draw(st.sampled_from(["h100", "tpu-v5e", "nope", "TOML", "/nonexistent.toml", ""])))
        else:
            argv.append(draw(value))
    if cmd == "validate" and "--preset" not in argv and "--set" not in argv and draw(st.booleans()):
        argv += ["--preset", "tiny-gpt"]
    return argv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    bad_csv = d / "runs.csv"
    bad_csv.write_text("N,D,loss\n1e8,2e9,3.1\n-5,2e9,nan\nabc,,\n")
    bad_toml = d / "chip.toml"
    bad_toml.write_text('name = "x"\nhbm_bytes = -1\n[peak_flops]\nbf16 = "fast"\n')
    return str(bad_csv), str(bad_toml)


@settings(max_examples=examples(160, 320), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argvs())
def test_cli_never_tracebacks(argv, files, capsys):
    argv = [files[0] if a == "CSV" else files[1] if a == "TOML" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # only --help / --version exit by themselves, with status 0
        assert exit_.code == 0, argv
        return
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), argv
    if code == 1:
        assert argv[0] == "validate" and "OUTSIDE TOLERANCE" in out or '"ok": false' in out
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert not out, argv
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- the library
junk = st.one_of(st.sampled_from([0, -1, -0.0, 1.5, math.nan, math.inf, -math.inf, 10**40, "", "x", None, True,
                                  [], {}, (1,), np.int64(3), np.float64(math.nan), 1e300]), st.text(max_size=4))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len", "n_kv_heads",
                        "head_dim", "mlp", "norm", "position", "bias", "qkv_bias", "tied_embeddings",
                        "embed_scale", "rope_theta", "norm_eps"]), junk)
def test_config_rejects_junk_with_valueerror(field, bad):
    base = dict(vocab_size=97, d_model=48, n_layers=2, n_heads=4, d_ff=96, seq_len=16)
    try:
        cfg = TransformerConfig(**{**base, field: bad})
    except ValueError:
        return
    # accepted: then it must be a sane config that every closed form handles
    assert planner.count_params(cfg).total > 0


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["batch_size", "seq_len", "mode", "convention", "causal"]), junk)
def test_count_flops_rejects_junk(arg, bad):
    cfg = presets.get("tiny-llama")
    try:
        c = planner.count_flops(cfg, **{arg: bad})
    except ValueError:
        return
    assert c.total > 0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["budget_flops", "law", "base", "convention", "aspect_ratio", "n_layers", "d_model",
                        "head_dims", "batch_tokens", "max_memory_per_chip", "mlp_ratio", "inference_tokens",
                        "d_model_multiple"]), junk)
def test_plan_rejects_junk(arg, bad):
    kwargs = {"budget_flops": 1e20, arg: bad}
    try:
        p = planner.plan(**kwargs)
    except ValueError:
        return
    assert math.isfinite(p.loss) and p.flops <= p.budget


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["hardware", "chips", "batch_size", "seq_len", "dtype", "param_dtype"]), junk)
def test_roofline_and_memory_reject_junk(arg, bad):
    kwargs = dict(hardware="h100", chips=1, batch_size=2, seq_len=64, dtype="bf16", param_dtype="fp32")
    kwargs[arg] = bad
    try:
        r = planner.roofline(presets.get("tiny-gpt"), **kwargs)
    except ValueError:
        return
    assert r.step_time > 0
    mem_kwargs = {k: v for k, v in kwargs.items() if k in ("batch_size", "seq_len", "chips", "dtype", "param_dtype")}
    try:
        planner.estimate_memory(presets.get("tiny-gpt"), **mem_kwargs)
    except ValueError:
        pass


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_malformed_spec_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("toml") / "chip.toml"
    path.write_text(text)
    with pytest.raises(ValueError):
        hardware.get(str(path))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from(["1e8", "2e9", "3.1", "-1", "nan", "inf", "", "x", "0"]), min_size=0,
                              max_size=4), max_size=8),
       header=st.sampled_from([["N", "D", "loss"], ["params", "tokens", "L"], ["Model Size", "Training FLOP", "loss"],
                        ["n", "loss"], []]))
def test_malformed_runs_csv(tmp_path_factory, rows, header):
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in rows)]))
    try:
        n, d, loss = planner.load_runs_csv(str(path))
    except ValueError:
        return
    assert len(n) >= 5 and np.all(n > 0) and np.all(d > 0) and np.all(np.isfinite(loss))


@settings(max_examples=40, deadline=None)
@given(st.lists(junk, min_size=0, max_size=7))
def test_fit_rejects_junk(values):
    try:
        planner.fit_scaling_law(values, values, values)
    except ValueError:
        return


@pytest.mark.parametrize(("argv", "needle"), [
    # each would have run for hours or exhausted memory before it was capped
    (["frontier", "--points", "100000000"], "--points 100000000: need 2 to 1000"),
    (["fit", "--dataset", "chinchilla-epoch", "--bootstrap", "100000000"], "bootstrap=100000000: at most 10000"),
    (["fit", "--dataset", "chinchilla-epoch", "--delta", "1e300"], "delta=1e+300 must be in (0, 1]"),
    (["calibrate", "--seconds", "1e9"], "seconds must be a number in (0, 600]"),
    (["plan", "--budget", "1e300"], "above the planner's range"),
    (["plan", "--hardware", "h100", "--chips", "8", "--days", "1e9"], "days=1000000000.0"),
])
def test_no_hangs(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_micro_batch_search_is_fast_for_huge_batches():
    from planner.search import _divisors

    assert _divisors(12) == [1, 2, 3, 4, 6, 12] and _divisors(1) == [1] and _divisors(49) == [1, 7, 49]
    assert len(_divisors(488_281_250_000)) == 80  # 2^4 x 5^15: found by trial division to sqrt


# ------------------------------------------------- first contact: each case a new user hit (issue 10)
def _one_error_line(code, out, err, needle):
    assert code == 2, (code, err)
    assert not out, out  # refused before any work: nothing was printed
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(("argv", "needle"), [
    (["plan", "--budget", "1e20", "--plot", "/nonexistent/x.png"], "cannot write /nonexistent/x.png: no such folder"),
    (["frontier", "--points", "2", "--plot", "/nonexistent/x.png"], "cannot write /nonexistent/x.png"),
    (["time", "--preset", "tiny-gpt", "--hardware", "h100", "--plot", "/nonexistent/x.png"],
     "cannot write /nonexistent/x.png"),
    (["plan", "--budget", "1e20", "--plot", "DIR"], "it is a directory"),
    (["fit", "--dataset", "chinchilla-epoch", "--out", "/nonexistent/law.json"], "cannot write /nonexistent/law.json"),
    (["fit", "--dataset", "chinchilla-epoch", "--out", "DIR"], "it is a directory"),
    (["calibrate", "--out", "/nonexistent/me.toml"], "cannot write /nonexistent/me.toml: no such folder"),
    (["calibrate", "--out", ""], "empty path"),
])
def test_output_paths_are_checked_before_any_work(cli, tmp_path, argv, needle):
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    _one_error_line(*cli(*argv), needle.replace("DIR", str(tmp_path)))


def test_plot_format_is_checked_before_any_work(cli, tmp_path):
    code, out, err = cli("plan", "--budget", "1e20", "--plot", str(tmp_path / "plan.xyz"))
    try:
        import matplotlib  # noqa: F401

        _one_error_line(code, out, err, "cannot write 'xyz'")
    except ImportError:  # the plot extra is not installed: that is said first
        _one_error_line(code, out, err, "pip install 'scaling-planner[plot]'")


@pytest.mark.parametrize(("argv", "needle"), [
    # options a FLOP budget would have silently ignored
    (["plan", "--budget", "1e20", "--max-memory", "1e9"], "--max-memory: only a hardware budget"),
    (["plan", "--budget", "1e20", "--dtype", "fp32"], "--dtype: only a hardware budget"),
    (["plan", "--budget", "1e20", "--mfu", "0.5", "--max-memory", "1e9"], "--max-memory, --mfu"),
    (["frontier", "--points", "2", "--max-memory", "1e9"], "--max-memory: only a hardware budget"),
    (["plan", "--budget", "1e20", "--law", "epoch", "--law-file", "law.json"], "give one law, not both"),
    (["fit", "--dataset", "chinchilla-epoch", "runs.csv"], "not both"),
    (["fit"], "give a CSV file or --dataset NAME (one of: chinchilla-epoch), not neither"),
    (["fit", "--dataset", "chinchilla"], "shipped data sets: chinchilla-epoch"),
    # --set on the base: fields the search chooses are refused, not replaced silently
    (["plan", "--budget", "1e20", "--set", "d_model=4096"], "--set d_model: the plan searches it (--d-model D"),
    (["plan", "--budget", "1e20", "--set", "head_dim=256"], "the plan picks head_dim 64 or 128"),
    (["plan", "--budget", "1e20", "--set", "n_kv_heads=5"], "n_kv_heads=5"),
    # a negative number is a value, not a flag
    (["plan", "--budget", "-1e21"], "budget_flops=-1e+21: must be a positive finite number"),
    (["frontier", "--from", "-1e18"], "--from -1e+18 --to 1e+25: need 0 < from < to"),
    (["plan", "--budget", "-inf"], "budget_flops=-inf"),
])
def test_conflicting_or_ignored_options_are_refused(cli, argv, needle):
    _one_error_line(*cli(*argv), needle)


def test_undecodable_files_are_named(cli, tmp_path):
    bad = tmp_path / "latin1.bin"
    bad.write_bytes(b"N,D,loss\n\xff\xfe\x00\n")
    for argv in (["fit", str(bad)], ["time", "--preset", "tiny-gpt", "--hardware", str(bad)],
                 ["plan", "--budget", "1e20", "--law-file", str(bad)],
                 ["plan", "--hardware", str(bad), "--chips", "1", "--days", "1"]):
        code, out, err = cli(*argv)
        _one_error_line(code, out, err, str(bad))
        assert "utf-8" in err.lower(), err


def _csv(tmp_path, rows, header="params,tokens,loss"):
    path = tmp_path / "runs.csv"
    path.write_text("\n".join([header, *(",".join(f"{v:.6g}" for v in r) for r in rows)]) + "\n")
    return str(path)


def test_fit_on_unidentifiable_runs_says_so_and_what_would_identify_it(cli, tmp_path):
    law = planner.get_law("chinchilla")
    sizes = [1e8, 2e8, 4e8, 8e8, 1.6e9]
    fixed_ratio = [(n, 20 * n, law.loss(n, 20 * n)) for n in sizes]  # 20 tokens per parameter, as Chinchilla
    code, out, err = cli("fit", _csv(tmp_path, fixed_ratio))
    _one_error_line(code, out, err, "cannot identify the law")
    assert "fixed tokens-per-parameter ratio" in err and "several model sizes, each trained on several" in err
    # params, flops, loss with C = 6ND at that ratio: the same line
    flops = [(n, 6 * n * 20 * n, loss) for n, _, loss in fixed_ratio]
    _one_error_line(*cli("fit", _csv(tmp_path, flops, "params,flops,loss")), "fixed tokens-per-parameter ratio")
    one_size = [(4e8, d, law.loss(4e8, d)) for d in (1e9, 2e9, 4e9, 8e9, 1.6e10)]
    _one_error_line(*cli("fit", _csv(tmp_path, one_size)), "about the same size")
    with pytest.raises(ValueError, match="D tied to N"):
        planner.fit_scaling_law(sizes, [n**1.5 for n in sizes], [3.0, 2.9, 2.8, 2.7, 2.6])
    # an isoFLOP-like grid of the same law identifies it (the check does not refuse good data)
    grid = [(n, d) for n in sizes for d in (2e9, 8e9, 3.2e10)]
    fit = planner.fit_scaling_law([n for n, _ in grid], [d for _, d in grid],
                                  [law.loss(n, d) for n, d in grid], starts=planner.laws.DEFAULT_GRID[::16])
    assert fit.law.alpha == pytest.approx(law.alpha, rel=0.05)


def test_fit_refuses_values_near_1e300(cli, tmp_path):
    rows = [(1e300 * k, 1e300, 2.0 + k / 10) for k in range(1, 6)]
    _one_error_line(*cli("fit", _csv(tmp_path, rows)), "is above 1e+18, outside any real run")
    with pytest.raises(ValueError, match=r"D\[0\] = 1e\+300 is above 1e\+20"):
        planner.fit_scaling_law([1e9] * 5, [1e300] * 5, [2.0] * 5)
    with pytest.raises(ValueError, match=r"loss\[1\] = 1000.0 is above 100"):
        planner.fit_scaling_law([1e9, 2e9, 3e9, 4e9, 5e9], [1e10] * 5, [2.0, 1e3, 2.0, 2.0, 2.0])


def test_plan_library_refuses_what_the_cli_refuses():
    with pytest.raises(ValueError, match="give one budget, not both"):
        planner.plan(1e21, hardware="h100", chips=8, days=1)
    with pytest.raises(ValueError, match="max_memory_per_chip=1000000000.0: applies to a hardware budget"):
        planner.plan(1e20, max_memory_per_chip=1e9)
    with pytest.raises(ValueError, match="pass \\[None\\]"):
        planner.frontier([1e20], hardware="h100", chips=8, days=1)


def test_extreme_spec_values_are_refused_clearly(tmp_path):
    spec = hardware.get("h100")
    path = tmp_path / "fast.toml"
    hardware.save(dataclasses.replace(spec, peak_flops={"bf16": 1e300}), path)
    with pytest.raises(ValueError, match=r"peak_flops.bf16=1e\+300 is outside \[1, 1e\+22\]"):
        planner.plan(hardware=str(path), chips=8, days=1)


def test_library_type_errors_say_what_to_pass():
    with pytest.raises(ValueError, match=r"expected a models.TransformerConfig; for the preset, pass "
                                         r"models.presets.get\('gpt2'\)"):
        planner.count_params("gpt2")
    with pytest.raises(ValueError, match="presets.get"):
        planner.count_flops("gpt2")
    with pytest.raises(ValueError, match="expected a models.TransformerConfig"):
        planner.estimate_memory({"d_model": 1})
    cfg = presets.get("tiny-llama")
    for kwargs in ({"batch_size": -1}, {"batch_size": 0}, {"seq_len": -5}, {"batch_size": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            planner.kv_cache_bytes(cfg, **kwargs)
    # the count it gives otherwise: 2 (K and V) x layers x kv heads x head_dim x tokens x 2 bytes
    assert planner.kv_cache_bytes(cfg, batch_size=3, seq_len=10) == 2 * 2 * 2 * 16 * 30 * 2


@pytest.mark.parametrize(("argv", "needle"), [
    # found by the sweep above: sizes past XLA's array dimensions overflowed inside jit
    (["validate", "--preset", "tiny-gpt", "--set", "vocab_size=99999999999999999999999"], "vocab_size=9999"),
    (["validate", "--preset", "tiny-gpt", "--batch", "99999999999999999999999"], "batch_size=9999"),
])
def test_validate_refuses_sizes_xla_cannot_lower(cli, argv, needle):
    _one_error_line(*cli(*argv), needle)
    assert "too large an array dimension" in cli(*argv)[2]
