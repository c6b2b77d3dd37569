"""Model registry for the benchmark and the CLI: a name (or a local diffusers directory) -> :class:`LoadedModel`.

Built-in names: ``gmm`` (the exact denoiser of a digits-mean Gaussian mixture on the DDPM linear-beta chain),
``digits`` (the project's trained 8x8 UNet) and the digits **zoo** (:data:`ZOO_MODELS`, one line per model: a
directory under ``skipstep/assets/zoo/``; only the directories that exist are registered). Anything else is read
as a path to a local diffusers directory (:mod:`skipstep.lab.model_dirs`). New models are added with
:func:`register_model`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..optimal_variance import estimate_eps_mse, load_eps_mse, save_eps_mse
from ..paths import DiscreteVPPath
from ..storage import cache_dir
from .conditioning import balanced_subset
from .loaded_model import ExactMixtureReference, LoadedModel, ModelLoadError
from .model_dirs import (FLOW_SCHEDULER_CLASSES, VP_SCHEDULER_CLASSES, DDPM_DEFAULTS, TRAINING_INFO_NAME,
                         digit_networks, fingerprint, lab_scheduler_config, load_diffusers_dir, read_json)
from .testbeds.digits import DIGITS_UNET_DIR, load_digits_images, load_digits_labels
from .testbeds.gmm import GMMDenoiser, digits_mixture

__all__ = [
    "CLIP_MODES", "DEFAULT_GMM_NUM_MEANS", "DEFAULT_GMM_STD", "ExactMixtureReference", "FLOW_SCHEDULER_CLASSES",
    "LoadedModel", "ModelLoadError", "VP_SCHEDULER_CLASSES", "ZOO_DIR", "ZOO_MODELS", "ZooModel", "apply_clip_mode",
    "available_models", "lab_scheduler_config", "load_diffusers_dir", "load_model", "load_zoo_model",
    "optimal_variance_table", "register_model", "register_zoo_models", "training_data_moments",
]

#: Default per-pixel std of the ``gmm`` model's modes (pixels live in [-1, 1]).
DEFAULT_GMM_STD = 0.05
#: Default number of digit images used as the ``gmm`` model's means; a batch of 2000 costs ~10 ms per evaluation.
DEFAULT_GMM_NUM_MEANS = 100
DDPM_LINEAR_CONFIG = dict(DDPM_DEFAULTS)


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
    fp = fingerprint({"std": mixture.std, "config": config},
                     prefix=b"gmm-v1" + mixture.means.numpy().tobytes() + mixture.weights.numpy().tobytes())
    features, _ = digit_networks(device)
    return LoadedModel(
        name="gmm", model=model, scheduler_config=config, sample_shape=(1, 8, 8), prediction_type="epsilon",
        fingerprint=fp, reference=ExactMixtureReference(mixture), feature_fn=features,
        feature_name="digit-classifier" if features is not None else None, device=device, integer_timesteps=True,
        description=f"exact denoiser of a {mixture.num_modes}-mode digits mixture (std {mixture.std}), "
                    "DDPM linear betas, T=1000, epsilon",
    )


def digits_real_data() -> dict[str, torch.Tensor]:
    """The real digits splits and their labels (the data floors and ``fd_heldout`` of digits models)."""
    return {"train": load_digits_images("train"), "heldout": load_digits_images("heldout"),
            "train_labels": load_digits_labels("train"), "heldout_labels": load_digits_labels("heldout")}


def load_digits(device: str = "cpu") -> LoadedModel:
    """The project's trained 8x8 digits DDPM UNet (epsilon, linear betas, T=1000) with real-data floors."""
    loaded = load_diffusers_dir(DIGITS_UNET_DIR, device=device, name="digits")
    loaded.description = "trained diffusers UNet2DModel on sklearn 8x8 digits (epsilon, linear betas, T=1000)"
    loaded.real_data = digits_real_data()
    return loaded


# --------------------------------------------------------------------------------------------------------------
# the digits zoo
# --------------------------------------------------------------------------------------------------------------
ZOO_DIR = Path(__file__).resolve().parents[1] / "assets" / "zoo"


@dataclass(frozen=True)
class ZooModel:
    """One zoo model: its directory under :data:`ZOO_DIR`, and for a class-conditional model the null label
    when its ``training_info.json`` does not name one (``null_class_label``)."""

    directory: str
    null_label: int | None = None


