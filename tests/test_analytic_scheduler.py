"""The analytic first step in the diffusers scheduler (``SkippedStepScheduler.set_data_moments``): the same samples
as ``skipstep.sample(..., data_mean=...)``, one evaluation fewer than the steps taken, and its refusals."""
import pytest
import torch

from skipstep import SkippedStepScheduler, sample
from skipstep.gaussian_data import gaussian_data_x0

SHAPE = (4, 2, 3, 3)


def toy_eps(x, t):
    """A nonlinear, time-dependent epsilon model (not the Gaussian's exact one)."""
    s = (t.to(torch.float64) / 1000.0).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh(0.8 * x + 0.3 * s) * (0.7 + 0.3 * s)


def run_pipeline_loop(sched, model, x_T, n, cfg_batch=True, calls=None):
    """diffusers' loop: the model input from scale_model_input (on the doubled CFG batch), step on the latents."""
    sched.set_timesteps(n)
    latents = x_T.clone()
    for t in sched.timesteps:
        model_in = torch.cat([latents] * 2) if cfg_batch else latents
        model_in = sched.scale_model_input(model_in, t)
        t_batch = torch.full((model_in.shape[0],), int(t))
        out = model(model_in, t_batch)
        if calls is not None:
            calls.append(int(t))
        out = out.chunk(2)[0] if cfg_batch else out
        latents = sched.step(out, t, latents).prev_sample
    return latents


