"""Classifier guidance for epsilon-prediction models (ADM's ``cond_fn``), as a model wrapper.

Dhariwal & Nichol (2021) guide a diffusion model with a noisy classifier ``p(y | x_t, t)``. Their score-based form
(Algorithm 2, the one they use with DDIM) shifts the noise prediction,

    eps'(x_t, t) = eps(x_t, t) - s * sigma_t * grad_x log p(y | x_t, t),

which is the epsilon of ``p(x_t) p(y | x_t)^s``: since ``eps = -sigma_t grad log p(x_t)``, the wrapped model is the
model of the guided distribution, so *every* sampler in skipstep (any ``eta``, schedule, order, variance) uses
it unchanged -- the skipped-step posterior then steps towards the guided ``x0_hat``. (Algorithm 1, ``mean +
s * Sigma * grad`` on the ancestral mean, depends on the step's variance and vanishes at ``eta = 0``; it is not
offered.) With ``s = 1`` and the exact classifier, the wrapped model is exactly the class-conditional model.
"""

from __future__ import annotations

from typing import Callable

import torch

from .paths import GaussianPath
from .predictions import unwrap_model_output


def classifier_guided(
    model: Callable,
    grad_log_prob: Callable[..., torch.Tensor],
    path: GaussianPath,
    scale: float = 1.0,
    learned_variance: bool = False,
) -> Callable:
    """Wrap an epsilon-prediction ``model(x_t, t, **kwargs)`` with classifier guidance.

    ``grad_log_prob(x_t, t, **kwargs)`` returns ``grad_x log p(y | x_t, t)`` in the shape of ``x_t`` (it receives the
    same keyword arguments as the model, e.g. ``y=labels``; compute it under ``torch.enable_grad()``, since samplers
    run without gradients). ``path`` is the sampling path (``scheduler.path`` for a skipstep scheduler), ``t`` is
    what the sampler passes (a ``(batch,)`` tensor or a scalar). With ``learned_variance`` the model returns
    ``[eps, v]`` along channels (ADM/DiT) and only ``eps`` is shifted.
    """
    scale = float(scale)

    def guided(x_t: torch.Tensor, t, **kwargs):
        out = unwrap_model_output(model(x_t, t, **kwargs))
        channels = x_t.shape[1]
        eps = out[:, :channels] if learned_variance else out
        if tuple(eps.shape) != tuple(x_t.shape):
            raise ValueError(f"the model's epsilon must have the sample's shape {tuple(x_t.shape)}, got "
                             f"{tuple(eps.shape)}" + ("" if learned_variance else " (learned_variance=True?)"))
        grad = grad_log_prob(x_t, t, **kwargs)
        if tuple(grad.shape) != tuple(x_t.shape):
            raise ValueError(f"grad_log_prob must return the sample's shape {tuple(x_t.shape)}, got {tuple(grad.shape)}")
        times = torch.as_tensor(t).reshape(-1).cpu()
        _, sigma = path.alpha_sigma(times)
        sigma = sigma.to(device=eps.device, dtype=eps.dtype).reshape(-1, *([1] * (eps.ndim - 1)))
        eps = eps - scale * sigma * grad.to(eps.dtype)
        return torch.cat([eps, out[:, channels:]], dim=1) if learned_variance else eps

    return guided


__all__ = ["classifier_guided"]
