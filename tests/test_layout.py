"""models.Layout (re-exported as planner.Layout): the execution type, its CLI form and its checks."""

import pytest

from models import Layout, presets
from models.layout import layout_fields


def test_parse_round_trip_and_chips():
    lay = Layout.parse("fsdp=64,tp=8,sequence_parallel=true,remat=dots,attention=flash,micro_batch=2")
    assert (lay.fsdp, lay.tp, lay.sequence_parallel, lay.micro_batch) == (64, 8, True, 2)
    assert lay.chips == 512 and lay.data_parallel == 64
    assert Layout.parse(lay.to_string()) == lay
    assert Layout.parse("") == Layout()


def test_planner_reexports_the_same_type():
    import planner

    assert planner.Layout is Layout


@pytest.mark.parametrize("text, words", [
    ("tp=0", "tp=0"),
    ("tp=two", "tp='two'"),
    ("remat=some", "valid: none, full, selective, dots"),
    ("attention=sdpa", "valid: dot, flash"),
    ("bogus=1", "valid: remat"),
    ("tp", "FIELD=VALUE"),
    ("tp=2,tp=4", "twice"),
    ("sequence_parallel=maybe", "true or false"),
    ("schedule=interleaved,pp=2", "virtual_stages >= 2"),
    ("virtual_stages=2", "needs pp > 1"),
    ("ep=3,dp=4", "ep=3"),
    ("flash_kernel=pallas", "needs attention='flash'"),
    ("attention=flash,flash_kernel=cudnn", "valid: jax, pallas"),
])
def test_bad_layouts_name_the_field(text, words):
    with pytest.raises(ValueError, match=None) as err:
        Layout.parse(text)
    assert words in str(err.value)


def test_check_names_what_does_not_divide():
    cfg = presets.get("llama-2-7b")  # 32 heads, d_ff 11008, 32 layers
    Layout(tp=8, pp=4).check(cfg, batch_size=16, seq_len=4096)
    with pytest.raises(ValueError, match="n_heads=32 is not divisible by tp=3"):
        Layout(tp=3).check(cfg)
    with pytest.raises(ValueError, match="n_layers=32 is not divisible by pp x virtual_stages=6"):
        Layout(pp=3, virtual_stages=2).check(cfg)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by dp x fsdp=4"):
        Layout(fsdp=4).check(cfg, batch_size=6)
    with pytest.raises(ValueError, match="seq_len=100 is not divisible by cp=8"):
        Layout(cp=8).check(cfg, seq_len=100)
    with pytest.raises(ValueError, match="micro_batch=3 does not divide the per-replica batch 4"):
        Layout(dp=2, micro_batch=3).check(cfg, batch_size=8)


def test_replace_validates_and_rejects_unknown_fields():
    assert Layout().replace(tp=4).tp == 4
    with pytest.raises(ValueError, match="unknown Layout field"):
        Layout().replace(tensor=4)
    assert "remat" in layout_fields() and "ep" in layout_fields()
