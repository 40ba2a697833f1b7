"""Presets: each public one reproduces its publisher's parameter count exactly, and the Flax model
built from it (abstractly, no weights allocated) has exactly the parameters count_params says."""

import jax
import pytest
from flax import nnx

from models import abstract_model, presets
from planner import count_params


def model_params(cfg, scan_layers=False) -> int:
    model = abstract_model(cfg, scan_layers=scan_layers)
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", presets.public_names())
def test_published_parameter_count(name):
    # Published numbers: Hugging Face transformers model.num_parameters() for each model's
    # released config (sources in models/presets.py). Gemma's non-embedding count also equals
    # Gemma Team 2024, Table 2 (1,981,884,416).
    # DeepSeek-V3's "671B" is rounded (published_rounding; tests/test_moe_params.py has the exact
    # check against its checkpoint's tensor count).
    p = presets.info(name)
    assert abs(count_params(p.config).total - p.published_params) <= p.published_rounding


def test_gemma_non_embedding_matches_paper():
    # Gemma Team 2024, "Gemma: Open Models Based on Gemini Research and Technology", Table 2.
    assert count_params(presets.get("gemma-2b")).non_embedding == 1_981_884_416


def test_llama_7b_non_embedding_is_kaplan_like():
    # Kaplan et al. 2020: N ~ 12 * n_layers * d_model^2 for a GPT MLP (4x); Llama's SwiGLU with
    # d_ff = 11008 has 3 * 11008 / 4096 = 8.06 d_model^2 per layer in the MLP instead of 8.
    n = count_params(presets.get("llama-2-7b")).non_embedding
    assert 0.99 < n / (32 * 4096**2 * (4 + 3 * 11008 / 4096)) < 1.01


@pytest.mark.parametrize("name", presets.names())
def test_flax_model_matches_count(name):
    cfg = presets.get(name)
    assert model_params(cfg) == count_params(cfg).total


@pytest.mark.parametrize("name", ["gpt2", "mistral-7b", "gemma-2b", "tiny-llama"])
def test_scanned_model_has_same_parameters(name):
    cfg = presets.get(name)
    assert model_params(cfg, scan_layers=True) == count_params(cfg).total


def test_overrides_and_unknown_names():
    assert presets.get("gpt2", n_layers=6).n_layers == 6
    assert presets.get("gpt2").n_layers == 12  # presets are not mutated
    with pytest.raises(ValueError, match="unknown preset 'gpt-3'; valid: gpt2, gpt2-medium"):
        presets.get("gpt-3")
    with pytest.raises(ValueError, match="unknown config field"):
        presets.get("gpt2", layers=6)
    with pytest.raises(ValueError, match="n_kv_heads=5"):
        presets.get("llama-2-7b", n_kv_heads=5)


def test_required_presets_exist():
    required = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-2-7b", "llama-2-13b",
                "mistral-7b", "tinyllama-1.1b", "qwen2.5-0.5b", "gemma-2b"}
    assert required <= set(presets.public_names())
    for name in presets.names():
        assert presets.info(name).source
