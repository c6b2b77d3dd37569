"""The step plan: everything about a trajectory that does not depend on the model, precomputed once.

For a descending list of timesteps it holds each step's posterior coefficients (float64 scalars), its eta, the
half-log-SNR history a multistep (higher-order) step interpolates over, and -- for the optimal variance -- the
model's ``M_t = E||eps - eps_hat(x_t, t)||^2 / d`` at ``t``. The functional sampler and the diffusers schedulers
share this plan, so the loop body is a handful of tensor operations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .paths import GaussianPath
from .posterior import Posterior, gaussian_posterior, multistep_x0_weights

# ----------------------------------------------------------------------------------------------------------------
# eta schedules
# ----------------------------------------------------------------------------------------------------------------
_SWITCH = re.compile(r"^(skip-ddim|ddim-skip):([0-9]*\.?[0-9]+)$")
_LINEAR = re.compile(r"^linear:([0-9]*\.?[0-9]+):([0-9]*\.?[0-9]+)$")
ETA_SCHEDULE_FORMS = (
    "a number in [0, 1] (constant)",
    "a list of numbers in [0, 1], one per step",
    "'linear:A:B' (eta ramps from A at the first step to B at the last)",
    "'skip-ddim:K' (skipped-step eta=1 for the first K steps, then DDIM eta=0; K an integer, or a fraction in (0,1) "
    "of the steps)",
    "'ddim-skip:K' (DDIM for the first K steps, then skipped-step)",
)


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


def resolve_eta_schedule(eta, num_steps: int) -> list[float]:
    """Per-step eta values (first step first) from any accepted form, see ``ETA_SCHEDULE_FORMS``.

    The last step goes to the clean data and injects no noise whatever its eta; it is still listed.
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


@dataclass(frozen=True)
class PlannedStep:
    """Step ``index`` goes from time ``t`` to ``s`` (``s`` is the clean time on the last step).

    ``lambdas`` holds ``log(alpha/sigma)`` at ``t`` and at up to ``MAX_SOLVER_ORDER - 1`` earlier visited times
    (most recent first); ``lambda_s`` the target's. ``eps_mse`` is ``M_t`` when an optimal-variance table
    was given.
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
    _weights: dict = field(default_factory=dict, compare=False, repr=False)

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
        this step's span, and never apply to the final (to clean) step."""
        if self.is_final or not self.lambdas or not math.isfinite(self.lambdas[0]):
            return 1
        h = self.lambda_s - self.lambdas[0]
        order = 1
        for newer, older in zip(self.lambdas, self.lambdas[1:]):
            if not math.isfinite(older) or (newer - older) < MIN_SPAN_RATIO * h:
                break
            order += 1
        return order

    def x0_weights(self, order: int, eta: float) -> tuple[float, ...]:
        """Weights of the current and earlier ``x0_hat`` (see :func:`multistep_x0_weights`)."""
        order = min(order, self.max_order())
        if order == 1:
            return (1.0,)
        key = (order, eta)
        if key not in self._weights:
            self._weights[key] = tuple(multistep_x0_weights(list(self.lambdas[:order]), self.lambda_s, eta))
        return self._weights[key]


def _half_log_snr(alpha: float, sigma: float) -> float:
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


def plan_steps(
    path: GaussianPath,
    timesteps: torch.Tensor,
    eta=1.0,
    eps_mse: Sequence[float] | torch.Tensor | None = None,
) -> list[PlannedStep]:
    """Plan the trajectory through ``timesteps`` (descending) and then to the clean time.

    ``eps_mse``: the optimal-variance table ``M`` indexed by training timestep (discrete paths) -- only
    needed for ``variance_type='optimal'``.
    """
    ts = [float(v) for v in timesteps.tolist()]
    etas = resolve_eta_schedule(eta, len(ts))
    targets = ts[1:] + [float(path.clean_time)]
    alphas, sigmas = path.alpha_sigma(torch.as_tensor(ts + [float(path.clean_time)]))
    alphas, sigmas = alphas.tolist(), sigmas.tolist()
    lambdas = [_half_log_snr(a, s) for a, s in zip(alphas, sigmas)]
    if path.discrete:
        ts, targets = [int(v) for v in ts], [int(v) for v in targets]
    gammas = _gamma_at(path, ts, eps_mse)
    plan = []
    for i, (t, s) in enumerate(zip(ts, targets)):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        history = tuple(lambdas[max(0, i - MAX_SOLVER_ORDER + 1): i + 1][::-1])
        plan.append(
            PlannedStep(
                index=i, t=t, s=s, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s,
                posterior=gaussian_posterior(a_t, s_t, a_s, s_s, etas[i]),
                lambdas=history, lambda_s=lambdas[i + 1], eps_mse=gammas[i],
            )
        )
    return plan


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


__all__ = ["ETA_SCHEDULE_FORMS", "MAX_SOLVER_ORDER", "MIN_SPAN_RATIO", "PlannedStep", "plan_steps", "resolve_eta_schedule"]
