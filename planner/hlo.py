"""Reading XLA's view of a program: its cost analysis, and the dot instructions of its HLO text.

`cost_of` reads ``cost_analysis()`` robustly across jax versions and stages. `parse_hlo` walks
HLO text (lowered or compiled) and sums 2 * |output| * |contracting dims| over every ``dot``
(xla/service/hlo_cost_analysis.cc, HandleDot), attributing each to the FLOP component named in its ``op_name`` metadata
(`models.Transformer` tags its ops with ``jax.named_scope``), and notes while loops and custom
calls, which XLA's cost analysis counts once and as -1.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import numpy as np

from planner.flops import FLOP_COMPONENTS


class Cost(NamedTuple):
    """FLOPs and transcendentals as XLA reported them (absent keys read as 0)."""

    flops: float
    transcendentals: float
    bytes_accessed: float


def cost_of(analysis: Any) -> Cost | None:
    """Normalise a ``cost_analysis()`` result: a dict (jax >= 0.5), a list of dicts, one per
    device program (jax <= 0.4.38; summed), or None (not available, e.g. a PJRT plugin's
    lowered stage). Keys whose value is 0 are absent in XLA's output and read as 0."""
    if analysis is None:
        return None
    if isinstance(analysis, dict):
        analysis = [analysis]
    parts = list(analysis)
    if not parts or any(not isinstance(p, dict) for p in parts):
        return None
    get = lambda k: float(sum(p.get(k, 0.0) for p in parts))  # noqa: E731
    return Cost(get("flops"), get("transcendentals"), get("bytes accessed"))


class Dot(NamedTuple):
    """One dot instruction: its FLOPs as XLA counts them, where it is, what it computes."""

    flops: int
    component: str | None  # the FLOP component from op_name, None when untagged
    computation: str
    in_loop: bool  # inside a while body/condition: XLA's cost analysis counts it once
    op_name: str


