"""Pilots after the web UIs' peers (docs/results.md, section 1, "Pilots: the web UIs' grids and a damped order 3"):
one selection seed, no fold, to see whether a lever is worth a round. Each member is the default below
``FEW_STEPS_BELOW`` steps and changes one thing from there on (the stochastic member).

VP chains, the placement (``python benchmarks/pilot_members.py bench --model M --samplers default,kp-karras,... ``):

* ``kp-karras``: Karras sigmas (rho 7) over the chain's whole sigma range, as DPM-Solver++ Karras gets them (the last
  evaluation at ``t = 0``);
* ``kp-karras-n1``: the first ``n`` of ``n + 1`` Karras sigmas (no evaluation at ``t = 0``);
* ``kp-exp-n1``: the first ``n`` of ``n + 1`` exponential sigmas (uniform in log-SNR over the chain's range);
* ``kp-lsu``: uniform in log-SNR between the default grid's first and last timestep.

The step (both path kinds): ``o3-*`` order 3 (``-e1``: eta 1 at every step, flow paths included; ``-nc``: no
corrector; ``-mid``: midpoint form of the order-2 warm-up), ``o2-e1`` / ``o2-e1-mid-nc`` order 2 with eta 1 (the
latter SDE-DPM-Solver++(2M) on the default's grid). ``--third-order-weight K`` (first argument) multiplies the
order-3 term of every multistep row, ``w3 = w2 + K (w3 - w2)``: ``K = 1`` is the exact integral of the quadratic
interpolant (the library's order 3), ``K = 1/2`` about DPM-Solver++(3M)'s weight on the second divided difference
(docs/drop_in.md, order 3). A probe of the harness only: it wraps ``skipstep.plan.x0_weight_rows`` in this process.
"""
import sys

import numpy as np
import torch

import skipstep.plan as plan
from skipstep.diffusers_schedulers import SkippedStepScheduler
from skipstep.lab import cli
from skipstep.lab.sampler_recipes import clip_overrides, from_config_accepting, is_flow_config, register_sampler
from skipstep.posterior import x0_weight_rows
from skipstep.timesteps import (FEW_STEPS_BELOW, make_strictly_descending, power_timesteps, sigma_spaced_timesteps,
                                spacing_power_for)
from step_members import member  # the default with settings changed from FEW_STEPS_BELOW steps on


def _log_snr_uniform(path, n: int) -> torch.Tensor:
    ends = power_timesteps(path, n, spacing_power_for(n))[[0, -1]].double()
    lam = torch.linspace(float(path.log_snr(ends[0])), float(path.log_snr(ends[1])), n, dtype=torch.float64)
    return torch.as_tensor(make_strictly_descending(path.time_at_log_snr(lam).numpy().round(), highest=path.t_max))


GRIDS = {"kp-karras": lambda path, n: sigma_spaced_timesteps(path, n, "karras"),
         "kp-karras-n1": lambda path, n: sigma_spaced_timesteps(path, n + 1, "karras")[:-1],
         "kp-exp-n1": lambda path, n: sigma_spaced_timesteps(path, n + 1, "exponential")[:-1],
         "kp-lsu": _log_snr_uniform}
STEPS = {"o3-e1-nc": dict(eta=1.0, solver_order=3, use_corrector=False),
         "o3-e1-mid-nc": dict(eta=1.0, solver_order=3, use_corrector=False, solver_type="midpoint"),
         "o3-e1": dict(eta=1.0, solver_order=3),
         "o3-nc": dict(solver_order=3, use_corrector=False),
         "o3": dict(solver_order=3),
         "o2-e1": dict(eta=1.0),
         "o2-e1-mid-nc": dict(eta=1.0, solver_type="midpoint", use_corrector=False)}


def _placed(name: str, grid):
    def spaced_timesteps(self, n: int) -> torch.Tensor:
        if n >= FEW_STEPS_BELOW and self._guidance is None or n >= 8:  # under guidance the placement splits at 8
            return grid(self.path, n)
        return SkippedStepScheduler.spaced_timesteps(self, n)
    cls = type(name, (SkippedStepScheduler,), {"spaced_timesteps": spaced_timesteps})

    def factory(config: dict, steps: int):
        if is_flow_config(config):
            raise ValueError(f"{name} is a VP-chain member")
        return from_config_accepting(cls, dict(config), **clip_overrides(config, "clip_sample"))
    return factory


def weight_third_order(k: float) -> None:
    """Make every order-3 row ``w2 + k (w3 - w2)`` in this process (``w2``: the order-2 row, zero-padded)."""
    def rows(solver_type, lambdas, lambda_s, eta):
        full = x0_weight_rows(solver_type, lambdas, lambda_s, eta)
        if full.shape[1] != 3:
            return full
        two = x0_weight_rows(solver_type, np.atleast_2d(np.asarray(lambdas, dtype=np.float64))[:, :2], lambda_s, eta)
        two = np.concatenate([two, np.zeros((two.shape[0], 1))], axis=1)
        return two + k * (full - two)
    plan.x0_weight_rows = rows


for _name, _grid in GRIDS.items():
    register_sampler(_name, _placed(_name, _grid), family="candidate", stochastic=True,
                     description=f"the default with the {_name} grid from {FEW_STEPS_BELOW} steps")
for _name, _settings in STEPS.items():
    register_sampler(_name, member(_settings, few_steps=False), family="candidate", stochastic=True,
                     description=f"the default with {_settings} from {FEW_STEPS_BELOW} steps")

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--third-order-weight"]:
        weight_third_order(float(args[1]))
        args = args[2:]
    sys.exit(cli.main(args))
