"""Chinchilla scaling laws: L(N, D) = E + A / N^α + B / D^β, presets, the compute-optimal
allocation under C = 6ND, and the approach-3 fit of the five constants to (N, D, loss) runs.

The functional form and the fitting method are Hoffmann et al. 2022 ("Training Compute-Optimal
Large Language Models", arXiv:2203.15556), §3.3 approach 3 and Eq. 4; the refit on Chinchilla's
Figure 4 data is Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt",
arXiv:2404.10102; code: github.com/epoch-research/analyzing-chinchilla).

>>> law = get_law("chinchilla-rounded")
>>> round(law.loss(70e9, 1.4e12), 3)
1.937
>>> n_opt, d_opt = law.optimal_allocation(5.76e23)
>>> round(6 * n_opt * d_opt / 5.76e23, 12)
1.0
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PARAM_CONVENTIONS = ("total", "non_embedding")
LAW_FIELDS = ("E", "A", "B", "alpha", "beta")
MIN_POINTS = 5  # five free constants


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _positive_constants(law, fields) -> None:
    """Check and store each of a frozen law's ``fields`` as a positive, finite Python float."""
    kind = type(law).__name__
    for name in fields:
        value = getattr(law, name)
        try:
            if isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{kind}: {name}={value!r} must be a real number") from None
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{kind}: {name}={value!r} must be positive and finite")
        object.__setattr__(law, name, number)


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022, Eq. 2).

    N is the parameter count (``params`` says which: ``"total"``, as Hoffmann counted, or
    ``"non_embedding"``, as Kaplan et al. 2020 did; Pearce & Song 2024 show the choice moves the
    fitted exponents), D the training tokens, L the loss in nats per token. E is the loss of an
    ideal model on the data distribution (irreducible), A / N**alpha the shortfall of a model with
    N parameters trained to convergence, B / D**beta that of training on D tokens only.

    >>> law = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    >>> round(law.loss(1e9, 2e10), 3)
    2.58
    >>> ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=-0.34, beta=0.28)
    Traceback (most recent call last):
    ...
    ValueError: ScalingLaw: alpha=-0.34 must be positive and finite
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    params: str = "total"

    def __post_init__(self):
        _positive_constants(self, LAW_FIELDS)
        if self.params not in PARAM_CONVENTIONS:
            raise ValueError(f"ScalingLaw: params={self.params!r} is not one of "
                             f"{', '.join(map(repr, PARAM_CONVENTIONS))}")

    def loss(self, N, D):
        """Predicted loss of a model with ``N`` parameters trained on ``D`` tokens.

        Plain arithmetic: Python floats in, a Python float out; ``jnp`` arrays in, a
        differentiable ``jnp`` array out (broadcasting; usable under ``jit``, ``vmap``, ``grad``).
        No check on the values (N, D must be positive for a meaningful answer).
        """
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal_allocation(self, C):
        """Compute-optimal ``(N_opt, D_opt)`` for a training budget of ``C`` FLOPs, C = 6ND.

        Hoffmann et al. 2022, Eq. 4: minimising L(N, C / (6N)) over N gives
        ``G = (alpha A / (beta B)) ** (1 / (alpha + beta))``,
        ``N_opt = G (C/6) ** (beta / (alpha + beta))``,
        ``D_opt = (C/6) ** (alpha / (alpha + beta)) / G``, so 6 N_opt D_opt = C exactly.

        ``C`` may be a Python number or an array (``jnp`` arrays stay differentiable). Concrete
        values must be positive and finite (ValueError naming the first bad one); traced values
        are not checked.

        >>> n, d = get_law("epoch").optimal_allocation(1e24)
        >>> f"{n:.3g} params, {d:.3g} tokens, {d / n:.1f} tokens/param"
        '9.6e+10 params, 1.74e+12 tokens, 18.1 tokens/param'
        """
        _check_budget(C)
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        x = C / 6.0
        return G * x ** (b / (a + b)), x ** (a / (a + b)) / G


def _check_budget(C) -> None:
    if _is_traced(C):
        return
    try:
        arr = np.asarray(C, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"compute budget C={C!r} must be a positive finite number") from None
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        if arr.ndim == 0:
            raise ValueError(f"compute budget C={C!r} must be positive and finite")
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ValueError(f"compute budget C{list(i)}={float(arr[i])!r} must be positive and finite")


