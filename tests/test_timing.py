"""Roofline time and memory per chip: arithmetic checks, differentiability, and the CLI."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hardware
from models import presets
from planner import count_flops, count_params
from planner.memory import estimate_memory, kv_cache_bytes
from planner.timing import roofline


def test_each_component_is_the_max_of_its_two_bounds():
    spec = hardware.get("h100")
    r = roofline(presets.get("gpt2"), hardware=spec, chips=1, batch_size=8, seq_len=1024)
    for name, c in r.components.items():
        expect = max(float(c.flops) / spec.peak("bf16"), float(c.bytes) / spec.hbm_bandwidth)
        assert c.time == pytest.approx(expect), name
        if c.time:
            assert c.bound == ("compute" if float(c.flops) / spec.peak("bf16") >= float(c.bytes) / spec.hbm_bandwidth
                               else "memory")
    assert r.comm_time == 0  # one chip: no all-reduce
    assert r.step_time == pytest.approx(sum(c.time for c in r.components.values()))
    # MFU = fma training FLOPs / (time x peak); at most 1 by construction
    fma = count_flops(presets.get("gpt2"), batch_size=8, seq_len=1024, mode="train", convention="fma").total
    assert r.mfu == pytest.approx(fma / (r.step_time * spec.peak("bf16")))
    assert 0 < r.mfu < 1
    # big matmuls are compute-bound on an H100; the materialised softmax is memory-bound
    assert r.components["mlp_in"].bound == "compute" and r.components["softmax"].bound == "memory"


def test_data_parallel_all_reduce():
    spec = hardware.get("h100")
    cfg = presets.get("llama-2-7b")
    one = roofline(cfg, hardware=spec, chips=1, batch_size=8, seq_len=2048)
    eight = roofline(cfg, hardware=spec, chips=8, batch_size=64, seq_len=2048)
    # same per-chip work; the ring all-reduce moves 2 (n-1)/n of the fp32 gradients over NVLink
    assert eight.compute_time == pytest.approx(one.compute_time)
    grads = count_params(cfg).total * 4
    assert eight.comm_time == pytest.approx(2 * 7 / 8 * grads / spec.interconnect_bandwidth)
    sixteen = roofline(cfg, hardware=spec, chips=16, batch_size=128, seq_len=2048)
    assert sixteen.comm_time == pytest.approx(2 * 15 / 16 * grads / spec.inter_node_bandwidth)  # leaves the node
    assert eight.tokens_per_s == pytest.approx(64 * 2048 / eight.step_time)


def test_faster_chip_is_faster_and_dtype_peaks_are_not_mixed():
    cfg = presets.get("gpt2")
    slow = roofline(cfg, hardware="a100-80gb", batch_size=8, seq_len=1024)
    fast = roofline(cfg, hardware="b200", batch_size=8, seq_len=1024)
    assert fast.step_time < slow.step_time
    with pytest.raises(ValueError, match="tpu-v5e has no 'fp8' peak"):
        roofline(cfg, hardware="tpu-v5e", dtype="fp8")
    with pytest.raises(ValueError, match="batch_size=5: must be divisible by chips=2"):
        roofline(cfg, hardware="h100", chips=2, batch_size=5)
    with pytest.raises(ValueError, match="chips=0"):
        roofline(cfg, hardware="h100", chips=0)


def test_roofline_is_differentiable_in_the_shape():
    cfg = presets.get("llama-2-7b", head_dim=128)

    def step(d):
        return roofline(dataclasses.replace(cfg, d_model=d), hardware="h100", chips=8, batch_size=16,
                        seq_len=4096).step_time

    g = jax.jit(jax.grad(step))(jnp.float32(4096.0))
    fd = (step(4097) - step(4095)) / 2
    np.testing.assert_allclose(float(g), fd, rtol=1e-3)
    times = jax.vmap(step)(jnp.array([2048.0, 4096.0, 8192.0]))
    assert bool(jnp.all(jnp.diff(times) > 0))


def test_memory_breakdown():
    cfg = presets.get("llama-2-7b")
    n = count_params(cfg).total
    m = estimate_memory(cfg, batch_size=1, seq_len=4096, dtype="bf16", param_dtype="bf16", master_weights=True,
                        hardware="h100")
    assert m.params == 2 * n and m.optimizer == 12 * n  # 2 moments + fp32 master copy
    assert m.grads == 2 * cfg.vocab_size * cfg.d_model  # the head's, in bf16: the rest fuse into their updates
    assert m.total == m.params + m.grads + m.optimizer + m.activations  # logits: inside activations
    assert m.activations == m.breakdown["saved_activations"] + max(m.transient, m.logits)
    assert m.hbm_bytes == 80e9 and m.fits == (m.total <= 80e9)
    remat = estimate_memory(cfg, batch_size=1, seq_len=4096, dtype="bf16", remat=True)
    assert remat.activations < m.activations / 10
    # data parallel splits the batch, not the replicated state
    a = estimate_memory(cfg, batch_size=8, seq_len=1024, chips=8)
    b = estimate_memory(cfg, batch_size=1, seq_len=1024, chips=1)
    assert float(a.total) == pytest.approx(float(b.total))
    with pytest.raises(ValueError, match="dtype='int4': unknown dtype"):
        estimate_memory(cfg, dtype="int4")


def test_kv_cache_llama_2_7b():
    # Llama-2-7B, bf16: 2 (K, V) x 32 layers x 32 heads x 128 x 2 bytes = 512 KiB per token
    # (NVIDIA technical blog "Mastering LLM Techniques: Inference Optimization", 2023: ~0.5 MB per token).
    assert kv_cache_bytes(presets.get("llama-2-7b"), seq_len=1) == 524288
    # Mistral's GQA (8 KV heads) keeps a quarter of that.
    assert kv_cache_bytes(presets.get("mistral-7b"), seq_len=1) == 524288 // 4




def test_cli_hardware_and_time(cli):
    code, out, _ = cli("hardware")
    assert code == 0 and "tpu-v5p" in out and "989.00 TFLOP/s" in out
    code, out, _ = cli("hardware", "--sources")
    assert code == 0 and "scaling-book" in out
    code, out, _ = cli("time", "--preset", "gpt2", "--hardware", "h100", "--chips", "8", "--batch", "64",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["hardware"] == "h100-sxm" and data["chips"] == 8
    assert data["step_time_s"] == pytest.approx(data["compute_time_s"] + data["comm_time_s"])
    assert 0 < data["mfu"] < 1 and data["fits"] is True
    code, out, _ = cli("time", "--preset", "gpt2", "--hardware", "tpu-v5e", "--batch", "4")
    assert code == 0 and "MFU" in out and "memory/chip" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["time", "--preset", "gpt2"], "give --hardware"),
    (["time", "--preset", "gpt2", "--hardware", "h1000"], "unknown"),
    (["time", "--preset", "gpt2", "--hardware", "tpu-v4", "--dtype", "fp8"], "no 'fp8' peak"),
    (["time", "--preset", "gpt2", "--hardware", "h100", "--chips", "3", "--batch", "4"], "divisible by chips=3"),
    (["time", "--preset", "gpt2", "--hardware", "h100", "--chips", "0"], "chips=0"),
    (["time", "--preset", "gpt2", "--hardware", "/nonexistent/chip.toml"], "chip.toml"),
])
def test_cli_time_bad_input(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_cli_calibrate_writes_a_usable_target(cli, tmp_path):
    out_file = tmp_path / "here.toml"
    code, out, _ = cli("calibrate", "--seconds", "0.3", "--out", str(out_file))
    assert code == 0 and out_file.exists()
    code, out, _ = cli("time", "--preset", "tiny-gpt", "--hardware", str(out_file), "--dtype", "fp32")
    assert code == 0 and "step time" in out
