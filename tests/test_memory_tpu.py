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