# --- presets ---------------------------------------------------------------------------------

LAWS: dict[str, ScalingLaw] = {
    # Hoffmann et al. 2022 approach 3, unrounded (the paper's source, as used by Epoch's and by
    # Pearce & Song's code): log A, log B, log E and the exponents.
    "chinchilla": ScalingLaw(E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186),
                             alpha=0.33917084, beta=0.2849083),
    # The same fit as printed in the paper (§3.3): E = 1.69, A = 406.4, B = 410.7.
    "chinchilla-rounded": ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    # Besiroglu et al. 2024 (Epoch AI), refit on Chinchilla's Figure 4 data, Eq. 3.
    "epoch": ScalingLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.34781, beta=0.36585),
    # Krajewski et al. 2024 ("Scaling Laws for Fine-Grained Mixture of Experts",
    # arXiv:2402.07871, §4): their dense Transformers, fitted in parallel with the MoE law
    # (MOE_LAWS["krajewski"]) on the same C4 runs, N without embeddings. The dense side of
    # `plan(moe=True)`'s comparison: one paper's two fits on one data set.
    "krajewski-dense": ScalingLaw(E=0.47, A=16.3, B=26.7, alpha=0.126, beta=0.127, params="non_embedding"),
}


def get_law(name_or_law: str | ScalingLaw, **overrides) -> ScalingLaw:
    """A preset by name (``LAWS``), or a ``ScalingLaw`` passed through; ``overrides`` replace
    fields (``get_law("epoch", params="non_embedding")``).

    >>> get_law("chinchilla-rounded").alpha
    0.34
    >>> get_law("kaplan")
    Traceback (most recent call last):
    ...
    ValueError: unknown scaling law 'kaplan'; valid names: chinchilla, chinchilla-rounded, epoch, krajewski-dense
    """
    if isinstance(name_or_law, ScalingLaw):
        law = name_or_law
    elif isinstance(name_or_law, str):
        law = LAWS.get(name_or_law.strip().lower())
        if law is None:
            raise ValueError(f"unknown scaling law {name_or_law!r}; valid names: {', '.join(LAWS)}")
    else:
        raise ValueError(f"law={name_or_law!r}: expected a law name ({', '.join(LAWS)}) or a ScalingLaw")
    return dataclasses.replace(law, **overrides) if overrides else law


# --- mixture of experts (Krajewski et al. 2024) --------------------------------------------------

MOE_LAW_FIELDS = ("a", "alpha", "b", "beta", "g", "gamma", "c")


@dataclasses.dataclass(frozen=True)
class MoEScalingLaw:
    """L(N, D, G) = c + (g / G**gamma + a) / N**alpha + b / D**beta (Krajewski et al. 2024,
    "Scaling Laws for Fine-Grained Mixture of Experts", arXiv:2402.07871, §4, Eq. 5).

    A mixture of experts with expansion rate E (``expansion``: the routed experts hold E times
    the parameters of the dense MLP they replace) and granularity G (each expert is d_ff / G wide,
    there are E x G of them and each token is routed to G, so a token touches as many MLP
    parameters as in the dense model). N is the model's parameters without the embeddings, all
    experts included (``params="non_embedding_total"``); D the training tokens; L nats per token
    on C4 (their data set). The fit fixed E = 64 (every run of their §4 used expansion 64) and
    varied G from 1 to 16 (their Fig. 3): at any other E the law is not defined (``loss`` takes
    no E), and for models far larger than theirs (up to a few billion parameters) it is an
    extrapolation, as every scaling law used for planning is.

    Plain arithmetic: Python floats in, a Python float out; ``jnp`` arrays in, a differentiable
    array out (G may be relaxed too). No check on the values.

    >>> law = get_moe_law("krajewski")
    >>> round(law.loss(1.07e9, 6.6e10, 1), 2), round(law.loss(1.07e9, 6.6e10, 8), 2)
    (3.11, 2.98)
    """

    a: float
    alpha: float
    b: float
    beta: float
    g: float
    gamma: float
    c: float
    expansion: int = 64
    params: str = "non_embedding_total"

    def __post_init__(self):
        _positive_constants(self, MOE_LAW_FIELDS)
        if isinstance(self.expansion, bool) or not isinstance(self.expansion, int) or self.expansion < 1:
            raise ValueError(f"MoEScalingLaw: expansion={self.expansion!r} must be a positive int")

    def loss(self, N, D, G):
        """Predicted loss of an MoE with ``N`` total non-embedding parameters, trained on ``D``
        tokens, at granularity ``G`` (and the law's expansion rate)."""
        return self.c + (self.g / G**self.gamma + self.a) / N**self.alpha + self.b / D**self.beta

    def log_loss(self, log_n, log_d, G):
        """`loss` from log N and log D (what the planner's search differentiates: no power of a
        large float, so no underflow of the cotangents in float32)."""
        return (self.c + (self.g * jnp.exp(-self.gamma * jnp.log(G)) + self.a) * jnp.exp(-self.alpha * log_n)
                + self.b * jnp.exp(-self.beta * log_d))


