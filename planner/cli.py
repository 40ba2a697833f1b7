"""The `planner` command line: parses, calls the library, formats. Nothing else lives here.

Bad input prints one line ``error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence

from models import presets
from models.config import (
    MLA_SIZE_FIELDS,
    MOE_SIZE_FIELDS,
    OPTIONAL_SIZE_FIELDS,
    SIZE_FIELDS,
    TransformerConfig,
    field_names,
)
from planner.format import Progress, human, table
from planner.flops import COMPONENT_CONVENTIONS, CONVENTIONS, MODES, count_flops
from planner.params import count_params

_BOOL_FIELDS = ("tied_embeddings", "bias", "embed_scale", "qkv_bias", "norm_offset", "norm_bias", "mlp_bias",
                "head_bias", "parallel_residual", "shared_norm")
_FLOAT_FIELDS = ("rope_theta", "norm_eps", "rotary_fraction", "attn_softcap", "final_softcap", "capacity_factor",
                 "aux_loss_coef")
#: Fields that take "none" (besides the optional sizes).
_NULLABLE_FIELDS = ("qkv_bias", "norm_bias", "mlp_bias", "qk_norm", "sliding_window", "global_every",
                    "attn_softcap", "final_softcap", "capacity_factor") + MOE_SIZE_FIELDS + MLA_SIZE_FIELDS
_INT_FIELDS = ("sliding_window", "global_every", "n_shared_experts", "dense_layers") + MOE_SIZE_FIELDS + MLA_SIZE_FIELDS
_TRUE, _FALSE, _NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null")


class UsageError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def check_writable(path: str, option: str = "") -> None:
    """Refuse an output path before any work is done: ``cannot write PATH: <reason>``.

    The file may exist (it is overwritten) or not (its folder must exist and be writable).
    """
    where = f"{option} " if option else ""
    if not path or not path.strip():
        raise UsageError(f"{where}cannot write {path!r}: empty path")
    p = os.path.abspath(path)
    folder = os.path.dirname(p)
    if os.path.isdir(p):
        reason = "it is a directory; give a file name"
    elif os.path.exists(p):
        reason = None if os.access(p, os.W_OK) else "permission denied"
    elif not os.path.exists(folder):
        reason = f"no such folder {folder}"
    elif not os.path.isdir(folder):
        reason = f"{folder} is not a folder"
    else:
        reason = None if os.access(folder, os.W_OK | os.X_OK) else f"permission denied in {folder}"
    if reason:
        raise UsageError(f"{where}cannot write {path}: {reason}")


def check_plot_path(path: str) -> None:
    """A --plot path: writable, matplotlib importable, a format matplotlib writes (before any work)."""
    check_writable(path, "--plot")
    from planner.plots import _pyplot

    plt = _pyplot()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if ext not in formats:
        raise UsageError(f"--plot {path}: cannot write {ext or 'a file without an extension'!r}; "
                         f"give one of: {', '.join('.' + f for f in sorted(formats))}")


def write_text(path: str, text: str, option: str = "") -> None:
    """Write ``text`` to ``path``, an OSError as ``cannot write PATH: reason`` (exit 2)."""
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as err:
        raise UsageError(f"{option + ' ' if option else ''}cannot write {path}: {err.strerror or err}") from None


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--budget -1e21`` -> ``--budget=-1e21``: argparse reads ``-1e21`` as an option, not a value
    (it takes only ``-1``-like tokens for negative numbers), and the range check never sees it."""
    out: list[str] = []
    for tok in argv:
        if out and _NEGATIVE_NUMBER.match(tok) and out[-1].startswith("--") and "=" not in out[-1] \
                and out[-1] not in _FLAG_OPTIONS:
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


_FLAG_OPTIONS = frozenset({"--json", "--flops", "--causal", "--scan", "--remat", "--shard", "--free-mlp-ratio",
                           "--sources", "--grid", "--help", "--version"})


def _finite_or_none(x):
    """JSON has no Infinity or NaN: such a number becomes null (the text output names why)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    return x


def dumps(data) -> str:
    """JSON for --json: standard JSON (no Infinity/NaN: those become null)."""
    return json.dumps(_finite_or_none(data), indent=2, allow_nan=False, default=list)


def parse_value(name: str, text: str):
    """Convert ``--set name=text`` to the field's type, or raise naming the field and the rule."""
    low = text.strip().lower()
    nullable = name in OPTIONAL_SIZE_FIELDS or name in _NULLABLE_FIELDS
    if nullable and low in _NONE:
        return None
    if name in SIZE_FIELDS + OPTIONAL_SIZE_FIELDS + _INT_FIELDS:
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
    """The config named by --preset or read from --hf, with --set applied; or built from --set alone."""
    overrides = parse_overrides(args.set or [])
    if getattr(args, "hf", None) is not None:
        if args.preset is not None:
            raise UsageError("give --preset or --hf, not both")
        return hf_import(args).config.replace(**overrides) if overrides else hf_import(args).config
    if args.preset is not None:
        return presets.get(args.preset, **overrides)
    missing = [f for f in SIZE_FIELDS if f not in overrides]
    if missing:
        raise UsageError(
            f"no --preset given, so --set must give every size; missing: {', '.join(missing)} "
            f"(or start from a preset: {', '.join(presets.names())})"
        )
    return TransformerConfig(**overrides)


def hf_import(args: argparse.Namespace):
    """The `models.hf.HFImport` of --hf (read once per command)."""
    from models.hf import read_hf

    cached = getattr(args, "_hf_import", None)
    if cached is None:
        cached = read_hf(args.hf)
        args._hf_import = cached
    return cached


def _label(args: argparse.Namespace) -> str:
    if getattr(args, "hf", None) is not None:
        return f"{args.hf} ({hf_import(args).family})"
    return args.preset or "custom config"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="NAME", help=f"a named config: {', '.join(presets.names())}")
    p.add_argument("--hf", metavar="CONFIG_JSON",
                   help="a Hugging Face config.json (gpt2, gpt_neox, gptj, llama, mistral, qwen2, qwen3, gemma, "
                        "gemma2, gemma3_text, phi3, olmo2, falcon, starcoder2, nemotron, mixtral, qwen3_moe, olmoe, "
                        "deepseek_v2, deepseek_v3)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set n_layers=6")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _config_json(cfg: TransformerConfig) -> dict:
    return dataclasses.asdict(cfg)


def _num(x):
    """An exact count for JSON: ints stay ints; a half (Fraction) or array becomes a float."""
    return x if isinstance(x, int) else float(x)


def _batch(args: argparse.Namespace) -> int:
    return 1 if args.batch is None else args.batch


def _parse_layout(text: str | None):
    """--layout TEXT -> models.Layout (None when not given); a bad field is a usage error."""
    if text is None:
        return None
    from models.layout import Layout

    try:
        return Layout.parse(text)
    except ValueError as err:
        raise UsageError(f"--layout {text!r}: {err}") from None


def _time_layout(args: argparse.Namespace):
    """The layout of `planner time`: --layout's fields over the ones --dtype, --param-dtype,
    --remat, --shard and --chips describe (a field given both ways must agree)."""
    from models.layout import Layout

    if args.chips is None or args.chips < 1:
        raise UsageError(f"chips={args.chips}: must be a positive int")
    base = Layout(remat="full" if args.remat else "none", dtype=args.dtype, param_dtype=args.param_dtype,
                  **({"fsdp": args.chips} if args.shard else {"dp": args.chips}))
    given = _parse_layout(args.layout)
    if given is None:
        return base
    if args.remat or args.shard:
        raise UsageError("--remat and --shard are the layout fields remat=full and fsdp=N: put them in --layout")
    fields = {k: v for k, v in dataclasses.asdict(given).items() if v != getattr(Layout(), k)}
    if given.chips == 1:  # no mesh in --layout: --chips are data parallel
        fields.setdefault("dp", args.chips)
    elif given.chips != args.chips and args.chips != 1:
        raise UsageError(f"--layout has {given.chips} chips but --chips {args.chips}; make them agree")
    fields.setdefault("dtype", args.dtype)
    fields.setdefault("param_dtype", args.param_dtype)
    try:
        return Layout(**fields)
    except ValueError as err:
        raise UsageError(f"--layout {args.layout!r}: {err}") from None


def memory_lines(m) -> list[str]:
    """The memory breakdown of a `MemoryEstimate`, one term a line, with the sum: checkable by hand."""
    rows = [(k, human(float(v), "B")) for k, v in m.breakdown.items() if float(v)]
    phases = [(k, human(float(v), "B")) for k, v in (m.phases or {}).items() if float(v)]
    width = max(len(k) for k, _ in rows + phases) + 2
    out = [f"  {k.ljust(width)}  {v:>10}" for k, v in rows]
    out.extend(f"    {k.ljust(width - 2)}  {v:>10}  (peak_phase = max(sum of layer_*, loss_logits))"
               if i == 0 else f"    {k.ljust(width - 2)}  {v:>10}" for i, (k, v) in enumerate(phases))
    out.append(f"  {'= total'.ljust(width)}  {human(float(m.total), 'B'):>10}"
               + (f"  of {human(m.hbm_bytes, 'B')} HBM: {'fits' if m.fits else 'DOES NOT FIT'}"
                  if m.hbm_bytes is not None else ""))
    return out


