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


# Every remat policy with dot attention, the blockwise JAX flash kernel (models.flash) with and
# without full remat, and the Pallas TPU kernel with and without full remat. Two changes to the
# model brought the last two gaps inside 10% (measured on this shape, MiB per chip, TPU peak vs
# closed form):
# - dot attention without remat, 2,435 vs 1,921 (-21%): with the (b, K, g, t, s) scores the
#   compiler kept each layer's softmax twice; models.transformer._core_attention now folds the
#   g query heads of a kv head into its rows, and the compiler keeps one (1,859: +3.3%);
# - models.flash, 1,007 vs 882 (-12.5%) and with full remat 758 vs 665 (-12.3%): the compiler
#   deferred the head's weight gradient (fused into its AdamW update) to the end of the step and
#   kept the 256 MiB of logits live through every layer's backward;
#   models.transformer.head_gradients_together ties that gradient to the layers' (949: -7.1%,
#   and 624: +6.6%).
@pytest.mark.parametrize("text", ["remat=none", "remat=full", "remat=dots", "remat=selective",
                                  "attention=flash", "attention=flash,remat=full",
                                  "attention=flash,flash_kernel=pallas",
                                  "attention=flash,flash_kernel=pallas,remat=full"])
def test_closed_form_peak_within_ten_percent_of_the_tpu_compiler(text):
    """The closed-form peak (planner.estimate_memory) against the TPU compiler's own
    memory_analysis() of the compiled step (argument + temp + output - alias), per policy."""
    layout = Layout.parse(text + ",dtype=bf16")
    r = validate_memory(WIDE, layout, batch_size=4, seq_len=2048)
    assert r.peak > 2**29  # half a GB or more a step: the comparison is not about tiles
    assert abs(r.rel_error) <= 0.10, (text, r.to_dict())