#: name -> zoo directory; one line per model (the regime is read from the directory itself)
ZOO_MODELS: dict[str, ZooModel] = {
    "digits-cfg": ZooModel("digits-cfg", null_label=10),  # labels 0..9, null label 10 (docs/zoo.md)
    "digits-flow": ZooModel("digits-flow"),
    "digits-lv": ZooModel("digits-lv"),
    "digits-vzsnr": ZooModel("digits-vzsnr"),
    "digits-eps-b": ZooModel("digits-eps-b"),
    "digits-eps-c": ZooModel("digits-eps-c"),
    "digits-flow-b": ZooModel("digits-flow-b"),  # second models of three regimes (leave-one-model-out within them)
    "digits-lv-b": ZooModel("digits-lv-b"),
    "digits-cfg-b": ZooModel("digits-cfg-b", null_label=10),
    "digits-cfg-c": ZooModel("digits-cfg-c", null_label=10),
    "digits-v": ZooModel("digits-v"),
    "digits-flow-c": ZooModel("digits-flow-c"),
    "digits-flow-d": ZooModel("digits-flow-d"),
}


def load_zoo_model(directory: str | Path, name: str | None = None, device: str = "cpu",
                   null_label: int | None = None, flow_mu: float | None = None,
                   default_null_label: int | None = None) -> LoadedModel:
    """A zoo directory (``unet/`` + ``scheduler/`` + ``training_info.json``): the regime from its scheduler and
    UNet configs, the description and null label from ``training_info.json``, real digits for the data floors
    and ``fd_heldout`` (class-balanced for a conditional model, see :func:`heldout_for`)."""
    root = Path(directory)
    default = None if default_null_label is None else (int(default_null_label), "the zoo table (skipstep.lab.models)")
    loaded = load_diffusers_dir(root, device=device, name=name or root.name, null_label=null_label, flow_mu=flow_mu,
                                default_null_label=default)
    info = read_json(root / TRAINING_INFO_NAME) if (root / TRAINING_INFO_NAME).is_file() else {}
    loaded.description = f"digits zoo: {info.get('description') or root.name} ({loaded.regime_text})"
    loaded.real_data = digits_real_data()
    return loaded


def heldout_for(loaded: LoadedModel) -> torch.Tensor | None:
    """The real held-out images ``fd_heldout`` compares with: all of them for an unconditional model; for a
    class-conditional one (whose samples are class-balanced) the class-balanced subset -- each class's first
    ``m`` held-out images, ``m`` the smallest class count (``10 x 25 = 250`` of the 300 digits)."""
    real = loaded.real_data or {}
    heldout = real.get("heldout")
    if heldout is None or loaded.conditioning is None or real.get("heldout_labels") is None:
        return heldout
    return heldout[balanced_subset(real["heldout_labels"], range(loaded.conditioning.num_classes))]


def register_zoo_models(zoo_dir: str | Path | None = None) -> list[str]:
    """Register every :data:`ZOO_MODELS` entry whose directory exists under ``zoo_dir`` (default
    :data:`ZOO_DIR`); returns the registered names."""
    root = Path(zoo_dir or ZOO_DIR)
    names = []
    for name, entry in ZOO_MODELS.items():
        directory = root / entry.directory
        if (directory / "unet").is_dir():
            def loader(device="cpu", null_label=None, flow_mu=None, directory=directory, name=name, entry=entry):
                return load_zoo_model(directory, name, device, null_label, flow_mu, entry.null_label)

            register_model(name, loader, f"digits zoo model ({directory})")
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------------------------
# derived tables
# --------------------------------------------------------------------------------------------------------------
def training_data_moments(loaded: LoadedModel, num_exact: int = 20000, seed: int = 0) -> dict[str, list]:
    """The per-pixel mean and (population) variance of ``loaded``'s training split (``num_exact`` exact draws for
    an analytic model), ``{"mean", "var"}`` as nested lists of the sample shape ``(C, H, W)``: the data moments of
    the analytic first step (:mod:`skipstep.lab.analytic_first`)."""
    train = (loaded.real_data or {}).get("train")
    if train is None and loaded.reference is not None:  # an analytic model: exact draws of its data
        train = loaded.reference.sample(num_exact, seed)
    if train is None:
        raise ValueError(f"model {loaded.name!r} has no training split to take the data mean and variance from")
    train = train.double()
    return {"mean": train.mean(0).float().tolist(), "var": train.var(0, unbiased=False).float().tolist()}


