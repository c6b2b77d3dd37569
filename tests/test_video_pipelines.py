"""Video: a flow-matching video pipeline (diffusers' ``WanPipeline``, tiny random components, prompt embeddings
passed in) with ``SkippedStepFlowScheduler``, and direct checks that the frame axis of 5-D latents
``(batch, channels, frames, height, width)`` is treated like any other axis by both schedulers:

* the injected noise is i.i.d. per element (no frame-to-frame correlation, unit variance after scaling);
* with a model that acts on each frame separately, changing frame k of the input changes only frame k of the
  output -- for eta=1 (noise drawn from the same generator) and for multistep order 2.

``WanPipeline`` does not pass its ``generator`` to ``scheduler.step``: with eta > 0 the step noise comes from torch's
global generator there (seed it with ``torch.manual_seed``), as for diffusers' own stochastic schedulers.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

from skipstep import SkippedStepFlowScheduler, SkippedStepScheduler

import tiny_models

FRAMES, HW, STEPS = 9, 32, 4  # latents (1, 16, 3, 4, 4)




def rel_diff(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.fixture(scope="module")
def wan_parts():
    return tiny_models.wan_components()


@pytest.fixture(scope="module")
def embeds():
    return (torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
            torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2)))


def run_wan(parts, embeds, scheduler, output_type="latent", seed=0, global_seed=123):
    pipe = WanPipeline(scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(global_seed)  # WanPipeline draws step noise from the global generator
    with torch.no_grad():
        return pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], height=HW, width=HW,
                    num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(seed), output_type=output_type).frames


def test_wan_pipeline_with_the_flow_scheduler(wan_parts, embeds):
    ref_sched = FlowMatchEulerDiscreteScheduler(shift=7.0)  # Wan's flow shift
    lat_euler = run_wan(wan_parts, embeds, ref_sched)
    assert lat_euler.shape == (1, 16, 3, HW // 8, HW // 8)  # 5-D latents

    # eta=0 (order 1, no corrector, on Euler's own sigmas) is the flow-matching Euler sampler, inside the pipeline too
    first_order = dict(solver_order=1, use_corrector=False, timestep_spacing="linspace")
    lat0 = run_wan(wan_parts, embeds, SkippedStepFlowScheduler.from_config(ref_sched.config, eta=0.0, **first_order))
    assert rel_diff(lat0, lat_euler) < 1e-5

    # eta=1 (the skipped-step posterior): finite, different, reproducible given the global seed
    sched = SkippedStepFlowScheduler.from_config(ref_sched.config, eta=1.0, **first_order)
    lat1 = run_wan(wan_parts, embeds, sched)
    assert sched.eta_schedule == [1.0] * STEPS and sched.config.shift == 7.0
    assert bool(torch.isfinite(lat1).all()) and rel_diff(lat1, lat0) > 1e-2
    assert torch.equal(run_wan(wan_parts, embeds, sched), lat1)
    assert not torch.equal(run_wan(wan_parts, embeds, sched, global_seed=7), lat1)

    # order 2, and decoded frames
    video = run_wan(wan_parts, embeds, SkippedStepFlowScheduler.from_config(ref_sched.config, solver_order=2),
                    output_type="np")
    assert video.shape == (1, FRAMES, HW, HW, 3)
    assert bool(torch.isfinite(torch.from_numpy(video)).all()) and video.min() >= 0 and video.max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# the frame axis
# ---------------------------------------------------------------------------------------------------------------
def flow_sched(**kw):
    s = SkippedStepFlowScheduler(shift=3.0, **kw)
    s.set_timesteps(STEPS)
    return s


def vp_sched(**kw):
    s = SkippedStepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **kw)
    s.set_timesteps(STEPS)
    return s


@pytest.mark.parametrize("make", [flow_sched, vp_sched], ids=["flow", "vp"])
def test_injected_noise_is_iid_across_frames(make):
    sched = make(eta=1.0)
    shape = (4, 4, 16, 16, 16)  # (batch, channels, frames, height, width)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = torch.zeros(shape)  # any model output
    t = sched.timesteps[1]
    mean = sched.step(out, t, x, variance_noise=torch.zeros(shape)).prev_sample
    noisy = sched.step(out, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    noise = noisy - mean
    # the noise is the generator's standard normal draw in the sample's own layout (not broadcast over frames),
    # times one scalar: the step's posterior standard deviation
    from diffusers.utils.torch_utils import randn_tensor
    drawn = randn_tensor(shape, generator=torch.Generator().manual_seed(1))
    scale = float((noise * drawn).sum() / drawn.square().sum())
    assert scale > 0.05
    torch.testing.assert_close(noise, scale * drawn, rtol=0, atol=1e-4 * scale * 10)
    z = noise / scale
    n = z.numel() // shape[2]
    frames = z.transpose(0, 2).reshape(shape[2], -1)  # one row per frame
    corr = torch.corrcoef(frames)
    off_diagonal = corr[~torch.eye(shape[2], dtype=torch.bool)]
    assert float(off_diagonal.abs().max()) < 5.0 / n**0.5  # no frame-to-frame correlation
    lag1 = float((z[:, :, 1:] * z[:, :, :-1]).mean())
    assert abs(lag1) < 5.0 / (z[:, :, 1:].numel()) ** 0.5


def per_frame_model(x, t):
    """Acts on each frame separately (a spatial 3x3 blur plus a pointwise nonlinearity), like a model that is the
    identity on the frame axis."""
    b, c, f, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    kernel = torch.full((c, 1, 3, 3), 1.0 / 9.0)
    blurred = torch.nn.functional.conv2d(frames, kernel, padding=1, groups=c)
    y = torch.tanh(blurred) * 0.8 + 0.1 * frames
    return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("make, kw", [(flow_sched, dict(eta=1.0)), (flow_sched, dict(eta=0.0, solver_order=2)),
                                      (vp_sched, dict(eta=1.0)), (vp_sched, dict(eta=0.5, solver_order=2))])
def test_changing_one_frame_changes_only_that_frame(make, kw):
    shape = (2, 3, 5, 6, 6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x_changed = x.clone()
    k = 2
    x_changed[:, :, k] = torch.randn(shape[0], shape[1], shape[3], shape[4],
                                     generator=torch.Generator().manual_seed(9))

    def run(latents):
        sched = make(**kw)
        g = torch.Generator().manual_seed(5)
        for t in sched.timesteps:
            latents = sched.step(per_frame_model(latents, t), t, latents, generator=g).prev_sample
        return latents

    a, b = run(x), run(x_changed)
    others = [i for i in range(shape[2]) if i != k]
    assert torch.equal(a[:, :, others], b[:, :, others])
    assert float((a[:, :, k] - b[:, :, k]).abs().max()) > 1e-3
