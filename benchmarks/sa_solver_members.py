"""SA-Solver with a constant tau, beside the default's few-step members, for ``skipstep bench``.

``sa-tau0`` (tau 0 at every step: SA-Solver's deterministic predictor-corrector) and ``sa-tau1`` (tau 1 at every
step) separate SA-Solver's noise from its steps; the ``dm-*`` members of ``benchmarks/step_members.py`` are
registered too, so the two run on the same grid in one table (docs/results.md, eighth round)::

    python benchmarks/sa_solver_members.py bench --model digits-lv-b --samplers sa-solver,sa-tau0,sa-tau1,dm-p1,\\
        dm-p1-eta1 --nfe 3,4 --seed 100 --num-samples 2000 --num-reference 2000
"""

import sys
from pathlib import Path

from diffusers import SASolverScheduler

from skipstep.lab import cli
from skipstep.lab.sampler_recipes import clip_overrides, from_config_accepting, register_sampler

sys.path.insert(0, str(Path(__file__).parent))
import step_members  # noqa: E402,F401  (registers the dm-* / sm-* members)


def constant_tau(tau: float):
    def factory(config, steps):
        return from_config_accepting(SASolverScheduler, config, tau_func=lambda t: tau,
                                     **clip_overrides(config, "thresholding"))
    return factory


for _tau in (0.0, 1.0):
    register_sampler(f"sa-tau{_tau:g}", constant_tau(_tau), family="candidate", stochastic=_tau > 0,
                     learned_variance=False, description=f"diffusers SA-Solver with tau = {_tau:g} at every step",
                     settings={"class": "SASolverScheduler", "tau": _tau})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
