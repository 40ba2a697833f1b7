"""The model on a device mesh: logical axes -> mesh axes, and a sharded training step.

`models.Transformer` names the logical axes of every parameter (NNX sharding metadata,
``out_sharding``). `RULES` maps each logical name to mesh axes, as data (MaxText keeps its
``logical_axis_rules`` in its base config the same way):

======== ============================================== ==========
logical  what it is                                     mesh axes
======== ============================================== ==========
vocab    rows of the embedding / columns of the head    tp (vocab-parallel; Megatron, Shoeybi et al. 2019 Sec. 3)
embed    d_model of every matrix (and the d_model biases) fsdp (ZeRO-3; Rajbhandari et al. 2020)
heads    query heads x head_dim (q, attn_out)           tp (Megatron attention)
kv_heads key/value heads x head_dim (k, v)              tp
mlp      the MLP's hidden width                         tp (Megatron MLP)
position rows of the learned position table             (replicated)
norm     norm scales and biases                         (replicated; their gradients are all-reduced)
expert   the expert dimension of the routed experts     the data axes ep covers (`expert_axes`; GShard, Lepikhin et al. 2020 §3.2)
======== ============================================== ==========

Expert parallelism reuses the data-parallel chips (``Layout.ep`` divides dp x fsdp): the expert
dimension of ``w_in``/``w_gate``/``w_out`` is split over the data axes whose degrees multiply
to ep (fsdp, dp, or both). A mesh axis splits one dimension of a parameter at most, so an
expert weight split over fsdp keeps its d_model whole there. With a capacity factor
(`models.moe` dense dispatch) the dispatched tokens (batch, expert, slot, d_model) move from
the batch split to the expert split and back: the dispatch and combine all-to-alls.

Activations: the batch over ``("dp", "fsdp")``, the sequence over ``cp`` (and over ``tp`` in
the residual stream with ``sequence_parallel``, Korthikanti et al. 2022 Sec. 4.2.2), keys and
values gathered over ``cp`` for attention, the logits over ``tp`` (vocab-parallel).

`make_mesh` builds the mesh of a `Layout`, `shard_train_state` places the parameters and the
optimizer state, and `sharded_train_step` returns the jitted step with its input and output
shardings (``pp`` is not implemented in the model: a layout with pp > 1 raises).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models.layout import MESH_DEGREES, Layout

#: Logical parameter axis -> mesh axes (in order). Degrees of 1 are dropped per layout.
RULES: dict[str, tuple[str, ...]] = {
    "vocab": ("tp",),
    "embed": ("fsdp",),
    "heads": ("tp",),
    "kv_heads": ("tp",),
    "mlp": ("tp",),
    "position": (),
    "norm": (),
    "expert": ("ep",),  # resolved per layout by expert_axes: ep reuses data axes
}

#: The mesh axes the batch is split over (data parallel, replicated or sharded state).
BATCH_AXES = ("dp", "fsdp")


def mesh_axes(logical: str | None, layout: Layout, rules: dict[str, tuple[str, ...]] = RULES,
              size=None) -> tuple[str, ...]:
    """The mesh axes (of degree > 1 in ``layout``) that logical axis ``logical`` is split over.

    With ``size`` (an int), an axis whose degree does not divide what is left of the dimension
    is dropped: that dimension stays whole on it (e.g. a vocabulary of 251 over tp=2 is
    replicated, not padded). A relaxed (float) size is assumed to divide."""
    if logical is None:
        return ()
    if logical not in rules:
        raise ValueError(f"logical axis {logical!r} has no rule; known: {', '.join(rules)}")
    names = rules[logical]
    if "ep" in names:  # not a mesh axis: the data axes the expert dimension is split over
        names = tuple(x for a in names for x in (expert_axes(layout) if a == "ep" else (a,)))
    out = []
    for a in names:
        g = getattr(layout, a)
        if g == 1:
            continue
        if isinstance(size, int):
            if size % g:
                continue
            size //= g
        out.append(a)
    return tuple(out)


def logical_to_spec(names: tuple[str | None, ...], layout: Layout, shape: tuple[int, ...] | None = None,
                    rules: dict[str, tuple[str, ...]] = RULES) -> P:
    """A PartitionSpec for a parameter with logical axes ``names`` (and, given, its ``shape``:
    dimensions a degree does not divide stay whole). A stacked parameter (``scan_layers``: one
    more leading dimension than names) keeps its layer axis unsplit."""
    lead = 0 if shape is None else len(shape) - len(names)
    sizes = [None] * len(names) if shape is None else list(shape[lead:])
    parts, used = [], set()
    for n, size in zip(names, sizes):  # a mesh axis splits one dimension at most (experts first)
        axes = tuple(a for a in mesh_axes(n, layout, rules, size) if a not in used)
        used.update(axes)
        parts.append(_one(axes))
    return P(*([None] * lead + parts))


def expert_axes(layout: Layout) -> tuple[str, ...]:
    """The mesh axes the expert dimension is split over: the data axes (fsdp, dp, or both)
    whose degrees multiply to ``layout.ep``; () for ep = 1.

    Raises:
      ValueError: ep is not the degree of fsdp, of dp, or of both (the sharded model splits the
        experts over whole mesh axes).
    """
    if layout.ep == 1:
        return ()
    for axes in (("fsdp",), ("dp",), ("dp", "fsdp")):
        if int(np.prod([getattr(layout, a) for a in axes])) == layout.ep and all(
                getattr(layout, a) > 1 for a in axes):
            return axes
    raise ValueError(f"Layout ep={layout.ep} with dp={layout.dp}, fsdp={layout.fsdp}: the sharded model "
                     "splits the experts over whole data axes; set ep to fsdp, dp or dp * fsdp")


def _one(axes: tuple[str, ...]):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def param_specs(params, layout: Layout, rules: dict[str, tuple[str, ...]] = RULES):
    """PartitionSpecs for an `nnx.State` of parameters (read from their ``out_sharding``
    metadata); a parameter without names is replicated."""
    def spec(var):
        names = var.get_metadata().get("out_sharding") or ()
        return logical_to_spec(tuple(names), layout, tuple(np.shape(var.get_value())), rules)

    from flax import nnx

    return jax.tree.map(spec, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ----------------------------------------------------------------------------- the mesh
def make_mesh(layout: Layout, devices=None) -> Mesh:
    """The mesh of ``layout``: axes ``MESH_DEGREES`` (pp, dp, fsdp, cp, tp; tp innermost, so
    tensor-parallel groups are neighbours), over ``devices`` (default ``jax.devices()``, whose
    count must equal ``layout.chips``)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != layout.chips:
        raise ValueError(f"layout {layout.to_string() or '(default)'} needs {layout.chips} devices, "
                         f"got {len(devices)}; pass that many devices or change the degrees")
    shape = tuple(getattr(layout, a) for a in MESH_DEGREES)
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_DEGREES)


