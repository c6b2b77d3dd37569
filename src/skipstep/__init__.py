"""skipstep: fast few-step sampling for pretrained diffusion and flow models.

The core is one function, :func:`skipstep.posterior.gaussian_posterior` -- the exact posterior
``q(x_s | x_t, x_0)`` across skipped steps of any Gaussian path -- and the DDIM family built on it.
The measurement harness (benchmarks, tuning, generation, testbeds) lives in :mod:`skipstep.lab`, which this
library never imports.
"""

from .diffusers_schedulers import SkippedStepScheduler, SkippedStepSchedulerOutput
from .flow_schedulers import SkippedStepFlowScheduler, SkippedStepFlowSchedulerOutput
from .paths import ContinuousVPPath, DiscreteVPPath, GaussianPath, RectifiedFlowPath, VESigmaPath, make_betas
from .plan import plan_steps, resolve_eta_schedule
from .posterior import Posterior, gaussian_posterior
from .predictions import PREDICTION_TYPES, X0Clipping
from .sampling import sample
from .steps import (DEFAULT_ETA, DEFAULT_FLOW_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_SPACING_POWER,
                    DEFAULT_TIMESTEP_SPACING, DEFAULT_USE_CORRECTOR, DEFAULT_USE_LEARNED_VARIANCE,
                    STRONG_GUIDANCE_FROM, VARIANCE_TYPES)
from .timesteps import SPACINGS, select_timesteps, validate_timesteps
from .tuned_schedules import TunedSchedule, TunedScheduleError, load_schedule, load_tuned_schedule

__version__ = "0.1.0"

__all__ = [
    "ContinuousVPPath",
    "DEFAULT_ETA",
    "DEFAULT_FLOW_ETA",
    "DEFAULT_SOLVER_ORDER",
    "DEFAULT_SPACING_POWER",
    "DEFAULT_TIMESTEP_SPACING",
    "DEFAULT_USE_CORRECTOR",
    "DEFAULT_USE_LEARNED_VARIANCE",
    "STRONG_GUIDANCE_FROM",
    "DiscreteVPPath",
    "GaussianPath",
    "PREDICTION_TYPES",
    "Posterior",
    "RectifiedFlowPath",
    "SPACINGS",
    "SkippedStepFlowScheduler",
    "SkippedStepFlowSchedulerOutput",
    "SkippedStepScheduler",
    "SkippedStepSchedulerOutput",
    "TunedSchedule",
    "TunedScheduleError",
    "VARIANCE_TYPES",
    "VESigmaPath",
    "X0Clipping",
    "gaussian_posterior",
    "load_schedule",
    "load_tuned_schedule",
    "make_betas",
    "plan_steps",
    "resolve_eta_schedule",
    "sample",
    "select_timesteps",
    "validate_timesteps",
]
