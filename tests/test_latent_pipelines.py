"""Latent text-to-image pipelines with tiny random components: Stable Diffusion (custom timesteps, img2img with
``strength``, multistep order 2 entered mid-trajectory) and Stable Diffusion XL (two text encoders, CFG, the
call-time ``eta`` trap).

How img2img enters our scheduler: ``StableDiffusionImg2ImgPipeline.get_timesteps`` keeps
``scheduler.timesteps[t_start * order:]`` with ``t_start = n - int(n * strength)``, calls ``set_begin_index`` only
if the scheduler has it (``SkippedStepScheduler`` has not: it looks timesteps up by value), noises the image with
``add_noise`` at the first kept timestep and then steps from there. Our scheduler starts a fresh multistep history
whenever a step does not follow the previous one, so ``solver_order=2`` begins with a first-order step exactly as
DPM-Solver++(2M) does.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils.torch_utils import randn_tensor

import skipstep
from skipstep import SkippedStepScheduler

import tiny_models

STEPS = 10
HW = 32  # latents 16x16
PROMPT = "a photo of a cat"
GUIDANCE = 5.0
SD_CONFIG = tiny_models.SD_SCHEDULER_CONFIG




def rel_diff(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def ours(**kw):
    kw.setdefault("solver_order", 1)  # the first-order family, compared against DDIM/DDPM
    kw.setdefault("use_corrector", False)  # DDIM/DDPM/DPM-Solver have none
    return SkippedStepScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, timestep_spacing="trailing", **kw)


def ddim():
    return DDIMScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, timestep_spacing="trailing",
                                     set_alpha_to_one=True)


def dpmpp_2m():
    return DPMSolverMultistepScheduler.from_config(
        DDIMScheduler(**SD_CONFIG).config, algorithm_type="dpmsolver++", solver_order=2, solver_type="heun",
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True)


class Recorder:
    def __init__(self, sched):
        self.calls, self._step = [], sched.step
        sched.step = self

    def __call__(self, model_output, timestep, sample, generator=None, **kwargs):
        self.calls.append(int(timestep))
        return self._step(model_output, timestep, sample, generator=generator, **kwargs)


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    return tiny_models.sd_components(tmp_path_factory.mktemp("sd"))


def make(cls, parts, scheduler, **extra):
    pipe = cls(**parts, scheduler=scheduler, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd(parts, scheduler):
    return make(StableDiffusionPipeline, parts, scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def sd_img2img(parts, scheduler):
    return make(StableDiffusionImg2ImgPipeline, parts, scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion: custom timesteps
# ---------------------------------------------------------------------------------------------------------------
def test_sd_custom_timesteps(sd_parts):
    custom = [999, 850, 600, 420, 250, 120, 40]
    sched = ours(eta=1.0)
    rec = Recorder(sched)
    pipe = sd(sd_parts, sched)
    with torch.no_grad():
        lat = pipe(PROMPT, height=HW, width=HW, timesteps=custom, guidance_scale=GUIDANCE,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert rec.calls == custom and sched.timesteps.tolist() == custom and sched.custom_timesteps
    assert lat.shape == (1, 4, HW // 2, HW // 2) and bool(torch.isfinite(lat).all())

    # the same loop by hand (CFG, our scheduler, the same generator)
    ref = ours(eta=1.0)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
        embeds = torch.cat([uncond, cond])
        g = torch.Generator().manual_seed(0)
        x = randn_tensor(lat.shape, generator=g)
        ref.set_timesteps(timesteps=custom)
        for t in ref.timesteps:
            e_u, e_c = pipe.unet(torch.cat([x] * 2), t, encoder_hidden_states=embeds).sample.chunk(2)
            x = ref.step(e_u + GUIDANCE * (e_c - e_u), t, x, generator=g).prev_sample
    assert rel_diff(lat, x) < 1e-6

    # custom timesteps must be strictly descending and inside the chain: refused with the list
    with pytest.raises(ValueError, match="strictly descending"):
        pipe(PROMPT, height=HW, width=HW, timesteps=[500, 700, 100], output_type="latent")
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        pipe(PROMPT, height=HW, width=HW, timesteps=[1200, 500], output_type="latent")


def test_sd_analytic_first_step_equals_the_functional_sampler(sd_parts):
    """set_data_moments in a real pipeline (CFG doubles the batch that scale_model_input gets): n unet calls, the
    samples of skipstep.sample(..., data_mean=...) on the guided model."""
    sched = SkippedStepScheduler.from_config(DDIMScheduler(**SD_CONFIG).config)  # the default
    sched.set_data_moments(0.0, 1.0)
    rec = Recorder(sched)
    pipe = sd(sd_parts, sched)
    with torch.no_grad():
        lat = pipe(PROMPT, height=HW, width=HW, num_inference_steps=4, guidance_scale=GUIDANCE,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
        assert rec.calls == sched.timesteps.tolist() and len(rec.calls) == 4
        cond, uncond = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
        embeds = torch.cat([uncond, cond])

        def guided(x, t):
            e_u, e_c = pipe.unet(torch.cat([x] * 2), t[0], encoder_hidden_states=embeds).sample.chunk(2)
            return e_u + GUIDANCE * (e_c - e_u)

        x_T = randn_tensor(lat.shape, generator=torch.Generator().manual_seed(0))
        ref = skipstep.sample(guided, path=sched.path, num_steps=4, noise=x_T, data_mean=0.0, data_var=1.0,
                              progress=False)
    assert rel_diff(lat, ref) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion img2img
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def init_image():
    g = torch.Generator().manual_seed(42)
    return torch.rand((1, 3, HW, HW), generator=g)


def run_img2img(parts, sched, image, strength, seed=0):
    pipe = sd_img2img(parts, sched)
    with torch.no_grad():
        return pipe(PROMPT, image=image, strength=strength, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("strength", [0.6, 0.35])
def test_sd_img2img_enters_mid_trajectory(sd_parts, init_image, strength):
    sched = ours(eta=1.0)
    rec = Recorder(sched)
    lat = run_img2img(sd_parts, sched, init_image, strength)
    kept = int(STEPS * strength)
    assert rec.calls == sched.timesteps.tolist()[STEPS - kept:]  # started mid-way, by value
    assert lat.shape == (1, 4, HW // 2, HW // 2) and bool(torch.isfinite(lat).all())
    # eta=0 equals DDIMScheduler (trailing, alpha_0 = 1) entered at the same point
    assert rel_diff(run_img2img(sd_parts, ours(eta=0.0), init_image, strength),
                    run_img2img(sd_parts, ddim(), init_image, strength)) < 1e-5
    # multistep order 2 entered mid-way: a first-order start, then order 2 -- DPM-Solver++(2M) in the same place
    lat2 = run_img2img(sd_parts, ours(eta=0.0, solver_order=2), init_image, strength)
    lat_ref = run_img2img(sd_parts, dpmpp_2m(), init_image, strength)
    print(f"IMG2IMG strength={strength}: ours(eta=0, order 2) vs DPM-Solver++(2M): {rel_diff(lat2, lat_ref):.2e}")
    assert rel_diff(lat2, lat_ref) < 1e-5
    assert rel_diff(lat2, run_img2img(sd_parts, ours(eta=0.0), init_image, strength)) > 1e-4  # order 2 is used


def test_img2img_run_after_a_full_run_resets_the_history(sd_parts, init_image):
    """The same scheduler object first runs text-to-image, then img2img: the history of the first run must not
    leak into the second (different entry point) -- equal to a fresh scheduler's result."""
    sched = ours(eta=0.0, solver_order=2)
    with torch.no_grad():
        sd(sd_parts, sched)(PROMPT, height=HW, width=HW, num_inference_steps=STEPS, output_type="latent")
    assert torch.equal(run_img2img(sd_parts, sched, init_image, 0.6),
                       run_img2img(sd_parts, ours(eta=0.0, solver_order=2), init_image, 0.6))


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion XL
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_parts(tmp_path_factory):
    return tiny_models.sdxl_components(tmp_path_factory.mktemp("sdxl"))


