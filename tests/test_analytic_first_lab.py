"""The bench's analytic-first-step samplers (``<base>-af``, :mod:`skipstep.lab.analytic_first`): on a model that is
exactly the Gaussian of its training split's moments, ``<base>-af`` at NFE n draws the samples of ``<base>`` at
n + 1 steps with n network evaluations; refusals name the reason."""

from __future__ import annotations

import pytest
import torch

from skipstep.gaussian_data import gaussian_data_x0
from skipstep.lab.loaded_model import LoadedModel
from skipstep.lab.models import training_data_moments
from skipstep.lab.sample_sets import sample_cell
from skipstep.lab.sampler_registry import get_sampler, sampler_names, sampler_refusal, sampler_settings
from skipstep.paths import DiscreteVPPath

SHAPE = (1, 4, 4)


def _train_data():
    g = torch.Generator().manual_seed(0)
    mean = torch.linspace(-0.7, 0.5, 16).reshape(SHAPE)
    std = torch.linspace(0.1, 0.6, 16).reshape(SHAPE)
    return mean + std * torch.randn(400, *SHAPE, generator=g)


def _loaded(flow: bool = False, train: torch.Tensor | None = None) -> LoadedModel:
    """A model that is the exact denoiser of N(mean, diag(var)), the moments of its training split."""
    train = _train_data() if train is None else train
    real = {"train": train, "heldout": train[:50]}
    probe = LoadedModel("probe", lambda x, t: x, {}, SHAPE, "epsilon", "probe", real_data=real)
    moments = training_data_moments(probe)
    mean, var = torch.tensor(moments["mean"]).double(), torch.tensor(moments["var"]).double()
    T = 1000
    if flow:
        config = {"prediction_type": "flow", "shift": 3.0, "num_train_timesteps": T}
    else:
        config = {"prediction_type": "epsilon", "num_train_timesteps": T, "beta_schedule": "linear",
                  "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": False}
    abar = DiscreteVPPath.from_config(config).alphas_cumprod if not flow else None

    def model(x, t):
        if flow:
            sigma = float(t[0]) / T
            alpha = 1.0 - sigma
        else:
            a = float(abar[int(t[0])])
            alpha, sigma = a ** 0.5, (1.0 - a) ** 0.5
        x0 = gaussian_data_x0(x.double(), alpha, sigma, mean, var)
        eps = (x.double() - alpha * x0) / sigma
        return (eps - x0 if flow else eps).to(x.dtype)

    return LoadedModel("gauss", model, config, SHAPE, config["prediction_type"], "gauss-fp", real_data=real,
                       regime="flow" if flow else "vp")


def test_every_af_sampler_is_registered_in_its_family():
    names = sampler_names("analytic")
    assert "skipstep-af" in names and "default-af" in names and "cand-p1-e1-o2-af" in names
    assert all(n.endswith("-af") and get_sampler(n[:-3]) is not None for n in names)


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("base", ["skipstep", "skipstep-o2", "cand-pn2-e1-o2"])
def test_af_at_nfe_n_is_the_base_at_n_plus_1_steps_on_gaussian_data(flow, base):
    loaded = _loaded(flow)
    n = 3
    ours = sample_cell(loaded, get_sampler(base + "-af"), n, seed=0, num_samples=8, batch_size=8, device="cpu")
    plain = sample_cell(loaded, get_sampler(base), n + 1, seed=0, num_samples=8, batch_size=8, device="cpu")
    assert (ours.actual_nfe, ours.num_steps, plain.actual_nfe) == (n, n, n + 1)
    assert ours.timesteps == pytest.approx(plain.timesteps[1:], abs=1e-3)
    torch.testing.assert_close(ours.samples, plain.samples, rtol=1e-4, atol=1e-4)


def test_af_on_a_power_grid_evaluates_the_last_n_times_of_the_n_plus_1_grid():
    loaded = _loaded()
    cell = sample_cell(loaded, get_sampler("cand-p1-e1-o2-af"), 3, seed=0, num_samples=4, batch_size=4, device="cpu")
    assert cell.actual_nfe == 3 and cell.timesteps == [600, 400, 200]


def test_settings_record_the_base_and_refusals_give_the_reason():
    loaded = _loaded()
    settings = sampler_settings(get_sampler("skipstep-af"), loaded)
    assert settings["base"] == "skipstep" and settings["analytic_first_step"]
    assert settings["effective"]["eta"] == 1.0 and settings["effective"]["solver_order"] == 1
    bare = LoadedModel("bare", loaded.model, loaded.scheduler_config, SHAPE, "epsilon", "bare")
    assert "no training data" in sampler_refusal(get_sampler("skipstep-af"), bare)


@pytest.mark.parametrize("n", [3, 9])
def test_af_told_a_strong_guidance_scale_takes_the_member_of_its_step_count(n):
    """The runner resolves the step-count rule of the guidance scale (the corrector off below 7 steps) for its
    ``n + 1``-step grid, as the scheduler does in ``set_timesteps``."""
    from skipstep import SkippedStepScheduler, sample
    from skipstep.lab.analytic_first import AnalyticFirstStepRunner
    from skipstep.lab.sampler_recipes import DATA_MOMENTS_KEY
    from skipstep.steps import DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, settings_for_guidance

    mean, var = torch.full(SHAPE, 0.2), torch.full(SHAPE, 0.3)
    config = {"num_train_timesteps": 1000, DATA_MOMENTS_KEY: {"mean": mean.tolist(), "var": var.tolist()}}
    runner = AnalyticFirstStepRunner(lambda cfg, steps: SkippedStepScheduler.from_config(cfg, guidance_scale=8.0),
                                     config)
    eps = lambda x, t: 0.3 * x + 0.1  # noqa: E731
    noise = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    ours = runner.sample_loop(eps, noise, n, generator=torch.Generator().manual_seed(2))
    sched = SkippedStepScheduler.from_config({"num_train_timesteps": 1000}, guidance_scale=8.0)
    sched.set_timesteps(n + 1)
    eta, order, corrector = settings_for_guidance(8.0, DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR,
                                                  n + 1)
    assert (sched.step_config.solver_order, sched.step_config.use_corrector) == (order, corrector)
    assert corrector is (n + 1 >= 7)
    full = sched.timesteps.tolist()
    want = sample(eps, timesteps=full, eta=eta, solver_order=order, use_corrector=corrector, noise=noise,
                  generator=torch.Generator().manual_seed(2), progress=False, data_mean=mean, data_var=var)
    assert runner.timesteps == full[1:]
    assert torch.equal(ours, want)


def test_default_moments_is_the_scheduler_with_the_analytic_first_step():
    """``default-moments`` (the default scheduler with set_data_moments, run by the bench's diffusers loop) draws
    ``default-af``'s samples with n evaluations; a flow model is refused with the reason."""
    loaded = _loaded()
    ours = sample_cell(loaded, get_sampler("default-moments"), 4, seed=0, num_samples=8, batch_size=8, device="cpu")
    af = sample_cell(loaded, get_sampler("default-af"), 4, seed=0, num_samples=8, batch_size=8, device="cpu")
    assert ours.actual_nfe == af.actual_nfe == 4 and ours.timesteps == af.timesteps
    torch.testing.assert_close(ours.samples, af.samples, rtol=1e-5, atol=1e-5)
    assert "VP chains" in sampler_refusal(get_sampler("default-moments"), _loaded(flow=True))