# ----------------------------------------------------------------------------- activations
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Layout] | None] = contextvars.ContextVar("sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, layout: Layout):
    """While tracing inside this context, `constrain` pins the model's activations to the layout."""
    token = _ACTIVE.set((mesh, layout))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def activation_spec(kind: str, layout: Layout) -> P:
    """PartitionSpec of a named activation under ``layout``.

    - "residual" (batch, seq, d_model): batch over dp/fsdp, seq over cp (and tp with
      sequence_parallel);
    - "block_input" (batch, seq, d_model): the normed input of attention and of the MLP, whole
      over tp (with sequence_parallel: all-gathered here, Korthikanti et al. 2022, Fig. 5);
    - "hidden" (batch, seq, width): the attention output before ``attn_out`` and the MLP's
      hidden units, split over tp (Megatron's column-parallel outputs);
    - "query" (batch, seq, kv, groups, head_dim): seq over cp, kv heads over tp;
    - "kv" (batch, seq, kv, head_dim): the whole sequence (gathered over cp), kv heads over tp;
    - "logits" (batch, seq, vocab): seq over cp, vocab over tp;
    - "table" (vocab, d_model): the embedding table as the lookup and the tied head read it:
      gathered over fsdp, vocabulary over tp.
    """
    batch = _one(tuple(a for a in BATCH_AXES if getattr(layout, a) > 1))
    cp = "cp" if layout.cp > 1 else None
    tp = "tp" if layout.tp > 1 else None
    if kind == "residual":
        seq = _one(tuple(a for a in ("cp", "tp") if getattr(layout, a) > 1
                         and (a == "cp" or layout.sequence_parallel)))
        return P(batch, seq, None)
    if kind == "block_input":  # the normed input of attention and MLP: whole over tp
        return P(batch, cp, None)
    if kind == "hidden":  # heads x head_dim before attn_out, the MLP's hidden units: over tp
        return P(batch, cp, tp)
    if kind == "query":
        return P(batch, cp, tp, None, None)
    if kind == "kv":
        return P(batch, None, tp, None)
    if kind == "logits":
        return P(batch, cp, tp)
    if kind == "table":
        return P(tp, None)
    if kind == "dispatch_groups":  # (batch, expert, slot, d_model): split by sequence, as the tokens
        return P(batch, None, None, None)
    if kind == "dispatch_experts":  # the same tensor split by expert (the all-to-all's other side)
        ep = expert_axes(layout)
        rest = _one(tuple(a for a in BATCH_AXES if getattr(layout, a) > 1 and a not in ep))
        return P(rest, _one(ep), None, None)
    raise ValueError(f"activation kind {kind!r} unknown; valid: residual, block_input, hidden, query, kv, logits, "
                     "table, dispatch_groups, dispatch_experts")


def active_mesh() -> tuple[Mesh, Layout] | None:
    """The (mesh, layout) of the enclosing `activation_sharding`, or None outside one."""
    return _ACTIVE.get()


def constrain(x: jax.Array, kind: str) -> jax.Array:
    """``with_sharding_constraint`` of activation ``kind`` inside `activation_sharding`; else x."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, layout = active
    spec = activation_spec(kind, layout)
    # a dimension a degree does not divide (an odd vocabulary over tp) stays whole
    parts = []
    for size, part in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
        axes = () if part is None else ((part,) if isinstance(part, str) else tuple(part))
        deg = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        parts.append(part if size % deg == 0 else None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*parts)))


# ----------------------------------------------------------------------------- the step
def batch_spec(layout: Layout) -> P:
    """Tokens (batch, seq): batch over dp/fsdp, seq over cp."""
    batch = _one(tuple(a for a in BATCH_AXES if getattr(layout, a) > 1))
    return P(batch, "cp" if layout.cp > 1 else None)


def _check(layout: Layout) -> None:
    if layout.pp > 1:
        raise ValueError(f"pp={layout.pp}: pipeline stages are not implemented in the sharded model; "
                         "use pp=1 (the closed form planner.collectives covers pp)")


def state_shardings(state, mesh: Mesh, layout: Layout, rules: dict[str, tuple[str, ...]] = RULES):
    """NamedShardings of a `models.train.TrainState`'s params and opt_state: every optimizer
    leaf shaped like a parameter follows that parameter (optax's moments mirror the params
    tree); scalars (the step count) are replicated."""
    specs = param_specs(state.params, layout, rules)
    by_shape = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        by_shape[_path_key(path)] = leaf
    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    flat_specs = {_path_key(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs)}

    def opt_leaf(path, leaf):
        key = _path_key(path)
        # an optimizer leaf mirrors a parameter when its path ends with that parameter's path
        for pkey, spec in flat_specs.items():
            if key[-len(pkey):] == pkey and np.shape(leaf) == np.shape(by_shape[pkey]):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    if layout.optimizer_sharding and layout.dp > 1:
        inner = opt_leaf

        def opt_leaf(path, leaf):  # noqa: F811 - ZeRO-1: the state also split over dp
            sh = inner(path, leaf)
            return NamedSharding(mesh, zero1_spec(sh.spec, np.shape(leaf), layout))

    opt_sh = jax.tree_util.tree_map_with_path(opt_leaf, state.opt_state)
    return param_sh, opt_sh


def zero1_spec(spec: P, shape: tuple[int, ...], layout: Layout) -> P:
    """ZeRO-1 (Rajbhandari et al. 2020, Sec. 5.1; Megatron's distributed optimizer): an optimizer
    leaf's PartitionSpec with ``dp`` added to its first dimension that ``dp`` divides (after the
    axes already on it); a leaf no dimension of which divides stays as it was."""
    parts = list(spec) + [None] * (len(shape) - len(spec))
    for i, (size, part) in enumerate(zip(shape, parts)):
        axes = () if part is None else ((part,) if isinstance(part, str) else tuple(part))
        local = size // int(np.prod([getattr(layout, a) for a in axes])) if axes else size
        if local % layout.dp == 0:
            parts[i] = _one(axes + ("dp",))
            return P(*parts)
    return spec


def _path_key(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(x for x in out if x != "value")


def shard_train_state(state, mesh: Mesh, layout: Layout, rules: dict[str, tuple[str, ...]] = RULES):
    """``state`` (a `TrainState`) with params and opt_state placed on ``mesh`` by the rules."""
    _check(layout)
    param_sh, opt_sh = state_shardings(state, mesh, layout, rules)
    return state._replace(params=jax.device_put(state.params, param_sh),
                          opt_state=jax.device_put(state.opt_state, opt_sh))


def sharded_train_step(state, mesh: Mesh, layout: Layout, rules: dict[str, tuple[str, ...]] = RULES,
                       *, donate: bool = True, micro_batches: int = 1):
    """The jitted training step of `models.train` on ``mesh``:
    f(params, opt_state, inputs, targets) -> (params, opt_state, loss), with input and output
    shardings from the rules (tokens: `batch_spec`) and the activation constraints of
    `activation_spec` applied while tracing. ``micro_batches`` > 1 accumulates the gradient
    over that many slices of each device's batch (`models.train.train_step`)."""
    from models.train import train_step

    _check(layout)
    param_sh, opt_sh = state_shardings(state, mesh, layout, rules)
    tok = NamedSharding(mesh, batch_spec(layout))
    body = train_step.__wrapped__ if hasattr(train_step, "__wrapped__") else train_step

    def step(params, opt_state, inputs, targets):
        with activation_sharding(mesh, layout):
            return body(params, opt_state, inputs, targets, graphdef=state.graphdef, tx=state.tx,
                        micro_batches=micro_batches)

    return jax.jit(step, in_shardings=(param_sh, opt_sh, tok, tok),
                   out_shardings=(param_sh, opt_sh, NamedSharding(mesh, P())),
                   donate_argnums=(0, 1) if donate else ())


def lower_sharded_step(cfg, layout: Layout, *, batch_size: int, seq_len: int, devices=None,
                       dtype: Any = None, scan_layers: bool = False, rules: dict[str, tuple[str, ...]] = RULES):
    """Lower the sharded training step from `jax.ShapeDtypeStruct`s only (nothing allocated):
    what the compile-only targets and the collective validation compile."""
    import jax.numpy as jnp
    from flax import nnx

    from models.train import TrainState, abstract_model, adamw

    _check(layout)
    dtype = jnp.float32 if dtype is None else dtype
    layout.check(cfg, batch_size=batch_size, seq_len=seq_len)
    mesh = make_mesh(layout, devices)
    graphdef, params = nnx.split(abstract_model(cfg, scan_layers=scan_layers, dtype=dtype, layout=layout), nnx.Param)
    tx = adamw()
    state = TrainState(graphdef, params, jax.eval_shape(tx.init, params), tx)
    step = sharded_train_step(state, mesh, layout, rules, donate=True,
                              micro_batches=layout.accumulation_steps(batch_size))
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    return step.lower(state.params, state.opt_state, tokens, tokens), mesh