def sdxl(parts, scheduler):
    return make(StableDiffusionXLPipeline, parts, scheduler, add_watermarker=False)


def run_sdxl(pipe, seed=0, output_type="latent", num_inference_steps=STEPS, **kwargs):
    with torch.no_grad():
        return pipe(PROMPT, height=HW, width=HW, num_inference_steps=num_inference_steps, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type=output_type, **kwargs).images


def test_sdxl_runs_with_cfg_and_is_finite(sdxl_parts):
    pipe = sdxl(sdxl_parts, ours(eta=1.0))
    images = run_sdxl(pipe, output_type="np")
    assert images.shape == (1, HW, HW, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())
    assert images.min() >= 0.0 and images.max() <= 1.0
    lat = run_sdxl(pipe)
    assert lat.shape == (1, 4, HW // 2, HW // 2) and bool(torch.isfinite(lat).all())


def test_sdxl_call_time_eta_does_not_override_configured_eta(sdxl_parts):
    """``StableDiffusionXLPipeline.__call__(eta=0.0)`` is passed to any ``step`` that names ``eta``; ours takes it
    only via ``**kwargs``, so the configured eta=1 survives (as for Stable Diffusion)."""
    sched = ours(eta=1.0)
    pipe = sdxl(sdxl_parts, sched)
    lat1 = run_sdxl(pipe)
    assert sched.eta_schedule == [1.0] * STEPS
    assert torch.equal(run_sdxl(pipe, eta=0.0), lat1)
    assert torch.equal(run_sdxl(pipe, eta=0.7), lat1)
    lat0 = run_sdxl(sdxl(sdxl_parts, ours(eta=0.0)))
    assert rel_diff(lat1, lat0) > 1e-2  # eta=1 is not DDIM in disguise
    assert rel_diff(lat0, run_sdxl(sdxl(sdxl_parts, ddim()))) < 1e-5  # eta=0 configured == DDIMScheduler
    # custom timesteps reach the scheduler through SDXL's retrieve_timesteps too
    rec_sched = ours(eta=1.0)
    rec = Recorder(rec_sched)
    run_sdxl(sdxl(sdxl_parts, rec_sched), timesteps=[999, 600, 300, 50], num_inference_steps=None)
    assert rec.calls == [999, 600, 300, 50]
