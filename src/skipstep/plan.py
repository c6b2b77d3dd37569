"""The step plan: everything about a trajectory that does not depend on the model, precomputed once.

For a descending list of timesteps it holds each step's posterior coefficients (float64 scalars), its eta, the
half-log-SNR history a multistep (higher-order) step interpolates over, and -- for the optimal variance -- the
model's ``M_t = E||eps - eps_hat(x_t, t)||^2 / d`` at ``t``. The functional sampler and the diffusers schedulers
share this plan, so the loop body is a handful of tensor operations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .paths import GaussianPath
from .posterior import (Posterior, SOLVER_TYPES, corrector_x0_weight_rows, gaussian_posterior,
                        with_extrapolation_gain, x0_weight_rows)
from .timesteps import FEW_STEPS_BELOW

# ----------------------------------------------------------------------------------------------------------------
# eta schedules
# ----------------------------------------------------------------------------------------------------------------
_SWITCH = re.compile(r"^(skip-ddim|ddim-skip):([0-9]*\.?[0-9]+)$")
_LINEAR = re.compile(r"^linear:([0-9]*\.?[0-9]+):([0-9]*\.?[0-9]+)$")
_NUMBER = r"[-+]?(?:inf|[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)"
_SNR_WINDOW_TEXT = rf"snr-window:{_NUMBER}:{_NUMBER}"
_SNR_WINDOW = re.compile(rf"^snr-window:({_NUMBER}):({_NUMBER})$")
_BELOW_PART = rf"(?:{_SNR_WINDOW_TEXT}|[^:]+)"
_BELOW = re.compile(rf"^below:([0-9]+):({_BELOW_PART}):({_BELOW_PART})$")
ETA_SCHEDULE_FORMS = (
    "a number in [0, 1] (constant)",
    "a list of numbers in [0, 1], one per step",
    "'linear:A:B' (eta ramps from A at the first step to B at the last)",
    "'skip-ddim:K' (skipped-step eta=1 for the first K steps, then DDIM eta=0; K an integer, or a fraction in (0,1) "
    "of the steps)",
    "'ddim-skip:K' (DDIM for the first K steps, then skipped-step)",
    "'window' (eta=1 on the middle steps, 0 on the first and the last: SA-Solver's noise window in step-index form)",
    "'snr-window:L:H' (eta=1 on the steps that start at a log-SNR log(alpha_t^2/sigma_t^2) in [L, H], 0 on the "
    "others; L, H numbers or -inf/inf, L <= H)",
    "'below:N:LOW:HIGH' (the schedule LOW for fewer than N steps, HIGH from N steps on; LOW and HIGH each a number, "
    "'window' or 'snr-window:L:H')",
)


def window_schedule(num_steps: int) -> list[float]:
    """``[0, 1, ..., 1, 0]``: noise on steps ``1 .. n-2`` only. The first step (at high noise, where the model's
    x0 is a blur) and the last (which injects nothing whatever its eta) stay deterministic -- SA-Solver's default
    ``tau = 1 for 200 <= t <= 800`` in step-index form."""
    if num_steps <= 2:
        return [0.0] * num_steps
    return [0.0] + [1.0] * (num_steps - 2) + [0.0]


def snr_window_schedule(log_snrs: Sequence[float], low: float, high: float) -> list[float]:
    """``eta_i = 1`` if ``low <= lambda_i <= high`` else 0, with ``lambda_i = log(alpha_t^2 / sigma_t^2)`` the full
    log-SNR at the start of step ``i`` (``-inf`` at pure noise). A rule in noise level rather than step index, so it
    means the same at every step count: ``snr-window:-inf:0`` is stochastic while the noise outweighs the signal
    (``sigma_t >= alpha_t``) and deterministic after; SA-Solver's ``tau = 1 for 200 <= t <= 800`` on a linear-beta
    chain is about ``snr-window:-6.5:0.65``."""
    return [1.0 if low <= lam <= high else 0.0 for lam in log_snrs]


def _snr_window_bounds(match) -> tuple[float, float]:
    low, high = float(match.group(1)), float(match.group(2))
    if not low <= high:
        raise ValueError(f"an 'snr-window:L:H' eta schedule needs L <= H, got L={low:g}, H={high:g}")
    return low, high


def _simple_schedule(text: str, num_steps: int, where: str, log_snrs) -> list[float]:
    """A constant, ``'window'`` or ``'snr-window:L:H'`` -- the parts of a ``'below:'`` schedule."""
    if text == "window":
        return window_schedule(num_steps)
    m = _SNR_WINDOW.match(text)
    if m:
        return snr_window_schedule(_log_snrs_for(log_snrs, num_steps, text), *_snr_window_bounds(m))
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where} of a 'below:N:LOW:HIGH' eta schedule must be a number in [0, 1], 'window' or "
                         f"'snr-window:L:H', got {text!r}") from None
    return [_check_eta(value, f"({where} of 'below:')")] * num_steps


def _check_eta(value: float, where: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"eta must lie in [0, 1]; got {value} {where}")
    return value


def _switch_index(k_text: str, num_steps: int) -> int:
    k = float(k_text)
    if "." in k_text:
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"a fractional eta switch point must lie in [0, 1], got {k}")
        return int(round(k * num_steps))
    if k > num_steps:
        raise ValueError(f"eta switch point K={int(k)} exceeds the number of steps ({num_steps})")
    return int(k)


def _log_snrs_for(log_snrs, num_steps: int, text: str) -> list[float]:
    if log_snrs is None:  # only validating the form (a scheduler's __init__): any values will do
        return [0.0] * num_steps
    log_snrs = [float(v) for v in log_snrs]
    if len(log_snrs) != num_steps:
        raise ValueError(f"the eta schedule {text!r} needs one log-SNR per step: {num_steps}, got {len(log_snrs)}")
    return log_snrs


def eta_reads_log_snr(eta) -> bool:
    """Whether the eta schedule ``eta`` has an ``snr-window`` part: its per-step values depend on where the steps
    start (their log-SNR), not only on the step count."""
    return isinstance(eta, str) and "snr-window:" in eta.replace(" ", "")


def resolve_eta_schedule(eta, num_steps: int, log_snrs: Sequence[float] | None = None) -> list[float]:
    """Per-step eta values (first step first) from any accepted form, see ``ETA_SCHEDULE_FORMS``.

    ``log_snrs``: the full log-SNR ``log(alpha_t^2 / sigma_t^2)`` at each step's start, which the ``snr-window``
    form reads (:func:`plan_steps` passes them); without them the form is only checked. The last step goes to the
    clean data and injects no noise whatever its eta; it is still listed.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if isinstance(eta, bool):
        raise ValueError("eta must be a number, a list of numbers or a schedule string, not a bool")
    if isinstance(eta, (int, float)):
        return [_check_eta(eta, "(constant eta)")] * num_steps
    if isinstance(eta, str):
        text = eta.strip().replace(" ", "")
        try:
            return [_check_eta(float(text), "(constant eta)")] * num_steps
        except ValueError as exc:
            if "eta must lie" in str(exc):
                raise
        m = _LINEAR.match(text)
        if m:
            start, end = _check_eta(m.group(1), "at the start of 'linear'"), _check_eta(m.group(2), "at its end")
            if num_steps == 1:
                return [start]
            return [start + (end - start) * i / (num_steps - 1) for i in range(num_steps)]
        if text == "window" or _SNR_WINDOW.match(text):
            return _simple_schedule(text, num_steps, "the schedule", log_snrs)
        m = _BELOW.match(text)
        if m:
            threshold = int(m.group(1))
            if threshold < 1:
                raise ValueError(f"the step count N of a 'below:N:LOW:HIGH' eta schedule must be >= 1, got {threshold}")
            low = _simple_schedule(m.group(2), num_steps, "LOW", log_snrs)
            high = _simple_schedule(m.group(3), num_steps, "HIGH", log_snrs)
            return low if num_steps < threshold else high
        m = _SWITCH.match(text)
        if m:
            k = _switch_index(m.group(2), num_steps)
            first, then = (1.0, 0.0) if m.group(1) == "skip-ddim" else (0.0, 1.0)
            return [first] * k + [then] * (num_steps - k)
        raise ValueError(f"unknown eta schedule {eta!r}; accepted forms: " + "; ".join(ETA_SCHEDULE_FORMS))
    if isinstance(eta, torch.Tensor):
        eta = eta.detach().cpu().flatten().tolist()
    if isinstance(eta, Sequence):
        if len(eta) != num_steps:
            raise ValueError(f"a per-step eta schedule must have one value per step: {num_steps} values, got {len(eta)}")
        return [_check_eta(v, f"at step {i}") for i, v in enumerate(eta)]
    raise ValueError("eta must be one of: " + "; ".join(ETA_SCHEDULE_FORMS) + f"; got {type(eta).__name__}")


