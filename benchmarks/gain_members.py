"""An extrapolation gain on the order-2 term of the posterior step, for ``skipstep bench`` (docs/results.md, the
order-2 gain probe).

The family's order-2 predictor uses ``D = w_0 x0_hat(lambda_t) + w_1 x0_hat(lambda_prev)`` with the exact weights of
the line through the two predictions (``w_0 + w_1 = 1``), i.e. ``D = x0_0 + w_1 (x0_1 - x0_0)``. SA-Solver's second
step on ``digits-lv-b`` was found to be that step with the order-2 term multiplied by 1.443. The member ``g<G>-<base>``
is the base member with (``gn<A>-<base>``: ``G = 1 + A/n`` at ``n`` steps; ``gc<K>-<base>``: ``G = 1 + (K/n)^3``;
``hg<G>-dm``: the default below 8 steps and the gain ``G`` from 8 on, the stochastic regime)

    D = x0_0 + G w_1 (x0_1 - x0_0),

on every order-2 predictor step (the corrector is left as it is). Bases: ``dm`` (the default), ``dm-p1-eta1``
(the default on the uniform grid at eta 1, the few-step member closest to SA-Solver).

    python benchmarks/gain_members.py score [--per-nfe] DIR [DIR ...]    # the folds over the runs' models

    python benchmarks/gain_members.py bench --model digits-lv-b --samplers default,g1.44-dm,dm-p1-eta1,g1.44-dm-p1-eta1 \\
        --nfe 3,4 --seed 100 --num-samples 2000 --num-reference 2000
"""

import json
import sys
from pathlib import Path

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler
from skipstep.lab.selection import render_selection, select
from skipstep.timesteps import FEW_STEPS_BELOW

sys.path.insert(0, str(Path(__file__).parent))
import step_members  # noqa: E402,F401  (registers the dm-* / sm-* members)

GAINS = (1.0, 1.2, 1.44, 1.7, 2.0, 2.5, 3.0)
#: ``gn<A>-<base>``: the gain ``1 + A/n`` at ``n`` steps
STEP_COUNT_GAINS = (1.0, 2.0, 3.0, 4.0, 5.0)
#: ``gc<K>-<base>``: the gain ``1 + (K/n)^3`` at ``n`` steps (the per-NFE choices of the first round fall as fast)
CUBIC_GAINS = (2.5, 3.0, 3.5)
#: ``hg<G>-dm``: the default below ``FEW_STEPS_BELOW`` steps, the gain ``G`` from there on (the stochastic regime)
MANY_STEP_GAINS = (0.8, 1.0, 1.2, 1.44, 1.7, 2.0)
BASES = {"dm": {}, "dm-p1-eta1": {"spacing_power": 1.0, "eta": 1.0}, "dm-p1": {"spacing_power": 1.0}}


def member(overrides: dict, gain):
    """The base member with ``extrapolation_gain`` (a number, or a function of the step count) below
    ``FEW_STEPS_BELOW`` steps; from there on the default (whose rule is 1 there)."""
    def factory(config, steps):
        if steps >= FEW_STEPS_BELOW:
            return default_scheduler(config)
        return default_scheduler(config, **overrides, extrapolation_gain=gain(steps) if callable(gain) else gain)
    return factory


for _base, _overrides in BASES.items():
    for _gain in GAINS:
        register_sampler(f"g{_gain:g}-{_base}", member(_overrides, _gain), family="candidate", stochastic=True,
                         learned_variance=True,
                         description=f"{_base} with the order-2 term times {_gain:g} below {FEW_STEPS_BELOW} steps",
                         settings={"guidance_scale": "passed", **_overrides, "extrapolation_gain": _gain})
    for _a in STEP_COUNT_GAINS:
        register_sampler(f"gn{_a:g}-{_base}", member(_overrides, lambda n, a=_a: 1.0 + a / n), family="candidate",
                         stochastic=True, learned_variance=True,
                         description=f"{_base} with the order-2 term times 1 + {_a:g}/n below {FEW_STEPS_BELOW} steps",
                         settings={"guidance_scale": "passed", **_overrides, "extrapolation_gain": f"1 + {_a:g}/n"})
    for _k in CUBIC_GAINS:
        register_sampler(f"gc{_k:g}-{_base}", member(_overrides, lambda n, k=_k: 1.0 + (k / n) ** 3),
                         family="candidate", stochastic=True, learned_variance=True,
                         description=f"{_base} with the order-2 term times 1 + ({_k:g}/n)^3 below {FEW_STEPS_BELOW} steps",
                         settings={"guidance_scale": "passed", **_overrides, "extrapolation_gain": f"1 + ({_k:g}/n)^3"})


def many_step_member(gain: float):
    """The default below ``FEW_STEPS_BELOW`` steps; from there on the default with ``extrapolation_gain=gain``."""
    def factory(config, steps):
        if steps < FEW_STEPS_BELOW:
            return default_scheduler(config)
        return default_scheduler(config, extrapolation_gain=gain)
    return factory


for _gain in MANY_STEP_GAINS:
    register_sampler(f"hg{_gain:g}-dm", many_step_member(_gain), family="candidate", stochastic=True,
                     learned_variance=True,
                     description=f"the default with the order-2 term times {_gain:g} from {FEW_STEPS_BELOW} steps",
                     settings={"guidance_scale": "passed", "extrapolation_gain": _gain})


def score(dirs: list[str], per_nfe: bool = False) -> str:
    """The leave-one-model-out folds over the members of the runs in ``dirs`` (both metrics, then each), over all
    their NFEs at once or (``per_nfe``) one NFE at a time -- a choice of the gain per step count."""
    records = [r for d in dirs for r in json.loads((Path(d) / "results.json").read_text())]
    models = sorted({r["model"] for r in records})
    nfes = sorted({int(r["nfe"]) for r in records})
    out = []
    for group in ([[n] for n in nfes] if per_nfe else [nfes]):
        cands = sorted({r["sampler"] for r in records if int(r["nfe"]) in group})
        out += [f"## NFE {', '.join(map(str, group))}"]
        out += [render_selection(select(records, cands, models, group, metric=m), top=5)
                for m in (["fd", "fd_heldout"], ["fd"], ["fd_heldout"])]
    return "\n\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        args = sys.argv[2:]
        print(score([a for a in args if a != "--per-nfe"], per_nfe="--per-nfe" in args))
        sys.exit(0)
    sys.exit(cli.main(sys.argv[1:]))
