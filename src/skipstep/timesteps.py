"""Timestep selection: which noisy times a few-step sampler visits (model evaluations), noisiest first.

The final step always goes from the last listed time to the path's clean time.

Spacings for a discrete chain of ``T`` steps (``n`` model evaluations), matching diffusers where diffusers has them:

* ``linspace``:  ``round(linspace(0, T-1, n))`` reversed
* ``leading``:   ``arange(n) * (T // n) + steps_offset`` reversed
* ``trailing``:  ``round(arange(T, 0, -T/n)) - 1``  (Lin et al. 2023; starts at ``T-1``)
* ``quadratic``: ``int(linspace(0, sqrt(0.8 T), n) ** 2)`` reversed (Song et al., DDIM, CIFAR-10 setting)
* ``log_snr``:   ``lambda(t_i)`` uniform between ``lambda(t_max)`` and ``lambda(t_min)`` (Lu et al., DPM-Solver),
  rounded to the nearest index
* ``power``:     ``round(T n/(n+1) (1 - i/n)^p)`` for ``i = 0..n-1`` (:func:`power_grid`): the DPM-Solver
  family's leading grid at ``p = 1`` (it starts one step below ``T`` -- on a variance-preserving chain unit noise
  is the marginal there up to ``alpha_t^2 Var(x_0)`` -- and never evaluates ``t = 0``), with the steps drawn
  towards the data by a power ``p >= 1``; ``p = None`` is the default rule (:func:`spacing_power_for`):
  ``p = 1 + 4/n`` below ``FEW_STEPS_BELOW`` steps, ``1 + 2/n`` from there on; below ``FEW_STEPS_BELOW`` steps the
  default rule places the steps at the log-SNRs it gives on the reference DDPM chain (:func:`snr_matched_power_grid`),
  so a cosine or zero-terminal-SNR chain gets the same noise levels as the linear one (where the chain reaches
  them)

Grid families. diffusers' DPM-Solver family (DPMSolverMultistep/-Singlestep, UniPC, DEIS, SA-Solver) computes
``linspace`` and ``leading`` differently (``n + 1`` points with the last, ``t = 0``, dropped; ``leading`` multiples
of ``T // (n + 1)``); ``grid="drop_zero"`` reproduces those, ``grid="points"`` (the default) DDIM/DDPM's.
``trailing`` is the same in both. ``lambda_min_clipped`` (DPM-Solver's option, default ``-inf``) truncates the chain
to the ``last_t`` timesteps whose half-log-SNR is at least that value before any spacing is applied
(``trailing`` keeps its step ``T / n``, as DPM-Solver does).

Sigma spacings (:func:`sigma_spaced_timesteps`): Karras, exponential, beta and Lu (uniform log-SNR) grids over
diffusers' VE sigmas ``sqrt((1 - abar_t) / abar_t)`` of the whole training table, converted to timesteps with
diffusers' ``_sigma_to_t`` and rounded as DPM-Solver does (nearest for Karras and Lu, truncated for exponential
and beta). Custom ``sigmas`` lists map to timesteps the same way, rounded to the nearest integer
(:func:`timesteps_from_sigmas`).

On continuous paths (``t`` in ``[t_min, t_max]``): ``linspace`` includes both ends, ``trailing`` is
``t_max (n - i) / n``, ``quadratic`` is ``t_max ((n - i) / n)^2``, ``power`` is ``t_max ((n - i) / n)^p`` (it starts
at ``t_max``: a rectified flow's ``x_t`` below ``t = 1`` is not unit-variance noise) -- except the default rule
(``power=None``) on a rectified flow: below ``few_steps_below`` steps it visits the reference chain's log-SNRs
(:func:`reference_log_snrs`; it starts at ``sigma = 0.946`` at 3 steps; the sixteenth round's choice, ahead of the
grids that start at 1 on all three flow models), from it the uniform ``t_max (n - i) / n`` (seventeenth round),
``log_snr`` as above;
``leading`` is discrete only. Rounding on a discrete chain can make neighbours collide when ``n`` is close to ``T``; colliding
indices are pushed apart to the nearest free indices so the list stays strictly descending with exactly ``n``
entries (never silently dropped).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch

from .paths import DiscreteVPPath, GaussianPath, RectifiedFlowPath

SPACINGS = ("linspace", "leading", "trailing", "quadratic", "log_snr", "power")
#: the default ``power`` rule (``power=None``) has two regimes, split where the default eta (``below:7:0:1``) turns
#: stochastic: fewer than ``FEW_STEPS_BELOW`` steps get ``p = 1 + POWER_SLOPE / n`` carried from the reference chain at
#: equal log-SNR (:func:`snr_matched_power_grid`), more get the plain ``p = 1 + POWER_SLOPE_MANY_STEPS / n``; each
#: chosen leave-one-model-out on the digits zoo (docs/results.md, section 1; the split moved from 8 to 7 steps in the
#: thirteenth round). A caller may move the split (``few_steps_below=``): strong guidance keeps 8 for the placement.
FEW_STEPS_BELOW = 7
POWER_SLOPE = 4.0
POWER_SLOPE_MANY_STEPS = 2.0
#: ``points``: DDIM/DDPM's formulas; ``drop_zero``: the DPM-Solver family's (``n + 1`` points, ``t = 0`` dropped)
GRID_FAMILIES = ("points", "drop_zero")
#: the reference chain of that rule: DDPM's linear betas from 1e-4 to 0.02 over T = 1000 (Ho et al. 2020)
REFERENCE_CHAIN = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
SIGMA_SPACINGS = ("karras", "exponential", "beta", "lu")


def make_strictly_descending(ts: np.ndarray, highest: int) -> np.ndarray:
    """Closest strictly descending integers in [0, highest]: colliding neighbours are pushed apart, first up from
    the bottom, then down from the top (always possible when len(ts) <= highest + 1)."""
    ts = ts.astype(np.int64).copy()
    n = len(ts)
    ts[-1] = max(ts[-1], 0)
    for i in range(n - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    ts[0] = min(ts[0], highest)
    for i in range(1, n):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts


def check_num_steps(num_steps, highest: int | None = None, name: str = "num_inference_steps") -> int:
    """A positive integer (numpy integers too; bools and floats refused), at most ``highest``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        bound = f" in [1, {highest}]" if highest is not None else ""
        raise ValueError(f"{name} must be a positive integer{bound}, got {num_steps!r}")
    if highest is not None and num_steps > highest:
        raise ValueError(f"{name} must lie in [1, {highest}] (num_train_timesteps), got {num_steps}")
    return int(num_steps)


