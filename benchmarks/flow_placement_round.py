"""Sixteenth round: where a flow model's few steps go, without leaning on the config's shift (docs/results.md).

When the round ran (commit f055f6e) the default placed ``n < 7`` steps of a flow path at the unshifted sigmas
``((n - i)/n)^p``, ``p = 1 + 4/n``, and then applied the config's ``shift``; on the flow pair (shift 2, 3) that lands
near the peers' uniform grid, on the shift-1 ``digits-flow-c`` at low noise (its report). Both folds chose
``fp-snr``, which the default now is below 7 steps (so reproduce ``default`` as it was in a worktree of that
commit, ``PYTHONPATH=/tmp/old/src``). The members place the sigmas in the model's own sigma, the
same for every shift (each built with ``shift=1`` and handed its sigmas, so nothing moves them); from 7 steps on
each is the default:

* ``fp-c2`` / ``fp-c3``: the default's grid as the shift 2 / 3 would place it, ``sigma_i = c s / (1 + (c - 1) s)``,
  ``s = ((n - i)/n)^p`` (on ``digits-flow`` ``fp-c2`` is the default, on ``digits-flow-b`` ``fp-c3`` is);
* ``fp-uni``: uniform sigmas ``(n - i)/n`` (the grid UniPC and DPM-Solver++ take from a shift-1 flow config);
* ``fp-snr``: the VP default's few-step grid on DDPM's linear chain carried to the flow path at equal log-SNR,
  ``sigma_i = 1 / (1 + exp(lambda_i / 2))``, ``lambda_i = lambda_ref(round(1000 u_i))``,
  ``u_i = n/(n+1) (1 - i/n)^p`` (:func:`skipstep.timesteps.power_grid`).

    python benchmarks/flow_placement_round.py bench --model digits-flow --samplers default,fp-c2,fp-c3,fp-uni,fp-snr \\
        --nfe 3,4,5,6 --seed 100,101 --num-samples 2000 --num-reference 5000
    python benchmarks/flow_placement_round.py score DIR [DIR ...]     # each model chooses; the other is its report

The seventeenth round asks the same from 7 steps (``fm-uni``, ``fm-snr``: those grids with the default's ``p = 1 +
2/n`` for ``fm-snr``'s log-SNRs; ``--nfe 7,8,10``, ``score --many DIR ...``; run at commit 31fef16, where ``default``
was ``fp-snr`` below 7 steps and the shifted power grid from 7). Both folds chose ``fm-uni``, which the default now
is from 7 steps.

Both rounds judged afterwards on ``digits-flow-d`` (trained as SD3 is, shift 3, after them; no choice uses it):
``fp-c3`` below 7 steps and ``fm-c3`` (the shifted power grid of shift 3 from 7 steps) are the default before the
rounds there, against ``default`` on the same report seeds (``--nfe 3,4,5,6`` / ``7,8,10,15,20 --seed 0,1,2``).
"""
import json
import sys
from pathlib import Path

import numpy as np

from skipstep import SkippedStepFlowScheduler
from skipstep.lab import cli
from skipstep.lab.sampler_recipes import is_flow_config, register_sampler
from skipstep.lab.selection import factors, quality_per_metric, scores
from skipstep.paths import RectifiedFlowPath, shift_flow_time
from skipstep.timesteps import FEW_STEPS_BELOW, reference_log_snrs, spacing_power_for

MEMBERS = ("default", "fp-c2", "fp-c3", "fp-uni", "fp-snr")
METRICS = ("fd", "fd_heldout")
STEPS = (3, 4, 5, 6)


def _shifted(c: float):
    def grid(n: int) -> list[float]:
        s = ((n - np.arange(n)) / n) ** spacing_power_for(n)
        return shift_flow_time(s, c).tolist()
    return grid


def _uniform(n: int) -> list[float]:
    return ((n - np.arange(n)) / n).tolist()


