"""Peers in k-diffusion's convention, written here from their formulas: iPNDM and DPM-Solver++(3M) SDE.

k-diffusion (and ComfyUI, the WebUI) sample the VE ODE/SDE of ``x = x0 + s eps`` with a *denoiser*
``D(x, s) = x0_hat``. :class:`VEDenoiser` is the one adapter from a lab model to that convention:

* VP chain (k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``): the training table
  ``s_t = sqrt((1 - abar_t) / abar_t)`` (``abar`` floored at ``2^-24`` for zero terminal SNR, as diffusers does);
  ``c_in = 1 / sqrt(1 + s^2)`` so that ``x_vp = c_in x`` is the VP sample (``alpha = c_in``, ``sigma_vp = s c_in``);
  the model is evaluated at the fractional timestep ``t(s)``, linear in ``log s`` between neighbouring table
  entries (k-diffusion's ``sigma_to_t``, not quantised); ``x0_hat`` from its epsilon / v / sample output.
* Rectified flow: ``x_flow = (1 - sf) x0 + sf eps`` is ``x / (1 + s)`` with ``sf = s / (1 + s)``; the model gets
  ``x / (1 + s)`` and ``sf * T`` (the FlowMatch timestep), and ``x0_hat = x_flow - sf v``.

The samplers (k-diffusion's ``sample_*`` signature, float math as written there):

* :func:`sample_ipndm` -- iPNDM (Zhang & Chen 2022; zju-pi/diff-sampler ``get_ipndm``): Adams-Bashforth on
  ``dx/ds = d = (x - D(x, s)) / s`` with the equal-step coefficients, warm-started with lower orders
  (``order_i = min(max_order, i + 1)``, ``max_order = 4``)::

      x_{i+1} = x_i + (s_{i+1} - s_i) * { d_i;  (3 d_i - d_{i-1}) / 2;  (23 d_i - 16 d_{i-1} + 5 d_{i-2}) / 12;
                                           (55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24 }

  Its recommended schedule (diff-sampler's ``polynomial``, rho = 7 = Karras): NFE + 1 sigmas from the model's
  ``s_max`` to ``s_min``; the last step lands on ``s_min`` without a final evaluation.
* :func:`sample_dpmpp_3m_sde` -- k-diffusion's ``sample_dpmpp_3m_sde``: with ``h = log(s_i / s_{i+1})``,
  ``h_eta = (1 + eta) h``, ``D`` the denoised output and ``r0 = h_{i-1}/h``, ``r1 = h_{i-2}/h``::

      x <- e^{-h_eta} x + (1 - e^{-h_eta}) D
           + phi_2 d1 - phi_3 d2          (two earlier outputs; one: + phi_2 (D - D_{i-1}) / r0)
           + s_{i+1} sqrt(1 - e^{-2 eta h}) z
      d1_0 = (D - D_{i-1}) / r0, d1_1 = (D_{i-1} - D_{i-2}) / r1, d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
      d2 = (d1_0 - d1_1) / (r0 + r1), phi_2 = (1 - e^{-h_eta}) / (-h_eta) + 1, phi_3 = phi_2 / h_eta - 1/2

  and ``x = D`` on a step to ``s = 0``. Schedule: Karras (rho = 7) over the model's sigma range, NFE sigmas and a
  final 0. diffusers' ``sde-dpmsolver++`` order 3 has ``+ (... - 1/2)`` where this has ``- phi_3`` (the sign of
  the 1/2 differs); k-diffusion's sign is the exact integral's.

On a rectified-flow model the ``-simple`` peers are those two samplers as ComfyUI runs them there (its ``CONST``
model sampling, in the flow's own coordinates ``x = (1 - s) x0 + s eps``, ``D(x, s) = x - s v``), on its
``simple`` scheduler (:func:`simple_flow_sigmas`: the model's 1,000-entry table ``shift(k/1000)`` read at
``k = 1000 - floor(i 1000/n)``, then 0):

* iPNDM as above in ``s`` (``dx/ds = (x - D)/s`` holds on the flow path too); a step to ``s = 0`` returns ``D``;
* DPM-Solver++(3M) SDE with the flow's half-log-SNR ``lambda = log((1 - s)/s)``, ``h = lambda_{i+1} - lambda_i``,
  ``alpha_{i+1} = 1 - s_{i+1}``::

      x <- (s_{i+1}/s_i) e^{-eta h} x + alpha_{i+1} [(1 - e^{-h_eta}) D + phi_2 d1 - phi_3 d2]
           + s_{i+1} sqrt(1 - e^{-2 eta h}) z

  (the VE form above is this with ``lambda = -log s``, ``alpha = 1``); its first sigma, 1, where ``lambda`` is
  infinite, is moved to ``shift(1 - 10^-4)`` (ComfyUI's ``offset_first_sigma_for_snr``), the start ``x`` staying
  the unit noise.

Noise: i.i.d. standard normal per step from the batch's step generator (k-diffusion defaults to a Brownian tree;
both give unit-variance Gaussian increments). No ``x0_hat`` clipping (k-diffusion has none).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

from ..paths import DiscreteVPPath, shift_flow_time
from ..predictions import predict_x0
from .loaded_model import LoadedModel
from .sampler_recipes import is_flow_config, register_sampler

__all__ = ["FlowDenoiser", "KDiffusionRunner", "VEDenoiser", "flow_half_log_snr", "karras_sigmas",
           "sample_dpmpp_3m_sde", "sample_ipndm", "simple_flow_sigmas"]

#: abar floor of a zero-terminal-SNR chain (diffusers' 2^-24, sigma_max = 4096)
ZERO_SNR_ABAR_FLOOR = 2.0 ** -24
RHO = 7.0
#: ComfyUI's offset_first_sigma_for_snr: a flow schedule's first sigma 1 becomes shift(1 - FIRST_SIGMA_OFFSET)
FIRST_SIGMA_OFFSET = 1e-4


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = RHO) -> torch.Tensor:
    """``n`` sigmas ``(s_max^(1/rho) + r (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``r = linspace(0, 1, n)`` (float64)."""
    ramp = torch.linspace(0, 1, int(n), dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def simple_flow_sigmas(n: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler on a flow model: ``table[T - 1 - floor(i T/n)]``, ``i < n``, then 0, with
    ``table[k] = shift((k + 1)/T)`` (float64)."""
    T = int(num_train_timesteps)
    table = shift_flow_time(torch.arange(1, T + 1, dtype=torch.float64) / T, float(shift))
    picked = [table[-(1 + int(i * (T / n)))] for i in range(int(n))]
    return torch.stack(picked + [torch.zeros((), dtype=torch.float64)])


def ve_half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """``lambda = log(alpha/sigma) = -log s`` of ``x = x0 + s eps``."""
    return sigma.log().neg()


def flow_half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """``lambda = log((1 - s)/s)`` of ``x = (1 - s) x0 + s eps``."""
    return sigma.logit().neg()


class VEDenoiser:
    """``D(x, s)`` of a lab model (see the module docstring); ``model(x_in, t)`` is the per-batch raw model."""

    def __init__(self, model: Callable, config: dict):
        self.model, self.flow = model, is_flow_config(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.T = int(config.get("num_train_timesteps", 1000))
        if self.flow:
            shift = float(config["shift"])
            u = torch.tensor([1.0 / self.T, (self.T - 1.0) / self.T], dtype=torch.float64)
            sf = shift_flow_time(u, shift)  # FlowMatchEuler's shift of the training table's ends
            self.sigma_min, self.sigma_max = [float(v) for v in sf / (1 - sf)]
        else:
            abar = DiscreteVPPath.from_config(config).alphas_cumprod.clamp(min=ZERO_SNR_ABAR_FLOOR)
            self.log_sigmas = ((1 - abar) / abar).sqrt().log()
            self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: float) -> float:
        """The model timestep of noise level ``sigma`` (k-diffusion's log-sigma interpolation; ``sf * T`` for a flow)."""
        if self.flow:
            return sigma / (1 + sigma) * self.T
        log_sigma = math.log(sigma)
        ls = self.log_sigmas
        low = int((ls <= log_sigma).sum()) - 1
        low = min(max(low, 0), ls.numel() - 2)
        w = (float(ls[low]) - log_sigma) / (float(ls[low]) - float(ls[low + 1]))
        return low + min(max(w, 0.0), 1.0)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        t = torch.full((x.shape[0],), self.sigma_to_t(s), dtype=torch.float32, device=x.device)
        if self.flow:
            sf = s / (1 + s)
            x_in = x / (1 + s)
            return predict_x0(self.model(x_in, t), x_in, 1 - sf, sf, "flow")
        c_in = 1 / math.sqrt(1 + s * s)
        x_in = x * c_in
        return predict_x0(self.model(x_in, t), x_in, c_in, s * c_in, self.prediction_type)


class FlowDenoiser:
    """``D(x, s) = x - s v(x, s T)`` in the flow's own coordinates (ComfyUI's ``CONST`` model sampling)."""

    def __init__(self, model: Callable, config: dict):
        self.model, self.T = model, int(config.get("num_train_timesteps", 1000))
        self.shift = float(config["shift"])

    def sigma_to_t(self, sigma: float) -> float:
        return sigma * self.T

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        t = torch.full((x.shape[0],), s * self.T, dtype=torch.float32, device=x.device)
        return predict_x0(self.model(x, t), x, 1 - s, s, "flow")


@torch.no_grad()
def sample_ipndm(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, max_order: int = 4) -> torch.Tensor:
    """iPNDM (see the module docstring): one evaluation per step, returns ``x`` at ``sigmas[-1]``."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        history_next = (history + [d])[-(max_order - 1):] if max_order > 1 else []
        if sigmas[i + 1] == 0:  # ComfyUI's denoising step (never reached on the VE schedule, which ends at s_min)
            x, history = denoised, history_next
            continue
        order = min(max_order, i + 1)
        if order == 1:
            slope = d
        elif order == 2:
            slope = (3 * d - history[-1]) / 2
        elif order == 3:
            slope = (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            slope = (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = x + (sigmas[i + 1] - sigmas[i]) * slope
        history = history_next
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: Callable | None = None,
                        half_log_snr: Callable[[torch.Tensor], torch.Tensor] = ve_half_log_snr) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, k-diffusion's ``sample_dpmpp_3m_sde`` (``half_log_snr`` of the VE path) or ComfyUI's
    flow form (:func:`flow_half_log_snr`); see the module docstring."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler or (lambda s, s_next: torch.randn_like(x))
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + alpha_t * phi_2 * d1 - alpha_t * (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + alpha_t * phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    (-2 * h * eta).expm1().neg().sqrt()) * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


class KDiffusionRunner:
    """A k-diffusion-convention sampler as the bench runs it: its schedule over the model's sigma range, the VE
    denoiser (``schedule="simple"``: ComfyUI's flow form, its simple scheduler, the flow denoiser), noise from the
    batch's generator(s). ``config`` holds the settings it was built with."""

    def __init__(self, name: str, model_config: dict, sampler: Callable, final_zero: bool, schedule: str = "karras"):
        self.name, self.model_config, self.sampler = name, model_config, sampler
        self.final_zero, self.schedule = final_zero, schedule
        # a solver stepping in half-log-SNR (the 3M SDE) needs it finite: a flow schedule's first sigma below 1
        self.log_snr_steps = "half_log_snr" in inspect.signature(sampler).parameters
        if schedule == "simple":
            if not is_flow_config(model_config):
                raise ValueError(f"{name}: the simple-scheduler form is for flow models (ComfyUI's CONST sampling)")
            self.config = {"schedule": "ComfyUI simple", "shift": float(model_config["shift"]),
                           "prediction_type": model_config.get("prediction_type")}
        else:
            probe = VEDenoiser(lambda x, t: x, model_config)
            self.config = {"schedule": f"karras rho={RHO:g}", "sigma_min": probe.sigma_min,
                           "sigma_max": probe.sigma_max, "prediction_type": model_config.get("prediction_type")}
        self.timesteps: list[float] = []

    def sigmas(self, nfe: int, denoiser) -> torch.Tensor:
        if self.schedule == "simple":  # NFE sigmas from 1, then 0 (the last evaluation denoises)
            return simple_flow_sigmas(nfe, denoiser.shift, denoiser.T)
        if self.final_zero:  # NFE Karras sigmas, then 0 (the last evaluation denoises)
            sigmas = karras_sigmas(nfe, denoiser.sigma_min, denoiser.sigma_max)
            return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
        return karras_sigmas(nfe + 1, denoiser.sigma_min, denoiser.sigma_max)  # ends at s_min, not evaluated

    @torch.no_grad()
    def sample_loop(self, model: Callable, noise: torch.Tensor, num_steps: int, generator=None,
                    progress: bool = False) -> torch.Tensor:
        flow_form = self.schedule == "simple"
        denoiser = (FlowDenoiser if flow_form else VEDenoiser)(model, self.model_config)
        sigmas = self.sigmas(int(num_steps), denoiser)
        x = noise.double() * sigmas[0]  # the flow form starts at s = 1: x is the unit noise
        if flow_form and self.log_snr_steps and sigmas[0] >= 1:
            sigmas = sigmas.clone()
            sigmas[0] = shift_flow_time(torch.tensor(1 - FIRST_SIGMA_OFFSET, dtype=torch.float64), denoiser.shift)
        self.timesteps = [round(denoiser.sigma_to_t(float(s)), 4) for s in sigmas if s > 0][:int(num_steps)]

        def noise_sampler(s, s_next):
            if isinstance(generator, (list, tuple)):
                z = torch.stack([torch.randn(noise.shape[1:], generator=g) for g in generator])
            else:
                z = torch.randn(noise.shape, generator=generator)
            return z.to(device=noise.device, dtype=torch.float64)

        extra = {"noise_sampler": noise_sampler, "half_log_snr": flow_half_log_snr if flow_form else ve_half_log_snr}
        x = self.sampler(_FloatCalls(denoiser, noise.dtype), x, sigmas, **(extra if self.log_snr_steps else {}))
        return x.to(noise.dtype)


class _FloatCalls:
    """The denoiser called in the model's dtype from the float64 sampler state."""

    def __init__(self, denoiser: Callable, dtype: torch.dtype):
        self.denoiser, self.dtype = denoiser, dtype

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoiser(x.to(self.dtype), sigma).double()


def _refusal(loaded: LoadedModel) -> str | None:
    if loaded.integer_timesteps:
        return ("the model is evaluated at integer timesteps only (the exact mixture on the discrete chain), "
                "while k-diffusion's denoiser evaluates fractional timesteps t(sigma)")
    return None


_COMMON = {"schedule": "Karras (rho=7) over the model's sigma range", "denoiser": "skipstep.lab.kdiffusion_peers."
           "VEDenoiser (k-diffusion's DiscreteEps/VDDPMDenoiser conversions, t(sigma) by log-sigma interpolation; "
           "flow: x/(1+s), sigma_flow = s/(1+s))", "x0_clip": "not available", "noise": "i.i.d. N(0, I) per step "
           "from the batch's step generator"}
_SIMPLE = {"schedule": "ComfyUI's simple scheduler on the model's shift(k/1000) table, then 0", "denoiser":
           "skipstep.lab.kdiffusion_peers.FlowDenoiser (x - s v, in flow coordinates: ComfyUI's CONST)",
           "x0_clip": "not available", "noise": _COMMON["noise"]}
_TO_ZERO = "to 0 (returns the last denoised output)"


def _flow_only(loaded: LoadedModel) -> str | None:
    if not is_flow_config(loaded.scheduler_config):
        return "ComfyUI's flow (CONST) form with its simple scheduler; on other models see the Karras-schedule peer"
    return _refusal(loaded)


def _register(name: str, sampler: Callable, final_zero: bool, schedule: str, description: str, settings: dict,
              stochastic: bool = False) -> None:
    """A k-diffusion-family peer: ``sampler`` run by :class:`KDiffusionRunner` on ``schedule`` (``"simple"``: flow
    models only)."""
    register_sampler(name, lambda config, steps: KDiffusionRunner(name, config, sampler, final_zero, schedule),
                     family="k-diffusion", stochastic=stochastic,
                     refusal=_flow_only if schedule == "simple" else _refusal, description=description,
                     settings={"class": "KDiffusionRunner", "function": sampler.__name__, **settings,
                               **(_SIMPLE if schedule == "simple" else _COMMON)})


_register("ipndm", sample_ipndm, False, "karras",
          "iPNDM (zju-pi diff-sampler / ComfyUI ipndm): 4th-order Adams-Bashforth on the VE ODE, NFE+1 Karras "
          "sigmas, ending at sigma_min",
          {"max_order": 4, "final_step": "to sigma_min without evaluation (diff-sampler's default)"})
_register("dpmpp-3m-sde-k", sample_dpmpp_3m_sde, True, "karras",
          "DPM-Solver++(3M) SDE in k-diffusion's form (sample_dpmpp_3m_sde, eta=1), NFE Karras sigmas and a final 0",
          {"eta": 1.0, "final_step": _TO_ZERO}, stochastic=True)
_register("ipndm-simple", sample_ipndm, True, "simple",
          "iPNDM as ComfyUI runs it on a flow model: its simple scheduler, NFE sigmas from 1 and a final denoising "
          "step to 0", {"max_order": 4, "final_step": _TO_ZERO})
_register("dpmpp-3m-sde-simple", sample_dpmpp_3m_sde, True, "simple",
          "DPM-Solver++(3M) SDE as ComfyUI runs it on a flow model (the flow's half-log-SNR, eta=1): its simple "
          "scheduler, first sigma offset to shift(1 - 1e-4), a final 0",
          {"eta": 1.0, "half_log_snr": "log((1 - s)/s)", "first_sigma": "shift(1 - 1e-4) (offset_first_sigma_for_snr)",
           "final_step": _TO_ZERO}, stochastic=True)
