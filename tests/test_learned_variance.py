"""Learned-variance models (ADM / IDDPM / DiT): 2C output channels, eps and the variance interpolation values.

* ``DiTPipeline`` splits the variance channels off before ``scheduler.step`` -- any scheduler there runs with a
  fixed variance. Checked here, and that our scheduler configured for learned variance refuses the C-channel output
  loudly instead of losing it.
* ``skipstep.pipelines.LearnedVarianceDiTPipeline`` keeps them: with our scheduler (eta=1, learned_range,
  ``use_learned_variance=True``) it equals diffusers' ``DDPMScheduler(variance_type="learned_range")`` on the same
  respaced timesteps.
* A plain callable in the OpenAI guided-diffusion layout (``[eps, v]`` along channels, class label ``y`` as a
  keyword) through ``skipstep.sample(..., variance_type="learned", use_learned_variance=True)`` equals the same
  DDPM loop.
* By default (``use_learned_variance=False``) the variance channels are read and set aside: the samples are those of
  ``fixed_small`` given the C prediction channels, bit for bit.

DDPM's final step: diffusers adds noise whenever the *original* timestep is > 0 (``t=99`` on a 10-step trailing
chain), with ``learned_range`` that is ``exp(0.5 (f log beta + (1 - f) log 1e-20))`` -- small but not zero.
IDDPM/ADM respacing maps the last step to index 0 and adds none, as skipstep does; so the final comparisons use
DDPM's ``pred_original_sample``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTPipeline
from diffusers.utils.torch_utils import randn_tensor

import skipstep
from skipstep import DiscreteVPPath, SkippedStepScheduler
from skipstep.pipelines import LearnedVarianceDiTPipeline
from skipstep.lab.testbeds.gmm import GaussianMixture, GMMDenoiser

import tiny_models

STEPS = 10
CLASSES = [3, 7]




def rel_diff(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


class Recorder:
    """Wraps ``scheduler.step`` and records what it receives and returns."""

    def __init__(self, sched):
        self.sched, self.calls = sched, []
        self._step = sched.step
        sched.step = self

    def __call__(self, model_output, timestep, sample, generator=None, **kwargs):  # pipelines inspect this
        out = self._step(model_output, timestep, sample, generator=generator, **kwargs)
        self.calls.append(dict(shape=tuple(model_output.shape), t=int(timestep), out=out))
        return out


@pytest.fixture(scope="module")
def dit_parts():
    return dict(transformer=tiny_models.dit_transformer(learned_sigma=True), vae=tiny_models.vae())


def base_config():
    # linear betas, 1000 steps (the DiT-XL-2 checkpoints ship such a DDIM config); no x0 clipping (latents)
    return DDIMScheduler(clip_sample=False).config


def ours(**kw):
    kw.setdefault("solver_order", 1)  # the first-order family, compared against DDPM
    kw.setdefault("use_corrector", False)
    return SkippedStepScheduler.from_config(base_config(), timestep_spacing="trailing", **kw)


def test_dit_pipeline_strips_the_variance_channels(dit_parts):
    sched = ours(eta=1.0)  # fixed_small: runs, like any diffusers scheduler there
    rec = Recorder(sched)
    pipe = DiTPipeline(scheduler=sched, **dit_parts)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)  # DiTPipeline does not pass its generator to step(): the step noise is global
    images = pipe(CLASSES, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 16, 16, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())
    # the transformer emits 2C = 8 channels, the scheduler sees C = 4 (doubled batch for CFG)
    assert dit_parts["transformer"].config.out_channels == 8
    assert {c["shape"] for c in rec.calls} == {(4, 4, 8, 8)}

    # configured for learned variance, our scheduler refuses the stripped output instead of losing the variance
    pipe = DiTPipeline(scheduler=ours(eta=1.0, variance_type="learned_range"), **dit_parts)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"2C channels \(learned variance\).*use skipstep.pipelines.LearnedVarianceDiTPipeline"):
        pipe(CLASSES, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np")


def test_wrapper_equals_dit_pipeline_where_nothing_is_stochastic(dit_parts):
    """eta=0 with fixed variance: the wrapper's loop is DiTPipeline's loop (CFG, null class, decoding)."""
    outs = []
    for cls in (DiTPipeline, LearnedVarianceDiTPipeline):
        pipe = cls(scheduler=ours(eta=0.0), **dit_parts)
        pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(CLASSES, guidance_scale=4.0, num_inference_steps=STEPS,
                         generator=torch.Generator().manual_seed(1), output_type="pt").images)
    assert outs[0].shape == (2, 3, 16, 16)
    assert rel_diff(outs[1], outs[0]) < 1e-5


def test_the_wrapper_tells_a_skipstep_scheduler_its_guidance_scale(dit_parts):
    """At 4 steps and w = 4 the default's few-step gain must be off (it is for unguided sampling): the wrapper
    tells the scheduler the call's scale, so it samples as a scheduler configured with that scale."""
    outs = []
    for sched in (SkippedStepScheduler.from_config(base_config()),
                  SkippedStepScheduler.from_config(base_config(), guidance_scale=4.0)):
        pipe = LearnedVarianceDiTPipeline(scheduler=sched, **dit_parts)
        pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(CLASSES, guidance_scale=4.0, num_inference_steps=4,
                         generator=torch.Generator().manual_seed(2), output_type="latent").images)
        assert sched.config.guidance_scale == 4.0 and sched.effective_extrapolation_gain == 1.0
    assert torch.equal(outs[0], outs[1])