class HloSummary(NamedTuple):
    dots: list[Dot]
    n_while: int  # while loops (lax.scan, fori_loop); each counts its body once
    custom_calls: list[str]  # custom-call targets (cuBLAS, cuDNN, oneDNN ...): counted as -1
    remat: bool  # ops under a rematerialisation (jax.checkpoint) scope

    @property
    def dot_flops(self) -> int:
        """Dot FLOPs as XLA's cost analysis counts them: every dot once, loop bodies once."""
        return sum(d.flops for d in self.dots)

    def dot_flops_by_component(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for d in self.dots:
            out[d.component] = out.get(d.component, 0) + d.flops
        return out


_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*(->\s*.*)?\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_CALLED = re.compile(r"\b(?:to_apply|calls|body|condition|branch_computations)=\{?([^}\s,]+(?:\s*,\s*%?[\w.\-]+)*)\}?")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_DIM_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_GROUPS = re.compile(r"(feature|batch)_group_count=(\d+)")


def _valid_positions(in_size: int, out_size: int, size: int, stride: int, pad_low: int,
                     lhs_dilate: int, rhs_dilate: int) -> int:
    """(output, window) index pairs of one spatial dim that land on a real input element, not
    on padding or a dilation hole: the per-dim factor of XLA's convolution FMA count
    (HloCostAnalysis::HandleConvolution)."""
    out = np.arange(out_size, dtype=np.int64) * stride - pad_low
    limit = (in_size - 1) * lhs_dilate
    total = 0
    for k in range(size):
        pos = out + k * rhs_dilate
        total += int(np.count_nonzero((pos >= 0) & (pos <= limit) & (pos % lhs_dilate == 0)))
    return total


def _conv_flops(attrs: str, out: list[int], lhs: list[int], line: str) -> int:
    """2 x FMAs of a ``convolution``, as XLA's HloCostAnalysis counts them: (lhs features /
    feature groups) x output features x (lhs batch / batch groups) x the valid (output, window)
    position pairs of every spatial dim. The TPU compiler writes dots, batched ones included, as
    convolutions (the batch dims as dilated spatial dims whose window meets one real element)."""
    labels = _DIM_LABELS.search(attrs)
    if labels is None:
        raise ValueError(f"cannot read the convolution instruction: {line.strip()[:200]}")
    lhs_l, rhs_l, out_l = labels.groups()
    window: dict[str, list[int]] = {}
    w = _WINDOW.search(attrs)
    for item in (w.group(1).split() if w else []):
        key, _, value = item.partition("=")
        if key == "pad":
            window["pad_low"] = [int(p.split("_")[0]) for p in value.split("x")]
        else:
            window[key] = [int(x) for x in value.split("x")]
    groups = {k: int(v) for k, v in _GROUPS.findall(attrs)}
    spatial = sorted(c for c in lhs_l if c.isdigit())
    valid = 1
    for i, d in enumerate(spatial):
        pick = lambda key, default: window.get(key, [default] * len(spatial))[i]  # noqa: E731
        valid *= _valid_positions(lhs[lhs_l.index(d)], out[out_l.index(d)], pick("size", 1), pick("stride", 1),
                                  pick("pad_low", 0), pick("lhs_dilate", 1), pick("rhs_dilate", 1))
    out_features = out[out_l.index("f")]
    fma = (lhs[lhs_l.index("f")] // groups.get("feature", 1)) * out_features \
        * (lhs[lhs_l.index("b")] // groups.get("batch", 1)) * valid
    return 2 * fma


def _split_type(rest: str) -> tuple[str, str]:
    """'f32[2,3]{1,0} dot(a, b), ...' -> ('f32[2,3]{1,0}', 'dot(a, b), ...'); tuples too."""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1:].strip()
    head, _, tail = rest.partition(" ")
    return head, tail.strip()


def _operands(call: str) -> tuple[str, list[str], str]:
    """'dot(a, %b), lhs_...' -> ('dot', ['a', 'b'], ', lhs_...')."""
    opcode, _, rest = call.partition("(")
    depth, i = 1, 0
    while i < len(rest) and depth:
        depth += rest[i] == "("
        depth -= rest[i] == ")"
        i += 1
    inside, attrs = rest[: i - 1], rest[i:]
    names, depth, cur = [], 0, ""
    for ch in inside:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        names.append(cur)
    # an operand may be printed with its type: "f32[2,3]{1,0} %name"
    return opcode.strip(), [n.strip().split()[-1].lstrip("%") for n in names if n.strip()], attrs


def _dims(type_str: str) -> list[int] | None:
    m = _SHAPE.match(type_str)
    if not m:
        return None
    return [int(x) for x in m.group(1).split(",") if x]


def parse_hlo(text: str) -> HloSummary:
    """Dots, loops and custom calls of an HLO module's text (``as_text(dialect="hlo",
    debug_info=True)`` for a lowered program, ``compiled.as_text()`` for a compiled one)."""
    computations: dict[str, list[str]] = {}
    current = entry = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("HloModule"):
                current = m.group(2)
                computations[current] = []
                entry = current if m.group(1) else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        computations[current].append(line)

    calls: dict[str, set[str]] = {c: set() for c in computations}
    sites: dict[str, list[str]] = {c: [] for c in computations}  # callee of every call site
    loop_roots: set[str] = set()
    n_while, custom, remat = 0, [], False
    for comp, lines in computations.items():
        for line in lines:
            for m in _CALLED.finditer(line):
                for callee in re.split(r"\s*,\s*", m.group(1)):
                    calls[comp].add(callee.lstrip("%"))
                    sites[comp].append(callee.lstrip("%"))
            if re.search(r"\swhile\(", line):
                n_while += 1
                for key in ("body", "condition"):
                    m = re.search(rf"\b{key}=%?([\w.\-]+)", line)
                    if m:
                        loop_roots.add(m.group(1))
            if "custom-call(" in line:
                t = _TARGET.search(line)
                custom.append(t.group(1) if t else "?")
            if "remat" in line or "checkpoint" in line:
                remat = True

    in_loop: set[str] = set()
    stack = list(loop_roots)
    while stack:
        c = stack.pop()
        if c in in_loop:
            continue
        in_loop.add(c)
        stack.extend(calls.get(c, ()))

    # A computation called from several sites (jax lowers a rematerialised or custom-VJP
    # function once and calls it from every layer) runs once per site: XLA's cost analysis
    # counts it so. Multiplicity = call sites, transitively from the entry (a loop body once).
    times = _call_counts(entry, sites)

    components = set(FLOP_COMPONENTS)
    dots: list[Dot] = []
    for comp, lines in computations.items():
        shapes: dict[str, list[int] | None] = {}
        parsed = []
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            type_str, call = _split_type(m.group(2))
            shapes[m.group(1)] = _dims(type_str)
            parsed.append((type_str, call, line))
        for type_str, call, line in parsed:
            if not re.match(r"(dot|convolution)\(", call):
                continue
            _, ops, attrs = _operands(call)
            out, lhs = _dims(type_str), shapes.get(ops[0]) if ops else None
            if out is None or lhs is None:
                raise ValueError(f"cannot read the dot instruction: {line.strip()[:200]}")
            if call.startswith("convolution("):
                flops = _conv_flops(attrs, out, lhs, line)
            else:
                contract = _CONTRACT.search(attrs)
                if contract is None:
                    raise ValueError(f"cannot read the dot instruction: {line.strip()[:200]}")
                flops = 2 * math.prod(out) * math.prod(lhs[int(i)] for i in contract.group(1).split(",") if i)
            name = (_OP_NAME.search(line) or [None, ""])[1]
            # segments look like "q", "jvp(q)" or "transpose(jvp(q))": the innermost word names it
            words = [re.findall(r"[A-Za-z_]+", seg) for seg in name.split("/")]
            tag = next((w[-1] for w in reversed(words) if w and w[-1] in components), None)
            dots.append(Dot(flops * times.get(comp, 1), tag, comp, comp in in_loop, name))
    return HloSummary(dots, n_while, custom, remat)



#: Opcodes XLA's HloCostAnalysis gives no FLOPs (data movement, control flow, the dots and
#: convolutions counted by `parse_hlo`, and the transcendentals it counts apart).
_NO_FLOPS = frozenset("""
parameter constant tuple get-tuple-element bitcast reshape broadcast transpose copy copy-start copy-done
slice dynamic-slice dynamic-update-slice concatenate pad iota fusion while call conditional custom-call
all-gather all-gather-start all-gather-done all-reduce-done reduce-scatter-done all-to-all
collective-permute collective-permute-start collective-permute-done after-all partition-id replica-id
rng-get-and-update-state rng-bit-generator gather reverse sort bitcast-convert opt-barrier send recv
send-done recv-done infeed outfeed convolution dot reduce-precision domain get-dimension-size
exponential log tanh rsqrt sqrt power logistic log-plus-one exponential-minus-one cbrt sine cosine
tan erf atan2
""".split())
_REDUCING = ("reduce", "reduce-window", "all-reduce", "all-reduce-start", "reduce-scatter", "scatter",
             "select-and-scatter")


def elementwise_flops_by_component(text: str) -> dict[str | None, int]:
    """Non-dot FLOPs of an HLO module's text per FLOP component (the ``op_name`` tag), counted
    as XLA's HloCostAnalysis does: one per output element of an elementwise op (convert,
    compare and select included, transcendentals not), and for a reduction the reduced
    elements times its reducer's ops (an all-reduce: its output elements). A loop body counts
    once; reducer computations only through their callers."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("HloModule"):
                current = m.group(2)
                computations[current] = []
            continue
        if line.strip() == "}":
            current = None
            continue
        computations[current].append(line)

    def opcode(call: str) -> str:
        return call.partition("(")[0].strip()

    reducers = {m.group(1) for lines in computations.values() for line in lines
                for m in re.finditer(r"\bto_apply=%?([\w.\-]+)", line)}
    reducer_ops = {}
    for name in reducers:
        ops = 0
        for line in computations.get(name, ()):
            m = _INSTR.match(line)
            if m and opcode(_split_type(m.group(2))[1]) not in _NO_FLOPS:
                ops += 1
        reducer_ops[name] = max(ops, 1)

    components = set(FLOP_COMPONENTS)
    out: dict[str | None, int] = {}
    for comp, lines in computations.items():
        if comp in reducers:
            continue
        shapes: dict[str, list[int] | None] = {}
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            type_str, call = _split_type(m.group(2))
            dims = _dims(type_str)
            shapes[m.group(1)] = dims
            op = opcode(call)
            if op in _NO_FLOPS or op.endswith("-done"):
                continue
            if op in _REDUCING:
                _, ops, _ = _operands(call)
                apply = re.search(r"\bto_apply=%?([\w.\-]+)", line)
                per = reducer_ops.get(apply.group(1), 1) if apply else 1
                if op.startswith("all-reduce"):
                    sizes = [math.prod(_dims(t) or []) for t in re.findall(r"[a-z]\w*\[[\d,]*\]", type_str)]
                    n = sum(sizes) if not op.endswith("-start") else max(sizes, default=0)
                elif op in ("reduce", "reduce-window"):
                    inputs = shapes.get(ops[0]) if ops else None
                    n = (math.prod(inputs) - math.prod(dims or [])) if inputs is not None else 0
                else:
                    n = math.prod(dims or [])
                flops = n * per
            elif dims is None:
                continue
            else:
                flops = math.prod(dims)
            name = (_OP_NAME.search(line) or [None, ""])[1]
            words = [re.findall(r"[A-Za-z_]+", seg) for seg in name.split("/")]
            tag = next((w[-1] for w in reversed(words) if w and w[-1] in components), None)
            out[tag] = out.get(tag, 0) + flops
    return out


def _call_counts(entry: str | None, sites: dict[str, list[str]]) -> dict[str, int]:
    """How many times each computation is reached from ``entry``, counting every call site."""
    if entry is None:
        return {}
    order: list[str] = []
    seen: set[str] = set()

    def visit(c: str) -> None:  # post-order: callees after callers once reversed
        if c in seen or c not in sites:
            return
        seen.add(c)
        for callee in sites[c]:
            visit(callee)
        order.append(c)

    visit(entry)
    times = dict.fromkeys(seen, 0)
    times[entry] = 1
    for c in reversed(order):
        for callee in sites[c]:
            if callee in times:
                times[callee] += times[c]
    return times