MOE_LAWS: dict[str, MoEScalingLaw] = {
    # Krajewski et al. 2024, the fitted coefficients of Eq. 5 (§4, fit with a Huber loss on the
    # log-loss of their C4 runs at expansion rate 64).
    "krajewski": MoEScalingLaw(a=18.1, alpha=0.115, b=30.8, beta=0.147, g=2.1, gamma=0.58, c=0.47),
}


def get_moe_law(name_or_law: str | MoEScalingLaw) -> MoEScalingLaw:
    """An MoE law by name (``MOE_LAWS``), or an `MoEScalingLaw` passed through.

    >>> get_moe_law("clark")
    Traceback (most recent call last):
    ...
    ValueError: unknown MoE scaling law 'clark'; valid names: krajewski
    """
    if isinstance(name_or_law, MoEScalingLaw):
        return name_or_law
    if isinstance(name_or_law, str):
        law = MOE_LAWS.get(name_or_law.strip().lower())
        if law is not None:
            return law
    raise ValueError(f"unknown MoE scaling law {name_or_law!r}; valid names: {', '.join(MOE_LAWS)}")


# --- fitting (Hoffmann et al. 2022 approach 3) ------------------------------------------------

# Starting points, columns (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e.
# Hoffmann et al. 2022, §3.3 and Appendix D: alpha, beta in {0, 0.5, ..., 2},
# e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4500 starts (the grid Epoch's code uses too).
HOFFMANN_GRID = np.array(
    [(a, b, e, al, be) for al, be, e, a, b in itertools.product(
        np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5), np.arange(-1, 1.5, 0.5),
        np.arange(0, 30, 5), np.arange(0, 30, 5))], dtype=np.float64)
# The default: Hoffmann's grid without alpha, beta in {1.5, 2} and with e in {-1, 0, 1}: 972
# starts, 4.6x fewer, so a fit takes 2-4 s on two CPU cores (the full grid ~15 s). On the Epoch
# data, run for 100 iterations, 4% of the starts with alpha = 1.5 and 0.3% with alpha = 2 reached
# the best objective, against 12-13% for alpha in {0, 0.5, 1} (beta alike); the subset finds the
# same optimum as the full grid (to 1e-9 relative in the constants). ``starts="hoffmann"`` runs
# the full grid.
DEFAULT_GRID = HOFFMANN_GRID[(HOFFMANN_GRID[:, 3] <= 1) & (HOFFMANN_GRID[:, 4] <= 1)
                             & np.isin(HOFFMANN_GRID[:, 2], (-1.0, 0.0, 1.0))]
START_GRIDS = {"default": DEFAULT_GRID, "hoffmann": HOFFMANN_GRID}

MAX_ITER = 60  # L-BFGS iterations per start (a batch runs until every start stops)
BOOTSTRAP_MAX_ITER = 100  # refits start at the full-data optimum
# Zoom line-search steps. Under vmap every step costs as much as the longest line search in the
# batch; optax's default of 20 made the batch 2.7x slower than 10, for the same optimum.
LINESEARCH_STEPS = 8
GRAD_TOL = 1e-10  # a start stops when |gradient| of the summed Huber objective falls below