def run_wrapper(dit_parts, sched, seed=0, guidance_scale=4.0):
    pipe = LearnedVarianceDiTPipeline(scheduler=sched, **dit_parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe(CLASSES, guidance_scale=guidance_scale, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_learned_variance_dit_equals_ddpm_learned_range_respaced(dit_parts, guidance_scale):
    ref = DDPMScheduler.from_config(base_config(), variance_type="learned_range", timestep_spacing="trailing",
                                    clip_sample=False)
    rec = Recorder(ref)
    lat_ref = run_wrapper(dit_parts, ref, guidance_scale=guidance_scale)
    assert {c["shape"] for c in rec.calls} == {(2, 8, 8, 8)}  # the full 2C output reached step()

    sched = ours(eta=1.0, variance_type="learned_range", use_learned_variance=True)
    rec_ours = Recorder(sched)
    lat = run_wrapper(dit_parts, sched, guidance_scale=guidance_scale)
    assert {c["shape"] for c in rec_ours.calls} == {(2, 8, 8, 8)}
    assert [c["t"] for c in rec_ours.calls] == [c["t"] for c in rec.calls] == sched.timesteps.tolist()
    # every intermediate state agrees (same generator: same initial and step noise) ...
    for a, b in zip(rec_ours.calls[:-1], rec.calls[:-1]):
        assert rel_diff(a["out"].prev_sample, b["out"].prev_sample) < 1e-5
    # ... and the result is DDPM's x0_hat at the last step (DDPM then adds its residual noise, see module doc)
    x0_ref = rec.calls[-1]["out"].pred_original_sample
    assert rel_diff(lat, x0_ref) < 1e-5
    residual = float((lat_ref - x0_ref).abs().max())
    print(f"LEARNED VARIANCE: DDPM's final-step residual noise max|.| = {residual:.2e}")

    # the learned variance is used: fixed_small with the same generator gives another result
    lat_fixed = run_wrapper(dit_parts, ours(eta=1.0), guidance_scale=guidance_scale)
    assert rel_diff(lat, lat_fixed) > 1e-3


def test_wrapper_refuses_learned_variance_without_variance_channels():
    parts = dict(transformer=tiny_models.dit_transformer(learned_sigma=False), vae=tiny_models.vae())
    pipe = LearnedVarianceDiTPipeline(scheduler=ours(variance_type="learned_range"), **parts)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"needs a model with 2C = 8 output channels.*out_channels=4"):
        pipe(CLASSES, num_inference_steps=2, output_type="latent")
    # with a fixed variance it runs
    pipe.scheduler = ours()
    assert pipe(CLASSES, num_inference_steps=2, output_type="latent").images.shape == (2, 4, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# a plain callable in the guided-diffusion layout
# ---------------------------------------------------------------------------------------------------------------
class ADMStyleModel(torch.nn.Module):
    """``model(x, t, y=labels) -> cat([eps, v], dim=1)`` like OpenAI's guided-diffusion UNet with
    ``learn_sigma=True``: eps is the exact mixture denoiser of the class's half of the modes, v in [-1, 1]."""

    def __init__(self, path):
        super().__init__()
        means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]).repeat_interleave(8, 1)
        self.per_class = [GMMDenoiser(GaussianMixture(means[2 * k: 2 * k + 2].reshape(2, 1, 4, 4), None, 0.2),
                                      path, "epsilon") for k in range(2)]

    def forward(self, x, t, y):
        eps = torch.empty_like(x)
        for k, model in enumerate(self.per_class):
            rows = y == k
            if bool(rows.any()):
                tt = t[rows] if torch.as_tensor(t).ndim else t
                eps[rows] = model(x[rows], tt)
        tt = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1) / 1000.0
        v = torch.tanh(2.0 * (tt - 0.5) + 0.3 * x)
        return torch.cat([eps, v], dim=1)


