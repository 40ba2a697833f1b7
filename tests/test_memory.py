"""Memory per chip under a Layout: Korthikanti et al. 2022's equations, sharding, vectorisation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import Layout, TransformerConfig, presets
from planner import count_params
from planner.memory import activation_bytes_per_layer, estimate_memory

# A GPT layer as Korthikanti et al. 2022 count it: h = d_model, a heads, d_ff = 4h, MHA, 16-bit.
S, B, H, A = 2048, 4, 1024, 16
GPT = TransformerConfig(vocab_size=50304, d_model=H, n_layers=8, n_heads=A, d_ff=4 * H, seq_len=S)


def per_layer(layout_text, **kw):
    lay = Layout.parse(layout_text + ",dtype=bf16" if layout_text else "dtype=bf16")
    return activation_bytes_per_layer(GPT, B, S, layout=lay, dropout=True, bookkeeping="korthikanti", **kw)


@pytest.mark.parametrize("t", [1, 2, 8])
def test_korthikanti_2022_activation_equations(t):
    """Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
    per layer (bytes, 16-bit, dropout): Eq. 1 sbh (34 + 5as/h); Eq. 2 with tensor parallelism
    sbh (10 + 24/t + 5as/(ht)); Eq. 3 with sequence parallelism sbh/t (34 + 5as/h); Table 2:
    selective recomputation sbh (10 + 24/t) and 34 sbh / t with sequence parallelism, full
    recomputation 2 sbh."""
    sbh = S * B * H
    five_as2b = 5 * A * S * S * B
    tp = f"tp={t}" if t > 1 else ""
    sp = f"tp={t},sequence_parallel=true" if t > 1 else ""
    assert per_layer(tp) == pytest.approx(sbh * (10 + 24 / t) + five_as2b / t, rel=1e-12)
    assert per_layer(sp) == pytest.approx(sbh * 34 / t + five_as2b / t, rel=1e-12)
    assert per_layer(",".join(filter(None, [tp, "remat=selective"]))) == pytest.approx(sbh * (10 + 24 / t))
    assert per_layer(",".join(filter(None, [sp, "remat=selective"]))) == pytest.approx(sbh * 34 / t)
    assert per_layer("remat=full") == 2 * sbh
    if t == 1:
        assert per_layer("") == 34 * sbh + five_as2b  # Eq. 1 exactly, in integers


def test_pipeline_first_stage_holds_all_layers_eq_4_and_5():
    """Korthikanti et al. 2022, Eq. 4 (and Eq. 5 with selective recomputation): under 1F1B the
    first stage holds pp micro-batches of n_layers / pp layers, i.e. L layers' worth (Narayanan
    et al. 2021, Sec. 2.2.1); GPipe holds every micro-batch."""
    cfg = dataclasses.replace(GPT, n_layers=8)
    for remat in ("none", "selective"):
        lay = Layout(pp=4, micro_batch=1, remat=remat, dtype="bf16")
        m = estimate_memory(cfg, batch_size=16, seq_len=S, layout=lay, dropout=True, bookkeeping="korthikanti")
        one = activation_bytes_per_layer(cfg, 1, S, layout=lay, dropout=True, bookkeeping="korthikanti")
        assert m.breakdown["saved_activations"] == pytest.approx(8 * one)  # L layers, not L / pp
        gpipe = estimate_memory(cfg, batch_size=16, seq_len=S, layout=lay.replace(schedule="gpipe"), dropout=True,
                                bookkeeping="korthikanti")
        assert gpipe.breakdown["saved_activations"] == pytest.approx(16 * 2 * one)  # 16 micro-batches x 2 layers


def test_state_is_divided_by_the_mesh():
    cfg = presets.get("llama-2-7b")
    n = count_params(cfg).total
    base = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(dp=8, dtype="bf16", param_dtype="bf16",
                                                                          master_fp32=True))
    # the compiled step fuses every gradient but the head's (bf16, vocab x d) into its AdamW update
    assert base.params == 2 * n and base.grads == 2 * cfg.vocab_size * cfg.d_model and base.master == 4 * n
    eager = estimate_memory(cfg, batch_size=8, seq_len=2048, bookkeeping="korthikanti",
                            layout=Layout(dp=8, dtype="bf16", param_dtype="bf16", master_fp32=True))
    assert eager.grads == 2 * n  # Megatron-LM's gradient buffer: every weight's
    assert base.optimizer == 12 * n  # fp32 moments + fp32 master (Rajbhandari et al. 2020: 16 bytes/param)
    fsdp = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(fsdp=8, dtype="bf16", param_dtype="bf16",
                                                                          master_fp32=True))
    assert fsdp.params == pytest.approx(2 * n / 8) and fsdp.optimizer == pytest.approx(12 * n / 8)
    zero1 = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(dp=8, optimizer_sharding=True))
    assert zero1.params == 4 * n and zero1.optimizer == pytest.approx(8 * n / 8)
    tp = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(dp=4, tp=2))
    norms = 2 * cfg.n_layers * cfg.d_model  # replicated over tp
    assert tp.params == pytest.approx(4 * ((n - norms - cfg.d_model) / 2 + norms + cfg.d_model / 2), rel=1e-4)
    pp = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(dp=2, pp=4))
    table = cfg.vocab_size * cfg.d_model  # the last stage: a quarter of the layers + head + final norm
    assert pp.params == 4 * ((n - 2 * table - cfg.d_model) / 4 + table + cfg.d_model)


def test_micro_batches_and_accumulation_buffer():
    cfg = presets.get("llama-2-7b")
    n = count_params(cfg).total
    whole = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(remat="full"))
    micro = estimate_memory(cfg, batch_size=8, seq_len=2048, layout=Layout(remat="full", micro_batch=1))
    assert micro.accumulation == 4 * n and whole.accumulation == 0
    assert micro.breakdown["saved_activations"] == pytest.approx(whole.breakdown["saved_activations"] / 8)
    assert micro.logits == pytest.approx(whole.logits / 8)


def test_policies_are_ordered_and_flash_is_linear_in_seq():
    cfg = presets.get("llama-2-7b")
    tot = {r: float(estimate_memory(cfg, batch_size=1, seq_len=8192, layout=Layout(remat=r, dtype="bf16")).total)
           for r in ("none", "selective", "dots", "full")}
    assert tot["none"] > tot["selective"] > tot["dots"] > tot["full"]
    act = [float(estimate_memory(cfg, batch_size=1, seq_len=s, layout=Layout(attention="flash")).activations)
           for s in (4096, 8192, 16384)]
    assert act[2] / act[1] == pytest.approx(act[1] / act[0], rel=0.02) == pytest.approx(2, rel=0.05)


def test_breakdown_sums_and_serialises():
    m = estimate_memory(presets.get("gpt2"), batch_size=8, seq_len=1024,
                        layout=Layout.parse("fsdp=2,tp=2,remat=selective,micro_batch=2"), hardware="h100")
    d = m.to_dict()
    assert d["layout"] == "remat=selective,micro_batch=2,fsdp=2,tp=2"
    assert sum(d["breakdown"].values()) == pytest.approx(d["total"])
    assert d["fits"] is True and d["hbm_bytes"] == 80e9


def test_vectorised_and_differentiable():
    cfg = presets.get("llama-2-7b")
    lay = Layout(fsdp=8, tp=2, remat="dots", attention="flash", micro_batch=2, pp=2)

    def total(d, s):
        return estimate_memory(dataclasses.replace(cfg, d_model=d), batch_size=32, seq_len=s, layout=lay).total

    many = jax.jit(jax.vmap(total))(jnp.array([2048.0, 4096.0]), jnp.array([2048.0, 4096.0]))
    exact = [float(estimate_memory(dataclasses.replace(cfg, d_model=d), batch_size=32, seq_len=d,
                                   layout=lay).total) for d in (2048, 4096)]
    np.testing.assert_allclose(many, exact, rtol=1e-5)
    assert float(jax.grad(total)(jnp.float32(4096.0), jnp.float32(4096.0))) > 0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"layout": "remat=full"}, "must be a Layout"),
    ({"layout": Layout(), "remat": True}, "remat: give these as fields of layout="),
    ({"layout": Layout(dp=2), "chips": 4}, "chips=4 differs from layout.chips=2"),
    ({"layout": Layout(tp=5)}, "n_heads=12 is not divisible by tp=5"),
    ({"layout": Layout(micro_batch=3), "batch_size": 8}, "micro_batch=3 does not divide"),
    ({"chips": 2.5}, "chips=2.5"),
    ({"dropout": 1}, "dropout=1"),
])
def test_bad_input_is_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        estimate_memory(presets.get("gpt2"), **kwargs)


def test_cli_layout_on_time_and_plan(cli):
    code, out, _ = cli("time", "--preset", "llama-2-7b", "--hardware", "h100", "--chips", "8", "--batch", "8",
                       "--seq", "4096", "--layout", "fsdp=8,remat=selective,attention=flash,micro_batch=1")
    assert code == 0 and "HFU" in out and "saved_activations" in out and "= total" in out
    code, out, _ = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "30")
    assert code == 0 and "memory/chip" in out and "remat=" in out and "= total" in out
    # the printed terms add up to the printed total (to the rounding of the printed figures)
    lines = out[out.index("memory/chip (bytes"):].splitlines()[1:]
    terms = [ln.split() for ln in lines if ln.startswith("  ") and not ln.startswith("    ")]
    to_bytes = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "B": 1}
    values = [float(t[-2]) * to_bytes[t[-1]] for t in terms if t[0] != "=" and t[-1] in to_bytes]
    total_line = next(ln for ln in lines if "= total" in ln).split()
    total = float(total_line[2]) * to_bytes[total_line[3]]
    assert sum(values) == pytest.approx(total, rel=0.01)
    code, _, err = cli("time", "--preset", "gpt2", "--hardware", "h100", "--layout", "remat=some")
    assert code == 2 and err.startswith("error: --layout 'remat=some'") and "valid: none, full" in err
    code, _, err = cli("time", "--preset", "gpt2", "--hardware", "h100", "--layout", "fsdp=2", "--remat")
    assert code == 2 and "put them in --layout" in err
    code, _, err = cli("plan", "--hardware", "h100", "--chips", "8", "--days", "1", "--layout", "fsdp=4")
    assert code == 2 and "layout has 4 chips" in err
