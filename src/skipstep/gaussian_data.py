r"""The data prediction of Gaussian data in closed form: the analytic first step.

For data ``x_0 ~ N(mu, Sigma)`` on a path ``x_t = alpha_t x_0 + sigma_t eps``, ``x_t`` and ``x_0`` are jointly
Gaussian and the exact denoiser is linear in ``x_t``:

    E[x_0 | x_t] = mu + alpha_t Sigma (alpha_t^2 Sigma + sigma_t^2 I)^{-1} (x_t - alpha_t mu).

With a diagonal ``Sigma = diag(v)`` (per-pixel variances ``v``, or one scalar) it is elementwise,

    x0_hat = mu + g (x_t - alpha_t mu),       g = alpha_t v / (alpha_t^2 v + sigma_t^2),

and at zero signal (``alpha_t = 0``: zero terminal SNR, a flow's ``t = 1``) it is ``mu`` exactly. At the noisiest
time of a few-step grid the SNR ``alpha_t^2 / sigma_t^2`` is ~0, so the true data's ``E[x_0 | x_t]`` equals this
to first order in the SNR whatever the data's shape (its second-order term needs the third cumulants): a model
evaluation there is spent on an answer that the data's mean (and variance) already give. :func:`skipstep.sample`
(``data_mean=``, ``data_var=``) and :func:`skipstep.k_diffusion.sample_skipstep` use it for their first step,
saving one network evaluation (docs/analytic_first_step.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def _as_moment(value, name: str, allowed: str) -> torch.Tensor:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or a tensor ({allowed}), got {value!r}")
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be a real tensor ({allowed}), got dtype {value.dtype}")
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or a tensor ({allowed}), got {type(value).__name__}") from None


def check_data_moments(data_mean, data_var, sample_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, var)`` as float64 CPU tensors broadcastable to ``sample_shape`` (``(batch, C, H, W)``), or a
    ``ValueError`` naming the parameter and what it accepts.

    ``data_mean``: a finite number, or a tensor of finite values whose shape broadcasts to the sample's without
    enlarging it (``(C, H, W)``, ``(1, C, H, W)``, ``(C, 1, 1)``, a scalar). ``data_var``: the same, every value in
    ``[0, inf)``; ``None`` is 0 (``x0_hat = mu``).
    """
    shape = tuple(int(v) for v in sample_shape)
    mean_allowed = f"finite values, broadcastable to the sample shape {shape}"
    var_allowed = f"finite values in [0, inf), broadcastable to the sample shape {shape}"
    mean = _as_moment(data_mean, "data_mean", mean_allowed)
    var = torch.zeros((), dtype=torch.float64) if data_var is None else _as_moment(data_var, "data_var", var_allowed)
    for name, value, allowed in (("data_mean", mean, mean_allowed), ("data_var", var, var_allowed)):
        try:
            broadcast = torch.broadcast_shapes(tuple(value.shape), shape)
        except RuntimeError:
            broadcast = None
        if broadcast != shape:
            raise ValueError(f"{name} must have {allowed}; got shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must have {allowed}; it contains NaN or inf")
    if bool((var < 0).any()):
        raise ValueError(f"data_var must have {var_allowed}; its smallest value is {float(var.min())}")
    return mean, var


def gaussian_data_x0(x_t: torch.Tensor, alpha_t: float, sigma_t: float, mean: torch.Tensor,
                     var: torch.Tensor) -> torch.Tensor:
    """``x0_hat = mu + g (x_t - alpha_t mu)``, ``g = alpha_t v / (alpha_t^2 v + sigma_t^2)`` (module docstring):
    the exact ``E[x_0 | x_t]`` of data ``N(mu, diag(v))``, in ``x_t``'s dtype (the gain in float64 first).
    ``mean`` and ``var`` as :func:`check_data_moments` returns them; ``sigma_t > 0``."""
    if not (sigma_t > 0 and alpha_t >= 0 and math.isfinite(alpha_t) and math.isfinite(sigma_t)):
        raise ValueError(f"the closed-form data prediction needs sigma_t > 0 and alpha_t >= 0, got alpha_t={alpha_t}, "
                         f"sigma_t={sigma_t}")
    gain = alpha_t * var / (alpha_t * alpha_t * var + sigma_t * sigma_t)
    offset = mean * (1.0 - gain * alpha_t)  # mu - g alpha_t mu
    cast = dict(device=x_t.device, dtype=x_t.dtype)
    return torch.addcmul(offset.to(**cast), gain.to(**cast), x_t)


__all__ = ["check_data_moments", "gaussian_data_x0"]
