"""Fréchet distances with a pluggable feature network: standard FID (Inception-v3) with *local* weights only,
the project's digit classifier, or any user network.

A feature network is anything that satisfies :class:`FeatureExtractor`: ``extractor(images) -> (N, F)`` for
images in ``[-1, 1]``, ``NCHW`` float, plus a ``name`` and a ``fingerprint`` (a string that changes whenever the
features would: weights, preprocessing). Statistics files carry the fingerprint, so an FID between statistics of
two different networks is refused instead of silently reported.

:func:`resolve_feature_extractor` turns a command-line value into one:

* ``inception`` -- Inception-v3 (the 2015-12-05 TensorFlow weights that define standard FID), 2048-d pool
  features. **Never downloaded**: the weights must be a local file, given as ``inception_weights=`` /
  ``--inception-weights`` or ``$SKIPSTEP_INCEPTION_WEIGHTS``, or already in torch's hub cache
  (``<torch hub dir>/checkpoints/``, where torchmetrics/torch-fidelity and pytorch-fid keep a downloaded copy).
  Two formats are understood:

  - a TorchScript archive such as StyleGAN2-ADA's / clean-fid's ``inception-2015-12-05.pt`` (needs no other
    package; called as ``net(uint8 images, return_features=True)``);
  - a state dict (``.pth`` or ``.safetensors``) of torch-fidelity's ``FeatureExtractorInceptionV3`` -- the
    network torchmetrics' ``FrechetInceptionDistance`` uses -- e.g. ``weights-inception-2015-12-05-6726825d.pth``;
    needs ``pip install torchmetrics[image]`` (or ``torch-fidelity``). The network is built with the explicit
    local path, and sockets are blocked while it is built, so a missing or wrong file is an error, never a
    download.

  Images are quantised like saved PNGs (``uint8 = clamp(x * 127.5 + 128, 0, 255)``), grey images repeated to RGB;
  both networks resize to 299x299 internally.
* ``digits`` (alias ``digit-classifier``) -- the shipped 8x8 digit classifier's penultimate features (bench's FD).
* a path to a TorchScript file -- a user network called with the images in ``[-1, 1]``.
* ``module:attribute`` -- a user callable (a class is instantiated without arguments); its ``name`` and
  ``fingerprint`` attributes are used when present.

Statistics are accumulated in float64 with a streaming (Chan et al.) mean/covariance update, so 50k Inception
features never need to sit in memory at once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from ..storage import atomic_write_bytes, file_sha256
from .metrics import GaussianStats, frechet_distance_from_stats
from .testbeds.digits import CLASSIFIER_WEIGHTS_NAME, DIGIT_CLASSIFIER_DIR, load_digit_classifier

__all__ = [
    "INCEPTION_FILE_NAMES",
    "INCEPTION_WEIGHTS_ENV",
    "CallableFeatures",
    "FeatureExtractor",
    "FeatureNetworkError",
    "InceptionFeatures",
    "RunningStats",
    "TorchScriptFeatures",
    "as_feature_extractor",
    "compute_fid",
    "digit_classifier_features",
    "fid_from_stats",
    "find_inception_weights",
    "iter_image_batches",
    "load_plain_state_dict",
    "load_reference_stats",
    "resolve_feature_extractor",
    "save_stats",
    "stats_of_samples",
    "use_feature_network",
]

#: Environment variable naming a local Inception weights file (same role as ``--inception-weights``).
INCEPTION_WEIGHTS_ENV = "SKIPSTEP_INCEPTION_WEIGHTS"
#: File names looked up in torch's hub cache (``torch.hub.get_dir()/checkpoints``), in this order.
INCEPTION_FILE_NAMES = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity / torchmetrics
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid
    "inception-2015-12-05.pt",  # StyleGAN2-ADA / clean-fid (TorchScript)
)
MISSING_INCEPTION_MESSAGE = (
    "standard FID needs Inception weights, and skipstep never downloads them: install torchmetrics[image] and "
    "pass --inception-weights PATH (pt_inception-2015-12-05-6726825d.pth / weights-inception-2015-12-05-"
    "6726825d.pth state dict), or pass a TorchScript inception-2015-12-05.pt (StyleGAN2-ADA / clean-fid; no "
    f"extra package needed); ${INCEPTION_WEIGHTS_ENV} works too. Looked in: {{looked}}"
)
STATS_FORMAT = "skipstep-fid-stats-v1"
_PREPROCESS_VERSION = "uint8-png-quantised-v1"


class FeatureNetworkError(ValueError):
    """A feature network cannot be built (missing weights or package, a bad --fid-features value) or does not match statistics."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images) -> (N, F)`` features for images in ``[-1, 1]``, ``NCHW`` float."""

    name: str
    fingerprint: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


