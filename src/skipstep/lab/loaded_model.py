"""What the lab needs from one model: :class:`LoadedModel` (and the exact reference of analytic models).

A :class:`LoadedModel` bundles:

* ``model`` -- the raw network as a plain callable returning a tensor: ``model(x_t, t)``, or
  ``model(x_t, t, class_labels=y)`` for a class-conditional network. ``t`` is what the model was trained on:
  integer timesteps of a VP chain, ``sigma * T`` for a flow model. Samplers never call it directly: they call
  :meth:`LoadedModel.model_for_batch`, which adds the labels and guidance of a batch (and drops the variance
  channels of a learned-variance model for samplers that cannot use them);
* ``scheduler_config`` -- a diffusers scheduler config (a plain dict) describing the training path: a VP chain
  (betas, ``num_train_timesteps``, ``prediction_type``) or a flow (``FlowMatchEulerDiscreteScheduler`` keys);
* ``regime`` -- ``"vp"`` or ``"flow"``; ``learned_variance`` (2C output channels, ``learned_range``);
  ``conditioning`` (:class:`~skipstep.lab.conditioning.ClassConditioning` or ``None``); ``guidance_scale`` (set on
  a view by :meth:`LoadedModel.at_guidance`);
* ``sample_shape`` ``(C, H, W)``, ``prediction_type`` and a ``fingerprint`` (a short hash of the weights and the
  config, used to recognise result directories, caches and tuned schedules);
* ``reference`` -- for analytic models an :class:`ExactMixtureReference`; ``None`` for trained networks, whose
  reference is their own converged samples;
* ``feature_fn`` / ``classifier_fn`` -- the feature network for a Fréchet distance and class logits for
  ``class_match`` (the shipped digit classifier for ``1x8x8`` models), or ``None``;
* ``real_data`` -- optional real images (``{"train", "heldout"}``, with ``"train_labels"`` / ``"heldout_labels"``)
  for the data floors and ``fd_heldout``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .conditioning import ClassConditioning, GuidedModel, check_guidance_scale
from .metrics import mixture_metrics

__all__ = ["ExactMixtureReference", "LoadedModel", "ModelLoadError", "REGIMES"]

#: the noise paths the lab samples: discrete variance-preserving chains and rectified flows
REGIMES = ("vp", "flow")


class ModelLoadError(ValueError):
    """A model name is unknown, or a model directory is missing, incomplete, corrupt or not samplable by the lab
    (the message names it and says why)."""


@dataclass
class ExactMixtureReference:
    """The exact data distribution of an analytic model: draw exact samples and score samples exactly."""

    mixture: Any  # skipstep.lab.testbeds.gmm.GaussianMixture

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` exact draws (float32, ``(n, *event_shape)``) from a CPU generator seeded with ``seed``."""
        x, _ = self.mixture.sample(n, generator=torch.Generator().manual_seed(int(seed)))
        return x

    def metrics(self, samples: torch.Tensor) -> dict[str, float]:
        """Mixture-exact metrics: ``mode_tv`` (mode-frequency total variation vs the weights) and
        ``spread_ratio`` (RMS distance to the assigned mode mean in units of the mode std; 1 is exact)."""
        out = mixture_metrics(samples.reshape(samples.shape[0], -1), self.mixture.means, self.mixture.weights,
                              self.mixture.std)
        return {"mode_tv": float(out["mode_frequency_tv"]), "spread_ratio": float(out["within_mode_spread_ratio"])}


