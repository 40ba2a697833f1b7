"""Hardware targets: chip specs with their sources, and calibration of the local machine.

The shipped specs are TOML files in `hardware/specs/`, one per chip, every number with its
source and date (datasheets and jax-ml/scaling-book's tpus.md and gpus.md). `get` takes a
canonical name, an alias (any case) or a path to a spec file of your own.

>>> import hardware
>>> hardware.get("h100").peak("bf16")
989000000000000.0
>>> hardware.get("TPU-v5e").hbm_bandwidth
810000000000.0
>>> "tpu-v5p" in hardware.names()
True
>>> hardware.get("tpu-v4").peak("fp8")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: tpu-v4 has no 'fp8' peak: it lists bf16 only (its spec file says: not available: ...
"""

from __future__ import annotations

import functools
import os
from importlib import resources

from hardware.calibration import calibrate
from hardware.spec import DTYPES, Spec, from_toml, load, save, to_toml

__all__ = ["DTYPES", "Spec", "calibrate", "from_toml", "get", "load", "names", "resolve", "save", "to_toml"]


@functools.cache
def _shipped() -> dict[str, tuple[str, str]]:
    """Canonical name -> (file name, text) for every spec file shipped in `hardware/specs/`."""
    out = {}
    entries = resources.files(__name__).joinpath("specs").iterdir()
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            text = entry.read_text(encoding="utf-8")
            spec = from_toml(text, f"hardware/specs/{entry.name}")
            if entry.name != f"{spec.name}.toml":
                raise ValueError(f"hardware/specs/{entry.name}: file name must be {spec.name}.toml")
            out[spec.name] = (entry.name, text)
    return out


@functools.cache
def _index() -> dict[str, str]:
    """Lower-cased canonical name or alias -> canonical name. A clash is a packaging bug."""
    index: dict[str, str] = {}
    for name, (file, text) in _shipped().items():
        for key in (name, *from_toml(text, file).aliases):
            other = index.setdefault(key.lower(), name)
            if other != name:
                raise ValueError(f"hardware/specs/{file}: name {key!r} is also used by {other!r}")
    return index


def names() -> tuple[str, ...]:
    """Canonical names of the shipped chips, sorted.

    >>> names()[:3]
    ('a100-40gb', 'a100-80gb', 'b200')
    """
    return tuple(sorted(_shipped()))


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name or (os.altsep or os.sep) in name


def get(name_or_path: str | os.PathLike) -> Spec:
    """A chip's Spec by canonical name, alias (case-insensitive), or path to a .toml spec file.

    Each call returns a fresh Spec read from the file, so changing one does not change the next.

    Raises:
      ValueError: an unknown name (the message lists the valid ones), or a spec file that is
        missing, malformed, lacks a field or has an invalid number (the message names it).
    """
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        return load(name_or_path)
    if not isinstance(name_or_path, str):
        raise ValueError(f"chip name must be a string or a path, got {name_or_path!r}")
    canonical = _index().get(name_or_path.strip().lower())
    if canonical is None:
        aliases = sorted(k for k, v in _index().items() if k != v)
        raise ValueError(
            f"unknown chip {name_or_path!r}; valid names: {', '.join(names())} "
            f"(aliases: {', '.join(aliases)}), or the path of a .toml spec file"
        )
    file, text = _shipped()[canonical]
    return from_toml(text, f"hardware/specs/{file}")


def resolve(target) -> Spec:
    """A `Spec` from a Spec, a name, an alias or a spec file path; anything else is a ValueError."""
    if isinstance(target, Spec):
        return target
    if isinstance(target, str | os.PathLike):
        return get(target)
    raise ValueError(f"hardware={target!r}: give a chip name ({', '.join(names())}), a spec file path, "
                     "or a hardware.Spec")
