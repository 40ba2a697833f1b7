"""planner.collectives (closed form) and planner.hlo's collective reader."""

import jax
import jax.numpy as jnp
import pytest

from models import presets
from models.config import TransformerConfig
from models.layout import Layout
from planner.collectives import Collective, bytes_per_axis, collectives
from planner.hlo import group_axes, parse_collectives, replica_groups

LLAMA = presets.get("llama-2-7b")
MATRICES = ("q", "k", "v", "attn_out", "mlp_in", "mlp_gate", "mlp_out")


def _sum(colls, **match):
    return sum(c.total_bytes for c in colls if all(getattr(c, k) == v for k, v in match.items()))


def test_tensor_parallel_all_reduces_are_megatrons_four_per_layer():
    # Shoeybi et al. 2019, Sec. 3 / Fig. 4: two all-reduces in the forward (g after attention and
    # after the MLP) and two in the backward (f) per layer, each of the (b, s, h) activations.
    cs = collectives(LLAMA, Layout(tp=2), batch_size=8, seq_len=1024, dtype="bf16")
    layer = [c for c in cs if c.axis == "tp" and c.component in ("attn_out", "mlp_out", "qkv", "mlp_in")]
    assert {c.kind for c in layer} == {"all-reduce"}
    assert sum(c.count for c in layer) == 4 * LLAMA.n_layers
    assert {c.bytes for c in layer} == {8 * 1024 * LLAMA.d_model * 2}


def test_sequence_parallel_moves_the_same_bytes_as_tensor_parallel():
    # Korthikanti et al. 2022, Sec. 4.2.2: an all-reduce is a reduce-scatter plus an all-gather,
    # so sequence parallelism keeps the communication volume of tensor parallelism.
    tp = collectives(LLAMA, Layout(tp=8), batch_size=8, seq_len=2048, dtype="bf16")
    sp = collectives(LLAMA, Layout(tp=8, sequence_parallel=True), batch_size=8, seq_len=2048, dtype="bf16")
    comps = ("attn_out", "mlp_out", "qkv", "mlp_in")
    wire = lambda cs: sum(c.total_wire_bytes for c in cs if c.component in comps and c.axis == "tp")  # noqa: E731
    assert wire(tp) == wire(sp) > 0
    assert {c.kind for c in sp if c.component in comps} == {"all-gather", "reduce-scatter"}


def test_zero3_moves_one_and_a_half_times_data_parallel():
    # Rajbhandari et al. 2020, Sec. 7.2.2: ZeRO-3 sends 3 Psi (all-gather forward, all-gather
    # backward, reduce-scatter) against data parallelism's 2 Psi all-reduce: 1.5x.
    cfg = LLAMA
    fsdp = collectives(cfg, Layout(fsdp=64), batch_size=64, seq_len=512, dtype="bf16", keep_last_gathered=())
    dp = collectives(cfg, Layout(dp=64), batch_size=64, seq_len=512, dtype="bf16")
    wire = lambda cs: sum(c.total_wire_bytes for c in cs if c.component in MATRICES)  # noqa: E731
    assert wire(fsdp) / wire(dp) == pytest.approx(1.5, rel=1e-12)


def test_fsdp_gathers_three_times_the_weights_on_tpu_and_two_on_gpu():
    cfg = TransformerConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=8, d_ff=512, seq_len=64,
                            mlp="swiglu", norm="rmsnorm", position="rope", bias=False, tied_embeddings=False)
    weights = 2 * sum(4 * 128 * 128 + 3 * 128 * 512 for _ in range(4))  # bf16 layer matrices
    tpu = collectives(cfg, Layout(fsdp=8), batch_size=8, dtype="bf16", keep_last_gathered=())
    gpu = collectives(cfg, Layout(fsdp=8), batch_size=8, dtype="bf16", gather_in_backward=False)
    assert sum(c.total_bytes for c in tpu if c.component in MATRICES) == 3 * weights
    assert sum(c.total_bytes for c in gpu if c.component in MATRICES) == 2 * weights
    # the embedding and the head are gathered once either way
    assert _sum(tpu, component="head", kind="all-gather") == 128 * 256 * 2