def test_plain_callable_learned_variance_equals_ddpm_learned_range():
    path = DiscreteVPPath.from_config({})
    model = ADMStyleModel(path)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    shape = (6, 1, 4, 4)
    states = []
    x = skipstep.sample(model, shape, path=path, num_steps=STEPS, spacing="trailing", eta=1.0, solver_order=1,
                        use_corrector=False, variance_type="learned", use_learned_variance=True,
                        model_kwargs={"y": y},
                        generator=torch.Generator().manual_seed(3),
                        progress=False, callback=lambda i, t, x_s, x0: states.append((t, x_s)))
    ref = DDPMScheduler(variance_type="learned_range", timestep_spacing="trailing", clip_sample=False)
    ref.set_timesteps(STEPS)
    g = torch.Generator().manual_seed(3)
    xr = randn_tensor(shape, generator=g)
    ref_states = []
    for t in ref.timesteps:
        out = ref.step(model(xr, t, y=y), t, xr, generator=g)
        xr = out.prev_sample
        ref_states.append((int(t), out))
    assert [s[0] for s in states] == [s[0] for s in ref_states]
    for (_, ours_x), (_, ref_out) in zip(states[:-1], ref_states[:-1]):
        assert rel_diff(ours_x, ref_out.prev_sample) < 1e-5
    assert rel_diff(x, ref_states[-1][1].pred_original_sample) < 1e-5
    assert bool(torch.isfinite(x).all())
    # the class label reached the model: each sample sits near one of its class's two modes
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    nearest = torch.cdist(x.reshape(6, 2, 8).mean(2), centres).argmin(1)
    assert torch.equal(nearest // 2, y)


# ---------------------------------------------------------------------------------------------------------------
# classifier guidance (ADM's cond_fn, score form)
# ---------------------------------------------------------------------------------------------------------------
def test_classifier_guidance_with_the_exact_classifier_is_the_class_conditional_model():
    from skipstep.guidance import classifier_guided

    path = DiscreteVPPath.from_config({})
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    labels = torch.tensor([0, 1, 0, 1])
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    mix = GaussianMixture(means, weights, 0.2)
    uncond = GMMDenoiser(mix, path, "epsilon")
    cond = [GMMDenoiser(GaussianMixture(means[labels == k], weights[labels == k], 0.2), path, "epsilon")
            for k in (0, 1)]

    def grad_log_prob(x, t, y):
        """grad_x log p(y | x_t) = grad_x log sum_{k in class y} r_k(x_t), by autograd through the exact model."""
        with torch.enable_grad():
            x = x.detach().double().requires_grad_(True)
            r = uncond.responsibilities(x, t)
            in_class = (labels.unsqueeze(0) == y.unsqueeze(1)).double()
            log_p = torch.log((r * in_class).sum(1)).sum()
            return torch.autograd.grad(log_p, x)[0].float()

    guided = classifier_guided(uncond, grad_log_prob, path, scale=1.0)
    y = torch.tensor([0, 1, 1, 0, 0, 1])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) * 1.5
    for t in (900, 500, 100, 10):
        tt = torch.full((6,), t)
        want = torch.stack([cond[int(k)](x[i: i + 1], tt[i: i + 1])[0] for i, k in enumerate(y)])
        torch.testing.assert_close(guided(x, tt, y=y), want, rtol=1e-4, atol=1e-4)

    # in the sampler (eta=1, and the ADM layout with variance channels): samples land in their class
    n = 400
    y = torch.arange(n) % 2

    def adm_layout(x, t, y):
        return torch.cat([uncond(x, t), torch.zeros_like(x)], dim=1)  # v = 0: halfway between the variances

    guided_adm = classifier_guided(adm_layout, grad_log_prob, path, scale=1.0, learned_variance=True)
    x = skipstep.sample(guided_adm, (n, 2), path=path, num_steps=STEPS, eta=1.0, variance_type="learned",
                        model_kwargs={"y": y}, generator=torch.Generator().manual_seed(1), progress=False)
    nearest = torch.cdist(x, means).argmin(1)
    assert float((labels[nearest] == y).double().mean()) > 0.97
    unguided = skipstep.sample(adm_layout, (n, 2), path=path, num_steps=STEPS, eta=1.0, variance_type="learned",
                               model_kwargs={"y": y}, generator=torch.Generator().manual_seed(1), progress=False)
    assert float((labels[torch.cdist(unguided, means).argmin(1)] == y).double().mean()) < 0.7


