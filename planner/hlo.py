"""Reading XLA's view of a program: its cost analysis, and the dot instructions of its HLO text.

`cost_of` reads ``cost_analysis()`` robustly across jax versions and stages; `parse_collectives`
reads the collectives of a partitioned module (with loop trip counts and mesh axes). `parse_hlo` walks
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
    computations, entry = _split_computations(text)
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
    computations, _ = _split_computations(text)

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



# ----------------------------------------------------------------------------- collectives
#: HLO opcodes of collectives (the async "-start" forms are read, their "-done" skipped).
COLLECTIVE_OPCODES = {
    "all-gather": "all-gather", "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter", "reduce-scatter-start": "reduce-scatter",
    "all-reduce": "all-reduce", "all-reduce-start": "all-reduce",
    "all-to-all": "all-to-all", "ragged-all-to-all": "all-to-all",
    "collective-permute": "collective-permute", "collective-permute-start": "collective-permute",
}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


class HloCollective(NamedTuple):
    """One collective instruction of a compiled, partitioned HLO module.

    ``bytes`` follows `planner.collectives.Collective`: the all-gather's result, the
    reduce-scatter's operand, the all-reduce's, all-to-all's and permute's operand (tuple
    operands summed; a combined collective is one instruction). ``count`` is how many times it
    runs per step: the product of the trip counts of the while loops around it.
    ``axes`` names the mesh axes its groups span (``None`` when no mesh was given)."""

    kind: str
    opcode: str
    bytes: int
    count: int
    group_size: int
    axes: tuple[str, ...] | None
    dtype: str
    op_name: str
    computation: str
    trip_count_known: bool

    @property
    def total_bytes(self) -> int:
        return self.bytes * self.count

    @property
    def axis_name(self) -> str:
        return "+".join(self.axes) if self.axes else "?"


def _type_bytes(type_str: str) -> tuple[int, str]:
    """Bytes and (first) dtype of an HLO type: 'bf16[2,3]{1,0}' or a tuple '(f32[2], s32[])'."""
    total, first = 0, ""
    for m in re.finditer(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]", type_str):
        dt, dims = m.group(1), m.group(2)
        size = _DTYPE_BYTES.get(dt, 1 if dt.startswith("f8") else None)
        if size is None:
            continue
        first = first or dt
        total += size * math.prod(int(x) for x in dims.split(",") if x)
    return total, first


def _iota_groups(text: str) -> list[list[int]] | None:
    """'[2,4]<=[8]' or '[4,2]<=[2,4]T(1,0)': XLA's iota replica-group list (IotaReplicaGroupList,
    xla/hlo/ir/collective_device_list.h): reshape iota(prod) to the dims after '<=', transpose
    by T(...), reshape to [groups, group_size]."""
    import numpy as np

    m = re.match(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if not m:
        return None
    out_shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(3):
        ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(out_shape[0], -1).tolist()


def _mesh_groups(text: str) -> list[list[int]] | None:
    """"mesh['axis_0'=4,'axis_1'=2] {'axis_0'}": the device iota laid out on that mesh, one group
    per combination of the axes not listed (the listed axes vary inside a group). The devices
    on the mesh may be given (``device_ids=([2,2,2]T(1,0,2))``: iota reshaped to [2,2,2] and
    transposed; ``device_ids=[8]<=[2,4]T(1,0)``; or an explicit ``device_ids={0,2,...}``), as
    XLA prints a mesh whose devices are not in iota order (xla/hlo/ir/mesh_and_axis.h)."""
    import numpy as np

    m = re.match(r"mesh\[([^\]]*)\]\s*(?:<=\[[\d,]+\](?:T\([\d,]+\))?\s*)?"
                 r"(?:,\s*device_ids=(\{[\d,]*\}|\S*?))?\s*\{('[^}]*)\}", text)
    if not m:
        return None
    names, sizes = [], []
    for item in m.group(1).split(","):
        name, _, size = item.partition("=")
        names.append(name.strip().strip("'\""))
        sizes.append(int(size))
    grouped = [g.strip().strip("'\"") for g in m.group(3).split(",") if g.strip()]
    n = math.prod(sizes)
    ids = np.arange(n)
    devices = (m.group(2) or "").strip()
    if devices.startswith("(") and devices.endswith(")"):
        devices = devices[1:-1]
    if devices.startswith("{"):
        ids = np.array([int(x) for x in devices.strip("{}").split(",") if x])
    elif devices:
        d = re.match(r"\[([\d,]+)\](?:<=\[([\d,]+)\])?(?:T\(([\d,]+)\))?", devices)
        if not d:
            return None
        dims = [int(x) for x in (d.group(2) or d.group(1)).split(",")]
        arr = np.arange(n).reshape(dims)
        if d.group(3):
            arr = arr.transpose([int(x) for x in d.group(3).split(",")])
        ids = arr.reshape(-1)
    if ids.size != n:
        return None
    ids = ids.reshape(sizes)
    keep = [i for i, name in enumerate(names) if name not in grouped]
    moved = ids.transpose(keep + [names.index(g) for g in grouped])
    size = math.prod(sizes[names.index(g)] for g in grouped)
    return moved.reshape(-1, size).tolist()


def replica_groups(attrs: str) -> list[list[int]] | None:
    """The replica groups of a collective's attributes, in any of XLA's printed forms: explicit
    ``{{0,1},{2,3}}``, iota ``[2,4]<=[8]`` / ``[4,2]<=[2,4]T(1,0)``, and the mesh form
    ``mesh['axis_0'=4,'axis_1'=2] {'axis_0'}``; for a permute, its source-target pairs.
    None: all devices in one group (``replica_groups={}``)."""
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
    if m:
        return [[int(x) for x in p.split(",")] for p in re.findall(r"\{(\d+,\d+)", m.group(1) + "}")]
    m = re.search(r"replica_groups=(.*)", attrs)
    if not m:
        return None
    rest = m.group(1)
    if rest.startswith("mesh["):
        return _mesh_groups(rest)
    if rest.startswith("["):
        return _iota_groups(rest)
    if rest.startswith("{}"):
        return None
    m = re.match(r"\{((?:\{[\d,]*\},?)*)\}", rest)
    if not m:
        return None
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]


def group_axes(groups: list[list[int]] | None, mesh_shape: dict[str, int], *, permute: bool = False
               ) -> tuple[tuple[str, ...], int]:
    """Mesh axes a collective's groups span, and its group size. Device ids are positions in
    the mesh (row-major over ``mesh_shape``: the partition ids of an SPMD program). For a permute
    the axes are those on which a source and its target differ."""
    import numpy as np

    names = list(mesh_shape)
    shape = [mesh_shape[n] for n in names]
    n_dev = math.prod(shape)
    if groups is None:
        groups = [list(range(n_dev))]
    varying: set[int] = set()
    for g in groups:
        coords = np.array([np.unravel_index(i, shape) for i in g if i < n_dev])
        if len(coords) > 1:
            varying.update(int(j) for j in np.nonzero((coords != coords[0]).any(axis=0))[0])
    axes = tuple(names[j] for j in sorted(varying) if shape[j] > 1)
    size = 2 if permute else max(len(g) for g in groups)
    if permute:
        size = math.prod(mesh_shape[a] for a in axes) if axes else 1
    return axes, size


_CALLEE = re.compile(r"\b(to_apply|calls|body|condition|branch_computations)=(?:\{([^}]*)\}|(%?[\w.\-]+))")


def _trip_count(line: str, computations: dict[str, list[str]]) -> int | None:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    if m:
        return int(m.group(1))
    m = re.search(r"\bcondition=%?([\w.\-]+)", line)
    if not m:
        return None
    # the loop condition of lax.scan / fori_loop: compare(i, constant(N)), direction=LT
    body = "\n".join(computations.get(m.group(1), []))
    if re.search(r"direction=LT", body):
        consts = [int(c) for c in re.findall(r"s32\[\]\S* constant\((\d+)\)", body)]
        if consts:
            return max(consts)
    return None


def _split_computations(text: str) -> tuple[dict[str, list[str]], str | None]:
    """An HLO module's text as {computation name: its instruction lines}, and the entry's name."""
    computations: dict[str, list[str]] = {}
    current, entry = None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("HloModule"):
                current = m.group(2)
                computations[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        computations[current].append(line)
    return computations, entry


def parse_collectives(text: str, mesh_shape: dict[str, int] | None = None) -> list[HloCollective]:
    """The collectives of a compiled (SPMD-partitioned) HLO module, with how often each runs.

    Reads every collective instruction: async ``-start`` ops (their ``-done`` skipped), combined
    (tuple) collectives as one instruction with their operands' bytes summed, and collectives
    inside while loops, counted times the loop's trip count (``known_trip_count`` in the
    backend config, else the ``i < N`` of its condition; 1 and ``trip_count_known=False`` when
    neither is there). An all-reduce inside an ``all-reduce-scatter`` fusion (XLA:TPU's
    reduce-scatter: all-reduce, then each device keeps its slice) counts as a reduce-scatter.
    With ``mesh_shape`` (axis -> degree, in mesh order) each is mapped to the mesh axes its
    replica groups span.
    """
    computations, entry = _split_computations(text)
    # how many times each computation runs per step: walk the call graph from the entry
    edges: dict[str, list[tuple[str, int | None, str]]] = {c: [] for c in computations}
    for comp, lines in computations.items():
        for line in lines:
            is_while = re.search(r"\swhile\(", line) is not None
            trip = _trip_count(line, computations) if is_while else 1
            for m in _CALLEE.finditer(line):
                key, names = m.group(1), m.group(2) or m.group(3)
                if is_while and key == "condition":
                    continue  # a loop condition holds no collectives
                for callee in re.split(r"\s*,\s*", names.strip()):
                    callee = callee.lstrip("%")
                    kind = "fusion-rs" if callee.startswith("all-reduce-scatter") else ""
                    edges[comp].append((callee, trip if is_while else 1, kind))
    mult: dict[str, int] = {}
    known: dict[str, bool] = {}
    rs_comps: set[str] = set()
    order = [entry] if entry else list(computations)[-1:]
    for root in order:
        mult[root], known[root] = 1, True
    stack = list(order)
    while stack:
        c = stack.pop()
        for callee, trip, kind in edges.get(c, ()):
            if callee not in computations:
                continue
            if kind:
                rs_comps.add(callee)
            mult[callee] = mult.get(callee, 0) + mult[c] * (trip or 1)
            known[callee] = known.get(callee, True) and known[c] and trip is not None
            stack.append(callee)

    out: list[HloCollective] = []
    for comp, lines in computations.items():
        if comp not in mult:
            continue
        types: dict[str, str] = {}
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            type_str, call = _split_type(m.group(2))
            types[m.group(1)] = type_str
            opcode = call.partition("(")[0].strip()
            if opcode not in COLLECTIVE_OPCODES:
                continue
            kind = COLLECTIVE_OPCODES[opcode]
            _, ops, attrs = _operands(re.sub(r"/\*.*?\*/", "", call))
            nbytes, dtype = 0, ""
            for op in ops:
                b, dt = _type_bytes(types.get(op, ""))
                nbytes += b
                dtype = dtype or dt
            if not ops or nbytes == 0:
                nbytes, dtype = _type_bytes(type_str)
            groups = replica_groups(attrs)
            permute = kind == "collective-permute"
            if mesh_shape:
                axes, size = group_axes(groups, mesh_shape, permute=permute)
            else:
                axes, size = None, (max(len(g) for g in groups) if groups and not permute else 0)
            if kind == "all-gather":
                nbytes *= size  # the result: every member's operand
            if kind == "all-reduce" and comp in rs_comps:
                kind = "reduce-scatter"
            name = (_OP_NAME.search(line) or [None, ""])[1]
            out.append(HloCollective(kind, opcode, nbytes, mult[comp], size, axes, dtype, name, comp,
                                     known.get(comp, False)))
    return out


def collective_bytes_per_axis(colls: list[HloCollective]) -> dict[str, int]:
    """Total buffer bytes per step per mesh axis ("fsdp", "dp+cp", ...)."""
    out: dict[str, int] = {}
    for c in colls:
        out[c.axis_name] = out.get(c.axis_name, 0) + c.total_bytes
    return out


_ASYNC_ALL_TO_ALL = re.compile(r"= \(\((\w+)\[([\d,]*)\][^)]*\), \w+\[[\d,]*\]\S* all-to-all-start\(")


def async_all_to_all_bytes(text: str) -> tuple[int, int]:
    """(bytes, count) of the asynchronous all-to-alls XLA:GPU writes (``all-to-all-start`` /
    ``-done`` pairs, tuple-shaped, which `parse_collectives` does not read): each start's
    operand buffer, the tuple's first element. Straight-line modules only (no loop trip counts).

    >>> async_all_to_all_bytes("%a = ((bf16[1,8,12,64]{3,2,1,0}), bf16[1,8,12,64]{3,2,1,0}) all-to-all-start(%x), "
    ...                        "channel_id=8")
    (12288, 1)
    """
    sizes = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "f8e4m3fn": 1, "f8e5m2": 1, "f64": 8}
    total = count = 0
    for dt, dims in _ASYNC_ALL_TO_ALL.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * sizes[dt]
        count += 1
    return total, count
