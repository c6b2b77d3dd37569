"""The default with a fixed variance instead of a learned-variance model's own (docs/results.md, "Summary"):
``skipstep bench`` with ``default-fixed_small`` (the posterior's variance) and ``default-fixed_large`` registered.

    python benchmarks/variance_members.py bench --model digits-lv --samplers default,default-fixed_small \
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

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
