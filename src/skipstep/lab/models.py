"""Model registry for the benchmark and the CLI: a name (or a local diffusers directory) -> :class:`LoadedModel`.

A :class:`LoadedModel` bundles everything a side-by-side run needs from a model:

* ``model(x_t, t)`` -- a plain callable returning the raw network output as a tensor (diffusers outputs are
  unwrapped from ``.sample``); ``t`` is a scalar or ``(B,)`` tensor of training-chain timesteps;
* ``scheduler_config`` -- a diffusers scheduler config (a plain dict) describing the training chain: betas,
  ``num_train_timesteps``, ``prediction_type``. Every sampler is built from it;
* ``sample_shape`` ``(C, H, W)``, ``prediction_type`` and a ``fingerprint`` (a short hash of the weights and the
  config, used to recognise result directories and, later, tuned schedules);
* ``reference`` -- for analytic models an :class:`ExactMixtureReference` (exact data samples and exact metrics);
  ``None`` for trained networks, whose reference is their own 1000-step ancestral samples;
* ``feature_fn`` -- the feature network for a Fréchet distance (the shipped digit classifier for ``1x8x8``
  models), or ``None`` (FD is then skipped; sliced Wasserstein is still reported);
* ``real_data`` -- optional real images (``{"train": ..., "heldout": ...}``) for data floors.

Built-in names: ``gmm`` (the exact denoiser of a digits-mean Gaussian mixture on the DDPM linear-beta chain) and
``digits`` (the project's trained 8x8 UNet). Anything else is read as a path to a local diffusers directory.
New models are added with :func:`register_model`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import diffusers
import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors import safe_open

from ..diffusers_schedulers import SkippedStepScheduler
from ..optimal_variance import estimate_eps_mse, load_eps_mse, save_eps_mse
from ..paths import DiscreteVPPath, flow_config_reason
from ..predictions import unwrap_model_output
from ..storage import cache_dir, file_sha256
from .metrics import mixture_metrics
from .testbeds.digits import (DIGITS_UNET_DIR, load_digit_classifier, load_digits_images)
from .testbeds.gmm import GMMDenoiser, digits_mixture

__all__ = [
    "CLIP_MODES",
    "DEFAULT_GMM_NUM_MEANS",
    "FLOW_SCHEDULER_CLASSES",
    "VP_SCHEDULER_CLASSES",
    "lab_scheduler_config",
    "DEFAULT_GMM_STD",
    "ExactMixtureReference",
    "ModelLoadError",
    "apply_clip_mode",
    "LoadedModel",
    "available_models",
    "load_model",
    "optimal_variance_table",
    "register_model",
]

#: Default per-pixel std of the ``gmm`` model's modes (pixels live in [-1, 1]).
DEFAULT_GMM_STD = 0.05
#: Default number of digit images used as the ``gmm`` model's means; a batch of 2000 costs ~10 ms per evaluation.
DEFAULT_GMM_NUM_MEANS = 100

DDPM_LINEAR_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}

#: diffusers schedulers of variance-preserving (DDPM-type) chains: their betas, T and prediction type describe the
#: training chain, whichever sampler the config was saved for, so the lab can sample such a model.
VP_SCHEDULER_CLASSES = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler", "SkippedStepScheduler",
)
#: Flow-matching schedulers: refused by the lab for now (its benchmark samples VP chains only).
FLOW_SCHEDULER_CLASSES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                          "FlowMatchLCMScheduler", "SkippedStepFlowScheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class ModelLoadError(ValueError):
    """A model name is unknown, or a model directory is missing, incomplete or corrupt (the message names it)."""


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
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
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

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def info(self) -> dict[str, Any]:
        """A JSON-able summary (for config.json and results)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "sample_shape": list(self.sample_shape),
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.scheduler_config.get("beta_schedule"),
            "reference": "exact data distribution" if self.reference is not None else "1000-step ancestral samples",
            "features": self.feature_name,
            "description": self.description,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def _hash_update_json(h, obj) -> None:
    h.update(json.dumps(obj, sort_keys=True, default=str).encode())


