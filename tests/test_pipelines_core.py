"""End to end in diffusers pipelines, with tiny randomly initialised models built here (offline, CPU, seconds).

The Stable Diffusion test holds THE TRAP: ``StableDiffusionPipeline.__call__`` has ``eta=0.0`` and passes it to any
scheduler whose ``step`` signature names ``eta``. ``SkippedStepScheduler.step`` takes eta only via ``**kwargs``, so
the configured eta (here 1.0, the skipped-step sampler) must survive the pipeline's default.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor

from tiny_models import SD_SCHEDULER_CONFIG

from skipstep import SkippedStepScheduler

transformers = pytest.importorskip("transformers")
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

STEPS = 10




def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5, what: str = ""):
    scale = max(1.0, float(b.abs().max()))
    diff = float((a - b).abs().max())
    print(f"PIPELINE {what}: max|diff| = {diff:.3e} (scale {scale:.2f})")
    assert diff <= rel * scale, f"{what}: max|diff| = {diff:.3e} > {rel} * {scale:.2f}"


# ---------------------------------------------------------------------------------------------------------------
# DDPMPipeline
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet2d():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    ).eval()


def manual_unconditional_loop(unet, sched, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = randn_tensor(shape, generator=g, dtype=unet.dtype)
    sched.set_timesteps(STEPS)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=g).prev_sample
    return x


def test_ddpm_pipeline_runs_and_equals_manual_loop(tiny_unet2d):
    # clip_sample=True as in DDPM checkpoints' configs: the final x0_hat lies in [-1, 1], so the pipeline's
    # (x/2 + 0.5).clamp(0, 1) loses nothing and the comparison below is on the full output
    sched = SkippedStepScheduler(eta=1.0, solver_order=1, clip_sample=True)
    pipe = DDPMPipeline(unet=tiny_unet2d, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                  output_type="pt").images
    assert images.shape == (2, 2, 8, 8)
    assert bool(torch.isfinite(images).all())
    assert sched.num_inference_steps == STEPS
    manual = manual_unconditional_loop(tiny_unet2d, sched, 2, seed=0)
    assert bool(((manual >= -1) & (manual <= 1)).all())
    torch.testing.assert_close(images, (manual / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
    assert float(images.std()) > 1e-3  # not a constant image
    # numpy output, same numbers
    np_images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                     output_type="np").images
    assert np_images.shape == (2, 8, 8, 2)
    torch.testing.assert_close(torch.from_numpy(np_images).permute(0, 3, 1, 2), images, rtol=0, atol=1e-6)


def test_ddpm_pipeline_equals_ddpm_scheduler_respaced(tiny_unet2d):
    ours = SkippedStepScheduler(eta=1.0, solver_order=1, use_corrector=False, clip_sample=True,
                                timestep_spacing="trailing")
    ref = DDPMScheduler(clip_sample=True, timestep_spacing="trailing")
    outs = []
    for sched in (ours, ref):
        pipe = DDPMPipeline(unet=tiny_unet2d, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=STEPS,
                         output_type="pt").images)
    assert_close_rel(outs[0], outs[1], 1e-5, "DDPMPipeline ours(eta=1) vs DDPMScheduler trailing")


# ---------------------------------------------------------------------------------------------------------------
# StableDiffusionPipeline
# ---------------------------------------------------------------------------------------------------------------
SD_CONFIG = SD_SCHEDULER_CONFIG
PROMPT = "a photo of a cat"
GUIDANCE = 5.0
HW = 32  # the vae downsamples x2: 16x16 latents


@pytest.fixture(scope="module")
def sd_components(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=HW // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=4,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()
    # a tiny character-level CLIP BPE vocabulary, written to files and loaded from them
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder = tmp_path_factory.mktemp("tiny_clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    ids = tokenizer(PROMPT, padding="max_length", max_length=16).input_ids
    assert ids[0] == 0 and 1 in ids and len(set(ids)) > 4  # the tokenizer really tokenizes
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def sd_pipe(components, scheduler) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        **components, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours_sd(eta):
    """The first-order member (DDIM at eta=0, DDPM-type at eta=1) on DDIM's trailing grid, without the corrector."""
    return SkippedStepScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, eta=eta, solver_order=1,
                                            use_corrector=False, timestep_spacing="trailing")


def run_sd(pipe, seed=0, output_type="latent", **kwargs):
    with torch.no_grad():
        return pipe(PROMPT, height=HW, width=HW, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type=output_type, **kwargs).images


