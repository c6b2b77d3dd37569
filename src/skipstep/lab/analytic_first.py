"""Our samplers with the analytic first step (family ``analytic``, names ``<base>-af``).

``<base>-af`` is the sampler ``<base>`` (one of :data:`AF_BASES`: ours and the default's candidates) run through
:func:`skipstep.sample` with ``data_mean`` / ``data_var`` the per-pixel mean and variance (population variance) of
the model's training split (``loaded.real_data["train"]``: the digits train split for the digits models; exact
draws of an analytic model's data, e.g. ``gmm``): its
first step takes the closed-form ``x0_hat`` of Gaussian data instead of a network evaluation
(:mod:`skipstep.gaussian_data`). Everything else is the base's, read from the scheduler the base builds for the
model: the path, the timestep rule (the base's grid for ``n + 1`` steps, the first time analytic:
:func:`skipstep.timesteps.analytic_first_step_grid`), eta, solver order, corrector, variance and x0 clipping.
At NFE ``n`` it takes ``n + 1`` steps and evaluates the network ``n`` times (the bench counts the calls).

Refused: models without a training split, class-conditional models (at ``t_max`` the conditional ``x0_hat`` is
the class mean, with guidance ``mu + w (mu_c - mu)``; the unconditional moments would discard the label there), and
bases with the optimal variance (not ported).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..sampling import sample
from ..timesteps import analytic_first_step_grid
from .candidates import PLACEMENTS, SOLVERS, candidate_name
from .loaded_model import LoadedModel
from .sampler_recipes import DATA_MOMENTS_KEY, SamplerError, get_sampler, is_flow_config, register_sampler

__all__ = ["AF_BASES", "AF_SUFFIX", "PIPELINE_AF", "AnalyticFirstStepRunner", "af_name", "split_data_moments"]

AF_SUFFIX = "-af"
#: the default scheduler with the analytic first step as a diffusers pipeline gets it (set_data_moments)
PIPELINE_AF = "default-moments"
#: the bases that get an ``-af`` variant (not the ``lower_order_final`` candidates: skipstep.sample has no such
#: option)
AF_BASES = ("default", "skipstep", "skipstep-ddim", "skipstep-eta0.5", "skipstep-o2", "skipstep-o3",
            "skipstep-ddim-o2", "skipstep-ddim-o3",
            *(candidate_name(p, s) for p in PLACEMENTS for s, (_, _, lower_order_final) in SOLVERS.items()
              if not lower_order_final))


def af_name(base: str) -> str:
    return base + AF_SUFFIX


class AnalyticFirstStepRunner:
    """The bench's runner of ``<base>-af`` (a ``sample_loop`` object, see
    :func:`skipstep.lab.sampler_recipes.run_standard_loop`). ``config`` records the settings it runs with."""

    def __init__(self, base_factory: Callable, model_config: dict):
        self.base_factory = base_factory
        self.model_config, self.mean, self.var = split_data_moments(model_config)
        self.flow = is_flow_config(model_config)
        self.T = int(model_config.get("num_train_timesteps", 1000))
        probe = self._scheduler(2)
        step = probe.step_config
        self.config = {"base_class": type(probe).__name__, "eta": probe.effective_eta,
                       "solver_order": step.solver_order, "use_corrector": step.use_corrector,
                       "variance_type": step.variance_type, "prediction_type": step.prediction_type,
                       "clip_sample": step.clipping.clip_sample, "analytic_first_step": "training split moments"}
        if probe.config.solver_type != "heun":
            raise SamplerError("the analytic first step runs through skipstep.sample, whose solver is 'heun'")
        self.timesteps: list = []

    def _scheduler(self, steps: int):
        return self.base_factory(dict(self.model_config), steps)

    def _grid(self, steps: int) -> torch.Tensor:
        """The base's noisy times for ``steps`` steps (timesteps of the VP chain; sigmas = path times of a flow)."""
        sched = self._scheduler(steps)
        sched.set_timesteps(steps)
        return sched.sigmas[:-1].detach().cpu().double() if self.flow else sched.timesteps.detach().cpu()

    def sample_loop(self, model: Callable, noise: torch.Tensor, num_steps: int, generator=None,
                    progress: bool = False) -> torch.Tensor:
        sched = self._scheduler(int(num_steps) + 1)
        grid = analytic_first_step_grid(self._grid, int(num_steps))
        sched.set_timesteps(len(grid))  # settings that follow the step count (a guidance scale) resolve here
        path, step = sched.path, sched.step_config
        if self.flow:  # the lab's flow models take the FlowMatch timestep sigma * T
            def call(x, t, _model=model):
                return _model(x, (t * self.T).to(torch.float32))
            self.timesteps = [round(float(v) * self.T, 4) for v in grid[1:]]
        else:
            call = model
            self.timesteps = [int(v) for v in grid[1:]]
        return sample(call, path=path, timesteps=grid, eta=sched.effective_eta,
                      variance_type=step.variance_type,
                      solver_order=step.solver_order, use_corrector=step.use_corrector,
                      prediction_type=step.prediction_type, clipping=step.clipping, noise=noise,
                      generator=generator, progress=progress, data_mean=self.mean.to(noise.device),
                      data_var=self.var.to(noise.device))