def clipped_chain_length(path: GaussianPath, lambda_min_clipped: float = -np.inf) -> int:
    """DPM-Solver's ``last_t = T - clipped_idx``: the number of training timesteps, counted from ``t = 0``, whose
    half-log-SNR ``log(alpha_t) - log(sigma_t)`` (float32, as diffusers computes it) is not below
    ``lambda_min_clipped``."""
    if lambda_min_clipped is None or float(lambda_min_clipped) == -np.inf:
        return path.num_train_timesteps
    abar = path.alphas_cumprod.float()
    lambda_t = torch.log(torch.sqrt(abar)) - torch.log(torch.sqrt(1 - abar))
    clipped = int(torch.searchsorted(torch.flip(lambda_t, [0]), float(lambda_min_clipped)))
    last_t = path.num_train_timesteps - clipped
    if last_t < 1:
        raise ValueError(f"lambda_min_clipped={lambda_min_clipped} clips every timestep of the chain (its largest "
                         f"half-log-SNR is {float(lambda_t[0]):.4g})")
    return last_t


def select_timesteps(
    path: GaussianPath,
    num_steps: int,
    spacing: str = "trailing",
    steps_offset: int = 0,
    *,
    grid: str = "points",
    lambda_min_clipped: float = -np.inf,
    power: float | None = 1.0,
    few_steps_below: int = FEW_STEPS_BELOW,
) -> torch.Tensor:
    """``num_steps`` noisy times, strictly descending (int64 on discrete paths, float64 otherwise); ``grid`` and
    ``lambda_min_clipped`` (discrete chains only) as in the module docstring; ``power``: the exponent of the
    ``power`` spacing (``None``: :func:`spacing_power_for`, whose two regimes split at ``few_steps_below``)."""
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    snr_matched = default_rule = False
    if spacing == "power":
        n_checked = check_num_steps(num_steps)
        default_rule = power is None
        snr_matched = default_rule and n_checked < few_steps_below
        power = spacing_power_for(n_checked, power, few_steps_below)
    if grid not in GRID_FAMILIES:
        raise ValueError(f"grid must be one of {GRID_FAMILIES}, got {grid!r}")
    if path.discrete:
        T = path.t_max + 1
        n = check_num_steps(num_steps, T)
        last_t = clipped_chain_length(path, lambda_min_clipped)
        drop_zero = grid == "drop_zero"
        if spacing == "linspace":
            ts = (np.linspace(0, last_t - 1, n + 1).round()[::-1][:-1] if drop_zero
                  else np.linspace(0, last_t - 1, n).round()[::-1])
        elif spacing == "leading":
            ratio = last_t // (n + 1) if drop_zero else last_t // n
            ts = (np.arange(0, n + 1 if drop_zero else n) * ratio).round()[::-1][: n] + steps_offset
            if ts[0] > T - 1:
                raise ValueError(f"steps_offset={steps_offset} pushes the first timestep past T-1={T - 1}")
        elif spacing == "trailing":
            ts = np.round(np.arange(last_t, 0, -T / n)) - 1
            if len(ts) != n:
                raise ValueError(f"lambda_min_clipped={lambda_min_clipped} leaves {last_t} of {T} timesteps: too few "
                                 f"for {n} trailing steps of {T / n:g}")
        elif spacing == "quadratic":
            ts = np.floor(np.linspace(0, np.sqrt(last_t * 0.8), n) ** 2)[::-1]
        elif spacing == "power":
            # a chain cut by lambda_min_clipped keeps the plain grid on what is left
            ts = snr_matched_power_grid(path, n, power) if snr_matched and last_t == T else None
            if ts is None:
                ts = np.round(power_grid(n, power) * last_t)
        else:  # log_snr
            lam = _log_snr_grid(path, last_t - 1, path.t_min, n)
            ts = np.round(path.time_at_log_snr(torch.as_tensor(lam)).numpy())
        return torch.as_tensor(make_strictly_descending(np.asarray(ts), highest=last_t - 1))
    num_steps = check_num_steps(num_steps)
    if grid != "points" or float(lambda_min_clipped) != -np.inf:
        raise ValueError("grid and lambda_min_clipped apply to discrete (DDPM-type) chains only")

    t_max, t_min = float(path.t_max), float(path.t_min)
    i = np.arange(num_steps, dtype=np.float64)
    if spacing == "linspace":
        ts = np.linspace(t_max, t_min, num_steps) if num_steps > 1 else np.array([t_max])
    elif spacing == "trailing":
        ts = t_max * (num_steps - i) / num_steps
    elif spacing == "quadratic":
        ts = t_max * ((num_steps - i) / num_steps) ** 2
    elif spacing == "power" and default_rule and isinstance(path, RectifiedFlowPath):
        # the default rule on a flow path, as SkippedStepFlowScheduler visits it: the reference chain's log-SNRs below
        # few_steps_below (sixteenth round), uniform from it (seventeenth)
        ts = (path.time_at_log_snr(reference_log_snrs(num_steps, power)).numpy() if snr_matched
              else t_max * (num_steps - i) / num_steps)
    elif spacing == "power":
        # a continuous path starts at t_max: a flow model's x_t at t < 1 is not unit-variance noise
        ts = np.maximum(t_max * ((num_steps - i) / num_steps) ** power, t_min)
    elif spacing == "log_snr":
        ts = path.time_at_log_snr(torch.as_tensor(_log_snr_grid(path, t_max, t_min, num_steps))).numpy()
        ts[0] = t_max  # exact endpoint (the inverse can round off)
    else:
        raise ValueError("timestep spacing 'leading' is defined for discrete chains only")
    ts = torch.as_tensor(np.asarray(ts, dtype=np.float64))
    validate_timesteps(path, ts)
    return ts


