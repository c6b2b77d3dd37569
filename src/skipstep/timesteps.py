"""Timestep selection: which noisy times a few-step sampler visits (model evaluations), noisiest first.

The final step always goes from the last listed time to the path's clean time.

Spacings for a discrete chain of ``T`` steps (``n`` model evaluations), matching diffusers where diffusers has them:

* ``linspace``:  ``round(linspace(0, T-1, n))`` reversed
* ``leading``:   ``arange(n) * (T // n) + steps_offset`` reversed
* ``trailing``:  ``round(arange(T, 0, -T/n)) - 1``  (Lin et al. 2023; starts at ``T-1``)
* ``quadratic``: ``int(linspace(0, sqrt(0.8 T), n) ** 2)`` reversed (Song et al., DDIM, CIFAR-10 setting)
* ``log_snr``:   ``lambda(t_i)`` uniform between ``lambda(t_max)`` and ``lambda(t_min)`` (Lu et al., DPM-Solver),
  rounded to the nearest index

On continuous paths (``t`` in ``[t_min, t_max]``): ``linspace`` includes both ends, ``trailing`` is
``t_max (n - i) / n``, ``quadratic`` is ``t_max ((n - i) / n)^2``, ``log_snr`` as above; ``leading`` is
discrete only. Rounding on a discrete chain can make neighbours collide when ``n`` is close to ``T``; colliding
indices are pushed apart to the nearest free indices so the list stays strictly descending with exactly ``n``
entries (never silently dropped).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .paths import GaussianPath

SPACINGS = ("linspace", "leading", "trailing", "quadratic", "log_snr")


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


def select_timesteps(
    path: GaussianPath,
    num_steps: int,
    spacing: str = "trailing",
    steps_offset: int = 0,
) -> torch.Tensor:
    """``num_steps`` noisy times, strictly descending (int64 on discrete paths, float64 otherwise)."""
    if spacing not in SPACINGS:
        raise ValueError(f"timestep spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    num_steps = int(num_steps)
    if path.discrete:
        T = path.t_max + 1
        if num_steps > T:
            raise ValueError(f"num_inference_steps must lie in [1, {T}] (num_train_timesteps), got {num_steps}")
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1]
        elif spacing == "leading":
            ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1] + steps_offset
            if ts[0] > T - 1:
                raise ValueError(f"steps_offset={steps_offset} pushes the first timestep past T-1={T - 1}")
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
        elif spacing == "quadratic":
            ts = np.floor(np.linspace(0, np.sqrt(T * 0.8), num_steps) ** 2)[::-1]
        else:  # log_snr
            lam = _log_snr_grid(path, path.t_max, path.t_min, num_steps)
            ts = np.round(path.time_at_log_snr(torch.as_tensor(lam)).numpy())
        return torch.as_tensor(make_strictly_descending(np.asarray(ts), highest=T - 1))

    t_max, t_min = float(path.t_max), float(path.t_min)
    i = np.arange(num_steps, dtype=np.float64)
    if spacing == "linspace":
        ts = np.linspace(t_max, t_min, num_steps) if num_steps > 1 else np.array([t_max])
    elif spacing == "trailing":
        ts = t_max * (num_steps - i) / num_steps
    elif spacing == "quadratic":
        ts = t_max * ((num_steps - i) / num_steps) ** 2
    elif spacing == "log_snr":
        ts = path.time_at_log_snr(torch.as_tensor(_log_snr_grid(path, t_max, t_min, num_steps))).numpy()
        ts[0] = t_max  # exact endpoint (the inverse can round off)
    else:
        raise ValueError("timestep spacing 'leading' is defined for discrete chains only")
    ts = torch.as_tensor(np.asarray(ts, dtype=np.float64))
    validate_timesteps(path, ts)
    return ts


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


__all__ = ["SPACINGS", "make_strictly_descending", "select_timesteps", "validate_timesteps"]