def _flop_args_given(args: argparse.Namespace) -> bool:
    return args.flops or any(getattr(args, a) is not None
                             for a in ("mode", "convention", "batch", "seq", "block_skip")) or args.causal


def _flop_counts(cfg: TransformerConfig, args: argparse.Namespace) -> dict:
    mode = args.mode or "forward"
    conv = args.convention or "xla"
    names = list(CONVENTIONS) if conv == "all" else [conv]
    if conv != "all" and conv not in CONVENTIONS:
        raise UsageError(f"--convention {conv!r}: unknown; valid: {', '.join(CONVENTIONS)}, all")
    out = {}
    for name in names:
        if conv == "all" and name == "megatron-recompute" and mode != "train":
            continue  # a whole-iteration count only
        causal = args.causal and (name in COMPONENT_CONVENTIONS or conv != "all")
        out[name] = count_flops(cfg, batch_size=_batch(args), seq_len=args.seq, mode=mode,
                                convention=name, causal=causal)
    return out


def cmd_count(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    pc = count_params(cfg)
    flops = _flop_counts(cfg, args) if _flop_args_given(args) else None
    seq = cfg.seq_len if args.seq is None else args.seq
    tokens = (_batch(args)) * seq
    if args.json:
        data = {
            "preset": args.preset,
            **({"hf": {k: v for k, v in hf_import(args).to_dict().items() if k != "config"}}
               if getattr(args, "hf", None) else {}),
            "config": _config_json(cfg),
            "params": {"total": pc.total, "active": pc.active, "embedding": pc.embedding,
                       "non_embedding": pc.non_embedding, "components": pc.components},
        }
        if flops is not None:
            data["flops"] = {
                "mode": args.mode or "forward", "batch_size": _batch(args), "seq_len": seq,
                "causal": args.causal,
                "conventions": {
                    name: {"total": _num(c.total), "per_token": float(c.total) / tokens,
                           "transcendentals": c.transcendentals,
                           "components": {k: _num(v) for k, v in c.components.items()}}
                    for name, c in flops.items()
                },
            }
        print(json.dumps(data, indent=2))
        return 0
    name = _label(args)
    print(f"{name}: {human(pc.total)} parameters ({pc.total:,})")
    if cfg.is_moe:
        print(f"  active per token: {human(pc.active)} ({pc.active:,}; {cfg.experts_per_token} of "
              f"{cfg.n_experts} routed experts in {cfg.moe_layers} MoE layers)")
    print(f"  d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
          f"n_kv_heads={cfg.resolved_n_kv_heads} head_dim={cfg.resolved_head_dim} d_ff={cfg.d_ff} "
          f"vocab={cfg.vocab_size} seq_len={cfg.seq_len} mlp={cfg.mlp} norm={cfg.norm} "
          f"position={cfg.position} tied={cfg.tied_embeddings}")
    arch = _architecture_text(cfg)
    print(f"  {arch}\n" if arch else "")
    if getattr(args, "hf", None) is not None:
        print(_hf_text(hf_import(args)) + "\n")
    if flops is None:
        rows = [(c, f"{n:,}", f"{100 * n / pc.total:.2f}%") for c, n in pc.components.items()]
        rows += [("total", f"{pc.total:,}", "100.00%"),
                 *([("active per token", f"{pc.active:,}", f"{100 * pc.active / pc.total:.2f}%")] if cfg.is_moe else []),
                 ("embedding (token + position + head)", f"{pc.embedding:,}", f"{100 * pc.embedding / pc.total:.2f}%"),
                 ("non-embedding", f"{pc.non_embedding:,}", f"{100 * pc.non_embedding / pc.total:.2f}%")]
        print(table(("component", "parameters", "share"), rows))
        return 0
    print(_flops_text(flops, args.mode or "forward", _batch(args), seq, args.causal))
    if args.block_skip is not None:
        print("\n" + _block_skip_text(cfg, args, seq))
    return 0


def _architecture_text(cfg: TransformerConfig) -> str:
    """The architecture options that differ from the plain pre-norm block, on one line."""
    default = TransformerConfig(vocab_size=1, d_model=2, n_layers=1, n_heads=1, d_ff=1, seq_len=1)
    names = ("norm_placement", "norm_offset", "norm_bias", "mlp_bias", "head_bias", "qk_norm", "parallel_residual",
             "shared_norm", "rotary_fraction", "sliding_window", "global_every", "attn_softcap", "final_softcap",
             "n_experts", "experts_per_token", "n_shared_experts", "d_ff_expert", "d_ff_shared", "dense_layers",
             "router", "capacity_factor", "attention_kind", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
             "v_head_dim")
    return " ".join(f"{n}={getattr(cfg, n)}" for n in names if getattr(cfg, n) != getattr(default, n))


def _hf_text(imp) -> str:
    rows = [(field, f"{getattr(imp.config, field)!r}", source) for field, source in imp.mapped.items()]
    lines = [f"recognised family: {imp.family}", "",
             table(("field", "value", "from config.json"), rows), ""]
    lines.append(f"ignored ({len(imp.ignored)}, change nothing counted): {', '.join(imp.ignored) or '-'}")
    return "\n".join(lines)


def _block_skip_text(cfg: TransformerConfig, args: argparse.Namespace, seq: int) -> str:
    from planner.flops import count_flops

    mode, b = args.mode or "forward", _batch(args)
    attn = lambda c: c.components["attn_scores"] + c.components["attn_values"]  # noqa: E731
    full = attn(count_flops(cfg, batch_size=b, seq_len=seq, mode=mode, convention="fma"))
    rows = [("materialised s x s (what XLA counts)", f"{float(full):.4g}", "100.0%")]
    for k in dict.fromkeys((args.block_skip, 1)):
        x = attn(count_flops(cfg, batch_size=b, seq_len=seq, mode=mode, convention="fma", block_skip=k))
        label = "exact visible band (tile 1)" if k == 1 else f"block-skipping kernel, {k} x {k} tiles"
        rows.append((label, f"{float(x):.4g}", f"{100 * float(x) / float(full):.1f}%"))
    windows = (f"window {cfg.sliding_window} on {cfg.n_windowed_layers} of {cfg.n_layers} layers"
               if cfg.sliding_window is not None else "no sliding window: causal skipping only")
    return f"attention matmul FLOPs (fma), {windows}\n\n" + table(("attention", "FLOPs", "share"), rows)


def _flops_text(flops: dict, mode: str, batch: int, seq: int, causal: bool) -> str:
    tokens = batch * seq
    head = (f"FLOPs, mode={mode}, batch={batch} x seq={seq} = {tokens:,} tokens"
            + (", causal: attention matmuls halved (fma, no_fma, xla; published formulas as printed)"
               if causal else ""))
    lines = [head, ""]
    comp = [n for n in flops if n in COMPONENT_CONVENTIONS]
    if comp:
        first = flops[comp[0]]
        rows = [(k, *(f"{float(flops[n].components[k]):.4g}" for n in comp)) for k in first.components]
        rows.append(("total", *(f"{float(flops[n].total):.4g}" for n in comp)))
        if "xla" in comp:
            rows.append(("transcendentals (xla)", *(
                f"{float(flops[n].transcendentals):.4g}" if flops[n].transcendentals is not None else "-"
                for n in comp)))
        lines += [table(("component", *comp), rows), ""]
    published = [n for n in flops if n not in COMPONENT_CONVENTIONS]
    if len(flops) == 1 and published:
        c = flops[published[0]]
        rows = [(k, f"{float(v):.4g}") for k, v in c.components.items()] + [("total", f"{float(c.total):.4g}")]
        lines += [table((f"{published[0]} term", "FLOPs"), rows), ""]
    if len(flops) > 1:
        rows = [(n, f"{float(c.total):.4g}", f"{float(c.total) / tokens:.4g}") for n, c in flops.items()]
        lines += [table(("convention", "total FLOPs", "per token"), rows), ""]
    return "\n".join(lines).rstrip()


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


def _validation_text(name: str, r) -> str:
    stage = r.stage + (", layers under nnx.scan" if r.scan_layers else ", layers unrolled")
    lines = [f"{name}: {r.mode}, batch {r.batch_size} x seq {r.seq_len}, {stage}, float32", ""]
    rows = [
        ("FLOPs", f"{r.xla_flops:.6g}", f"{float(r.predicted_flops):.6g}", f"{r.rel_error:+.2e}"),
        ("dot FLOPs (HLO text)", f"{r.xla_dot_flops:.6g}", f"{float(r.predicted_dot_flops):.6g}",
         "exact" if r.dots_exact else f"{r.xla_dot_flops - r.predicted_dot_flops:+,}"),
        ("transcendentals", f"{r.xla_transcendentals:.6g}", f"{float(r.predicted_transcendentals):.6g}",
         f"{r.transcendental_rel_error:+.2e}"),
    ]
    lines += [table(("", "XLA", "closed form", "difference"), rows), ""]
    rows = [(k, f"{float(c.predicted):.4g}", f"{float(c.predicted_dots):.4g}", f"{c.hlo_dots:.4g}")
            for k, c in r.components.items() if c.predicted or c.hlo_dots]
    lines += [table(("component", "closed form", "of which dots", "HLO dots"), rows), ""]
    lines += ["notes:"] + [f"- {n}" for n in r.notes] + [""]
    tol = ("dot FLOPs exact" if r.stage == "compiled"
           else "dot FLOPs exact, total within 0.5%, transcendentals within 1%")
    lines.append(f"verdict: {'OK' if r.ok else 'OUTSIDE TOLERANCE'} ({tol})")
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    from planner.validation import default_grid, validate

    if args.grid or args.arch_grid:
        if args.preset or args.set or args.hf:
            raise UsageError("--grid runs the built-in sweep; drop --preset/--hf/--set, or drop --grid")
        if args.grid and args.arch_grid:
            raise UsageError("give --grid or --arch-grid, not both")
        if args.arch_grid:
            from planner.validation import architecture_grid

            return _validate_grid(args, architecture_grid())
        return _validate_grid(args, default_grid())
    if args.preset is None and not args.set and args.hf is None:
        raise UsageError("give --preset NAME, --hf CONFIG_JSON, --set field=value ..., or --grid")
    cfg = config_from_args(args)
    if not args.scan and cfg.n_layers > 64:
        print(f"note: lowering {cfg.n_layers} unrolled layers takes about 0.1-0.2 s each; --scan lowers one "
              "layer body in seconds and checks the same closed form", file=sys.stderr)
    if args.devices and not args.layout:
        raise UsageError("--devices checks a sharded step: give --layout too (e.g. fsdp=4,tp=2)")
    layout = _layout_arg(args.layout) if args.layout else None
    if args.target is not None and not args.devices:
        from planner.targets import unsupported_layout_fields

        if layout is None or not unsupported_layout_fields(layout):
            return _validate_target(args, cfg)
    if layout is not None and not args.target and not args.devices:
        raise UsageError("--layout needs --target (a compile-only chip, e.g. tpu-v5p:2x2x2) or --devices N "
                         "(a simulated CPU mesh) to shard over")
    if layout is not None and args.target and args.devices:
        raise UsageError("with --layout give one of --target (e.g. tpu-v5p:2x2x2) or --devices N (a CPU mesh)")
    try:
        r = validate(cfg, batch_size=_batch(args), seq_len=args.seq, mode=args.mode or "forward",
                     stage=args.stage, scan_layers=args.scan, layout=layout, target=args.target,
                     devices=args.devices)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({"preset": args.preset, **r.to_json()}, indent=2))
    else:
        print(_validation_text(_label(args), r))
        if r.collectives is not None:
            print("\n" + _collectives_text(r.collectives))
    return 0 if r.ok else 1