@dataclass
class LoadedModel:
    """Everything a benchmark needs from one model (see the module docstring)."""

    name: str
    model: Callable[..., torch.Tensor]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...]
    prediction_type: str
    fingerprint: str
    reference: ExactMixtureReference | None = None
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    feature_name: str | None = None
    real_data: dict[str, torch.Tensor] | None = None
    device: str = "cpu"
    description: str = ""
    notes: list[str] = field(default_factory=list)
    #: how x0_hat is clipped in a run (set by the benchmark from ``--clip``)
    clip_description: str = ""
    regime: str = "vp"
    learned_variance: bool = False
    conditioning: ClassConditioning | None = None
    #: the guidance scale of this view (None for unconditional models; see :meth:`at_guidance`)
    guidance_scale: float | None = None
    classifier_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: the scheduler-config keys the model's own file gave (None: all of them); peers built "as a user would"
    #: take the other keys from their own class defaults, as diffusers' from_config does
    config_keys_given: tuple[str, ...] | None = None
    #: the peers' timesteps: "config" (the model's timestep_spacing) or "trailing" (set by bench --peer-spacing)
    peer_spacing: str = "config"
    #: the model is defined at integer timesteps only (the exact mixture on the discrete chain)
    integer_timesteps: bool = False

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def zero_terminal_snr(self) -> bool:
        return self.regime == "vp" and bool(self.scheduler_config.get("rescale_betas_zero_snr", False))

    @property
    def regime_text(self) -> str:
        """A short description of the regime, e.g. ``vp v_prediction, zero terminal SNR``."""
        parts = ["rectified flow (velocity)" if self.regime == "flow" else f"vp {self.prediction_type}"]
        if self.zero_terminal_snr:
            parts.append("zero terminal SNR")
        if self.learned_variance:
            parts.append("learned variance (learned_range)")
        if self.conditioning is not None:
            parts.append(f"class-conditional ({self.conditioning.num_classes} classes, CFG)")
        return ", ".join(parts)

    # -- guidance ------------------------------------------------------------------------------------------------
    def at_guidance(self, scale) -> "LoadedModel":
        """A view of this model at guidance scale ``scale`` (``None`` for an unconditional model: its only view;
        ``None`` for a conditional one means 1, the plain conditional model)."""
        if self.conditioning is None:
            if scale is not None:
                raise ValueError(f"--guidance-scale: model {self.name!r} is not class-conditional (its UNet has no "
                                 "num_class_embeds), so it has no guidance scale; leave --guidance-scale out")
            return self
        view = copy.copy(self)
        view.guidance_scale = 1.0 if scale is None else check_guidance_scale(scale)
        return view

    @property
    def guidance_key(self) -> str:
        """``""`` for an unconditional model, else ``w<scale>`` (file names, cache keys)."""
        return "" if self.guidance_scale is None else f"w{self.guidance_scale:g}"

    def labels_for(self, indices: Sequence[int] | range) -> torch.Tensor | None:
        """The class labels samples ``indices`` ask for (``None`` for an unconditional model)."""
        return None if self.conditioning is None else self.conditioning.labels_for(indices)

    def model_for_batch(self, indices: Sequence[int] | range | None = None, with_variance: bool = True
                        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``model(x, t)`` for the samples ``indices`` of a set: the labels and guidance of a conditional model
        (:class:`~skipstep.lab.conditioning.GuidedModel`), and for a learned-variance model without
        ``with_variance`` only the first ``C`` (prediction) channels. Its ``branches`` attribute counts the
        network branches per call (2 for a batched CFG call)."""
        channels = self.sample_shape[0]
        if self.conditioning is not None:
            if indices is None:
                raise ValueError(f"model {self.name!r} is class-conditional: say which samples a batch holds")
            w = 1.0 if self.guidance_scale is None else self.guidance_scale
            model: Callable = GuidedModel(self.model, self.labels_for(indices), self.conditioning.null_label, w,
                                          channels)
        else:
            model = self.model
        if self.learned_variance and not with_variance:
            return _PredictionChannels(model, channels)
        return model

    # -- records -----------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """A JSON-able summary (for config.json and results)."""
        if self.reference is not None:
            reference = "exact data distribution"
        elif self.regime == "flow":
            reference = "1000-step FlowMatchEulerDiscreteScheduler (ODE) samples"
        else:
            reference = "1000-step ancestral samples"
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "sample_shape": list(self.sample_shape),
            "prediction_type": self.prediction_type,
            "regime": self.regime_text,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.scheduler_config.get("beta_schedule"),
            "reference": reference,
            "features": self.feature_name,
            "conditioning": None if self.conditioning is None else self.conditioning.info(),
            "description": self.description,
            "notes": list(self.notes),
        }


class _PredictionChannels:
    """The first ``channels`` output channels of a model (the prediction of a ``[eps, v]`` output)."""

    def __init__(self, model: Callable, channels: int):
        self.model, self.channels = model, channels
        self.branches = getattr(model, "branches", 1)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.model(x, t)[:, :self.channels]
