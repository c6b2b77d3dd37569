"""The stochastic member's step (docs/results.md, seventh round): ``skipstep bench`` with members ``sm-<change>``
registered. Each member is the default (deterministic below 8 steps, the default's placement) with, from 8 steps
on, one setting of its stochastic step changed:

* ``sm-nocorr``: ``use_corrector=False`` (the posterior step without the corrector that redoes it once the next
  evaluation is in);
* ``sm-midpoint``: ``solver_type="midpoint"`` (DPM-Solver++'s midpoint form of the order-2 step: with eta = 1
  and no corrector it equals SDE-DPM-Solver++(2M) on the same grid);
* ``sm-midpoint-nocorr``: both;
* ``sm-p1``: ``spacing_power=1`` (the DPM-Solver family's uniform grid instead of ``p = 1 + 2/n``);
* ``sm-p1-nocorr``: both;
* ``sm-o1``: ``solver_order=1`` (the skipped-step posterior with the corrector);
* ``sm-o1-nocorr``: ``solver_order=1, use_corrector=False`` (the paper's sampler on the default's grid);
* ``sm-o3``: ``solver_order=3``.

    python benchmarks/stochastic_members.py bench --model digits-eps-b --samplers default,sm-nocorr --nfe 10 \
        --seed 100 --num-samples 2000 --num-reference 5000
"""
import sys

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler

STOCHASTIC_FROM = 8  # the default's eta rule: deterministic below 8 steps

MEMBERS = {
    "nocorr": {"use_corrector": False},
    "midpoint": {"solver_type": "midpoint"},
    "midpoint-nocorr": {"solver_type": "midpoint", "use_corrector": False},
    "p1": {"spacing_power": 1.0},
    "p1-nocorr": {"spacing_power": 1.0, "use_corrector": False},
    "o1": {"solver_order": 1},
    "o1-nocorr": {"solver_order": 1, "use_corrector": False},
    "o3": {"solver_order": 3},
}


def member(overrides):
    """The default below ``STOCHASTIC_FROM`` steps; from there on the default with ``overrides``."""
    def factory(config, steps):
        if steps < STOCHASTIC_FROM:
            return default_scheduler(config)
        return default_scheduler(config, **overrides)

    return factory


for name, overrides in MEMBERS.items():
    settings = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    register_sampler(f"sm-{name}", member(overrides), family="candidate", stochastic=True, learned_variance=True,
                     description=f"the default with {settings} from {STOCHASTIC_FROM} steps",
                     settings={"guidance_scale": "passed", **overrides})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
