"""The TPU compiler's memory (compile-only, libtpu) of the flash step: linear in the sequence."""

import os

import pytest

from models import Layout, TransformerConfig
from planner.validation import validate_memory

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One small layer with a small vocabulary, so the activations (not the logits) dominate; the
# sequences span 1, 2 and 4 flash blocks of 512 tokens.
CFG = TransformerConfig(vocab_size=128, d_model=64, n_layers=1, n_heads=2, d_ff=128, seq_len=2048)


def test_flash_step_temp_memory_grows_linearly_with_seq_on_tpu():
    temps = {t: validate_memory(CFG, Layout(attention="flash"), batch_size=1, seq_len=t).temp
             for t in (512, 1024, 2048)}
    # linear: doubling the sequence doubles the temp (quadratic would quadruple the score part)
    assert temps[1024] / temps[512] == pytest.approx(2, rel=0.15)
    assert temps[2048] / temps[1024] == pytest.approx(2, rel=0.15)
    # the dot path at the longest sequence holds the (t x t) scores: far more than flash
    dot = validate_memory(CFG, Layout(), batch_size=1, seq_len=2048)
    assert dot.temp > 2 * temps[2048]
    assert dot.to_dict()["peak"] == dot.argument + dot.temp + dot.output - dot.alias
