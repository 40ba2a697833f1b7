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


def run_sharded(state, tokens, lay: Layout):
    """Shard a copy of ``state`` over ``lay``'s mesh, compile its step once and run it on
    ``tokens`` (inputs and next-token targets): (sharded state, compiled step, its outputs)."""
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (the step donates its inputs)
    mesh = sharding.make_mesh(lay, jax.devices()[: lay.chips])
    sharded = sharding.shard_train_state(state._replace(params=copy(state.params),
                                                        opt_state=copy(state.opt_state)), mesh, lay)
    step = sharding.sharded_train_step(sharded, mesh, lay)
    compiled = step.lower(sharded.params, sharded.opt_state, tokens[:, :-1], tokens[:, 1:]).compile()
    return sharded, compiled, compiled(sharded.params, sharded.opt_state, tokens[:, :-1], tokens[:, 1:])


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
        # one compile: run the compiled program, and read its per-device dots
        sharded, compiled, (params, _, loss) = run_sharded(state, tokens, lay)
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
    # with remat the sharded step recomputes: the collectives a recomputed layer runs again
    # (planner.collectives.recomputed_tp_collectives; a rematerialised last layer's weights
    # gathered again under FSDP)
    for text in ("fsdp=4,tp=2", "dp=4,tp=2,remat=full", "fsdp=4,tp=2,sequence_parallel=true,remat=full",
                 "fsdp=8,remat=dots"):
        lay = Layout.parse(text)
        compiled, _ = compile_sharded_step(cfg, lay, batch_size=8, seq_len=32, devices=devices,
                                           compiler_options=opts)
        rep = collective_report(cfg, lay, compiled.as_text(), batch_size=8, seq_len=32, where="tpu-v5p:2x2x2",
                                platform="tpu")
        out.append(rep.to_json())
    return out


#: (model, layout) pairs the suite runs: latent attention and a sigmoid-routed MoE with dense
#: dispatch (its all-to-alls), experts over fsdp beside dp and tp. `--moe-all` runs the
#: dropless, capacity and latent-attention models on every layout of `MOE_LAYOUTS`.
MOE_CASES = (("capacity_mla", "dp=2,fsdp=2,tp=2,ep=2"),)
MOE_LAYOUTS = ("fsdp=8,ep=8", "dp=2,fsdp=2,tp=2,ep=2", "dp=2,fsdp=4,ep=8")


def moe_equivalence(cases=MOE_CASES) -> list[dict]:
    """The sharded step of a micro MoE (and latent attention) against the single-device step."""
    base = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=32, seq_len=16,
                             mlp="swiglu", norm="rmsnorm", position="rope", bias=False, n_experts=8,
                             experts_per_token=2, d_ff_expert=16, n_shared_experts=1, dense_layers=1)
    cfgs = {"dropless": base, "capacity": base.replace(capacity_factor=1.5),
            "mla": base.replace(attention_kind="mla", kv_lora_rank=16, qk_rope_head_dim=4, head_dim=8,
                                router="sigmoid")}
    # one MoE layer (the suite's case; the dense MLP's sharding is the dense equivalence's)
    cfgs["capacity_mla"] = cfgs["mla"].replace(capacity_factor=1.5, n_layers=1, dense_layers=0)
    tx = optax.adamw(1e-2, eps=1e-3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 17)), jnp.int32)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
    rows = []
    for kind, cfg in cfgs.items():
        layouts = [lay for k, lay in cases if k == kind]
        if not layouts:
            continue
        state = init_train_state(cfg, seed=0, tx=tx)
        _, _, ref_loss = train_step(copy(state.params), copy(state.opt_state), tokens[:, :-1], tokens[:, 1:],
                                    graphdef=state.graphdef, tx=tx)
        for text in layouts:
            lay = Layout.parse(text)
            sharded, compiled, (_, _, loss) = run_sharded(state, tokens, lay)
            w_in = sharded.params["layers"][cfg.n_layers - 1]["mlp"]["w_in"]
            text_hlo = compiled.as_text()
            from planner.flops import per_device_dot_flops
            from planner.hlo import parse_hlo

            dots = (parse_hlo(text_hlo).dot_flops, int(per_device_dot_flops(cfg, lay, batch_size=8, seq_len=16)))
            rows.append({"kind": kind, "layout": text, "loss": float(loss), "ref_loss": float(ref_loss), "dots": dots,
                         "w_in_spec": str(w_in.sharding.spec),
                         "w_in_shard": list(w_in.sharding.shard_shape(w_in.shape)),
                         "all_to_all": text_hlo.count(" all-to-all(")})
            print(f"moe {kind} {text}: loss {float(loss):.7f} (1 device {float(ref_loss):.7f}) "
                  f"w_in {w_in.sharding.spec} a2a {rows[-1]['all_to_all']} dots {dots}", file=sys.stderr, flush=True)
    return rows


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
    if "--moe" in sys.argv or "--moe-all" in sys.argv:
        cases = ([(k, lay) for k in ("dropless", "capacity", "mla") for lay in MOE_LAYOUTS]
                 if "--moe-all" in sys.argv else MOE_CASES)
        print("RESULT " + json.dumps({"moe": moe_equivalence(cases)}))
        sys.exit(0)
    result = {"equivalence": equivalence(layouts_of_8() if "--all" in sys.argv else TEST_LAYOUTS)}
    if "--tpu" in sys.argv:
        result["tpu"] = tpu_collectives()
    if "--grid" in sys.argv:
        result["grid"] = grid_collectives()
    print("RESULT " + json.dumps(result))
