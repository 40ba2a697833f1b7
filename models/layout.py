"""How one training step is executed: the second config type, beside `TransformerConfig`.

`TransformerConfig` says *what* the model is; `Layout` says *how* a step of it runs: which
activations are recomputed, which attention kernel, how many sequences per micro-batch, which
precisions, and how the step is split over a device mesh. The Flax model reads it (remat,
attention, mesh axes), the closed forms read it (recomputed FLOPs, memory per chip,
collectives), and the layout search enumerates it.

Mesh degrees multiply to the chip count (`Layout.chips`):

- ``dp``: replicated data parallelism (each chip holds all parameters);
- ``fsdp``: data parallelism with parameters, gradients and optimizer state sharded (ZeRO-3;
  Rajbhandari et al. 2020, "ZeRO", Sec. 5);
- ``tp``: Megatron tensor parallelism over heads and the MLP's hidden width (Shoeybi et al.
  2019, Sec. 3), with ``sequence_parallel`` sharding norms and residuals over the same axis
  (Korthikanti et al. 2022, Sec. 4.2.2);
- ``cp``: context parallelism, the sequence split over chips;
- ``pp``: pipeline stages, with ``virtual_stages`` model chunks per stage for the interleaved
  schedule (Narayanan et al. 2021, Sec. 2.2);
- ``ep``: expert parallelism (mixture-of-experts layers only; it shares chips with the data
  degrees, so it does not multiply the chip count).

``optimizer_sharding`` shards the optimizer state over ``dp`` (ZeRO-1; Megatron's distributed
optimizer).

Example:
  >>> lay = Layout.parse("fsdp=4,tp=2,sequence_parallel=true,remat=selective")
  >>> lay.chips, lay.tp, lay.remat
  (8, 2, 'selective')
  >>> Layout.parse(lay.to_string()) == lay
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

REMAT_POLICIES = ("none", "full", "selective", "dots")
ATTENTION_KINDS = ("dot", "flash")
#: Flash-attention kernels (models.flash.FLASH_KERNELS): the model's blockwise JAX kernel, or the
#: Pallas TPU kernel.
FLASH_KERNELS = ("jax", "pallas")
DTYPES = ("fp32", "bf16", "fp16", "fp8")
PIPELINE_SCHEDULES = ("1f1b", "gpipe", "interleaved")

#: Mesh degrees, in the order the mesh axes are laid out (outermost first).
MESH_DEGREES = ("pp", "dp", "fsdp", "cp", "tp")
_INT_FIELDS = MESH_DEGREES + ("virtual_stages", "micro_batch", "ep")
_BOOL_FIELDS = ("sequence_parallel", "optimizer_sharding", "master_fp32", "tp_overlap", "dp_overlap", "ep_overlap")
_CHOICE_FIELDS = {
    "remat": REMAT_POLICIES,
    "attention": ATTENTION_KINDS,
    "flash_kernel": FLASH_KERNELS,
    "dtype": DTYPES,
    "param_dtype": DTYPES,
    "schedule": PIPELINE_SCHEDULES,
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """The execution of one training step: recomputation, kernels, precision, mesh degrees.

    Args:
      remat: "none" (autodiff keeps every residual), "full" (each layer keeps only its
        input and is recomputed in the backward pass), "selective" (recompute only the
        attention scores, softmax and score-value product; Korthikanti et al. 2022, Sec. 5),
        "dots" (keep matmul outputs, recompute the elementwise work; JAX's
        ``checkpoint_policies.dots_with_no_batch_dims_saveable``).
      attention: "dot" (materialised s x s scores) or "flash" (blockwise, online softmax,
        recomputed in the backward pass; Dao et al. 2022).
      micro_batch: sequences per forward/backward pass on one data-parallel replica; None =
        the whole per-replica batch in one pass (no gradient accumulation).
      dtype: compute dtype of the matmuls and activations ("fp8" = fp8 matmuls, where the
        chip publishes an fp8 peak).
      param_dtype: dtype the parameters are stored in.
      master_fp32: keep an fp32 master copy of the weights beside 16-bit parameters.
      dp, fsdp, tp, cp, pp: mesh degrees (see the module docstring).
      sequence_parallel: shard norms and residuals over ``tp`` (needs tp > 1 to matter).
      virtual_stages: model chunks per pipeline stage (interleaved 1F1B when > 1).
      schedule: pipeline schedule: "1f1b", "gpipe", or "interleaved" (needs virtual_stages > 1).
      optimizer_sharding: ZeRO-1 over ``dp``: optimizer state (and fp32 master) sharded.
      ep: expert-parallel degree, for mixture-of-experts layers; must divide dp * fsdp.
      tp_overlap: the tensor-parallel collectives run concurrently with the layer's matmuls
        (XLA's async collectives / collective matmul on TPU, Transformer Engine's userbuffers
        on GPU); otherwise they sit on the critical path, as in Megatron-LM 2021-2022.
      dp_overlap: the data-parallel gradient reduction is bucketed and overlapped with the
        backward pass (PyTorch DDP buckets, Megatron-core ``overlap_grad_reduce``); otherwise it
        runs after the backward pass.
      flash_kernel: with attention="flash", the kernel: "jax" (`models.flash`, blockwise JAX,
        runs anywhere) or "pallas" (JAX's Pallas TPU kernel; TPU backends only, including the
        compile-only libtpu target).
      ep_overlap: the expert all-to-alls run concurrently with other micro-batches' compute
        (DeepSeek-V3's DualPipe, arXiv:2412.19437 §3.2.1); otherwise they sit on the critical
        path between the router and the experts.
    """

    remat: str = "none"
    attention: str = "dot"
    micro_batch: int | None = None
    dtype: str = "fp32"
    param_dtype: str = "fp32"
    master_fp32: bool = False
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    cp: int = 1
    pp: int = 1
    sequence_parallel: bool = False
    virtual_stages: int = 1
    schedule: str = "1f1b"
    optimizer_sharding: bool = False
    ep: int = 1
    tp_overlap: bool = False
    dp_overlap: bool = False
    flash_kernel: str = "jax"
    ep_overlap: bool = False

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if name == "micro_batch" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                hint = " or None" if name == "micro_batch" else ""
                raise ValueError(f"Layout {name}={value!r}: must be a positive int{hint}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Layout {name}={getattr(self, name)!r}: must be True or False")
        for name, valid in _CHOICE_FIELDS.items():
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"Layout {name}={value!r}: unknown; valid: {', '.join(valid)}")
        if self.schedule == "interleaved" and self.virtual_stages < 2:
            raise ValueError(
                f"Layout schedule='interleaved' needs virtual_stages >= 2 (got {self.virtual_stages})"
            )
        if self.flash_kernel != "jax" and self.attention != "flash":
            raise ValueError(f"Layout flash_kernel={self.flash_kernel!r} needs attention='flash' "
                             f"(got attention={self.attention!r}); add attention=flash or drop flash_kernel")
        if self.virtual_stages > 1 and self.pp == 1:
            raise ValueError(f"Layout virtual_stages={self.virtual_stages} needs pp > 1")
        if (self.dp * self.fsdp) % self.ep != 0:
            raise ValueError(
                f"Layout ep={self.ep}: must divide dp * fsdp = {self.dp * self.fsdp} "
                "(experts are sharded over the data-parallel chips)"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def chips(self) -> int:
        """Chips in the mesh: the product of the mesh degrees (``ep`` reuses data chips)."""
        return self.pp * self.dp * self.fsdp * self.cp * self.tp

    @property
    def data_parallel(self) -> int:
        """Replicas the global batch is split over: dp x fsdp."""
        return self.dp * self.fsdp

    @property
    def mesh_shape(self) -> dict[str, int]:
        """Mesh axis name -> degree, outermost first (degrees of 1 included)."""
        return {name: getattr(self, name) for name in MESH_DEGREES}

    def replace(self, **changes: Any) -> Layout:
        """A copy with some fields changed (validated again). Unknown field: ValueError."""
        unknown = sorted(set(changes) - set(layout_fields()))
        if unknown:
            raise ValueError(f"unknown Layout field(s) {unknown}; valid: {', '.join(layout_fields())}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ checks against a model
    def check(self, cfg, *, batch_size: int | None = None, seq_len: int | None = None,
              uneven_stages: bool = False) -> None:
        """Raise ValueError naming what this layout cannot split in ``cfg`` (concrete shapes only).

        Heads and KV heads by ``tp``; ``d_ff`` by ``tp``; layers by ``pp x virtual_stages``;
        the batch by the data degrees (and by ``micro_batch`` per replica); the sequence by
        ``cp`` (and by ``tp`` with sequence parallelism); the experts by ``ep``.
        ``uneven_stages`` drops the layer rule (stages of different depths, as DeepSeek-V3's 61
        layers on 16 stages).
        """
        if getattr(cfg, "relaxed", False):
            return
        rules = [
            ("n_heads", cfg.n_heads, self.tp, "tp"),
            ("n_kv_heads", cfg.resolved_n_kv_heads, self.tp, "tp"),
            ("d_ff", cfg.d_ff, self.tp, "tp"),
        ]
        if not uneven_stages:
            rules.append(("n_layers", cfg.n_layers, self.pp * self.virtual_stages, "pp x virtual_stages"))
        if getattr(cfg, "is_moe", False):
            rules += [("n_experts", cfg.n_experts, self.ep, "ep"),
                      ("d_ff_expert", cfg.resolved_d_ff_expert, self.tp, "tp")]
            if cfg.dense_layers == 0:
                rules = [r for r in rules if r[0] != "d_ff"]  # no dense MLP to split
        elif self.ep > 1:
            raise ValueError(f"Layout ep={self.ep}: expert parallelism needs a mixture of experts "
                             "(n_experts set); use ep=1 for a dense model")
        if batch_size is not None:
            rules.append(("batch_size", batch_size, self.data_parallel, "dp x fsdp"))
        if seq_len is not None:
            rules.append(("seq_len", seq_len, self.cp, "cp"))
            if self.sequence_parallel:
                rules.append(("seq_len", seq_len, self.cp * self.tp, "cp x tp (sequence parallel)"))
        for name, value, degree, what in rules:
            if value % degree != 0:
                raise ValueError(f"{name}={value} is not divisible by {what}={degree}; "
                                 f"choose a layout whose {what} divides {value}")
        if batch_size is not None and self.micro_batch is not None:
            per_replica = batch_size // self.data_parallel
            if per_replica % self.micro_batch != 0:
                raise ValueError(
                    f"micro_batch={self.micro_batch} does not divide the per-replica batch "
                    f"{per_replica} (batch_size {batch_size} / dp x fsdp {self.data_parallel})"
                )

    def accumulation_steps(self, batch_size: int) -> int:
        """Micro-batches per step on one replica: per-replica batch / micro_batch (1 if None)."""
        per_replica = batch_size // self.data_parallel
        return 1 if self.micro_batch is None else max(1, per_replica // self.micro_batch)

    # ------------------------------------------------------------------ the CLI form
    @classmethod
    def parse(cls, text: str) -> Layout:
        """``"fsdp=64,tp=8,sequence_parallel=true"`` -> Layout. Empty string: the default.

        Ints for the degrees and ``micro_batch`` (``micro_batch=none`` for None), true/false for
        the flags, names for the choices. A bad field or value raises ValueError naming it.
        """
        if not isinstance(text, str):
            raise ValueError(f"Layout.parse takes a string like 'fsdp=4,tp=2', got {text!r}")
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not raw:
                raise ValueError(f"layout item {item!r}: expected FIELD=VALUE (e.g. tp=2)")
            if key not in layout_fields():
                raise ValueError(f"layout field {key!r} is unknown; valid: {', '.join(layout_fields())}")
            if key in values:
                raise ValueError(f"layout field {key!r} is given twice")
            values[key] = _parse_value(key, raw)
        return cls(**values)

    def to_string(self) -> str:
        """The non-default fields as ``Layout.parse`` reads them."""
        default = Layout()
        parts = []
        for name in layout_fields():
            value = getattr(self, name)
            if value != getattr(default, name):
                parts.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
        return ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(key: str, raw: str) -> Any:
    if key in _BOOL_FIELDS:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"layout {key}={raw!r}: expected true or false")
    if key in _INT_FIELDS:
        if key == "micro_batch" and raw.lower() == "none":
            return None
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"layout {key}={raw!r}: expected a positive integer") from None
    return raw  # a choice, checked by __post_init__


def layout_fields() -> tuple[str, ...]:
    """The names of Layout's fields, in order."""
    return tuple(f.name for f in dataclasses.fields(Layout))
