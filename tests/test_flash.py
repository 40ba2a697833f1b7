"""Flash attention, remat policies, micro-batches and precision in the model and the train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import Layout, presets
from models.flash import block_size_for, flash_attention
from models.train import init_train_state, layout_train_step, lm_loss, train_step
from models.transformer import Transformer, _core_attention

CFG = presets.get("tiny-llama")  # GQA, RoPE, SwiGLU, RMSNorm


def _qkv(b=2, t=64, kv=2, g=2, hd=16, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(ks[0], (b, t, kv, g, hd)), jax.random.normal(ks[1], (b, t, kv, hd)),
            jax.random.normal(ks[2], (b, t, kv, hd)))


@pytest.mark.parametrize("block", [64, 16, 8])
def test_flash_equals_dot_attention_values_and_gradients(block):
    q, k, v = _qkv()
    ref = lambda q, k, v: _core_attention(q, k, v).reshape(q.shape)  # noqa: E731
    fla = jax.jit(lambda q, k, v: flash_attention(q, k, v, block_size=block))
    np.testing.assert_allclose(fla(q, k, v), ref(q, k, v), atol=2e-6)
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape)  # a cotangent that is not all ones
    g_ref = jax.grad(lambda *a: (ref(*a) * w).sum(), (0, 1, 2))(q, k, v)
    g_fla = jax.jit(jax.grad(lambda *a: (flash_attention(*a, block_size=block) * w).sum(), (0, 1, 2)))(q, k, v)
    for a, b in zip(g_fla, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_flash_never_materialises_the_score_matrix():
    t, block = 128, 32
    q, k, v = _qkv(b=1, t=t, kv=1, g=1, hd=8)
    f = lambda q, k, v: (flash_attention(q, k, v, block_size=block) ** 2).sum()  # noqa: E731
    text = jax.jit(jax.grad(f, (0, 1, 2))).lower(q, k, v).as_text(dialect="hlo")
    shapes = {tuple(int(x) for x in m.split(",")) for m in re.findall(r"\[([\d,]+)\]", text)}
    assert not [s for s in shapes if s.count(t) >= 2], "a (seq x seq) array exists"
    assert any(s[-2:] == (block, block) for s in shapes)  # the score blocks do
    assert block_size_for(96, 64) == 48 and block_size_for(100, 512) == 100


def _model_loss_and_grads(layout, cfg=CFG, b=2, t=32):
    model = Transformer(cfg, rngs=nnx.Rngs(0), layout=layout)
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (b, t + 1), 0, cfg.vocab_size)

    def loss(p):
        return lm_loss(nnx.merge(graphdef, p), tokens[:, :-1], tokens[:, 1:])

    return jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(loss)(params)


@pytest.mark.parametrize("text", ["attention=flash", "remat=full", "remat=dots", "remat=selective",
                                  "attention=flash,remat=full"])
def test_every_layout_gives_the_same_loss_and_gradients(text):
    (loss0, g0), _ = _model_loss_and_grads(Layout())
    (loss1, g1), jaxpr = _model_loss_and_grads(Layout.parse(text))
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)
    lay = Layout.parse(text)
    has_remat = "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)
    assert has_remat == (lay.remat != "none")
    assert ("name=_flash" in str(jaxpr)) == (lay.attention == "flash")  # models.flash's custom VJP


def test_bad_layout_argument_is_named():
    with pytest.raises(ValueError, match="layout='remat=full': must be a models.Layout"):
        Transformer(CFG, rngs=nnx.Rngs(0), layout="remat=full")


def test_micro_batches_give_the_full_batch_step():
    state = init_train_state(CFG, seed=0)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (8, 17), 0, CFG.vocab_size)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (the step donates)
    out = {}
    for n in (1, 4):
        step = layout_train_step(state.graphdef, state.tx, Layout(micro_batch=8 // n), 8)
        assert step.keywords["micro_batches"] == n
        out[n] = step(copy(state.params), copy(state.opt_state), tokens[:, :-1], tokens[:, 1:])
    np.testing.assert_allclose(out[4][2], out[1][2], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[4][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batches=3 does not divide the batch of 8"):
        train_step(copy(state.params), copy(state.opt_state), tokens[:, :-1], tokens[:, 1:],
                   graphdef=state.graphdef, tx=state.tx, micro_batches=3)


def test_precision_fields_reach_the_parameters_and_the_step():
    bf = init_train_state(CFG, layout=Layout(dtype="bf16", param_dtype="bf16"))
    assert {a.dtype for a in jax.tree.leaves(bf.params)} == {jnp.dtype(jnp.bfloat16)}
    lay = Layout(dtype="bf16", param_dtype="bf16", master_fp32=True)
    master = init_train_state(CFG, layout=lay)
    assert {a.dtype for a in jax.tree.leaves(master.params)} == {jnp.dtype(jnp.float32)}
    step = layout_train_step(master.graphdef, master.tx, lay, 2)
    tokens = jnp.zeros((2, 9), jnp.int32)
    params, _, loss = step(master.params, master.opt_state, tokens[:, :-1], tokens[:, 1:])
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)} and jnp.isfinite(loss)
    with pytest.raises(ValueError, match="fp8 matmuls are modelled by the planner's closed forms only"):
        init_train_state(CFG, layout=Layout(dtype="fp8"))


def test_pallas_kernel_refuses_context_parallel_and_short_blocks():
    """The Pallas TPU kernel attends whole sequences per device, in blocks that are multiples of
    128: cp > 1 and a sequence with no such block are refused by name."""
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from models import Layout
    from models.flash import attention, pallas_block_sizes
    from models.sharding import activation_sharding

    q = jnp.ones((1, 200, 1, 2, 8))
    k = jnp.ones((1, 200, 1, 8))
    with pytest.raises(ValueError, match="multiple of 128"):
        pallas_block_sizes(200 * 3, 512)  # 600: largest divisor <= 512 is 300
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1, 1, 1), ("pp", "dp", "fsdp", "cp", "tp"))
    with pytest.raises(ValueError, match="cp=2"), activation_sharding(mesh, Layout(cp=2, attention="flash",
                                                                                  flash_kernel="pallas")):
        attention(q, k, k, kernel="pallas")
    with pytest.raises(ValueError, match="valid: jax, pallas"):
        attention(q, k, k, kernel="cudnn")
    assert pallas_block_sizes(4096).block_q == 512 and pallas_block_sizes(256).block_k == 256


@pytest.mark.parametrize("options", [{}, {"softcap_at": 5.0}, {"window": 9}])
def test_folded_groups_equal_the_grouped_scores(options):
    """_core_attention's folded grouped-query form ((b, K, g t, s) scores) computes the same
    attention and gradients as the (b, K, g, t, s) form context parallelism keeps."""
    q, k, v = _qkv(g=4)
    w = jax.random.normal(jax.random.PRNGKey(3), (2, 64, 2 * 4 * 16))
    loss = lambda fold: lambda *a: (_core_attention(*a, fold_groups=fold, **options) * w).sum()  # noqa: E731
    np.testing.assert_allclose(_core_attention(q, k, v, fold_groups=True, **options),
                               _core_attention(q, k, v, fold_groups=False, **options), atol=2e-6)
    for a, b in zip(jax.grad(loss(True), (0, 1, 2))(q, k, v), jax.grad(loss(False), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_head_gradients_together_is_the_identity_with_the_same_gradients():
    """The tie between the head's two gradients (an optimization barrier in its backward pass)
    changes no value: the model's head gives x @ w and its gradients, and the barrier is in the
    backward program."""
    from models.transformer import head_gradients_together

    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 8))
    w = jax.random.normal(jax.random.PRNGKey(2), (8, 11))
    tied = lambda x, w: jnp.sin(jnp.dot(*head_gradients_together(x, w))).sum()  # noqa: E731
    plain = lambda x, w: jnp.sin(jnp.dot(x, w)).sum()  # noqa: E731
    np.testing.assert_allclose(tied(x, w), plain(x, w), rtol=1e-6)
    for a, b in zip(jax.grad(tied, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert "optimization_barrier" in str(jax.make_jaxpr(jax.grad(tied, (0, 1)))(x, w))
