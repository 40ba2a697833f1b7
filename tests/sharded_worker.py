"""Run in a subprocess by tests/test_sharding.py, with 8 simulated CPU devices (the XLA flag
must be set before JAX starts): the sharded training step of every layout against the
single-device step, and the collectives of a few compiled programs. Prints one JSON object."""

from __future__ import annotations

import json
import os
import sys
import time

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


#: The layouts the test suite runs (one of each degree, sequence parallelism with every other
#: degree, a 3-axis mesh); benchmarks/sharded_equivalence.py runs all of `layouts_of_8`.
TEST_LAYOUTS = ("fsdp=8", "tp=8", "dp=2,fsdp=2,tp=2,sequence_parallel=true", "fsdp=2,tp=2,cp=2",
                "dp=2,cp=4")


def equivalence(layouts=TEST_LAYOUTS) -> list[dict]:
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
    for text in layouts:
        t0 = time.time()
        lay = Layout.parse(text)
        mesh = sharding.make_mesh(lay, jax.devices()[: lay.chips])
        sharded = sharding.shard_train_state(state._replace(params=copy(state.params),
                                                            opt_state=copy(state.opt_state)), mesh, lay)
        step = sharding.sharded_train_step(sharded, mesh, lay)
        # one compile: run the compiled program, and read its per-device dots
        compiled = step.lower(sharded.params, sharded.opt_state, tokens[:, :-1], tokens[:, 1:]).compile()
        params, _, loss = compiled(sharded.params, sharded.opt_state, tokens[:, :-1], tokens[:, 1:])
        diff = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
        n_sharded = sum(1 for leaf in jax.tree.leaves(params)
                        if not leaf.sharding.is_fully_replicated)
        from planner.flops import per_device_dot_flops
        from planner.hlo import parse_hlo

        hlo_text = compiled.as_text()
        dots = (parse_hlo(hlo_text).dot_flops, per_device_dot_flops(cfg, lay, batch_size=8, seq_len=16))
        print(f"{text}: loss {float(loss):.7f} (1 device {float(ref_loss):.7f}), max |dparam| {diff:.2e}, "
              f"dots {dots[0]} / {dots[1]}, {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
        rows.append({"layout": text, "loss": float(loss), "ref_loss": float(ref_loss), "param_diff": diff,
                     "sharded_params": n_sharded, "dots": dots})
    return rows


def tpu_collectives() -> list[dict]:
    """Closed form vs the TPU compiler (compile-only v5p, 8 chips) on a micro fsdp x tp case."""
    from jax.experimental import topologies

    from planner.validation import collective_report, compile_sharded_step

    devices = topologies.get_topology_desc("v5p:2x2x2", "tpu").devices
    cfg = TransformerConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=256, seq_len=32,
                            mlp="swiglu", norm="rmsnorm", position="rope", bias=False)
    opts = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
            "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
    out = []
    for text in ("fsdp=4,tp=2",):
        lay = Layout.parse(text)
        compiled, _ = compile_sharded_step(cfg, lay, batch_size=8, seq_len=32, devices=devices,
                                           compiler_options=opts)
        rep = collective_report(cfg, lay, compiled.as_text(), batch_size=8, seq_len=32, where="tpu-v5p:2x2x2",
                                platform="tpu")
        out.append(rep.to_json())
    return out


#: Rows of benchmarks/collectives.py's grid (its shapes: d_model 128, 2 layers, 64 tokens) the
#: suite compiles on both targets: learned positions and d_model-wide biases under dp x fsdp x
#: tp (with XLA:GPU's second MLP gather), an odd vocabulary with tp and sequence parallelism,
#: and ZeRO-1.
GRID_ROWS = (
    ("gpt-bias", "dp=2,fsdp=2,tp=2"),
    ("odd-vocab", "fsdp=4,tp=2,sequence_parallel=true"),
    ("llama", "dp=4,tp=2,optimizer_sharding=true"),
)


def grid_configs() -> dict[str, TransformerConfig]:
    """The grid's configs (benchmarks/collectives.py `grid`)."""
    base = dict(vocab_size=256, d_model=128, n_layers=2, n_heads=8, d_ff=512, seq_len=64, mlp="swiglu",
                norm="rmsnorm", position="rope", bias=False, tied_embeddings=True)
    return {"llama": TransformerConfig(**base),
            "gpt-bias": TransformerConfig(**{**base, "mlp": "gelu", "norm": "layernorm", "position": "learned",
                                             "bias": True, "vocab_size": 250}),
            "odd-vocab": TransformerConfig(**{**base, "vocab_size": 251, "tied_embeddings": False,
                                              "n_kv_heads": 4, "mlp": "geglu"})}


def grid_collectives(targets=("tpu-v5p:2x2x2", "h100:8")) -> list[dict]:
    """Closed form vs the TPU and GPU compilers (compile-only, 8 chips) on `GRID_ROWS`."""
    from planner.targets import parse_target, target_devices
    from planner.validation import TPU_OPTIONS, collective_report, compile_sharded_step

    cfgs = grid_configs()
    out = []
    for name in targets:
        target = parse_target(name)
        devices = target_devices(target)
        for label, text in GRID_ROWS:
            t0 = time.time()
            lay = Layout.parse(text)
            compiled, _ = compile_sharded_step(cfgs[label], lay, batch_size=8, seq_len=64, devices=devices,
                                               compiler_options=TPU_OPTIONS if target.platform == "tpu" else None)
            rep = collective_report(cfgs[label], lay, compiled.as_text(), batch_size=8, seq_len=64,
                                    where=target.name, platform=target.platform)
            print(f"{name} {label} {text}: ok={rep.ok}, worst {100 * rep.max_rel_error:.2f}%, "
                  f"{time.time() - t0:.1f}s", file=sys.stderr, flush=True)
            out.append({**rep.to_json(), "target": name, "label": label, "layout": text})
    return out


if __name__ == "__main__":
    result = {"equivalence": equivalence(layouts_of_8() if "--all" in sys.argv else TEST_LAYOUTS)}
    if "--tpu" in sys.argv:
        result["tpu"] = tpu_collectives()
    if "--grid" in sys.argv:
        result["grid"] = grid_collectives()
    print("RESULT " + json.dumps(result))
