"""Gaussian paths x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I).

Every sampler in skipstep only needs ``alpha(t)`` and ``sigma(t)`` at the timesteps it visits, so a path is a
small object that maps a time tensor to those two numbers. Three families are provided:

* :class:`DiscreteVPPath` -- the DDPM chain: ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` with
  ``abar_t = prod_{i<=t} (1 - beta_i)``, integer times ``0 .. T-1``. Time ``-1`` is the clean data
  (``abar = 1``), the target of the final step.
* :class:`ContinuousVPPath` -- the variance-preserving SDE of Song et al. on ``t in [0, 1]`` (linear or cosine
  log-alpha), ``alpha^2 + sigma^2 = 1``.
* :class:`RectifiedFlowPath` -- ``alpha = 1 - t``, ``sigma = t`` on ``t in [0, 1]`` (Open-Sora 1.2+, SD3, Flux).

All of them have a log-SNR ``lambda(t) = log(alpha^2 / sigma^2)`` that falls strictly with ``t``; that is the
condition under which the skipped-step posterior ``q(x_s | x_t, x_0)`` exists for every ``s < t``.
Coefficients are computed in float64 so that step rules can be exact to float32 round-off.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _as_time_tensor(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def check_num_train_timesteps(num_train_timesteps) -> int:
    """An integer >= 1 (numpy integers too; bools and floats such as 10.0 are refused)."""
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)) or (
        num_train_timesteps < 1
    ):
        raise ValueError(
            f"num_train_timesteps must be an integer >= 1 (the length of the model's training chain), "
            f"got {num_train_timesteps!r}"
        )
    return int(num_train_timesteps)


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """Betas exactly as diffusers builds them from a scheduler config.

    They are built in float32, as diffusers does during training, and returned as float64 holding those values,
    so that paths built here reproduce the trained model's noise levels bit for bit.

    * ``linear``: ``linspace(beta_start, beta_end, T)``
    * ``scaled_linear``: ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` (Stable Diffusion)
    * ``squaredcos_cap_v2``: ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`` with
      ``abar(u) = cos((u + 0.008) / 1.008 * pi / 2) ** 2`` (Nichol & Dhariwal 2021)
    * ``trained_betas``: used as given.
    * ``rescale_betas_zero_snr``: Lin et al. 2023, Alg. 1 -- shift and scale ``sqrt(abar)`` so that
      ``abar_{T-1} = 0`` while ``abar_0`` is unchanged.
    """
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float32))
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError("trained_betas must be a non-empty 1-D sequence of floats")
    else:
        n = check_num_train_timesteps(num_train_timesteps)
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            def abar(u: float) -> float:
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor(
                [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32
            )
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    bad = ~((betas > 0) & (betas <= 1))
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"betas must lie in (0, 1] (beta_start, beta_end, beta_schedule or trained_betas); beta[{first}] = "
            f"{float(betas[first])}"
        )
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas.double()


def trained_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t`` as the model was trained with it, in float64.

    diffusers accumulates the product in float32, so those are the model's own noise levels to the last bit and we
    keep them -- as long as they are valid: normal float32 numbers that fall strictly. Where float32 underflows
    (long or steep chains, e.g. betas 0.01 -> 0.2 reach 0 at t = 959) or stalls, the float64 product of the same
    betas continues the table, so the chain stays strictly falling. Zero terminal SNR keeps ``abar_{T-1} = 0``
    exactly, as DDIM/DDPM do (only v/sample predictions work there).
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)  # float64 holding the float32 values of make_betas
    abar32 = torch.cumprod(1.0 - betas.float(), dim=0).double()
    abar64 = torch.cumprod(1.0 - betas, dim=0)
    valid = abar32 >= torch.finfo(torch.float32).tiny
    valid[1:] &= abar32[1:] < abar32[:-1]
    invalid = (~valid).nonzero()
    if invalid.numel() == 0:
        return abar32
    first = int(invalid[0])
    return torch.cat([abar32[:first], abar64[first:]])


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules ... are Flawed").

    ``s = sqrt(abar)``; ``s <- (s - s_last) * s_0 / (s_0 - s_last)``; betas are recovered from the new ``abar``.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))  # diffusers' float32 operation order
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


class GaussianPath:
    """Base class. Subclasses define :meth:`alpha_sigma`; time ``clean_time`` has ``alpha=1, sigma=0``."""

    #: ``True`` for integer-indexed chains (the model was trained on ``t in {0..T-1}``).
    discrete: bool = False
    #: Time of the clean data, the target of the final step.
    clean_time: float = 0.0

    @property
    def t_min(self) -> float:  # smallest noisy time a model can be evaluated at
        raise NotImplementedError

    @property
    def t_max(self) -> float:  # largest (noisiest) time
        raise NotImplementedError

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_snr(self, t) -> torch.Tensor:
        """``lambda(t) = log(alpha_t^2 / sigma_t^2)``; ``+inf`` at the clean time."""
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def time_at_log_snr(self, lam) -> torch.Tensor:
        """Inverse of :meth:`log_snr` (continuous time; discrete paths interpolate between indices)."""
        raise NotImplementedError

    def validate_time(self, t, name: str = "timestep") -> None:
        t = _as_time_tensor(t)
        clean = t == self.clean_time
        bad = ~clean & ((t < self.t_min) | (t > self.t_max))
        if bool(bad.any()):
            raise ValueError(
                f"{name} must lie in [{self.t_min}, {self.t_max}] (or be the clean time {self.clean_time}); "
                f"got {t[bad].tolist()}"
            )


class DiscreteVPPath(GaussianPath):
    """The DDPM chain of ``T`` steps given by its cumulative products ``abar_t`` (float64).

    ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` for integer ``t in [0, T-1]``; ``t = -1`` is clean.
    """

    discrete = True
    clean_time = -1

    def __init__(self, alphas_cumprod: torch.Tensor | np.ndarray | Sequence[float]):
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        if abar.ndim != 1 or abar.numel() < 1:
            raise ValueError("alphas_cumprod must be a non-empty 1-D sequence")
        if not (0 <= float(abar.min()) and float(abar.max()) < 1):
            raise ValueError(f"alphas_cumprod must lie in [0, 1), got values in [{float(abar.min())}, "
                             f"{float(abar.max())}]")
        rises = (abar[1:] >= abar[:-1]).nonzero()
        if rises.numel():
            t = int(rises[0]) + 1
            raise ValueError(
                f"alphas_cumprod must fall strictly with t (signal-to-noise must fall), but abar[{t}] = "
                f"{float(abar[t])} >= abar[{t - 1}] = {float(abar[t - 1])}"
            )
        self.alphas_cumprod = abar
        # index t+1 into this table, so that t = -1 maps to the clean state
        self._abar_with_clean = torch.cat([torch.ones(1, dtype=torch.float64), abar])

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVPPath":
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_config(cls, config=None, **overrides) -> "DiscreteVPPath":
        """Build from a diffusers scheduler config (a dict or ``FrozenDict``); keys as in ``DDPMScheduler``."""
        cfg = dict(config or {})
        cfg.update(overrides)
        betas = make_betas(
            num_train_timesteps=cfg.get("num_train_timesteps", 1000),
            beta_start=float(cfg.get("beta_start", 0.0001)),
            beta_end=float(cfg.get("beta_end", 0.02)),
            beta_schedule=cfg.get("beta_schedule", "linear"),
            trained_betas=cfg.get("trained_betas"),
            rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
        )
        return cls(trained_alphas_cumprod(betas))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def t_min(self) -> int:
        return 0

    @property
    def t_max(self) -> int:
        return self.num_train_timesteps - 1

    def abar(self, t) -> torch.Tensor:
        """``abar_t`` for integer ``t in [-1, T-1]`` (``abar_{-1} = 1``)."""
        t = torch.as_tensor(t)
        if t.is_floating_point():
            if not bool(torch.all(t == torch.round(t))):
                raise ValueError(f"timesteps of a discrete path must be integers, got {t.tolist()}")
            t = t.round()
        idx = t.long() + 1
        if bool(((idx < 0) | (idx > self.num_train_timesteps)).any()):
            raise ValueError(f"timestep must lie in [-1, {self.t_max}], got {t.tolist()}")
        return self._abar_with_clean.to(idx.device)[idx]

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar(t)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def time_at_log_snr(self, lam) -> torch.Tensor:
        """Fractional index where the piecewise-linear interpolation of ``lambda_t`` equals ``lam``."""
        lam = _as_time_tensor(lam)
        table = self.log_snr(torch.arange(self.num_train_timesteps)).double()
        # lambda falls with t: flip to interpolate on an increasing grid
        xs = torch.flip(table, [0])
        ts = torch.flip(torch.arange(self.num_train_timesteps, dtype=torch.float64), [0])
        return torch.as_tensor(np.interp(lam.numpy(), xs.numpy(), ts.numpy()))


class _ContinuousTimePath(GaussianPath):
    """A path on a continuous time interval ``[t_min, t_max]`` (clean data at ``t = 0``)."""

    _t_min: float
    _t_max: float

    @property
    def t_min(self) -> float:
        return self._t_min

    @property
    def t_max(self) -> float:
        return self._t_max


class ContinuousVPPath(_ContinuousTimePath):
    """Continuous-time VP path on ``t in [t_min, 1]`` (Song et al. 2021).

    ``linear``: ``log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2``.
    ``cosine``: ``alpha(t) = cos((t + s)/(1 + s) * pi/2) / cos(s/(1 + s) * pi/2)`` with ``s = 0.008``.
    ``sigma(t) = sqrt(1 - alpha(t)^2)``.
    """

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 t_min: float = 1e-3, t_max: float = 1.0):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be one of ('linear', 'cosine'), got {schedule!r}")
        if not (0 < t_min < t_max <= 1):
            raise ValueError(f"need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if schedule == "cosine" and t_max > 0.9946:
            # alpha reaches 0 at t ~= 0.9946 for s = 0.008; beyond that the path is undefined
            raise ValueError("the cosine VP path needs t_max <= 0.9946 (alpha vanishes there)")
        self.schedule, self.beta_min, self.beta_max = schedule, float(beta_min), float(beta_max)
        self._t_min, self._t_max = float(t_min), float(t_max)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = 0.008
        return torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2)) - math.log(math.cos(s / (1 + s) * math.pi / 2))

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time_tensor(t)
        log_alpha = self._log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha))
        return alpha, sigma

    def time_at_log_snr(self, lam) -> torch.Tensor:
        lam = _as_time_tensor(lam)
        # log alpha^2 = -softplus(-lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-lam)
        if self.schedule == "linear":
            a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
            # a t^2 + b t + log_alpha = 0
            return (-b + torch.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)
        s = 0.008
        c = math.cos(s / (1 + s) * math.pi / 2)
        return torch.acos(torch.exp(log_alpha) * c) * 2 / math.pi * (1 + s) - s


class RectifiedFlowPath(_ContinuousTimePath):
    """``x_t = (1 - t) x_0 + t eps`` on ``t in [0, 1]`` (rectified flow / flow matching).

    ``t = 1`` is pure noise (``alpha = 0``), so samplers may start there. Diffusers' flow schedulers call this
    time ``sigma``; their "shift" is a reparameterisation of time, handled by the timestep selector.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
        # t_min > 0: the model is never evaluated on clean data (diffusers' flow schedulers stop at 1/T)
        if not (0 < t_min < t_max <= 1):
            raise ValueError(f"need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self._t_min, self._t_max = float(t_min), float(t_max)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time_tensor(t)
        return 1.0 - t, t

    def time_at_log_snr(self, lam) -> torch.Tensor:
        # alpha/sigma = (1-t)/t = exp(lam/2)
        return torch.sigmoid(-0.5 * _as_time_tensor(lam))


def shift_flow_time(t, shift: float):
    """FlowMatchEulerDiscreteScheduler's static shift of a flow time (its ``sigma``): ``shift t / (1 + (shift - 1)
    t)``, the same as dynamic shifting's exponential time shift at ``mu = log shift``; works on floats, arrays and
    tensors."""
    return shift * t / (1 + (shift - 1) * t)


class VESigmaPath(_ContinuousTimePath):
    """k-diffusion's variance-exploding convention as a Gaussian path: the time is the noise level ``s`` of
    ``x_ve = x_0 + s eps`` (k-diffusion's ``sigma``), and ``x_ve`` scaled by ``alpha`` is a VP sample::

        alpha(s) = 1 / sqrt(1 + s^2),     sigma(s) = s / sqrt(1 + s^2),     x_vp = alpha(s) x_ve,

    so ``alpha^2 + sigma^2 = 1`` and the half-log-SNR is ``log(alpha / sigma) = -log s``. ``s = 0`` is clean.
    """

    def __init__(self, sigma_min: float, sigma_max: float):
        if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self._t_min, self._t_max = float(sigma_min), float(sigma_max)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        s = _as_time_tensor(t)
        alpha = torch.rsqrt(1.0 + s * s)
        return alpha, s * alpha

    def time_at_log_snr(self, lam) -> torch.Tensor:
        return torch.exp(-0.5 * _as_time_tensor(lam))


# ----------------------------------------------------------------------------------------------------------------
# which path a diffusers scheduler config describes
# ----------------------------------------------------------------------------------------------------------------
#: keys that only a variance-preserving (DDPM-chain) scheduler config has
VP_CONFIG_KEYS = ("beta_schedule", "beta_start", "beta_end", "trained_betas")


def flow_config_reason(config) -> str | None:
    """Why ``config`` describes a flow-matching (rectified-flow) scheduler, or ``None`` if it does not.

    A config is a flow config if it has ``shift`` (every FlowMatch* scheduler), ``use_flow_sigmas=True``
    (UniPC/DPM-Solver/DEIS run on flow sigmas, e.g. Wan) or ``prediction_type='flow_prediction'``.
    """
    cfg = dict(config or {})
    if "shift" in cfg:
        return f"it has the flow-matching key 'shift' (={cfg['shift']!r})"
    if cfg.get("use_flow_sigmas"):
        return "it has use_flow_sigmas=True"
    if cfg.get("prediction_type") in ("flow_prediction", "flow"):
        return f"it has prediction_type={cfg['prediction_type']!r}"
    return None


def vp_config_reason(config) -> str | None:
    """Why ``config`` describes a variance-preserving DDPM chain and not a flow, or ``None``."""
    cfg = dict(config or {})
    if flow_config_reason(cfg) is not None:
        return None
    present = [k for k in VP_CONFIG_KEYS if k in cfg]
    if present:
        what = ", ".join(f"{k}={cfg[k]!r}" for k in present if k != "trained_betas")
        return f"it has the variance-preserving chain key(s) {present}" + (f" ({what})" if what else "")
    if cfg.get("prediction_type") in ("epsilon", "v_prediction", "sample"):
        return f"it has prediction_type={cfg['prediction_type']!r} (a diffusion, not a flow, parameterisation)"
    return None


__all__ = [
    "BETA_SCHEDULES",
    "ContinuousVPPath",
    "DiscreteVPPath",
    "GaussianPath",
    "RectifiedFlowPath",
    "VESigmaPath",
    "check_num_train_timesteps",
    "make_betas",
    "flow_config_reason",
    "rescale_zero_terminal_snr",
    "shift_flow_time",
    "trained_alphas_cumprod",
    "vp_config_reason",
]