def _snr_matched(n: int) -> list[float]:
    return RectifiedFlowPath().time_at_log_snr(reference_log_snrs(n, spacing_power_for(n))).tolist()


GRIDS = {"fp-c2": _shifted(2.0), "fp-c3": _shifted(3.0), "fp-uni": _uniform, "fp-snr": _snr_matched}
#: the seventeenth round: the same question from 7 steps (the default's grid there is ``((n - i)/n)^(1 + 2/n)``, then
#: the shift); below 7 steps these members are the default (since the sixteenth round ``fp-snr``)
MANY_STEP_GRIDS = {"fm-uni": _uniform, "fm-snr": _snr_matched}
MANY_STEP_MEMBERS = ("default", *MANY_STEP_GRIDS)
#: not a member: the default before the seventeenth round from 7 steps on a shift-3 model (``fp-c3`` is the one
#: before the sixteenth below 7), to judge both rounds on ``digits-flow-d``, which neither saw
PREVIOUS_GRIDS = {"fm-c3": _shifted(3.0)}
MANY_STEPS = (7, 8, 10)


class _PlacedFlowScheduler(SkippedStepFlowScheduler):
    """The default flow scheduler with ``grid(n)`` as its sigmas below ``FEW_STEPS_BELOW`` steps (built with
    ``shift=1``, so the sigmas are the model's own)."""

    grid = None
    many = False  # the seventeenth round's members: their grid from FEW_STEPS_BELOW steps on instead

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None and num_inference_steps is not None \
                and (num_inference_steps >= FEW_STEPS_BELOW) == type(self).many:
            sigmas = type(self).grid(num_inference_steps)
        return super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def _member(name: str, grid, many: bool = False):
    placed = type(f"Placed_{name}", (_PlacedFlowScheduler,), {"grid": staticmethod(grid), "many": many})

    def factory(config, steps):
        if not is_flow_config(config):
            raise ValueError(f"{name} is a flow-path member")
        if (steps >= FEW_STEPS_BELOW) != many:
            return SkippedStepFlowScheduler.from_config(dict(config))
        return placed.from_config(dict(config), shift=1.0)
    return factory


for _name, _grid in GRIDS.items():
    register_sampler(_name, _member(_name, _grid), family="candidate", stochastic=True,
                     description=f"the default flow scheduler with the {_name} sigmas below {FEW_STEPS_BELOW} steps")
for _name, _grid in {**MANY_STEP_GRIDS, **PREVIOUS_GRIDS}.items():
    register_sampler(_name, _member(_name, _grid, many=True), family="candidate", stochastic=True,
                     description=f"the default flow scheduler with the {_name} sigmas from {FEW_STEPS_BELOW} steps")


def score(dirs: list[str], many: bool = False) -> str:
    """Each model's choice over NFE 3-6 (``many``: 7, 8, 10) and both metrics (the other model is its report)."""
    members, steps = (MANY_STEP_MEMBERS, MANY_STEPS) if many else (MEMBERS, STEPS)
    records = [r for d in dirs for r in json.loads((Path(d) / "results.json").read_text())
               if r["sampler"] in members and int(r["nfe"]) in steps]
    quality = quality_per_metric(records, METRICS)
    models = sorted({r["model"] for r in records})
    present = [c for c in members if any(key[0] == c for key in quality)]
    lines = ["| chosen on | choice (score) | the others |", "|---|---|---|"]
    for model in models + [None]:
        on = [model] if model else models
        ranking = scores(quality, present, factors(on, METRICS), list(steps))
        rest = ", ".join(f"`{c}` {v:.3f}" for c, v in ranking[1:])
        lines.append(f"| {model or 'both'} | `{ranking[0][0]}` {ranking[0][1]:.3f} | {rest} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        many = "--many" in sys.argv
        print(score([a for a in sys.argv[2:] if a != "--many"], many))
        sys.exit(0)
    sys.exit(cli.main(sys.argv[1:]))