class FitResult(NamedTuple):
    """What `fit_scaling_law` found.

    ``objective`` is the SUM over the fitted points of Huber_delta(log L_pred - log L_obs) at the
    best start (Epoch's code sums; Hoffmann's text does not say). ``n_points`` is the number of
    points fitted (after ``exclude_highest_loss``). ``stderr`` and ``intervals`` (95%, percentile)
    are keyed by ``LAW_FIELDS`` and come from the bootstrap, None without one.
    """

    law: ScalingLaw
    objective: float
    n_points: int
    stderr: dict[str, float] | None
    intervals: dict[str, tuple[float, float]] | None


def _huber_objective(theta, log_n, log_d, log_l, weights, delta):
    """sum_i w_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)."""
    a, b, e, alpha, beta = theta
    log_pred = jax.nn.logsumexp(
        jnp.stack([a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape)]), axis=0)
    return jnp.sum(weights * optax.losses.huber_loss(log_pred, log_l, delta=delta))


def _lbfgs(theta0, weights, log_n, log_d, log_l, delta, max_iter):
    """One L-BFGS run from ``theta0`` (the optax documentation's loop, in a while_loop)."""

    def fun(theta):
        return _huber_objective(theta, log_n, log_d, log_l, weights, delta)

    opt = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=LINESEARCH_STEPS, initial_guess_strategy="one"))
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(theta, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= GRAD_TOL))

    theta, _ = jax.lax.while_loop(running, step, (theta0, opt.init(theta0)))
    return theta, fun(theta)


@jax.jit(static_argnames="max_iter")
def _fit_batch(starts, weights, log_n, log_d, log_l, delta, *, max_iter):
    """Every start (and its weights) at once: vmap of the L-BFGS loop.

    The logs of N and D are centred first (a' = a - alpha mean log N, likewise b'): the same
    problem, but a' and alpha are far less correlated than a and alpha, which shortens L-BFGS's
    path. Starts and results are in the uncentred (a, b, e, alpha, beta).
    """
    mean_n, mean_d = jnp.mean(log_n), jnp.mean(log_d)
    shift = jnp.zeros(5).at[0].set(mean_n).at[1].set(mean_d)

    def to_centred(t):
        return t - shift * jnp.array([t[3], t[4], 0.0, 0.0, 0.0])

    def from_centred(t):
        return t + shift * jnp.array([t[3], t[4], 0.0, 0.0, 0.0])

    def one(theta0, w):
        theta, value = _lbfgs(to_centred(theta0), w, log_n - mean_n, log_d - mean_d, log_l,
                              delta, max_iter)
        return from_centred(theta), value

    return jax.vmap(one)(starts, weights)


#: The largest value a run may give (a fit on 1e300 would "succeed" with nonsense): 10^18
#: parameters and 10^20 tokens are ~10^6 times 2025's largest runs; a loss of 100 nats per token
#: is far above ln(vocab) for any vocabulary (a uniform guess over 256k tokens is 12.5).
POINT_MAX = {"N": 1e18, "D": 1e20, "loss": 100.0}


