"""The strong-guidance exploration (docs/results.md, "Strong guidance"): ``skipstep bench`` with members
``x-<placement>-e<eta>-o<order>[-nc]`` registered -- placement ``p1``, ``p1.25``, ``pn1`` .. ``pn6`` (``p = 1 + C/n``)
or ``dflt`` (the default rule), eta 0 / 0.5 / 1, order 1 or 2, ``-nc``: without the corrector.

    python benchmarks/guidance_members.py bench --model digits-cfg --guidance-scale 8 \
        --samplers default-no-w,x-dflt-e1-o1,x-pn4-e1-o1 --nfe 5,10,20 --seed 100 --num-samples 1000
"""
import sys
from skipstep.diffusers_schedulers import SkippedStepScheduler
from skipstep.flow_schedulers import SkippedStepFlowScheduler
from skipstep.lab import cli
from skipstep.lab.candidates import PLACEMENTS
from skipstep.lab.sampler_recipes import clip_overrides, from_config_accepting, is_flow_config, register_sampler

PL = dict(PLACEMENTS)
PL["pn1"] = lambda n: 1.0 + 1.0 / n
PL["pn3"] = lambda n: 1.0 + 3.0 / n
PL["pn6"] = lambda n: 1.0 + 6.0 / n
PL["dflt"] = None
for pl, pw in PL.items():
    for eta in (0.0, 0.5, 1.0):
        for order in (1, 2):
            for corr in (True, False):
                name = f"x-{pl}-e{eta:g}-o{order}{'' if corr else '-nc'}"
                def factory(config, steps, pw=pw, eta=eta, order=order, corr=corr):
                    common = dict(eta=eta, solver_order=order, use_corrector=corr, timestep_spacing="power",
                                  spacing_power=None if pw is None else pw(steps))
                    if is_flow_config(config):
                        return from_config_accepting(SkippedStepFlowScheduler, config, **common)
                    return from_config_accepting(SkippedStepScheduler, config, **common, **clip_overrides(config, "clip_sample"))
                register_sampler(name, factory, family="candidate", stochastic=eta != 0, learned_variance=True,
                                 description=name)
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