MAX_SOLVER_ORDER = 3
#: A multistep step extrapolates x0_hat over its own log-SNR span h from nodes spaced by the earlier spans; it uses
#: an earlier node only while that earlier span is at least this fraction of h. Longer extrapolations overshoot
#: (e.g. the jump to sigma = 1/T that ends a flow-matching schedule is ~6x its predecessor), so such steps fall
#: back to a lower order, like diffusers' ``lower_order_final``.
MIN_SPAN_RATIO = 0.5
#: DPM-Solver's ``lower_order_final`` applies below this many steps (diffusers: "stabilises < 15 steps").
LOWER_ORDER_FINAL_BELOW = 15


#: ``K`` of the default's extrapolation gain ``G(n) = 1 + (K/n)^3`` below ``FEW_STEPS_BELOW`` steps
#: (:func:`default_extrapolation_gain`; chosen leave-one-model-out, docs/results.md, tenth round).
EXTRAPOLATION_GAIN_STEPS = 3.0
#: ``None``: the default rule of :func:`resolve_extrapolation_gain`.
DEFAULT_EXTRAPOLATION_GAIN = None


def default_extrapolation_gain(num_steps: int) -> float:
    r"""The default's gain on the order-2 term (:func:`skipstep.posterior.with_extrapolation_gain`) at
    ``num_steps`` steps on a VP chain without guidance:

        G(n) = 1 + (K/n)^3  for n < FEW_STEPS_BELOW,   1 from there on,   K = EXTRAPOLATION_GAIN_STEPS,

    2 at 3 steps, 1.42 at 4, 1.22 at 5, 1.13 at 6: the fewer and longer the steps, the further the line
    through the last two ``x0_hat`` falls short of the trajectory's."""
    n = int(num_steps)
    return 1.0 + (EXTRAPOLATION_GAIN_STEPS / n) ** 3 if n < FEW_STEPS_BELOW else 1.0