def _target_validation_text(name: str, v) -> str:
    from planner.targets import MEMORY_TOLERANCE, TARGET_FLOP_TOLERANCE

    r, p = v.report, v.program
    lay = p.layout.to_string() or "one device"
    lines = [f"{name} on {r.target['name']} ({r.device_kind}, compile-only): {p.mode}, batch {p.batch_size} x "
             f"seq {p.tokens_per_sequence}, {lay}, {'scan' if p.scan_layers else 'layers unrolled'}; per device", ""]
    dash = "-"
    err = v.flops_rel_error
    rows = [
        ("FLOPs", f"{r.flops:.6g}" if r.flops is not None else dash, f"{float(v.predicted_flops):.6g}",
         f"{err:+.2%}" if err is not None else "(no cost analysis)"),
        ("dot FLOPs (HLO)", f"{r.dot_flops:.6g}", f"{float(v.predicted_dot_flops):.6g}",
         "exact" if v.dots_exact else f"{r.dot_flops - v.predicted_dot_flops:+,}"),
        ("transcendentals", f"{r.transcendentals:.6g}" if r.transcendentals is not None else dash,
         f"{float(v.predicted_transcendentals):.6g}", ""),
        ("argument bytes", f"{r.argument_bytes_unpadded:,}", f"{v.predicted_argument_bytes:,}",
         "exact" if v.argument_bytes_exact else f"{r.argument_bytes_unpadded - v.predicted_argument_bytes:+,}"),
    ]
    lines += [table(("", "compiler", "closed form", "difference"), rows), ""]
    def pct(a, b):
        return "" if r.flops is None else (f"{(a - b) / b:+.1%}" if b else "(untagged)")

    rows = [(k, f"{float(c.predicted_dots):.4g}", f"{c.hlo_dots:.4g}",
             "exact" if c.predicted_dots == c.hlo_dots else f"{c.hlo_dots - c.predicted_dots:+.3g}",
             f"{float(c.predicted):.4g}", f"{c.hlo:.4g}" if r.flops is not None else "-",
             pct(c.hlo, float(c.predicted))) for k, c in v.components.items()]
    lines += [table(("component", "closed-form dots", "HLO dots", "", "closed form", "compiler", ""),
                    rows, "lrrlrrr"), ""]
    m = r.memory
    lines.append(f"memory/device: arguments {human(m.argument, 'B')}, outputs {human(m.output, 'B')}, "
                 f"temp {human(m.temp, 'B')}, aliased {human(m.alias, 'B')}, peak {human(m.peak, 'B')}; "
                 f"code {human(m.generated_code, 'B')}")
    if v.predicted_memory is not None:
        e, err = v.predicted_memory, v.memory_rel_error
        lines.append(f"memory/device, closed form (planner.memory.estimate_memory, layout "
                     f"{v.program.layout.to_string() or 'default'}): {human(float(e.total), 'B')} = params "
                     f"{human(float(e.params), 'B')} + grads {human(float(e.grads), 'B')} + optimizer "
                     f"{human(float(e.optimizer), 'B')} + activations {human(float(e.activations), 'B')}; "
                     f"{err:+.1%} of the compiler's peak ("
                     + ("within" if v.memory_within_tolerance else "outside")
                     + f" {MEMORY_TOLERANCE:.0%}; micro programs sit below what the TPU compiler keeps in "
                       "its alternate memory, see README Known limits)")
    coll = ", ".join(f"{c.kind} {c.shape if len(c.shape) < 40 else c.shape[:37] + '...'} {human(c.bytes, 'B')}"
                     for c in r.collectives[:6])
    lines.append(f"collectives: {len(r.collectives)}" + (f" ({coll}{', ...' if len(r.collectives) > 6 else ''})"
                                                         if coll else ""))
    if r.optimal_seconds is not None:
        lines.append(f"optimal_seconds: {r.optimal_seconds:.4g} s (XLA's TPU cost model)")
    lines += ["", "notes:"] + [f"- {n}" for n in v.notes] + [""]
    total = ""
    if v.total_within_tolerance is not None:
        total = (f"; total FLOPs {v.flops_rel_error:+.2%}, "
                 + (f"within the {TARGET_FLOP_TOLERANCE:.0%} the compiler's fusions add at micro sizes"
                    if v.total_within_tolerance else
                    f"more than the {TARGET_FLOP_TOLERANCE:.0%} expected of the compiler's fusions: see the components"))
    lines.append(f"verdict: {'OK' if v.ok else 'OUTSIDE TOLERANCE'} (dot FLOPs exact, argument bytes exact{total})")
    return "\n".join(lines)


def _validate_target(args: argparse.Namespace, cfg) -> int:
    from planner.targets import validate_target

    if args.stage != "lowered":
        raise UsageError("--stage is for the CPU validation; with --target the optimised program is read")
    v = validate_target(cfg, args.target, batch_size=_batch(args), seq_len=args.seq, mode=args.mode or "train",
                        layout=args.layout, scan_layers=args.scan)
    if args.json:
        print(json.dumps({"preset": args.preset, **v.to_dict()}, indent=2))
    else:
        print(_target_validation_text(args.preset or "custom config", v))
    return 0 if v.ok else 1