def _as_points(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numbers: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {float(arr[i])!r} must be positive and finite")
    big = np.flatnonzero(arr > POINT_MAX[name])
    if big.size:
        i = int(big[0])
        raise ValueError(f"{name}[{i}] = {float(arr[i])!r} is above {POINT_MAX[name]:g}, outside any real run; "
                         "check the units (parameters, tokens, loss in nats per token)")
    return arr


#: Below this spread (standard deviation of the natural log) the runs do not vary a quantity
#: enough to fit its exponent: 0.1 is about a 10% spread.
MIN_LOG_SPREAD = 0.1


def check_identifiable(N, D) -> None:
    """Refuse runs that cannot identify L = E + A/N^alpha + B/D^beta: one model size, one token
    count, or D tied to N (a fixed tokens-per-parameter ratio, or any D = c N^k): then A/N^alpha
    and B/D^beta move together and no fit can tell them apart. What does identify it: several
    model sizes, each trained on several token counts (an isoFLOP sweep, as Hoffmann et al.
    2022's Figure 4), so that log D varies at fixed log N.

    Raises:
      ValueError: saying which of these the runs are, and what data would identify the law.
    """
    x, y = np.log(np.asarray(N, np.float64)), np.log(np.asarray(D, np.float64))
    need = ("the law needs several model sizes, each trained on several token counts (an isoFLOP sweep, as "
            "Chinchilla's Figure 4)")
    if x.std() < MIN_LOG_SPREAD:
        raise ValueError(f"the runs cannot identify the law: every run has about the same size "
                         f"(N {np.exp(x.min()):.3g} to {np.exp(x.max()):.3g}), so A and alpha are unknown; {need}")
    if y.std() < MIN_LOG_SPREAD:
        raise ValueError(f"the runs cannot identify the law: every run saw about the same tokens "
                         f"(D {np.exp(y.min()):.3g} to {np.exp(y.max()):.3g}), so B and beta are unknown; {need}")
    slope, icpt = np.polyfit(x, y, 1)
    spread = float((y - (slope * x + icpt)).std())
    if spread < MIN_LOG_SPREAD:
        ratio = np.exp(y - x)
        what = (f"a fixed tokens-per-parameter ratio (D/N {ratio.min():.3g} to {ratio.max():.3g})"
                if abs(slope - 1) < 0.05 else f"D tied to N (D ~ N^{slope:.2f})")
        raise ValueError(f"the runs cannot identify the law: they lie on one line, {what}, so the N and D terms "
                         f"cannot be told apart (log D varies by {spread:.3f} at fixed N); {need}")


def _starts(starts) -> np.ndarray:
    if starts is None:
        return DEFAULT_GRID
    if isinstance(starts, str):
        if starts not in START_GRIDS:
            raise ValueError(f"starts={starts!r} is not one of {', '.join(START_GRIDS)}, "
                             "or an array of shape (S, 5)")
        return START_GRIDS[starts]
    arr = np.asarray(starts, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 5 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise ValueError("starts must be finite, of shape (S, 5), columns (a, b, e, alpha, beta) "
                         f"with A = e^a, B = e^b, E = e^e; got shape {arr.shape}")
    return arr


def _law_from(theta) -> dict[str, float]:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def fit_scaling_law(N, D, loss, *, delta: float = 1e-3, starts=None, bootstrap: int = 0,
                    seed: int = 0, params: str = "total", exclude_highest_loss: int = 0
                    ) -> FitResult:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to runs, as Hoffmann et al. 2022 approach 3.

    Minimises ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)`` over
    ``(a, b, e, alpha, beta)`` (A = e^a, B = e^b, E = e^e; the log-sum-exp is log L_pred) with
    L-BFGS from every starting point at once (``jax.vmap`` of an ``optax.lbfgs`` loop under
    ``jax.jit``, float64), and keeps the start with the lowest final objective. The objective is
    the sum over points, as in Epoch's code; ``optax.losses.huber_loss`` is 0.5 r^2 for
    |r| <= delta, else delta (|r| - delta / 2), as ``scipy.special.huber``.

    Args:
      N, D, loss: one value per run: parameters, training tokens, final loss (positive, finite).
      delta: the Huber threshold; Hoffmann and Epoch use 1e-3.
      starts: ``None`` (``DEFAULT_GRID``, a 972-point subset of Hoffmann's grid, see there),
        ``"hoffmann"`` (the full 4500-point grid), or an array (S, 5) of (a, b, e, alpha, beta).
      bootstrap: refit on this many resamples of the points (with replacement; as weights
        counting each point's draws) to give ``stderr`` (sample standard deviation) and
        ``intervals`` (2.5th and 97.5th percentiles). Each refit starts from the full-data optimum
        (not the grid) and runs up to ``BOOTSTRAP_MAX_ITER`` iterations.
      seed: for the bootstrap resamples.
      params: which N the runs count, recorded in the law ("total" or "non_embedding").
      exclude_highest_loss: drop this many highest-loss points first (Epoch dropped 5).

    Returns:
      A `FitResult`.

    Raises:
      ValueError: mismatched lengths, fewer than ``MIN_POINTS`` points (after exclusion), a
        non-positive or non-finite value (its index and value named), a bad option, or no start
        reaching a finite objective.

    References:
      Hoffmann et al. 2022, §3.3 and Appendix D; Besiroglu et al. 2024, §2 and Appendix.
    """
    if params not in PARAM_CONVENTIONS:
        raise ValueError(f"params={params!r} is not one of "
                         f"{', '.join(map(repr, PARAM_CONVENTIONS))}")
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 < delta <= 1):
        raise ValueError(f"delta={delta!r} must be in (0, 1] (a threshold on log-loss residuals; "
                         "Hoffmann et al. use 1e-3)")
    if not isinstance(bootstrap, bool) and isinstance(bootstrap, (int, np.integer)) and bootstrap > 10_000:
        raise ValueError(f"bootstrap={bootstrap}: at most 10000 resamples")
    for name, value in (("bootstrap", bootstrap), ("exclude_highest_loss", exclude_highest_loss)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    n_arr, d_arr, l_arr = _as_points("N", N), _as_points("D", D), _as_points("loss", loss)
    if not len(n_arr) == len(d_arr) == len(l_arr):
        raise ValueError(f"N, D and loss must have one value per run: got {len(n_arr)}, "
                         f"{len(d_arr)} and {len(l_arr)} values")
    if exclude_highest_loss:
        n_keep = max(len(l_arr) - exclude_highest_loss, 0)
        keep = np.sort(np.argsort(l_arr, kind="stable")[:n_keep])
        n_arr, d_arr, l_arr = n_arr[keep], d_arr[keep], l_arr[keep]
    if len(l_arr) < MIN_POINTS:
        extra = (f" after excluding the {exclude_highest_loss} highest-loss"
                 if exclude_highest_loss else "")
        raise ValueError(f"need at least {MIN_POINTS} points to fit five constants, "
                         f"got {len(l_arr)}{extra}")
    start_grid = _starts(starts)
    check_identifiable(n_arr, d_arr)

    with jax.enable_x64(True):
        logs = tuple(jnp.asarray(np.log(x)) for x in (n_arr, d_arr, l_arr))
        ones = jnp.ones((len(start_grid), len(l_arr)))
        thetas, values = _fit_batch(jnp.asarray(start_grid), ones, *logs, delta, max_iter=MAX_ITER)
        values = np.where(np.isfinite(values), np.asarray(values), np.inf)
        best = int(np.argmin(values))
        if not np.isfinite(values[best]):
            raise ValueError("no starting point reached a finite objective; check the data")
        theta = np.asarray(thetas[best])
        try:
            law = ScalingLaw(**_law_from(theta), params=params)
        except ValueError as err:
            raise ValueError(f"the runs do not identify the law: the best fit is not a valid law ({err}); "
                             "the data need several model sizes, each trained on several token counts (an "
                             "isoFLOP sweep, as Chinchilla's Figure 4)") from None

        stderr = intervals = None
        if bootstrap:
            rng = np.random.default_rng(seed)
            n = len(l_arr)
            weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                                for _ in range(bootstrap)]).astype(np.float64)
            starts_b = np.broadcast_to(theta, (bootstrap, 5))
            thetas_b, values_b = _fit_batch(jnp.asarray(starts_b), jnp.asarray(weights), *logs,
                                            delta, max_iter=BOOTSTRAP_MAX_ITER)
            ok = np.isfinite(np.asarray(values_b))
            if ok.sum() < 2:
                raise ValueError(f"bootstrap: only {int(ok.sum())} of {bootstrap} refits finished")
            samples = np.array([[_law_from(t)[k] for k in LAW_FIELDS]
                                for t in np.asarray(thetas_b)[ok]])
            sd = samples.std(axis=0, ddof=1)
            lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
            stderr = {k: float(s) for k, s in zip(LAW_FIELDS, sd)}
            intervals = {k: (float(a), float(b)) for k, a, b in zip(LAW_FIELDS, lo, hi)}

    return FitResult(law=law, objective=float(values[best]), n_points=len(l_arr),
                     stderr=stderr, intervals=intervals)


# --- loading runs -------------------------------------------------------------------------------

N_COLUMNS = ("N", "params", "parameters", "Model Size")
D_COLUMNS = ("D", "tokens")
C_COLUMNS = ("C", "flops", "Training FLOP")
LOSS_COLUMNS = ("loss", "L")


def load_runs_csv(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(N, D, loss)`` float64 arrays from a CSV file with a header row.

    Columns, matched case-insensitively (the first alias present wins): N from ``N_COLUMNS``;
    D from ``D_COLUMNS`` or, failing those, D = C / (6 N) from a FLOP column in ``C_COLUMNS``
    (C = 6ND, Kaplan et al. 2020); the loss from ``LOSS_COLUMNS``. Other columns are ignored,
    blank lines skipped.

    Raises:
      ValueError: naming the file: missing or unreadable, malformed CSV, a missing column (with
        the accepted names), a value that is not a positive finite number (with its row, line
        and column), or fewer than ``MIN_POINTS`` rows.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: drop a leading BOM
            rows = list(_read_rows(f))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read: {err}") from None
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV: {err}") from None
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header row and at least "
                         f"{MIN_POINTS} data rows")
    (_, header), data = rows[0], rows[1:]
    lower = [h.strip().lower() for h in header]

    def column(aliases, required=True):
        for alias in aliases:
            if alias.lower() in lower:
                return lower.index(alias.lower())
        if required:
            raise ValueError(f"{path}: no column for {aliases[0]}; accepted names (any case): "
                             f"{', '.join(map(repr, aliases))}; found {header}")
        return None

    i_n, i_l = column(N_COLUMNS), column(LOSS_COLUMNS)
    i_d = column(D_COLUMNS, required=False)
    i_c = None
    if i_d is None:
        i_c = column(C_COLUMNS, required=False)
        if i_c is None:
            raise ValueError(f"{path}: no column for tokens; accepted names (any case): "
                             f"{', '.join(map(repr, D_COLUMNS))}, or FLOPs (D = C / 6N): "
                             f"{', '.join(map(repr, C_COLUMNS))}; found {header}")
    if len(data) < MIN_POINTS:
        raise ValueError(f"{path}: {len(data)} data rows, need at least {MIN_POINTS}")

    out = np.empty((len(data), 3))
    for r, (line, row) in enumerate(data, start=1):
        if len(row) != len(header):
            raise ValueError(f"{path}: malformed CSV: line {line} has {len(row)} fields, "
                             f"the header has {len(header)}")
        for j, i in enumerate((i_n, i_d if i_d is not None else i_c, i_l)):
            text = row[i].strip()
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{path}: row {r} (line {line}), column {header[i]!r}: "
                                 f"{text!r} is not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{path}: row {r} (line {line}), column {header[i]!r}: "
                                 f"{text!r} must be positive and finite")
            out[r - 1, j] = value
    n, d_or_c, loss = out.T
    d = d_or_c if i_d is not None else d_or_c / (6.0 * n)
    for name, arr, i in (("N", n, i_n), ("D", d, i_d if i_d is not None else i_c), ("loss", loss, i_l)):
        big = np.flatnonzero(arr > POINT_MAX[name])
        if big.size:
            r = int(big[0])
            raise ValueError(f"{path}: row {r + 1} (line {data[r][0]}), column {header[i]!r}: {name} = "
                             f"{arr[r]:.4g} is above {POINT_MAX[name]:g}, outside any real run; check the units")
    return n.copy(), d.copy(), loss.copy()


# Data sets shipped inside the package (planner/data/, see its README.md for source and licence).
DATASETS = {
    # Epoch AI's extraction of Chinchilla's Figure 4: 245 (N, C, loss) points. Besiroglu et al.
    # 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102), from the repository
    # github.com/epoch-research/analyzing-chinchilla, data/svg_extracted_data.csv.
    "chinchilla-epoch": "chinchilla_fig4_epoch.csv",
}


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts."""
    return sorted(DATASETS)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, D, loss)`` of a data set shipped with the package, read as :func:`load_runs_csv` does.

    ``"chinchilla-epoch"``: Epoch AI's extraction of Chinchilla's Figure 4 (Besiroglu et al.
    2024); D = C / (6 N) from its ``Training FLOP`` column. Epoch fit it without the 5
    highest-loss points (``fit_scaling_law(..., exclude_highest_loss=5)``).

    >>> n, d, loss = load_dataset("chinchilla-epoch")
    >>> len(n), round(float(loss.min()), 3)
    (245, 2.077)

    Raises:
      ValueError: an unknown name, with the known ones.
    """
    from importlib import resources

    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"dataset {name!r}: unknown; shipped data sets: {', '.join(dataset_names())}")
    resource = resources.files("planner") / "data" / DATASETS[key]
    with resources.as_file(resource) as path:
        return load_runs_csv(path)


def _read_rows(f):
    """(line number, fields) for each non-blank CSV record."""
    reader = csv.reader(f, strict=True)
    for row in reader:
        if row and any(field.strip() for field in row):
            yield reader.line_num, row
