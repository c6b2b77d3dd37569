"""diffusers' schedulers as peers, and the enumeration that decides which of them a model gets.

**The variants** (:data:`VARIANTS`): each peer is one diffusers class with its recommended few-step settings
(diffusers' docstrings and ``peers.md``), built with ``X.from_config(model_config, **settings)`` -- what a user
gets -- and timesteps from the model's own ``timestep_spacing`` (``--peer-spacing config``, the default) or
``trailing``. Classes with flow sigmas (DPM-Solver, UniPC, DEIS, SA-Solver) also run flow models with
``use_flow_sigmas=True, flow_shift=<the model's shift>, prediction_type="flow_prediction"``.

**The enumeration** (:func:`enumerate_peers`): every scheduler class ``diffusers.schedulers`` exports is listed
for the model, either with the peers it gives or with the reason it cannot sample this model -- a model-specific
or distilled-model scheduler, one that ignores the model's betas, one for the other path (VP vs flow), one that
has no ``rescale_betas_zero_snr`` for a zero-terminal-SNR model, one whose build or first steps fail on the
model's config. A class the table does not know (a newer diffusers) is listed as not checked.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable

import diffusers
import diffusers.schedulers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .loaded_model import LoadedModel
from .sampler_recipes import (build_scheduler, clip_overrides, from_config_accepting, get_sampler, is_flow_config,
                              register_sampler, run_standard_loop, sampler_names, scheduler_config_for)

__all__ = ["PeerEnumeration", "PeerVariant", "VARIANTS", "class_refusal", "enumerate_peers", "scheduler_classes"]


@dataclass(frozen=True)
class PeerVariant:
    """One peer: a diffusers class with its recommended settings (see the module docstring)."""

    name: str
    class_name: str
    overrides: dict
    description: str
    regimes: tuple[str, ...] = ("vp",)
    min_nfe: int = 1
    nfe_of_steps: Callable[[int], int] | None = None
    order_reason: str = ""
    stochastic: bool = False
    clip: str | None = None
    learned_variance: bool = False
    note: str = ""
    requires: str | None = None  # a module the class needs (torchsde)
    vp_only_reason: str = ""  # why this variant has no flow form although its class does
    extra: dict = field(default_factory=dict)
    final_step_to_zero: bool = False  # flow: the last step returns the data prediction (see _FINAL_TO_ZERO)
    dry_run_all_steps: bool = False  # its grid depends on the step count: the dry run tries every one of 3..20


_DPM = {"final_sigmas_type": "zero", "lower_order_final": True}
#: lower_order_final=True is what diffusers forces with final_sigmas_type="zero" (it would warn and rewrite it)
_SINGLESTEP = {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero", "lower_order_final": True}
#: SA-Solver's and DEIS's own defaults, said out loud: ``from_config`` carries a foreign class's
#: ``algorithm_type`` by name, and each refuses the other's values (a DPM-Solver config's "dpmsolver++" in SA-Solver,
#: an SA-Solver config's "data_prediction" in DEIS: NotImplementedError)
_SA = {"algorithm_type": "data_prediction"}
_SA3 = {**_SA, "predictor_order": 3, "corrector_order": 3}
_DEIS = {"algorithm_type": "deis", "lower_order_final": True}
_NO_SPACING_KEY = "no timestep_spacing key: its grid is always linspace over the chain without t=0"
_BOTH = ("vp", "flow")
_THREE = dict(min_nfe=3, order_reason="it is run as a 3rd-order multistep method (recommended for unconditional "
                                      "models)")
_TWO = dict(min_nfe=2, order_reason="it is a 2nd-order multistep method")
_TWO_EVALS = dict(min_nfe=2, nfe_of_steps=lambda k: 2 * k - 1,
                  order_reason="it is a 2nd-order method (2 evaluations per step, the last step is an Euler step)")
_ENDS_AT_SIGMA0 = ("ends at sigma(t=0) of the chain (no final_sigmas_type option); with flow sigmas its last step "
                   "has zero length in diffusers 0.42 (the final sigma repeats the last noisy one)")
_FINAL_TO_ZERO = ("the same scheduler, but its last step goes to sigma = 0 as a first-order data-prediction step: it "
                  "returns x0_hat = x - sigma v of the last evaluation, which is what DPM-Solver++ and UniPC do with "
                  "final_sigmas_type='zero' and lower_order_final=True; same NFE, every earlier step unchanged")
_SD3M = ("diffusers' own 3M SDE: its D2 coefficient alpha_t((1-e^{-2h}-2h)/(2h)^2 - 1/2) has the opposite sign of "
         "the exact integral (+1/2, k-diffusion's sample_dpmpp_3m_sde; see dpmpp-3m-sde-k)")

_KARRAS = ("Karras sigmas (rho = 7) over the chain's sigma range, mapped to timesteps by diffusers; the model's "
           "timestep_spacing does not apply; VP chains only (diffusers' flow sigmas replace them)")

VARIANTS: list[PeerVariant] = [
    PeerVariant("ddpm", "DDPMScheduler", {}, "diffusers DDPM, respaced (ancestral; the config's variance_type, "
                "learned_range for a learned-variance model)", stochastic=True, clip="clip_sample",
                learned_variance=True),
    PeerVariant("ddim", "DDIMScheduler", {"set_alpha_to_one": True}, "diffusers DDIM (eta=0)", clip="clip_sample"),
    PeerVariant("pndm", "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True},
                "diffusers PNDM with skip_prk_steps=True (PLMS); k steps cost k+1 NFE", min_nfe=4,
                nfe_of_steps=lambda k: k + 1,
                order_reason="PLMS is a 4th-order linear multistep method; its first step costs two evaluations"),
    PeerVariant("dpmpp-2m", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "dpmsolver++",
                "solver_order": 2}, "diffusers DPM-Solver++(2M)", _BOTH, clip="thresholding", **_TWO),
    PeerVariant("dpmpp-2m-sde", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "sde-dpmsolver++",
                "solver_order": 2}, "diffusers SDE-DPM-Solver++(2M)", _BOTH, stochastic=True, clip="thresholding",
                **_TWO),
    PeerVariant("dpmpp-3m", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "dpmsolver++",
                "solver_order": 3}, "diffusers DPM-Solver++(3M) (order 3: diffusers' recommendation for "
                "unconditional sampling)", _BOTH, clip="thresholding", **_THREE),
    PeerVariant("dpmpp-3m-sde", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "sde-dpmsolver++",
                "solver_order": 3}, "diffusers SDE-DPM-Solver++(3M)", _BOTH, stochastic=True, clip="thresholding",
                note=_SD3M, **_THREE),
    PeerVariant("dpmpp-2m-karras", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "dpmsolver++",
                "solver_order": 2, "use_karras_sigmas": True}, "diffusers DPM-Solver++(2M) on Karras sigmas "
                "(A1111's / ComfyUI's 'DPM++ 2M Karras')", clip="thresholding", note=_KARRAS, dry_run_all_steps=True,
                **_TWO),
    PeerVariant("dpmpp-2m-sde-karras", "DPMSolverMultistepScheduler", {**_DPM, "algorithm_type": "sde-dpmsolver++",
                "solver_order": 2, "use_karras_sigmas": True}, "diffusers SDE-DPM-Solver++(2M) on Karras sigmas "
                "('DPM++ 2M SDE Karras')", stochastic=True, clip="thresholding", note=_KARRAS,
                dry_run_all_steps=True, **_TWO),
    PeerVariant("dpmpp-2s", "DPMSolverSinglestepScheduler", {**_SINGLESTEP, "solver_order": 2},
                "diffusers DPM-Solver++ singlestep, order 2 (recommended for guided sampling)", _BOTH,
                clip="thresholding", note=_NO_SPACING_KEY, **_TWO),
    PeerVariant("dpmpp-3s", "DPMSolverSinglestepScheduler", {**_SINGLESTEP, "solver_order": 3},
                "diffusers DPM-Solver++ singlestep, order 3 (recommended for unconditional sampling)", _BOTH,
                clip="thresholding", note=_NO_SPACING_KEY, **_THREE),
    PeerVariant("unipc-2", "UniPCMultistepScheduler", {"final_sigmas_type": "zero", "solver_order": 2,
                "predict_x0": True, "lower_order_final": True, "solver_type": "bh2"},
                "diffusers UniPC-bh2, order 2 (recommended for guided sampling)", _BOTH, clip="thresholding", **_TWO),
    PeerVariant("unipc", "UniPCMultistepScheduler", {"final_sigmas_type": "zero", "solver_order": 3,
                "predict_x0": True, "lower_order_final": True, "solver_type": "bh2"},
                "diffusers UniPC-bh2, order 3 (recommended for unconditional sampling)", _BOTH, clip="thresholding",
                note="bh1 returns NaN with final_sigmas_type='zero' in diffusers 0.42 (the final step has h = inf): "
                     "unipc-bh1 runs it with final_sigmas_type='sigma_min'", **_THREE),
    PeerVariant("unipc-bh1", "UniPCMultistepScheduler", {"final_sigmas_type": "sigma_min", "solver_order": 3,
                "predict_x0": True, "lower_order_final": True, "solver_type": "bh1"},
                "diffusers UniPC-bh1, order 3 (diffusers' advice below 10 steps for unconditional sampling), ending "
                "at sigma_min", clip="thresholding",
                note="final_sigmas_type='sigma_min' (with 'zero' bh1 returns NaN): the last step stops at "
                     "sigma(t=0), not at clean data",
                vp_only_reason="with flow sigmas final_sigmas_type='sigma_min' repeats the last noisy sigma (a "
                               "zero-length final step), and 'zero' makes bh1 NaN", **_THREE),
    PeerVariant("deis-2", "DEISMultistepScheduler", {**_DEIS, "solver_order": 2},
                "diffusers DEIS, order 2 (recommended for guided sampling)", _BOTH, clip="thresholding",
                note=_ENDS_AT_SIGMA0, **_TWO),
    PeerVariant("deis", "DEISMultistepScheduler", {**_DEIS, "solver_order": 3},
                "diffusers DEIS, order 3 (recommended for unconditional sampling)", _BOTH, clip="thresholding",
                note=_ENDS_AT_SIGMA0, **_THREE),
    PeerVariant("sa-solver", "SASolverScheduler", _SA, "diffusers SA-Solver with its defaults (predictor and "
                "corrector order 2, tau = 1 on 200 <= t <= 800, data prediction)", _BOTH, stochastic=True,
                clip="thresholding", note=_ENDS_AT_SIGMA0, **_TWO),
    PeerVariant("sa-solver-3", "SASolverScheduler", _SA3,
                "diffusers SA-Solver, predictor and corrector order 3 (recommended for unconditional sampling)",
                _BOTH, stochastic=True, clip="thresholding", note=_ENDS_AT_SIGMA0, **_THREE),
    # diffusers' SA-Solver and DEIS never denoise a flow model's last step (see _ENDS_AT_SIGMA0): these are them as
    # a user would repair them, so the best VP peer at few steps is judged on flow models too
    PeerVariant("sa-solver-zero", "SASolverScheduler", _SA, "diffusers SA-Solver (sa-solver) with its last step to "
                "sigma 0", ("flow",), stochastic=True, note=_FINAL_TO_ZERO, final_step_to_zero=True, **_TWO),
    PeerVariant("sa-solver-3-zero", "SASolverScheduler", _SA3,
                "diffusers SA-Solver order 3 (sa-solver-3) with its last step to sigma 0", ("flow",), stochastic=True,
                note=_FINAL_TO_ZERO, final_step_to_zero=True, **_THREE),
    PeerVariant("deis-zero", "DEISMultistepScheduler", {**_DEIS, "solver_order": 3}, "diffusers DEIS order 3 (deis) "
                "with its last step to sigma 0", ("flow",), note=_FINAL_TO_ZERO, final_step_to_zero=True, **_THREE),
    PeerVariant("euler", "EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, "diffusers Euler (ODE)"),
    PeerVariant("euler-a", "EulerAncestralDiscreteScheduler", {}, "diffusers Euler ancestral", stochastic=True),
    PeerVariant("heun", "HeunDiscreteScheduler", {}, "diffusers Heun (2nd order); k steps cost 2k-1 NFE (the last "
                "step is an Euler step)", clip="clip_sample", **_TWO_EVALS),
    PeerVariant("kdpm2", "KDPM2DiscreteScheduler", {}, "diffusers KDPM2 (DPM-Solver-2 in k-diffusion's form); k "
                "steps cost 2k-1 NFE", **_TWO_EVALS),
    PeerVariant("kdpm2-a", "KDPM2AncestralDiscreteScheduler", {}, "diffusers KDPM2 ancestral; k steps cost 2k-1 "
                "NFE", stochastic=True, **_TWO_EVALS),
    PeerVariant("lms", "LMSDiscreteScheduler", {}, "diffusers LMS (linear multistep, order 4 in step())"),
    PeerVariant("dpmpp-sde", "DPMSolverSDEScheduler", {}, "diffusers DPM-Solver++ SDE (k-diffusion's "
                "sample_dpmpp_sde, Brownian-tree noise); k steps cost 2k-1 NFE", stochastic=True, requires="torchsde",
                note="its Brownian tree is seeded with noise_sampler_seed, drawn from each batch's step generator",
                **_TWO_EVALS),
    PeerVariant("dpmpp-sde-karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}, "diffusers DPM-Solver++ "
                "SDE on Karras sigmas ('DPM++ SDE Karras'); k steps cost 2k-1 NFE", stochastic=True,
                requires="torchsde", note=_KARRAS, dry_run_all_steps=True, **_TWO_EVALS),
    PeerVariant("flow-euler", "FlowMatchEulerDiscreteScheduler", {}, "diffusers FlowMatchEuler (the flow ODE's "
                "Euler step; the flow models' default)", ("flow",)),
    PeerVariant("flow-heun", "FlowMatchHeunDiscreteScheduler", {}, "diffusers FlowMatchHeun; k steps cost 2k-1 NFE",
                ("flow",), **_TWO_EVALS),
]
_BY_NAME = {v.name: v for v in VARIANTS}

#: classes that are not peers of any model the lab samples, with the reason
NOT_PEERS = {
    "AmusedScheduler": "discrete-token (masked image token) scheduler of aMUSEd, not a Gaussian diffusion sampler",
    "VQDiffusionScheduler": "discrete-token scheduler of VQ-Diffusion, not a Gaussian diffusion sampler",
    "BlockRefinementScheduler": "discrete-token block refinement from logits, not a Gaussian diffusion sampler",
    "DiscreteDDIMScheduler": "DDIM for discrete (D3PM uniform-corruption) token diffusion, not a Gaussian path",
    "EntropyBoundScheduler": "discrete-token scheduler (uniform corruption), not a Gaussian diffusion sampler",
    "CMStochasticIterativeScheduler": "for consistency models only (EDM sigmas, a distilled consistency function)",
    "ConsistencyDecoderScheduler": "the consistency decoder of a VAE, not a sampler of a diffusion model",
    "CosineDPMSolverMultistepScheduler": "ignores the betas: its own cosine sigmas (Stable Audio: v-prediction, "
                                         "sigma in [0.3, 500])",
    "EDMEulerScheduler": "ignores the betas: EDM sigmas in [0.002, 80] with EDM preconditioning (c_in, "
                         "c_noise = log(sigma)/4) for EDM-trained models",
    "EDMDPMSolverMultistepScheduler": "ignores the betas: EDM sigmas in [0.002, 80] with EDM preconditioning for "
                                      "EDM-trained models",
    "IPNDMScheduler": "ignores the betas: its own schedule betas = sin(pi t / 2)^2 on t in [1, 0] (v-diffusion "
                      "style); the `ipndm` peer is the zju-pi iPNDM on the model's own sigmas",
    "KarrasVeScheduler": "deprecated; a variance-exploding scheduler with its own sigmas (ignores the betas)",
    "ScoreSdeVeScheduler": "variance-exploding SDE predictor-corrector with its own sigmas and no step()",
    "ScoreSdeVpScheduler": "deprecated; continuous-time VP SDE with its own beta_min/beta_max and step_pred only",
    "LCMScheduler": "for LCM-distilled models only (its step is a consistency-model parameterisation)",
    "TCDScheduler": "for TCD-distilled models only (trajectory consistency distillation)",
    "SCMScheduler": "for sCM (continuous-time consistency) distilled models only",
    "FlowMatchLCMScheduler": "for LCM-distilled flow models only",
    "FlowMapEulerDiscreteScheduler": "for flow-map-distilled models only (two-time z_t -> z_r transitions)",
    "DDIMInverseScheduler": "inversion (data -> noise), not a sampler",
    "DPMSolverMultistepInverseScheduler": "inversion (data -> noise), not a sampler",
    "DDIMParallelScheduler": "DDIM batched over timesteps for parallel sampling (ParaDiGMS): the same update as "
                             "ddim, which is run",
    "DDPMParallelScheduler": "DDPM batched over timesteps for parallel sampling (ParaDiGMS): the same update as "
                             "ddpm, which is run",
    "CogVideoXDDIMScheduler": "CogVideoX-specific (its v-prediction and SNR-shift conventions)",
    "CogVideoXDPMScheduler": "CogVideoX-specific (its v-prediction and SNR-shift conventions)",
    "DDPMWuerstchenScheduler": "Wuerstchen-specific (continuous time, its own cosine schedule)",
    "HeliosScheduler": "Helios-specific (its multi-stage flow schedule)",
    "HeliosDMDScheduler": "Helios DMD-distilled models only",
    "LTXEulerAncestralRFScheduler": "LTX-Video-specific (its sigma and timestep conventions)",
    "MiniMaxH3Scheduler": "MiniMax-H3-specific: FlowMatch Euler with its own exponential sigma shift (flow-euler "
                          "is the same update on the model's own shift)",
    "PiflowScheduler": "pi-Flow only: needs n_grid x C output channels (a Gaussian-mixture flow policy)",
    "RFD4ProteinaScheduler": "protein structure models (RFD4-Proteina) only",
    "RePaintScheduler": "inpainting (RePaint) around a known image, not unconditional sampling",
    "UnCLIPScheduler": "unCLIP (Karlo) prior/decoder specific",
}
FLOW_CLASSES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: flow-config keys FlowMatchEuler honours but the flow-sigma modes of the VP classes do not
FLOW_GRID_KEYS = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def scheduler_classes() -> list[str]:
    """Every scheduler class ``diffusers.schedulers`` exports (sorted)."""
    out = []
    for name in dir(diffusers.schedulers):
        obj = getattr(diffusers.schedulers, name, None)
        if isinstance(obj, type) and issubclass(obj, SchedulerMixin) and obj is not SchedulerMixin:
            out.append(name)
    return sorted(out)


def _params(class_name: str) -> set[str]:
    return set(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def class_refusal(class_name: str, loaded: LoadedModel) -> str | None:
    """Why no variant of ``class_name`` can sample ``loaded`` (None: its variants are checked one by one)."""
    if class_name in NOT_PEERS:
        return NOT_PEERS[class_name]
    variants = [v for v in VARIANTS if v.class_name == class_name]
    if not variants:
        return (f"not in skipstep's peer table (diffusers {diffusers.__version__} added it?): not run until its "
                "conventions are checked")
    if loaded.regime == "flow" and not (_params(class_name) & {"use_flow_sigmas", "shift"}):
        return ("a variance-preserving (DDPM-chain) scheduler without flow sigmas: from a flow config diffusers "
                "silently builds its default linear-beta chain")
    if loaded.regime == "vp" and class_name in FLOW_CLASSES:
        return "a flow-matching scheduler (no betas): it would treat this VP model as a rectified flow"
    if loaded.zero_terminal_snr and "rescale_betas_zero_snr" not in _params(class_name):
        return ("has no rescale_betas_zero_snr: it would sample the un-rescaled chain (abar_{T-1} > 0), not this "
                "model's zero-terminal-SNR chain")
    return None


def variant_refusal(variant: PeerVariant, loaded: LoadedModel) -> str | None:
    """Why ``variant`` cannot sample ``loaded``: its class's reason, its own, a missing module, or a failing
    dry run (build + all steps of a 3-step run on a zero model output; of every run of 3-20 steps for a grid that
    depends on the step count, such as Karras sigmas rounded to timesteps, which repeat on a cosine chain)."""
    reason = class_refusal(variant.class_name, loaded)
    if reason is None and loaded.regime not in variant.regimes:
        reason = variant.vp_only_reason or f"this variant runs on {'/'.join(variant.regimes)} models only"
    if reason is None and variant.requires and importlib.util.find_spec(variant.requires) is None:
        reason = f"needs {variant.requires}, which is not installed"
    if reason is None and loaded.regime == "flow" and variant.class_name not in FLOW_CLASSES:
        grid = [k for k in FLOW_GRID_KEYS if loaded.scheduler_config.get(k)]
        if grid:
            reason = f"its flow sigmas (use_flow_sigmas, flow_shift) ignore the model's {grid}"
    if reason is None:
        reason = _dry_run(variant, loaded)
    return reason


_DRY_RUNS: dict[tuple, str | None] = {}


def _dry_run(variant: PeerVariant, loaded: LoadedModel) -> str | None:
    recipe = get_sampler(variant.name)
    config = scheduler_config_for(recipe, loaded)
    key = (variant.name, loaded.fingerprint, repr(sorted(config.items(), key=str)))
    if key not in _DRY_RUNS:
        channels = loaded.sample_shape[0] * (2 if loaded.learned_variance and recipe.learned_variance else 1)
        shape = (1, *loaded.sample_shape)

        def zero_model(x, t):
            t = torch.as_tensor(t).float()
            if loaded.integer_timesteps and not bool(torch.all(t == t.round())):
                raise ValueError(f"it evaluates the model at fractional timesteps ({float(t.reshape(-1)[0]):.4g}), "
                                 "but this model is defined at integer timesteps only")
            return torch.zeros((1, channels, *shape[2:]))
        first = max(3, recipe.min_nfe)
        steps, sched = first, None
        try:
            for steps in range(first, 21) if variant.dry_run_all_steps else (first,):
                sched = build_scheduler(recipe, config, steps)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torchsde's float round-off notices on a zero model
                    run_standard_loop(sched, zero_model, torch.zeros(shape), steps,
                                      generator=torch.Generator().manual_seed(0))
            _DRY_RUNS[key] = None
        except Exception as err:  # noqa: BLE001 - any failure of the peer on this config is its refusal
            at = f" at {steps} steps ({getattr(sched, 'timesteps', None)})" if variant.dry_run_all_steps else ""
            _DRY_RUNS[key] = (f"{variant.class_name}.from_config(the model's config) or its steps fail{at}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    return _DRY_RUNS[key]


@dataclass
class PeerEnumeration:
    """What :func:`enumerate_peers` found for one model."""

    regime: str
    peers: list[str]
    classes: dict[str, str]  # every class: "peers: a, b" or the reason it is not run
    refused: dict[str, str]  # class (or "class: variant") -> reason

    def to_dict(self) -> dict:
        return {"regime": self.regime, "peers": self.peers, "classes": self.classes, "refused": self.refused}


def enumerate_peers(loaded: LoadedModel) -> PeerEnumeration:
    """Every diffusers scheduler class for ``loaded`` (see the module docstring), then the k-diffusion-convention
    peers; the runnable peers in table order."""
    peers, classes, refused = [], {}, {}
    listed = scheduler_classes()
    for class_name in listed + [v.class_name for v in VARIANTS if v.class_name not in listed]:
        reason = class_refusal(class_name, loaded)
        if reason is not None:
            classes[class_name] = refused[class_name] = reason
            continue
        ok = []
        for v in (v for v in VARIANTS if v.class_name == class_name):
            why = variant_refusal(v, loaded)
            if why is None:
                ok.append(v.name)
            else:
                refused[f"{class_name}: {v.name}"] = why
        classes[class_name] = ("peers: " + ", ".join(ok)) if ok else "no variant runs (see the refusals)"
        peers += ok
    for name in sampler_names("k-diffusion"):
        recipe = get_sampler(name)
        why = recipe.refusal(loaded) if recipe.refusal is not None else None
        if why is None:
            peers.append(name)
        else:
            refused[f"k-diffusion: {name}"] = why
    order = {v.name: i for i, v in enumerate(VARIANTS)}
    peers.sort(key=lambda n: order.get(n, len(order)))
    return PeerEnumeration(loaded.regime_text, peers, classes, refused)


# --------------------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------------------
@functools.cache
def final_step_to_zero(cls: type) -> type:
    """``cls`` (a diffusers multistep scheduler on flow sigmas) whose last step returns the data prediction
    ``x0_hat = x_t - sigma_t v`` of its last evaluation instead of its own zero-length step: the first-order step
    to ``sigma = 0`` (for data prediction it does not depend on ``x_t``'s corrector). Earlier steps are ``cls``'s."""
    @functools.wraps(cls.step)  # keeps cls.step's signature: callers look for a ``generator`` parameter
    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        out = cls.step(self, model_output, timestep, sample, *args, return_dict=return_dict, **kwargs)
        if self.step_index != len(self.timesteps):
            return out
        if self.config.prediction_type != "flow_prediction":
            raise ValueError(f"{cls.__name__} to sigma 0: prediction_type must be 'flow_prediction'")
        sigma = self.sigmas[len(self.timesteps) - 1].to(sample.device, sample.dtype)
        x0_hat = sample - sigma * model_output
        return type(out)(prev_sample=x0_hat) if return_dict else (x0_hat,)

    return type(f"{cls.__name__}ToZero", (cls,), {"step": step})


def _factory(variant: PeerVariant):
    def factory(config: dict, steps: int):
        cls = getattr(diffusers, variant.class_name)
        if variant.final_step_to_zero:
            cls = final_step_to_zero(cls)
        extra = {}
        if is_flow_config(config) and variant.class_name not in FLOW_CLASSES:
            extra = {"use_flow_sigmas": True, "flow_shift": float(config["shift"]),
                     "prediction_type": "flow_prediction"}
        return from_config_accepting(cls, config, **{**variant.overrides, **extra,
                                                     **clip_overrides(config, variant.clip)})

    return factory


def _register(variant: PeerVariant) -> None:
    clip_text = {"clip_sample": "clip_sample", "thresholding": "thresholding (sample_max_value = clip range)",
                 None: "not available"}[variant.clip]
    settings = {"class": variant.class_name, **variant.overrides, "x0_clip": clip_text,
                "timesteps": "the model's timestep_spacing (--peer-spacing config) or trailing",
                **({"note": variant.note} if variant.note else {})}
    if "flow" in variant.regimes and variant.class_name not in FLOW_CLASSES:
        settings["flow_models"] = "use_flow_sigmas=True, flow_shift=<the model's shift>, prediction_type=" \
                                  "'flow_prediction'"
    register_sampler(variant.name, _factory(variant), min_nfe=variant.min_nfe, nfe_of_steps=variant.nfe_of_steps,
                     family="diffusers", stochastic=variant.stochastic, description=variant.description,
                     settings=settings, order_reason=variant.order_reason, learned_variance=variant.learned_variance,
                     refusal=lambda loaded, v=variant: variant_refusal(v, loaded))


for _variant in VARIANTS:
    _register(_variant)
