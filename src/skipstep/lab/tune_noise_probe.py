"""Whether a model wants noise at a few steps: the probe that picks ``skipstep tune``'s objective for a
deterministic base.

The paired objective (:mod:`skipstep.lab.tune_objectives`) scores a schedule by its distance to the model's own
probability-flow ODE solution from the same ``x_T``, so it can only tune deterministic members: a tune that uses
it never learns that a model's ODE is poor. On the zoo's smaller models it is (docs/results.md, twelfth round: the
50-step ODE samples of ``digits-cfg-b`` at w = 1 are 9.7x further from its 1000-step ancestral samples in the
classifier's FD than 50-step stochastic samples are), and there eta 1 on the default's grid beats the deterministic
few-step member 5x in FD and SA-Solver on both references.

The probe draws the base's samples on its own grid at ``eta = 0`` and at constant :data:`NOISE_PROBE_ETA` from the
same common random numbers of each fit and validation seed, scores both by the pixel Fréchet distance to the
benchmark's ancestral reference set, and calls the model *noisy* when on every one of those seeds

    FD_pix(eta = 1) <= (1 - NOISE_PROBE_MIN_GAIN) * FD_pix(eta = 0).

A noisy model is tuned with the distribution objective (``pixel-fd`` against the ancestral set, eta searched), a
quiet one with the paired objective, as before. The margin is wide because a 500-sample pixel FD is noisy: eta
0.5 scored below eta 0 on models where it is worse in the classifier's FD, so only the full level is compared.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .tune_search import BaseSampler, CommonNoise, draw_samples, ramp

#: The noisy level compared with eta 0.
NOISE_PROBE_ETA = 1.0
#: The relative margin by which the noisy level must win on every probe seed.
NOISE_PROBE_MIN_GAIN = 0.1


def probe_calls(nfe: int, num_samples: int, batch_size: int, num_seeds: int) -> int:
    """Model calls of the probe's draws (two levels per seed), the reference set not counted."""
    return 2 * int(nfe) * math.ceil(int(num_samples) / int(batch_size)) * int(num_seeds)


def noise_probe(loaded, timesteps: Sequence[int], base: BaseSampler, objective: Callable, seeds: Sequence[int],
                num_samples: int, batch_size: int = 500, device: str = "cpu",
                log: Callable[[str], None] | None = None) -> dict:
    """The probe of the module docstring: ``objective`` a pixel-FD :class:`~skipstep.lab.tune_objectives.
    DistributionObjective` against the ancestral reference, ``timesteps`` the grid indices of the base's grid.
    Returns a JSON-ready record: the scores per seed, the ratio per seed and ``noisy``."""
    n = len(timesteps)
    levels = {"eta 0": ramp(0.0, 0.0, n), f"eta {NOISE_PROBE_ETA:g}": ramp(NOISE_PROBE_ETA, NOISE_PROBE_ETA, n)}
    scores: dict[str, dict[str, float]] = {}
    for seed in seeds:
        noise = CommonNoise(int(seed), int(num_samples), loaded.sample_shape)
        scores[str(int(seed))] = {name: objective(draw_samples(loaded, None, timesteps, eta, base, noise,
                                                               batch_size, device))
                                  for name, eta in levels.items()}
    quiet, noisy_name = "eta 0", f"eta {NOISE_PROBE_ETA:g}"
    ratios = {seed: (s[noisy_name] / s[quiet] if s[quiet] > 0 else math.inf) for seed, s in scores.items()}
    noisy = bool(ratios) and all(r <= 1.0 - NOISE_PROBE_MIN_GAIN for r in ratios.values())
    if log:
        log("noise probe (pixel FD vs the ancestral reference, the base's grid): "
            + "; ".join(f"seed {seed}: eta 0 {s[quiet]:.4g}, {noisy_name} {s[noisy_name]:.4g}"
                        for seed, s in scores.items())
            + (" -> noisy: objective pixel-fd, eta searched" if noisy
               else " -> not noisy: objective paired"))
    return {"eta": NOISE_PROBE_ETA, "min_gain": NOISE_PROBE_MIN_GAIN, "timesteps": [int(t) for t in timesteps],
            "scores": scores, "ratios": {k: round(v, 6) for k, v in ratios.items()}, "noisy": noisy}


__all__ = ["NOISE_PROBE_ETA", "NOISE_PROBE_MIN_GAIN", "noise_probe", "probe_calls"]