def moments():
    mean = torch.linspace(-0.3, 0.3, 18).reshape(2, 3, 3)
    var = torch.linspace(0.2, 0.9, 18).reshape(2, 3, 3)
    return mean, var


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("n", [3, 4, 5])
def test_scheduler_equals_functional_sampler(beta_schedule, n):
    mean, var = moments()
    sched = SkippedStepScheduler(beta_schedule=beta_schedule)
    sched.set_data_moments(mean, var)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(n))
    calls = []
    ours = run_pipeline_loop(sched, toy_eps, x_T, n, calls=calls)
    ref = sample(toy_eps, path=sched.path, num_steps=n, noise=x_T, data_mean=mean, data_var=var, progress=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert len(calls) == n == len(sched.timesteps) == sched.num_inference_steps
    # the listed times are the n + 1-step grid without its first (analytic) time
    plain = SkippedStepScheduler(beta_schedule=beta_schedule)
    plain.set_timesteps(n + 1)
    assert sched.timesteps.tolist() == plain.timesteps.tolist()[1:]
    # and the analytic step matters: without it the loop differs
    plain.set_timesteps(n)
    assert not torch.allclose(run_pipeline_loop(plain, toy_eps, x_T, n), ours)


def test_a_loop_that_steps_on_the_model_input_gets_the_same_samples():
    """diffusers' DiTPipeline hands step() the tensor scale_model_input returned (the doubled CFG batch)."""
    mean, var = moments()
    sched = SkippedStepScheduler()
    sched.set_data_moments(mean, var)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    sched.set_timesteps(4)
    doubled = torch.cat([x_T] * 2)
    for t in sched.timesteps:
        model_in = sched.scale_model_input(doubled, t)
        doubled = sched.step(toy_eps(model_in, torch.full((8,), int(t))), t, model_in).prev_sample
    ref = sample(toy_eps, path=sched.path, num_steps=4, noise=torch.cat([x_T] * 2), data_mean=mean, data_var=var,
                 progress=False)
    torch.testing.assert_close(doubled, ref, rtol=0, atol=1e-6)


def test_first_model_input_is_the_analytic_step():
    mean, var = moments()
    sched = SkippedStepScheduler()
    sched.set_data_moments(mean, var)
    sched.set_timesteps(4)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    plan0 = sched._plan[0]  # the analytic node: deterministic, so x_{t1} = alpha_1 x0 + sigma_1 eps(x0)
    x0 = gaussian_data_x0(x_T, plan0.alpha_t, plan0.sigma_t, mean.double(), var.double())
    eps = (x_T - plan0.alpha_t * x0) / plan0.sigma_t
    a1, s1 = (float(v) for v in sched.path.alpha_sigma(torch.tensor(int(sched.timesteps[0]))))
    torch.testing.assert_close(sched.scale_model_input(x_T, sched.timesteps[0]), a1 * x0 + s1 * eps,
                               rtol=1e-5, atol=1e-5)
    assert sched.scale_model_input(x_T, sched.timesteps[1]) is x_T  # later times: the input itself
    assert sched.scale_model_input(x_T.half(), sched.timesteps[0]).dtype == torch.float16  # the latents' dtype


def test_six_evaluations_need_a_deterministic_first_step():
    sched = SkippedStepScheduler()
    sched.set_data_moments(0.0, 1.0)
    with pytest.raises(ValueError, match="eta 0 at its step.*eta 1 at the first of 7 steps"):
        sched.set_timesteps(6)
    assert not sched._plan  # nothing half-installed: a step now runs the training chain, as before set_timesteps
    mean, var = moments()
    det = SkippedStepScheduler(eta=0.0)
    det.set_data_moments(mean, var)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    ours = run_pipeline_loop(det, toy_eps, x_T, 6)
    ref = sample(toy_eps, path=det.path, num_steps=6, noise=x_T, eta=0.0, data_mean=mean, data_var=var,
                 progress=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_explicit_timesteps_list_the_analytic_time_first():
    sched = SkippedStepScheduler()
    sched.set_data_moments(0.0, 0.5)
    sched.set_timesteps(timesteps=[999, 700, 400, 100])
    assert sched.timesteps.tolist() == [700, 400, 100]
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = run_pipeline_loop_custom(sched, x_T, [999, 700, 400, 100])
    ref = sample(toy_eps, path=sched.path, timesteps=[999, 700, 400, 100], noise=x_T, data_mean=0.0, data_var=0.5,
                 progress=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 timesteps"):
        sched.set_timesteps(timesteps=[999])
    with pytest.raises(ValueError, match="not one of the scheduled timesteps"):  # the analytic time is no step
        sched.set_timesteps(timesteps=[999, 700, 400, 100])
        sched.step(torch.zeros(SHAPE), 999, x_T)


def run_pipeline_loop_custom(sched, x_T, timesteps):
    sched.set_timesteps(timesteps=timesteps)
    latents = x_T
    for t in sched.timesteps:
        out = toy_eps(sched.scale_model_input(latents, t), torch.full((x_T.shape[0],), int(t)))
        latents = sched.step(out, t, latents).prev_sample
    return latents


def test_a_loop_without_scale_model_input_is_refused():
    sched = SkippedStepScheduler()
    sched.set_data_moments(0.0, 1.0)
    sched.set_timesteps(4)
    x = torch.randn(SHAPE)
    t = sched.timesteps[0]
    with pytest.raises(RuntimeError, match="scale_model_input"):
        sched.step(toy_eps(x, torch.full((4,), int(t))), t, x)


def test_a_trajectory_entered_by_add_noise_takes_no_analytic_step():
    sched = SkippedStepScheduler()
    sched.set_data_moments(0.0, 1.0)
    sched.set_timesteps(4)
    plain = SkippedStepScheduler()
    plain.set_timesteps(timesteps=sched.timesteps.tolist())
    clean = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    outs = []
    for s in (sched, plain):
        x = s.add_noise(clean, noise, s.timesteps[:1])
        for t in s.timesteps:
            model_in = s.scale_model_input(x, t)
            assert model_in is x
            x = s.step(toy_eps(model_in, torch.full((4,), int(t))), t, x).prev_sample
        outs.append(x)
    assert torch.isfinite(outs[0]).all()
    sched.set_timesteps(4)  # the next trajectory takes the analytic step again
    assert sched.scale_model_input(noise, sched.timesteps[0]) is not noise


def test_moments_off_restores_the_default_grid():
    sched = SkippedStepScheduler()
    sched.set_data_moments(0.1, 0.5)
    assert sched.data_moments is not None
    sched.set_data_moments(None)
    sched.set_timesteps(5)
    plain = SkippedStepScheduler()
    plain.set_timesteps(5)
    assert sched.timesteps.tolist() == plain.timesteps.tolist() and sched.data_moments is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(data_mean=0.0, data_var=-1.0), "data_var"),
    (dict(data_mean=float("nan")), "data_mean"),
    (dict(data_mean=None, data_var=1.0), "needs data_mean"),
    (dict(data_mean=torch.zeros(2, 3), data_var=torch.ones(4, 3)), "broadcast"),
    (dict(data_mean="zero"), "data_mean"),
])
def test_bad_moments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler().set_data_moments(**kwargs)


def test_moments_that_do_not_fit_the_sample_are_refused_at_use():
    sched = SkippedStepScheduler()
    sched.set_data_moments(torch.zeros(5, 1, 1), 1.0)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="data_mean .*broadcastable to the sample shape"):
        sched.scale_model_input(torch.randn(SHAPE), sched.timesteps[0])


def test_tuned_schedule_and_moments_are_refused():
    from skipstep.tuned_schedules import TunedSchedule
    schedule = TunedSchedule(timesteps=[900, 500, 100], eta=[0.0, 0.0, 0.0], nfe=3, num_train_timesteps=1000)
    sched = SkippedStepScheduler(tuned_schedule=schedule.to_dict())
    sched.set_data_moments(0.0, 1.0)
    with pytest.raises(ValueError, match="tuned_schedule"):
        sched.set_timesteps(3)
