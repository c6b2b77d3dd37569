"""skipstep's lab: the harness that measures the library -- model and sampler registries, sample sets and
references, the benchmark and its reports, the tuning search, sharded generation, FID and metrics, the testbeds
and their training, and the command line. The library (:mod:`skipstep`) never imports this package.
"""
