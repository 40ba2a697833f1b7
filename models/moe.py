"""The mixture-of-experts MLP: a router, top-k routing, routed and shared experts, and the
load-balancing loss.

One MoE layer (Shazeer et al. 2017; GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2022;
Mixtral, Jiang et al. 2024 §2.1; DeepSeekMoE, Dai et al. 2024 §3):

    s = router(x)                       softmax over the experts, or a sigmoid per expert
    top-k experts by s (+ b, DeepSeek-V3's selection bias, sigmoid router only)
    y = sum_k g_k expert_k(x) + sum_shared expert(x)

with the gates g the top-k scores renormalised to sum to 1 (Mixtral's softmax over the top-k
logits; DeepSeek-V3 eq. 13 for the sigmoid router). Each expert is a bias-free MLP of the
config's kind (``cfg.mlp``), ``d_ff_expert`` wide; the shared experts are one such MLP of
``n_shared_experts * d_ff_shared`` (the same parameters as that many experts side by side).

Two dispatch forms:

- **dropless (the default, ``capacity_factor=None``)**: the token-expert assignments are sorted by
  expert and the grouped matmul is one `jax.lax.ragged_dot` per projection (MegaBlocks, Gale et
  al. 2023, §3; MaxText's ``sparse_matmul``). No token is dropped, so the training loss does not
  depend on the batch's routing and the closed-form FLOPs are exactly the top-k count. It is the
  default because it is what current MoE training (Mixtral, DeepSeek-V3, OLMoE) does and because
  its work is what the planner counts. How XLA counts ``ragged_dot``: README, "Mixture of experts".
- **dense dispatch with capacity** (``capacity_factor`` set; GShard §2.2, Switch §2.1): per
  sequence (a GShard group) each expert takes at most C = ceil(capacity_factor * t * k / E)
  tokens (`TransformerConfig.expert_capacity`), in order of position then choice; the rest are
  dropped (their expert output is 0, the residual carries them). Dispatch and combine are
  one-hot einsums, ``(t, E, C) x (t, d)``, dense matmuls that every backend runs as is and that
  shard over the expert axis with an all-to-all (GShard §3.2).

The load-balancing loss (Switch eq. 4-6, in its top-k form as GShard §2.2 and transformers'
``load_balancing_loss_func``): E * sum_i f_i P_i, with f_i the share of the t*k assignments that
went to expert i and P_i the mean router probability of expert i (for the sigmoid router the
scores normalised per token, DeepSeek-V3 eq. 18-19). It is 1 under perfect balance.
`models.train.lm_loss` adds ``aux_loss_coef`` times its mean over the MoE layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import TransformerConfig
from models.sharding import constrain

scope = jax.named_scope


def _axes(*names):
    return {"out_sharding": names, "eager_sharding": False}


def _param(rngs: nnx.Rngs, shape, names, dtype=jnp.float32) -> nnx.Param:
    """LeCun-normal (truncated), as nnx.Linear: the fan-in is the second-to-last axis (a leading
    expert axis is a batch axis, not part of the fan-in)."""
    batch = (0,) if len(shape) == 3 else ()
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=batch)
    return nnx.Param(init(rngs.params(), shape, dtype), **_axes(*names))


def _activate(kind: str, up: jax.Array, gate: jax.Array | None) -> jax.Array:
    """The MLP's nonlinearity, as `models.transformer.MLP` applies it."""
    if kind == "gelu":
        return jax.nn.gelu(up, approximate=True)
    if kind == "swiglu":
        return jax.nn.silu(gate) * up
    if kind == "gelu_exact":
        return jax.nn.gelu(up, approximate=False)
    if kind == "relu2":
        return jnp.square(jax.nn.relu(up))
    return jax.nn.gelu(gate, approximate=True) * up  # geglu


