"""Local diffusers model directories -> :class:`~skipstep.lab.loaded_model.LoadedModel`, recognised by what they
say about themselves: the regime from the scheduler config, the conditioning and the variance from the UNet
config, the null label from ``training_info.json`` / ``model_index.json`` (or the caller). Never a silent
reinterpretation: what the lab cannot sample correctly is refused with the reason.

* **VP chains** (:data:`VP_SCHEDULER_CLASSES`): the config's keys, the class's own defaults for keys it leaves out
  (as diffusers fills them); epsilon, v_prediction or sample.
* **Flow matching** (:data:`FLOW_SCHEDULER_CLASSES` with ``shift``): sampled on the rectified-flow path; the UNet
  gets ``sigma * T``. Dynamic shifting (``use_dynamic_shifting=True``) is refused unless a fixed ``mu`` is given;
  ``mu`` then fixes the shift exactly (``exp(mu)`` for ``time_shift_type="exponential"``, ``mu`` for ``linear``:
  diffusers' time shift with a fixed ``mu`` is the static shift formula with that value).
* **Learned variance** (``out_channels = 2C`` and ``variance_type="learned_range"``): samplers that can use the
  variance get all 2C channels, the others the first C (see :meth:`LoadedModel.model_for_batch`).
* **Class-conditional** (``num_class_embeds``): ``unet(x, t, class_labels=y)``; the null label comes from
  ``training_info.json``'s ``null_class_label``, else ``model_index.json``'s, else the caller's ``null_label``
  (``--null-label``), else the directory is refused with the reason.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors import safe_open

from ..diffusers_schedulers import SkippedStepScheduler
from ..flow_schedulers import SkippedStepFlowScheduler
from ..paths import DiscreteVPPath, flow_config_reason
from ..predictions import unwrap_model_output
from ..steps import LEARNED_VARIANCE_TYPES
from ..storage import file_sha256
from .conditioning import ClassConditioning
from .loaded_model import LoadedModel, ModelLoadError
from .testbeds.digits import load_digit_classifier

__all__ = ["FLOW_SCHEDULER_CLASSES", "VP_SCHEDULER_CLASSES", "digit_networks", "fingerprint", "lab_scheduler_config",
           "load_diffusers_dir", "read_json"]

#: diffusers schedulers of variance-preserving (DDPM-type) chains: their betas, T and prediction type describe the
#: training chain, whichever sampler the config was saved for, so the lab can sample such a model.
VP_SCHEDULER_CLASSES = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "SASolverScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
    "SkippedStepScheduler",
)
#: Flow-matching schedulers whose config (``shift``, ``num_train_timesteps``) describes a rectified-flow model.
FLOW_SCHEDULER_CLASSES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                          "SkippedStepFlowScheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
TRAINING_INFO_NAME = "training_info.json"
MODEL_INDEX_NAME = "model_index.json"

DDPM_DEFAULTS: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "linear", "trained_betas": None, "variance_type": "fixed_small", "clip_sample": False,
    "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}


# --------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"corrupt JSON file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"corrupt JSON file {path}: expected an object")
    return data


def fingerprint(*parts: Any, weights_file: Path | None = None, prefix: bytes = b"") -> str:
    """A short (12 hex digit) hash of a weights file and JSON-able parts."""
    h = hashlib.sha256(prefix)
    if weights_file is not None:
        file_sha256(weights_file, h)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def digit_networks(device: str):
    """``(features, logits)`` of the shipped digit classifier, or ``(None, None)`` when its weights are absent."""
    try:
        clf = load_digit_classifier(device=device)
    except (FileNotFoundError, ValueError, OSError):
        return None, None

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        return clf.features(x.to(device=device, dtype=torch.float32))

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:
        return clf(x.to(device=device, dtype=torch.float32))

    return features, logits


def _class_defaults(class_name: str) -> dict[str, Any]:
    """The constructor defaults of a diffusers (or skipstep) scheduler class: what diffusers itself fills in for
    keys a config leaves out."""
    own = {"SkippedStepScheduler": SkippedStepScheduler, "SkippedStepFlowScheduler": SkippedStepFlowScheduler}
    cls = own.get(class_name) or getattr(diffusers, class_name, None)
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _plain(config: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """The template's keys (values from ``config`` where given), then the rest of ``config``, JSON-able."""
    out = {k: template[k] for k in template}
    for key, value in dict(config).items():
        if key.startswith("_") and key != "_class_name":
            continue
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(out.get("trained_betas"), tuple):
        out["trained_betas"] = list(out["trained_betas"])
    return out


