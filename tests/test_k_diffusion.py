"""skipstep.k_diffusion.sample_skipstep against the k-diffusion package's own samplers (float64, shared noise)."""

import math

import pytest
import torch

from kdiffusion_loader import SKIP_REASON, load_k_diffusion
from skipstep import DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, DiscreteVPPath, SkippedStepScheduler
from skipstep.k_diffusion import sample_skipstep
from skipstep.plan import resolve_eta_schedule

K = load_k_diffusion()
pytestmark = pytest.mark.skipif(K is None, reason=SKIP_REASON)

SHAPE = (3, 2, 4, 4)


def denoiser(x, sigma):
    """A smooth, nonlinear x0 predictor (so multistep weights matter): the exact denoiser of N(0.3, 0.5^2) data,
    bent by a tanh."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    exact = (0.25 * x + s * s * 0.3) / (0.25 + s * s)
    return exact + 0.2 * torch.tanh(x) / (1 + s)


class SharedNoise:
    """The same unit noise for a given (sigma, sigma_next), whichever sampler asks and in whatever order."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.table = {}

    def __call__(self, sigma, sigma_next):
        key = (round(float(sigma), 12), round(float(sigma_next), 12))
        if key not in self.table:
            self.table[key] = torch.randn(SHAPE, generator=self.g, dtype=torch.float64)
        return self.table[key]


def karras(n=10):
    return K.sampling.get_sigmas_karras(n, 0.03, 14.6, device="cpu").double()


def start(sigmas):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]


#: k-diffusion has no corrector and extrapolates with the exact line: every member compared below is the predictor
#: alone at extrapolation gain 1
NO_CORRECTOR = dict(use_corrector=False, extrapolation_gain=1.0)
CASES = {
    # name: (k-diffusion sampler and kwargs, our kwargs)
    "euler_ancestral eta=1": ("sample_euler_ancestral", dict(eta=1.0), dict(eta=1.0, solver_order=1, **NO_CORRECTOR)),
    "euler (DDIM)": ("sample_euler", dict(), dict(eta=0.0, solver_order=1, **NO_CORRECTOR)),
    "dpmpp_2m_sde heun": ("sample_dpmpp_2m_sde", dict(eta=1.0, solver_type="heun"),
                          dict(eta=1.0, solver_order=2, solver_type="heun", **NO_CORRECTOR)),
    "dpmpp_2m (midpoint)": ("sample_dpmpp_2m", dict(),
                            dict(eta=0.0, solver_order=2, solver_type="midpoint", **NO_CORRECTOR)),
    "dpmpp_2m_sde midpoint": ("sample_dpmpp_2m_sde", dict(eta=1.0, solver_type="midpoint"),
                              dict(eta=1.0, solver_order=2, solver_type="midpoint", **NO_CORRECTOR)),
}


def k_diffusion_reference(eta, solver_order):
    """k-diffusion's sampler (name, kwargs) that equals our predictor (heun weights, no corrector) with ``eta`` and
    ``solver_order``, or None where k-diffusion has none: order 1 is Euler ancestral at any eta, order 2 DPM-Solver++
    (2M) SDE with heun weights at eta 0 and 1 (its eta in between is not the posterior's)."""
    if solver_order == 1:
        return "sample_euler_ancestral", dict(eta=float(eta))
    if solver_order == 2 and float(eta) in (0.0, 1.0):
        return "sample_dpmpp_2m_sde", dict(eta=float(eta), solver_type="heun")
    return None


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n", [5, 10, 25])
def test_equals_k_diffusion_samplers(case, n):
    name, theirs_kwargs, ours_kwargs = CASES[case]
    sigmas = karras(n)
    x = start(sigmas)
    noise = SharedNoise()
    fn = getattr(K.sampling, name)
    if name == "sample_euler" or name == "sample_dpmpp_2m":
        ref = fn(denoiser, x.clone(), sigmas, disable=True, **theirs_kwargs)
    else:
        ref = fn(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, **theirs_kwargs)
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, **ours_kwargs)
    assert ours.dtype == torch.float64
    scale = float(ref.abs().max())
    diff = float((ours - ref).abs().max())
    assert diff <= 1e-12 * max(scale, 1.0), f"{case}, n={n}: max abs diff {diff:.3e} (scale {scale:.3g})"


def test_default_is_the_library_default_heun():
    """The adapter's defaults are the library's: DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR, heun
    weights, the small variance."""
    sigmas = karras(8)
    x = start(sigmas)
    noise = SharedNoise()
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise)
    explicit = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, eta=DEFAULT_ETA,
                               solver_order=DEFAULT_SOLVER_ORDER, solver_type="heun",
                               use_corrector=DEFAULT_USE_CORRECTOR, variance_type="small")
    assert torch.equal(ours, explicit)
    other = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise,
                            use_corrector=not DEFAULT_USE_CORRECTOR)
    assert float((ours - other).abs().max()) > 1e-6  # the corrector setting is not a no-op here


