"""Training-free estimate of the KL-optimal reverse variance (Analytic-DPM, Bao et al. 2022).

For a step whose mean is ``coef_xt x_t + coef_x0 x0_hat(x_t)``, the isotropic variance that minimises the KL to
the true reverse step is the mean squared error of that mean,
``lambda^2 + coef_x0^2 E||x_0 - x0_hat||^2 / d`` (Bao et al. 2022a, Thm. 1; 2022b for imperfect means). With
``x0_hat = (x_t - sigma_t eps_hat) / alpha_t`` this needs one number per timestep from the model,

    M_t = E_{x_0 ~ data, eps} ||eps - eps_hat(alpha_t x_0 + sigma_t eps, t)||^2 / d,
    E||x_0 - x0_hat||^2 / d = (sigma_t^2 / alpha_t^2) M_t.

For a perfect model ``M_t = 1 - Gamma_t`` with Analytic-DPM's ``Gamma_t = E||eps_hat||^2 / d``; the MSE form is
used because it stays exact for an imperfect network and its Monte Carlo estimate has far lower variance at high
noise (where ``sigma_t^2/alpha_t^2`` amplifies any error in ``1 - Gamma_t``). It is estimated once per model over
data samples (the training set, or any sample of the data distribution) and cached in a small JSON file keyed by
the model's fingerprint (under :func:`skipstep.storage.cache_dir`). :func:`skipstep.steps.optimal_noise_variance` turns it into the step variance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .paths import DiscreteVPPath
from .predictions import check_prediction_type, predict_x0_eps, unwrap_model_output
from .storage import atomic_write_json


@torch.no_grad()
def estimate_eps_mse(
    model: Callable,
    path: DiscreteVPPath,
    data: torch.Tensor,
    prediction_type: str = "epsilon",
    num_timesteps: int = 100,
    evaluate_at: Sequence[int] | None = None,
    samples_per_timestep: int | None = None,
    batch_size: int = 2048,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``M_t = E||eps - eps_hat||^2 / d`` for every training timestep of a discrete chain (float64, length ``T``).

    The model is evaluated on ``num_timesteps`` evenly spaced timesteps (always including ``0`` and ``T-1``) with
    ``samples_per_timestep`` data points each (default: all of ``data``); values in between are linearly
    interpolated (M_t is smooth in t); ``evaluate_at`` lists the evaluated timesteps explicitly instead.
    ``model(x_t, t_batch)`` as in :func:`skipstep.sample`.
    """
    check_prediction_type(prediction_type)
    if not path.discrete:
        raise ValueError("estimate_eps_mse supports discrete chains (the table is per training timestep)")
    T = path.t_max + 1
    if not 2 <= num_timesteps <= T:
        raise ValueError(f"num_timesteps must lie in [2, {T}], got {num_timesteps}")
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError("data must be a batch of samples (N, ...)")
    n = data.shape[0] if samples_per_timestep is None else int(samples_per_timestep)
    if not 1 <= n <= data.shape[0]:
        raise ValueError(f"samples_per_timestep must lie in [1, {data.shape[0]}] (the data size), got {n}")
    if evaluate_at is not None:
        grid = np.unique(np.asarray(list(evaluate_at), dtype=np.int64))
        if grid.size == 0 or grid[0] < 0 or grid[-1] > T - 1:
            raise ValueError(f"evaluate_at must be timesteps in [0, {T - 1}]")
    else:
        grid = np.unique(np.round(np.linspace(0, T - 1, num_timesteps)).astype(np.int64))
    values = []
    for t in tqdm(grid.tolist(), disable=not progress, desc="estimating E||eps - eps_hat||^2"):
        alpha, sigma = (float(v) for v in path.alpha_sigma(t))
        total, count = 0.0, 0
        for start in range(0, n, batch_size):
            x0 = data[start: start + batch_size].to(torch.float32)
            eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
            x_t = alpha * x0 + sigma * eps
            out = model(x_t, torch.full((x0.shape[0],), t, dtype=torch.int64, device=x0.device))
            out = unwrap_model_output(out)
            out = out[:, : x0.shape[1]].double()  # a learned-variance model's prediction channels
            _, eps_hat = predict_x0_eps(out, x_t.double(), alpha, sigma, prediction_type)
            total += float((eps.double() - eps_hat).pow(2).flatten(1).mean(1).sum())
            count += x0.shape[0]
        values.append(total / count)
    table = np.interp(np.arange(T), grid, np.asarray(values))
    return torch.as_tensor(table, dtype=torch.float64)


def save_eps_mse(file: str | os.PathLike, table: torch.Tensor, fingerprint: str, overwrite: bool = False,
                 **provenance) -> Path:
    """Write the table atomically as JSON ``{"fingerprint", "eps_mse", ...provenance}``."""
    file = Path(file)
    if file.exists() and not overwrite:
        raise FileExistsError(f"{file} exists; pass overwrite=True to replace it")
    payload = {"fingerprint": fingerprint, "eps_mse": [float(v) for v in table.tolist()], **provenance}
    return atomic_write_json(file, payload, indent=None)


def load_eps_mse(file: str | os.PathLike, fingerprint: str | None = None) -> torch.Tensor:
    """Read a table written by :func:`save_eps_mse`; refuse one made for another model."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"eps_mse cache {file} does not exist")
    try:
        payload = json.loads(file.read_text())
        table = torch.as_tensor(payload["eps_mse"], dtype=torch.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"eps_mse cache {file} is corrupt: {exc}") from exc
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise ValueError(
            f"eps_mse cache {file} was made for model {payload.get('fingerprint')!r}, not {fingerprint!r}"
        )
    return table


__all__ = ["estimate_eps_mse", "load_eps_mse", "save_eps_mse"]