def check_spacing_power(power) -> float | None:
    """A finite number >= 1 (the exponent of the ``power`` spacing), or ``None`` (the default rule)."""
    if power is None:
        return None
    if isinstance(power, bool) or not isinstance(power, (int, float, np.integer, np.floating)) or not (
        np.isfinite(power) and power >= 1
    ):
        raise ValueError(f"spacing_power must be a finite number >= 1 or None (the rule 1 + {POWER_SLOPE:g}/n below "
                         f"{FEW_STEPS_BELOW} steps, 1 + {POWER_SLOPE_MANY_STEPS:g}/n from there on), "
                         f"got {power!r}")
    return float(power)


def spacing_power_for(num_steps: int, power: float | None = None, few_steps_below: int = FEW_STEPS_BELOW) -> float:
    """The exponent the ``power`` spacing uses for ``num_steps`` steps: ``power`` itself, or for ``None`` the default
    rule

        p(n) = 1 + POWER_SLOPE / n             for n < few_steps_below    (n = 4: 2, n = 5: 1.8, n = 6: 1.67),
        p(n) = 1 + POWER_SLOPE_MANY_STEPS / n  from there on              (n = 7: 1.29, n = 10: 1.2, n = 20: 1.1),

    with ``few_steps_below = FEW_STEPS_BELOW`` (7) unless a caller moves the split (strong guidance: 8),
    the DPM-Solver family's grid (``p = 1``) bent towards the data more for fewer steps, and less where the default
    eta is stochastic."""
    power = check_spacing_power(power)
    if power is not None:
        return power
    n = int(num_steps)
    return 1.0 + (POWER_SLOPE if n < int(few_steps_below) else POWER_SLOPE_MANY_STEPS) / n