def check_extrapolation_gain(gain) -> float:
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not (math.isfinite(gain) and gain >= 0):
        raise ValueError(f"extrapolation_gain must be None (the default rule) or a finite number >= 0 (1: the exact "
                         f"order-2 step, 0: first order), got {gain!r}")
    return float(gain)


def resolve_extrapolation_gain(gain, num_steps: int, *, flow: bool = False,
                               guidance_scale: float | None = None) -> float:
    """The gain a plan of ``num_steps`` steps uses: a number as given (checked); ``None`` the default rule --
    :func:`default_extrapolation_gain` on a VP chain (``flow=False``) whose guidance scale is unknown (``None``) or
    at most 1, else 1 (the flow pair's folds keep 1, the gain being worse against the models' own samples; under
    guidance ``w = 4`` it was worse in most cells; docs/results.md, tenth round)."""
    if gain is not None:
        return check_extrapolation_gain(gain)
    if flow or (guidance_scale is not None and guidance_scale > 1):
        return 1.0
    return default_extrapolation_gain(num_steps)


def check_solver_order(solver_order) -> int:
    """An int 1, 2 or 3 (numpy ints too; bools and floats such as 2.0 are refused)."""
    if isinstance(solver_order, bool) or not isinstance(solver_order, (int, np.integer)) or not (
        1 <= int(solver_order) <= MAX_SOLVER_ORDER
    ):
        raise ValueError(f"solver_order must be the integer 1, 2 or 3, got {solver_order!r}")
    return int(solver_order)


