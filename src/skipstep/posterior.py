r"""The skipped-step posterior q(x_s | x_t, x_0) for any Gaussian path with falling SNR -- the one function every
sampler in skipstep is built on.

Derivation. On a path ``x_t = alpha_t x_0 + sigma_t eps`` the forward jump from ``s`` to ``t > s`` is Gaussian,

    q(x_t | x_s) = N(a x_s, v I),     a = alpha_t / alpha_s,     v = sigma_t^2 - a^2 sigma_s^2  (the jump's "beta"),

and ``v >= 0`` exactly when the SNR ``alpha^2 / sigma^2`` does not rise from ``s`` to ``t``. Bayes' rule with the
prior ``q(x_s | x_0) = N(alpha_s x_0, sigma_s^2 I)`` multiplies two Gaussians in ``x_s``; completing the square,

    precision  = a^2 / v + 1 / sigma_s^2 = sigma_t^2 / (v sigma_s^2)
    variance   = v sigma_s^2 / sigma_t^2                                            (posterior variance)
    mean       = variance * (a x_t / v + alpha_s x_0 / sigma_s^2)
               = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s v / sigma_t^2) x_0.

For the discrete VP chain (``alpha^2 = abar``) with ``A = abar_t / abar_s`` this is the paper's
``mean = [sqrt(A) (1 - abar_s) x_t + sqrt(abar_s) (1 - A) x_0] / (1 - abar_t)``,
``variance = (1 - abar_s) / (1 - abar_t) (1 - A)``; with ``s = t - 1`` it is the DDPM step.

The DDIM family. Writing the mean through ``eps_hat = (x_t - alpha_t x_0) / sigma_t`` gives
``mean = alpha_s x_0 + sqrt(sigma_s^2 - variance) eps_hat``. Replacing ``variance`` by ``lambda^2 = eta^2 variance``
in both the mean and the injected noise gives Song et al.'s generalised (non-Markovian) family, which keeps every
marginal ``q(x_s | x_0)`` for any ``eta in [0, 1]``: ``eta = 1`` is the Markovian skipped-step posterior above,
``eta = 0`` is DDIM. Hence ``gaussian_posterior(..., eta)`` serves the whole family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Posterior:
    """Coefficients of one reverse step ``x_s = coef_xt x_t + coef_x0 x0_hat + sqrt(noise_var) z``.

    ``posterior_variance`` is the exact ``Var[x_s | x_t, x_0]``; ``jump_variance`` is the forward jump's ``v``
    (``1 - abar_t/abar_s`` on the VP chain); ``noise_var = eta^2 posterior_variance`` is what the DDIM family with
    this ``eta`` injects, and ``direction`` is ``sqrt(sigma_s^2 - noise_var)``, the weight of ``eps_hat``.
    """

    coef_xt: float
    coef_x0: float
    noise_var: float
    posterior_variance: float
    jump_variance: float
    alpha_s: float
    direction: float
    eta: float

    @property
    def is_final(self) -> bool:
        """The target is clean data (``sigma_s = 0``): the step returns ``x0_hat`` and injects no noise."""
        return self.posterior_variance == 0.0 and self.direction == 0.0


def gaussian_posterior(alpha_t: float, sigma_t: float, alpha_s: float, sigma_s: float, eta: float = 1.0) -> Posterior:
    """Skipped-step posterior ``q(x_s | x_t, x_0)`` and its DDIM-family relaxation (see module docstring).

    All inputs are Python floats (computed in float64). ``s`` must be less noisy than ``t``:
    ``alpha_s / sigma_s > alpha_t / sigma_t`` (log-SNR falls with time).
    """
    if not 0.0 <= eta <= 1.0 or math.isnan(eta):
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if not (sigma_t > 0 and alpha_s > 0 and alpha_t >= 0 and sigma_s >= 0):
        raise ValueError(
            f"need sigma_t > 0, alpha_s > 0, alpha_t >= 0, sigma_s >= 0; got alpha_t={alpha_t}, sigma_t={sigma_t}, "
            f"alpha_s={alpha_s}, sigma_s={sigma_s}"
        )
    a = alpha_t / alpha_s
    jump_variance = sigma_t * sigma_t - a * a * sigma_s * sigma_s
    if jump_variance < -1e-12 * sigma_t * sigma_t:
        raise ValueError(
            "the signal-to-noise ratio must fall from s to t (alpha_s/sigma_s > alpha_t/sigma_t); "
            f"got alpha_t={alpha_t}, sigma_t={sigma_t}, alpha_s={alpha_s}, sigma_s={sigma_s}"
        )
    jump_variance = max(jump_variance, 0.0)
    ratio = sigma_s * sigma_s / (sigma_t * sigma_t)
    posterior_variance = jump_variance * ratio
    # sigma_s^2 - eta^2 var = sigma_s^2 [(1 - eta^2) + eta^2 a^2 sigma_s^2 / sigma_t^2]: no cancellation at eta = 1
    direction = sigma_s * math.sqrt((1.0 - eta * eta) + eta * eta * a * a * ratio)
    coef_xt = direction / sigma_t
    return Posterior(
        coef_xt=coef_xt,
        coef_x0=alpha_s - coef_xt * alpha_t,
        noise_var=eta * eta * posterior_variance,
        posterior_variance=posterior_variance,
        jump_variance=jump_variance,
        alpha_s=alpha_s,
        direction=direction,
        eta=float(eta),
    )





def x0_coefficient_growth(u, eta: float):
    """``C(u) / alpha_s = 1 - g(u) e^{-u}``, with ``g(u) = sqrt((1 - eta^2) + eta^2 e^{-2u})``: the weight of
    ``x0_hat`` in a family step spanning ``u = lambda_s - lambda_t`` of half-log-SNR ``lambda = log(alpha/sigma)``
    (``coef_x0 = alpha_s - coef_xt alpha_t`` written in ``u``). Works on floats and numpy arrays."""
    u = np.asarray(u, dtype=np.float64)
    g = np.sqrt((1.0 - eta * eta) + eta * eta * np.exp(-2.0 * u))
    return 1.0 - g * np.exp(-u)


def multistep_x0_weights(lambdas: list[float], lambda_s: float, eta: float, num_nodes: int = 48) -> list[float]:
    r"""Weights ``w_j`` of the effective data prediction ``D = sum_j w_j x0_hat(lambda_j)`` of a multistep
    (higher-order) posterior step from ``lambda_0`` (the current time, listed first, then earlier times) to
    ``lambda_s``.

    The family step ``x_s = coef_xt x_t + C(h) x0_hat + noise`` treats ``x0_hat`` as constant over the step. Its
    exact integral form is ``x_s = coef_xt x_t + int_0^h C'(u) x0(lambda_s - u) du + noise`` (exact for
    ``eta in {0, 1}``: the probability-flow ODE and the reverse SDE in exponential-integrator form), with
    ``C(u) = alpha_s (1 - g(u) e^{-u})`` of :func:`x0_coefficient_growth`. Interpolating ``x0(lambda)`` through the
    last ``k`` predictions with Lagrange polynomials ``L_j`` gives

        w_j = int_0^h C'(u) L_j(lambda_s - u) du / C(h),        sum_j w_j = 1,

    computed by Gauss-Legendre quadrature. One node gives ``w = [1]``: the first-order step. Two nodes at
    ``eta = 0`` give DPM-Solver++(2M) with its exact ("heun"-type) coefficient, at ``eta = 1`` SDE-DPM-Solver++(2M).
    """
    lams = np.asarray(lambdas, dtype=np.float64)
    if lams.size == 1:
        return [1.0]
    h = lambda_s - lams[0]
    if not (np.isfinite(h) and h > 0 and np.all(np.isfinite(lams))):
        raise ValueError("multistep weights need finite, increasing half-log-SNR values")
    nodes, quad_w = np.polynomial.legendre.leggauss(num_nodes)
    u = 0.5 * h * (nodes + 1.0)
    # C'(u) / alpha_s = e^{-u} (g + eta^2 e^{-2u} / g)
    g = np.sqrt((1.0 - eta * eta) + eta * eta * np.exp(-2.0 * u))
    kernel = np.exp(-u) * (g + eta * eta * np.exp(-2.0 * u) / g)
    lam = lambda_s - u
    total = float(x0_coefficient_growth(h, eta))
    weights = []
    for j in range(lams.size):
        basis = np.ones_like(lam)
        for m in range(lams.size):
            if m != j:
                basis *= (lam - lams[m]) / (lams[j] - lams[m])
        weights.append(float(0.5 * h * np.sum(quad_w * kernel * basis)) / total)
    return weights
__all__ = ["Posterior", "gaussian_posterior", "multistep_x0_weights", "x0_coefficient_growth"]
