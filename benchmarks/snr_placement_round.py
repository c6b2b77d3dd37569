"""The third selection round (docs/results.md, section 1): the power grid carried over from the reference DDPM chain
at equal log-SNR (:func:`skipstep.timesteps.snr_matched_power_grid`) against the plain power grid, as either member
of the default's step-count composite ``below:8``.

``python benchmarks/snr_placement_round.py bench ...`` is ``skipstep bench`` with two more candidates registered:
``x-snr-e0`` / ``x-snr-e1`` -- ``cand-pn4-e0-o2`` / ``cand-pn4-e1-o2`` with the matched grid at every step count
(the library's default rule matches only below ``FEW_STEPS_BELOW``; the flow scheduler has no matching, so on a
flow model they are the plain candidates). ``python benchmarks/snr_placement_round.py score DIR [DIR ...]`` ranks
the composites (low member for NFE < 8, high member from 8) leave-one-model-out from the cells in DIRs: low
``cand-pn4-e0-o2`` or ``x-snr-e0``; high ``cand-pn4-e1-o2``, ``x-snr-e1``, ``cand-pn2-e1-o2`` or ``cand-p1-e1-o2``
(the stochastic member's placement, ``p = 1 + 4/n``, matched, ``1 + 2/n`` or 1). ``--first`` scores only the four
composites of the first scoring (the matched grid as the one lever).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import torch

from skipstep.diffusers_schedulers import SkippedStepScheduler
from skipstep.lab import cli
from skipstep.lab.candidates import PLACEMENTS, build_candidate
from skipstep.lab.sampler_recipes import (
    clip_overrides,
    from_config_accepting,
    is_flow_config,
    register_sampler,
)
from skipstep.lab.selection import render_selection, select, step_count_composites
from skipstep.timesteps import (
    FEW_STEPS_BELOW,
    make_strictly_descending,
    power_grid,
    snr_matched_power_grid,
)

MEMBERS = {"x-snr-e0": 0.0, "x-snr-e1": 1.0}
PLAIN = {"x-snr-e0": "cand-pn4-e0-o2", "x-snr-e1": "cand-pn4-e1-o2"}
LOWS = ["cand-pn4-e0-o2", "x-snr-e0"]
HIGHS = ["cand-pn4-e1-o2", "x-snr-e1", "cand-pn2-e1-o2", "cand-p1-e1-o2"]


class SnrMatchedAtEveryStepCount(SkippedStepScheduler):
    def spaced_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        n, power = num_inference_steps, PLACEMENTS["pn4"](num_inference_steps)
        ts = snr_matched_power_grid(self.path, n, power)
        if ts is None:  # the chain does not reach the reference's log-SNRs: the plain grid, as the library does
            ts = (power_grid(n, power) * self.path.num_train_timesteps).round()
        return torch.as_tensor(make_strictly_descending(ts, highest=self.path.t_max))


def _factory(eta: float):
    def factory(config: dict, steps: int):
        if is_flow_config(config):
            return build_candidate(config, steps, PLACEMENTS["pn4"](steps), eta, 2)
        return from_config_accepting(SnrMatchedAtEveryStepCount, config, eta=eta, solver_order=2, use_corrector=True,
                                     timestep_spacing="power", spacing_power=None,
                                     **clip_overrides(config, "clip_sample"))
    return factory


def score(dirs: list[str], highs: list[str] = HIGHS) -> str:
    seen = {}
    for d in dirs:
        for f in glob.glob(f"{d}/cells/*/*.json"):
            r = json.loads(Path(f).read_text())
            if r["sampler"] in (*LOWS, *highs):  # one record per cell where directories overlap
                seen[(r["sampler"], r["model"], r["nfe"], r["seed"], r.get("guidance_scale"))] = r
    recs = list(seen.values())
    comps = []
    for low in LOWS:
        comps += step_count_composites(recs, low, highs, [FEW_STEPS_BELOW])
    cands = sorted({r["sampler"] for r in comps})
    models = sorted({r["model"] for r in comps})
    return "\n\n".join(render_selection(select(comps, cands, models, [4, 6, 10, 15], metric=m), top=4)
                       for m in (["fd", "fd_heldout"], ["fd"], ["fd_heldout"]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        first = "--first" in sys.argv
        dirs = [a for a in sys.argv[2:] if a != "--first"]
        print(score(dirs, HIGHS[:2] if first else HIGHS))
        sys.exit(0)
    for name, eta in MEMBERS.items():
        register_sampler(name, _factory(eta), family="candidate", stochastic=eta != 0, learned_variance=True,
                         description=f"{PLAIN[name]} with the log-SNR-matched power grid at every step count")
    sys.exit(cli.main(sys.argv[1:]))