def _refusal(base_refusal: Callable | None) -> Callable[[LoadedModel], str | None]:
    def refusal(loaded: LoadedModel) -> str | None:
        if (loaded.real_data or {}).get("train") is None and loaded.reference is None:
            return ("the analytic first step uses the per-pixel mean and variance of the model's training split; "
                    "this model comes with no training data")
        if loaded.conditioning is not None:
            return ("the analytic first step uses the unconditional data moments; a class-conditional model's first "
                    "prediction is its class mean (under guidance mu + w (mu_c - mu))")
        return base_refusal(loaded) if base_refusal is not None else None

    return refusal


def _register() -> None:
    for base in AF_BASES:
        recipe = get_sampler(base)

        def factory(config: dict, steps: int, base_factory=recipe.factory):
            return AnalyticFirstStepRunner(base_factory, config)

        register_sampler(
            af_name(base), factory, family="analytic", stochastic=recipe.stochastic,
            learned_variance=recipe.learned_variance, refusal=_refusal(recipe.refusal),
            description=f"{base} with the analytic first step (training-split mean and variance; n NFE, n + 1 steps)",
            settings={**recipe.settings, "base": base, "analytic_first_step": "training split per-pixel mean, var",
                      "class": "skipstep.sample (AnalyticFirstStepRunner)"})

    register_sampler(
        PIPELINE_AF, _pipeline_factory, family="analytic-scheduler", stochastic=False,
        refusal=_refusal(lambda loaded: "the diffusers scheduler's analytic first step is for VP chains"
                         if is_flow_config(loaded.scheduler_config) else None),
        description="the default scheduler with set_data_moments(training-split mean, var): the analytic first step "
                    "inside the diffusers loop (scale_model_input); n NFE, n + 1 steps, fewer than 6 evaluations",
        settings={**get_sampler("default").settings, "analytic_first_step": "training split per-pixel mean, var",
                  "class": "SkippedStepScheduler.set_data_moments"})


def split_data_moments(model_config: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The config without ``DATA_MOMENTS_KEY``, and the training data's per-pixel mean and variance it held."""
    if DATA_MOMENTS_KEY not in model_config:
        raise SamplerError("an analytic-first-step sampler needs the training data's moments in its config "
                           f"({DATA_MOMENTS_KEY}); the bench adds them (scheduler_config_for)")
    config = dict(model_config)
    moments = config.pop(DATA_MOMENTS_KEY)
    return (config, torch.tensor(moments["mean"], dtype=torch.float32),
            torch.tensor(moments["var"], dtype=torch.float32))


def _pipeline_factory(config: dict, steps: int):
    config, mean, var = split_data_moments(config)
    scheduler = get_sampler("default").factory(config, steps)  # what a user's from_config gives
    scheduler.set_data_moments(mean, var)
    return scheduler


_register()
