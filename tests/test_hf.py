"""TransformerConfig.from_hf / to_hf: the shipped config.json of public checkpoints
(tests/data/hf/, sources in its README) give exactly their published parameter counts, equal
to the Flax model's own count; bad input is named; the round trip is exact."""

import dataclasses
import json
import pathlib

import jax
import pytest
from flax import nnx

from models import TransformerConfig, abstract_model, presets
from models.hf import FAMILIES, read_hf, to_hf
from planner import count_params

DATA = pathlib.Path(__file__).parent / "data" / "hf"
PUBLISHED = json.loads((DATA / "published.json").read_text())
NAMES = sorted(PUBLISHED)


def flax_count(cfg):
    # layers under nnx.scan: the same parameters (tests/test_params.py), 40x faster to build
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract_model(cfg, scan_layers=True), nnx.Param)))


def test_data_covers_every_family():
    # the mixture-of-experts families' config.json ship in the package (models/data/hf/,
    # tests/test_moe.py checks them)
    shipped = pathlib.Path(__file__).resolve().parents[1] / "models" / "data" / "hf"
    families = {read_hf(p).family for p in [DATA / f"{n}.json" for n in NAMES] + sorted(shipped.glob("*.json"))}
    assert families == set(FAMILIES)
    assert len(NAMES) >= 15
    assert sum(PUBLISHED[n]["published_params"] is not None for n in NAMES) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_counts(name):
    path = DATA / f"{name}.json"
    from_path = TransformerConfig.from_hf(path)
    from_str = TransformerConfig.from_hf(str(path))
    from_dict = TransformerConfig.from_hf(json.loads(path.read_text()))
    assert from_path == from_str == from_dict
    ours = count_params(from_path).total
    assert ours == flax_count(from_path)
    published = PUBLISHED[name]["published_params"]
    if published is not None:
        assert ours == published, (name, ours, published)


PRESET_OF = {
    "gpt2": "gpt2", "pythia-160m": "pythia-160m", "gpt-j-6b": "gpt-j-6b", "llama-2-7b": "llama-2-7b",
    "tinyllama-1.1b": "tinyllama-1.1b", "llama-3.2-1b": "llama-3.2-1b", "qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen3-0.6b": "qwen3-0.6b", "gemma-2-2b": "gemma-2-2b",
    "gemma-3-1b-it": "gemma-3-1b", "phi-3-mini-4k-instruct": "phi-3-mini-4k", "olmo-2-1124-7b": "olmo-2-7b",
    "falcon-7b": "falcon-7b", "starcoder2-3b": "starcoder2-3b", "minitron-4b-base": "minitron-4b",
}


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_presets_equal_their_config_json(name):
    assert presets.get(PRESET_OF[name]) == TransformerConfig.from_hf(DATA / f"{name}.json")


def test_older_presets_differ_only_by_the_new_options():
    # The mistral-7b and gemma-2b presets predate sliding windows and (1 + scale) norms (neither
    # changes a parameter count); their config.json has them.
    hf = TransformerConfig.from_hf(DATA / "mistral-7b-v0.1.json")
    assert hf == presets.get("mistral-7b", sliding_window=4096)
    hf = TransformerConfig.from_hf(DATA / "gemma-2b.json")
    assert hf == presets.get("gemma-2b", norm_offset=True)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    cfg = TransformerConfig.from_hf(DATA / f"{name}.json")
    out = cfg.to_hf()
    assert TransformerConfig.from_hf(out) == cfg
    assert TransformerConfig.from_hf(json.loads(json.dumps(out))) == cfg  # survives JSON


def test_round_trip_into_a_named_family_and_refusal():
    cfg = presets.get("llama-2-7b")
    assert to_hf(cfg, "mistral")["model_type"] == "mistral"
    with pytest.raises(ValueError, match="gpt2 config.json: activation_function='silu'"):
        to_hf(cfg, "gpt2")
    with pytest.raises(ValueError, match="family='bert': unknown"):
        to_hf(cfg, "bert")
    odd = cfg.replace(norm_placement="post", parallel_residual=False, embed_scale=True)
    with pytest.raises(ValueError, match="no Hugging Face family states this config exactly"):
        odd.to_hf()


def test_mapping_report_lists_ignored_fields():
    imp = read_hf(DATA / "gemma-2-2b.json")
    assert imp.family == "gemma2"
    assert {"query_pre_attn_scalar", "torch_dtype", "hidden_act", "initializer_range"} <= set(imp.ignored)
    assert imp.mapped["attn_softcap"] == "attn_logit_softcapping"
    assert imp.mapped["d_model"] == "hidden_size"
    d = imp.to_dict()
    assert d["config"]["sliding_window"] == 4096 and "ignored" in d


def _base():
    return json.loads((DATA / "llama-2-7b.json").read_text())


@pytest.mark.parametrize(("change", "needle"), [
    ({"model_type": "bert"}, "model_type='bert': unknown family"),
    ({"model_type": None, "architectures": ["BertModel"]}, "no model_type and no known architectures"),
    ({"num_experts": 8}, "field(s) num_experts not understood"),
    ({"hidden_act": "relu"}, "hidden_act='relu': activation not supported"),
    ({"hidden_size": "4096"}, "hidden_size='4096' must be an integer"),
    ({"num_key_value_heads": 5}, "n_kv_heads=5: must divide n_heads=32"),
])
def test_bad_configs_are_named(change, needle):
    data = _base() | change
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError) as err:
        TransformerConfig.from_hf(data)
    assert needle in str(err.value)