def manual_cfg_loop(pipe, sched, seed=0):
    """What the pipeline should do with our scheduler: CFG, the configured eta, the same generator."""
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
        embeds = torch.cat([uncond, cond])
        g = torch.Generator().manual_seed(seed)
        latents = randn_tensor((1, 4, HW // 2, HW // 2), generator=g, dtype=embeds.dtype) * sched.init_noise_sigma
        sched.set_timesteps(STEPS)
        for t in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([latents] * 2), t)
            noise_uncond, noise_cond = pipe.unet(model_in, t, encoder_hidden_states=embeds).sample.chunk(2)
            eps = noise_uncond + GUIDANCE * (noise_cond - noise_uncond)
            latents = sched.step(eps, t, latents, generator=g).prev_sample
    return latents


def test_sd_pipeline_runs_and_is_finite(sd_components):
    pipe = sd_pipe(sd_components, ours_sd(1.0))
    images = run_sd(pipe, output_type="np")
    assert images.shape == (1, HW, HW, 3)
    assert bool(torch.isfinite(torch.from_numpy(images)).all())
    assert images.min() >= 0.0 and images.max() <= 1.0
    latents = run_sd(pipe)
    assert latents.shape == (1, 4, HW // 2, HW // 2) and bool(torch.isfinite(latents).all())


def test_sd_pipeline_default_eta_does_not_override_configured_eta(sd_components):
    """THE TRAP. The pipeline's call-time eta=0.0 (its default) must not turn eta=1 into DDIM."""
    sched1 = ours_sd(1.0)
    pipe1 = sd_pipe(sd_components, sched1)
    lat_eta1 = run_sd(pipe1)  # the pipeline passes its default eta=0.0 iff step() names `eta`
    assert sched1.eta_schedule == [1.0] * STEPS  # still configured eta=1 after the pipeline ran
    # an explicit call-time eta is ignored just the same: the configured eta is authoritative
    assert torch.equal(run_sd(pipe1, eta=0.0), lat_eta1)
    assert torch.equal(run_sd(pipe1, eta=0.7), lat_eta1)

    # 1. it differs from the same pipeline with the scheduler configured eta=0
    lat_eta0 = run_sd(sd_pipe(sd_components, ours_sd(0.0)))
    rel = float((lat_eta1 - lat_eta0).abs().max()) / float(lat_eta0.abs().max())
    print(f"PIPELINE eta=1 vs eta=0 configured: relative max|diff| = {rel:.3f}")
    assert rel > 1e-2

    # 2. it equals a manual CFG loop with eta=1 and the same generator
    manual = manual_cfg_loop(pipe1, ours_sd(1.0))
    assert_close_rel(lat_eta1, manual, 1e-6, "SD pipeline eta=1 vs manual CFG loop eta=1")

    # 3. eta=0-configured equals DDIMScheduler (trailing, set_alpha_to_one=True) in the same pipeline
    ddim = DDIMScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, timestep_spacing="trailing",
                                     set_alpha_to_one=True)
    lat_ddim = run_sd(sd_pipe(sd_components, ddim))
    assert_close_rel(lat_eta0, lat_ddim, 1e-5, "SD pipeline ours(eta=0) vs DDIMScheduler")
    # both are deterministic given the initial noise: another seed for the step noise cannot matter, and the
    # eta=0 manual loop agrees too
    assert_close_rel(manual_cfg_loop(pipe1, ours_sd(0.0)), lat_eta0, 1e-6, "SD manual CFG loop eta=0 vs pipeline")
    # and the eta=1 run is not DDIM in disguise
    assert float((lat_eta1 - lat_ddim).abs().max()) > 1e-2 * float(lat_ddim.abs().max())


def test_sd_pipeline_eta_schedule_string(sd_components):
    """A schedule string also survives the pipeline: 'skip-ddim:5' == manual loop with the same schedule."""
    sched = ours_sd("skip-ddim:5")
    pipe = sd_pipe(sd_components, sched)
    lat = run_sd(pipe)
    assert sched.eta_schedule == [1.0] * 5 + [0.0] * 5
    assert_close_rel(lat, manual_cfg_loop(pipe, ours_sd("skip-ddim:5")), 1e-6, "SD pipeline skip-ddim:5 vs manual")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sd_pipeline_config_rewrite_is_obeyed(sd_components):
    """``StableDiffusionPipeline.__init__`` rewrites an outdated scheduler config (``clip_sample=True`` -> False,
    ``steps_offset`` -> 1) by replacing ``scheduler._internal_dict``; diffusers' schedulers read those keys at step
    time and follow. Ours must too, or its behaviour disagrees with its own (saved) config."""
    sched = SkippedStepScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, eta=0.0, solver_order=1,
                                             use_corrector=False, timestep_spacing="trailing", clip_sample=True,
                                             steps_offset=0)
    pipe = sd_pipe(sd_components, sched)
    assert sched.config.clip_sample is False and sched.config.steps_offset == 1  # rewritten by the pipeline
    lat = run_sd(pipe)
    # behaves like a scheduler built from its (rewritten) config, i.e. like one saved and reloaded
    assert torch.equal(lat, run_sd(sd_pipe(sd_components, SkippedStepScheduler.from_config(sched.config))))
    # and like DDIMScheduler given the same outdated config in the same pipeline
    ddim = DDIMScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, timestep_spacing="trailing",
                                     set_alpha_to_one=True, clip_sample=True, steps_offset=0)
    lat_ddim = run_sd(sd_pipe(sd_components, ddim))
    assert ddim.config.clip_sample is False
    assert_close_rel(lat, lat_ddim, 1e-5, "SD pipeline rewritten config: ours(eta=0) vs DDIMScheduler")
    # the comparison is not vacuous: x0_hat leaves [-1, 1] here, so clipping would have changed the result
    clipped = manual_cfg_loop(pipe, SkippedStepScheduler.from_config(sched.config, clip_sample=True))
    assert float((clipped - lat).abs().max()) > 1e-2
