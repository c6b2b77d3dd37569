"""The default with another noise variance for a learned-variance model (docs/results.md, fifth round):
``skipstep bench`` with ``default-fixed_small`` (the posterior's variance: since the fifth round what the default
does, ``use_learned_variance=False``), ``default-fixed_large`` and ``default-learned`` (the model's learned
variance, ``use_learned_variance=True``: the default before the fifth round) registered.

    python benchmarks/variance_members.py bench --model digits-lv --samplers default,default-learned \
        --nfe 10,20 --seed 100,101 --num-samples 2000 --num-reference 5000
"""
import sys

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler

for variance in ("fixed_small", "fixed_large"):
    def factory(config, steps, variance=variance):
        return default_scheduler(config, variance_type=variance)  # VP only: flow models have no learned variance

    register_sampler(f"default-{variance}", factory, family="candidate", stochastic=True, learned_variance=False,
                     description=f"the default with variance_type={variance!r}")

register_sampler("default-learned", lambda config, steps: default_scheduler(config, use_learned_variance=True),
                 family="candidate", stochastic=True, learned_variance=True,
                 description="the default with the model's learned variance (use_learned_variance=True)",
                 refusal=lambda loaded: None if loaded.learned_variance else "not a learned-variance model")

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