@pytest.mark.parametrize("steps", [5, 12])
def test_default_predictor_equals_k_diffusion(steps):
    """The default member without the corrector, at extrapolation gain 1, is k-diffusion's sampler of that member,
    on both sides of the default's step-count threshold (its eta depends on the number of steps)."""
    etas = resolve_eta_schedule(DEFAULT_ETA, steps)
    assert len(set(etas)) == 1, f"the default's eta at {steps} steps is not constant: {etas}"
    reference = k_diffusion_reference(etas[0], DEFAULT_SOLVER_ORDER)
    assert reference is not None, f"k-diffusion has no sampler for eta={etas[0]}, order {DEFAULT_SOLVER_ORDER}"
    name, theirs_kwargs = reference
    sigmas = karras(steps)
    x = start(sigmas)
    noise = SharedNoise()
    ref = getattr(K.sampling, name)(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, **theirs_kwargs)
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, use_corrector=False,
                           extrapolation_gain=1.0)
    assert float((ours - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("solver_order", [1, 2])
def test_k_diffusion_reference_table(eta, solver_order):
    """Every member k_diffusion_reference names does equal that k-diffusion sampler."""
    reference = k_diffusion_reference(eta, solver_order)
    if reference is None:
        return
    name, theirs_kwargs = reference
    sigmas = karras(8)
    x = start(sigmas)
    noise = SharedNoise()
    ref = getattr(K.sampling, name)(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, **theirs_kwargs)
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, eta=eta,
                           solver_order=solver_order, **NO_CORRECTOR)
    assert float((ours - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_callback_and_model_convention():
    sigmas = karras(6)
    x = start(sigmas)
    seen, calls = [], []

    def model(x_in, sigma_in, cond=None):
        calls.append((tuple(sigma_in.shape), cond))
        return denoiser(x_in, sigma_in)

    sample_skipstep(model, x, sigmas, extra_args={"cond": "c"}, callback=seen.append, disable=True,
                    noise_sampler=SharedNoise())
    assert [d["i"] for d in seen] == list(range(6))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert torch.equal(seen[0]["x"], x) and float(seen[0]["sigma"]) == float(sigmas[0])
    assert calls == [((SHAPE[0],), "c")] * 6


def test_s_noise_scales_the_injected_noise():
    sigmas = karras(6)
    x = start(sigmas)
    noise = SharedNoise()
    ref = K.sampling.sample_euler_ancestral(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise,
                                            s_noise=0.5)
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, noise_sampler=noise, s_noise=0.5,
                           eta=1.0, solver_order=1, **NO_CORRECTOR)
    assert float((ours - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_discrete_eps_ddpm_denoiser_equals_our_scheduler():
    """k-diffusion's DiscreteEpsDDPMDenoiser around an epsilon model, on sigmas at integer timesteps, runs the same
    posterior steps as SkippedStepScheduler on those timesteps (the default sampler on both sides)."""
    path = DiscreteVPPath.from_config({})
    abar = path.alphas_cumprod  # float64

    def eps_model(x, t):
        a = abar[t.long()].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x + 0.1 * torch.tanh(x)

    wrapped = K.external.DiscreteEpsDDPMDenoiser(eps_model, abar, quantize=True)
    sched = SkippedStepScheduler()
    sched.set_timesteps(10)
    ts = sched.timesteps
    sigmas = torch.cat([wrapped.t_to_sigma(ts.double()), torch.zeros(1, dtype=torch.float64)])
    noise = SharedNoise(3)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours_k = sample_skipstep(wrapped, x_T * sigmas[0], sigmas, disable=True, noise_sampler=noise)
    x = x_T * math.sqrt(float(abar[int(ts[0])])) * float(sigmas[0])  # the same start, as a VP sample
    for i, t in enumerate(ts):
        z = noise(sigmas[i], sigmas[i + 1]) if i + 1 < len(ts) else None
        x = sched.step(eps_model(x, t.expand(SHAPE[0])), t, x, variance_noise=z).prev_sample
    assert float((ours_k - x).abs().max()) <= 1e-10


def test_noisy_final_sigma_stops_there():
    sigmas = torch.cat([karras(5)[:-1], torch.tensor([0.01], dtype=torch.float64)])
    x = start(sigmas)
    ref = K.sampling.sample_euler(denoiser, x.clone(), sigmas, disable=True)
    ours = sample_skipstep(denoiser, x.clone(), sigmas, disable=True, eta=0.0, solver_order=1, **NO_CORRECTOR)
    assert float((ours - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigmas=torch.tensor([1.0, 2.0, 0.0])), "strictly descending"),
        (dict(sigmas=torch.tensor([2.0, 0.0, 0.0])), "only the last one 0"),
        (dict(sigmas=torch.tensor([2.0])), "at least two"),
        (dict(variance_type="learned"), "variance_type"),
        (dict(solver_order=2.0), "solver_order"),
        (dict(solver_type="bh2"), "solver_type"),
        (dict(eta=0.5 if DEFAULT_ETA != 0.5 else 0.25, eta_schedule="linear:1:0"), "either eta"),  # not the default
        (dict(s_noise=-1.0), "s_noise"),
    ],
)
def test_bad_input(kwargs, match):
    sigmas = kwargs.pop("sigmas", torch.tensor([2.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=match):
        sample_skipstep(denoiser, torch.zeros(1, 1, 2, 2), sigmas, disable=True, **kwargs)
