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
from models.layout import Layout
from models.transformer import Transformer, make_layer

#: Layout dtype names -> JAX dtypes of the model ("fp8" matmuls are modelled by the planner's
#: closed forms only: the Flax model has no fp8 path, and says so).
JAX_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}


def jax_dtype(name: str):
    """The JAX dtype of a `Layout` dtype name; fp8 raises ValueError (no fp8 model path)."""
    if name not in JAX_DTYPES:
        raise ValueError(f"dtype {name!r}: the Flax model runs in {', '.join(JAX_DTYPES)}; fp8 matmuls "
                         "are modelled by the planner's closed forms only")
    return JAX_DTYPES[name]


class TrainState(NamedTuple):
    graphdef: Any  # nnx.GraphDef of the Transformer (static)
    params: Any  # nnx.State of its nnx.Param variables
    opt_state: optax.OptState
    tx: optax.GradientTransformation


def abstract_model(cfg: TransformerConfig, *, scan_layers: bool = False, dtype=jnp.float32,
                   layout: Layout | None = None) -> Transformer:
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
        return Transformer(c, rngs=nnx.Rngs(0), scan_layers=scan_layers, dtype=dtype, layout=layout)

    if scan_layers or cfg.n_layers <= 2:
        return nnx.eval_shape(lambda: build(cfg))
    model = nnx.eval_shape(lambda: build(dataclasses.replace(cfg, n_layers=1, dense_layers=0)))  # layers replaced below
    model.layers = nnx.List([nnx.eval_shape(lambda i=i: make_layer(cfg, i, rngs=nnx.Rngs(i + 1), dtype=dtype,
                                                                  layout=layout))
                             for i in range(cfg.n_layers)])
    model.cfg = cfg
    return model


def adamw(learning_rate: float = 3e-4, *, b1: float = 0.9, b2: float = 0.95,
          weight_decay: float = 0.1) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with the GPT-3 / Llama betas; decays every parameter."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def lm_loss(model: Transformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of ``model(inputs)`` against ``targets`` (both (batch, seq));
    for a mixture of experts plus ``aux_loss_coef`` times the load-balancing loss (`models.moe`)."""
    if model.cfg.is_moe:
        logits, aux = model(inputs, return_aux=True)
    else:
        logits, aux = model(inputs), None
    with jax.named_scope("loss"):
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    if aux is None or model.cfg.aux_loss_coef == 0:
        return loss
    with jax.named_scope("router"):
        return loss + model.cfg.aux_loss_coef * aux


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "micro_batches", "param_dtype"),
                   donate_argnames=("params", "opt_state"))
def train_step(params, opt_state, inputs, targets, *, graphdef, tx, micro_batches: int = 1,
               param_dtype=None):
    """One AdamW step on the mean next-token cross-entropy. Returns (params, opt_state, loss).

    ``micro_batches`` > 1 accumulates the gradient over that many equal slices of the batch
    (``lax.scan``; float32 accumulator), the same mean loss and gradient as one pass over the
    whole batch. ``param_dtype`` (a JAX dtype): the forward and backward run on a copy of the
    parameters cast to it, while ``params`` stay the optimizer's master weights (fp32 master
    weights of mixed-precision training; Micikevicius et al. 2018, Sec. 3.1).
    """

    def loss_of(p, x, y):
        if param_dtype is not None:
            p = jax.tree.map(lambda a: a.astype(param_dtype), p)
        return lm_loss(nnx.merge(graphdef, p), x, y)

    if micro_batches == 1:
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, targets)
    else:
        loss, grads = _accumulate(loss_of, params, inputs, targets, micro_batches)
    with jax.named_scope("optimizer"):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss


def _accumulate(loss_of, params, inputs, targets, n: int):
    """Mean loss and gradient over n micro-batches of (inputs, targets), one at a time."""
    b = inputs.shape[0]
    if b % n:
        raise ValueError(f"micro_batches={n} does not divide the batch of {b} sequences")
    # micro-batch i takes rows i, i + n, i + 2n, ...: with the batch split over data-parallel
    # devices in blocks (n dividing each block), every device keeps its own share of every
    # micro-batch, so slicing one moves no data between devices
    split = lambda a: a.reshape((b // n, n) + a.shape[1:]).swapaxes(0, 1)  # noqa: E731

    def body(carry, xy):
        loss_sum, grad_sum = carry
        loss, grads = jax.value_and_grad(loss_of)(params, *xy)
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), grad_sum, grads)
        return (loss_sum + loss, grad_sum), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    with jax.named_scope("accumulation"):
        (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (split(inputs), split(targets)))
        grads = jax.tree.map(lambda g, p: (g / n).astype(p.dtype), grads, params)
    return loss / n, grads


def layout_train_step(graphdef, tx, layout: Layout, batch_size: int):
    """`train_step` bound for ``layout``: its micro-batches (``layout.accumulation_steps``) and,
    with ``master_fp32``, the cast of the fp32 master weights to ``param_dtype``."""
    cast = jax_dtype(layout.param_dtype) if layout.master_fp32 and layout.param_dtype != "fp32" else None
    return functools.partial(train_step, graphdef=graphdef, tx=tx,
                             micro_batches=layout.accumulation_steps(batch_size), param_dtype=cast)


def make_train_step(graphdef, tx):
    """`train_step` with the model graph and optimizer bound: f(params, opt_state, inputs, targets)."""
    return functools.partial(train_step, graphdef=graphdef, tx=tx)


def init_train_state(cfg: TransformerConfig, *, seed: int = 0, scan_layers: bool = False,
                     tx: optax.GradientTransformation | None = None, dtype=None,
                     layout: Layout | None = None) -> TrainState:
    """Initialise the model's parameters and the optimizer state (default `adamw()`).

    With a ``layout``: the model reads its attention and remat; ``dtype`` defaults to
    ``layout.dtype``; the parameters are stored in ``layout.param_dtype``, or in fp32 with
    ``master_fp32`` (the step then casts them; see `layout_train_step`).
    """
    tx = adamw() if tx is None else tx
    layout = Layout() if layout is None else layout
    dtype = jax_dtype(layout.dtype) if dtype is None else dtype
    model = Transformer(cfg, rngs=nnx.Rngs(seed), scan_layers=scan_layers, dtype=dtype, layout=layout)
    graphdef, params = nnx.split(model, nnx.Param)
    if not layout.master_fp32:
        store = jax_dtype(layout.param_dtype)
        params = jax.tree.map(lambda a: a.astype(store), params)
    return TrainState(graphdef, params, tx.init(params), tx)
