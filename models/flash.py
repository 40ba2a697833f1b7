"""Blockwise causal attention with an online softmax and a recomputing backward pass.

FlashAttention (Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", Algorithm 1 forward, Algorithm 2 backward; the FlashAttention-2 loop order of Dao
2023, Sec. 3.1): the keys are visited block by block while a running maximum ``m``, a running
denominator ``l`` and an unnormalised output accumulate (Milakov & Gimelshein 2018, the online
softmax). Only the output and the row log-sum-exp ``L = m + log l`` are saved; the backward pass
recomputes every score block from q, k and L, so no (seq x seq) array exists in either pass.

Written in plain JAX (``lax.scan`` over blocks), so it runs anywhere and XLA counts its FLOPs.
Every block is computed (the causal mask is applied inside the block; fully masked blocks are
not skipped), so the matmul FLOPs are those of the dot path: planner.flops counts them so.

Shapes follow `models.transformer.Attention` (grouped-query attention):
q (batch, t, kv_heads, groups, head_dim), k and v (batch, s, kv_heads, head_dim).

>>> import jax, jax.numpy as jnp
>>> q = jnp.ones((1, 8, 1, 2, 4)); k = v = jnp.ones((1, 8, 1, 4))
>>> flash_attention(q, k, v, block_size=4).shape
(1, 8, 1, 2, 4)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

#: Default query and key block size (tokens). 512 is MaxText's and the Pallas TPU kernel's
#: default block; sequences shorter than it are one block.
DEFAULT_BLOCK = 512

scope = jax.named_scope  # the FLOP component names of planner.flops, as in models.transformer


def block_size_for(seq_len: int, block_size: int = DEFAULT_BLOCK) -> int:
    """The block actually used for ``seq_len``: the largest divisor of seq_len <= block_size."""
    b = min(block_size, seq_len)
    while seq_len % b:
        b -= 1
    return b


def _blocks(x, n, axis=1):
    """(b, t, ...) -> (n, b, t/n, ...): the sequence axis split into n blocks, blocks first."""
    shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis=1):
    """Inverse of `_blocks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _mask(i, j, bq, bk):
    """Causal mask of query block i against key block j: (bq, bk) bool."""
    rows = i * bq + jnp.arange(bq)[:, None]
    cols = j * bk + jnp.arange(bk)[None, :]
    return rows >= cols


def _forward(q, k, v, block_size):
    b, t, kvh, g, hd = q.shape
    bq = bk = block_size_for(t, block_size)
    nq, nk = t // bq, t // bk
    scale = 1.0 / math.sqrt(hd)
    qb, kb, vb = _blocks(q, nq), _blocks(k, nk), _blocks(v, nk)
    neg = jnp.finfo(jnp.float32).min

    def q_block(i, q_i):
        def k_step(carry, j):
            acc, m, l = carry
            with scope("attn_scores"):
                s = jnp.einsum("btkgd,bskd->bkgts", q_i, kb[j], preferred_element_type=jnp.float32) * scale
                s = jnp.where(_mask(i, j, bq, bk), s, neg)
            with scope("softmax"):
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                corr = jnp.exp(m - m_new)
                l = l * corr + p.sum(-1)
            with scope("attn_values"):
                pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), vb[j], preferred_element_type=jnp.float32)
                return (acc * corr[..., None] + pv, m_new, l), None

        init = (jnp.zeros((b, kvh, g, bq, hd), jnp.float32), jnp.full((b, kvh, g, bq), neg, jnp.float32),
                jnp.zeros((b, kvh, g, bq), jnp.float32))
        (acc, m, l), _ = jax.lax.scan(k_step, init, jnp.arange(nk))
        out = acc / l[..., None]
        return jnp.einsum("bkgtd->btkgd", out).astype(q.dtype), m + jnp.log(l)

    out, lse = jax.lax.map(lambda a: q_block(*a), (jnp.arange(nq), qb))
    return _unblocks(out), lse  # out (b, t, kv, g, hd); lse (nq, b, kv, g, bq), fp32


def _backward(q, k, v, out, lse, dout, block_size):
    b, t, kvh, g, hd = q.shape
    bq = bk = block_size_for(t, block_size)
    nq, nk = t // bq, t // bk
    scale = 1.0 / math.sqrt(hd)
    qb, kb, vb, dob = _blocks(q, nq), _blocks(k, nk), _blocks(v, nk), _blocks(dout, nq)
    # D_i = rowsum(dO_i * O_i) (Algorithm 2, line 19 / FlashAttention-2 Sec. 3.1.2)
    delta = _blocks(jnp.einsum("btkgd,btkgd->bkgt", dout.astype(jnp.float32), out.astype(jnp.float32)),
                    nq, axis=3)  # (nq, b, kv, g, bq)

    def k_block(dq, j):
        k_j, v_j = kb[j], vb[j]

        def q_step(carry, i):
            dk_j, dv_j, dq = carry
            with scope("attn_scores"):  # the recomputed score block
                s = jnp.einsum("btkgd,bskd->bkgts", qb[i], k_j, preferred_element_type=jnp.float32) * scale
            with scope("softmax"):
                p = jnp.where(_mask(i, j, bq, bk), jnp.exp(s - lse[i][..., None]), 0.0)
            do_i = dob[i]
            with scope("transpose(attn_values)"):
                dv_j = dv_j + jnp.einsum("bkgts,btkgd->bskd", p.astype(v.dtype), do_i,
                                         preferred_element_type=jnp.float32)
                dp = jnp.einsum("btkgd,bskd->bkgts", do_i, v_j, preferred_element_type=jnp.float32)
            with scope("softmax"):
                ds = p * (dp - delta[i][..., None]) * scale
            with scope("transpose(attn_scores)"):
                dq_i = jnp.einsum("bkgts,bskd->btkgd", ds.astype(q.dtype), k_j, preferred_element_type=jnp.float32)
                dq = dq.at[i].add(dq_i)
                dk_j = dk_j + jnp.einsum("bkgts,btkgd->bskd", ds.astype(q.dtype), qb[i],
                                         preferred_element_type=jnp.float32)
                return (dk_j, dv_j, dq), None

        zeros = jnp.zeros((b, bk, kvh, hd), jnp.float32)
        (dk_j, dv_j, dq), _ = jax.lax.scan(q_step, (zeros, zeros, dq), jnp.arange(nq))
        return dq, (dk_j, dv_j)

    dq0 = jnp.zeros((nq, b, bq, kvh, g, hd), jnp.float32)
    dq, (dk, dv) = jax.lax.scan(k_block, dq0, jnp.arange(nk))
    return (_unblocks(dq).astype(q.dtype), _unblocks(dk).astype(k.dtype), _unblocks(dv).astype(v.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, block_size):
    return _forward(q, k, v, block_size)[0]


def _flash_fwd(q, k, v, block_size):
    out, lse = _forward(q, k, v, block_size)
    return out, (q, k, v, out, lse)  # O(seq) residuals: no score block is kept


def _flash_bwd(block_size, res, dout):
    return _backward(*res, dout, block_size)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int = DEFAULT_BLOCK) -> jax.Array:
    """Causal softmax(q k^T / sqrt(hd)) v, blockwise, for q (b, t, kv, g, hd), k/v (b, t, kv, hd).

    Equal (to rounding) to the materialised dot path of `models.transformer.Attention`; the
    backward pass recomputes the score blocks (Dao et al. 2022, Algorithm 2). Blocks are
    ``block_size_for(t, block_size)`` tokens; scores and the softmax statistics are float32.
    """
    if q.ndim != 5 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"flash_attention: q must be (b, t, kv, g, hd) and k, v (b, t, kv, hd); "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"flash_attention is causal self-attention: q has {q.shape[1]} tokens, k {k.shape[1]}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: must be a positive int")
    return _flash(q, k, v, block_size)


# ----------------------------------------------------------------------------- kernels
#: Flash-attention implementations (`models.Layout.flash_kernel`): "jax" is this module's
#: blockwise kernel (runs anywhere; XLA sees and counts its ops); "pallas" is JAX's Pallas TPU
#: kernel (`jax.experimental.pallas.ops.tpu.flash_attention`; a Mosaic custom call, so it needs a
#: TPU backend: a real chip or the compile-only libtpu target).
FLASH_KERNELS = ("jax", "pallas")


def pallas_block_sizes(t: int, block_size: int = DEFAULT_BLOCK):
    """The Pallas TPU kernel's blocks for a sequence of ``t``: every query and key block (forward,
    dK/dV and dQ passes) ``block_size_for(t, block_size)``, batch block 1 (MaxText's form)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu

    blk = block_size_for(t, block_size)
    if blk % 128 and blk != t:
        raise ValueError(f"flash_kernel='pallas': the sequence {t} has no block that is a multiple of 128 "
                         f"and at most {block_size}; use a sequence divisible by 128 or flash_kernel='jax'")
    return tpu.BlockSizes(block_q=blk, block_k_major=blk, block_k=blk, block_b=1,
                          block_q_major_dkv=blk, block_k_major_dkv=blk, block_k_dkv=blk, block_q_dkv=blk,
                          block_k_major_dq=blk, block_k_dq=blk, block_q_dq=blk)


def _pallas_local(q, k, v, block_size):
    """The Pallas TPU kernel on one device's shard: q (b, t, kv, g, hd), k/v (b, t, kv, hd).

    The kernel takes (batch, heads, seq, head_dim) with as many key heads as query heads, so
    grouped keys and values are repeated over their groups (the kernel then keeps the repeated
    copies as residuals: H hd each per token, not K hd)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu

    b, t, kvh, g, hd = q.shape
    heads = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  (b, t, h, hd) <-> (b, h, t, hd)
    qh = heads(q.reshape(b, t, kvh * g, hd))
    kh, vh = (heads(jnp.repeat(x, g, axis=2)) for x in (k, v))
    out = tpu.flash_attention(qh, kh, vh, causal=True, sm_scale=1.0 / math.sqrt(hd),
                              block_sizes=pallas_block_sizes(t, block_size))
    return heads(out).reshape(b, t, kvh, g, hd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, kernel: str = "jax",
              block_size: int = DEFAULT_BLOCK) -> jax.Array:
    """Causal flash attention by ``kernel`` (`FLASH_KERNELS`), shapes as `flash_attention`.

    Inside `models.sharding.activation_sharding` the Pallas kernel runs under ``shard_map``
    (each device attends its batch and head shard; the sequence must be whole: no cp)."""
    if kernel == "jax":
        return flash_attention(q, k, v, block_size=block_size)
    if kernel != "pallas":
        raise ValueError(f"flash kernel {kernel!r}: unknown; valid: {', '.join(FLASH_KERNELS)}")
    from models.sharding import active_mesh, activation_spec

    active = active_mesh()
    if active is None:
        return _pallas_local(q, k, v, block_size)
    mesh, layout = active
    if layout.cp > 1:
        raise ValueError(f"flash_kernel='pallas' needs whole sequences per device; layout has cp={layout.cp} "
                         "(use flash_kernel='jax' with context parallelism)")
    qs, ks = activation_spec("query", layout), activation_spec("kv", layout)
    fn = functools.partial(_pallas_local, block_size=block_size)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qs, ks, ks), out_specs=qs, check_vma=False)(q, k, v)
