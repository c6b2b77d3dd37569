"""Trained testbeds on scikit-learn's 8x8 digits: a small diffusers DDPM UNet and a digit classifier.

Data
----
:func:`load_digits_images` serves ``sklearn.datasets.load_digits`` (1,797 grayscale 8x8 images, integer
values ``0..16``) as a float32 tensor ``(N, 1, 8, 8)`` scaled to ``[-1, 1]`` by ``x / 16 * 2 - 1``.

The split is fixed: ``numpy.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)`` with
``DIGITS_SPLIT_SEED = 0``; its first 1,497 entries are the ``"train"`` split and its last 300 the
``"heldout"`` split (each returned in ascending index order). Both shipped networks were trained on the
``"train"`` split only; the ``"heldout"`` split is the reference set for sample-quality metrics and the test
set for the classifier.

Networks
--------
* :func:`load_digits_unet` -- a diffusers ``UNet2DModel`` (epsilon prediction, 8x8x1, EMA weights) shipped in
  :data:`DIGITS_UNET_DIR` in the ``DDPMPipeline`` layout (``model_index.json``, ``unet/``, ``scheduler/``), so
  ``DDPMPipeline.from_pretrained(DIGITS_UNET_DIR)`` works too. Its noise schedule is the DDPM one
  (``num_train_timesteps=1000``, linear betas ``1e-4 .. 0.02``), see :func:`load_digits_scheduler_config`.
* :func:`load_digit_classifier` -- :class:`DigitClassifier`, a small CNN whose :meth:`DigitClassifier.features`
  (64 dims) are the feature space for a Fréchet distance on digits.

Everything is read from local files with safetensors (never pickles, never the network). A missing or corrupt
file raises :class:`FileNotFoundError` / :class:`ValueError` naming the file. See ``docs/training.md`` for how the
weights were trained (``python -m skipstep.lab.testbeds.train``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DIGITS_N_HELDOUT",
    "DIGITS_N_TOTAL",
    "DIGITS_SPLIT_SEED",
    "DIGITS_UNET_DIR",
    "DIGIT_CLASSIFIER_DIR",
    "DigitClassifier",
    "digits_split_indices",
    "load_digit_classifier",
    "load_digits_images",
    "load_digits_labels",
    "load_digits_scheduler",
    "load_digits_scheduler_config",
    "load_digits_unet",
]

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"  # skipstep/assets
#: Shipped diffusers directory of the digits DDPM (``model_index.json``, ``unet/``, ``scheduler/``).
DIGITS_UNET_DIR = ASSETS_DIR / "digits-unet"
#: Shipped directory of the digit classifier (``config.json``, ``model.safetensors``).
DIGIT_CLASSIFIER_DIR = ASSETS_DIR / "digit-classifier"

DIGITS_SPLIT_SEED = 0
DIGITS_N_TOTAL = 1797
DIGITS_N_HELDOUT = 300

_SPLITS = ("train", "heldout", "all")

UNET_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
UNET_CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
CLASSIFIER_WEIGHTS_NAME = "model.safetensors"
CLASSIFIER_CONFIG_NAME = "config.json"


# ----------------------------------------------------------------------------------------------------------- data
@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    if images.shape != (DIGITS_N_TOTAL, 8, 8):
        raise RuntimeError(f"unexpected sklearn digits shape {images.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


def digits_split_indices(split: str = "train") -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of a split (ascending); see the module docstring."""
    _check_split(split)
    if split == "all":
        return np.arange(DIGITS_N_TOTAL)
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(DIGITS_N_TOTAL)
    n_train = DIGITS_N_TOTAL - DIGITS_N_HELDOUT
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return np.sort(idx)


def load_digits_images(split: str = "train") -> torch.Tensor:
    """Digits of a split as float32 ``(N, 1, 8, 8)`` in ``[-1, 1]`` (``x / 16 * 2 - 1``).

    ``split``: ``"train"`` (1,497 images), ``"heldout"`` (300) or ``"all"`` (1,797).
    """
    images, _ = _raw_digits()
    idx = digits_split_indices(split)
    x = torch.from_numpy(images[idx].copy()).unsqueeze(1)
    return x / 16.0 * 2.0 - 1.0


def load_digits_labels(split: str = "train") -> torch.Tensor:
    """Class labels (int64, ``0..9``) aligned with :func:`load_digits_images` of the same split."""
    _, labels = _raw_digits()
    return torch.from_numpy(labels[digits_split_indices(split)].copy())


# ------------------------------------------------------------------------------------------------- file helpers
def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: missing file {path}")
    return path


def _read_json(path: Path, what: str) -> dict[str, Any]:
    _require_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: corrupt JSON file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what}: corrupt JSON file {path}: expected an object, got {type(data).__name__}")
    return data


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    _require_file(path, what)
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError / OSError on bad headers or data
        raise ValueError(f"{what}: corrupt safetensors file {path}: {err}") from err


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: directory not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: not a directory: {path}")
    return path


# ------------------------------------------------------------------------------------------------------- the UNet
def _unet_subdir(root: Path) -> Path:
    """``root/unet`` (pipeline layout) or ``root`` itself (flat layout: config.json beside the weights)."""
    if (root / "unet").is_dir() or not (root / UNET_CONFIG_NAME).is_file():
        return root / "unet"
    return root


