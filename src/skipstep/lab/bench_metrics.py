"""The benchmark's metrics for one model and one reference set, and its floors.

Per cell (:class:`MetricContext`), against the reference set at the cell's guidance scale:

* ``fd`` -- Fréchet distance of Gaussian fits in the feature space (the digit classifier's for 1x8x8 models);
* ``precision``, ``recall`` -- improved precision/recall (k = 3) in the same space (pixels without features);
* ``sw`` -- sliced 2-Wasserstein in pixel space;
* ``fd_heldout`` -- FD against the real held-out images (digits models; class-balanced for conditional models:
  :func:`skipstep.lab.models.heldout_for`);
* ``class_match`` -- conditional models: the fraction of samples the digit classifier assigns to the class
  they asked for (not at guidance 0, where no class is asked for);
* ``mode_tv``, ``spread_ratio`` -- analytic mixtures (exact).

Floors (:func:`floors`): exact data samples of each seed (analytic models); real train vs real held-out digits,
and the reference vs real held-out (digits models); the ``reference-1000`` sampler in ``--samplers`` scores an
independent reference set per seed -- the distance between two reference sets, the finite-sample floor.
"""

from __future__ import annotations

import numpy as np
import torch

from . import metrics as M
from .loaded_model import LoadedModel
from .models import heldout_for

__all__ = ["MetricContext", "PR_K", "SW_PROJECTIONS", "floors", "pair_metrics"]

SW_PROJECTIONS = 256
PR_K = 3
#: Precision/recall in pixel space is skipped above this many dimensions (it is O(N^2 D)).
PR_PIXEL_MAX_DIM = 4096


class MetricContext:
    """Reference-side quantities computed once per (run, guidance scale): features, Gaussian statistics."""

    def __init__(self, loaded: LoadedModel, reference: torch.Tensor):
        self.loaded = loaded
        self.reference = reference
        self.dim = int(np.prod(loaded.sample_shape))
        self.ref_feats = self._features(reference) if loaded.feature_fn is not None else None
        self.ref_stats = M.gaussian_stats(self.ref_feats) if self.ref_feats is not None else None
        self.heldout_stats = None
        self.fid_reference_stats = None
        heldout = heldout_for(loaded)
        if heldout is not None and loaded.feature_fn is not None:
            self.heldout_stats = M.gaussian_stats(self._features(heldout))

    def _features(self, x: torch.Tensor) -> np.ndarray:
        return M.compute_features(x, self.loaded.feature_fn, batch_size=1000)

    @property
    def main_metric(self) -> str:
        return "fd" if self.ref_feats is not None else "sw"

    def __call__(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """The metrics of ``samples`` (``labels``: the classes they asked for, for ``class_match``)."""
        samples = samples.float()
        if not bool(torch.isfinite(samples).all()):
            bad = float((~torch.isfinite(samples.reshape(samples.shape[0], -1))).any(1).float().mean())
            return {"nonfinite_fraction": bad}
        out: dict[str, float] = {}
        if self.ref_feats is not None:
            feats = self._features(samples)
            out["fd"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.ref_stats)
            if self.fid_reference_stats is not None:
                out["fid_ref"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.fid_reference_stats)
            out["precision"], out["recall"] = M.precision_recall(self.ref_feats, feats, k=PR_K)
            if self.heldout_stats is not None:
                out["fd_heldout"] = M.frechet_distance_from_stats(*M.gaussian_stats(feats), *self.heldout_stats)
        elif self.dim <= PR_PIXEL_MAX_DIM:
            out["precision"], out["recall"] = M.precision_recall(self.reference, samples, k=PR_K)
        out["sw"] = M.sliced_wasserstein(samples, self.reference, num_projections=SW_PROJECTIONS, seed=0)
        if self.loaded.reference is not None:
            out.update(self.loaded.reference.metrics(samples))
        if labels is not None and self.loaded.classifier_fn is not None and self.loaded.guidance_scale != 0:
            out["class_match"] = M.class_match(M.compute_features(samples, self.loaded.classifier_fn, 1000), labels)
        return {k: float(v) for k, v in out.items()}


def pair_metrics(loaded: LoadedModel, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """``sw`` (and ``fd`` with a feature network) between two sample sets."""
    out = {"sw": M.sliced_wasserstein(a, b, num_projections=SW_PROJECTIONS, seed=0)}
    if loaded.feature_fn is not None:
        fa = M.compute_features(a, loaded.feature_fn, 1000)
        fb = M.compute_features(b, loaded.feature_fn, 1000)
        out["fd"] = M.frechet_distance(fa, fb)
    return out


def _mean_std_dicts(dicts: list[dict]) -> dict[str, list[float]]:
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    out = {}
    for k in keys:
        vals = [d[k] for d in dicts if k in d]
        out[k] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None]
    return out


def floors(loaded: LoadedModel, reference: torch.Tensor, ctx: MetricContext, num_samples: int,
           seeds: list[int]) -> list[dict]:
    """What a perfect sampler would score: exact samples vs the reference (analytic models), and real-data
    comparisons (digits models; class-balanced held-out digits for conditional models, with their
    ``class_match``: the classifier's accuracy on real digits)."""
    rows = []
    if loaded.reference is not None:
        per_seed = [ctx(loaded.reference.sample(num_samples, seed)) for seed in seeds]
        rows.append({"name": f"exact data samples ({num_samples} per seed) vs reference",
                     "what": "finite-sample floor: a perfect sampler scores this",
                     "metrics": _mean_std_dicts(per_seed)})
    real = loaded.real_data or {}
    train, heldout = real.get("train"), heldout_for(loaded)
    balanced = " (class-balanced)" if loaded.conditioning is not None else ""
    if train is not None and heldout is not None:
        rows.append({"name": f"real train ({len(train)}) vs real held-out ({len(heldout)}{balanced})",
                     "what": "data floor: FD between two real digit sets",
                     "metrics": {k: [v, None] for k, v in pair_metrics(loaded, train, heldout).items()}})
    if heldout is not None:
        row = {k: [v, None] for k, v in pair_metrics(loaded, reference, heldout).items()}
        labels = loaded.labels_for(range(len(reference)))
        if labels is not None and loaded.classifier_fn is not None and loaded.guidance_scale != 0:
            row["class_match"] = [M.class_match(M.compute_features(reference, loaded.classifier_fn, 1000), labels), None]
        rows.append({"name": f"reference ({len(reference)}) vs real held-out ({len(heldout)}{balanced})",
                     "what": "how far the model's converged samples are from real data", "metrics": row})
    if loaded.classifier_fn is not None and real.get("heldout_labels") is not None:
        logits = M.compute_features(real["heldout"], loaded.classifier_fn, 1000)
        rows.append({"name": f"real held-out digits ({len(real['heldout'])}) with their labels",
                     "what": "class_match ceiling: the digit classifier's accuracy on real digits",
                     "metrics": {"class_match": [M.class_match(logits, real["heldout_labels"]), None]}})
    return rows