def _as_rows(out: Any, n: int, who: str) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise FeatureNetworkError(f"feature network {who} returned {type(out).__name__}, expected a tensor")
    if out.ndim < 1 or out.shape[0] != n:
        raise FeatureNetworkError(f"feature network {who} returned shape {tuple(out.shape)} for {n} images; "
                                  "expected (N, F)")
    return out.reshape(n, -1).float()


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float NCHW -> uint8 NCHW with 3 channels (grey repeated), quantised like a saved PNG."""
    if images.ndim != 4:
        raise FeatureNetworkError(f"images must be NCHW, got shape {tuple(images.shape)}")
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise FeatureNetworkError(f"Inception takes 1- or 3-channel images, got {x.shape[1]} channels")
    return x


# ----------------------------------------------------------------------------------------------------------------
# extractors
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CallableFeatures:
    """Any callable ``fn(images in [-1, 1]) -> (N, F)`` as a :class:`FeatureExtractor` (run in micro-batches)."""

    fn: Callable[[torch.Tensor], Any]
    name: str
    fingerprint: str
    device: str | None = None
    batch_size: int = 256

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in _chunks(images, self.batch_size):
            if self.device is not None:
                chunk = chunk.to(self.device)
            outs.append(_as_rows(self.fn(chunk), chunk.shape[0], self.name).cpu())
        return torch.cat(outs)


class TorchScriptFeatures(CallableFeatures):
    """A user TorchScript feature network (a file), called with the images in ``[-1, 1]``."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 256):
        path = Path(path)
        try:
            net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as err:  # noqa: BLE001
            raise FeatureNetworkError(f"cannot load TorchScript feature network {path}: {err}") from err
        super().__init__(net, f"torchscript:{path.name}", f"torchscript:{file_sha256(path)[:16]}", device, batch_size)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    # TorchScript archives hold compiled code; plain torch.save archives only data.pkl + data/
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("constants.pkl") for n in names)


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Block outgoing connections (``socket.connect``/``create_connection``) for the duration: anything that
    tries to download raises ``ConnectionRefusedError`` instead."""

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("skipstep: network access is blocked while feature networks are loaded")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved  # type: ignore[misc]


def find_inception_weights(explicit: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The local Inception weights file to use, and the places looked at.

    ``explicit`` (``--inception-weights``) must exist; otherwise ``$SKIPSTEP_INCEPTION_WEIGHTS``, then torch's hub
    cache (``<hub dir>/checkpoints/`` + :data:`INCEPTION_FILE_NAMES`). Nothing is ever fetched."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FeatureNetworkError(f"--inception-weights {p}: file not found. "
                                      + MISSING_INCEPTION_MESSAGE.format(looked=str(p)))
        return p, [str(p)]
    looked = []
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        looked.append(f"${INCEPTION_WEIGHTS_ENV}={p}")
        if p.is_file():
            return p, looked
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_FILE_NAMES:
        p = hub / name
        looked.append(str(p))
        if p.is_file():
            return p, looked
    return None, looked


class InceptionFeatures:
    """Standard-FID Inception-v3 pool features (2048-d) from a local weights file (see the module docstring)."""

    dim = 2048

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        path, looked = find_inception_weights(weights)
        if path is None:
            raise FeatureNetworkError(MISSING_INCEPTION_MESSAGE.format(looked=", ".join(looked)))
        self.path, self.device, self.batch_size = path, device, int(batch_size)
        digest = file_sha256(path)[:16]
        with no_network():
            if _is_torchscript(path):
                self.kind = "torchscript"
                try:
                    self.net = torch.jit.load(str(path), map_location=device).eval()
                except Exception as err:  # noqa: BLE001
                    raise FeatureNetworkError(f"cannot load TorchScript Inception {path}: {err}") from err
            else:
                self.kind = "torch-fidelity"
                self.net = self._build_torch_fidelity(path).to(device)
        self.name = "inception-v3"
        self.fingerprint = f"inception-v3-2048:{self.kind}:{digest}:{_PREPROCESS_VERSION}"

    @staticmethod
    def _build_torch_fidelity(path: Path) -> torch.nn.Module:
        state = load_plain_state_dict(path)  # first, and safely: never an arbitrary unpickle, on any torch
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise FeatureNetworkError(
                f"{path} is an Inception state dict; building the network needs torch-fidelity: "
                "pip install 'torchmetrics[image]' (or torch-fidelity). A TorchScript inception-2015-12-05.pt "
                "needs no extra package.") from err
        fd, tmp = tempfile.mkstemp(suffix=".pth")
        os.close(fd)
        try:
            # torch-fidelity torch.load()s a path itself; hand it a file of the plain tensors read above, so its
            # load is safe whatever torch's weights_only default is
            torch.save(state, tmp)
            # the explicit local path: torch-fidelity only downloads when it is None
            return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=tmp).eval()
        except Exception as err:  # noqa: BLE001 - wrong keys, ...
            raise FeatureNetworkError(f"cannot load Inception weights {path} into torch-fidelity's "
                                      f"FeatureExtractorInceptionV3: {err}") from err
        finally:
            os.unlink(tmp)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in _chunks(images, self.batch_size):
            x = to_uint8_rgb(chunk).to(self.device)
            out = self.net(x, return_features=True) if self.kind == "torchscript" else self.net(x)
            outs.append(_as_rows(out, x.shape[0], self.name).cpu())
        return torch.cat(outs)


def load_plain_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a ``.safetensors`` file or a ``.pth`` read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only: no code runs, on any torch version);
    anything else raises :class:`FeatureNetworkError`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError for a pickle of objects, corrupt files, ...
        raise FeatureNetworkError(f"{path} is not a plain tensor state dict (torch.load with weights_only=True "
                                  f"refused it: {str(err).splitlines()[0]}); skipstep never unpickles objects") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureNetworkError(f"{path} is not a state dict of tensors")
    return state


def digit_classifier_features(device: str = "cpu") -> CallableFeatures:
    """The shipped 8x8 digit classifier's penultimate features (what ``skipstep bench`` reports as FD)."""
    try:
        clf = load_digit_classifier(device=device)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise FeatureNetworkError(f"the digit classifier is not available: {err}") from err
    digest = file_sha256(DIGIT_CLASSIFIER_DIR / CLASSIFIER_WEIGHTS_NAME)[:16]
    return CallableFeatures(lambda x: clf.features(x.float()), "digit-classifier", f"digit-classifier:{digest}",
                            device, 1000)


