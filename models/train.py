"""The training step: next-token cross-entropy and an Optax AdamW update, jitted.

The step is a pure function of (params, opt_state, inputs, targets), with the model's graph
and the optimizer static, so it can be lowered from `jax.ShapeDtypeStruct`s alone (the XLA
validation does) as well as run.

>>> from models import presets
>>> state = init_train_state(presets.get("tiny-gpt"), seed=0)
>>> tokens = jnp.zeros((2, 9), jnp.int32)
>>> params, opt_state, loss = train_step(state.params, state.opt_state, tokens[:, :-1],
...                                      tokens[:, 1:], graphdef=state.graphdef, tx=state.tx)
>>> loss.shape
()
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.config import TransformerConfig
from models.transformer import Transformer, make_layer


class TrainState(NamedTuple):
    graphdef: Any  # nnx.GraphDef of the Transformer (static)
    params: Any  # nnx.State of its nnx.Param variables
    opt_state: optax.OptState
    tx: optax.GradientTransformation


def abstract_model(cfg: TransformerConfig, *, scan_layers: bool = False, dtype=jnp.float32) -> Transformer:
    """The model with `jax.ShapeDtypeStruct` leaves instead of arrays: nothing is allocated,
    so a 7B config can be inspected, counted and lowered on a laptop.

    Unrolled layers are built one ``nnx.eval_shape`` each, in time linear in ``n_layers``. In one
    trace, each layer would cost time proportional to the trace so far: every ``nnx.Rngs`` draw
    sets a Variable, flax checks the new value's ``sharding``, and on a tracer JAX answers with
    an AttributeError whose message walks every equation traced so far
    (``DynamicJaxprTracer._origin_msg`` -> ``find_progenitors`` in
    jax/_src/interpreters/partial_eval.py). 300 layers took 541 s that way.
    """
    def build(c):
        return Transformer(c, rngs=nnx.Rngs(0), scan_layers=scan_layers, dtype=dtype)

    if scan_layers or cfg.n_layers <= 2:
        return nnx.eval_shape(lambda: build(cfg))
    model = nnx.eval_shape(lambda: build(dataclasses.replace(cfg, n_layers=1)))
    model.layers = nnx.List([nnx.eval_shape(lambda i=i: make_layer(cfg, i, rngs=nnx.Rngs(i + 1), dtype=dtype))
                             for i in range(cfg.n_layers)])
    model.cfg = cfg
    return model


def adamw(learning_rate: float = 3e-4, *, b1: float = 0.9, b2: float = 0.95,
          weight_decay: float = 0.1) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with the GPT-3 / Llama betas; decays every parameter."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def lm_loss(model: Transformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of ``model(inputs)`` against ``targets`` (both (batch, seq))."""
    logits = model(inputs)
    with jax.named_scope("loss"):
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"), donate_argnames=("params", "opt_state"))
def train_step(params, opt_state, inputs, targets, *, graphdef, tx):
    """One AdamW step on the mean next-token cross-entropy. Returns (params, opt_state, loss)."""

    def loss_of(p):
        return lm_loss(nnx.merge(graphdef, p), inputs, targets)

    loss, grads = jax.value_and_grad(loss_of)(params)
    with jax.named_scope("optimizer"):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss


def make_train_step(graphdef, tx):
    """`train_step` with the model graph and optimizer bound: f(params, opt_state, inputs, targets)."""
    return functools.partial(train_step, graphdef=graphdef, tx=tx)


def init_train_state(cfg: TransformerConfig, *, seed: int = 0, scan_layers: bool = False,
                     tx: optax.GradientTransformation | None = None, dtype=jnp.float32) -> TrainState:
    """Initialise the model's parameters and the optimizer state (default `adamw()`)."""
    tx = adamw() if tx is None else tx
    model = Transformer(cfg, rngs=nnx.Rngs(seed), scan_layers=scan_layers, dtype=dtype)
    graphdef, params = nnx.split(model, nnx.Param)
    return TrainState(graphdef, params, tx.init(params), tx)
