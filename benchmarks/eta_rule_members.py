"""Per-step eta rules from the log-SNR (docs/results.md, fourth round): ``skipstep bench`` with members
``er-<rule>`` registered. Each member is the default (placement, order 2, corrector, deterministic below 8 steps)
with, from 8 steps on, eta per step from the full log-SNR ``lambda_t = log(alpha_t^2 / sigma_t^2)`` at the step's
start instead of eta = 1 everywhere:

* ``er-win-L-H``: eta = 1 where ``L <= lambda_t <= H``, else 0 (SA-Solver's ``tau = 1 for 200 <= t <= 800`` is
  ``L = -6.5, H = 0.65`` on a linear-beta chain);
* ``er-tail-H``: eta = 1 while ``lambda_t <= H``, deterministic after (a deterministic tail);
* ``er-head-L``: eta = 1 from ``lambda_t >= L`` on (a deterministic head);
* ``er-c-E``: the constant eta ``E``.

    python benchmarks/eta_rule_members.py bench --model digits --samplers default,er-tail-2 --nfe 10,15 \
        --seed 100 --num-samples 1000 --num-reference 1000
"""
import math
import sys

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler

STOCHASTIC_FROM = 8  # the default's eta rule: deterministic below 8 steps


def step_log_snrs(config, steps):
    """``lambda_t`` at the start of each of the default's ``steps`` steps."""
    probe = default_scheduler(config)
    probe.set_timesteps(steps)
    return [2.0 * (math.log(p.alpha_t) - math.log(p.sigma_t)) if p.alpha_t > 0 else -math.inf for p in probe._plan]


RULES = {}
for lo, hi in ((-6.5, 0.65), (-8.0, 2.0), (-5.0, 2.0), (-8.0, 4.0), (-4.0, 4.0)):
    RULES[f"win{lo:g}_{hi:g}"] = lambda lam, lo=lo, hi=hi: 1.0 if lo <= lam <= hi else 0.0
for hi in (0.0, 1.0, 2.0, 3.0, 4.0):
    RULES[f"tail{hi:g}"] = lambda lam, hi=hi: 1.0 if lam <= hi else 0.0
for lo in (-8.0, -6.0, -4.0):
    RULES[f"head{lo:g}"] = lambda lam, lo=lo: 1.0 if lam >= lo else 0.0
for e in (0.0, 0.5, 0.7, 0.85):  # 0 and 0.5: the fifth round (regime pairs)
    RULES[f"c{e:g}"] = lambda lam, e=e: e

for rule_name, rule in RULES.items():
    def factory(config, steps, rule=rule):
        if steps < STOCHASTIC_FROM:
            return default_scheduler(config)
        return default_scheduler(config, eta=[rule(lam) for lam in step_log_snrs(config, steps)])

    register_sampler(f"er-{rule_name}", factory, family="candidate", stochastic=True, learned_variance=True,
                     description=f"the default with eta rule {rule_name} from {STOCHASTIC_FROM} steps",
                     settings={"guidance_scale": "passed"})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
