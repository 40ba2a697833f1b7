"""Networks as they are built: tiers of links, where a mesh axis lands on them, and what a
collective over that axis costs.

A cluster has two tiers:

- the **fast** tier: an NVLink/NVSwitch domain on GPUs (8 GPUs, or 72 for NVL72; every pair at
  the full per-GPU bandwidth), or the ICI torus of one TPU slice (per-axis links with
  wraparound on full cubes);
- the **scale-out** tier: a rail-optimised fat tree with one NIC per GPU, or the data-centre
  network (DCN) between TPU slices.

A spec file describes them: ``interconnect_bandwidth`` and ``domain_size`` are the fast tier,
``inter_node_bandwidth`` the scale-out tier, and its ``[network]`` table the rest (kinds,
latencies, torus dimensions), each number with its source under ``network.<key>``.

Collective times (``V`` = bytes of the full buffer on each chip, ``n`` = group size):

- ring on a switch or a fat tree (alpha-beta; Patarasuk & Yuan 2009; Thakur et al. 2005):
  all-gather and reduce-scatter ``(n - 1)/n V / B + (n - 1) alpha``, all-reduce twice that;
- on a torus, per axis with bidirectional links and wraparound, a group spread over ``k``
  physical axes moves ``V (n - 1)/n`` over ``2 k`` links at once (scaling-book, "Sharded
  Matrices and How to Multiply Them", the AllGather cost: ``T = V / W_ici`` with ``W_ici`` the
  bidirectional bandwidth, divided by the number of axes it spans); without wraparound one
  direction;
- a group that spans both tiers is bound by the slower one.

Mesh axes are placed innermost first (``tp``, ``cp``, ``fsdp``, ``dp``, ``pp``): an axis whose
``stride x degree`` fits in the fast domain stays on it. Every function here is arithmetic on
its numbers, so degrees may be `jnp` arrays (under `jit` and `vmap`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp

#: Keys of a spec file's [network] table: key -> (type, what it is).
NETWORK_KEYS: dict[str, tuple[type, str]] = {
    "fast_kind": (str, "'switch' (NVSwitch / Infinity Fabric), 'torus' (TPU ICI) or 'none'"),
    "fast_latency": (float, "seconds per ring step (switch) or per hop (torus)"),
    "torus_dims": (int, "torus dimensions (2 or 3)"),
    "link_bandwidth": (float, "one-way bytes/s of one ICI link (torus only)"),
    "wraparound_min_chips": (int, "smallest slice with wraparound links (torus only)"),
    "scale_out_kind": (str, "'fat-tree' (rail-optimised InfiniBand / RoCE) or 'dcn'"),
    "scale_out_latency": (float, "seconds per ring step between domains"),
}
FAST_KINDS = ("switch", "torus", "none")
SCALE_OUT_KINDS = ("fat-tree", "dcn")

#: Achievable fraction of the link bandwidth a bulk collective reaches (bus bandwidth / link).
#: NVLink rings: NVIDIA's nccl-tests on DGX A100 reach about 230 of 300 GB/s bus bandwidth
#: (0.77); Calculon's A100 system file uses 0.65 for NVLink and 0.9 for InfiniBand
#: (calculon-ai/calculon systems/a100_80g.json). ICI: scaling-book ("How to Think About TPUs")
#: measures all-gathers near the link peak for large arrays. Those are the starting values;
#: `planner.published` refits nothing here (see benchmarks/published_runs.py for the check).
FAST_EFFICIENCY = {"switch": 0.7, "torus": 0.9, "none": 1.0}
SCALE_OUT_EFFICIENCY = {"fat-tree": 0.9, "dcn": 0.9}

#: Collective kinds and their ring cost in units of (n - 1)/n V / B.
COLLECTIVE_FACTORS = {"all_gather": 1.0, "reduce_scatter": 1.0, "all_reduce": 2.0, "all_to_all": 0.5,
                      "send": None}

#: The order mesh axes are laid onto the chips, innermost (fastest-varying) first.
PLACEMENT_ORDER = ("tp", "cp", "fsdp", "dp", "pp")


def check_network_table(who: str, table: dict, sources: dict) -> None:
    """ValueError naming the key, for a [network] table with an unknown key, a bad value, or a
    number without its "network.<key>" source."""
    for key, value in table.items():
        if key not in NETWORK_KEYS:
            raise ValueError(f"{who}: network has unknown key {key!r}; valid: {', '.join(NETWORK_KEYS)}")
        kind, what = NETWORK_KEYS[key]
        if kind is str:
            valid = FAST_KINDS if key == "fast_kind" else SCALE_OUT_KINDS
            if value not in valid:
                raise ValueError(f"{who}: network.{key}={value!r}: must be one of {', '.join(valid)}")
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok or (kind is int and not isinstance(value, int)):
            raise ValueError(f"{who}: network.{key}={value!r}: must be a positive {kind.__name__} ({what})")
        text = sources.get(f"network.{key}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{who}: sources['network.{key}'] is missing; every number needs 'source, date'")


class Tier(NamedTuple):
    """One tier of the network, per chip."""

    name: str  # "nvlink", "ici", "infiniband", "dcn", ...
    kind: str  # "switch", "torus", "fat-tree", "dcn", "none"
    size: float  # chips in one domain of this tier (math.inf for the outermost)
    bandwidth: float  # one-way bytes/s per chip (switch, fat tree) or per link (torus)
    latency: float  # seconds per ring step / hop
    efficiency: float  # achievable fraction of ``bandwidth``
    dims: int = 1  # torus dimensions
    wraparound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Network(NamedTuple):
    """The tiers a run of ``chips`` chips sees: ``fast`` (one domain / slice), ``scale_out``."""

    chip: str
    chips: int
    fast: Tier
    scale_out: Tier

    def to_dict(self) -> dict[str, Any]:
        return {"chip": self.chip, "chips": self.chips, "fast": self.fast.to_dict(),
                "scale_out": self.scale_out.to_dict()}


_DEFAULT_KIND = {"nvlink": "switch", "infinity-fabric": "switch", "ici-3d-torus": "torus",
                 "ici-2d-torus": "torus", "none": "none"}


def network(spec, chips: int = 1, *, slices: int = 1) -> Network:
    """The network of ``chips`` chips of ``spec`` (a `hardware.Spec`).

    Args:
      slices: TPU only: the run spans this many ICI slices joined by DCN (MaxText's
        ``dcn_data_parallelism``); each slice has ``chips / slices`` chips, at most the pod.
        GPUs take ``slices=1`` (their domains are fixed by the NVLink domain size).
    """
    net = spec.network
    fast_kind = net.get("fast_kind", _DEFAULT_KIND.get(spec.interconnect, "switch"))
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise ValueError(f"slices={slices!r}: must be a positive int")
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ValueError(f"chips={chips!r}: must be a positive int")
    if fast_kind != "torus" and slices != 1:
        raise ValueError(f"slices={slices}: only TPU slices (a torus network) take slices; {spec.name} "
                         f"has a {fast_kind} domain of {spec.domain_size} chips. Use slices=1")
    if chips % slices:
        raise ValueError(f"slices={slices}: must divide chips={chips}")
    fast_name = {"switch": spec.interconnect, "torus": "ici", "none": "none"}[fast_kind]
    if fast_kind == "torus":
        per_slice = chips // slices
        if per_slice > spec.domain_size:
            raise ValueError(f"chips / slices = {per_slice}: above {spec.name}'s largest slice "
                             f"({spec.domain_size} chips); use slices >= {math.ceil(chips / spec.domain_size)}")
        dims = int(net.get("torus_dims", 3 if "3d" in spec.interconnect else 2))
        link = float(net.get("link_bandwidth", spec.interconnect_bandwidth / (2 * dims)))
        wrap = per_slice >= int(net.get("wraparound_min_chips", 4**dims))
        fast = Tier(fast_name, "torus", per_slice, link, float(net.get("fast_latency", 1e-6)),
                    FAST_EFFICIENCY["torus"], dims, wrap)
    else:
        size = spec.domain_size if fast_kind == "switch" else 1
        fast = Tier(fast_name, fast_kind, size, spec.interconnect_bandwidth,
                    float(net.get("fast_latency", 1e-5)), FAST_EFFICIENCY[fast_kind])
    out_kind = net.get("scale_out_kind", "dcn" if fast_kind == "torus" else "fat-tree")
    scale_out = Tier({"dcn": "dcn", "fat-tree": "infiniband"}[out_kind], out_kind, math.inf,
                     spec.inter_node_bandwidth, float(net.get("scale_out_latency", 2e-5)),
                     SCALE_OUT_EFFICIENCY[out_kind])
    return Network(spec.name, chips, fast, scale_out)


def strides(degrees: dict[str, Any]) -> dict[str, Any]:
    """Stride of each mesh axis (product of the degrees placed inside it, `PLACEMENT_ORDER`).

    >>> strides({"tp": 8, "dp": 4, "pp": 2})["pp"]
    32
    """
    out, inner = {}, 1
    for name in PLACEMENT_ORDER:
        out[name] = inner
        inner = inner * degrees.get(name, 1)
    return out


def _ring(kind: str, nbytes, n, bandwidth, latency):
    if kind == "send":
        return nbytes / bandwidth + latency
    # On a switch or fat tree each chip sends (n - 1)/n of its all-to-all buffer over its own
    # link, as much as an all-gather; the 1/2 of `COLLECTIVE_FACTORS` is a torus ring's.
    factor = 1.0 if kind == "all_to_all" else COLLECTIVE_FACTORS[kind]
    return factor * ((n - 1) / n * nbytes / bandwidth + (n - 1) * latency)


def _torus(kind: str, nbytes, n, tier: Tier):
    """A collective over ``n`` chips of one torus slice, spread over as many physical axes as
    ``n`` needs (k = log n / log side, 1 <= k <= dims; side = slice ** (1 / dims))."""
    side = jnp.maximum(jnp.asarray(tier.size, jnp.float32) ** (1.0 / tier.dims), 2.0)
    k = jnp.clip(jnp.log(jnp.maximum(n, 1.0)) / jnp.log(side), 1.0, float(tier.dims))
    directions = jnp.where(tier.wraparound, 2.0, 1.0)
    bw = tier.bandwidth * tier.efficiency * directions * k
    hops = k * (jnp.maximum(n, 1.0) ** (1.0 / k)) / directions
    if kind == "send":
        return nbytes / (tier.bandwidth * tier.efficiency) + tier.latency
    factor = COLLECTIVE_FACTORS[kind]
    return factor * ((n - 1) / n * nbytes / bw + hops * tier.latency)


def collective_time(net: Network, kind: str, nbytes, group, stride=1):
    """Seconds for one collective of ``kind`` over ``group`` chips spaced ``stride`` apart.

    ``nbytes``: the full buffer on each chip (gathered size for all-gather, input size for
    reduce-scatter and all-reduce, message size for a send). A group of 1 costs nothing. Inside
    the fast domain when ``stride x group <= domain``, else bound by the scale-out tier.
    """
    if kind not in COLLECTIVE_FACTORS:
        raise ValueError(f"collective kind {kind!r}: unknown; valid: {', '.join(COLLECTIVE_FACTORS)}")
    n = jnp.asarray(group, jnp.float32)
    span = n * stride if kind != "send" else 2.0 * stride
    f = net.fast
    if f.kind == "torus":
        t_fast = _torus(kind, nbytes, n, f)
    elif f.kind == "switch":
        t_fast = _ring(kind, nbytes, n, f.bandwidth * f.efficiency, f.latency)
    else:
        t_fast = jnp.inf
    s = net.scale_out
    t_out = _ring(kind, nbytes, n, s.bandwidth * s.efficiency, s.latency)
    inside = span <= f.size
    t = jnp.where(inside, t_fast, t_out)
    return jnp.where(n > 1, t, 0.0)


def numbers(net: Network) -> dict[str, Any]:
    """The numeric fields of ``net`` (what `with_numbers` puts back), to pass through `jax.jit`
    as arguments: one compilation then serves every cluster size of a chip."""
    return {f"{t}_{k}": float(getattr(getattr(net, t), k)) for t in ("fast", "scale_out")
            for k in ("size", "bandwidth", "latency", "efficiency", "wraparound")}


def with_numbers(net: Network, nums: dict[str, Any]) -> Network:
    """``net`` with its numeric fields replaced by ``nums`` (e.g. traced arrays)."""
    tiers = {t: getattr(net, t)._replace(**{k: nums[f"{t}_{k}"] for k in
                                          ("size", "bandwidth", "latency", "efficiency", "wraparound")})
             for t in ("fast", "scale_out")}
    return net._replace(**tiers)


def skeleton(net: Network) -> Network:
    """``net`` with its numbers zeroed: the static part (names, kinds, torus dimensions)."""
    return with_numbers(net, {k: 0.0 for k in numbers(net)})._replace(chips=0)


def tier_of(net: Network, group, stride=1) -> str:
    """Name of the tier a concrete group lands on ("ici", "nvlink", "infiniband", "dcn")."""
    return net.fast.name if group * stride <= net.fast.size else net.scale_out.name
