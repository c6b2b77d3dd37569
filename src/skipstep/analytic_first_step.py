"""The analytic first step inside a diffusers pipeline (:class:`skipstep.SkippedStepScheduler`).

:func:`skipstep.sample` with ``data_mean=`` replaces its first model evaluation by the closed-form ``x0_hat`` of
Gaussian data (:mod:`skipstep.gaussian_data`) and takes ``n + 1`` steps for ``n`` evaluations. A pipeline evaluates
the model at every timestep the scheduler lists, starting from ``x_T``; so with data moments set the scheduler lists
only the ``n`` model times and takes the analytic step from the grid's first time ``t_a`` (not listed) to the first
model time ``t_1`` where diffusers' loop lets a scheduler change the model input:

    latent_model_input = scheduler.scale_model_input(latents, t)   # at t_1: x_{t_1} from the analytic step on x_T
    noise_pred = model(latent_model_input, t)
    latents = scheduler.step(noise_pred, t, latents).prev_sample   # at t_1: redoes that step on x_T, then steps on

``step`` at ``t_1`` receives the pipeline's ``x_T`` (diffusers' loops keep the unscaled latents; a loop that hands
``step`` the tensor ``scale_model_input`` returned, as diffusers' ``DiTPipeline`` does, is recognised and the
``x_T`` it was made from is used), repeats the analytic step on the scheduler's trajectory (so the step enters the multistep history and is corrected, as in
:func:`skipstep.sample`) and then takes the model step: the same samples as ``sample(..., data_mean=...)``. Hence:

* the analytic step must be deterministic (eta 0 at the grid's first step): ``scale_model_input`` has no
  generator, and its state must equal the one ``step`` rebuilds. The default's eta is 0 there for fewer than 6
  evaluations (a grid of fewer than 7 steps); from 6 on pass an eta that is 0 at the first step (``eta=0.0``, a list);
* a loop that does not call ``scale_model_input`` (diffusers' ``DDPMPipeline``, ``DDIMPipeline``) is refused at
  its first ``step``, after one evaluation at ``t_1`` on ``x_T``;
* a trajectory that starts from ``add_noise`` (img2img, inpainting) is left as it is: those latents are already at
  their first time, so no analytic step is taken until the next ``set_timesteps``.
"""

from __future__ import annotations

import numpy as np
import torch

from .gaussian_data import check_data_moments, gaussian_data_x0
from .steps import TrajectoryStepper


class AnalyticFirstStepMixin:
    """The analytic first step's state and hooks; the scheduler calls them (``set_timesteps``, ``step``,
    ``add_noise``) and owns ``_plan``, ``_stepper``, ``step_config``."""

    _data_moments: tuple | None = None
    _plan_has_analytic = False  # the installed plan's first step is the analytic one
    _analytic_io: tuple | None = None  # (x_T, x_{t_1}) of the last scale_model_input at the first model time
    _entered_noised = False

    def set_data_moments(self, data_mean=None, data_var=None) -> None:
        """Turn on the analytic first step for data ``N(data_mean, diag(data_var))`` (numbers or tensors that
        broadcast to the sample shape ``(C, H, W)``; ``data_var`` ``None`` is 0), or off with ``data_mean=None``.
        It applies from the next :meth:`set_timesteps`: ``num_inference_steps = n`` then lists ``n`` model times,
        the grid of ``n + 1`` steps without its first (analytic) time; explicit ``timesteps`` list the analytic
        time first. The moments are not part of the config (``save_config`` does not write them)."""
        if data_mean is None:
            if data_var is not None:
                raise ValueError("data_var is the data variance of the analytic first step; it needs data_mean too")
            self._data_moments = None
            return
        self._data_moments = _checked_against_own_shape(data_mean, data_var)

    @property
    def data_moments(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, var)`` of the analytic first step (float64), or ``None``."""
        return self._data_moments

    def _analytic_checks(self, ts: torch.Tensor) -> None:
        """After planning ``ts`` with moments: at least one model time, and a deterministic analytic step (else the
        plan is dropped, as before any ``set_timesteps``, and the error names what to pass)."""
        eta = self._plan[0].posterior.eta
        if len(ts) < 2 or eta != 0:
            self._plan = []
        if len(ts) < 2:
            raise ValueError("with data moments set (the analytic first step) the timesteps list the analytic time "
                             f"first and then at least one model time: give at least 2 timesteps, got {ts.tolist()}")
        if eta != 0:
            raise ValueError(f"the analytic first step in a scheduler needs eta 0 at its step (scale_model_input has "
                             f"no generator), got eta {eta:g} at the first of {len(ts)} steps; the default eta is 0 "
                             f"for fewer than 6 evaluations, else pass eta=0.0 or a per-step eta starting with 0")
        self._analytic_io = None
        self._entered_noised = False

    def _analytic_active(self, index: int) -> bool:
        return self._plan_has_analytic and index == 1 and not self._entered_noised

    def _analytic_state(self, stepper: TrajectoryStepper, sample: torch.Tensor) -> torch.Tensor:
        """``x_{t_1}``: the analytic step from ``x_T = sample`` on ``stepper``."""
        first = self._plan[0]
        mean, var = check_data_moments(*self._data_moments, tuple(sample.shape))
        x_t = sample if sample.dtype == torch.float64 else sample.float()  # the step's compute dtype
        return stepper.step_from_x0(0, gaussian_data_x0(x_t, first.alpha_t, first.sigma_t, mean, var), sample)[0]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model input at ``timestep``: ``sample`` itself, except at the first model time with data moments
        set, where it is ``x_{t_1}``, the analytic step from ``sample = x_T`` (module docstring)."""
        if not self._plan_has_analytic or timestep is None or self._entered_noised:
            return sample
        if self.index_for_timestep(timestep) != 1:
            return sample
        scratch = TrajectoryStepper(self._plan, self.step_config, self._stepper.coefficients)
        out = self._analytic_state(scratch, sample)  # in sample's dtype, as every step returns
        self._analytic_io = (sample, out)
        return out

    def _analytic_start(self, sample: torch.Tensor) -> torch.Tensor:
        """In ``step`` at the first model time: the analytic step on the scheduler's own trajectory."""
        if self._analytic_io is None:
            raise RuntimeError("with data moments set (the analytic first step) the model's input at the first "
                               "timestep must come from scheduler.scale_model_input(sample, t); this loop did not "
                               "call it (diffusers' DDPMPipeline and DDIMPipeline do not): call it, or clear the "
                               "moments with set_data_moments(None)")
        x_T, model_input = self._analytic_io
        self._analytic_io = None
        return self._analytic_state(self._stepper, x_T if sample is model_input else sample)


def _checked_against_own_shape(data_mean, data_var) -> tuple[torch.Tensor, torch.Tensor]:
    """Type, finiteness and sign checks before the sample shape is known (it is checked again at each use)."""
    shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(np.shape(v)) for v in (data_mean, data_var)]
    try:
        shape = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"data_mean and data_var must broadcast to one shape, got {shapes[0]} and {shapes[1]}") \
            from None
    return check_data_moments(data_mean, data_var, (1, *shape))


__all__ = ["AnalyticFirstStepMixin"]