def as_feature_extractor(obj: Any, name: str | None = None, fingerprint: str | None = None,
                         device: str | None = None) -> FeatureExtractor:
    """A :class:`FeatureExtractor` from any callable (its ``name``/``fingerprint`` attributes win if present)."""
    if isinstance(obj, FeatureExtractor) and name is None and fingerprint is None:
        return obj
    if not callable(obj):
        raise FeatureNetworkError(f"a feature network must be callable, got {type(obj).__name__}")
    name = name or getattr(obj, "name", None) or getattr(obj, "__qualname__", None) or type(obj).__name__
    fingerprint = fingerprint or getattr(obj, "fingerprint", None) or f"callable:{name}"
    return CallableFeatures(obj, str(name), str(fingerprint), device)


def _from_import_path(text: str, device: str) -> FeatureExtractor:
    module_name, _, attr = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FeatureNetworkError(f"--fid-features {text}: cannot import module {module_name!r} ({err})") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FeatureNetworkError(f"--fid-features {text}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    source = getattr(module, "__file__", None)
    digest = file_sha256(Path(source))[:12] if source and Path(source).is_file() else "nosource"
    return as_feature_extractor(obj, name=getattr(obj, "name", None) or text,
                                fingerprint=getattr(obj, "fingerprint", None) or f"{text}@{digest}")


def resolve_feature_extractor(choice: Any, device: str = "cpu", inception_weights: str | Path | None = None
                              ) -> FeatureExtractor:
    """``inception`` | ``digits`` | a TorchScript file | ``module:attribute`` | a callable -> a feature network."""
    if not isinstance(choice, (str, Path)):
        return as_feature_extractor(choice, device=device)
    text = str(choice)
    if text.lower() in ("inception", "inception-v3", "inceptionv3", "fid"):
        return InceptionFeatures(inception_weights, device=device)
    if text.lower() in ("digits", "digit-classifier", "digit_classifier"):
        return digit_classifier_features(device)
    p = Path(text).expanduser()
    if p.is_file():
        return TorchScriptFeatures(p, device=device)
    if ":" in text and not p.exists():
        return _from_import_path(text, device)
    raise FeatureNetworkError(f"--fid-features: unknown feature network {text!r}: use inception (with --inception-weights), digits, "
                              "a TorchScript file, or module:function")


# ----------------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------------
class RunningStats:
    """Streaming float64 mean and covariance (pairwise merge of per-batch moments; Chan, Golub & LeVeque)."""

    def __init__(self):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        x = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
        x = x.reshape(x.shape[0], -1)
        if x.shape[0] == 0:
            return
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf (non-finite samples?)")
        nb, mb = x.shape[0], x.mean(0)
        c = x - mb
        m2b = c.T @ c
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        if mb.shape != self.mean.shape:
            raise ValueError(f"feature dimension changed from {self.mean.shape[0]} to {mb.shape[0]}")
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    def stats(self) -> GaussianStats:
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for feature statistics, got {self.n}")
        return GaussianStats(self.mean.copy(), self.m2 / (self.n - 1))


def stats_of_samples(samples: torch.Tensor | Iterable[torch.Tensor], extractor: FeatureExtractor,
                     batch_size: int = 256) -> GaussianStats:
    """Gaussian statistics of ``extractor``'s features of ``samples`` (a tensor, or an iterable of batches)."""
    acc = RunningStats()
    batches = _chunks(samples, batch_size) if isinstance(samples, torch.Tensor) else samples
    for batch in batches:
        for chunk in _chunks(batch, batch_size):
            acc.update(extractor(chunk.float()))
    return acc.stats()


def fid_from_stats(a: GaussianStats | tuple, b: GaussianStats | tuple) -> float:
    return float(frechet_distance_from_stats(a[0], a[1], b[0], b[1]))


def save_stats(path: str | Path, stats: GaussianStats | tuple, extractor: FeatureExtractor | None = None,
               source: str = "", num_samples: int | None = None) -> Path:
    """Write ``mu``/``sigma`` (the pytorch-fid / clean-fid key names) plus the feature fingerprint, atomically."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, mu=np.asarray(stats[0], np.float64), sigma=np.asarray(stats[1], np.float64),
             format=np.array(STATS_FORMAT), source=np.array(source),
             feature_name=np.array(getattr(extractor, "name", "") or ""),
             feature_fingerprint=np.array(getattr(extractor, "fingerprint", "") or ""),
             num_samples=np.array(-1 if num_samples is None else int(num_samples)))
    atomic_write_bytes(path, buf.getvalue())
    return path


def iter_image_batches(ref: str | Path, batch_size: int = 256) -> tuple[Iterator[torch.Tensor], dict[str, Any]]:
    """Batches of images in ``[-1, 1]`` (NCHW float) from a generate output directory (``index.json``), a
    ``.safetensors`` file (tensor ``samples`` or its only tensor) or a folder of PNG/JPEG images."""
    ref = Path(ref)
    if ref.is_dir() and (ref / "index.json").is_file():
        from safetensors.torch import load_file

        index = json.loads((ref / "index.json").read_text())

        def shards():
            for entry in index["shards"]:
                yield load_file(str(ref / entry["file"]))["samples"]

        return shards(), {"kind": "skipstep generate output", "num_samples": index.get("num_samples")}
    if ref.is_file() and ref.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(ref))
        key = "samples" if "samples" in tensors else (next(iter(tensors)) if len(tensors) == 1 else None)
        if key is None:
            raise FeatureNetworkError(f"{ref}: expected a tensor named 'samples' (or a single tensor), got "
                                      f"{sorted(tensors)}")
        x = tensors[key].float()
        return iter([x]), {"kind": "safetensors samples", "num_samples": int(x.shape[0])}
    if ref.is_dir():
        files = sorted(p for p in ref.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise FeatureNetworkError(f"{ref}: no index.json and no .png/.jpg images")

        def images():
            from PIL import Image

            for start in range(0, len(files), batch_size):
                arrs = []
                for f in files[start:start + batch_size]:
                    with Image.open(f) as im:
                        a = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
                    arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
                if len({a.shape for a in arrs}) != 1:
                    raise FeatureNetworkError(f"{ref}: images of different sizes; resize them first")
                yield torch.from_numpy(np.stack(arrs)).float() / 127.5 - 1.0

        return images(), {"kind": "image folder", "num_samples": len(files)}
    raise FeatureNetworkError(f"reference {ref}: expected a statistics .npz, a generate output directory, a "
                              ".safetensors file or a folder of images")


def load_reference_stats(ref: str | Path, extractor: FeatureExtractor, batch_size: int = 256
                         ) -> tuple[GaussianStats, dict[str, Any]]:
    """Reference statistics for an FID in ``extractor``'s feature space.

    ``.npz`` files hold ``mu``/``sigma`` (or ``mean``/``cov``); one written by skipstep carries the feature
    fingerprint, and a different one is refused. Anything else is read with :func:`iter_image_batches` and
    featurised here."""
    ref = Path(ref)
    if not ref.exists():
        raise FileNotFoundError(f"FID reference {ref} not found")
    if ref.suffix == ".npz":
        with np.load(ref, allow_pickle=False) as z:
            keys = set(z.files)
            mk, ck = ("mu", "sigma") if {"mu", "sigma"} <= keys else ("mean", "cov")
            if not {mk, ck} <= keys:
                raise FeatureNetworkError(f"{ref}: expected arrays mu and sigma (or mean and cov), got {sorted(keys)}")
            stats = GaussianStats(np.asarray(z[mk], np.float64), np.asarray(z[ck], np.float64))
            fp = str(z["feature_fingerprint"]) if "feature_fingerprint" in keys else ""
            info: dict[str, Any] = {"kind": "statistics file",
                                    "num_samples": int(z["num_samples"]) if "num_samples" in keys else None}
        if fp and fp != extractor.fingerprint:
            raise FeatureNetworkError(f"{ref} was computed with feature network {fp!r}, not {extractor.fingerprint!r}"
                                      " (an FID across feature networks is meaningless)")
        if not fp:
            info["warning"] = ("the statistics carry no feature fingerprint: make sure they come from the same network "
                               "and preprocessing")
        if stats.mean.ndim != 1 or stats.cov.shape != (stats.mean.shape[0],) * 2:
            raise FeatureNetworkError(f"{ref}: mu {stats.mean.shape} and sigma {stats.cov.shape} do not match")
        return stats, info
    batches, info = iter_image_batches(ref, batch_size)
    return stats_of_samples(batches, extractor, batch_size), info


def compute_fid(samples: torch.Tensor | str | Path, reference: torch.Tensor | str | Path, features: Any = "digits",
                device: str = "cpu", inception_weights: str | Path | None = None, batch_size: int = 256) -> float:
    """FID of ``samples`` (a tensor in ``[-1, 1]`` or anything :func:`iter_image_batches` reads) against
    ``reference`` (the same, or a statistics ``.npz``) in the feature space of ``features``."""
    extractor = resolve_feature_extractor(features, device=device, inception_weights=inception_weights)
    if isinstance(samples, torch.Tensor):
        a = stats_of_samples(samples, extractor, batch_size)
    else:
        a = stats_of_samples(iter_image_batches(samples, batch_size)[0], extractor, batch_size)
    if isinstance(reference, torch.Tensor):
        b = stats_of_samples(reference, extractor, batch_size)
    else:
        b, _ = load_reference_stats(reference, extractor, batch_size)
    return fid_from_stats(a, b)


def use_feature_network(model: Any, features: Any, device: str = "cpu",
                        inception_weights: str | Path | None = None) -> FeatureExtractor:
    """Make a :class:`skipstep.lab.models.LoadedModel` report its Fréchet distances in ``features``' space."""
    extractor = resolve_feature_extractor(features, device=device, inception_weights=inception_weights)
    model.feature_fn, model.feature_name = extractor, extractor.name
    return extractor
