"""One chip as numbers with sources: `Spec`, and its TOML file format (`load`, `save`, `to_toml`).

Every number is per chip and dense (no 2:4 sparsity), and every number names where it came
from, because a wrong hard-coded peak is the most common MFU bug in public tools (nanoGPT PR
#464, torchtitan #668). For the same reason `Spec.peak` never falls back to
another dtype or another chip: asking for a dtype the chip does not publish is an error.

>>> spec = Spec(name="toy", peak_flops={"bf16": 1e14}, hbm_bytes=16e9, hbm_bandwidth=8e11,
...             interconnect="none", interconnect_bandwidth=1e10, domain_size=1,
...             inter_node_bandwidth=1e9,
...             sources={f: "made up, 2025-01" for f in Spec.required_sources({"bf16": 1.0})})
>>> spec.peak("bf16")
100000000000000.0
>>> spec.peak("fp8")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: toy has no 'fp8' peak: it lists bf16 only. Use one of those, or add peak_flops.fp8 ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tomllib
from pathlib import Path
from typing import Any

#: The dtypes a peak may be given for, and the names JAX spells them with.
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp8")
_DTYPE_NAMES: dict[str, str] = {
    "fp32": "fp32", "float32": "fp32", "f32": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
}

#: Fields that are positive, finite bytes or bytes/s (`domain_size` is a positive int).
FLOAT_FIELDS: tuple[str, ...] = (
    "hbm_bytes", "hbm_bandwidth", "interconnect_bandwidth", "inter_node_bandwidth",
)
NUMERIC_FIELDS: tuple[str, ...] = FLOAT_FIELDS + ("domain_size",)

#: The TPU families libtpu's compile-only topologies are named by ("v5p:2x2x1"), and the
#: chip configurations it accepts (``chip_config_name``; "megacore" fuses a v4 chip's two
#: TensorCores into one device; jax.experimental.topologies.get_topology_desc).
TPU_FAMILIES: tuple[str, ...] = ("v4", "v5p", "v5e", "v6e")
TPU_CHIP_CONFIGS: tuple[str, ...] = ("default", "megacore")

#: The fields of a GPU's compiler description, as XLA's ``stream_executor.GpuDeviceInfoProto``
#: names them (xla/stream_executor/device_description.proto), with their types. Memory size
#: and bandwidth come from the spec's ``hbm_bytes`` and ``hbm_bandwidth``; the CUDA grid
#: limits, the same for every compute capability >= 3.0, are fixed in `planner.targets`.
#: ``compute_capability`` is "major.minor", e.g. "9.0".
GPU_DEVICE_FIELDS: dict[str, type] = {
    "compute_capability": str,
    "core_count": int,  # streaming multiprocessors
    "fpus_per_core": int,  # FP32 CUDA cores per SM
    "clock_rate_ghz": float,  # boost clock
    "l2_cache_size": int,  # bytes
    "shared_memory_per_core": int,  # bytes per SM
    "shared_memory_per_block": int,  # bytes, without opt-in
    "shared_memory_per_block_optin": int,  # bytes, with opt-in
    "registers_per_core_limit": int,  # 32-bit registers per SM
    "registers_per_block_limit": int,
    "threads_per_core_limit": int,  # resident threads per SM
    "threads_per_block_limit": int,
    "threads_per_warp": int,
}


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _positive_float(owner: str, field: str, value: Any, unit: str) -> float:
    """`value` as a float if it is a positive finite number, else a ValueError naming it."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{owner}: {field} must be a positive finite number of {unit}, got {value!r}; "
            "give the chip's published figure (with its source)"
        )
    return float(value)


def dtype_key(dtype: str) -> str:
    """The peak key for a dtype name: "bf16" and JAX's "bfloat16" both give "bf16".

    >>> dtype_key("float32"), dtype_key("bf16")
    ('fp32', 'bf16')
    """
    key = _DTYPE_NAMES.get(str(dtype).lower())
    if key is None:
        raise ValueError(
            f"unknown dtype {dtype!r}; peaks are kept for {', '.join(DTYPES)} "
            f"(also spelled {', '.join(k for k in _DTYPE_NAMES if k not in DTYPES)})"
        )
    return key