class MoE(nnx.Module):
    """The routed MLP of one MoE layer: ``y, aux = moe(x)`` for x of shape (batch, seq, d_model).

    Parameters (logical axes for `models.sharding`): router (embed, None); the routed experts'
    ``w_in``/``w_gate`` (expert, embed, mlp) and ``w_out`` (expert, mlp, embed); the shared
    experts' ``shared_in``/``shared_gate``/``shared_out`` (embed, mlp) and (mlp, embed); with
    the sigmoid router, DeepSeek-V3's selection bias (E,), used only to pick the top-k (it gets
    no gradient; DeepSeek updates it by the balance rule of arXiv:2412.19437 eq. 16, not
    modelled).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, E = cfg.d_model, cfg.n_experts
        ff, ffs = cfg.resolved_d_ff_expert, cfg.resolved_d_ff_shared
        self.kind, self.n_experts, self.k = cfg.mlp, E, cfg.experts_per_token
        self.router_kind, self.capacity_factor, self.dtype = cfg.router, cfg.capacity_factor, dtype
        self.gated = cfg.gated
        self.cfg = cfg
        self.router = _param(rngs, (d, E), ("embed", None))
        self.router_bias = (nnx.Param(jnp.zeros((E,), jnp.float32), **_axes(None))
                            if cfg.router == "sigmoid" else None)
        self.w_in = _param(rngs, (E, d, ff), ("expert", "embed", "mlp"))
        self.w_gate = _param(rngs, (E, d, ff), ("expert", "embed", "mlp")) if cfg.gated else None
        self.w_out = _param(rngs, (E, ff, d), ("expert", "mlp", "embed"))
        if cfg.n_shared_experts:
            width = cfg.n_shared_experts * ffs
            self.shared_in = _param(rngs, (d, width), ("embed", "mlp"))
            self.shared_gate = _param(rngs, (d, width), ("embed", "mlp")) if cfg.gated else None
            self.shared_out = _param(rngs, (width, d), ("mlp", "embed"))
        else:
            self.shared_in = self.shared_gate = self.shared_out = None

    def _w(self, p: nnx.Param) -> jax.Array:
        return p[...].astype(self.dtype)

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Router of (tokens, d): (top-k expert ids (tokens, k), gates (tokens, k), aux loss)."""
        with scope("router"):
            logits = jnp.dot(x, self._w(self.router)).astype(jnp.float32)
            if self.router_kind == "softmax":
                probs = jax.nn.softmax(logits, axis=-1)
                select = probs
            else:
                probs = jax.nn.sigmoid(logits)
                select = probs + self.router_bias[...]
            _, idx = jax.lax.top_k(select, self.k)
            top = jnp.take_along_axis(probs, idx, axis=-1)
            gates = top / jnp.sum(top, axis=-1, keepdims=True)
            share = probs if self.router_kind == "softmax" else probs / jnp.sum(probs, axis=-1, keepdims=True)
            counts = jnp.zeros((self.n_experts,), jnp.float32).at[idx.reshape(-1)].add(1.0)
            f = counts / idx.size
            aux = self.n_experts * jnp.sum(f * jnp.mean(share, axis=0))
        return idx, gates.astype(x.dtype), aux

    def _experts_dropless(self, x: jax.Array, idx: jax.Array, gates: jax.Array) -> jax.Array:
        """Sort the (token, choice) pairs by expert, one ragged_dot per projection, unsort."""
        n, d = x.shape
        k = self.k
        with scope("experts"):
            flat = idx.reshape(-1)
            order = jnp.argsort(flat, stable=True)
            xs = jnp.take(x, order // k, axis=0)
            sizes = jnp.bincount(flat, length=self.n_experts).astype(jnp.int32)
            up = jax.lax.ragged_dot(xs, self._w(self.w_in), sizes)
            gate = jax.lax.ragged_dot(xs, self._w(self.w_gate), sizes) if self.gated else None
            h = _activate(self.kind, up, gate)
            ys = jax.lax.ragged_dot(h, self._w(self.w_out), sizes)
            y = jnp.zeros_like(ys).at[order].set(ys).reshape(n, k, d)
            return jnp.einsum("nkd,nk->nd", y, gates)

    def _experts_capacity(self, x: jax.Array, idx: jax.Array, gates: jax.Array) -> jax.Array:
        """GShard dense dispatch per sequence: x (b, t, d), idx and gates (b, t, k)."""
        b, t, d = x.shape
        E, k = self.n_experts, self.k
        cap = self.cfg.expert_capacity(t)
        with scope("dispatch"):
            onehot = jax.nn.one_hot(idx, E, dtype=jnp.int32)  # (b, t, k, E)
            # position of each assignment in its expert's queue: by token, then by choice
            flat = onehot.reshape(b, t * k, E)
            pos = (jnp.cumsum(flat, axis=1) - 1).reshape(b, t, k, E)
            pos = jnp.sum(pos * onehot, axis=-1)  # (b, t, k)
            keep = pos < cap
            slot = jax.nn.one_hot(jnp.where(keep, pos, cap), cap, dtype=x.dtype)  # (b, t, k, C); dropped: 0
            # the (b, t, E, C) masks as products and sums over k (no matmul): the only dispatch
            # dots are the two einsums with x and with the expert outputs
            pair = onehot.astype(x.dtype)[..., :, None] * slot[..., None, :]  # (b, t, k, E, C)
            dispatch = jnp.sum(pair, axis=2)
            combine = jnp.sum(pair * gates[..., None, None], axis=2)
            xe = jnp.einsum("btec,btd->becd", dispatch, x)
        xe = constrain(constrain(xe, "dispatch_groups"), "dispatch_experts")
        with scope("experts"):
            up = jnp.einsum("becd,edf->becf", xe, self._w(self.w_in))
            gate = jnp.einsum("becd,edf->becf", xe, self._w(self.w_gate)) if self.gated else None
            h = _activate(self.kind, up, gate)
            ye = jnp.einsum("becf,efd->becd", h, self._w(self.w_out))
        ye = constrain(constrain(ye, "dispatch_experts"), "dispatch_groups")
        with scope("dispatch"):
            return jnp.einsum("btec,becd->btd", combine, ye)

    def _shared(self, x: jax.Array) -> jax.Array:
        with scope("shared_experts"):
            up = jnp.dot(x, self._w(self.shared_in))
            gate = jnp.dot(x, self._w(self.shared_gate)) if self.gated else None
            return jnp.dot(_activate(self.kind, up, gate), self._w(self.shared_out))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        idx, gates, aux = self.route(flat)
        if self.capacity_factor is None:
            y = self._experts_dropless(flat, idx, gates).reshape(b, t, d)
        else:
            y = self._experts_capacity(x, idx.reshape(b, t, self.k), gates.reshape(b, t, self.k))
        if self.shared_in is not None:
            y = y + self._shared(x)
        return y, aux

