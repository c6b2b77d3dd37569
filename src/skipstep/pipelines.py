"""Pipeline helpers for model families whose stock diffusers pipeline loses something skipstep needs.

``DiTPipeline`` and learned variance. DiT (like ADM and IDDPM) predicts ``2C`` channels: ``eps`` and the variance
interpolation values ``v`` (``log var = f log beta + (1 - f) log beta_tilde``, ``f = (v + 1) / 2``). diffusers'
``DiTPipeline`` splits the ``v`` channels off *before* calling ``scheduler.step`` whenever
``transformer.config.out_channels // 2 == latent_channels`` -- so with any scheduler, including
``DDPMScheduler(variance_type="learned_range")``, the learned variance is silently dropped and the scheduler's fixed
variance is used instead. A ``SkippedStepScheduler`` configured with ``variance_type="learned_range"`` refuses the
``C``-channel output loudly (it expects ``2C``), so the loss cannot go unnoticed; with its default ``fixed_small``
it runs in ``DiTPipeline`` exactly like diffusers' schedulers do there (variance dropped).

:class:`LearnedVarianceDiTPipeline` is ``DiTPipeline`` with the loop changed in three ways:

1. the full ``2C`` output (guided ``eps``, the conditional half's ``v``) reaches ``scheduler.step`` when the
   scheduler's ``variance_type`` is ``learned_range`` (or skipstep's ``learned``); otherwise ``eps`` alone, as before;
2. the pipeline's ``generator`` is passed to ``step`` (``DiTPipeline`` does not, so its step noise comes from
   torch's global generator), which makes stochastic samplers reproducible;
3. the scheduler steps the ``B`` guided latents only (``DiTPipeline`` steps a ``2B`` batch and throws half away).

It accepts ``output_type="latent"`` besides ``"pil"``, ``"np"`` and ``"pt"``, and ``latents=`` (the initial noise).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiTPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .steps import LEARNED_VARIANCE_TYPES
from .tuned_schedules import TunedSchedule


def scheduler_wants_learned_variance(scheduler) -> bool:
    """Whether ``scheduler.step`` expects the ``2C`` output of a learned-variance model."""
    return getattr(scheduler, "config", {}).get("variance_type") in LEARNED_VARIANCE_TYPES


class LearnedVarianceDiTPipeline(DiTPipeline):
    """``DiTPipeline`` that keeps a DiT's learned variance (see the module docstring).

    Build it from an existing pipeline or a local folder::

        pipe = LearnedVarianceDiTPipeline(**DiTPipeline.from_pretrained("<local DiT dir>").components)
        pipe.scheduler = SkippedStepScheduler.from_config(pipe.scheduler.config, variance_type="learned_range",
                                                          use_learned_variance=True)

    (without ``use_learned_variance=True`` the scheduler reads the variance channels and sets them aside, see
    ``skipstep.DEFAULT_USE_LEARNED_VARIANCE``). A skipstep scheduler is told the call's ``guidance_scale``
    (``set_guidance_scale``), so its guidance rules apply: above 1 the few-step extrapolation gain is off, from
    ``skipstep.STRONG_GUIDANCE_FROM`` on the strong-guidance member.
    """

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int],
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        output_type: str | None = "pil",
        return_dict: bool = True,
        latents: torch.Tensor | None = None,
    ):
        device = self._execution_device
        batch_size = len(class_labels)
        latent_size = self.transformer.config.sample_size
        latent_channels = self.transformer.config.in_channels
        out_channels = self.transformer.config.out_channels or latent_channels
        learned = out_channels == 2 * latent_channels
        wants = scheduler_wants_learned_variance(self.scheduler)
        if wants and not learned:
            raise ValueError(
                f"the scheduler uses variance_type={self.scheduler.config.variance_type!r}, which needs a model with "
                f"2C = {2 * latent_channels} output channels; this transformer has out_channels={out_channels}"
            )
        shape = (batch_size, latent_channels, latent_size, latent_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        tuned = getattr(self.scheduler, "config", {}).get("tuned_schedule")
        if tuned:  # a schedule tuned at another guidance scale warns (TunedScheduleWarning)
            TunedSchedule.from_dict(tuned, source="(scheduler config)").check_guidance(guidance_scale)
        cfg = guidance_scale > 1
        labels = torch.tensor(class_labels, device=device).reshape(-1)
        if cfg:
            labels = torch.cat([labels, torch.full_like(labels, 1000)])  # DiT's null class, as in DiTPipeline
        step_takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters

        if hasattr(self.scheduler, "set_guidance_scale"):  # skipstep's rules for guidance (strong scale, the gain)
            self.scheduler.set_guidance_scale(float(guidance_scale))
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            timesteps = torch.as_tensor(t, device=device).reshape(-1)[:1].expand(model_in.shape[0])
            out = self.transformer(model_in, timestep=timesteps, class_labels=labels).sample
            eps, rest = out[:, :latent_channels], out[:, latent_channels:]
            if cfg:
                cond_eps, uncond_eps = eps.chunk(2)
                eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
                rest = rest[:batch_size]  # the conditional half's variance values, as DiT/ADM use them
            model_output = torch.cat([eps, rest], dim=1) if (learned and wants) else eps
            extra = {"generator": generator} if step_takes_generator else {}
            latents = self.scheduler.step(model_output, t, latents, **extra).prev_sample

        if output_type == "latent":
            samples = latents
        else:
            samples = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            samples = (samples / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                samples = samples.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    samples = self.numpy_to_pil(samples)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (samples,)
        return ImagePipelineOutput(images=samples)


__all__ = ["LEARNED_VARIANCE_TYPES", "LearnedVarianceDiTPipeline", "scheduler_wants_learned_variance"]
