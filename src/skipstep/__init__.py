"""skipstep: fast few-step sampling for pretrained diffusion and flow models.

The core is one function, :func:`skipstep.posterior.gaussian_posterior` -- the exact posterior
``q(x_s | x_t, x_0)`` across skipped steps of any Gaussian path -- and the DDIM family built on it.
"""

from .diffusers_schedulers import SkippedStepScheduler, SkippedStepSchedulerOutput
from .flow_schedulers import SkippedStepFlowScheduler, SkippedStepFlowSchedulerOutput
from .posterior import Posterior, gaussian_posterior
from .predictions import PREDICTION_TYPES, X0Clipping
from .plan import plan_steps
from .sampling import DEFAULT_ETA, sample
from .schedules import ContinuousVPPath, DiscreteVPPath, GaussianPath, RectifiedFlowPath, make_betas
from .steps import VARIANCE_TYPES, resolve_eta_schedule
from .timesteps import SPACINGS, select_timesteps, validate_timesteps
from .tuning import TunedSchedule, load_schedule

__version__ = "0.1.0"

__all__ = [
    "ContinuousVPPath",
    "DEFAULT_ETA",
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
    "VARIANCE_TYPES",
    "X0Clipping",
    "gaussian_posterior",
    "load_schedule",
    "make_betas",
    "plan_steps",
    "resolve_eta_schedule",
    "sample",
    "select_timesteps",
    "validate_timesteps",
]
