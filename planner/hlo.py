"""Reading XLA's view of a program: its cost analysis, and the dot instructions of its HLO text.

`cost_of` reads ``cost_analysis()`` robustly across jax versions and stages. `parse_hlo` walks
HLO text (lowered or compiled) and sums 2 * |output| * |contracting dims| over every ``dot``
(REFERENCES.md §3), attributing each to the FLOP component named in its ``op_name`` metadata
(`models.Transformer` tags its ops with ``jax.named_scope``), and notes while loops and custom
calls, which XLA's cost analysis counts once and as -1.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

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
            if not re.match(r"dot\(", call):
                continue
            _, ops, attrs = _operands(call)
            out, lhs = _dims(type_str), shapes.get(ops[0]) if ops else None
            contract = _CONTRACT.search(attrs)
            if out is None or lhs is None or contract is None:
                raise ValueError(f"cannot read the dot instruction: {line.strip()[:200]}")
            k = math.prod(lhs[int(i)] for i in contract.group(1).split(",") if i)
            name = (_OP_NAME.search(line) or [None, ""])[1]
            # segments look like "q", "jvp(q)" or "transpose(jvp(q))": the innermost word names it
            words = [re.findall(r"[A-Za-z_]+", seg) for seg in name.split("/")]
            tag = next((w[-1] for w in reversed(words) if w and w[-1] in components), None)
            dots.append(Dot(2 * math.prod(out) * k * times.get(comp, 1), tag, comp, comp in in_loop, name))
    return HloSummary(dots, n_while, custom, remat)


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

