"""An exact "pretrained" model: the closed-form optimal denoiser of an isotropic Gaussian mixture.

Data distribution (:class:`GaussianMixture`)::

    p(x_0) = sum_k w_k N(x_0; mu_k, s^2 I),      mu_k in R^D, w_k > 0, sum_k w_k = 1, s >= 0.

On a Gaussian path ``x_t = alpha_t x_0 + sigma_t eps`` (``eps ~ N(0, I)``) the noisy marginal is again a mixture
with the same weights::

    x_t | k ~ N(alpha_t mu_k, v_t I),            v_t = alpha_t^2 s^2 + sigma_t^2,

so every quantity a denoising network is trained to regress has a closed form (:class:`GMMDenoiser`):

* responsibilities ``r_k(x_t) = softmax_k(log w_k - ||x_t - alpha_t mu_k||^2 / (2 v_t))`` (the
  ``-D/2 log(2 pi v_t)`` term is common to all modes and cancels);
* per-mode posterior mean (Gaussian conjugacy)
  ``E[x_0 | x_t, k] = mu_k + (alpha_t s^2 / v_t) (x_t - alpha_t mu_k)``;
* the minimum-MSE denoiser ``x0_hat(x_t) = E[x_0 | x_t] = sum_k r_k E[x_0 | x_t, k]
  = (sigma_t^2 / v_t) sum_k r_k mu_k + (alpha_t s^2 / v_t) x_t``.

The other prediction types follow from ``x0_hat`` with the formulas of :mod:`skipstep.predictions`:
``eps_hat = (x_t - alpha_t x0_hat) / sigma_t``, ``v_hat = alpha_t eps_hat - sigma_t x0_hat`` and, on the
rectified-flow path, ``flow_hat = eps_hat - x0_hat``. These are exactly the minimisers of the respective
training losses, so a sampler driven by :class:`GMMDenoiser` is a sampler driven by a perfectly trained network:
every error left is the sampler's own discretisation error.

:func:`digits_mixture` builds the image-shaped instance used by the benchmarks: one mode per real 8x8 digit
(scikit-learn's digits scaled to ``[-1, 1]``), equal weights, per-pixel std ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...predictions import check_prediction_type
from ...paths import DiscreteVPPath, GaussianPath, RectifiedFlowPath
from .digits import load_digits_images, load_digits_labels

#: Default cap on the number of float64 entries of one ``(rows, K)`` block of the responsibility computation.
DEFAULT_MAX_CHUNK_ELEMENTS = 2**21


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, std^2 I)`` in ``D`` dimensions, stored in float64.

    ``means`` is ``(K, D)`` or ``(K, *event_shape)``; samples and :meth:`log_prob` inputs have shape
    ``(n, *event_shape)`` (``event_shape = (D,)`` for flat means). ``weights`` defaults to uniform and is
    normalised. ``std = 0`` gives a mixture of point masses. ``labels`` is an optional ``(K,)`` integer tag per mode
    (e.g. the digit class of each mean); it is carried along, never used in the density.
    """

    def __init__(self, means, weights=None, std: float = 0.05, labels=None):
        means = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if means.ndim < 2 or means.shape[0] < 1 or means[0].numel() < 1:
            raise ValueError(f"means must have shape (K, D) or (K, *event_shape) with K, D >= 1, got {tuple(means.shape)}")
        self.event_shape = tuple(means.shape[1:])
        self.means = means.reshape(means.shape[0], -1).contiguous()
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError("means must be finite")
        k = self.means.shape[0]
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
            if w.shape != (k,):
                raise ValueError(f"weights must have shape ({k},), got {tuple(w.shape)}")
            if not bool(torch.all(w > 0)) or not bool(torch.isfinite(w).all()):
                raise ValueError("weights must be positive and finite")
            w = w / w.sum()
        self.weights = w
        std = float(std)
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"std must be a finite number >= 0, got {std}")
        self.std = std
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).long()
            if labels.shape != (k,):
                raise ValueError(f"labels must have shape ({k},), got {tuple(labels.shape)}")
        self.labels = labels

    @property
    def num_modes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def log_weights(self) -> torch.Tensor:
        return torch.log(self.weights)

    def mean(self) -> torch.Tensor:
        """``E[x] = sum_k w_k mu_k`` as a flat ``(D,)`` float64 tensor."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """``Cov[x] = s^2 I + sum_k w_k (mu_k - m)(mu_k - m)^T`` (flat, ``(D, D)``, float64)."""
        centred = self.means - self.mean()
        return (centred.T * self.weights) @ centred + self.std**2 * torch.eye(self.dim, dtype=torch.float64)

    def marginal(self, alpha: float, sigma: float) -> "GaussianMixture":
        """The law of ``alpha x_0 + sigma eps``: means ``alpha mu_k``, std ``sqrt(alpha^2 s^2 + sigma^2)``."""
        alpha, sigma = float(alpha), float(sigma)
        means = (alpha * self.means).reshape(self.num_modes, *self.event_shape)
        return GaussianMixture(means, self.weights, math.sqrt(alpha**2 * self.std**2 + sigma**2), self.labels)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact draws: ``k ~ Categorical(w)``, ``x = mu_k + s z``. Returns ``(x (n, *event_shape), k (n,))``.

        Drawn on the CPU in float64 (``generator`` must be a CPU generator), then cast to ``dtype``.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return torch.empty((0, *self.event_shape), dtype=dtype), torch.empty(0, dtype=torch.long)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        x = self.means[idx] + self.std * noise
        return x.reshape(n, *self.event_shape).to(dtype), idx

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` for ``x`` of shape ``(n, *event_shape)`` (float64, ``(n,)``). Needs ``std > 0``."""
        if self.std == 0:
            raise ValueError("log_prob needs std > 0 (a mixture of point masses has no density)")
        x = torch.as_tensor(x).reshape(-1, self.dim).to(torch.float64).cpu()
        var = self.std**2
        sq = _squared_distances(x, self.means, self.means.square().sum(1), torch.ones(x.shape[0], dtype=torch.float64))
        log_norm = -0.5 * self.dim * math.log(2 * math.pi * var)
        return torch.logsumexp(self.log_weights - sq / (2 * var), dim=1) + log_norm

    def to_kwargs(self) -> dict:
        return {"means": self.means.reshape(self.num_modes, *self.event_shape), "weights": self.weights,
                "std": self.std, "labels": self.labels}

    def __repr__(self) -> str:
        return f"GaussianMixture(num_modes={self.num_modes}, event_shape={self.event_shape}, std={self.std})"


