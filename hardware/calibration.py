"""Measure this machine with JAX: attained matmul FLOP/s and memory bandwidth, as a `Spec`.

What is measured is what JAX attains here, on whatever backend is present, not a datasheet
peak: jitted square matmuls (2·n³ FLOPs each, one FMA = 2 FLOPs, as XLA's
`kFmaFlops` in xla/service/hlo_cost_analysis.cc) for a
few sizes, the best of the per-size medians; and a jitted elementwise `x * 0.5 + 1` on an array
far larger than any cache (256 MiB on CPU), counting the bytes read plus the bytes written.

fp32 matmuls run at `Precision.HIGHEST`, so "fp32" means true f32 arithmetic as in the shipped
specs (an A100's 1.95e13 is its CUDA-core FP32 rate): at default precision XLA may run f32 dots
as TF32 on NVIDIA GPUs or as one bf16 pass on TPUs. On CPU the two are the same.

The result describes one chip: `domain_size` 1, interconnect "none", and both link bandwidths
set to the measured memory bandwidth (a machine with one chip has no chip-to-chip link; the
number is a placeholder so the Spec is complete, and its source says so).

JAX is imported when `calibrate` runs, not when `hardware` is imported.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

from hardware.spec import Spec, dtype_key

#: Matmul sizes tried, smallest first; larger ones are skipped when the time budget is short.
CPU_SIZES: tuple[int, ...] = (256, 512, 1024, 2048)
ACCELERATOR_SIZES: tuple[int, ...] = (1024, 2048, 4096, 8192)
#: Bytes of the array streamed for the bandwidth measurement (input; the output is as large).
CPU_STREAM_BYTES = 256 * 2**20
ACCELERATOR_STREAM_BYTES = 2**30
_MIN_REPEATS = 3


def _median_seconds(run: Callable[[], object], budget: float) -> float:
    """Median wall time of `run()` over at least 3 calls, more while `budget` seconds last."""
    deadline = time.perf_counter() + budget
    times: list[float] = []
    while len(times) < _MIN_REPEATS or (time.perf_counter() < deadline and len(times) < 100):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(dtype: str, budget: float, sizes: Sequence[int]) -> tuple[float, tuple[int, ...]]:
    """Best median FLOP/s of a jitted n×n @ n×n matmul over `sizes`, counting 2·n³ per product.

    Sizes run smallest first, each for its share of `budget`; a size is skipped when one call
    of it (estimated as 8× the last size's median) could not run 4 times in the time left.
    Returns the FLOP/s and the sizes measured.
    """
    import jax
    import jax.numpy as jnp

    key = dtype_key(dtype)
    jdtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[key]
    precision = jax.lax.Precision.HIGHEST if key == "fp32" else None
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    deadline = time.perf_counter() + budget
    best, done, last = 0.0, [], None
    for i, n in enumerate(sizes):
        left = deadline - time.perf_counter()
        if last is not None and 4 * 8 * last > left:
            break
        ka, kb = jax.random.split(jax.random.key(n))
        a = jax.random.normal(ka, (n, n), jdtype)
        b = jax.random.normal(kb, (n, n), jdtype)
        jax.block_until_ready(matmul(a, b))  # compile and warm up, not timed
        share = max(0.0, deadline - time.perf_counter()) / (len(sizes) - i)
        last = _median_seconds(lambda: jax.block_until_ready(matmul(a, b)), share)
        best = max(best, 2 * n**3 / last)
        done.append(n)
    return best, tuple(done)


def memory_bandwidth(budget: float, n_bytes: int) -> float:
    """Median bytes/s of a jitted `x * 0.5 + 1` on an f32 array of `n_bytes` (read + write).

    The input buffer is donated, so each call writes into it again instead of touching fresh
    pages (which would time the page faults too).
    """
    import jax
    import jax.numpy as jnp

    step = jax.jit(lambda x: x * 0.5 + 1.0, donate_argnums=0)
    x = jnp.zeros((n_bytes // 4,), jnp.float32)
    box = [x]

    def run() -> None:
        box[0] = jax.block_until_ready(step(box[0]))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        run()  # compile and warm up, not timed
        seconds = _median_seconds(run, budget)
    return 2 * (n_bytes // 4) * 4 / seconds


def _memory_bytes(device: object) -> tuple[float, str]:
    """The device's memory limit if JAX reports one, else this machine's total RAM."""
    stats = None
    try:
        stats = device.memory_stats()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not every backend implements it
        pass
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), "device.memory_stats()['bytes_limit']"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        raise ValueError(
            "calibrate: cannot read this machine's total memory (os.sysconf has no "
            "SC_PHYS_PAGES here); build the Spec by hand with hbm_bytes set"
        ) from None
    return float(total), "total RAM, os.sysconf(SC_PAGE_SIZE * SC_PHYS_PAGES)"


def calibrate(*, seconds: float = 2.0, dtype: str | Sequence[str] = "float32") -> Spec:
    """A Spec of this machine, measured: matmul FLOP/s per dtype and memory bandwidth.

    Args:
      seconds: time budget for the timed loops, half for matmuls (split between the dtypes),
        half for bandwidth. Compilation and warm-up calls come on top (little on CPU: the
        whole call took about `seconds` on a 2-core machine).
      dtype: the matmul dtype(s) to measure: "float32" and/or "bfloat16" (also "fp32",
        "bf16"). bf16 on a CPU is emulated and slow; it is measured as it is, not left out.

    Returns:
      Spec named "calibrated-<backend>", with peaks keyed "fp32"/"bf16", `hbm_bytes` the device
      memory (total RAM on CPU), interconnect "none", `domain_size` 1, and every source saying
      "measured by hardware.calibrate() on <date>, <backend>, <n> CPUs" and how.
    """
    import jax

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= 600:
        raise ValueError(f"calibrate: seconds must be a number in (0, 600], got {seconds!r}")
    dtypes = (dtype,) if isinstance(dtype, str) else tuple(dtype)
    keys = [dtype_key(d) for d in dtypes]
    if not keys or any(k not in ("fp32", "bf16") for k in keys):
        raise ValueError(f"calibrate: dtype must be 'float32' and/or 'bfloat16', got {dtype!r}")

    backend = jax.default_backend()
    device = jax.devices()[0]
    on_cpu = backend == "cpu"
    sizes = CPU_SIZES if on_cpu else ACCELERATOR_SIZES
    hbm_bytes, hbm_how = _memory_bytes(device)
    # At most an eighth of the memory: the array and, if donation is refused, its copy.
    stream = min(CPU_STREAM_BYTES if on_cpu else ACCELERATOR_STREAM_BYTES, int(hbm_bytes) // 8)
    stream -= stream % 4
    stamp = (
        f"measured by hardware.calibrate() on {datetime.date.today().isoformat()}, {backend}, "
        f"{os.cpu_count()} CPUs"
    )
    kind = "" if device.device_kind == backend else f" ({device.device_kind})"

    peaks, sources = {}, {}
    for key in dict.fromkeys(keys):
        flops, done = matmul_flops(key, seconds / 2 / len(keys), sizes)
        peaks[key] = flops
        sources[f"peak_flops.{key}"] = (
            f"{stamp}{kind}; best median of 2*n^3/t over jitted {key} n x n matmuls"
            f"{' at Precision.HIGHEST' if key == 'fp32' else ''}, n in {list(done)}"
        )
    bandwidth = memory_bandwidth(seconds / 2, stream)
    bw_how = (f"median (read + write bytes)/t of jitted x*0.5+1 on a {stream / 2**20:g} MiB "
              "f32 array")
    placeholder = "set to the measured memory bandwidth: one chip, no chip-to-chip link"
    sources |= {
        "hbm_bytes": f"{stamp}{kind}; {hbm_how}",
        "hbm_bandwidth": f"{stamp}{kind}; {bw_how}",
        "interconnect_bandwidth": f"{stamp}; {placeholder}",
        "inter_node_bandwidth": f"{stamp}; {placeholder}",
        "domain_size": f"{stamp}; 1: a single chip",
    }
    return Spec(
        name=f"calibrated-{backend}",
        peak_flops=peaks,
        hbm_bytes=hbm_bytes,
        hbm_bandwidth=bandwidth,
        interconnect="none",
        interconnect_bandwidth=bandwidth,
        domain_size=1,
        inter_node_bandwidth=bandwidth,
        sources=sources,
    )
