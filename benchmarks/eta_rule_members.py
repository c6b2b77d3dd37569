"""Per-step eta rules from the log-SNR (docs/results.md, fourth and fifth rounds): ``skipstep bench`` with members
``er-<rule>`` registered. Each member is the default (placement, order 2, corrector, deterministic below 8 steps)
with, from 8 steps on, the eta schedule ``snr-window:L:H`` (:func:`skipstep.plan.resolve_eta_schedule`: eta = 1 on
the steps that start at a full log-SNR ``lambda_t = log(alpha_t^2 / sigma_t^2)`` in ``[L, H]``, else 0) instead of
eta = 1 everywhere:

* ``er-win-L-H``: ``snr-window:L:H`` (SA-Solver's ``tau = 1 for 200 <= t <= 800`` is ``L = -6.5, H = 0.65`` on a
  linear-beta chain);
* ``er-tail-H``: ``snr-window:-inf:H``, eta = 1 while ``lambda_t <= H``, deterministic after (a deterministic tail);
* ``er-head-L``: ``snr-window:L:inf``, eta = 1 from ``lambda_t >= L`` on (a deterministic head);
* ``er-c-E``: the constant eta ``E``;
* ``er-<rule>-o3``: the same with order-3 multistep steps from 8 steps on (``tail0`` and ``c0``: the flow pair);
* ``er-few-<low>``: the VP default's ``below:8:<low>:1``, i.e. noise *below* 8 steps (``window``, ``0.5``, ``1``,
  ``snr-window:-6.5:0.65`` as ``snr``): the learned-variance pair's few-step check.

    python benchmarks/eta_rule_members.py bench --model digits --samplers default,er-tail-2 --nfe 10,15 \
        --seed 100 --num-samples 1000 --num-reference 1000
"""
import sys

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler

STOCHASTIC_FROM = 8  # the default's eta rule: deterministic below 8 steps

RULES = {}
for lo, hi in ((-6.5, 0.65), (-8.0, 2.0), (-5.0, 2.0), (-8.0, 4.0), (-4.0, 4.0)):
    RULES[f"win{lo:g}_{hi:g}"] = f"snr-window:{lo:g}:{hi:g}"
for hi in (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0):  # -3..-1: the sixth round (flow pair)
    RULES[f"tail{hi:g}"] = f"snr-window:-inf:{hi:g}"
for lo in (-8.0, -6.0, -4.0):
    RULES[f"head{lo:g}"] = f"snr-window:{lo:g}:inf"
for e in (0.0, 0.5, 0.7, 0.85):  # 0 and 0.5: the fifth round (regime pairs)
    RULES[f"c{e:g}"] = e

def member(rule, **overrides):
    """The default below ``STOCHASTIC_FROM`` steps; from there on the default with eta ``rule`` and ``overrides``."""
    def factory(config, steps):
        if steps < STOCHASTIC_FROM:
            return default_scheduler(config)
        return default_scheduler(config, eta=rule, **overrides)

    return factory


for rule_name, rule in RULES.items():
    register_sampler(f"er-{rule_name}", member(rule), family="candidate", stochastic=True, learned_variance=True,
                     description=f"the default with eta {rule} from {STOCHASTIC_FROM} steps",
                     settings={"guidance_scale": "passed"})
for rule_name in ("tail0", "c0"):
    register_sampler(f"er-{rule_name}-o3", member(RULES[rule_name], solver_order=3), family="candidate",
                     stochastic=True, learned_variance=True,
                     description=f"the default with eta {RULES[rule_name]} and order 3 from {STOCHASTIC_FROM} steps",
                     settings={"guidance_scale": "passed"})
for name, low in (("window", "window"), ("c0.5", "0.5"), ("c1", "1"), ("snr", "snr-window:-6.5:0.65")):
    register_sampler(f"er-few-{name}", lambda config, steps, low=low: default_scheduler(config, eta=f"below:8:{low}:1"),
                     family="candidate", stochastic=True, learned_variance=True,
                     description=f"the VP default with eta {low} below {STOCHASTIC_FROM} steps",
                     settings={"guidance_scale": "passed"})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
