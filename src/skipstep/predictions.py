"""Conversion of raw model outputs to the pair (x0_hat, eps_hat) on a Gaussian path.

With ``x_t = alpha_t x_0 + sigma_t eps`` the supported parameterisations are

* ``epsilon``:      ``eps_hat = out``,  ``x0_hat = (x_t - sigma_t eps_hat) / alpha_t``
* ``sample``:       ``x0_hat = out``,   ``eps_hat = (x_t - alpha_t x0_hat) / sigma_t``
* ``v_prediction``: ``v = alpha_t eps - sigma_t x_0`` (Salimans & Ho 2022), so
  ``x0_hat = (alpha_t x_t - sigma_t v) / (alpha_t^2 + sigma_t^2)``,
  ``eps_hat = (sigma_t x_t + alpha_t v) / (alpha_t^2 + sigma_t^2)``
* ``flow``:         the velocity ``v = dx_t/dt = eps - x_0`` of the rectified-flow path ``alpha = 1 - t``,
  ``sigma = t``: ``x0_hat = x_t - sigma_t v``, ``eps_hat = x_t + alpha_t v``.

Models that learn their variance (ADM, IDDPM, DiT) emit ``2C`` channels: the prediction and the interpolation
values ``v in [-1, 1]`` (see :func:`split_learned_variance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def split_learned_variance(model_output: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a ``2C``-channel output (channel axis 1) into the prediction and the variance interpolation values."""
    channels = sample.shape[1]
    expected = (sample.shape[0], 2 * channels, *sample.shape[2:])
    if tuple(model_output.shape) != expected:
        raise ValueError(
            f"a learned-variance model must output 2C channels: expected model_output shape {expected} for a "
            f"sample of shape {tuple(sample.shape)}, got {tuple(model_output.shape)}"
        )
    return model_output[:, :channels], model_output[:, channels:]


def predict_x0_eps(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float,
    sigma_t: float,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x0_hat, eps_hat)`` from a model output at a noisy time with ``alpha_t``, ``sigma_t``."""
    if prediction_type == "epsilon":
        if alpha_t == 0:
            raise ValueError(
                "prediction_type 'epsilon' cannot recover x0 where alpha_t = 0 (zero terminal SNR or t = 1 on a "
                "flow path); use a v_prediction, sample or flow model, or start below the terminal time"
            )
        eps = model_output
        return (sample - sigma_t * eps) / alpha_t, eps
    if prediction_type == "sample":
        x0 = model_output
        return x0, (sample - alpha_t * x0) / sigma_t
    if prediction_type == "v_prediction":
        norm = alpha_t * alpha_t + sigma_t * sigma_t
        if norm == 1.0:  # variance-preserving: skip two divisions
            return alpha_t * sample - sigma_t * model_output, sigma_t * sample + alpha_t * model_output
        return (alpha_t * sample - sigma_t * model_output) / norm, (sigma_t * sample + alpha_t * model_output) / norm
    if prediction_type == "flow":
        if abs(alpha_t + sigma_t - 1.0) > 1e-9:
            raise ValueError("prediction_type 'flow' needs the rectified-flow path (alpha_t + sigma_t = 1)")
        return sample - sigma_t * model_output, sample + alpha_t * model_output
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def predict_x0(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float,
    sigma_t: float,
    prediction_type: str,
) -> torch.Tensor:
    """``x0_hat`` alone (the step's need), in as few tensor operations as :func:`predict_x0_eps` allows."""
    if prediction_type == "epsilon":
        if alpha_t == 0:
            predict_x0_eps(model_output, sample, alpha_t, sigma_t, prediction_type)  # raises with the reason
        return torch.sub(sample, model_output, alpha=sigma_t).mul_(1.0 / alpha_t)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction" and alpha_t * alpha_t + sigma_t * sigma_t == 1.0:
        return torch.mul(sample, alpha_t).sub_(model_output, alpha=sigma_t)
    if prediction_type == "flow" and abs(alpha_t + sigma_t - 1.0) <= 1e-9:
        return torch.sub(sample, model_output, alpha=sigma_t)
    return predict_x0_eps(model_output, sample, alpha_t, sigma_t, prediction_type)[0]


@dataclass(frozen=True)
class X0Clipping:
    """How the x0 prediction is bounded, with diffusers' semantics and key names.

    ``thresholding`` (Imagen's dynamic thresholding) takes precedence over ``clip_sample``. As in diffusers, any
    ``dynamic_thresholding_ratio`` in [0, 1] and any ``sample_max_value > 0`` are accepted (see
    :func:`dynamic_threshold` for what values below 1 do).
    """

    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    def __post_init__(self):
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
        if not 0 <= self.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must lie in [0, 1], got {self.dynamic_thresholding_ratio}")
        if not self.sample_max_value > 0:
            raise ValueError(f"sample_max_value must be > 0, got {self.sample_max_value}")

    @property
    def active(self) -> bool:
        return self.thresholding or self.clip_sample

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        if self.thresholding:
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding exactly as diffusers' ``_threshold_sample``: per sample (in float32 for
    half-precision inputs), ``s = torch.clamp(quantile(|x0|, ratio), min=1, max=max_value)``;
    ``x0 <- clamp(x0, -s, s) / s``.

    ``torch.clamp`` with ``min > max`` returns ``max``, so a ``max_value < 1`` gives ``s = max_value``: ``x0`` is
    clipped to ``[-max_value, max_value]`` and divided by ``max_value`` (range ``[-1, 1]``). ``ratio = 0`` makes
    ``s`` the smallest ``|x0|`` clamped to ``[1, max_value]``: plain clipping to ``[-1, 1]`` when ``max_value >= 1``.
    """
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile (and clamp on CPU) are not implemented for half
    s = torch.clamp(torch.quantile(flat.abs(), ratio, dim=1), min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def unwrap_model_output(out) -> torch.Tensor:
    """The prediction tensor of a model call: a tensor, diffusers' ``UNet2DOutput``/``Transformer2DModelOutput``
    (``.sample``) or a tuple whose first element is a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):  # diffusers' UNet2DOutput / Transformer2DModelOutput
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor (or an object with .sample, or a tuple); got {type(out).__name__}")


__all__ = [
    "PREDICTION_TYPES",
    "X0Clipping",
    "check_prediction_type",
    "dynamic_threshold",
    "predict_x0",
    "predict_x0_eps",
    "split_learned_variance",
    "unwrap_model_output",
]
