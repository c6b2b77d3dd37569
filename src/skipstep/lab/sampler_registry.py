"""The sampler registry, in one import: the mechanics (:mod:`skipstep.lab.sampler_recipes`), skipstep's own
samplers and ``tuned:FILE`` (:mod:`skipstep.lab.our_samplers`), diffusers' peers and their enumeration for a model
(:mod:`skipstep.lab.peer_samplers`), the k-diffusion-convention peers (:mod:`skipstep.lab.kdiffusion_peers`), and
the candidates for the default (:mod:`skipstep.lab.candidates`).
Importing this module registers all of them.

Settings shared by all samplers (stated in every benchmark output, see :data:`COMMON_SETTINGS`). Add a sampler
with :func:`register_sampler`::

    register_sampler("my-sampler", lambda config, steps: MyScheduler.from_config(config), min_nfe=2)
"""

from __future__ import annotations

from ..tuned_schedules import TUNED_SCHEDULES_DIR
from .our_samplers import TUNED_PREFIX, tuned_sampler  # registered first: ours lead every list
from .peer_samplers import PeerEnumeration, enumerate_peers  # noqa: I001 - registration order
from .kdiffusion_peers import KDiffusionRunner  # noqa: I001
from . import candidates  # noqa: F401,I001 - registers the default's candidates (family "candidate")
from . import analytic_first  # noqa: F401,I001 - registers <base>-af, the analytic first step (family "analytic")
from .sampler_recipes import (CallCounter, SamplerError, SamplerRecipe, available_samplers, build_scheduler,
                              check_sampler_for_model, clip_overrides, from_config_accepting, get_sampler,
                              register_sampler, run_standard_loop, sampler_names, sampler_refusal, sampler_settings,
                              scheduler_config_for, steps_for_nfe)

__all__ = [
    "COMMON_SETTINGS", "CallCounter", "KDiffusionRunner", "PeerEnumeration", "SamplerError", "SamplerRecipe",
    "TUNED_PREFIX", "available_samplers", "build_scheduler", "check_sampler_for_model", "clip_overrides",
    "enumerate_peers", "format_sampler_list", "from_config_accepting", "get_sampler", "register_sampler",
    "run_standard_loop", "sampler_names", "sampler_refusal", "sampler_settings", "scheduler_config_for",
    "steps_for_nfe", "tuned_sampler",
]

COMMON_SETTINGS = {
    "timestep_spacing": "ours: trailing; diffusers' peers: the model's own timestep_spacing (--peer-spacing "
                        "config, the default: what X.from_config(model_config) gives) or trailing (--peer-spacing "
                        "trailing); flow models: the FlowMatch sigmas with the model's shift; k-diffusion peers: "
                        "Karras sigmas (rho=7)",
    "final_step": "to clean data where supported: DDIM/PNDM set_alpha_to_one=True; DPM-Solver/UniPC/Euler "
                  "final_sigmas_type='zero'; ours and DDPM always end at alpha=1; DEIS and SA-Solver end at "
                  "sigma(t=0) (no option); unipc-bh1 at sigma_min; iPNDM at sigma_min",
    "x0_clipping": "follows the model's scheduler config (clip_sample, clip_sample_range) unless bench/sample "
                   "--clip on|off: ours, DDPM, DDIM and Heun clip x0_hat with clip_sample; DPM-Solver, UniPC, DEIS "
                   "and SA-Solver use thresholding with sample_max_value = the range (exactly clipping for range "
                   "1); the other peers have no x0 clipping",
    "nfe": "counted by wrapping the model; one batched network call = 1 NFE (a classifier-free-guidance call on "
           "[x; x] is one NFE and two unbatched network calls, recorded as network_calls_unbatched)",
}

#: Headings of the sampler families in :func:`format_sampler_list`.
FAMILY_TITLES = {"skipstep": "skipstep's samplers (group 'ours')", "diffusers": "diffusers' samplers (group 'peers')",
                 "k-diffusion": "k-diffusion-convention samplers (group 'peers')", "reference": "the reference",
                 "tuned": "tuned schedules",
                 "analytic": "ours with the analytic first step (training-data mean and variance; one free step)",
                 "analytic-scheduler": "the default scheduler with the analytic first step (set_data_moments)"}


def format_sampler_list() -> str:
    """Every registered sampler with its one-line meaning, by family; then the groups and ``tuned:``."""
    table = available_samplers()
    width = max(len(name) for name in table)
    lines = []
    families = {name: get_sampler(name).family for name in table}
    for family in dict.fromkeys(families.values()):
        lines.append(FAMILY_TITLES.get(family, family) + ":")
        for name, fam in families.items():
            if fam == family:
                recipe = get_sampler(name)
                order = f" [NFE >= {recipe.min_nfe}]" if recipe.min_nfe > 1 else ""
                lines.append(f"  {name:<{width}}  {recipe.description}{order}")
    shipped = ", ".join(sorted(p.stem for p in TUNED_SCHEDULES_DIR.glob("*.json"))) or "none"
    lines += ["groups:", f"  {'all':<{width}}  ours and peers", f"  {'ours':<{width}}  every skipstep sampler "
              "that can sample the model", f"  {'peers':<{width}}  the peers the bench enumerates for the model "
              "(every diffusers class that understands its config, and the k-diffusion peers)",
              "tuned schedules:",
              f"  {'tuned:FILE.json':<{width}}  a schedule written by `skipstep tune` (runs at exactly its NFE)",
              f"  {'tuned:NAME':<{width}}  a shipped schedule ({shipped})"]
    return "\n".join(lines)