# ---------------------------------------------------------------------------------------------------------------
# the default: the variance channels are read and set aside
# ---------------------------------------------------------------------------------------------------------------
def _trajectory(sched, model, shape, y, seed=5):
    sched.set_timesteps(STEPS)
    g = torch.Generator().manual_seed(seed)
    x = randn_tensor(shape, generator=g)
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(shape[0]), y=y), t, x, generator=g).prev_sample
    return x


def test_default_scheduler_sets_the_learned_variance_aside():
    """``from_config`` of a ``learned_range`` config: the scheduler takes the 2C output (so it refuses a C-channel
    one) and injects the posterior's variance -- the samples of ``fixed_small`` fed the C prediction channels, bit
    for bit, at eta 1 and under the default eta rule; ``use_learned_variance=True`` gives others."""
    model = ADMStyleModel(DiscreteVPPath.from_config({}))
    y = torch.tensor([0, 1, 1, 0])
    shape = (4, 1, 4, 4)
    config = DDPMScheduler(variance_type="learned_range", clip_sample=False).config

    def prediction_only(x, t, y):
        return model(x, t, y=y)[:, :1]

    assert SkippedStepScheduler.from_config(config).step_config.variance_channels
    for eta in (1.0, skipstep.DEFAULT_ETA):
        default = SkippedStepScheduler.from_config(config, eta=eta)
        assert default.config.use_learned_variance is False
        assert (default.step_config.variance_type, default.step_config.variance_channels) == ("small", True)
        fixed = SkippedStepScheduler.from_config(config, eta=eta, variance_type="fixed_small")
        got = _trajectory(default, model, shape, y)
        torch.testing.assert_close(got, _trajectory(fixed, prediction_only, shape, y), rtol=0, atol=0)
    learned = SkippedStepScheduler.from_config(config, eta=1.0, use_learned_variance=True)
    assert learned.step_config.variance_type == "learned"
    assert rel_diff(_trajectory(learned, model, shape, y), got) > 1e-3
    with pytest.raises(ValueError, match=r"2C channels \(learned variance\)"):
        _trajectory(SkippedStepScheduler.from_config(config), prediction_only, shape, y)