def optimal_variance_table(loaded: LoadedModel, directory: str | Path | None = None, num_timesteps: int = 100,
                           max_samples: int = 2000, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """The optimal-variance table ``E||eps - eps_hat||^2 / d`` per timestep of a loaded model
    (:func:`skipstep.optimal_variance.estimate_eps_mse`), estimated once on its data (the training split, or exact
    draws for analytic models) and cached under ``directory`` (default :func:`skipstep.storage.cache_dir`) by the
    model's fingerprint. Unconditional VP models only."""
    if loaded.regime != "vp" or loaded.conditioning is not None:
        raise ValueError(f"the optimal variance is estimated for unconditional VP models; {loaded.name!r} is "
                         f"{loaded.regime_text}")
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
    table = estimate_eps_mse(loaded.model_for_batch(with_variance=False), path, data.to(loaded.device),
                             loaded.prediction_type, num_timesteps=num_timesteps,
                             generator=torch.Generator().manual_seed(seed), progress=progress)
    save_eps_mse(file, table, loaded.fingerprint, overwrite=True, data=source, num_samples=int(data.shape[0]),
                 num_timesteps=num_timesteps, seed=seed)
    return table


CLIP_MODES = ("model", "on", "off")


def apply_clip_mode(loaded: LoadedModel, mode: str) -> str:
    """Set ``clip_sample`` in the model's scheduler config for ``--clip`` (``model`` keeps it); every sampler
    reads it from there (:func:`skipstep.lab.sampler_registry.clip_overrides`). Returns a description for the outputs."""
    if mode not in CLIP_MODES:
        raise ValueError(f"--clip must be one of {CLIP_MODES}, got {mode!r}")
    if loaded.regime == "flow":
        if mode == "on":
            raise ValueError(f"--clip on: model {loaded.name!r} is a flow model; flow schedulers have no x0 "
                             "clipping (use --clip model or off)")
        return "no x0_hat clipping (flow model: flow schedulers have no clipping)"
    if mode != "model":
        loaded.scheduler_config = {**loaded.scheduler_config, "clip_sample": mode == "on"}
    on = bool(loaded.scheduler_config.get("clip_sample", False))
    rng = float(loaded.scheduler_config.get("clip_sample_range", 1.0) or 1.0)
    origin = "the model's scheduler config" if mode == "model" else f"--clip {mode}"
    return (f"x0_hat clipped to [-{rng:g}, {rng:g}] ({origin}) by every sampler that can clip "
            "(clip_sample: ours, DDPM, DDIM, Heun; thresholding with sample_max_value: DPM-Solver, UniPC, DEIS, "
            "SA-Solver; Euler, Euler-ancestral, PNDM, LMS, KDPM2 and the k-diffusion peers cannot)"
            ) if on else f"no x0_hat clipping ({origin})"


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------
_MODELS: dict[str, tuple[Callable[..., LoadedModel], str]] = {}
#: options a loader may take besides ``device`` (``--null-label``, ``--flow-mu``)
MODEL_OPTIONS = {"null_label": "--null-label", "flow_mu": "--flow-mu"}


def register_model(name: str, loader: Callable[..., LoadedModel], description: str = "") -> None:
    """Register ``loader(device=..., [null_label=..., flow_mu=...]) -> LoadedModel`` under ``name``."""
    _MODELS[name] = (loader, description)


register_model("gmm", load_gmm, "exact denoiser of a digits-mean Gaussian mixture (analytic; exact reference)")
register_model("digits", load_digits, "the shipped 8x8 digits DDPM UNet")
register_zoo_models()


def available_models() -> dict[str, str]:
    """Registered model names and their one-line descriptions."""
    return {name: desc for name, (_, desc) in _MODELS.items()}


def load_model(name_or_path: str, device: str = "cpu", null_label: int | None = None,
               flow_mu: float | None = None) -> LoadedModel:
    """A registered model by name, or a local diffusers directory by path; ``null_label`` / ``flow_mu`` as
    ``--null-label`` / ``--flow-mu`` (refused for a model that has no use for them)."""
    options = {k: v for k, v in {"null_label": null_label, "flow_mu": flow_mu}.items() if v is not None}
    if name_or_path in _MODELS:
        loader, _ = _MODELS[name_or_path]
        accepted = inspect.signature(loader).parameters
        for key in options:
            if key not in accepted:
                why = "it is not class-conditional" if key == "null_label" else "it is not a dynamically shifted flow"
                raise ModelLoadError(f"{MODEL_OPTIONS[key]}: model {name_or_path!r} takes no such option ({why})")
        return loader(device=device, **options)
    p = Path(name_or_path)
    looks_like_path = p.exists() or "/" in name_or_path or name_or_path.startswith(".")
    if not looks_like_path:
        raise ModelLoadError(
            f"--model: unknown model {name_or_path!r}; valid names: {', '.join(sorted(_MODELS))} "
            "(or a path to a local diffusers directory)"
        )
    try:
        return load_diffusers_dir(p, device=device, **options)
    except ModelLoadError as err:
        raise ModelLoadError(f"--model {name_or_path}: {err}") from None