def test_exact_ints_and_a_differentiable_relaxed_config():
    lay = Layout.parse("dp=2,fsdp=4,tp=2,cp=2,sequence_parallel=true")
    cs = collectives(LLAMA, lay, batch_size=16, seq_len=4096, dtype="bf16")
    assert all(isinstance(c.bytes, int) and isinstance(c.count, int) for c in cs)
    assert set(bytes_per_axis(cs)) >= {"fsdp", "tp", "cp", "dp+fsdp+cp"}

    def total(d_model):
        cfg = LLAMA.replace(d_model=d_model, head_dim=jnp.float32(128.0))
        return sum(c.total_bytes for c in collectives(cfg, lay, batch_size=16, seq_len=4096, dtype="bf16"))

    grad = jax.jit(jax.grad(total))(jnp.float32(4096.0))
    assert jnp.isfinite(grad) and grad > 0
    assert float(total(jnp.float32(4096.0))) == pytest.approx(sum(c.total_bytes for c in cs), rel=1e-6)


def test_pipeline_stages_split_the_layers_and_send_activations():
    one = collectives(LLAMA, Layout(tp=2), batch_size=8, seq_len=1024, dtype="bf16")
    four = collectives(LLAMA, Layout(tp=2, pp=4, micro_batch=2), batch_size=8, seq_len=1024, dtype="bf16")
    layer = lambda cs: sum(c.total_bytes for c in cs if c.component == "attn_out")  # noqa: E731
    assert layer(four) * 4 == layer(one)
    sends = [c for c in four if c.axis == "pp"]
    assert {c.kind for c in sends} == {"collective-permute"}
    assert sum(c.count for c in sends) == 2 * 4  # 4 micro-batches, forward and backward
    assert {c.bytes for c in sends} == {2 * 1024 * LLAMA.d_model * 2}


def test_learned_positions_under_cp_are_gathered_with_their_moments():
    # each cp shard reads and updates only its rows of the position table: no all-reduce of its
    # gradient over cp, but the rows of the table and of AdamW's two moments gathered after
    cfg = TransformerConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=512, seq_len=64,
                            mlp="gelu", norm="layernorm", position="learned", bias=False)
    cs = [c for c in collectives(cfg, Layout.parse("fsdp=4,cp=2"), batch_size=8, dtype="bf16")
          if c.component == "position"]
    gathers = [c for c in cs if c.axis == "cp"]
    assert [(c.kind, c.count, c.bytes, c.phase) for c in gathers] == [("all-gather", 3, 64 * 32 * 4, "optimizer")]
    assert _sum(cs, axis="fsdp", kind="all-gather") == 32 * 128 * 2  # its t / cp rows, in bf16
    assert collectives(cfg, Layout.parse("fsdp=4,cp=2"), batch_size=8, dtype="bf16", optimizer_moments=0)