def _squared_distances(x: torch.Tensor, means: torch.Tensor, means_sq: torch.Tensor, alpha: torch.Tensor
                       ) -> torch.Tensor:
    """``||x_b - alpha_b mu_k||^2`` as ``(B, K)`` via ``||x||^2 - 2 alpha x.mu + alpha^2 ||mu||^2`` (float64)."""
    a = alpha.unsqueeze(1)
    sq = x.square().sum(1, keepdim=True) - 2.0 * a * (x @ means.T) + a.square() * means_sq.unsqueeze(0)
    return sq.clamp_min(0.0)


@dataclass
class EvalCount:
    """Network-evaluation bookkeeping of a :class:`GMMDenoiser`.

    ``calls`` counts :meth:`GMMDenoiser.forward` calls (the NFE of one batched sampling run), ``items`` the total
    number of batch rows evaluated (``calls * batch`` for a fixed batch).
    """

    calls: int = 0
    items: int = 0

    def reset(self) -> None:
        self.calls = 0
        self.items = 0


class GMMDenoiser(torch.nn.Module):
    """The exact (Bayes-optimal) model of a :class:`GaussianMixture` on a Gaussian path.

    ``forward(x_t, t)`` takes ``x_t`` of shape ``(B, ...)`` (flattened to ``D`` features; ``(B, C, H, W)`` images
    work as they are) and ``t`` a ``(B,)`` tensor or a scalar of times of ``path`` (integers on a discrete chain),
    and returns, in the dtype and shape of ``x_t``, the ``prediction_type`` output:

    * ``"sample"``: ``x0_hat = E[x_0 | x_t] = (sigma_t^2 / v_t) sum_k r_k(x_t) mu_k + (alpha_t s^2 / v_t) x_t``
      with ``v_t = alpha_t^2 s^2 + sigma_t^2`` and
      ``r_k(x_t) = softmax_k(log w_k - ||x_t - alpha_t mu_k||^2 / (2 v_t))``;
    * ``"epsilon"``: ``eps_hat = (x_t - alpha_t x0_hat) / sigma_t``;
    * ``"v_prediction"``: ``alpha_t eps_hat - sigma_t x0_hat``;
    * ``"flow"``: ``eps_hat - x0_hat`` (rectified-flow path only, ``alpha_t + sigma_t = 1``).

    All arithmetic is float64. Rows are processed in chunks of at most ``chunk_size`` rows (default: as many as
    keep one ``(rows, K)`` block within ``max_chunk_elements`` entries), so memory stays bounded for large
    ``B x K``; chunking does not change the result. At the clean time (``sigma_t = 0``) ``x0_hat = x_t / alpha_t``
    and ``eps_hat = 0``.

    ``count`` (:class:`EvalCount`) records the forward calls and rows evaluated; :meth:`reset_count` zeroes it.
    :meth:`posterior_mean_x0` and :meth:`responsibilities` are not counted.
    """

    def __init__(self, mixture: GaussianMixture, path: GaussianPath | None = None,
                 prediction_type: str = "epsilon", chunk_size: int | None = None,
                 max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS):
        super().__init__()
        self.mixture = mixture
        self.path = path if path is not None else DiscreteVPPath.from_config({})
        self.prediction_type = check_prediction_type(prediction_type)
        if self.prediction_type == "flow" and not isinstance(self.path, RectifiedFlowPath):
            raise ValueError("prediction_type 'flow' needs a RectifiedFlowPath")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if int(max_chunk_elements) < 1:
            raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.max_chunk_elements = int(max_chunk_elements)
        self.std = float(mixture.std)
        self.register_buffer("means", mixture.means.clone(), persistent=False)
        self.register_buffer("means_sq", mixture.means.square().sum(1), persistent=False)
        self.register_buffer("log_weights", mixture.log_weights.clone(), persistent=False)
        self.count = EvalCount()

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def reset_count(self) -> None:
        self.count.reset()

    @property
    def rows_per_chunk(self) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return max(1, self.max_chunk_elements // self.mixture.num_modes)

    # -- core ----------------------------------------------------------------------------------------------------
    def _alpha_sigma(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x_t.shape[0]
        t = torch.as_tensor(t)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(batch)
        elif t.numel() != batch:
            raise ValueError(f"t must be a scalar or hold one time per batch row ({batch}), got shape {tuple(t.shape)}")
        t = t.reshape(batch).cpu()
        if not self.path.discrete:  # discrete paths check their integer index range themselves
            # the exact model is defined anywhere between the clean time and t_max; allow float32 round-off
            tt = t.to(torch.float64)
            lo, hi = min(float(self.path.clean_time), float(self.path.t_min)), float(self.path.t_max)
            bad = (tt < lo - 1e-6) | (tt > hi + 1e-6) | ~torch.isfinite(tt)
            if bool(bad.any()):
                raise ValueError(f"t must lie in [{lo}, {hi}], got {tt[bad].tolist()}")
            t = tt.clamp(lo, hi)
        alpha, sigma = self.path.alpha_sigma(t)
        dev = self.means.device
        return alpha.to(device=dev, dtype=torch.float64), sigma.to(device=dev, dtype=torch.float64)

    def _flat64(self, x_t: torch.Tensor) -> torch.Tensor:
        if x_t.ndim < 1 or x_t[0].numel() != self.mixture.dim:
            raise ValueError(f"x_t must have shape (B, ...) with {self.mixture.dim} features per row, "
                             f"got {tuple(x_t.shape)}")
        return x_t.reshape(x_t.shape[0], -1).to(device=self.means.device, dtype=torch.float64)

    def _chunks(self, batch: int):
        step = self.rows_per_chunk
        for lo in range(0, batch, step):
            yield slice(lo, min(lo + step, batch))

    def _logits(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = alpha.square() * self.std**2 + sigma.square()
        v = torch.where(v > 0, v, torch.ones_like(v))  # v = 0 only at the clean time of a point-mass mixture
        sq = _squared_distances(x, self.means, self.means_sq, alpha)
        return self.log_weights.unsqueeze(0) - sq / (2.0 * v.unsqueeze(1))

    def _x0_flat(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        s2 = self.std**2
        for sl in self._chunks(x.shape[0]):
            xb, a, sg = x[sl], alpha[sl], sigma[sl]
            r = torch.softmax(self._logits(xb, a, sg), dim=1)
            v = a.square() * s2 + sg.square()
            noisy = v > 0
            v = torch.where(noisy, v, torch.ones_like(v))
            x0 = (sg.square() / v).unsqueeze(1) * (r @ self.means) + (a * s2 / v).unsqueeze(1) * xb
            clean = (sg == 0) & (a > 0)  # x_t = alpha_t x_0 exactly
            if bool(clean.any()):
                x0 = torch.where(clean.unsqueeze(1), xb / torch.where(a > 0, a, torch.ones_like(a)).unsqueeze(1), x0)
            out[sl] = x0
        return out

    def responsibilities(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``r_k(x_t) = P(mode k | x_t)``, ``(B, K)`` float64 (log-sum-exp stable)."""
        x = self._flat64(x_t)
        alpha, sigma = self._alpha_sigma(x_t, t)
        out = torch.empty((x.shape[0], self.mixture.num_modes), dtype=torch.float64, device=x.device)
        for sl in self._chunks(x.shape[0]):
            out[sl] = torch.softmax(self._logits(x[sl], alpha[sl], sigma[sl]), dim=1)
        return out

    def posterior_mean_x0(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``E[x_0 | x_t]`` in the shape and dtype of ``x_t`` (not counted as a network evaluation)."""
        x = self._flat64(x_t)
        alpha, sigma = self._alpha_sigma(x_t, t)
        return self._x0_flat(x, alpha, sigma).reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)

    def predict(self, x_t: torch.Tensor, t, prediction_type: str | None = None) -> torch.Tensor:
        """The exact output for any prediction type (defaults to this model's); not counted."""
        ptype = check_prediction_type(prediction_type or self.prediction_type)
        x = self._flat64(x_t)
        alpha, sigma = self._alpha_sigma(x_t, t)
        if ptype == "flow" and bool(((alpha + sigma - 1.0).abs() > 1e-9).any()):
            raise ValueError("prediction_type 'flow' needs the rectified-flow path (alpha_t + sigma_t = 1)")
        x0 = self._x0_flat(x, alpha, sigma)
        if ptype == "sample":
            out = x0
        else:
            a, sg = alpha.unsqueeze(1), sigma.unsqueeze(1)
            eps = torch.where(sg > 0, (x - a * x0) / torch.where(sg > 0, sg, torch.ones_like(sg)), torch.zeros_like(x))
            if ptype == "epsilon":
                out = eps
            elif ptype == "v_prediction":
                out = a * eps - sg * x0
            else:  # flow: d/dt [(1 - t) x_0 + t eps] = eps - x_0
                out = eps - x0
        return out.reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)

    def forward(self, x_t: torch.Tensor, t, **unused) -> torch.Tensor:
        self.count.calls += 1
        self.count.items += int(x_t.shape[0])
        return self.predict(x_t, t)

    def extra_repr(self) -> str:
        return (f"num_modes={self.mixture.num_modes}, dim={self.mixture.dim}, std={self.std}, "
                f"prediction_type={self.prediction_type!r}, path={type(self.path).__name__}")


def _load_digit_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit images ``(N, 1, 8, 8)`` in ``[-1, 1]`` of ``split`` and their class labels, from
    :mod:`skipstep.lab.testbeds.digits` (the project's one definition of the splits)."""
    return torch.as_tensor(load_digits_images(split)), torch.as_tensor(load_digits_labels(split)).long()


def digits_mixture(std: float = 0.05, num_means: int | None = None, split: str = "train",
                   image_shape: Sequence[int] = (1, 8, 8), seed: int = 0) -> GaussianMixture:
    """The mixture with one mode per real digit image: ``p(x) = (1/K) sum_k N(x; image_k, std^2 I)``.

    Means are scikit-learn's 8x8 digits scaled to ``[-1, 1]`` (``x / 16 * 2 - 1``) from ``split`` (``"train"``,
    ``"heldout"`` or ``"all"``, see :mod:`skipstep.lab.testbeds.digits`), reshaped to ``image_shape`` (64 entries),
    with equal weights and per-pixel std ``std``; ``labels`` holds each mode's digit class. ``num_means`` keeps
    the first ``num_means`` images of a fixed permutation of the split (``torch.randperm`` seeded with ``seed``)
    for speed; ``None`` keeps all, in the split's order.
    """
    images, labels = _load_digit_images(split)
    images = images.to(torch.float64).reshape(images.shape[0], -1)
    image_shape = tuple(int(s) for s in image_shape)
    if math.prod(image_shape) != images.shape[1]:
        raise ValueError(f"image_shape {image_shape} must hold {images.shape[1]} entries")
    if num_means is not None:
        num_means = int(num_means)
        if not 1 <= num_means <= images.shape[0]:
            raise ValueError(f"num_means must lie in [1, {images.shape[0]}] for split {split!r}, got {num_means}")
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:num_means]
        images = images[perm]
        labels = None if labels is None else labels[perm]
    return GaussianMixture(images.reshape(images.shape[0], *image_shape), None, std, labels)


__all__ = [
    "DEFAULT_MAX_CHUNK_ELEMENTS",
    "EvalCount",
    "GMMDenoiser",
    "GaussianMixture",
    "digits_mixture",
]
