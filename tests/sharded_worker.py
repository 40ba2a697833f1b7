"""Run in a subprocess by tests/test_sharding.py, with 8 simulated CPU devices (the XLA flag
must be set before JAX starts): the sharded training step of every layout against the
single-device step, and the collectives of a few compiled programs. Prints one JSON object."""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from models import sharding  # noqa: E402
from models.config import TransformerConfig  # noqa: E402
from models.layout import Layout  # noqa: E402
from models.train import init_train_state, train_step  # noqa: E402


def layouts_of_8() -> list[str]:
    """Every (dp, fsdp, cp, tp) with product 8, and sequence parallelism wherever tp > 1."""
    out = []
    for dp in (1, 2, 4, 8):
        for fsdp in (1, 2, 4, 8):
            for cp in (1, 2, 4, 8):
                tp = 8 // (dp * fsdp * cp) if 8 % (dp * fsdp * cp) == 0 else 0
                if tp < 1:
                    continue
                lay = Layout(dp=dp, fsdp=fsdp, cp=cp, tp=tp)
                out.append(lay.to_string())
                if tp > 1:
                    out.append(lay.replace(sequence_parallel=True).to_string())
    return out


def equivalence() -> list[dict]:
    # GQA (kv heads 8 = tp max), gated MLP, biases, an untied head, a vocabulary tp=8 does not divide.
    cfg = TransformerConfig(vocab_size=60, d_model=32, n_layers=1, n_heads=8, d_ff=64, seq_len=16,
                            mlp="swiglu", norm="rmsnorm", position="rope", bias=True, tied_embeddings=False)
    # eps large against the gradients: Adam's first step is ~sign(g), which would turn float
    # round-off in a near-zero gradient into a full learning-rate difference
    tx = optax.adamw(1e-2, eps=1e-3)
    state = init_train_state(cfg, seed=0, tx=tx)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 17)), jnp.int32)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (the step donates its inputs)
    ref_params, _, ref_loss = train_step(copy(state.params), copy(state.opt_state), tokens[:, :-1],
                                         tokens[:, 1:], graphdef=state.graphdef, tx=tx)
    rows = []
    for text in layouts_of_8():
        lay = Layout.parse(text)
        mesh = sharding.make_mesh(lay, jax.devices()[: lay.chips])
        sharded = sharding.shard_train_state(state._replace(params=copy(state.params),
                                                            opt_state=copy(state.opt_state)), mesh, lay)
        step = sharding.sharded_train_step(sharded, mesh, lay)
        params, _, loss = step(sharded.params, sharded.opt_state, tokens[:, :-1], tokens[:, 1:])
        diff = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
        n_sharded = sum(1 for leaf in jax.tree.leaves(params)
                        if not leaf.sharding.is_fully_replicated)
        rows.append({"layout": text, "loss": float(loss), "ref_loss": float(ref_loss), "param_diff": diff,
                     "sharded_params": n_sharded})
    return rows


def tpu_collectives() -> list[dict]:
    """Closed form vs the TPU compiler (compile-only v5p, 8 chips) on two micro cases."""
    from jax.experimental import topologies

    from planner.validation import collective_report, compile_sharded_step

    devices = topologies.get_topology_desc("v5p:2x2x2", "tpu").devices
    cfg = TransformerConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=256, seq_len=32,
                            mlp="swiglu", norm="rmsnorm", position="rope", bias=False)
    opts = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
            "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
    out = []
    for text in ("tp=8", "fsdp=4,tp=2"):
        lay = Layout.parse(text)
        compiled, _ = compile_sharded_step(cfg, lay, batch_size=8, seq_len=32, devices=devices,
                                           compiler_options=opts)
        rep = collective_report(cfg, lay, compiled, batch_size=8, seq_len=32, where="tpu-v5p:2x2x2",
                                platform="tpu")
        out.append(rep.to_json())
    return out


if __name__ == "__main__":
    result = {"equivalence": equivalence()}
    if "--tpu" in sys.argv:
        result["tpu"] = tpu_collectives()
    print("RESULT " + json.dumps(result))
