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

import functools
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


#: How a multistep step turns the ``x0_hat`` history into its data prediction ``D`` (diffusers' name and values):
#: ``heun`` -- the exact exponential-integrator weights of :func:`exact_x0_weight_rows` (skipstep's default);
#: ``midpoint`` -- DPM-Solver++'s midpoint form, :func:`midpoint_x0_weight_rows`.
SOLVER_TYPES = ("heun", "midpoint")


@functools.lru_cache(maxsize=4)
def _gauss_legendre(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


def _check_spans(lams: np.ndarray, lambda_s: np.ndarray, lambda_t: np.ndarray | None = None) -> np.ndarray:
    h = lambda_s - (lams[:, 0] if lambda_t is None else lambda_t)
    if not (np.all(np.isfinite(h)) and np.all(h > 0) and np.all(np.isfinite(lams))):
        raise ValueError("multistep weights need finite, increasing half-log-SNR values")
    return h


def _lagrange_basis(lams: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``L_j(at)`` for the nodes ``lams`` (rows: steps, columns: nodes); ``at`` has shape (rows, points).
    Returns (rows, nodes, points)."""
    k = lams.shape[1]
    basis = np.ones((lams.shape[0], k, at.shape[1]))
    for j in range(k):
        for m in range(k):
            if m != j:
                basis[:, j] *= (at - lams[:, m:m + 1]) / (lams[:, j:j + 1] - lams[:, m:m + 1])
    return basis


def exact_x0_weight_rows(lambdas, lambda_s, eta, num_nodes: int = 48, lambda_t=None) -> np.ndarray:
    r"""Exact ("heun") weights ``w_j`` of the effective data prediction ``D = sum_j w_j x0_hat(lambda_j)`` of a
    multistep posterior step, for many steps at once: row ``i`` has the nodes ``lambdas[i]`` (the current time
    first, then earlier times), the target ``lambda_s[i]`` and its ``eta[i]``.

    The family step ``x_s = coef_xt x_t + C(h) x0_hat + noise`` treats ``x0_hat`` as constant over the step. Its
    exact integral form is ``x_s = coef_xt x_t + int_0^h C'(u) x0(lambda_s - u) du + noise`` (exact for
    ``eta in {0, 1}``: the probability-flow ODE and the reverse SDE in exponential-integrator form), with
    ``C(u) = alpha_s (1 - g(u) e^{-u})`` of :func:`x0_coefficient_growth`. Interpolating ``x0(lambda)`` through the
    ``k`` nodes with Lagrange polynomials ``L_j`` gives

        w_j = int_0^h C'(u) L_j(lambda_s - u) du / C(h),        sum_j w_j = 1,

    computed by Gauss-Legendre quadrature (nodes cached). Two nodes at ``eta = 0`` give DPM-Solver++(2M) with its
    exact ("heun") coefficient, at ``eta = 1`` SDE-DPM-Solver++(2M) in its heun form; three nodes integrate the
    quadratic interpolant exactly.

    ``lambda_t`` (one per row) sets the step's start when it is not the first node: the *corrector* of a step
    from ``lambda_t`` to ``lambda_s`` interpolates through nodes that include ``lambda_s`` itself (the model's
    output at the step's end, see :func:`corrector_x0_weight_rows`); the integral is the same.
    """
    lams = np.atleast_2d(np.asarray(lambdas, dtype=np.float64))
    lam_s = np.asarray(lambda_s, dtype=np.float64).reshape(-1)
    eta = np.broadcast_to(np.asarray(eta, dtype=np.float64).reshape(-1), lam_s.shape)[:, None]
    lam_t = None if lambda_t is None else np.asarray(lambda_t, dtype=np.float64).reshape(-1)
    if lams.shape[1] == 1 and lam_t is None:
        return np.ones((lams.shape[0], 1))
    h = _check_spans(lams, lam_s, lam_t)[:, None]
    nodes, quad_w = _gauss_legendre(num_nodes)
    u = 0.5 * h * (nodes[None, :] + 1.0)
    # C'(u) / alpha_s = e^{-u} (g + eta^2 e^{-2u} / g)
    e2 = np.exp(-2.0 * u)
    g = np.sqrt((1.0 - eta * eta) + eta * eta * e2)
    kernel = np.exp(-u) * (g + eta * eta * e2 / g) * quad_w[None, :]
    basis = _lagrange_basis(lams, lam_s[:, None] - u)
    total = x0_coefficient_growth(h[:, 0], eta[:, 0])
    return 0.5 * h * np.einsum("rjp,rp->rj", basis, kernel) / total[:, None]


def corrector_x0_weight_rows(lambdas, lambda_s, eta) -> np.ndarray:
    r"""Weights of the corrector of a posterior step from ``lambdas[i][1]`` (the step's start) to ``lambda_s[i]``:
    once the model has been evaluated at the step's end, the step is redone with ``D = sum_j w_j x0_hat(lambda_j)``
    interpolating through the nodes ``lambdas[i] = (lambda_s, lambda_t, earlier...)`` -- the new evaluation first --
    with the exact weights of :func:`exact_x0_weight_rows` over the same interval ``[lambda_t, lambda_s]``:

        w_j = int_0^h C'(u) L_j(lambda_s - u) du / C(h),        h = lambda_s - lambda_t.

    Interpolation instead of extrapolation raises the order by one at no extra evaluation (the model output at the
    step's end is the one the next step uses anyway): UniPC's UniC and SA-Solver's corrector are of this kind;
    with ``eta = 1`` (SA-Solver's ``tau = 1``) and ``eta = 0`` the integrals are theirs, exactly.
    """
    lams = np.atleast_2d(np.asarray(lambdas, dtype=np.float64))
    if lams.shape[1] < 2:
        raise ValueError("a corrector needs at least two nodes: the new evaluation and the step's start")
    return exact_x0_weight_rows(lams, lambda_s, eta, lambda_t=lams[:, 1])


def midpoint_x0_weight_rows(lambdas, lambda_s) -> np.ndarray:
    r"""DPM-Solver++'s midpoint form: ``D`` is the interpolant of the ``x0_hat`` history evaluated at the middle
    of the step in half-log-SNR, ``lambda_0 + h/2``. For two nodes, with ``r = (lambda_0 - lambda_1) / h``,

        w_0 = 1 + 1/(2r),      w_1 = -1/(2r),

    which is diffusers' / k-diffusion's ``solver_type="midpoint"`` update, ``D = x0_0 + (x0_0 - x0_1)/(2r)``,
    whatever the step's eta (their ODE and SDE updates share it). Used for order-2 steps only: order-3 steps use
    :func:`exact_x0_weight_rows` under either solver type.
    """
    lams = np.atleast_2d(np.asarray(lambdas, dtype=np.float64))
    lam_s = np.asarray(lambda_s, dtype=np.float64).reshape(-1)
    if lams.shape[1] == 1:
        return np.ones((lams.shape[0], 1))
    h = _check_spans(lams, lam_s)
    return _lagrange_basis(lams, (lams[:, 0] + 0.5 * h)[:, None])[:, :, 0]


def x0_weight_rows(solver_type: str, lambdas, lambda_s, eta) -> np.ndarray:
    """Multistep weights for ``solver_type`` (see ``SOLVER_TYPES``), one row per step."""
    lams = np.atleast_2d(np.asarray(lambdas, dtype=np.float64))
    if solver_type == "midpoint" and lams.shape[1] == 2:
        return midpoint_x0_weight_rows(lams, lambda_s)
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    return exact_x0_weight_rows(lams, lambda_s, eta)


def with_extrapolation_gain(rows, gain: float) -> np.ndarray:
    r"""Order-2 weight rows ``(w_0, w_1)`` (``w_0 + w_1 = 1``) with their order-2 term multiplied by ``gain``:

        D = x0_0 + G w_1 (x0_1 - x0_0),        i.e.  (w_0, w_1) -> (1 - G w_1, G w_1).

    ``G = 1`` is the exact integral of the line through the two predictions; ``G > 1`` extrapolates their trend
    further (SA-Solver's order-2 step is ours with ``G`` about 1.44 on a cosine chain at 3 steps, see
    docs/results.md), ``G = 0`` is the first-order step. Rows of other orders are returned unchanged."""
    rows = np.array(rows, dtype=np.float64, ndmin=2)
    if rows.shape[1] == 2 and gain != 1.0:
        rows[:, 1] *= gain
        rows[:, 0] = 1.0 - rows[:, 1]
    return rows


def multistep_x0_weights(lambdas: list[float], lambda_s: float, eta: float, num_nodes: int = 48,
                         solver_type: str = "heun") -> list[float]:
    """Weights ``w_j`` of ``D = sum_j w_j x0_hat(lambda_j)`` for one step from ``lambdas[0]`` (the current time,
    then earlier times) to ``lambda_s`` (see :func:`exact_x0_weight_rows`, :func:`midpoint_x0_weight_rows`)."""
    if len(lambdas) == 1:
        return [1.0]
    if solver_type == "heun":
        return exact_x0_weight_rows([list(lambdas)], [lambda_s], [eta], num_nodes)[0].tolist()
    return x0_weight_rows(solver_type, [list(lambdas)], [lambda_s], [eta])[0].tolist()


__all__ = [
    "Posterior",
    "SOLVER_TYPES",
    "corrector_x0_weight_rows",
    "exact_x0_weight_rows",
    "gaussian_posterior",
    "midpoint_x0_weight_rows",
    "multistep_x0_weights",
    "x0_coefficient_growth",
    "with_extrapolation_gain",
    "x0_weight_rows",
]