# --------------------------------------------------------------------------------------------------------------
# the scheduler config: which path the model was trained on
# --------------------------------------------------------------------------------------------------------------
def lab_scheduler_config(raw: dict[str, Any], source: Path, flow_mu: float | None = None
                         ) -> tuple[dict[str, Any], str, list[str]]:
    """``(config, regime, notes)`` for a model directory's scheduler config, or a :class:`ModelLoadError` saying
    why the lab cannot sample it correctly (see the module docstring). ``flow_mu`` fixes the shift of a
    dynamically shifted flow config."""
    class_name = raw.get("_class_name")
    flow_reason = flow_config_reason(raw)
    if class_name in FLOW_SCHEDULER_CLASSES:
        return _flow_config(raw, source, class_name, flow_mu)
    if flow_reason or raw.get("use_dynamic_shifting"):
        raise ModelLoadError(
            f"{source}: {class_name or 'the scheduler config'} describes a flow-matching model "
            f"({flow_reason or 'it uses dynamic shifting (use_dynamic_shifting)'}) but is not a flow-matching "
            f"scheduler config ({', '.join(FLOW_SCHEDULER_CLASSES)}): the lab samples flow models from a "
            "FlowMatchEulerDiscreteScheduler config (shift); save the scheduler as "
            "FlowMatchEulerDiscreteScheduler(shift=<the flow_shift>) -- in a diffusers pipeline use "
            "skipstep.SkippedStepFlowScheduler.from_config(pipe.scheduler.config)")
    if flow_mu is not None:
        raise ModelLoadError(f"--flow-mu: {source} describes a variance-preserving chain, not a dynamically shifted "
                             "flow; leave --flow-mu out")
    if not class_name:
        raise ModelLoadError(f"{source} has no _class_name, so it does not say which noise path the model was "
                             "trained on; add the scheduler class it was saved from (e.g. \"_class_name\": "
                             "\"DDPMScheduler\")")
    if class_name not in VP_SCHEDULER_CLASSES:
        raise ModelLoadError(f"{source}: unknown scheduler class {class_name!r}: skipstep cannot tell which noise "
                             f"path the model was trained on (the lab samples: "
                             f"{', '.join(VP_SCHEDULER_CLASSES + FLOW_SCHEDULER_CLASSES)})")
    if raw.get("timestep_type", "discrete") != "discrete":
        raise ModelLoadError(f"{source}: timestep_type={raw['timestep_type']!r}: the model takes continuous noise "
                             "levels, but the lab feeds the integer timesteps of a DDPM chain")
    defaults = _class_defaults(class_name)
    config = _plain(raw, {k: defaults.get(k, v) if k != "_class_name" else v for k, v in DDPM_DEFAULTS.items()})
    if config.get("prediction_type") not in PREDICTION_TYPES:
        raise ModelLoadError(f"{source}: prediction_type={config.get('prediction_type')!r} is not one of "
                             f"{PREDICTION_TYPES}")
    try:
        DiscreteVPPath.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ModelLoadError(f"{source}: the training chain cannot be built ({err})") from None
    return config, "vp", []


def _flow_config(raw: dict[str, Any], source: Path, class_name: str, flow_mu: float | None
                 ) -> tuple[dict[str, Any], str, list[str]]:
    template = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                **{k: v for k, v in _class_defaults("FlowMatchEulerDiscreteScheduler").items()
                   if k not in ("invert_sigmas", "stochastic_sampling")}}
    # a SkippedStepFlowScheduler config's other keys (eta, its "power" grid, the corrector, ...) are skipstep's
    # sampler settings, not the model's path: the lab reads it as the FlowMatchEuler config it was made from
    ours = class_name == "SkippedStepFlowScheduler"
    path = {k: v for k, v in raw.items()
            if k != "_class_name" and (not ours or k in template or k == "prediction_type")}
    config = _plain(path, template)
    config["_class_name"] = class_name if class_name != "SkippedStepFlowScheduler" else template["_class_name"]
    for key in ("invert_sigmas", "stochastic_sampling"):
        config.pop(key, None)
    if raw.get("invert_sigmas"):
        raise ModelLoadError(f"{source}: invert_sigmas=True runs the flow from data to noise (inversion); the lab "
                             "samples from noise to data")
    notes = []
    if config.get("use_dynamic_shifting"):
        if flow_mu is None:
            raise ModelLoadError(
                f"--model: {source} uses dynamic shifting (use_dynamic_shifting=True: the shift depends on the "
                "image size through mu, which a pipeline computes); pass --flow-mu MU to sample it with that fixed "
                "mu")
        mu = float(flow_mu)
        kind = config.get("time_shift_type", "exponential")
        shift = math.exp(mu) if kind == "exponential" else mu
        if not (math.isfinite(shift) and shift > 0):
            raise ModelLoadError(f"--flow-mu {flow_mu}: the shift it fixes ({shift}) must be a finite number > 0")
        config.update(use_dynamic_shifting=False, shift=shift)
        notes.append(f"dynamic shifting with the fixed mu={mu:g} (--flow-mu) is the static shift "
                     f"{'exp(mu)' if kind == 'exponential' else 'mu'} = {shift:.6g}; every sampler runs with it")
    elif flow_mu is not None:
        raise ModelLoadError(f"--flow-mu: {source} does not use dynamic shifting (its shift is "
                             f"{config.get('shift')}); leave --flow-mu out")
    if not (isinstance(config.get("shift"), (int, float)) and config["shift"] > 0):
        raise ModelLoadError(f"{source}: shift={config.get('shift')!r} must be a number > 0")
    config["prediction_type"] = "flow"
    return config, "flow", notes


