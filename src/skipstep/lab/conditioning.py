"""Class-conditional models in the lab: which label each sample asks for, and classifier-free guidance.

**Labels.** A class-conditional model has ``K`` real labels (its class embeddings without the null label, in
increasing order: ``0..9`` for the digits zoo, whose null label is 10). Sample ``i`` of a set -- its index among
the set's ``N`` samples, the same index that fixes its initial noise -- asks for::

    label(i) = real_labels[i mod K]

so the labels are balanced over the classes (counts differ by at most one; exactly ``N/K`` each when ``K`` divides
``N``), every sampler of a seed gets the same labels sample for sample, and a reference set of ``N`` samples has
the same label counts as a cell of ``N`` samples. ``skipstep generate`` uses the same rule on its global indices.

**Classifier-free guidance** (Ho & Salimans 2022) with scale ``w``, on the first ``C`` output channels::

    out = out_u + w (out_c - out_u),   out_c = net(x, t, y),   out_u = net(x, t, null)

(linear in the output, so the same for epsilon, v and velocity outputs). ``out_c`` and ``out_u`` come from ONE
network call on the batch ``[x; x]`` with labels ``[y; null]``: that call is one network evaluation (NFE) of
twice the batch, i.e. two unbatched network calls. ``w = 1`` is the plain conditional model and ``w = 0`` the
unconditional one: each needs one branch only and makes one call of the batch itself. A learned-variance model
keeps the conditional branch's variance channels (as GLIDE, ADM and DiT do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..steps import check_guidance_hint

__all__ = ["ClassConditioning", "GuidedModel", "balanced_subset", "check_guidance_scale"]


def check_guidance_scale(value, option: str = "--guidance-scale") -> float:
    """A guidance scale given as text or a number: parsed here, its range checked by the core's
    :func:`skipstep.steps.check_guidance_hint` (a finite ``w >= 0``; ``1``: the conditional model, ``0``: the
    unconditional), the error naming ``option``."""
    expected = f"{option}: expected a finite number >= 0 (1 = the plain conditional model), got {value!r}"
    if isinstance(value, bool):
        raise ValueError(expected)
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    try:
        return check_guidance_hint(w)
    except ValueError:
        raise ValueError(expected) from None


@dataclass(frozen=True)
class ClassConditioning:
    """A UNet that takes ``class_labels``: ``num_class_embeds`` embeddings, one of which is the null label."""

    num_class_embeds: int
    null_label: int
    #: where the null label came from (training_info.json, model_index.json, --null-label, the zoo table)
    null_label_source: str

    @property
    def real_labels(self) -> list[int]:
        return [k for k in range(self.num_class_embeds) if k != self.null_label]

    @property
    def num_classes(self) -> int:
        return self.num_class_embeds - 1

    def labels_for(self, indices: Sequence[int] | range) -> torch.Tensor:
        """``real_labels[i mod K]`` for every sample index ``i`` (int64)."""
        real = torch.tensor(self.real_labels, dtype=torch.int64)
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return real[idx % len(real)]

    def describe(self) -> str:
        return (f"class-conditional: {self.num_classes} classes {self.real_labels[0]}..{self.real_labels[-1]}, null "
                f"label {self.null_label} ({self.null_label_source}); sample i asks for real_labels[i mod "
                f"{self.num_classes}]")

    def info(self) -> dict:
        return {"num_class_embeds": self.num_class_embeds, "null_label": self.null_label,
                "null_label_source": self.null_label_source, "num_classes": self.num_classes,
                "label_rule": f"sample i asks for real_labels[i mod {self.num_classes}]"}


class GuidedModel:
    """``model(x, t)`` of a class-conditional network at guidance scale ``w`` for one batch of labels (see the
    module docstring). ``branches`` is the number of network branches one call evaluates (2 for a batched CFG
    call, else 1): one call counts as one NFE and ``branches`` unbatched network calls. ``channels``: how many
    leading output channels are guided (the sample's; learned-variance outputs have twice as many)."""

    def __init__(self, net: Callable[..., torch.Tensor], labels: torch.Tensor, null_label: int, scale: float,
                 channels: int):
        self.net, self.scale, self.channels = net, float(scale), int(channels)
        self.labels = labels
        self.null = torch.full_like(labels, int(null_label))
        self.branches = 1 if self.scale in (0.0, 1.0) else 2

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        labels = self.labels.to(x.device)
        if self.scale == 1.0:
            return self.net(x, t, class_labels=labels)
        if self.scale == 0.0:
            return self.net(x, t, class_labels=self.null.to(x.device))
        t = torch.as_tensor(t, device=x.device)
        t2 = torch.cat([t, t]) if t.ndim else t
        out_c, out_u = self.net(torch.cat([x, x]), t2, class_labels=torch.cat([labels, self.null.to(x.device)])
                                ).chunk(2)
        c = self.channels
        guided = out_u[:, :c] + self.scale * (out_c[:, :c] - out_u[:, :c])
        return guided if out_c.shape[1] == c else torch.cat([guided, out_c[:, c:]], dim=1)


def balanced_subset(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Indices of a class-balanced subset: for each class, its first ``m`` examples, ``m`` = the smallest class
    count (so every class appears equally often, as in the generated sets)."""
    labels = torch.as_tensor(labels)
    groups = [(labels == k).nonzero().flatten() for k in classes]
    m = min(int(g.numel()) for g in groups)
    if m == 0:
        raise ValueError(f"a class-balanced subset needs every class {list(classes)} in the data")
    return torch.cat([g[:m] for g in groups]).sort().values