def test_sample_sets_the_learned_variance_aside_by_default():
    path = DiscreteVPPath.from_config({})
    model = ADMStyleModel(path)
    y = torch.tensor([0, 1, 0, 1])
    common = dict(path=path, num_steps=STEPS, eta=1.0, model_kwargs={"y": y}, progress=False)
    aside = skipstep.sample(model, (4, 1, 4, 4), variance_type="learned", generator=torch.Generator().manual_seed(2),
                            **common)
    small = skipstep.sample(lambda x, t, y: model(x, t, y=y)[:, :1], (4, 1, 4, 4), variance_type="small",
                            generator=torch.Generator().manual_seed(2), **common)
    torch.testing.assert_close(aside, small, rtol=0, atol=0)
    used = skipstep.sample(model, (4, 1, 4, 4), variance_type="learned", use_learned_variance=True,
                           generator=torch.Generator().manual_seed(2), **common)
    assert rel_diff(used, aside) > 1e-3


def test_use_learned_variance_needs_a_learned_variance_model():
    with pytest.raises(ValueError, match=r"use_learned_variance=True needs variance_type='learned_range'.*"
                                         r"got variance_type='fixed_small'"):
        SkippedStepScheduler(variance_type="fixed_small", use_learned_variance=True)
    with pytest.raises(ValueError, match=r"use_learned_variance must be True or False, got 1"):
        SkippedStepScheduler(variance_type="learned_range", use_learned_variance=1)
    with pytest.raises(ValueError, match=r"use_learned_variance=True needs"):
        skipstep.sample(lambda x, t: x, (2, 1, 2, 2), num_steps=2, use_learned_variance=True, progress=False)


def test_use_learned_variance_survives_save_and_load(tmp_path):
    sched = SkippedStepScheduler(variance_type="learned_range", use_learned_variance=True)
    sched.save_pretrained(tmp_path)
    loaded = SkippedStepScheduler.from_pretrained(tmp_path)
    assert loaded.step_config.variance_type == "learned" and loaded.config.use_learned_variance is True


def test_a_schedule_tuned_with_the_learned_variance_uses_it():
    """A tuned schedule fixes the variance it was fitted with: ``learned`` turns ``use_learned_variance`` on, in the
    scheduler (and its config) and in ``sample()``; the two give the same samples."""
    schedule = skipstep.TunedSchedule(timesteps=[999, 600, 300], eta=[1.0, 1.0, 1.0], nfe=3, num_train_timesteps=1000,
                                      variance_type="learned")
    sched = SkippedStepScheduler.from_config(DDPMScheduler(variance_type="learned_range", clip_sample=False).config,
                                             tuned_schedule=schedule.to_dict())
    assert sched.step_config.variance_type == "learned" and sched.config.use_learned_variance is True
    path = DiscreteVPPath.from_config({})
    model = ADMStyleModel(path)
    y = torch.tensor([0, 1, 1, 0])
    x = skipstep.sample(model, (4, 1, 4, 4), path=path, tuned_schedule=schedule, variance_type="learned",
                        model_kwargs={"y": y}, generator=torch.Generator().manual_seed(4), progress=False)
    sched.set_timesteps(3)
    g = torch.Generator().manual_seed(4)
    xs = randn_tensor((4, 1, 4, 4), generator=g)
    for t in sched.timesteps:
        xs = sched.step(model(xs, t.expand(4), y=y), t, xs, generator=g).prev_sample
    torch.testing.assert_close(x, xs, rtol=0, atol=1e-6)
    aside = skipstep.sample(model, (4, 1, 4, 4), path=path, num_steps=3, timesteps=None, variance_type="learned",
                            eta=[1.0, 1.0, 1.0], spacing=[999, 600, 300], solver_order=1, use_corrector=False,
                            model_kwargs={"y": y}, generator=torch.Generator().manual_seed(4), progress=False)
    assert rel_diff(aside, x) > 1e-3  # the same steps with the variance set aside differ