def check_solver_type(solver_type) -> str:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(
            f"solver_type must be one of {SOLVER_TYPES} ('heun': exact exponential-integrator weights; 'midpoint': "
            f"DPM-Solver++'s midpoint form), got {solver_type!r}"
        )
    return solver_type


@dataclass(frozen=True)
class PlannedStep:
    """Step ``index`` goes from time ``t`` to ``s`` (``s`` is the clean time on the last step, unless the plan was
    given another final time).

    ``lambdas`` holds ``log(alpha/sigma)`` at ``t`` and at up to ``MAX_SOLVER_ORDER - 1`` earlier visited times
    (most recent first); ``lambda_s`` the target's. ``eps_mse`` is ``M_t`` when an optimal-variance table
    was given. ``order_limit`` is the highest multistep order this step may use, and ``data_weights[k - 1]`` the
    weights of the current and earlier ``x0_hat`` at order ``k`` for the planned eta (precomputed for every
    order up to the plan's ``solver_order`` and ``order_limit``). ``corrector_weights`` (planned with
    ``use_corrector``; empty otherwise and on the last step) redo this step once the model has been evaluated at
    ``s``: weights of ``x0_hat`` at ``s``, at ``t`` and at ``order_limit - 1`` earlier times
    (:func:`~skipstep.posterior.corrector_x0_weight_rows`). ``extrapolation_gain`` multiplies the order-2 term of
    the predictor (:func:`~skipstep.posterior.with_extrapolation_gain`; the corrector's weights are exact).
    """

    index: int
    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    posterior: Posterior
    lambdas: tuple[float, ...] = ()
    lambda_s: float = math.inf
    eps_mse: float | None = None
    order_limit: int = 1
    solver_type: str = "heun"
    data_weights: tuple[tuple[float, ...], ...] = ((1.0,),)
    corrector_weights: tuple[float, ...] = ()
    extrapolation_gain: float = 1.0

    @property
    def is_final(self) -> bool:
        return self.posterior.is_final

    def with_eta(self, eta: float) -> Posterior:
        """This step's posterior with another ``eta`` (a call-time override)."""
        if eta == self.posterior.eta:
            return self.posterior
        return gaussian_posterior(self.alpha_t, self.sigma_t, self.alpha_s, self.sigma_s, float(eta))

    def max_order(self) -> int:
        """Orders above 1 need finite log-SNRs at every node, earlier spans of at least ``MIN_SPAN_RATIO`` times
        this step's span, a step of positive span, and never apply to the final (to clean) step; the plan may
        lower it further (``lower_order_final``, ``euler_at_final``)."""
        return self.order_limit

    def x0_weights(self, order: int, eta: float | None = None) -> tuple[float, ...]:
        """Weights of the current and earlier ``x0_hat`` at ``order`` (capped at :meth:`max_order`): the
        precomputed ones for the planned eta, computed now for another ``eta``."""
        order = min(order, self.order_limit)
        if order == 1:
            return (1.0,)
        if (eta is None or eta == self.posterior.eta) and order <= len(self.data_weights):
            return self.data_weights[order - 1]
        eta = self.posterior.eta if eta is None else eta
        rows = x0_weight_rows(self.solver_type, [list(self.lambdas[:order])], [self.lambda_s], [eta])
        return tuple(with_extrapolation_gain(rows, self.extrapolation_gain)[0].tolist())

    def corrector_x0_weights(self, eta: float | None = None) -> tuple[float, ...]:
        """The corrector's weights for the planned eta, or computed now for another ``eta`` (empty: no corrector)."""
        if len(self.corrector_weights) < 2 or eta is None or eta == self.posterior.eta:
            return self.corrector_weights  # none, the planned ones, or a step from pure noise (weight 1, any eta)
        nodes = [self.lambda_s, *self.lambdas[:len(self.corrector_weights) - 1]]
        return tuple(corrector_x0_weight_rows([nodes], [self.lambda_s], [eta])[0])