def power_grid(n: int, power: float) -> np.ndarray:
    r"""The ``power`` spacing as fractions of the chain, noisiest first:

        u_i = n / (n + 1) * (1 - i / n)^p,        i = 0, ..., n - 1.

    ``p = 1`` is the DPM-Solver family's ``leading`` grid ``(n - i) / (n + 1)``; ``p > 1`` keeps the first step and
    moves the others towards the data (the last one to ``(1/n)^p n/(n+1)``). A discrete chain of ``T`` timesteps
    visits ``round(T u_i)``, a continuous path ``t_max u_i``."""
    i = np.arange(n, dtype=np.float64)
    return n / (n + 1.0) * (1.0 - i / n) ** power


def snr_matched_power_grid(path: GaussianPath, n: int, power: float) -> np.ndarray | None:
    r"""The ``power`` grid of the reference DDPM chain (``REFERENCE_CHAIN``) carried to the discrete chain ``path``
    at equal log-SNR:

        t_i = lambda_path^{-1}( lambda_ref( round(1000 u_i) ) ),        u_i = n / (n + 1) (1 - i / n)^p,

    rounded to the nearest index (``lambda`` interpolated linearly between indices); ``None`` when the chain does
    not reach those log-SNRs (``lambda_path(T-1) > lambda_ref(t_0)`` or ``lambda_path(0) < lambda_ref(t_{n-1})``,
    e.g. Stable Diffusion's scaled-linear chain or a short chain), where the caller keeps the plain grid.
    On any linear-beta chain of ``T = 1000`` from 1e-4 to 0.02 it is the plain power grid. On a cosine chain the
    plain grid's first point (``t = 750`` at ``n = 3``) has log-SNR -1.8, far from the start ``x_T ~ N(0, I)``;
    this grid starts at log-SNR -5.7 (``t = 962``), as on the linear chain."""
    lam = reference_log_snrs(n, power)
    ends = path.log_snr(torch.as_tensor([path.t_max, path.t_min]))
    if float(ends[0]) > float(lam[0]) or float(ends[1]) < float(lam[-1]):
        return None
    return np.round(path.time_at_log_snr(lam).numpy())


def reference_log_snrs(n: int, power: float) -> torch.Tensor:
    r"""The log-SNRs of the ``power`` grid on the reference DDPM chain (``REFERENCE_CHAIN``), noisiest first:
    ``lambda_ref(round(1000 u_i))``, ``u_i = n / (n + 1) (1 - i / n)^p`` -- the noise levels the few-step
    placement carries to other paths (:func:`snr_matched_power_grid`; on a rectified flow :func:`select_timesteps`'
    default rule, which :class:`skipstep.SkippedStepFlowScheduler` visits)."""
    ref = _reference_chain()
    return ref.log_snr(torch.as_tensor(np.round(power_grid(n, power) * ref.num_train_timesteps)))


