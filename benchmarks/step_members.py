"""The default's two members, one step setting at a time (docs/results.md, seventh and eighth rounds):
``skipstep bench`` with members ``sm-<change>`` and ``dm-<change>`` registered. The default is deterministic below
``FEW_STEPS_BELOW = 8`` steps and stochastic from there on (``eta="below:8:0:1"``); each member is the default with
one setting of one of the two changed, the other left as it is.

The stochastic member (``sm-``, from 8 steps on; seventh round):

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

The deterministic member (``dm-``, below 8 steps; eighth round), on the default's placement:

* ``dm-nocorr``: ``use_corrector=False``;
* ``dm-midpoint``: ``solver_type="midpoint"`` (with eta = 0 and no corrector, ``dm-midpoint-nocorr``, it equals
  DPM-Solver++(2M) on the same grid);
* ``dm-midpoint-nocorr``: both;
* ``dm-o1``: ``solver_order=1`` (DDIM with the corrector);
* ``dm-o3``: ``solver_order=3``;
* ``dm-o3-nocorr``: both;
* ``dm-plain``: ``spacing_power=1 + 4/n`` given explicitly, i.e. the power grid in ``t`` without the log-SNR
  matching (the default's points on a linear chain, other points on a cosine or zero-terminal-SNR one);
* ``dm-p1``: ``spacing_power=1``: ``t_i = T n/(n+1) (1 - i/n)``, the grid SA-Solver and UniPC get from a cosine
  model's ``leading`` config (3 steps: ``[750, 500, 250]``);
* ``dm-eta1``, ``dm-eta0.5``, ``dm-p1-eta1``, ``dm-p1-eta0.5``: the few-step member made stochastic (eta 1 or 0.5), on the
  default's grid or the uniform one -- SA-Solver's few-step recipe on a cosine chain is noise on that grid;
* ``dm-sigmamin``, ``dm-p1-sigmamin``: the last step stops at ``abar_0`` (``final_sigmas_type="sigma_min"``, as
  SA-Solver and DEIS end) instead of clean data, so it is a multistep (order 2) step instead of ``x0_hat``;
* ``dm-p1-eta1-nocorr``, ``dm-p1-eta1-o1``, ``dm-p1-eta1-midpoint``: ``dm-p1-eta1`` without the corrector, at
  order 1, or in the midpoint form (what separates it from SA-Solver on the same grid);
* ``dm-eta1-opt``, ``dm-eta0.5-opt``, ``dm-p1-eta1-opt``: the stochastic few-step members with Analytic-DPM's
  optimal variance (``variance_type="optimal"``, the model's ``E||eps - eps_hat||^2`` table estimated once on its
  training split) instead of the posterior's: the noise shrinks where the model's epsilon is uncertain.

(``lower_order_final`` is no member: the final step, to clean data, is first order in every plan, and the rule's
other half caps the step before it at order 2, the default's order.)

    python benchmarks/step_members.py bench --model digits-eps-b --samplers default,sm-nocorr --nfe 10 \
        --seed 100 --num-samples 2000 --num-reference 5000
"""

import sys

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler
from skipstep.timesteps import FEW_STEPS_BELOW, POWER_SLOPE

STOCHASTIC_MEMBERS = {
    "nocorr": {"use_corrector": False},
    "midpoint": {"solver_type": "midpoint"},
    "midpoint-nocorr": {"solver_type": "midpoint", "use_corrector": False},
    "p1": {"spacing_power": 1.0},
    "p1-nocorr": {"spacing_power": 1.0, "use_corrector": False},
    "o1": {"solver_order": 1},
    "o1-nocorr": {"solver_order": 1, "use_corrector": False},
    "o3": {"solver_order": 3},
}
DETERMINISTIC_MEMBERS = {
    "nocorr": {"use_corrector": False},
    "midpoint": {"solver_type": "midpoint"},
    "midpoint-nocorr": {"solver_type": "midpoint", "use_corrector": False},
    "o1": {"solver_order": 1},
    "o3": {"solver_order": 3},
    "o3-nocorr": {"solver_order": 3, "use_corrector": False},
    "plain": {"spacing_power": lambda steps: 1.0 + POWER_SLOPE / steps},
    "p1": {"spacing_power": 1.0},
    "eta1": {"eta": 1.0},
    "eta0.5": {"eta": 0.5},
    "p1-eta1": {"spacing_power": 1.0, "eta": 1.0},
    "p1-eta0.5": {"spacing_power": 1.0, "eta": 0.5},
    "sigmamin": {"final_sigmas_type": "sigma_min"},
    "p1-sigmamin": {"spacing_power": 1.0, "final_sigmas_type": "sigma_min"},
    "p1-eta1-nocorr": {"spacing_power": 1.0, "eta": 1.0, "use_corrector": False},
    "p1-eta1-o1": {"spacing_power": 1.0, "eta": 1.0, "solver_order": 1},
    "p1-eta1-midpoint": {"spacing_power": 1.0, "eta": 1.0, "solver_type": "midpoint"},
    "eta1-opt": {"eta": 1.0, "variance_type": "optimal"},
    "eta0.5-opt": {"eta": 0.5, "variance_type": "optimal"},
    "p1-eta1-opt": {"spacing_power": 1.0, "eta": 1.0, "variance_type": "optimal"},
}


def member(overrides, few_steps: bool):
    """The default with ``overrides`` below ``FEW_STEPS_BELOW`` steps (``few_steps``) or from there on (not); a
    callable value is a function of the step count."""
    def factory(config, steps):
        if (steps < FEW_STEPS_BELOW) != few_steps:
            return default_scheduler(config)
        return default_scheduler(config, **{k: v(steps) if callable(v) else v for k, v in overrides.items()})
    return factory


for prefix, members, few_steps in (("sm", STOCHASTIC_MEMBERS, False), ("dm", DETERMINISTIC_MEMBERS, True)):
    where = f"below {FEW_STEPS_BELOW} steps" if few_steps else f"from {FEW_STEPS_BELOW} steps"
    for name, overrides in members.items():
        settings = ", ".join(f"{k}={f'1 + {POWER_SLOPE:g}/n' if callable(v) else repr(v)}"
                             for k, v in overrides.items())
        register_sampler(f"{prefix}-{name}", member(overrides, few_steps), family="candidate", stochastic=True,
                         learned_variance=overrides.get("variance_type") != "optimal", description=f"the default with {settings} {where}",
                         settings={"guidance_scale": "passed", **overrides,
                                   **({"variance": "optimal"} if overrides.get("variance_type") == "optimal" else {})})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