def _half_log_snr(alpha: float, sigma: float) -> float:
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


def _order_limit(history: tuple, lambda_s: float, is_final: bool) -> int:
    if is_final or not history or not math.isfinite(history[0]):
        return 1
    h = lambda_s - history[0]
    if not h > 0:  # a zero-length step (e.g. a final target equal to the last listed time)
        return 1
    order = 1
    for newer, older in zip(history, history[1:]):
        if not math.isfinite(older) or (newer - older) < MIN_SPAN_RATIO * h:
            break
        order += 1
    return order


def plan_steps(
    path: GaussianPath,
    timesteps: torch.Tensor,
    eta=1.0,
    eps_mse: Sequence[float] | torch.Tensor | None = None,
    *,
    solver_order: int = MAX_SOLVER_ORDER,
    solver_type: str = "heun",
    final_time: float | None = None,
    lower_order_final: bool = False,
    euler_at_final: bool = False,
    use_corrector: bool = False,
    extrapolation_gain: float = 1.0,
) -> list[PlannedStep]:
    """Plan the trajectory through ``timesteps`` (descending) and then to ``final_time`` (default: the path's
    clean time; a noisy final time leaves the last step's output at that noise level, as DPM-Solver's
    ``final_sigmas_type="sigma_min"`` and DDIM's ``set_alpha_to_one=False`` do).

    Everything that depends only on the timesteps is computed here, once: each step's posterior coefficients,
    its order limit and its multistep weights for every order up to ``solver_order``.

    ``eps_mse``: the optimal-variance table ``M`` indexed by training timestep (discrete paths) -- only
    needed for ``variance_type='optimal'``. ``solver_type``: ``heun`` (exact weights) or ``midpoint``
    (DPM-Solver++'s midpoint form for order-2 steps). ``lower_order_final`` (DPM-Solver's rule): with fewer than
    ``LOWER_ORDER_FINAL_BELOW`` steps the last step is first order and the one before it at most second order.
    ``euler_at_final``: the last step is first order. ``use_corrector``: every step whose target is evaluated
    next gets corrector weights over ``order_limit + 1`` nodes (the new evaluation, the step's start and the
    earlier nodes its predictor used), see :class:`PlannedStep`. ``extrapolation_gain``: ``G`` of every order-2
    predictor step, ``D = x0_0 + G w_1 (x0_1 - x0_0)`` (a number; :func:`resolve_extrapolation_gain` gives the
    default's).
    """
    solver_order = check_solver_order(solver_order)
    gain = check_extrapolation_gain(extrapolation_gain)
    check_solver_type(solver_type)
    ts = [float(v) for v in timesteps.tolist()]
    final = float(path.clean_time) if final_time is None else float(final_time)
    targets = ts[1:] + [final]
    alphas, sigmas = path.alpha_sigma(torch.as_tensor(ts + [final], dtype=torch.float64))
    alphas, sigmas = alphas.tolist(), sigmas.tolist()
    lambdas = [_half_log_snr(a, s) for a, s in zip(alphas, sigmas)]
    etas = resolve_eta_schedule(eta, len(ts), log_snrs=[2.0 * lam for lam in lambdas[:-1]])
    if path.discrete:
        ts, targets = [int(v) for v in ts], [int(v) for v in targets]
    gammas = _gamma_at(path, ts, eps_mse)
    n = len(ts)
    posteriors, histories, limits = [], [], []
    for i in range(n):
        post = gaussian_posterior(alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1], etas[i])
        history = tuple(lambdas[max(0, i - MAX_SOLVER_ORDER + 1): i + 1][::-1])
        limit = min(solver_order, _order_limit(history, lambdas[i + 1], post.is_final))
        if i == n - 1 and (euler_at_final or (lower_order_final and n < LOWER_ORDER_FINAL_BELOW)):
            limit = 1
        if i == n - 2 and lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
            limit = min(limit, 2)
        posteriors.append(post)
        histories.append(history)
        limits.append(limit)
    weights = _weights_by_order(histories, lambdas[1:], etas, limits, solver_type, gain)
    correctors = _corrector_weights(histories, lambdas[1:], etas, limits) if use_corrector else [()] * n
    return [
        PlannedStep(
            index=i, t=ts[i], s=targets[i], alpha_t=alphas[i], sigma_t=sigmas[i], alpha_s=alphas[i + 1],
            sigma_s=sigmas[i + 1], posterior=posteriors[i], lambdas=histories[i], lambda_s=lambdas[i + 1],
            eps_mse=gammas[i], order_limit=limits[i], solver_type=solver_type, data_weights=weights[i],
            corrector_weights=correctors[i], extrapolation_gain=gain,
        )
        for i in range(n)
    ]