@dataclasses.dataclass(frozen=True)
class Spec:
    """One chip: peak FLOP/s by dtype, memory, interconnect, and a source for every number.

    Attributes:
      name: canonical name, e.g. "h100-sxm".
      peak_flops: dense (no sparsity) FLOP/s per chip by dtype, keys among `DTYPES`.
      hbm_bytes: memory per chip in bytes (vendor "GB" read as 1e9 bytes).
      hbm_bandwidth: memory bandwidth per chip, bytes/s.
      interconnect: the fast chip-to-chip network: "ici-3d-torus", "ici-2d-torus", "nvlink",
        "infinity-fabric" or "none".
      interconnect_bandwidth: bytes/s per chip, one direction, summed over the chip's fast links
        (ICI links × per-link one-way figure; NVLink per-GPU one-way figure).
      domain_size: chips in one fast-interconnect domain (an NVLink node, a TPU pod).
      inter_node_bandwidth: bytes/s per chip between domains (NIC per GPU, TPU DCN per chip).
      sources: "source, date" for every numeric field, keyed by field name and by
        "peak_flops.<dtype>" for each peak. A "peak_flops.<dtype>" entry for a dtype the chip
        does not list may say why it is absent.
      aliases: other names `hardware.get` accepts (case-insensitive).
      tpu_topology: for a TPU, the family libtpu names its topologies by ("v5p" in
        "v5p:2x2x1"; one of `TPU_FAMILIES`); None for other chips.
      tpu_chip_config: libtpu's ``chip_config_name`` for one device per chip ("megacore" on
        v4, whose two TensorCores are otherwise two devices); None = libtpu's default.
      gpu_device: for a GPU, the device description XLA's GPU compiler needs to compile for it
        without the hardware (`GPU_DEVICE_FIELDS`), each field with a source under
        "gpu_device.<field>"; None for other chips.
    """

    name: str
    peak_flops: dict[str, float]
    hbm_bytes: float
    hbm_bandwidth: float
    interconnect: str
    interconnect_bandwidth: float
    domain_size: int
    inter_node_bandwidth: float
    sources: dict[str, str]
    aliases: tuple[str, ...] = ()
    tpu_topology: str | None = None
    tpu_chip_config: str | None = None
    gpu_device: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Spec: name must be a non-empty string, got {self.name!r}")
        who = f"Spec {self.name!r}"
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731

        if not isinstance(self.peak_flops, dict) or not self.peak_flops:
            raise ValueError(
                f"{who}: peak_flops must be a non-empty table of dtype -> FLOP/s, got "
                f"{self.peak_flops!r}; give at least bf16 (or fp32 for a CPU)"
            )
        peaks = {}
        for dtype, value in self.peak_flops.items():
            if dtype not in DTYPES:
                raise ValueError(
                    f"{who}: peak_flops has unknown dtype {dtype!r}; use {', '.join(DTYPES)}"
                )
            peaks[dtype] = _positive_float(who, f"peak_flops.{dtype}", value, "FLOP/s")
        set_("peak_flops", peaks)

        for field in FLOAT_FIELDS:
            unit = "bytes" if field == "hbm_bytes" else "bytes/s"
            set_(field, _positive_float(who, field, getattr(self, field), unit))
        if not isinstance(self.domain_size, int) or isinstance(self.domain_size, bool) \
                or self.domain_size < 1:
            raise ValueError(
                f"{who}: domain_size must be a positive integer number of chips, got "
                f"{self.domain_size!r}; use 1 for a chip with no fast interconnect"
            )
        if not isinstance(self.interconnect, str) or not self.interconnect.strip():
            raise ValueError(
                f"{who}: interconnect must be a non-empty string such as 'nvlink' or 'none', "
                f"got {self.interconnect!r}"
            )

        aliases = self.aliases
        if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
            raise ValueError(f"{who}: aliases must be a list of non-empty strings, got {aliases!r}")
        set_("aliases", tuple(aliases))

        if self.tpu_topology is not None and self.tpu_topology not in TPU_FAMILIES:
            raise ValueError(f"{who}: tpu_topology={self.tpu_topology!r}: unknown TPU family; "
                             f"valid: {', '.join(TPU_FAMILIES)}")
        if self.tpu_chip_config is not None:
            if self.tpu_topology is None:
                raise ValueError(f"{who}: tpu_chip_config needs tpu_topology (a TPU family)")
            if self.tpu_chip_config not in TPU_CHIP_CONFIGS:
                raise ValueError(f"{who}: tpu_chip_config={self.tpu_chip_config!r}: unknown; "
                                 f"valid: {', '.join(TPU_CHIP_CONFIGS)}")
        if self.gpu_device is not None:
            if self.tpu_topology is not None:
                raise ValueError(f"{who}: a chip has tpu_topology or gpu_device, not both")
            set_("gpu_device", _check_gpu_device(who, self.gpu_device))

        set_("sources", _check_sources(who, self.sources, peaks, self.gpu_device))

    @staticmethod
    def required_sources(peak_flops: dict[str, Any]) -> tuple[str, ...]:
        """The keys `sources` must have for a chip with these peaks.

        >>> Spec.required_sources({"bf16": 1.0})[:2]
        ('peak_flops.bf16', 'hbm_bytes')
        """
        return tuple(f"peak_flops.{d}" for d in DTYPES if d in peak_flops) + NUMERIC_FIELDS

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype` ("fp32", "bf16", "fp8"; JAX's "bfloat16" etc. too).

        Raises:
          ValueError: the chip publishes no peak for that dtype (the message lists those it
            has). There is no fallback to another dtype or another chip.
        """
        key = dtype_key(dtype)
        if key not in self.peak_flops:
            note = self.sources.get(f"peak_flops.{key}")
            raise ValueError(
                f"{self.name} has no {key!r} peak: it lists {', '.join(self.peak_flops)} only"
                + (f" (its spec file says: {note})" if note else "")
                + f". Use one of those, or add peak_flops.{key} with its source to the spec file."
            )
        return self.peak_flops[key]

    def __hash__(self) -> int:
        # The dict fields make the generated hash fail; hash their items instead, so a Spec can
        # be a dict key or a static argument of jax.jit. Treat a Spec's dicts as read-only.
        return hash((
            self.name, tuple(sorted(self.peak_flops.items())), self.hbm_bytes, self.hbm_bandwidth,
            self.interconnect, self.interconnect_bandwidth, self.domain_size,
            self.inter_node_bandwidth, tuple(sorted(self.sources.items())), self.aliases,
            self.tpu_topology, self.tpu_chip_config,
            tuple(sorted((self.gpu_device or {}).items())),
        ))


def _check_gpu_device(who: str, device: Any) -> dict[str, Any]:
    """`device` as a dict if it has every `GPU_DEVICE_FIELDS` entry, typed and positive."""
    if not isinstance(device, dict):
        raise ValueError(f"{who}: gpu_device must be a table of field -> value, got {device!r}")
    missing = [f for f in GPU_DEVICE_FIELDS if f not in device]
    unknown = [f for f in device if f not in GPU_DEVICE_FIELDS]
    if missing or unknown:
        raise ValueError(
            f"{who}: gpu_device " + (f"lacks {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "") + (f"has unknown {', '.join(unknown)}" if unknown else "")
            + f"; its fields are {', '.join(GPU_DEVICE_FIELDS)}"
        )
    out: dict[str, Any] = {}
    for field, kind in GPU_DEVICE_FIELDS.items():
        value = device[field]
        if kind is str:
            parts = value.split(".") if isinstance(value, str) else []
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"{who}: gpu_device.{field}={value!r}: give 'major.minor', e.g. '9.0'")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{who}: gpu_device.{field}={value!r}: must be a positive integer")
        else:
            value = _positive_float(who, f"gpu_device.{field}", value, "GHz")
        out[field] = value
    return out


def _check_sources(who: str, sources: Any, peaks: dict[str, float],
                   gpu_device: dict[str, Any] | None = None) -> dict[str, str]:
    """`sources` as a dict, if it names a non-empty source for every number and no unknown key."""
    if not isinstance(sources, dict):
        raise ValueError(
            f"{who}: sources must be a table of field -> 'source, date', got {sources!r}"
        )
    gpu_keys = tuple(f"gpu_device.{f}" for f in (gpu_device or {}))
    for field in Spec.required_sources(peaks) + gpu_keys:
        text = sources.get(field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{who}: sources[{field!r}] is missing or empty ({text!r}); every number needs "
                "'source, date', e.g. 'scaling-book tpus.md, 2025-02'"
            )
    allowed = set(NUMERIC_FIELDS) | {f"peak_flops.{d}" for d in DTYPES} | set(gpu_keys) \
        | {"tpu_topology", "tpu_chip_config"}
    for key, text in sources.items():
        if key not in allowed:
            raise ValueError(
                f"{who}: sources has unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}"
            )
        if not isinstance(text, str):
            raise ValueError(f"{who}: sources[{key!r}] must be a string, got {text!r}")
    return dict(sources)


# ----------------------------------------------------------------------------------------------
# TOML. Read with the standard library's tomllib; written by hand (flat keys, one [peak_flops]
# and one [sources] table), so no dependency is needed.

_TOP_FIELDS = tuple(f.name for f in dataclasses.fields(Spec))
_REQUIRED = tuple(f.name for f in dataclasses.fields(Spec) if f.default is dataclasses.MISSING)


def from_toml(text: str, where: str = "<string>") -> Spec:
    """A Spec from the text of a spec file; errors name `where` (the file) and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: malformed TOML ({e}); fix the file's syntax") from None
    missing = [f for f in _REQUIRED if f not in data]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {', '.join(missing)}; a spec file needs "
            f"{', '.join(_REQUIRED)}"
        )
    unknown = [k for k in data if k not in _TOP_FIELDS]
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(unknown)}; "
            f"valid fields: {', '.join(_TOP_FIELDS)}"
        )
    try:
        return Spec(**data)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load(path: str | os.PathLike) -> Spec:
    """Read a spec file (TOML). Any problem is a ValueError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read spec file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: cannot read spec file: not UTF-8 text ({e})") from None
    return from_toml(text, str(path))


def _toml_str(s: str) -> str:
    # JSON's escapes (\", \\, \n, \uXXXX) are all valid in TOML basic strings; TOML also wants
    # DEL escaped, which JSON leaves alone.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_float(x: float) -> str:
    """The shortest scientific form that reads back as exactly `x`: 2.75e14 -> '2.75e+14'."""
    for digits in range(17):
        s = f"{x:.{digits}e}"
        if float(s) == x:
            return s
    return repr(x)


def to_toml(spec: Spec) -> str:
    """The spec file for `spec`; `from_toml(to_toml(s)) == s` for every valid Spec.

    >>> print(to_toml(load(Path(__file__).parent / "specs" / "tpu-v5e.toml")).splitlines()[0])
    name = "tpu-v5e"
    """
    lines = [
        f"name = {_toml_str(spec.name)}",
        f"aliases = [{', '.join(_toml_str(a) for a in spec.aliases)}]",
        f"interconnect = {_toml_str(spec.interconnect)}",
    ]
    lines += [f"{f} = {_toml_float(getattr(spec, f))}" for f in FLOAT_FIELDS]
    lines += [f"domain_size = {spec.domain_size}"]
    for field in ("tpu_topology", "tpu_chip_config"):
        if getattr(spec, field) is not None:
            lines.append(f"{field} = {_toml_str(getattr(spec, field))}")
    lines += ["", "[peak_flops]"]
    lines += [f"{d} = {_toml_float(v)}" for d, v in spec.peak_flops.items()]
    if spec.gpu_device is not None:
        lines += ["", "[gpu_device]"]
        for field, value in spec.gpu_device.items():
            text = _toml_str(value) if isinstance(value, str) else (
                _toml_float(value) if isinstance(value, float) else str(value))
            lines.append(f"{field} = {text}")
    lines += ["", "[sources]"]
    lines += [f"{_toml_str(k)} = {_toml_str(v)}" for k, v in spec.sources.items()]
    return "\n".join(lines) + "\n"


def save(spec: Spec, path: str | os.PathLike) -> None:
    """Write `spec` to `path` as TOML (see `to_toml`); `load(path)` gives it back."""
    Path(path).write_text(to_toml(spec), encoding="utf-8")