def test_missing_required_field_and_bad_files(tmp_path):
    data = _base()
    del data["intermediate_size"]
    with pytest.raises(ValueError, match="llama config.json: required field 'intermediate_size' is missing"):
        TransformerConfig.from_hf(data)
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama",')
    with pytest.raises(ValueError, match="is not valid JSON"):
        TransformerConfig.from_hf(bad)
    with pytest.raises(ValueError, match="cannot read the config file"):
        TransformerConfig.from_hf(tmp_path / "absent.json")
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        TransformerConfig.from_hf(bad)
    with pytest.raises(ValueError, match="needs a path to a config.json or a dict"):
        TransformerConfig.from_hf(42)


@pytest.mark.parametrize(("name", "change", "needle"), [
    ("falcon-7b", {"alibi": True}, "ALiBi"),
    ("qwen2.5-0.5b", {"use_sliding_window": True}, "use_sliding_window=true"),
    ("gpt-j-6b", {"rotary": False}, "rotary=False"),
    ("starcoder2-3b", {"mlp_type": "moe"}, "mlp_type='moe'"),
    ("gemma-3-1b-it", {"layer_types": ["sliding_attention", "full_attention"] * 13}, None),
    ("gemma-3-1b-it", {"layer_types": ["full_attention"] + ["sliding_attention"] * 25}, "only every-k-th"),
])
def test_family_specific_fields(name, change, needle):
    data = json.loads((DATA / f"{name}.json").read_text()) | change
    if needle is None:  # a pattern we can state: every 2nd layer global
        assert TransformerConfig.from_hf(data).global_every == 2
        return
    with pytest.raises(ValueError, match=needle):
        TransformerConfig.from_hf(data)


def test_gemma_default_activation_ignores_hidden_act():
    # modeling_gemma uses hidden_activation, the tanh GELU when it is null; hidden_act is not read.
    imp = read_hf(DATA / "gemma-2b.json")
    assert imp.config.mlp == "geglu" and "hidden_act" in imp.ignored


def test_every_family_maps_its_own_writer():
    # Each family's writer output reads back as that family.
    for name in NAMES:
        cfg = TransformerConfig.from_hf(DATA / f"{name}.json")
        fam = read_hf(DATA / f"{name}.json").family
        assert read_hf(to_hf(cfg, fam)).config == cfg, name


# ----------------------------------------------------------------------------- CLI
def test_cli_count_hf_shows_family_mapping_and_ignored(cli):
    code, out, err = cli("count", "--hf", str(DATA / "olmo-2-1124-7b.json"))
    assert code == 0 and not err
    assert "(olmo2): 7.30 B parameters (7,298,617,344)" in out
    assert "recognised family: olmo2" in out and "norm_placement=post qk_norm=full" in out
    assert "rms_norm_eps" in out and "ignored (" in out and "pad_token_id" in out
    code, out, _ = cli("count", "--hf", str(DATA / "gemma-2-2b.json"), "--json", "--set", "n_layers=2")
    data = json.loads(out)
    assert code == 0 and data["hf"]["family"] == "gemma2" and data["config"]["n_layers"] == 2
    assert "query_pre_attn_scalar" in data["hf"]["ignored"]
    assert data["hf"]["mapped"]["final_softcap"] == "final_logit_softcapping"


def test_cli_block_skip_beside_the_materialised_count(cli):
    code, out, _ = cli("count", "--hf", str(DATA / "mistral-7b-v0.1.json"), "--seq", "16384", "--block-skip", "128")
    assert code == 0 and "window 4096 on 32 of 32 layers" in out
    assert "materialised s x s (what XLA counts)" in out and "128 x 128 tiles" in out
    assert "exact visible band" in out


@pytest.mark.parametrize(("content", "needle"), [
    ('{"model_type": "bert"}', "model_type='bert': unknown family"),
    ('{"model_type": "llama",', "is not valid JSON"),
    ('{"model_type": "llama", "vocab_size": 10}', "required field 'hidden_size' is missing"),
])
def test_cli_bad_hf_files(cli, tmp_path, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    for cmd in (["count"], ["validate"], ["time", "--hardware", "h100"]):
        code, out, err = cli(*cmd, "--hf", str(path))
        assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and needle in err
    code, _, err = cli("count", "--hf", str(DATA / "gpt2.json"), "--preset", "gpt2")
    assert code == 2 and "not both" in err


def test_cli_validate_and_plan_from_hf(cli, tmp_path):
    data = json.loads((DATA / "qwen3-0.6b.json").read_text()) | {"num_hidden_layers": 1, "vocab_size": 256}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    code, out, _ = cli("validate", "--hf", str(path), "--seq", "16")
    assert code == 0 and "verdict: OK" in out and "(qwen3)" in out
    code, out, _ = cli("plan", "--budget", "1e20", "--base-hf", str(DATA / "llama-3.2-1b.json"), "--json")
    plan = json.loads(out)
    assert code == 0 and plan["config"]["vocab_size"] == 128256 and plan["config"]["tied_embeddings"]


def test_cli_arch_grid(cli, monkeypatch):
    from planner import validation as vmod

    one = vmod.architecture_grid()[:1]
    monkeypatch.setattr(vmod, "architecture_grid", lambda: one)
    code, out, _ = cli("validate", "--arch-grid", "--mode", "forward")
    assert code == 0 and "gptj" in out and "0 outside tolerance" in out