def load_digits_unet(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The shipped digits DDPM network: a diffusers ``UNet2DModel`` in eval mode with gradients disabled.

    ``path`` is a pipeline-layout directory (containing ``unet/``) or a flat one (``config.json`` and
    ``diffusion_pytorch_model.safetensors``); default :data:`DIGITS_UNET_DIR`. Loaded with
    ``UNet2DModel.from_pretrained(local_dir, local_files_only=True, use_safetensors=True)`` (with
    ``low_cpu_mem_usage=False``: the model is tiny and ``accelerate`` is not required).
    Call it as ``unet(x_t, t).sample`` with ``x_t`` of shape ``(B, 1, 8, 8)`` and integer ``t`` in ``[0, 1000)``;
    it predicts the noise ``eps``.
    """
    from diffusers import UNet2DModel

    what = "digits UNet"
    root = _require_dir(Path(path) if path is not None else DIGITS_UNET_DIR, what)
    model_dir = _unet_subdir(root)
    _require_dir(model_dir, what)
    config_file = model_dir / UNET_CONFIG_NAME
    config = _read_json(config_file, what)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{what}: {config_file} describes a {config['_class_name']!r}, expected 'UNet2DModel'")
    weights_file = model_dir / UNET_WEIGHTS_NAME
    # Validate the weights ourselves so that a damaged file is reported by name, not by a diffusers traceback.
    _read_safetensors(weights_file, what)
    try:
        unet = UNet2DModel.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except Exception as err:  # e.g. a config that does not match the stored tensors
        raise ValueError(f"{what}: could not load {weights_file} with {config_file}: {err}") from err
    unet = unet.to(device)
    unet.eval()
    unet.requires_grad_(False)
    return unet


def load_digits_scheduler_config(path: str | Path | None = None) -> dict[str, Any]:
    """The ``DDPMScheduler`` config saved beside the digits UNet (a plain dict, as in ``scheduler_config.json``).

    Linear betas ``1e-4 .. 0.02`` over ``num_train_timesteps=1000``, ``prediction_type="epsilon"``.
    ``DDPMScheduler.from_config(load_digits_scheduler_config())`` rebuilds the training scheduler.
    """
    what = "digits scheduler"
    root = _require_dir(Path(path) if path is not None else DIGITS_UNET_DIR, what)
    config_file = root / "scheduler" / SCHEDULER_CONFIG_NAME
    if not config_file.is_file() and (root / SCHEDULER_CONFIG_NAME).is_file():
        config_file = root / SCHEDULER_CONFIG_NAME  # flat layout
    return _read_json(config_file, what)


def load_digits_scheduler(path: str | Path | None = None):
    """``DDPMScheduler.from_config(load_digits_scheduler_config(path))``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(load_digits_scheduler_config(path))


# ------------------------------------------------------------------------------------------------- the classifier
class DigitClassifier(nn.Module):
    """Small CNN for ``(B, 1, 8, 8)`` digits in ``[-1, 1]``.

    ``conv3x3(1->c1) ReLU conv3x3(c1->c2) ReLU maxpool2 conv3x3(c2->c3) ReLU maxpool2`` (8x8 -> 2x2), flatten,
    ``Linear(4*c3 -> feature_dim)`` = :meth:`features`, then ``ReLU Dropout Linear(feature_dim -> 10)`` = logits.
    The features are the pre-activation penultimate layer (dense, no dead ReLU dimensions), the space in which a
    Fréchet distance between sample sets is computed.
    """

    def __init__(
        self,
        channels: tuple[int, int, int] | list[int] = (16, 32, 64),
        feature_dim: int = 64,
        num_classes: int = 10,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.config = {
            "channels": [c1, c2, c3],
            "feature_dim": int(feature_dim),
            "num_classes": int(num_classes),
            "dropout": float(dropout),
        }
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(4 * c3, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitClassifier expects (B, 1, 8, 8) inputs, got shape {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)``."""
        self._check_input(x)
        return self.fc(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))


def load_digit_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitClassifier:
    """The shipped :class:`DigitClassifier` (eval mode, gradients disabled).

    ``path``: a directory with ``config.json`` and ``model.safetensors`` (default :data:`DIGIT_CLASSIFIER_DIR`),
    or the ``.safetensors`` file itself (its ``config.json`` is looked up beside it).
    """
    what = "digit classifier"
    p = Path(path) if path is not None else DIGIT_CLASSIFIER_DIR
    if p.suffix == ".safetensors":
        root, weights_file = p.parent, p
    else:
        root, weights_file = p, p / CLASSIFIER_WEIGHTS_NAME
    _require_dir(root, what)
    config_file = root / CLASSIFIER_CONFIG_NAME
    config = _read_json(config_file, what)
    try:
        model = DigitClassifier(
            channels=config["channels"],
            feature_dim=config["feature_dim"],
            num_classes=config.get("num_classes", 10),
            dropout=config.get("dropout", 0.0),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{what}: corrupt config {config_file}: {err!r}") from err
    state = _read_safetensors(weights_file, what)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{what}: weights {weights_file} do not match {config_file}: {err}") from err
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