def _layout_arg(text: str):
    from models.layout import Layout

    try:
        return Layout.parse(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _collectives_text(rep) -> str:
    """The per-axis table of a `planner.validation.CollectiveReport`."""
    lines = [f"collectives of one training step, {rep.layout.to_string()} on {rep.where} "
             f"(batch {rep.batch_size} x {rep.seq_len}), bytes per device:"]
    rows = []
    for axis, r in rep.rows.items():
        kinds = ", ".join(f"{k} {human(v, 'B')}" for k, v in sorted(r.compiled_kinds.items()))
        rows.append((axis, f"{int(r.predicted):,}", f"{r.compiled:,}", f"{100 * r.rel_error:+.2f}%", kinds))
    lines.append(table(("mesh axis", "closed form", "compiler", "error", "compiler's kinds"), rows, "lrrrl"))
    pred, hlo = rep.dot_flops
    lines.append(f"per-device dot FLOPs: closed form {int(pred):,}; compiler "
                 + (f"{hlo:,} ({'exact' if hlo == pred else 'DIFF'})" if hlo is not None else "not readable here"))
    if rep.memory:
        lines.append("per-device memory (compiler): " + ", ".join(
            f"{k.replace('_size_in_bytes', '')} {human(v, 'B')}" for k, v in rep.memory.items()))
    lines.append("compiler behaviour assumed: " + ", ".join(f"{k}={v}" for k, v in rep.options.items()))
    lines += [f"- {n}" for n in rep.notes]
    rule = ("per-device dot FLOPs exact; CPU bytes are not the accelerators'" if rep.where.startswith("cpu")
            else "every axis within 2%")
    lines.append(f"verdict: {'OK' if rep.ok else 'OUTSIDE TOLERANCE'} ({rule})")
    return "\n".join(lines)


def _validate_grid(args: argparse.Namespace, grid) -> int:
    import statistics
    import time

    from planner.validation import validate

    modes = [args.mode] if args.mode else ["forward", "train"]
    scans = [args.scan] if args.scan else [False, True]
    jobs = [(label, cfg, b, t, m, s) for label, cfg, b, t in grid for m in modes for s in scans]
    bar = Progress(len(jobs), sys.stderr)
    results, t0 = [], time.perf_counter()
    for label, cfg, b, t, mode, scan in jobs:
        r = validate(cfg, batch_size=b, seq_len=t, mode=mode, stage=args.stage, scan_layers=scan)
        results.append((label, r))
        bar.step(f"{label} {mode}{' scan' if scan else ''}")
    seconds = time.perf_counter() - t0
    errs = [abs(r.rel_error) for _, r in results]
    terrs = [abs(r.transcendental_rel_error) for _, r in results]
    failed = [(label, r) for label, r in results if not r.ok]
    if args.json:
        print(json.dumps({
            "runs": len(results), "failed": len(failed), "seconds": seconds,
            "max_rel_error": max(errs), "median_rel_error": statistics.median(errs),
            "max_transcendental_rel_error": max(terrs),
            "results": [{"label": label, **r.to_json()} for label, r in results],
        }, indent=2))
    else:
        rows = [(label, r.mode, "scan" if r.scan_layers else "loop", f"{r.rel_error:+.1e}",
                 f"{r.transcendental_rel_error:+.1e}", "exact" if r.dots_exact else "DIFF",
                 "ok" if r.ok else "FAIL") for label, r in results]
        print(table(("config", "mode", "layers", "FLOP err", "transc. err", "dots", ""), rows, "lllrrll"))
        print(f"\n{len(results)} validations ({args.stage}) in {seconds:.1f} s: max |error| {max(errs):.2e}, "
              f"median {statistics.median(errs):.2e}; transcendentals max {max(terrs):.2e}; "
              f"{len(failed)} outside tolerance")
    return 1 if failed else 0


def cmd_hardware(args: argparse.Namespace) -> int:
    import hardware

    specs = [hardware.get(n) for n in hardware.names()]
    if args.json:
        print(json.dumps({s.name: dataclasses.asdict(s) for s in specs}, indent=2, default=list))
        return 0
    rows = []
    for s in specs:
        peaks = " ".join(f"{k} {human(v, 'FLOP/s')}" for k, v in sorted(s.peak_flops.items()))
        rows.append((s.name, peaks, human(s.hbm_bytes, "B"), human(s.hbm_bandwidth, "B/s"),
                     f"{s.interconnect} {human(s.interconnect_bandwidth, 'B/s')} x{s.domain_size}",
                     human(s.inter_node_bandwidth, "B/s")))
    print(table(("chip", "peak (dense)", "HBM", "HBM bandwidth", "interconnect, domain", "inter-node"),
                rows, "llrrll"))
    if args.sources:
        for s in specs:
            print(f"\n{s.name}:")
            for field, src in s.sources.items():
                print(f"  {field}: {src}")
    else:
        print("\nEvery number has a source and date: planner hardware --sources (or the TOML files "
              "in hardware/specs/). A spec file of your own: --hardware path/to/chip.toml")
    return 0


def _run_text(run, r) -> str:
    e = r.exposed_comm
    lines = [f"{run.name}: {run.title}", f"source      {run.source}",
             f"hardware    {run.chips} x {run.hardware}" + (f" in {run.slices} slices" if run.slices > 1 else ""),
             f"layout      {run.layout.to_string()}",
             f"batch       {run.batch_size} x {run.seq_len} tokens; measured {run.measured} ({run.flop_convention})",
             "",
             f"published   {run.step_time:.3f} s/step",
             f"predicted   {r.step_time:.3f} s/step ({100 * (r.step_time / run.step_time - 1):+.1f}%)"
             f"  [{'fit' if run.fit else 'held out'}]",
             f"            MFU {100 * r.mfu:.1f}%, HFU {100 * r.hfu:.1f}%, bubble {r.bubble_time:.3f} s, "
             f"optimizer {r.optimizer_time:.3f} s",
             "            exposed comm " + ", ".join(f"{k} {v:.3f} s" for k, v in e.items() if v),
             f"            memory/chip {human(r.memory_per_chip, 'B')}"]
    if run.assumed:
        lines.append("assumed     " + "; ".join(run.assumed))
    return "\n".join(lines)


def cmd_time(args: argparse.Namespace) -> int:
    from planner.memory import estimate_memory
    from planner.timing import roofline

    if args.run is not None:
        from planner.published import published_runs

        run = published_runs(args.run)
        r = roofline(run.model, hardware=run.hardware, layout=run.layout, batch_size=run.batch_size,
                     seq_len=run.seq_len, slices=run.slices, dropout=run.dropout)
        if args.json:
            print(json.dumps({"run": run.to_dict(), "predicted": r.to_dict()}, indent=2, default=str))
        else:
            print(_run_text(run, r))
        return 0
    if args.hardware is None:
        raise UsageError("give --hardware NAME (see 'planner hardware') or a spec file path")
    if args.plot is not None:
        check_plot_path(args.plot)
    cfg = config_from_args(args)
    import hardware

    target = None
    if args.target is not None:
        from planner.targets import parse_target

        target = parse_target(args.target)
        if target.spec.name != hardware.get(args.hardware).name:
            raise UsageError(f"--target {args.target} is a {target.spec.name}, --hardware {args.hardware} is not")
        if args.chips not in (1, target.chips):
            raise UsageError(f"--chips {args.chips}: --target {target.name} has {target.chips} chips; drop --chips")
        args.chips = target.chips
    spec = hardware.get(args.hardware)
    lay = _time_layout(args)
    chips = lay.chips
    _check_dtype(spec, lay.dtype)
    if args.batch is None:  # one sequence per data-parallel replica
        args.batch = lay.data_parallel
    name = _config_name(args)
    # With --layout: the cluster step time of that layout (planner.timing.cluster_step); without,
    # the per-component roofline of the data-parallel step.
    if args.layout:
        r = roofline(cfg, hardware=spec, batch_size=_batch(args), seq_len=args.seq, layout=lay)
    else:
        r = roofline(cfg, hardware=spec, chips=chips, batch_size=_batch(args), seq_len=args.seq,
                     dtype=lay.dtype, param_dtype=lay.param_dtype)
    compiled = _time_on_target(cfg, args, target) if target is not None else None
    m = estimate_memory(cfg, batch_size=_batch(args), seq_len=args.seq, layout=lay, hardware=spec)
    seq = cfg.seq_len if args.seq is None else args.seq
    if args.plot is not None:
        from planner.plots import roofline_figure

        roofline_figure(r, args.plot, f"{name} on {args.chips} x {spec.name}, batch {_batch(args)} x {seq}")
    if args.json:
        print(dumps({
            "preset": args.preset, "config": _config_json(cfg), "hardware": spec.name, "chips": args.chips,
            "batch_size": _batch(args), "seq_len": seq, "dtype": args.dtype,
            "step_time_s": r.step_time, "compute_time_s": r.compute_time, "comm_time_s": r.comm_time,
            "tokens_per_s": r.tokens_per_s, "mfu": r.mfu, "model_flops": _num(r.model_flops),
            "components": {k: {"flops": _num(c.flops), "bytes": _num(c.bytes), "time_s": c.time, "bound": c.bound}
                           for k, c in r.components.items()},
            "memory_per_chip": {k: float(getattr(m, k)) for k in
                                ("params", "grads", "optimizer", "activations", "logits", "total")},
            "hbm_bytes": m.hbm_bytes, "fits": bool(m.fits),
            "layout": lay.to_string(), "hfu": r.hfu, "hardware_flops": _num(r.hardware_flops),
            "memory_breakdown": m.to_dict()["breakdown"],
            **({"target": _target_time_json(r, compiled)} if compiled is not None else {}),
        }))
        return 0
    print(f"{name} on {chips} x {spec.name}, {lay.dtype}, global batch "
          f"{_batch(args)} x {seq} tokens, layout {lay.to_string() or 'default'} "
          f"({'cluster step time of the layout' if args.layout else 'roofline: data parallel'})\n")
    rows = [(k, f"{float(c.flops):.3g}", human(float(c.bytes), "B"), f"{c.time * 1e3:.3f}", c.bound)
            for k, c in r.components.items() if c.flops or c.bytes]
    print(table(("component", "FLOPs/chip", "bytes/chip", "ms", "bound"), rows, "lrrrl"))
    print(f"\nstep time     {r.step_time * 1e3:.2f} ms  (compute {r.compute_time * 1e3:.2f} ms "
          f"+ gradient all-reduce {r.comm_time * 1e3:.2f} ms)")
    print(f"throughput    {human(r.tokens_per_s, 'tokens/s')}")
    print(f"MFU           {100 * r.mfu:.1f}%  (model FLOPs = fma training count, attention in full)")
    if lay.remat != "none" or lay.attention == "flash":
        print(f"HFU           {100 * r.hfu:.1f}%  (hardware FLOPs: + the forward work remat={lay.remat}, "
              f"attention={lay.attention} recompute)")
    print(f"memory/chip   {human(float(m.total), 'B')} of {human(spec.hbm_bytes, 'B')}: "
          f"params {human(float(m.params), 'B')}, grads {human(float(m.grads), 'B')}, "
          f"AdamW {human(float(m.optimizer), 'B')}, activations {human(float(m.activations), 'B')}"
          f" (remat={lay.remat}), logits {human(float(m.logits), 'B')} -> "
          f"{'fits' if m.fits else 'DOES NOT FIT'}")
    print("\n".join(memory_lines(m)))
    if compiled is not None:
        t = _target_time_json(r, compiled)
        print(f"\non {t['target']} (compile-only, the step data parallel over {t['devices']} devices):")
        if t["optimal_seconds"] is None:
            print("XLA's optimal_seconds: none (the GPU compiler gives no cost analysis)")
        elif t["optimal_seconds"] <= 0:
            print(f"XLA's optimal_seconds: {t['optimal_seconds']:.4g} s, not a time (the compiler's cost "
                  "model gave no estimate for this program)")
        else:
            print(f"XLA's optimal_seconds  {t['optimal_seconds'] * 1e3:.3f} ms per step   roofline / XLA = "
                  f"{t['roofline_over_xla']:.3f}")
        print(f"compiler memory/device peak {human(t['memory']['peak'], 'B')} (arguments "
              f"{human(t['memory']['argument'], 'B')}, temp {human(t['memory']['temp'], 'B')}); "
              f"{t['collectives']} collective(s), {human(t['collective_bytes'], 'B')}")
    return 0


def _config_name(args: argparse.Namespace) -> str:
    """What the config is called in a header: the preset, and the --set overrides on it."""
    sets = ", ".join(s.strip() for s in (args.set or []))
    label = _label(args)
    if args.preset is None and getattr(args, "hf", None) is None:
        return f"custom config ({sets})" if sets else "custom config"
    return f"{label} with {sets}" if sets else label


def _check_dtype(spec, dtype: str) -> None:
    """A dtype the target has no peak for: say which it has and the flag that picks one."""
    from hardware.spec import dtype_key

    if dtype_key(dtype) not in spec.peak_flops:
        have = ", ".join(spec.peak_flops)
        raise UsageError(f"{spec.name} has no {dtype_key(dtype)!r} peak (it lists {have}); pass --dtype "
                         f"{next(iter(spec.peak_flops))}, or add peak_flops.{dtype_key(dtype)} to its spec file"
                         + (" ('planner calibrate' measures fp32 and bf16)" if spec.name.startswith("calibrated")
                            else ""))


def _time_on_target(cfg, args: argparse.Namespace, target):
    from models.layout import Layout
    from planner.targets import ModelProgram, compile_for_target

    if args.dtype not in ("fp32", "bf16"):
        raise UsageError(f"--dtype {args.dtype}: --target compiles fp32 or bf16 programs only")
    if args.param_dtype != "fp32":
        raise UsageError("--param-dtype bf16: --target compiles fp32 parameters only")
    layout = Layout(dp=target.chips, dtype=args.dtype)
    program = ModelProgram(cfg, mode="train", batch_size=_batch(args), seq_len=args.seq, layout=layout)
    return compile_for_target(program, target)


def _target_time_json(r, c) -> dict:
    opt = c.optimal_seconds
    return {"target": c.target["name"], "devices": c.devices, "optimal_seconds": opt,
            "roofline_step_s": r.step_time, "roofline_over_xla": (r.step_time / opt) if opt and opt > 0 else None,
            "flops_per_device": c.flops, "dot_flops_per_device": c.dot_flops,
            "memory": c.memory.to_dict(), "collectives": len(c.collectives),
            "collective_bytes": c.collective_bytes}


def _tokens(text: str) -> float:
    units = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
    t = str(text).strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise UsageError(f"--batch-tokens {text!r}: give a number of tokens such as 4M or 4194304") from None


def cmd_layout(args: argparse.Namespace) -> int:
    from planner.layouts import search_layouts

    cfg = config_from_args(args)
    seq = cfg.seq_len if args.seq is None else args.seq
    # Whole sequences, rounded to a multiple of the largest power of two dividing the chip count
    # (at most the batch), so that data parallelism can use the chips.
    batch = max(1, round(_tokens(args.batch_tokens) / seq))
    if isinstance(args.chips, int) and args.chips > 0:
        m = 1 << min((args.chips & -args.chips).bit_length() - 1, batch.bit_length() - 1)
        batch = max(m, m * round(batch / m))
    import hardware

    tpu = hardware.get(args.hardware).interconnect.startswith("ici")
    # the software stack plan() assumes: XLA overlaps TP collectives on TPU; Megatron-core /
    # NeMo overlap the DP gradient reduction on GPUs
    res = search_layouts(cfg, hardware=args.hardware, chips=args.chips, batch_size=batch, seq_len=seq,
                         dtype=args.dtype, top=args.top, slices=args.slices, tp_overlap=tpu, dp_overlap=not tpu)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    print(f"{args.preset or 'custom config'} on {args.chips} x {args.hardware}, batch {batch} x {seq} tokens: "
          f"{res.evaluated} valid layouts, {res.fitting} fit in memory\n")
    rows = []
    for r in res.best:
        e = r.exposed_comm
        rows.append((r.layout.to_string(),
                     f"{r.step_time:.3f}", f"{100 * r.mfu:.1f}%", f"{r.bubble_time:.3f}",
                     f"{sum(e.values()):.3f}", human(r.memory_per_chip, "B")))
    print(table(("layout", "step s", "MFU", "bubble s", "exposed comm s", "memory/chip"), rows, "lrrrrr"))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import hardware

    if args.out is not None:
        check_writable(args.out, "--out")
    # Both dtypes, so that the spec serves `time` and `plan`, which default to bf16.
    spec = hardware.calibrate(seconds=args.seconds, dtype=("float32", "bfloat16"))
    if args.out is not None:
        try:
            hardware.save(spec, args.out)
        except OSError as err:
            raise UsageError(f"--out cannot write {args.out}: {err.strerror or err}") from None
    if args.json:
        print(dumps(dataclasses.asdict(spec)))
    else:
        peaks = ", ".join(f"{k} {human(v, 'FLOP/s')}" for k, v in spec.peak_flops.items())
        print(f"{spec.name}: matmul {peaks}; memory {human(spec.hbm_bandwidth, 'B/s')}")
        print(f"written to {args.out} (use it as --hardware {args.out})" if args.out
              else "not written: add --out FILE to keep it as a target")
    return 0


#: Base fields the search chooses itself: --set on them would be silently replaced.
_SEARCHED = {"d_model": "--d-model D fixes the width", "n_layers": "--n-layers L fixes the depth",
             "n_heads": "the plan sets n_heads = d_model / head_dim",
             "head_dim": "the plan picks head_dim 64 or 128"}


def _plan_base(args: argparse.Namespace):
    """The base of a plan: --base (default the Llama-style DEFAULT_BASE) with --set applied."""
    if not args.set:
        return args.base
    overrides = parse_overrides(args.set)
    for name in overrides:
        if name in _SEARCHED:
            raise UsageError(f"--set {name}: the plan searches it ({_SEARCHED[name]}); --set fixes what is not "
                             "searched: vocab_size, seq_len, n_kv_heads (the KV grouping n_heads / n_kv_heads), "
                             "d_ff (the MLP ratio d_ff / d_model), mlp, norm, position, ...")
    if args.base is not None:
        return presets.get(args.base, **overrides)
    from planner.search import DEFAULT_BASE

    try:
        return dataclasses.replace(DEFAULT_BASE, **overrides)
    except TypeError as err:
        raise UsageError(f"--set: {err}") from None


def _hardware_only_options(args: argparse.Namespace) -> list[str]:
    """Options that only a hardware budget uses, given without one (--chips/--days without
    --hardware are the library's to refuse: it asks for all three)."""
    given = [("--max-memory", args.max_memory), ("--mfu", args.mfu), ("--dtype", args.dtype)]
    return [flag for flag, v in given if v is not None]


def _plan_kwargs(args: argparse.Namespace) -> dict:
    if args.law_file and args.law is not None:
        raise UsageError(f"--law {args.law} and --law-file {args.law_file}: give one law, not both")
    if args.hardware is None and (unused := _hardware_only_options(args)):
        raise UsageError(f"{', '.join(unused)}: only a hardware budget (--hardware NAME --chips N --days D) "
                         "uses {}; a FLOP budget has no chip".format("it" if len(unused) == 1 else "them"))
    kw = dict(law=args.law or "chinchilla", base=_plan_base(args), convention=args.convention,
              hardware=args.hardware, chips=args.chips, days=args.days, mfu=args.mfu, dtype=args.dtype or "bf16",
              batch_tokens=args.batch_tokens, free_mlp_ratio=args.free_mlp_ratio, n_layers=args.n_layers,
              d_model=args.d_model, max_memory_per_chip=args.max_memory,
              layout=_parse_layout(args.layout))
    if args.base_hf is not None:
        if args.base is not None:
            raise UsageError("give --base or --base-hf, not both")
        if args.set:
            raise UsageError("--set applies to --base; edit the config.json given to --base-hf instead")
        kw["base"] = TransformerConfig.from_hf(args.base_hf)
    if args.aspect is not None:
        lo, sep, hi = args.aspect.partition(":")
        try:
            kw["aspect_ratio"] = (float(lo), float(hi))
        except ValueError:
            raise UsageError(f"--aspect {args.aspect!r}: expected MIN:MAX of d_model / n_layers, e.g. 32:256") from None
    if args.law_file:
        from planner.laws import ScalingLaw

        try:
            with open(args.law_file, encoding="utf-8") as f:
                data = json.loads(f.read())
            kw["law"] = ScalingLaw(**{k: data[k] for k in ("E", "A", "B", "alpha", "beta")},
                                   params=data.get("params", "total"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise UsageError(f"--law-file {args.law_file!r}: cannot read a fitted law ({err}); "
                             "write one with 'planner fit runs.csv --out law.json'") from None
    return kw


def _memory_assumes(layout) -> str:
    """What a plan's memory figure assumes, from its layout (the breakdown below it has each term)."""
    if layout is None:
        return "no layout"
    state = (f"parameters, gradients and AdamW state sharded over fsdp={layout.fsdp}"
             + (f", optimizer state also over dp={layout.dp}" if layout.optimizer_sharding else "")
             + (f", weights over tp={layout.tp}" if layout.tp > 1 else "")
             + (f", layers over pp={layout.pp}" if layout.pp > 1 else ""))
    return (f"{state}; {layout.param_dtype} parameters{' with an fp32 master copy' if layout.master_fp32 else ''}; "
            f"activations of one micro-batch, {layout.attention} attention, remat={layout.remat}")


def _plan_hardware(p, args) -> dict | None:
    """What a hardware plan's step time and memory depend on (None for a FLOP budget)."""
    if p.step_time is None:
        return None
    import hardware

    # sequences per data-parallel replica (tp and pp chips share a replica's sequences)
    per_replica = p.batch_size // (p.layout.data_parallel if p.layout is not None else args.chips)
    return {"target": hardware.get(args.hardware).name, "chips": args.chips, "dtype": args.dtype or "bf16",
            "mfu_given": args.mfu, "step_time_from": "the given MFU" if args.mfu is not None else
            "the cluster step time of the layout (planner.timing.cluster_step)",
            "max_memory_per_chip": args.max_memory if args.max_memory is not None
            else hardware.get(args.hardware).hbm_bytes,
            "sequences_per_replica": per_replica, "micro_batch": p.micro_batch,
            "accumulation_steps": per_replica // p.micro_batch if p.micro_batch else None,
            "memory_assumes": _memory_assumes(p.layout)}


def _plan_json(p, args=None) -> dict:
    return {
        "config": _config_json(p.config), "params": p.params, "tokens": p.tokens, "flops": _num(p.flops),
        "loss": p.loss, "budget": p.budget, "budget_used": p.budget_used, "steps": p.steps,
        "batch_size": p.batch_size, "continuous": p.continuous, "convention": p.convention,
        "law": dataclasses.asdict(p.law), "step_time_s": p.step_time, "mfu": p.mfu, "days": p.days,
        "memory_per_chip": p.memory_per_chip, "micro_batch": p.micro_batch,
        "hardware": _plan_hardware(p, args) if args is not None else None, "notes": list(p.notes),
        "layout": None if p.layout is None else p.layout.to_string(),
        "memory_breakdown": None if p.memory is None else p.memory.to_dict()["breakdown"],
        "layout_result": None if p.layout_result is None else p.layout_result.to_dict(),
    }


def _plan_text(p, args=None) -> str:
    c = p.config
    unit = "s of machine time" if p.step_time is not None else "FLOPs"
    lines = [
        f"budget      {p.budget:.3g} {unit}; law: E={p.law.E:.4g} A={p.law.A:.4g} B={p.law.B:.4g} "
        f"alpha={p.law.alpha:.4g} beta={p.law.beta:.4g} (N = {p.law.params} params); convention {p.convention}",
        f"model       {human(p.params)} params: d_model={c.d_model} n_layers={c.n_layers} n_heads={c.n_heads} "
        f"(head_dim {c.resolved_head_dim}, kv heads {c.resolved_n_kv_heads}) d_ff={c.d_ff} vocab={c.vocab_size} "
        f"seq={c.seq_len} {c.mlp}/{c.norm}/{c.position}{'/tied' if c.tied_embeddings else ''}",
        f"data        {human(p.tokens)} tokens = {p.steps:,} steps x {p.batch_size} x {c.seq_len} "
        f"({p.tokens / p.params:.1f} tokens/param)",
        f"compute     {float(p.flops):.6e} FLOP ({100 * p.budget_used:.3f}% of the budget)",
        f"loss        {p.loss:.4f} predicted",
        f"before rounding: d_model {p.continuous['d_model']:.0f}, n_layers {p.continuous['n_layers']:.1f}, "
        f"{human(p.continuous['params'])} params, {human(p.continuous['tokens'])} tokens, "
        f"loss {p.continuous['loss']:.4f}",
    ]
    hw = _plan_hardware(p, args) if args is not None else None
    if p.step_time is not None:
        lines.insert(4, f"hardware    step {p.step_time * 1e3:.1f} ms, MFU {100 * p.mfu:.1f}%, {p.days:.2f} days, "
                        f"memory/chip {human(p.memory_per_chip, 'B')}")
        if p.layout_result is not None:
            e = p.layout_result.exposed_comm
            lines.insert(5, f"layout      {p.layout_result.layout.to_string()}; bubble "
                            f"{p.layout_result.bubble_time * 1e3:.1f} ms, exposed comm "
                            + (", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in e.items() if v) or "none"))
            from planner.search import plan_note

            note = plan_note(p)
            if note:
                lines.append(f"note        {note}")
    if p.memory is not None:
        lay = p.layout
        how = ("the fastest layout of planner.layouts that fits" if p.layout_result is not None else
               "the least recomputation, then the largest micro-batch, that fits")
        lines.append(f"layout      {lay.to_string()}: remat={lay.remat} and micro-batch {p.micro_batch} chosen as {how}")
        lines.append("memory/chip (bytes per chip, each term on its own line):")
        lines.extend(memory_lines(p.memory))
    if hw is not None:
        lines.insert(5, f"            {hw['chips']} x {hw['target']}, {hw['dtype']}, step time from "
                        f"{hw['step_time_from']}; {hw['sequences_per_replica']} sequences per replica in micro-batches of "
                        f"{hw['micro_batch']} ({hw['accumulation_steps']} accumulation steps); memory: "
                        f"{hw['memory_assumes']}; limit {human(hw['max_memory_per_chip'], 'B')}")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from planner.search import plan

    if args.budget is None and args.hardware is None:
        raise UsageError("give --budget FLOPS (e.g. 1e21), or --hardware NAME --chips N --days D")
    if args.moe:
        if args.plot is not None:
            raise UsageError("--plot: not with --moe")
        return _cmd_plan_moe(args)
    if args.budget is not None and args.hardware is not None:
        raise UsageError("give either --budget or a hardware budget (--hardware/--chips/--days), not both")
    if args.plot is not None:
        check_plot_path(args.plot)
    if args.granularities is not None:
        raise UsageError("--granularities applies with --moe")
    p = plan(args.budget, **_plan_kwargs(args))
    print(dumps(_plan_json(p, args)) if args.json else _plan_text(p, args))
    if args.plot is not None:
        from planner.plots import isoflop_figure, roofline_figure

        if p.step_time is not None:
            from planner.timing import roofline

            import hardware

            step = roofline(p.config, hardware=hardware.get(args.hardware), chips=args.chips,
                            batch_size=p.batch_size, seq_len=p.config.seq_len, dtype=args.dtype or "bf16")
            roofline_figure(step, args.plot, f"plan on {args.chips} x {step.hardware}")
        else:
            isoflop_figure(p, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _cmd_plan_moe(args: argparse.Namespace) -> int:
    """plan --moe: the mixture-of-experts plan under the MoE law, beside the dense plan."""
    from planner.laws import get_law
    from planner.search import plan

    if args.budget is None:
        raise UsageError("--moe plans a FLOP budget: give --budget FLOPS (e.g. 1e23); --hardware and --chips then "
                         "size the experts' memory on that target")
    for flag, v in (("--days", args.days), ("--layout", args.layout),
                    ("--law-file", args.law_file), ("--mfu", args.mfu),
                    ("--max-memory", args.max_memory), ("--dtype", args.dtype)):
        if v is not None:
            raise UsageError(f"{flag}: --moe plans a FLOP budget (--budget); give --hardware and --chips to size the "
                             "experts' memory on a target")
    gs = None
    if args.granularities is not None:
        try:
            gs = tuple(int(g) for g in args.granularities.split(","))
        except ValueError:
            raise UsageError(f"--granularities {args.granularities!r}: expected ints, e.g. 1,2,4,8,16") from None
    kw = _plan_kwargs(args)
    dense_laws = ("chinchilla", "chinchilla-rounded", "epoch", "krajewski-dense")
    # the default compares one paper's two fits on one data set (Krajewski et al. 2024, C4)
    dense_law = "krajewski-dense" if args.law is None else (args.law if args.law in dense_laws else "krajewski-dense")
    moe_law = "krajewski" if args.law is None or args.law in dense_laws else args.law
    chips, target = kw.pop("chips"), kw.pop("hardware")
    kw.pop("law")
    kw.pop("days")
    sparse = plan(args.budget, moe=True, law=moe_law, granularities=gs, chips=chips, hardware=target, **kw)
    dense = plan(args.budget, law=dense_law, **kw)
    m = sparse.moe
    out = {"moe": _plan_json(sparse, None), "dense": _plan_json(dense, None), "experts": m,
           "loss_below_dense": sparse.loss < dense.loss}
    out["moe"]["law"] = m["law"]
    if args.json:
        print(dumps(out))
        return 0
    c = sparse.config
    mem = m["memory"]
    lines = [
        f"budget      {sparse.budget:.3g} FLOPs; convention {sparse.convention}",
        f"MoE law     Krajewski et al. 2024 Eq. 5: L = c + (g/G^gamma + a)/N^alpha + b/D^beta, a={m['law']['a']:g} "
        f"alpha={m['law']['alpha']:g} b={m['law']['b']:g} beta={m['law']['beta']:g} g={m['law']['g']:g} "
        f"gamma={m['law']['gamma']:g} c={m['law']['c']:g}, expansion E={m['expansion']} (N = non-embedding, all experts)",
        f"sparse      d_model={c.d_model} n_layers={c.n_layers} n_heads={c.n_heads} d_ff(dense)={c.d_ff}; "
        f"{m['n_experts']} experts of width {m['d_ff_expert']}, top-{m['experts_per_token']} (G={m['granularity']})",
        f"            {human(m['total_params'])} total params, {human(m['active_params'])} active per token; "
        f"{human(sparse.tokens)} tokens = {sparse.steps:,} steps x {sparse.batch_size} x {c.seq_len}",
        f"            loss {sparse.loss:.4f} predicted; by granularity: "
        + ", ".join(f"G={g} {v:.4f}" for g, v in m["loss_by_granularity"].items()),
        f"experts     {human(mem['expert_params'])} routed-expert params, {human(mem['total_bytes'], 'B')} of weights, "
        "gradients and AdamW state" + (f", {human(mem['bytes_per_chip'], 'B')} per chip over ep={mem['ep']}"
                                       if "bytes_per_chip" in mem else "")
        + (f" ({100 * mem['hbm_fraction']:.0f}% of a {mem['target']}'s {human(mem['hbm_bytes'], 'B')}"
           f"{'' if mem['fits'] else ': does not fit, add chips'})" if "target" in mem else ""),
        f"dense       {human(dense.params)} params: d_model={dense.config.d_model} n_layers={dense.config.n_layers}; "
        f"{human(dense.tokens)} tokens; loss {dense.loss:.4f} predicted by the dense law "
        f"(E={dense.law.E:.4g} A={dense.law.A:.4g} B={dense.law.B:.4g} alpha={dense.law.alpha:.4g} beta={dense.law.beta:.4g})",
        f"sparse - dense: {sparse.loss - dense.loss:+.4f} nats"
        + (" (Krajewski et al. 2024's MoE and dense fits, both on their C4 runs)" if dense.law == get_law("krajewski-dense")
           else " (the two laws were fitted on different data: see the README's MoE section)"),
    ]
    lines += [f"note: {n}" for n in sparse.notes]
    print("\n".join(lines))
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    import numpy as np

    from planner.search import frontier

    lo, hi = args.from_, args.to
    if not (0 < lo < hi) or not all(map(np.isfinite, (lo, hi))):
        raise UsageError(f"--from {lo:g} --to {hi:g}: need 0 < from < to")
    if not 2 <= args.points <= 1000:
        raise UsageError(f"--points {args.points}: need 2 to 1000 budgets")
    budgets = np.geomspace(lo, hi, args.points).tolist()
    if args.hardware is not None:
        raise UsageError("frontier sweeps FLOP budgets; drop --hardware (or use 'planner plan' for one machine budget)")
    kw = _plan_kwargs(args)
    if args.plot is not None:
        check_plot_path(args.plot)
    plans = frontier(budgets, **kw)
    if args.json:
        print(dumps([_plan_json(p, args) for p in plans]))
    else:
        law = plans[0].law
        rows = []
        for p in plans:
            n6, d6 = law.optimal_allocation(p.budget)
            rows.append((f"{p.budget:.3g}", human(p.params), human(p.tokens), f"{p.tokens / p.params:.1f}",
                         p.config.d_model, p.config.n_layers, f"{p.loss:.4f}", human(float(n6)), human(float(d6))))
        print(table(("budget", "params", "tokens", "tok/param", "d_model", "layers", "loss", "N (6ND law)",
                     "D (6ND law)"), rows, "lrrrrrrrr"))
    if args.plot is not None:
        from planner.plots import frontier_figure

        frontier_figure(plans, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from planner.laws import dataset_names, fit_scaling_law, load_dataset, load_runs_csv

    if (args.csv is None) == (args.dataset is None):
        raise UsageError("give a CSV file or --dataset NAME (one of: " + ", ".join(dataset_names()) + "), not "
                         + ("both" if args.csv is not None else "neither"))
    if args.out is not None:
        check_writable(args.out, "--out")
    n, d, loss = load_runs_csv(args.csv) if args.csv is not None else load_dataset(args.dataset)
    r = fit_scaling_law(n, d, loss, delta=args.delta, bootstrap=args.bootstrap,
                        exclude_highest_loss=args.exclude_highest, params=args.params)
    law = r.law
    out = {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "params": law.params,
           "n_points": r.n_points, "objective": float(r.objective), "stderr": r.stderr, "intervals": r.intervals}
    if args.out is not None:
        write_text(args.out, dumps(out) + "\n", "--out")
    if args.json:
        print(dumps(out))
        return 0
    rows = [(k, f"{getattr(law, k):.6g}", f"{r.stderr[k]:.3g}" if r.stderr else "-")
            for k in ("E", "A", "B", "alpha", "beta")]
    print(f"fitted L(N, D) = E + A/N^alpha + B/D^beta on {r.n_points} runs (Huber delta {args.delta:g} on log-loss, "
          f"L-BFGS from a grid of starts)\n")
    print(table(("constant", "value", "std. error" + (f" ({args.bootstrap} bootstraps)" if args.bootstrap else "")),
                rows))
    n_opt, d_opt = law.optimal_allocation(1e21)
    print(f"\nat C = 1e21: N_opt {human(float(n_opt))}, D_opt {human(float(d_opt))} (C = 6ND)")
    if args.out is not None:
        print(f"written to {args.out}; plan with it: planner plan --budget 1e21 --law-file {args.out}")
    return 0


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--law", help="chinchilla (default), chinchilla-rounded, epoch")
    p.add_argument("--law-file", dest="law_file", metavar="FILE", help="a law fitted by 'planner fit --out'")
    p.add_argument("--base", metavar="PRESET", help="preset fixing vocab, seq, MLP/norm/position, tying "
                                                    "(default: Llama-style, 32k vocab, 2048 tokens)")
    p.add_argument("--base-hf", dest="base_hf", metavar="CONFIG_JSON",
                   help="the base read from a Hugging Face config.json instead of a preset")
    p.add_argument("--convention", default="xla", help="how a step's FLOPs count (default xla)")
    p.add_argument("--hardware", metavar="NAME", help="hardware budget: target name or spec file")
    p.add_argument("--chips", type=int, help="hardware budget: chips")
    p.add_argument("--days", type=float, help="hardware budget: days")
    p.add_argument("--mfu", type=float, help="hardware budget: expected MFU (default: roofline's prediction)")
    p.add_argument("--dtype", choices=("bf16", "fp32", "fp8"), help="hardware budget: dtype (default bf16)")
    p.add_argument("--batch-tokens", dest="batch_tokens", type=float,
                   help="tokens per step (default DeepSeek's B_opt = 0.292 C^0.3271)")
    p.add_argument("--free-mlp-ratio", dest="free_mlp_ratio", action="store_true", help="search d_ff/d_model too")
    p.add_argument("--aspect", metavar="MIN:MAX", help="allowed d_model / n_layers range")
    p.add_argument("--n-layers", dest="n_layers", type=int, help="fix the depth")
    p.add_argument("--d-model", dest="d_model", type=int, help="fix the width")
    p.add_argument("--max-memory", dest="max_memory", type=float,
                   help="hardware budget: bytes per chip (default the chip's HBM)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a field of the base (repeatable): vocab_size, seq_len, n_kv_heads, d_ff, mlp, ...")
    p.add_argument("--layout", metavar="FIELDS", help="hardware budget: the run's layout, e.g. "
                   "'fsdp=8,attention=flash' (remat and micro_batch are searched unless given)")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    from planner import __version__

    parser = _Parser(prog="planner", description="What a transformer costs, and what shape to train.")
    parser.add_argument("--version", action="version", version=f"planner (scaling-planner) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("count", help="count a model's parameters, and with --flops its FLOPs, per component")
    _add_config_args(p)
    p.add_argument("--flops", action="store_true", help="count FLOPs (any of the options below implies it)")
    p.add_argument("--mode", choices=MODES, help="forward (default), backward or train")
    p.add_argument("--convention", metavar="NAME",
                   help=f"xla (default), all, or one of: {', '.join(CONVENTIONS)}")
    p.add_argument("--batch", type=int, metavar="B", help="sequences per step (default 1)")
    p.add_argument("--seq", type=int, metavar="T", help="tokens per sequence (default: the config's seq_len)")
    p.add_argument("--causal", action="store_true",
                   help="halve the attention matmuls (MFU convention; fma, no_fma, xla only)")
    p.add_argument("--block-skip", dest="block_skip", type=int, metavar="K",
                   help="also show the attention a block-skipping kernel with K x K tiles executes "
                        "(causal and sliding-window tiles skipped) beside the materialised s x s count")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("validate", help="compare the closed form with XLA's cost analysis, per component")
    _add_config_args(p)
    p.add_argument("--grid", action="store_true", help="run the built-in sweep of 24 configs")
    p.add_argument("--arch-grid", dest="arch_grid", action="store_true",
                   help="run the sweep of 10 small configs shaped like each public family (every architecture option)")
    p.add_argument("--mode", choices=("forward", "train"), help="forward (default) or train; --grid: both")
    p.add_argument("--stage", choices=("lowered", "compiled"), default="lowered",
                   help="cost analysis of the lowered (default) or compiled program")
    p.add_argument("--batch", type=int, metavar="B", help="sequences (default 1)")
    p.add_argument("--seq", type=int, metavar="T", help="tokens per sequence (default: the config's seq_len)")
    p.add_argument("--scan", action="store_true", help="layers under nnx.scan (--grid: both ways by default)")
    p.add_argument("--target", metavar="T", help="compile-only for a real chip instead of XLA:CPU: "
                   "tpu-v5p:2x2x1, tpu-v5e:4x4, tpu-v4:2x2x1, tpu-v6e:2x2, h100:8, a100-80gb:8 (mode default: "
                   "train); with a sharded --layout, the slice whose collectives are checked")
    p.add_argument("--layout", metavar="L", help="how the step is split: with --target, dp=N compiles the "
                   "data-parallel step for the chip; a sharded layout (e.g. fsdp=4,tp=2) also checks the "
                   "step's collectives, with --target or --devices")
    p.add_argument("--devices", type=int, metavar="N", help="simulated CPU devices for --layout (a subprocess)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("hardware", help="the shipped hardware targets, with their sources")
    p.add_argument("--sources", action="store_true", help="print the source of every number")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("time", help="roofline step time, MFU and memory per chip on a target")
    _add_config_args(p)
    p.add_argument("--hardware", metavar="NAME", help="a target name, alias, or spec file (.toml)")
    p.add_argument("--chips", type=int, default=1, help="data-parallel chips (default 1)")
    p.add_argument("--target", metavar="T", help="also compile the step for this compile-only target "
                   "(e.g. tpu-v5p:2x2x1; its chip must be --hardware) and print XLA's optimal_seconds beside the roofline")
    p.add_argument("--batch", type=int, metavar="B", help="global sequences per step (default 1)")
    p.add_argument("--seq", type=int, metavar="T", help="tokens per sequence (default: the config's seq_len)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp8"), help="compute dtype (default bf16)")
    p.add_argument("--param-dtype", dest="param_dtype", default="fp32", choices=("fp32", "bf16"),
                   help="parameter and gradient dtype (default fp32)")
    p.add_argument("--remat", action="store_true", help="memory with full activation rematerialisation")
    p.add_argument("--layout", metavar="FIELDS", help="execution layout, e.g. 'remat=selective,attention=flash,"
                   "micro_batch=2,fsdp=8' (see README 'Layouts'); overrides --dtype/--param-dtype")
    p.add_argument("--plot", metavar="PNG", help="write the per-component roofline as a PNG (needs matplotlib)")
    p.add_argument("--shard", action="store_true",
                   help="memory with parameters, gradients and AdamW state sharded over the chips (FSDP)")
    p.add_argument("--run", metavar="NAME", help="a shipped published run: predicted against published step time")
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("layout", help="the fastest layouts (mesh, micro-batch, remat) of a model on a cluster")
    _add_config_args(p)
    p.add_argument("--hardware", metavar="NAME", required=True, help="a target name, alias, or spec file (.toml)")
    p.add_argument("--chips", type=int, required=True, help="chips in the cluster")
    p.add_argument("--batch-tokens", dest="batch_tokens", metavar="TOKENS", required=True,
                   help="tokens per step, e.g. 4M (rounded to whole sequences)")
    p.add_argument("--seq", type=int, metavar="T", help="tokens per sequence (default: the config's seq_len)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp8"), help="compute dtype (default bf16)")
    p.add_argument("--slices", type=int, default=1, help="TPU slices joined by DCN (default 1)")
    p.add_argument("--top", type=int, default=10, help="layouts to show (default 10)")
    p.set_defaults(func=cmd_layout)

    p = sub.add_parser("calibrate", help="measure this machine's matmul FLOP/s and memory bandwidth")
    p.add_argument("--out", metavar="FILE", help="write the measured spec here (a TOML target file)")
    p.add_argument("--seconds", type=float, default=2.0, help="time to spend measuring (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("plan", help="the compute-optimal shape for a budget (the main job)")
    p.add_argument("--budget", type=float, metavar="FLOPS", help="training FLOPs to spend, e.g. 1e21")
    p.add_argument("--plot", metavar="PNG", help="write the plan's roofline (hardware budget) or its isoFLOP "
                                                 "curve (needs matplotlib)")
    p.add_argument("--moe", action="store_true", help="plan a mixture of experts under the MoE law (Krajewski et "
                                                      "al. 2024) and show it beside the dense plan")
    p.add_argument("--granularities", metavar="G,G,...", help="with --moe: the granularities to try "
                                                              "(default 1,2,4,8,16)")
    _add_plan_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("frontier", help="plans for many budgets, with the C = 6ND closed form beside them")
    p.add_argument("--from", dest="from_", type=float, default=1e18, help="smallest budget (default 1e18)")
    p.add_argument("--to", type=float, default=1e25, help="largest budget (default 1e25)")
    p.add_argument("--points", type=int, default=8, help="budgets, log-spaced (default 8)")
    p.add_argument("--plot", metavar="PNG", help="write the frontier and isoFLOP curves (needs matplotlib)")
    _add_plan_args(p)
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to your runs (CSV)")
    p.add_argument("csv", nargs="?", help="CSV with columns N (params), D (tokens) or C (FLOPs), loss")
    p.add_argument("--dataset", metavar="NAME", help="fit a data set shipped with the package instead of a CSV: "
                                                     "chinchilla-epoch (Epoch AI's extraction of Chinchilla's Fig. 4)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta (default 1e-3, as Hoffmann et al.)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for standard errors")
    p.add_argument("--exclude-highest", dest="exclude_highest", type=int, default=0,
                   help="drop the N highest-loss runs first (Epoch dropped 5)")
    p.add_argument("--params", default="total", choices=("total", "non_embedding"), help="which N the CSV has")
    p.add_argument("--out", metavar="JSON", help="write the fitted law (for plan --law-file)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("presets", help="list the named configs and their sources")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(_join_negative_values(argv))
        return args.func(args)
    except ValueError as err:  # UsageError included
        # one line, whatever the input held (a value with a newline is shown escaped)
        message = str(err).replace("\r", "\\r").replace("\n", "\\n")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `planner plan ... | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