# --------------------------------------------------------------------------------------------------------------
# the directory
# --------------------------------------------------------------------------------------------------------------
def _wrap_unet(net: torch.nn.Module, conditional: bool, channels: int | None = None):
    """``model(x, t[, class_labels])`` -> tensor: unwrap ``.sample``, broadcast a scalar ``t`` to the batch (and keep
    only the first ``channels`` output channels when given)."""

    @torch.no_grad()
    def model(x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.reshape(1).expand(x.shape[0])
        if conditional:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional: call it with class_labels")
            out = unwrap_model_output(net(x, t, class_labels=class_labels))
        else:
            out = unwrap_model_output(net(x, t))
        return out if channels is None else out[:, :channels]

    model.net = net  # type: ignore[attr-defined]
    return model


def _directory_files(root: Path) -> tuple[Path, Path]:
    """``(unet_dir, scheduler_config_file)`` of a pipeline directory or a bare UNet directory."""
    if (root / "unet").is_dir():
        return root / "unet", root / "scheduler" / SCHEDULER_CONFIG_NAME
    sched_file = root / SCHEDULER_CONFIG_NAME
    if not sched_file.is_file() and (root / "scheduler" / SCHEDULER_CONFIG_NAME).is_file():
        sched_file = root / "scheduler" / SCHEDULER_CONFIG_NAME
    return root, sched_file


def _null_label(root: Path, num_class_embeds: int, null_label: int | None, default: tuple[int, str] | None
                ) -> ClassConditioning:
    """The null label of a class-conditional UNet: training_info.json, model_index.json, the caller's, a
    registration default -- or a refusal saying where it was looked for."""
    found: list[tuple[int, str]] = []
    for name in (TRAINING_INFO_NAME, MODEL_INDEX_NAME):
        file = root / name
        if file.is_file():
            value = read_json(file).get("null_class_label")
            if value is not None:
                found.append((value, f"{name} null_class_label"))
    if null_label is not None:
        if found and found[0][0] != null_label:
            raise ModelLoadError(f"--null-label {null_label} contradicts the directory's {found[0][1]} "
                                 f"({found[0][0]}); leave --null-label out")
        found.append((null_label, "--null-label"))
    if not found and default is not None:
        found.append(default)
    if not found:
        raise ModelLoadError(
            f"{root}: the UNet takes class labels (num_class_embeds={num_class_embeds}), but nothing says which label "
            f"is the unconditional (null) one that classifier-free guidance needs: neither {TRAINING_INFO_NAME} nor "
            f"{MODEL_INDEX_NAME} has null_class_label; pass --null-label N (0 <= N < {num_class_embeds})")
    value, source = found[0]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_class_embeds:
        raise ModelLoadError(f"{root}: null label {value!r} ({source}) must be an integer in [0, {num_class_embeds})")
    if num_class_embeds < 2:
        raise ModelLoadError(f"{root}: num_class_embeds={num_class_embeds} leaves no class besides the null label")
    return ClassConditioning(num_class_embeds, value, source)


def load_diffusers_dir(path: str | Path, device: str = "cpu", name: str | None = None, null_label: int | None = None,
                       flow_mu: float | None = None, default_null_label: tuple[int, str] | None = None
                       ) -> LoadedModel:
    """A local diffusers directory: a ``save_pretrained`` pipeline (``unet/`` + ``scheduler/``) or a bare UNet
    directory (``config.json`` + ``diffusion_pytorch_model.safetensors``) with a ``scheduler_config.json``
    beside it. Only safetensors weights are read (never pickles); errors name the offending file."""
    root = Path(path)
    if not root.exists():
        raise ModelLoadError(f"model directory not found: {root}")
    if not root.is_dir():
        raise ModelLoadError(f"model path is not a directory: {root}")
    unet_dir, sched_file = _directory_files(root)
    config_file, weights_file = unet_dir / CONFIG_NAME, unet_dir / WEIGHTS_NAME
    for f, what in ((config_file, "UNet config"), (weights_file, "UNet weights (safetensors)"),
                    (sched_file, "scheduler config")):
        if not f.is_file():
            extra = ""
            if f == weights_file and (unet_dir / "diffusion_pytorch_model.bin").is_file():
                extra = " (only a pickle .bin file is present; skipstep loads safetensors only)"
            raise ModelLoadError(f"{what} missing: {f}{extra}")
    unet_config = read_json(config_file)
    raw_sched_config = read_json(sched_file)
    sched_config, regime, notes = lab_scheduler_config(raw_sched_config, sched_file, flow_mu)
    class_name = unet_config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ModelLoadError(f"{config_file}: unsupported model class {class_name!r} (only UNet2DModel directories "
                             "can be benchmarked)")
    if unet_config.get("class_embed_type") is not None:
        raise ModelLoadError(f"{config_file}: class_embed_type={unet_config['class_embed_type']!r} takes continuous "
                             "class embeddings; the lab conditions on integer labels (num_class_embeds) only")
    num_class_embeds = unet_config.get("num_class_embeds")
    conditioning = None
    if num_class_embeds is not None:
        conditioning = _null_label(root, int(num_class_embeds), null_label, default_null_label)
    elif null_label is not None:
        raise ModelLoadError(f"--null-label: {config_file} has no num_class_embeds (the UNet takes no class labels)")
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
    in_ch, out_ch = int(net.config.in_channels), int(net.config.out_channels)
    size = net.config.sample_size
    h_, w_ = (size, size) if isinstance(size, int) else tuple(size)
    learned, used = _variance_choice(out_ch, in_ch, sched_config, raw_sched_config, regime, config_file, sched_file,
                                     notes)
    hashed = {"unet": unet_config, "scheduler": sched_config}
    if conditioning is not None:
        hashed["null_label"] = conditioning.null_label
    features, logits = digit_networks(device) if (in_ch, h_, w_) == (1, 8, 8) else (None, None)
    if conditioning is not None and conditioning.num_classes == 10 and logits is not None:
        notes.append("class_match uses the shipped digit classifier: it assumes real labels "
                     f"{conditioning.real_labels} are the digits 0..9 in order")
    else:
        logits = None
    return LoadedModel(
        name=name or str(root), model=_wrap_unet(net, conditioning is not None, used), scheduler_config=sched_config,
        sample_shape=(in_ch, int(h_), int(w_)), prediction_type=sched_config.get("prediction_type", "epsilon"),
        fingerprint=fingerprint(hashed, weights_file=weights_file), feature_fn=features,
        feature_name="digit-classifier" if features is not None else None, device=device,
        description=f"diffusers UNet2DModel from {root}", notes=notes, regime=regime, learned_variance=learned,
        conditioning=conditioning, classifier_fn=logits,
        config_keys_given=tuple(k for k in raw_sched_config if not k.startswith("_")))


def _variance_choice(out_ch: int, in_ch: int, sched_config: dict, raw: dict, regime: str, config_file: Path,
                     sched_file: Path, notes: list[str]) -> tuple[bool, int | None]:
    """``(learned, channels)``: whether the model has a usable learned variance, and how many output channels the
    lab keeps (``None``: all); a 2C output the lab cannot use is noted, a contradiction refused."""
    declared = raw.get("variance_type")
    if out_ch == 2 * in_ch and regime == "vp" and declared == "learned_range":
        notes.append(f"learned-variance model ({out_ch} = 2C output channels, variance_type='learned_range'): "
                     "samplers that can use the variance (ours, ddpm, reference-1000) get all channels; every other "
                     "sampler gets the C epsilon channels with its own fixed variance (its settings say so)")
        return True, None
    if out_ch == 2 * in_ch:
        if regime == "vp":
            sched_config["variance_type"] = "fixed_small"
        notes.append(f"the network outputs 2C={out_ch} channels but the scheduler config says variance_type="
                     f"{declared!r} (not 'learned_range'), so the lab uses only the first C channels with the "
                     "fixed_small posterior variance for every sampler: the extra channels are NOT used")
        return False, in_ch
    if out_ch != in_ch:
        raise ModelLoadError(f"{config_file}: out_channels={out_ch} must equal in_channels={in_ch} (or twice it)")
    if declared in LEARNED_VARIANCE_TYPES:
        raise ModelLoadError(f"{sched_file} says variance_type={declared!r} (a learned variance, 2C "
                             f"output channels), but {config_file} has out_channels={out_ch} = in_channels")
    return False, None
