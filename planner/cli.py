"""The `planner` command line: parses, calls the library, formats. Nothing else lives here.

Bad input prints one line ``error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from models import presets
from models.config import OPTIONAL_SIZE_FIELDS, SIZE_FIELDS, TransformerConfig, field_names
from planner.format import human, table
from planner.params import count_params

_BOOL_FIELDS = ("tied_embeddings", "bias", "embed_scale", "qkv_bias")
_FLOAT_FIELDS = ("rope_theta", "norm_eps")
_TRUE, _FALSE, _NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null")


class UsageError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parse_value(name: str, text: str):
    """Convert ``--set name=text`` to the field's type, or raise naming the field and the rule."""
    low = text.strip().lower()
    nullable = name in OPTIONAL_SIZE_FIELDS or name == "qkv_bias"
    if nullable and low in _NONE:
        return None
    if name in SIZE_FIELDS + OPTIONAL_SIZE_FIELDS:
        try:
            return int(text, 10)
        except ValueError:
            raise UsageError(f"--set {name}={text!r}: expected an integer") from None
    if name in _BOOL_FIELDS:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UsageError(f"--set {name}={text!r}: expected true or false" + (" or none" if nullable else ""))
    if name in _FLOAT_FIELDS:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--set {name}={text!r}: expected a number") from None
    return text


def parse_overrides(items: Sequence[str]) -> dict:
    """``["d_model=1024", "mlp=swiglu"]`` -> ``{"d_model": 1024, "mlp": "swiglu"}``."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--set {item!r}: expected field=value, e.g. --set d_model=1024")
        if name not in field_names():
            raise UsageError(f"--set {item!r}: unknown field {name!r}; valid: {', '.join(field_names())}")
        if name in out:
            raise UsageError(f"--set {name} given twice; give each field once")
        out[name] = parse_value(name, text)
    return out


def config_from_args(args: argparse.Namespace) -> TransformerConfig:
    """The config named by --preset, with --set applied; or built from --set alone."""
    overrides = parse_overrides(args.set or [])
    if args.preset is not None:
        return presets.get(args.preset, **overrides)
    missing = [f for f in SIZE_FIELDS if f not in overrides]
    if missing:
        raise UsageError(
            f"no --preset given, so --set must give every size; missing: {', '.join(missing)} "
            f"(or start from a preset: {', '.join(presets.names())})"
        )
    return TransformerConfig(**overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="NAME", help=f"a named config: {', '.join(presets.names())}")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set n_layers=6")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _config_json(cfg: TransformerConfig) -> dict:
    return dataclasses.asdict(cfg)


def cmd_count(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    pc = count_params(cfg)
    if args.json:
        print(json.dumps({
            "preset": args.preset,
            "config": _config_json(cfg),
            "params": {"total": pc.total, "embedding": pc.embedding,
                       "non_embedding": pc.non_embedding, "components": pc.components},
        }, indent=2))
        return 0
    name = args.preset or "custom config"
    print(f"{name}: {human(pc.total)} parameters ({pc.total:,})")
    print(f"  d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
          f"n_kv_heads={cfg.resolved_n_kv_heads} head_dim={cfg.resolved_head_dim} d_ff={cfg.d_ff} "
          f"vocab={cfg.vocab_size} seq_len={cfg.seq_len} mlp={cfg.mlp} norm={cfg.norm} "
          f"position={cfg.position} tied={cfg.tied_embeddings}\n")
    rows = [(c, f"{n:,}", f"{100 * n / pc.total:.2f}%") for c, n in pc.components.items()]
    rows += [("total", f"{pc.total:,}", "100.00%"),
             ("embedding (token + position + head)", f"{pc.embedding:,}", f"{100 * pc.embedding / pc.total:.2f}%"),
             ("non-embedding", f"{pc.non_embedding:,}", f"{100 * pc.non_embedding / pc.total:.2f}%")]
    print(table(("component", "parameters", "share"), rows))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    rows = []
    for name in presets.names():
        p = presets.info(name)
        rows.append((name, human(count_params(p.config).total), p.config.d_model, p.config.n_layers,
                     p.config.n_heads, p.source))
    if args.json:
        print(json.dumps({n: {"config": _config_json(presets.info(n).config), "source": presets.info(n).source}
                          for n in presets.names()}, indent=2))
    else:
        print(table(("preset", "params", "d_model", "layers", "heads", "source"), rows, "lrrrrl"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="planner", description="What a transformer costs, and what shape to train.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("count", help="count a model's parameters, per component")
    _add_config_args(p)
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("presets", help="list the named configs and their sources")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ValueError as err:  # UsageError included
        print(f"error: {err}", file=sys.stderr)
        return 2