def _corrector_weights(histories, lambda_s, etas, limits) -> list[tuple]:
    """Per step, the corrector weights over (lambda_s, lambda_t, earlier nodes of its predictor); none for the last
    step (nothing evaluates its target) or a step that cannot be corrected (to clean data, zero span).

    A step from pure noise (``lambda_t = -inf``: zero terminal SNR, a flow's ``t = 1``) is corrected with the new
    node alone, weight 1: the limit of the exact interpolating weights as ``lambda_t -> -inf`` (the basis
    polynomial of a node at ``-inf`` vanishes on every finite ``lambda``)."""
    n = len(histories)
    out: list[tuple] = [()] * n
    by_size: dict[int, list[int]] = {}
    for i in range(n - 1):
        if not math.isfinite(lambda_s[i]):
            continue
        if histories[i][0] == -math.inf:
            out[i] = (1.0,)
            continue
        h = lambda_s[i] - histories[i][0]
        if math.isfinite(histories[i][0]) and h > 0:
            by_size.setdefault(limits[i] + 1, []).append(i)
    for size, rows in by_size.items():
        nodes = [[lambda_s[i], *histories[i][:size - 1]] for i in rows]
        table = corrector_x0_weight_rows(nodes, [lambda_s[i] for i in rows], [etas[i] for i in rows])
        for i, w in zip(rows, table.tolist()):
            out[i] = tuple(w)
    return out


def _weights_by_order(histories, lambda_s, etas, limits, solver_type, gain: float = 1.0) -> list[tuple]:
    """Per step, the weights at orders 1..limit (order 2 with the extrapolation ``gain``); one vectorised
    quadrature per order for the whole plan."""
    out = [[(1.0,)] for _ in histories]
    for order in range(2, MAX_SOLVER_ORDER + 1):
        rows = [i for i, limit in enumerate(limits) if limit >= order]
        if not rows:
            break
        table = x0_weight_rows(solver_type, [histories[i][:order] for i in rows], [lambda_s[i] for i in rows],
                               [etas[i] for i in rows])
        if order == 2:
            table = with_extrapolation_gain(table, gain)
        for i, w in zip(rows, table.tolist()):
            out[i].append(tuple(w))
    return [tuple(w) for w in out]


def _gamma_at(path: GaussianPath, ts: list, table) -> list:
    if table is None:
        return [None] * len(ts)
    table = torch.as_tensor(table, dtype=torch.float64).flatten()
    if path.discrete:
        if table.numel() != path.t_max + 1:
            raise ValueError(
                f"eps_mse must have one value per training timestep ({path.t_max + 1}), got {table.numel()}"
            )
        return [float(table[int(t)]) for t in ts]
    raise ValueError("an eps_mse table is supported on discrete chains only")


__all__ = [
    "DEFAULT_EXTRAPOLATION_GAIN",
    "ETA_SCHEDULE_FORMS",
    "EXTRAPOLATION_GAIN_STEPS",
    "LOWER_ORDER_FINAL_BELOW",
    "MAX_SOLVER_ORDER",
    "MIN_SPAN_RATIO",
    "PlannedStep",
    "check_extrapolation_gain",
    "check_solver_order",
    "default_extrapolation_gain",
    "check_solver_type",
    "eta_reads_log_snr",
    "plan_steps",
    "resolve_eta_schedule",
    "resolve_extrapolation_gain",
]