def _short(h) -> str:
    return h.hexdigest()[:12]


def _class_defaults(class_name: str) -> dict[str, Any]:
    """The constructor defaults of a diffusers (or skipstep) scheduler class: what diffusers itself fills in for
    keys a config leaves out."""
    cls = SkippedStepScheduler if class_name == "SkippedStepScheduler" else getattr(diffusers, class_name, None)
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def lab_scheduler_config(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """The training chain of a model directory's scheduler config, for the lab's samplers -- or a
    :class:`ModelLoadError` saying why the lab cannot sample it correctly (never a silent reinterpretation):

    * a variance-preserving class (:data:`VP_SCHEDULER_CLASSES`): its keys, the class's own defaults for keys it
      leaves out (as diffusers fills them);
    * a flow-matching config (:data:`FLOW_SCHEDULER_CLASSES`, ``shift``, dynamic shifting, flow sigmas or
      prediction): refused -- the lab samples VP chains only for now;
    * no ``_class_name``, an unknown class, continuous timesteps or an unknown prediction type: refused."""
    class_name = raw.get("_class_name")
    flow_reason = flow_config_reason(raw) or (
        "it uses dynamic shifting (use_dynamic_shifting)" if raw.get("use_dynamic_shifting") else None)
    if class_name in FLOW_SCHEDULER_CLASSES or flow_reason:
        shift = {k: raw[k] for k in ("shift", "use_dynamic_shifting", "base_shift", "max_shift") if k in raw}
        raise ModelLoadError(
            f"{source}: {class_name or 'the scheduler config'} describes a flow-matching model "
            f"({flow_reason or 'a FlowMatch scheduler'}{'; ' + str(shift) if shift else ''}). The lab (bench, "
            "generate, tune, sample) samples variance-preserving (DDPM-type) chains only for now, so it refuses "
            "instead of sampling this model as a DDPM chain; in a diffusers pipeline use "
            "skipstep.SkippedStepFlowScheduler.from_config(pipe.scheduler.config)")
    if not class_name:
        raise ModelLoadError(f"{source} has no _class_name, so it does not say which noise path the model was "
                             "trained on; add the scheduler class it was saved from (e.g. \"_class_name\": "
                             "\"DDPMScheduler\")")
    if class_name not in VP_SCHEDULER_CLASSES:
        raise ModelLoadError(f"{source}: unknown scheduler class {class_name!r}: skipstep cannot tell which noise "
                             f"path the model was trained on (the lab samples: {', '.join(VP_SCHEDULER_CLASSES)})")
    if raw.get("timestep_type", "discrete") != "discrete":
        raise ModelLoadError(f"{source}: timestep_type={raw['timestep_type']!r}: the model takes continuous noise "
                             "levels, but the lab feeds the integer timesteps of a DDPM chain")
    config = _clean_scheduler_config(raw, _class_defaults(class_name))
    if config.get("prediction_type") not in PREDICTION_TYPES:
        raise ModelLoadError(f"{source}: prediction_type={config.get('prediction_type')!r} is not one of "
                             f"{PREDICTION_TYPES}")
    try:
        DiscreteVPPath.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ModelLoadError(f"{source}: the training chain cannot be built ({err})") from None
    return config


def _clean_scheduler_config(config: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training-chain keys of a scheduler config as a plain JSON-able dict (missing keys: the class's
    ``defaults``, else DDPM's)."""
    defaults = defaults or {}
    out = {k: defaults.get(k, v) if k != "_class_name" else v for k, v in DDPM_LINEAR_CONFIG.items()}
    for key, value in dict(config).items():
        if key.startswith("_") and key != "_class_name":
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    if isinstance(out.get("trained_betas"), tuple):
        out["trained_betas"] = list(out["trained_betas"])
    return out


def _wrap_diffusers_model(net: torch.nn.Module, out_channels_used: int | None = None):
    """``model(x, t) -> tensor``: unwrap ``.sample``, broadcast a scalar ``t`` to the batch."""

    @torch.no_grad()
    def model(x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.reshape(1).expand(x.shape[0])
        out = unwrap_model_output(net(x, t))
        if out_channels_used is not None:
            out = out[:, :out_channels_used]
        return out

    model.net = net  # type: ignore[attr-defined]
    return model


def _digit_feature_fn(device: str):
    """The shipped digit classifier's features, or ``None`` when its weights are not available."""
    try:
        clf = load_digit_classifier(device=device)
    except (FileNotFoundError, ValueError, OSError):
        return None

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        return clf.features(x.to(device=device, dtype=torch.float32))

    return features


# --------------------------------------------------------------------------------------------------------------
# built-in models
# --------------------------------------------------------------------------------------------------------------
def load_gmm(device: str = "cpu", std: float = DEFAULT_GMM_STD, num_means: int | None = DEFAULT_GMM_NUM_MEANS,
             seed: int = 0) -> LoadedModel:
    """The exact denoiser of the digits-mean mixture ``(1/K) sum_k N(image_k, std^2 I)`` (``K = num_means`` train
    digits) on the DDPM linear-beta chain (T=1000), epsilon output. Its samplers' only error is discretisation."""
    config = dict(DDPM_LINEAR_CONFIG)
    mixture = digits_mixture(std=std, num_means=num_means, split="train", seed=seed)
    net = GMMDenoiser(mixture, DiscreteVPPath.from_config(config), prediction_type="epsilon").to(device)

    @torch.no_grad()
    def model(x: torch.Tensor, t) -> torch.Tensor:
        return net(x, t)

    model.net = net  # type: ignore[attr-defined]
    h = hashlib.sha256(b"gmm-v1")
    h.update(mixture.means.numpy().tobytes())
    h.update(mixture.weights.numpy().tobytes())
    _hash_update_json(h, {"std": mixture.std, "config": config})
    feature_fn = _digit_feature_fn(device)
    return LoadedModel(
        name="gmm",
        model=model,
        scheduler_config=config,
        sample_shape=(1, 8, 8),
        prediction_type="epsilon",
        fingerprint=_short(h),
        reference=ExactMixtureReference(mixture),
        feature_fn=feature_fn,
        feature_name="digit-classifier" if feature_fn is not None else None,
        device=device,
        description=f"exact denoiser of a {mixture.num_modes}-mode digits mixture (std {mixture.std}), "
                    "DDPM linear betas, T=1000, epsilon",
    )


def load_digits(device: str = "cpu") -> LoadedModel:
    """The project's trained 8x8 digits DDPM UNet (epsilon, linear betas, T=1000) with real-data floors."""
    loaded = load_diffusers_dir(DIGITS_UNET_DIR, device=device, name="digits")
    loaded.description = "trained diffusers UNet2DModel on sklearn 8x8 digits (epsilon, linear betas, T=1000)"
    loaded.real_data = {"train": load_digits_images("train"), "heldout": load_digits_images("heldout")}
    return loaded


def load_diffusers_dir(path: str | Path, device: str = "cpu", name: str | None = None) -> LoadedModel:
    """A local diffusers directory: a ``save_pretrained`` pipeline (``unet/`` + ``scheduler/``) or a bare UNet
    directory (``config.json`` + ``diffusion_pytorch_model.safetensors``) with a ``scheduler_config.json``
    beside it. Only safetensors weights are read (never pickles); errors name the offending file."""
    root = Path(path)
    if not root.exists():
        raise ModelLoadError(f"model directory not found: {root}")
    if not root.is_dir():
        raise ModelLoadError(f"model path is not a directory: {root}")
    if (root / "unet").is_dir():
        unet_dir = root / "unet"
        sched_file = root / "scheduler" / SCHEDULER_CONFIG_NAME
    else:
        unet_dir = root
        sched_file = root / SCHEDULER_CONFIG_NAME
        if not sched_file.is_file() and (root / "scheduler" / SCHEDULER_CONFIG_NAME).is_file():
            sched_file = root / "scheduler" / SCHEDULER_CONFIG_NAME
    config_file = unet_dir / CONFIG_NAME
    weights_file = unet_dir / WEIGHTS_NAME
    for f, what in ((config_file, "UNet config"), (weights_file, "UNet weights (safetensors)"),
                    (sched_file, "scheduler config")):
        if not f.is_file():
            extra = ""
            if f == weights_file and (unet_dir / "diffusion_pytorch_model.bin").is_file():
                extra = " (only a pickle .bin file is present; skipstep loads safetensors only)"
            raise ModelLoadError(f"{what} missing: {f}{extra}")
    unet_config = _read_json(config_file)
    raw_sched_config = _read_json(sched_file)
    sched_config = lab_scheduler_config(raw_sched_config, sched_file)
    class_name = unet_config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ModelLoadError(f"{config_file}: unsupported model class {class_name!r} (only unconditional "
                             "UNet2DModel directories can be benchmarked)")
    try:
        with safe_open(str(weights_file), framework="pt") as fh:
            _ = list(fh.keys())
    except Exception as err:  # SafetensorError, OSError, ...
        raise ModelLoadError(f"corrupt weights file {weights_file}: {err}") from err
    try:
        net = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, use_safetensors=True,
                                         low_cpu_mem_usage=False)  # no "install accelerate" notice
    except Exception as err:
        raise ModelLoadError(f"could not load {weights_file} with {config_file}: {err}") from err
    net = net.to(device).eval().requires_grad_(False)
    in_ch = int(net.config.in_channels)
    out_ch = int(net.config.out_channels)
    size = net.config.sample_size
    h_, w_ = (size, size) if isinstance(size, int) else tuple(size)
    notes = []
    used = None
    declared_variance = raw_sched_config.get("variance_type")
    if out_ch == 2 * in_ch:
        used = in_ch
        sched_config["variance_type"] = "fixed_small"
        notes.append(f"learned-variance model: the network outputs 2C={out_ch} channels (epsilon, then the variance; "
                     f"the scheduler config says variance_type={declared_variance!r}). The lab uses only the C "
                     "epsilon channels, with the fixed_small posterior variance, for every sampler, so that all "
                     "see the same model: the learned variance is NOT used here (skipstep.sample(..., "
                     "variance_type='learned') and SkippedStepScheduler(variance_type='learned_range') use it)")
    elif out_ch != in_ch:
        raise ModelLoadError(f"{config_file}: out_channels={out_ch} must equal in_channels={in_ch} (or twice it)")
    elif declared_variance in LEARNED_VARIANCE_TYPES:
        raise ModelLoadError(f"{sched_file} says variance_type={declared_variance!r} (a learned variance, 2C "
                             f"output channels), but {config_file} has out_channels={out_ch} = in_channels")
    prediction_type = sched_config.get("prediction_type", "epsilon")
    h = hashlib.sha256()
    file_sha256(weights_file, h)
    _hash_update_json(h, {"unet": unet_config, "scheduler": sched_config})
    feature_fn = _digit_feature_fn(device) if (in_ch, h_, w_) == (1, 8, 8) else None
    return LoadedModel(
        name=name or str(root),
        model=_wrap_diffusers_model(net, used),
        scheduler_config=sched_config,
        sample_shape=(in_ch, int(h_), int(w_)),
        prediction_type=prediction_type,
        fingerprint=_short(h),
        feature_fn=feature_fn,
        feature_name="digit-classifier" if feature_fn is not None else None,
        device=device,
        description=f"diffusers UNet2DModel from {root}",
        notes=notes,
    )


def optimal_variance_table(loaded: LoadedModel, directory: str | Path | None = None, num_timesteps: int = 100,
                           max_samples: int = 2000, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """The optimal-variance table ``E||eps - eps_hat||^2 / d`` per timestep of a loaded model
    (:func:`skipstep.optimal_variance.estimate_eps_mse`), estimated once on its data (the training split, or exact
    draws for analytic models) and cached under ``directory`` (default :func:`skipstep.storage.cache_dir`) by the
    model's fingerprint."""
    file = Path(directory or cache_dir()) / "eps_mse" / f"{loaded.fingerprint}-n{num_timesteps}.json"
    if file.is_file():
        return load_eps_mse(file, loaded.fingerprint)
    if loaded.real_data is not None and "train" in loaded.real_data:
        data, source = loaded.real_data["train"][:max_samples], "training split"
    elif loaded.reference is not None:
        data, source = loaded.reference.sample(max_samples, seed), "exact data samples"
    else:
        raise ValueError(
            f"model {loaded.name!r} has no data to estimate the optimal variance from; compute the table with "
            "skipstep.optimal_variance.estimate_eps_mse(model, path, data) and pass it as eps_mse"
        )
    path = DiscreteVPPath.from_config(loaded.scheduler_config)
    table = estimate_eps_mse(loaded.model, path, data.to(loaded.device), loaded.prediction_type,
                             num_timesteps=num_timesteps, generator=torch.Generator().manual_seed(seed),
                             progress=progress)
    save_eps_mse(file, table, loaded.fingerprint, overwrite=True, data=source, num_samples=int(data.shape[0]),
                 num_timesteps=num_timesteps, seed=seed)
    return table


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"corrupt JSON file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"corrupt JSON file {path}: expected an object")
    return data


CLIP_MODES = ("model", "on", "off")


def apply_clip_mode(loaded: LoadedModel, mode: str) -> str:
    """Set ``clip_sample`` in the model's scheduler config for ``--clip`` (``model`` keeps it); every sampler
    reads it from there (:func:`skipstep.lab.sampler_registry.clip_overrides`). Returns a description for the outputs."""
    if mode not in CLIP_MODES:
        raise ValueError(f"--clip must be one of {CLIP_MODES}, got {mode!r}")
    if mode != "model":
        loaded.scheduler_config = {**loaded.scheduler_config, "clip_sample": mode == "on"}
    on = bool(loaded.scheduler_config.get("clip_sample", False))
    rng = float(loaded.scheduler_config.get("clip_sample_range", 1.0) or 1.0)
    origin = "the model's scheduler config" if mode == "model" else f"--clip {mode}"
    return (f"x0_hat clipped to [-{rng:g}, {rng:g}] ({origin}) by every sampler that can clip "
            "(clip_sample: ours, DDPM, DDIM, Heun; thresholding with sample_max_value: DPM-Solver, UniPC, DEIS; "
            "Euler, Euler-ancestral and PNDM cannot)") if on else f"no x0_hat clipping ({origin})"


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------
_MODELS: dict[str, tuple[Callable[..., LoadedModel], str]] = {}


def register_model(name: str, loader: Callable[..., LoadedModel], description: str = "") -> None:
    """Register ``loader(device=...) -> LoadedModel`` under ``name``."""
    _MODELS[name] = (loader, description)


register_model("gmm", load_gmm, "exact denoiser of a digits-mean Gaussian mixture (analytic; exact reference)")
register_model("digits", load_digits, "the shipped 8x8 digits DDPM UNet")


def available_models() -> dict[str, str]:
    """Registered model names and their one-line descriptions."""
    return {name: desc for name, (_, desc) in _MODELS.items()}


def load_model(name_or_path: str, device: str = "cpu") -> LoadedModel:
    """A registered model by name, or a local diffusers directory by path."""
    if name_or_path in _MODELS:
        loader, _ = _MODELS[name_or_path]
        return loader(device=device)
    p = Path(name_or_path)
    looks_like_path = p.exists() or "/" in name_or_path or name_or_path.startswith(".")
    if not looks_like_path:
        raise ModelLoadError(
            f"--model: unknown model {name_or_path!r}; valid names: {', '.join(sorted(_MODELS))} "
            "(or a path to a local diffusers directory)"
        )
    try:
        return load_diffusers_dir(p, device=device)
    except ModelLoadError as err:
        raise ModelLoadError(f"--model {name_or_path}: {err}") from None
