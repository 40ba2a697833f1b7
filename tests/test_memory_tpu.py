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
    # temp = a + b t (+ c t^2): the step from 4096 to 8192 tokens is twice the step from 2048 to
    # 4096 when c = 0, four times when the t^2 term dominates (the block working set is the a)
    first, second = temps[4096] - temps[2048], temps[8192] - temps[4096]
    assert first > 0 and second / first == pytest.approx(2, rel=0.2), temps
    # the dot path at the longest sequence holds the (t x t) scores: far more than flash
    dot = validate_memory(CFG, Layout(), batch_size=1, seq_len=4096)
    assert dot.temp > 2 * temps[4096]
    assert dot.to_dict()["peak"] == dot.argument + dot.temp + dot.output - dot.alias