@functools.lru_cache(maxsize=1)
def _reference_chain() -> DiscreteVPPath:
    return DiscreteVPPath.from_config(REFERENCE_CHAIN)


def power_timesteps(path: GaussianPath, num_steps: int, power: float) -> torch.Tensor:
    """:func:`select_timesteps` with the ``power`` spacing."""
    return select_timesteps(path, num_steps, "power", power=power)


def _log_snr_grid(path: GaussianPath, t_hi, t_lo, n: int) -> np.ndarray:
    lam_hi_noise = float(path.log_snr(torch.as_tensor(t_hi)))
    if not np.isfinite(lam_hi_noise):
        # zero terminal SNR / flow at t=1: space uniformly from the next representable level
        t_hi = t_hi - 1 if path.discrete else t_hi - 1e-3 * (t_hi - t_lo)
        lam_hi_noise = float(path.log_snr(torch.as_tensor(t_hi)))
    lam_lo_noise = float(path.log_snr(torch.as_tensor(t_lo)))
    if not np.isfinite(lam_lo_noise):
        raise ValueError("log_snr spacing needs a finite log-SNR at t_min; raise the path's t_min")
    grid = np.linspace(lam_hi_noise, lam_lo_noise, n)
    return grid


def vp_sigmas(path: GaussianPath) -> np.ndarray:
    """diffusers' VE sigmas of a discrete VP chain, ``sqrt((1 - abar_t) / abar_t)`` for ``t = 0..T-1``, computed in
    float32 from the float32 table as diffusers does (a zero terminal SNR's ``abar = 0`` is read as ``2^-24``, as
    DPM-Solver, UniPC and Euler do, so the largest sigma is finite: 4096)."""
    abar = path.alphas_cumprod.float().clone()
    if float(abar[-1]) == 0.0:
        abar[-1] = 2.0**-24
    return (((1 - abar) / abar) ** 0.5).numpy()


