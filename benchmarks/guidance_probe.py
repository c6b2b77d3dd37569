"""Does classifier-free guidance show in the model output's scale? (docs/results.md, "untold guidance")

An exact denoiser's noise prediction is a conditional mean, ``eps_hat = E[eps | x_t]``, so by Jensen
``E mean(eps_hat^2) <= E mean(eps^2) = 1`` at every ``t``; a guided output ``eps_u + w (eps_c - eps_u)`` is not a
conditional mean and can exceed it. This prints, per step of the default sampler (untold: what a diffusers pipeline
gets), the batch mean of ``mean(eps_hat^2)`` on the zoo's epsilon-prediction models, the guided ones at several
scales -- a probe for a scheduler that notices strong guidance it was not told, not a rule.

    python benchmarks/guidance_probe.py [--nfe 10] [--num-samples 256] [--scales 1,2,4,8]
"""
import argparse

import torch

from skipstep.lab.models import load_model
from skipstep.lab.our_samplers import default_scheduler

UNGUIDED = ("digits", "digits-eps-b", "digits-eps-c", "digits-lv", "digits-lv-b")
GUIDED = ("digits-cfg", "digits-cfg-b", "digits-cfg-c")


def output_scale_per_step(name: str, scale: float | None, nfe: int, n: int, seed: int = 0) -> list[float]:
    """The batch mean of ``mean(eps_hat^2)`` at each of the default's ``nfe`` steps (seed ``seed``)."""
    loaded = load_model(name)
    if scale is not None:
        loaded = loaded.at_guidance(scale)
    model = loaded.model_for_batch(range(n), with_variance=True)
    scheduler = default_scheduler(dict(loaded.scheduler_config))  # not told the scale
    scheduler.set_timesteps(nfe)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *loaded.sample_shape), generator=generator)
    channels = loaded.sample_shape[0]
    out = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = model(x, t)
            out.append(float(output[:, :channels].pow(2).mean()))
            x = scheduler.step(output, t, x, generator=generator).prev_sample
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--scales", default="1,2,4,8")
    args = parser.parse_args()
    views = [(m, None) for m in UNGUIDED] + [(m, float(w)) for m in GUIDED for w in args.scales.split(",")]
    print(f"| model | w | mean(eps_hat^2) at each of the {args.nfe} steps (t falling) | max |")
    print("|---|---:|---|---:|")
    for name, scale in views:
        values = output_scale_per_step(name, scale, args.nfe, args.num_samples)
        print(f"| `{name}` | {'-' if scale is None else f'{scale:g}'} | {' '.join(f'{v:.3f}' for v in values)} | "
              f"{max(values):.3f} |", flush=True)


if __name__ == "__main__":
    main()