def test_compiler_behaviour_options_are_stated():
    from planner.validation import compiler_behaviour

    cfg = TransformerConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=512, seq_len=64,
                            mlp="swiglu", norm="rmsnorm", position="rope", bias=False, tied_embeddings=True)
    lay = Layout.parse("fsdp=4,tp=2")
    gpu, tpu = compiler_behaviour("gpu", lay, cfg), compiler_behaviour("tpu", lay, cfg)
    assert gpu["regather"] == ("mlp_in", "mlp_gate", "mlp_out") and "regather" not in tpu
    once = collectives(cfg, lay, batch_size=8, dtype="bf16", gather_in_backward=False)
    twice_mlp = collectives(cfg, lay, batch_size=8, dtype="bf16", **gpu)
    mlp = 2 * 3 * (128 * 512 // 2) * 2  # 2 layers x 3 matrices, a tp shard, bf16
    table = 256 // 2 * 128 * (4 - 2)  # the tied table gathered in fp32, not bf16
    assert _sum(twice_mlp, kind="all-gather", axis="fsdp") - _sum(once, kind="all-gather", axis="fsdp") == mlp + table
    with pytest.raises(ValueError, match="regather"):
        collectives(cfg, lay, batch_size=8, regather=("embedding",))


def test_wire_bytes_of_a_ring():
    c = Collective("all-reduce", "dp", 4, 1000, 2, "q", "backward", "bf16", "gradients")
    assert c.wire_bytes == 1500 and c.total_wire_bytes == 3000
    assert Collective("all-gather", "fsdp", 4, 1000, 1, "q", "forward", "bf16", "weights").wire_bytes == 750
    assert c.to_dict()["axis"] == "dp"


@pytest.mark.parametrize("kwargs, match", [
    ({"grad_reduce": "ring"}, "grad_reduce"),
    ({"mode": "decode"}, "mode"),
    ({"dtype": "int4"}, "dtype"),
    ({"gather_in_backward": 1}, "gather_in_backward"),
])
def test_bad_options_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        collectives(LLAMA, Layout(tp=2), batch_size=8, **kwargs)


def test_a_layout_that_does_not_divide_the_model_is_refused():
    with pytest.raises(ValueError, match="n_heads=32 is not divisible by tp=3"):
        collectives(LLAMA, Layout(tp=3), batch_size=3)


# ----------------------------------------------------------------------------- the HLO reader
def test_replica_group_forms():
    # xla/hlo/ir/collective_device_list.h: [4,2]<=[2,4]T(1,0) is {{0,4},{1,5},{2,6},{3,7}}
    assert replica_groups("replica_groups=[4,2]<=[2,4]T(1,0), x") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert replica_groups("replica_groups=[2,4]<=[8], x") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert replica_groups("replica_groups={{0,2},{1,3}}, x") == [[0, 2], [1, 3]]
    assert replica_groups("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, x") == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert replica_groups("source_target_pairs={{0,1},{1,0}}, x") == [[0, 1], [1, 0]]
    # a mesh whose devices are not in iota order (XLA:TPU prints it for dp=2,cp=2,tp=2): the
    # devices iota [2,2,2] transposed (1,0,2) laid on the mesh, grouped along axis_0 -- the cp
    # axis of that layout's mesh (dp, cp, tp), not all 8 devices
    text = "replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=4], device_ids=([2,2,2]T(1,0,2)) {'axis_0'}, x"
    assert replica_groups(text) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert group_axes(replica_groups(text), {"pp": 1, "dp": 2, "fsdp": 1, "cp": 2, "tp": 2}) == (("cp",), 2)
    assert replica_groups("replica_groups=mesh['a'=2,'b'=2], device_ids={0,2,1,3} {'a'}, x") == [[0, 1], [2, 3]]
    mesh = {"pp": 1, "dp": 1, "fsdp": 4, "cp": 1, "tp": 2}
    assert group_axes([[0, 2, 4, 6], [1, 3, 5, 7]], mesh) == (("fsdp",), 4)
    assert group_axes([[0, 1], [2, 3], [4, 5], [6, 7]], mesh) == (("tp",), 2)
    assert group_axes(None, mesh) == (("fsdp", "tp"), 8)


HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %p = (s32[], bf16[4,8]) parameter(0)
  %x = bf16[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = bf16[8,8]{1,0} all-gather(%x), replica_groups=[4,2]<=[8], dimensions={0}
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], bf16[4,8]) tuple(%i, %x)
}

%cond (p: (s32[], bf16[4,8])) -> pred[] {
  %p = (s32[], bf16[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(6)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (w: bf16[4,8], g: f32[16], h: f32[16]) -> bf16[4,8] {
  %w = bf16[4,8]{1,0} parameter(0)
  %g = f32[16]{0} parameter(1)
  %h = f32[16]{0} parameter(2)
  %ars = f32[16]{0} all-reduce-start(%g), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ard = f32[16]{0} all-reduce-done(%ars)
  %tup = (f32[16]{0}, f32[16]{0}) all-reduce(%g, %h), replica_groups=[2,4]<=[8], to_apply=%add
  %z = s32[] constant(0)
  %init = (s32[], bf16[4,8]) tuple(%z, %w)
  %loop = (s32[], bf16[4,8]) while(%init), condition=%cond, body=%body
  ROOT %out = bf16[4,8]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_async_pairs_tuples_and_loops():
    colls = parse_collectives(HLO, {"fsdp": 2, "tp": 4})
    by_kind = {}
    for c in colls:
        by_kind.setdefault(c.opcode, []).append(c)
    assert set(by_kind) == {"all-reduce-start", "all-reduce", "all-gather"}  # the -done is skipped
    (start,) = by_kind["all-reduce-start"]
    assert (start.bytes, start.count, start.axes) == (64, 1, ("fsdp", "tp"))
    (tup,) = by_kind["all-reduce"]
    assert (tup.bytes, tup.axes, tup.group_size) == (128, ("tp",), 4)
    (ag,) = by_kind["all-gather"]
    # result = 2 x the bf16[4,8] operand; 6 trips from the loop condition i < 6
    assert (ag.bytes, ag.count, ag.total_bytes, ag.axes, ag.trip_count_known) == (128, 6, 768, ("tp",), True)
    known = HLO.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"3"}}')
    assert [c.count for c in parse_collectives(known) if c.kind == "all-gather"] == [3]