def sigma_to_timestep(sigma, log_sigmas: np.ndarray) -> np.ndarray:
    """diffusers' ``_sigma_to_t``: the fractional timestep where the piecewise-linear interpolation of
    ``log sigma_t`` (ascending in ``t``) equals ``log sigma``; clipped to ``[0, T-1]``."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def sigma_spaced_timesteps(
    path: GaussianPath,
    num_steps: int,
    kind: str,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rounding: str | None = None,
) -> torch.Tensor:
    """Integer timesteps of a sigma-spaced grid on a discrete VP chain, as DPMSolverMultistepScheduler computes them
    (``n`` sigmas between ``sigma_max`` and ``sigma_min``, by default the training table's largest and smallest):

    * ``karras``: ``(s_max^(1/7) + r (s_min^(1/7) - s_max^(1/7)))^7``, ``r = linspace(0, 1, n)`` (Karras et al.);
    * ``exponential``: ``exp(linspace(log s_max, log s_min, n))``;
    * ``beta``: ``s_min + ppf_Beta(0.6, 0.6)(1 - linspace(0, 1, n)) (s_max - s_min)`` (needs scipy);
    * ``lu``: uniform in ``log sigma`` over the whole table (DPM-Solver's ``use_lu_lambdas``; the same sigmas as
      ``exponential`` with the table's range).

    Each sigma maps to a fractional timestep (:func:`sigma_to_timestep`), then ``rounding`` (``nearest``,
    ``truncate``; default: nearest for karras and lu, truncate for exponential and beta -- diffusers' casts). The
    list is made strictly descending (colliding neighbours pushed apart, see :func:`make_strictly_descending`).
    """
    if kind not in SIGMA_SPACINGS:
        raise ValueError(f"sigma spacing must be one of {SIGMA_SPACINGS}, got {kind!r}")
    if not path.discrete:
        raise ValueError("sigma spacings (use_karras_sigmas, ...) apply to discrete (DDPM-type) chains")
    T = path.num_train_timesteps
    n = check_num_steps(num_steps, T)
    sigmas = vp_sigmas(path)
    log_sigmas = np.log(sigmas)
    table = np.flip(sigmas).copy()
    lo = float(table[-1].item()) if sigma_min is None else float(sigma_min)
    hi = float(table[0].item()) if sigma_max is None else float(sigma_max)
    if not 0 < lo < hi:
        raise ValueError(f"sigma spacings need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    ramp = np.linspace(0, 1, n)
    if kind == "karras":
        rho = 7.0
        grid = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    elif kind == "exponential":
        grid = np.exp(np.linspace(np.log(hi), np.log(lo), n))
    elif kind == "lu":
        lambdas = np.flip(log_sigmas.copy())
        grid = np.exp(lambdas[0].item() + ramp * (lambdas[-1].item() - lambdas[0].item()))
    else:
        try:
            import scipy.stats
        except ImportError:  # pragma: no cover - scipy is a test dependency
            raise ImportError("use_beta_sigmas needs scipy (pip install scipy), as in diffusers") from None
        grid = np.array([lo + ppf * (hi - lo) for ppf in scipy.stats.beta.ppf(1 - ramp, 0.6, 0.6)])
    t = sigma_to_timestep(grid, log_sigmas)
    rounding = rounding or ("nearest" if kind in ("karras", "lu") else "truncate")
    if rounding not in ("nearest", "truncate"):
        raise ValueError(f"rounding must be 'nearest' or 'truncate', got {rounding!r}")
    t = t.round() if rounding == "nearest" else np.trunc(t)
    return torch.as_tensor(make_strictly_descending(t, highest=T - 1))


#: relative slack when matching a custom sigma to the chain's range (lists are printed with 3-4 digits, e.g.
#: AysSchedules' 14.615 for Stable Diffusion's sigma_max 14.6146)
SIGMA_MATCH_TOLERANCE = 1e-3


def timesteps_from_sigmas(path: GaussianPath, sigmas) -> tuple[torch.Tensor, int]:
    """A custom ``sigmas`` list (diffusers' VE sigmas of the chain, descending, the last one the final target as in
    ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``) as integer timesteps: each sigma maps to its fractional
    timestep (:func:`sigma_to_timestep`) and is rounded to the nearest integer, because a discrete chain's model is
    evaluated at integer timesteps (Euler evaluates at the fractional one with an interpolated sigma). A final
    sigma of 0 is the clean data (time -1); a positive final sigma is the noise level the last step stops at.
    Returns ``(timesteps, final_time)``."""
    if not path.discrete:
        raise ValueError("sigmas= maps VP sigmas to timesteps of a discrete (DDPM-type) chain")
    values = np.asarray(torch.as_tensor(sigmas).detach().cpu().double().flatten().tolist() if isinstance(
        sigmas, torch.Tensor) else list(sigmas), dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError("sigmas must list at least one noisy sigma and the final sigma (0 for clean data), "
                         f"got {values.tolist()}")
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values[:-1] == 0):
        raise ValueError(f"sigmas must be finite, the noisy ones > 0 and only the last one may be 0, got "
                         f"{values.tolist()}")
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"sigmas must be strictly descending (noisiest first), got {values.tolist()}")
    table = vp_sigmas(path)
    lo, hi = float(table[0]), float(table[-1])
    positive = values[values > 0]
    if positive.max() > hi * (1 + SIGMA_MATCH_TOLERANCE) or positive.min() < lo * (1 - SIGMA_MATCH_TOLERANCE):
        raise ValueError(f"sigmas must lie in the chain's range [{lo:.6g}, {hi:.6g}] (its VE sigmas "
                         f"sqrt((1 - abar_t) / abar_t)), or be 0 last; got {values.tolist()}")
    ts = np.round(sigma_to_timestep(positive, np.log(table))).astype(np.int64)
    noisy = ts[: values.size - 1]
    final = int(path.clean_time) if values[-1] == 0 else int(ts[-1])
    if np.any(np.diff(noisy) >= 0):
        raise ValueError(f"sigmas {values.tolist()} map to repeated timesteps {noisy.tolist()} after rounding to "
                         "integers; give sigmas that are at least one training step apart")
    if values[-1] > 0 and final > noisy[-1]:
        raise ValueError(f"the final sigma {values[-1]} maps to timestep {final}, above the last noisy one "
                         f"{int(noisy[-1])}")
    return torch.as_tensor(noisy, dtype=torch.int64), final


def validate_timesteps(path: GaussianPath, timesteps: Sequence | torch.Tensor) -> torch.Tensor:
    """Check an explicit list: non-empty, strictly descending, no duplicates, inside the path's noisy range
    (integers on a discrete chain). Returns it as a tensor."""
    if isinstance(timesteps, torch.Tensor):
        ts = timesteps.detach().cpu()
    else:
        ts = torch.as_tensor(np.asarray(list(timesteps)))
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError("timesteps must be a non-empty 1-D list")
    if path.discrete:
        if ts.is_floating_point():
            if not bool(torch.all(ts == torch.round(ts))):
                raise ValueError(f"timesteps of a discrete chain must be integers, got {ts.tolist()}")
        ts = ts.to(torch.int64)
    else:
        ts = ts.to(torch.float64)
    if not bool(torch.all(torch.isfinite(ts.double()))):
        raise ValueError(f"timesteps must be finite, got {ts.tolist()}")
    diffs = ts[1:] - ts[:-1]
    if bool((diffs == 0).any()):
        dup = ts[1:][diffs == 0].tolist()
        raise ValueError(f"timesteps must not contain duplicates; repeated: {dup}")
    if bool((diffs > 0).any()):
        raise ValueError(f"timesteps must be strictly descending (noisiest first), got {ts.tolist()}")
    lo, hi = path.t_min, path.t_max
    if float(ts[0]) > hi or float(ts[-1]) < lo:
        raise ValueError(f"timesteps must lie in [{lo}, {hi}], got {ts.tolist()}")
    return ts


def analytic_first_step_grid(grid: Callable[[int], torch.Tensor], num_steps: int) -> torch.Tensor:
    """The visited times of a sampler with the analytic first step (:mod:`skipstep.gaussian_data`) and
    ``num_steps = n`` model evaluations: the spacing rule's grid for ``n + 1`` steps, ``grid(n + 1)``, whose first
    (noisiest) time is the analytic node -- the ``n + 1``-step sampler with its first evaluation replaced by the
    closed form.

    Why ``n + 1`` and not an analytic node in front of the ``n``-step grid: the saving comes from the denser model
    grid (the ``n`` evaluations where the ``n + 1``-step sampler has its last ``n``), not from where the analytic
    node sits; on the 8x8 digits model (500 samples, one seed), power spacing, eta 1, order 2, corrector, NFE 3 / 4 /
    6: FD 8.1 / 4.9 / 1.6
    this way against 19.9 / 7.9 / 2.5 with the analytic node at ``t_max`` in front of the ``n``-step grid (18.7 /
    8.5 / 2.7 without the analytic step; docs/analytic_first_step.md)."""
    n = check_num_steps(num_steps, name="num_steps")
    ts = grid(n + 1).cpu()
    if ts.ndim != 1 or len(ts) != n + 1:
        raise ValueError(f"the spacing gives {len(ts)} times for {n + 1} steps, not {n + 1}: {ts.tolist()}")
    return ts


__all__ = [
    "analytic_first_step_grid",
    "POWER_SLOPE",
    "check_spacing_power",
    "power_grid",
    "power_timesteps",
    "spacing_power_for",
    "GRID_FAMILIES",
    "SIGMA_MATCH_TOLERANCE",
    "REFERENCE_CHAIN",
    "SIGMA_SPACINGS",
    "FEW_STEPS_BELOW",
    "POWER_SLOPE_MANY_STEPS",
    "SPACINGS",
    "check_num_steps",
    "clipped_chain_length",
    "make_strictly_descending",
    "select_timesteps",
    "snr_matched_power_grid",
    "sigma_spaced_timesteps",
    "sigma_to_timestep",
    "timesteps_from_sigmas",
    "validate_timesteps",
    "vp_sigmas",
]
