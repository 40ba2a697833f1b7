"""The TPU compiler's memory (compile-only, libtpu) of the flash step: linear in the sequence."""

import os

import pytest

from models import Layout, TransformerConfig
from planner.validation import validate_memory

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One small layer with a small vocabulary, so the activations (not the logits) dominate; the
# sequences span 4, 8 and 16 flash blocks of 512 tokens (long enough that the per-token terms
# outweigh the fixed block working set).
CFG = TransformerConfig(vocab_size=128, d_model=64, n_layers=1, n_heads=2, d_ff=128, seq_len=8192)


def test_flash_step_temp_memory_grows_linearly_with_seq_on_tpu():
    temps = {t: validate_memory(CFG, Layout(attention="flash"), batch_size=1, seq_len=t).temp
             for t in (2048, 4096, 8192)}
    # linear (a + b t) at most doubles per doubling of the sequence; a (t x t) term quadruples
    # (measured: 1.27x and 1.84x, the fixed block working set is the a)
    assert temps[4096] / temps[2048] < 2.2 and temps[8192] / temps[4096] < 2.2, temps
    assert temps[8192] > temps[4096] > temps[2048]
    # the dot path at the longest sequence holds the (t x t) scores: far more than flash
    dot = validate_memory(CFG, Layout(), batch_size=1, seq_len=4096)
    assert dot.temp > 2 * temps[4096]
    assert dot.to_dict()["peak"] == dot.argument + dot.temp + dot.output - dot.alias


# A shape unlike the one planner.memory's "xla" bookkeeping was read from (d1024, 2 layers,
# batch 8 x 2048, vocabulary 32768): narrower, three layers, a gated MLP with grouped-query
# attention, and big enough (0.7-2 GB a step) that the tens of MiB the TPU compiler moves
# into its alternate memory space do not decide the comparison.
WIDE = TransformerConfig(vocab_size=16384, d_model=512, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=1408,
                         seq_len=2048, mlp="swiglu", norm="rmsnorm", position="rope", bias=False,
                         tied_embeddings=False)


# Not "remat=none" with dot attention: on this grouped-query shape the TPU compiler keeps each
# layer's softmax twice (exp(s) and the normalised probabilities, in two layouts), 20% above the
# closed form; on the MHA and the Llama-like shapes of benchmarks/memory.py it keeps one, within
# 5%. Not models.flash (the blockwise JAX kernel): the closed form is 12% low here with and
# without full remat (6-7% low without remat on the benchmark's shapes, 13.5% with it on the
# GPT-like one): the compiler keeps about 100 MiB more of the kernel's loop buffers and the loss
# phase than the closed form counts, not yet itemised. README, Known limits.
@pytest.mark.parametrize("text", ["remat=full", "remat=selective",
                                  "attention=flash,flash_kernel=pallas,remat=full"])
def test_closed_form_peak_within_ten_percent_of_the_tpu_compiler(text):
    """The closed-form peak (planner.estimate_memory) against the TPU compiler's own
    memory_analysis() of the compiled step (argument + temp + output - alias), per policy."""
    layout = Layout.parse(text + ",dtype=bf16")
    r = validate_memory(WIDE, layout, batch_size=4, seq_len=2048)
    assert r.peak > 2**29  # half a GB or more a step: the comparison is not about tiles
    assert abs(r.rel_error) <= 0.10, (text, r.to_dict())
