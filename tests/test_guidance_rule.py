"""The default told the classifier-free guidance scale (skipstep.steps.settings_for_guidance): from
STRONG_GUIDANCE_FROM on, settings left at their defaults become the strong-guidance member's -- below
STRONG_GUIDANCE_FEW_STEPS_BELOW steps the few-step default without the corrector, from there on the first-order
skipped-step posterior (eta = 1, order 1); explicit choices, and every scale below the threshold or unknown, are
kept."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipstep import DEFAULT_ETA, DEFAULT_SOLVER_ORDER, STRONG_GUIDANCE_FROM, SkippedStepScheduler, sample
from skipstep.plan import resolve_eta_schedule
from skipstep.steps import (
    DEFAULT_USE_CORRECTOR,
    STRONG_GUIDANCE_ETA,
    STRONG_GUIDANCE_FEW_STEPS_BELOW,
    STRONG_GUIDANCE_FEW_STEPS_FROM,
    STRONG_GUIDANCE_PLACEMENT_BELOW,
    STRONG_GUIDANCE_SOLVER_ORDER,
    check_guidance_hint,
    placement_split,
    settings_for_guidance,
)
from skipstep.timesteps import FEW_STEPS_BELOW, POWER_SLOPE, spacing_power_for
from skipstep.lab.conditioning import check_guidance_scale
from skipstep.lab.models import load_model
from skipstep.lab.sample_sets import sample_cell
from skipstep.lab.sampler_registry import get_sampler, sampler_settings, scheduler_config_for

from tiny_dirs import conditional_dir

DEFAULTS = (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, DEFAULT_USE_CORRECTOR)
STRONG = (STRONG_GUIDANCE_ETA, STRONG_GUIDANCE_SOLVER_ORDER, DEFAULT_USE_CORRECTOR)  # from FEW_STEPS_BELOW on
FEW = (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, False)  # below it
N = STRONG_GUIDANCE_FEW_STEPS_BELOW
STEP_COUNTS = [3, 5, N - 1, N, 10, 20]


def member(n: int, placement: bool = True) -> dict:
    """The strong-guidance member at ``n`` steps, as explicit settings (a guidance scale above 1 also sets the
    extrapolation gain to 1; below STRONG_GUIDANCE_PLACEMENT_BELOW steps the few-step placement, ``p = 1 + 4/n``,
    which on this linear chain is the plain power grid; ``placement=False``: no grid, for the k-diffusion adapter,
    which is given its sigmas)."""
    placement = ({"spacing_power": 1 + POWER_SLOPE / n} if placement and n < STRONG_GUIDANCE_PLACEMENT_BELOW
                 else {})
    if n < N:
        return {"use_corrector": False, "extrapolation_gain": 1.0, **placement}
    return {"eta": STRONG_GUIDANCE_ETA, "solver_order": STRONG_GUIDANCE_SOLVER_ORDER, "extrapolation_gain": 1.0,
            **placement}


def test_the_strong_guidance_members():
    assert STRONG[:2] == (1.0, 1) and STRONG_GUIDANCE_FROM > 4  # w = 4 keeps the order-2 default (docs/results.md)
    assert 3 < N and DEFAULT_USE_CORRECTOR is True
    assert 4 < STRONG_GUIDANCE_FEW_STEPS_FROM <= STRONG_GUIDANCE_FROM  # w = 4 keeps the corrector (docs/results.md)
    for n in range(1, N):  # below N steps the default eta is deterministic: the few-step member is eta 0, order 2
        assert resolve_eta_schedule(DEFAULT_ETA, n) == [0.0] * n


@given(st.one_of(st.none(), st.floats(0, STRONG_GUIDANCE_FEW_STEPS_FROM, exclude_max=True)),
       st.one_of(st.none(), st.integers(1, 1000)))
def test_below_both_thresholds_or_unknown_nothing_changes(w, n):
    assert settings_for_guidance(w, *DEFAULTS, num_steps=n) == DEFAULTS


@given(st.floats(STRONG_GUIDANCE_FEW_STEPS_FROM, 1e6), st.one_of(st.none(), st.integers(1, 1000)))
def test_from_each_threshold_the_defaults_become_its_member(w, n):
    if n is not None and n < N:
        expected = FEW
    else:
        expected = STRONG if w >= STRONG_GUIDANCE_FROM else DEFAULTS
    assert settings_for_guidance(w, *DEFAULTS, num_steps=n) == expected


@pytest.mark.parametrize("eta, order, corrector, many, few", [
    (0.5, DEFAULT_SOLVER_ORDER, True, (0.5, 1, True), (0.5, 2, False)),  # an explicit eta is kept
    (DEFAULT_ETA, 3, True, (STRONG_GUIDANCE_ETA, 3, True), (DEFAULT_ETA, 3, False)),  # an explicit order is kept
    ("linear:1:0", 3, True, ("linear:1:0", 3, True), ("linear:1:0", 3, False)),
    (0.0, 1, True, (0.0, 1, True), (0.0, 1, False)),
    (DEFAULT_ETA, DEFAULT_SOLVER_ORDER, False, (1.0, 1, False), (DEFAULT_ETA, 2, False)),  # the corrector off stays off
])
def test_explicit_choices_are_kept(eta, order, corrector, many, few):
    assert settings_for_guidance(8.0, eta, order, corrector) == many  # unknown step count: the many-step member
    assert settings_for_guidance(8.0, eta, order, corrector, num_steps=N) == many
    assert settings_for_guidance(8.0, eta, order, corrector, num_steps=N - 1) == few


@pytest.mark.parametrize("bad", ["-1", "inf", "nan", "x", "", None, True, -0.5])
def test_the_lab_parser_refuses_what_the_core_refuses_and_names_the_option(bad):
    with pytest.raises(ValueError, match=r"^--w-option: expected a finite number >= 0"):
        check_guidance_scale(bad, "--w-option")


@given(st.floats(0, 1e6))
def test_the_lab_parser_accepts_the_core_range_as_text(w):
    assert check_guidance_scale(repr(w)) == check_guidance_hint(w) == w


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "8", True])
def test_a_bad_guidance_scale_names_the_parameter_and_the_range(bad):
    with pytest.raises(ValueError, match=r"guidance_scale must be None .* finite number >= 0"):
        check_guidance_hint(bad)
    with pytest.raises(ValueError, match="guidance_scale"):
        SkippedStepScheduler(guidance_scale=bad)
    tuned = {"timesteps": [900, 100], "eta": [0.0, 0.0], "solver_order": 1, "nfe": 2, "num_train_timesteps": 1000}
    with pytest.raises(ValueError, match="guidance_scale"):
        SkippedStepScheduler(guidance_scale=bad, tuned_schedule=tuned)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(_toy_eps, (1, 1, 2, 2), num_steps=2, guidance_scale=bad, progress=False)


def _toy_eps(x, t):
    return 0.3 * x + 0.01 * torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1)) / 1000


def _run(sched, steps, seed=0):
    sched.set_timesteps(steps)
    x = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    for t in sched.timesteps:
        x = sched.step(_toy_eps(x, t.expand(x.shape[0])), t, x, generator=gen).prev_sample
    return sched.timesteps.tolist(), x


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_the_scheduler_told_a_strong_scale_samples_as_the_strong_member(steps):
    told = SkippedStepScheduler(guidance_scale=8.0)
    (ts_a, a), (ts_b, b) = _run(told, steps), _run(SkippedStepScheduler(**member(steps)), steps)
    assert ts_a == ts_b and torch.equal(a, b)
    assert told.config.guidance_scale == 8.0 and told.config.eta == DEFAULT_ETA  # the config keeps what was passed
    used = (told.effective_eta, told.step_config.solver_order, told.step_config.use_corrector)
    assert used == settings_for_guidance(8.0, *DEFAULTS, num_steps=steps)
    # the unguided default differs (the corrector below N steps; order 2 and eta 1 from N on)
    assert not torch.equal(a, _run(SkippedStepScheduler(), steps)[1])


def test_strong_guidance_keeps_the_few_step_placement_through_7_steps():
    """Unguided (or below the strong scale) the many-step placement starts at FEW_STEPS_BELOW = 7 steps; under
    strong guidance at STRONG_GUIDANCE_PLACEMENT_BELOW = 8 (docs/results.md, thirteenth round)."""
    assert (FEW_STEPS_BELOW, STRONG_GUIDANCE_PLACEMENT_BELOW) == (7, 8)
    assert [placement_split(w) for w in (None, 0.0, 1.0, 4.0, STRONG_GUIDANCE_FROM - 1e-9)] == [FEW_STEPS_BELOW] * 5
    assert placement_split(STRONG_GUIDANCE_FROM) == placement_split(8.0) == STRONG_GUIDANCE_PLACEMENT_BELOW
    for w, p7 in ((None, 1 + 2 / 7), (4.0, 1 + 2 / 7), (8.0, 1 + 4 / 7)):
        sched = SkippedStepScheduler(guidance_scale=w)
        sched.set_timesteps(7)
        plain = SkippedStepScheduler(spacing_power=p7)
        plain.set_timesteps(7)
        assert sched.timesteps.tolist() == plain.timesteps.tolist(), w
        assert spacing_power_for(7, None, placement_split(w)) == pytest.approx(p7)
    for w in (None, 4.0, 8.0):  # skipstep.sample places the steps as the scheduler does
        ts = []
        sample(_toy_eps, (2, 1, 2, 2), num_steps=7, guidance_scale=w, progress=False,
               callback=lambda i, t, x_s, x0: ts.append(int(t)), generator=torch.Generator().manual_seed(0))
        sched = SkippedStepScheduler(guidance_scale=w)
        sched.set_timesteps(7)
        assert ts == sched.timesteps.tolist(), w


def test_one_scheduler_follows_the_step_count_of_each_set_timesteps():
    told = SkippedStepScheduler(guidance_scale=8.0)
    for steps in (4, 12, 4, N, N - 1):
        assert torch.equal(_run(told, steps)[1], _run(SkippedStepScheduler(**member(steps)), steps)[1]), steps


@pytest.mark.parametrize("steps", [4, N - 1, N, 10])
def test_between_the_thresholds_only_the_few_step_member_applies(steps):
    w = (STRONG_GUIDANCE_FEW_STEPS_FROM + STRONG_GUIDANCE_FROM) / 2
    # a known scale above 1 also turns the few-step extrapolation gain off (skipstep.plan.resolve_extrapolation_gain)
    expected = SkippedStepScheduler(use_corrector=not steps < N, extrapolation_gain=1.0)
    assert torch.equal(_run(SkippedStepScheduler(guidance_scale=w), steps)[1], _run(expected, steps)[1])


@pytest.mark.parametrize("w", [None, 0.0, 1.0, 4.0])
@pytest.mark.parametrize("steps", [4, 10])
def test_below_the_threshold_the_scheduler_is_the_default(w, steps):
    """Below the strong-guidance thresholds only the extrapolation gain depends on the scale: the default's rule
    for an unknown scale or ``w <= 1``, the exact step (gain 1) above."""
    default = SkippedStepScheduler() if w is None or w <= 1 else SkippedStepScheduler(extrapolation_gain=1.0)
    assert torch.equal(_run(SkippedStepScheduler(guidance_scale=w), steps)[1], _run(default, steps)[1])
    if steps < N and w is not None and w > 1:
        assert not torch.equal(_run(SkippedStepScheduler(guidance_scale=w), steps)[1],
                               _run(SkippedStepScheduler(), steps)[1])


def test_the_scale_survives_a_config_round_trip(tmp_path):
    SkippedStepScheduler(guidance_scale=7.5).save_config(tmp_path)
    again = SkippedStepScheduler.from_config(SkippedStepScheduler.load_config(tmp_path))
    assert again.config.guidance_scale == 7.5 and again.step_config.solver_order == 1  # before set_timesteps
    again.set_timesteps(4)
    assert again.step_config.solver_order == 2 and again.step_config.use_corrector is False


@pytest.mark.parametrize("steps", [N - 2, N + 2])
def test_sample_told_a_strong_scale_is_the_strong_member(steps):
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    common = dict(noise=noise, num_steps=steps, progress=False)
    told = sample(_toy_eps, generator=torch.Generator().manual_seed(4), guidance_scale=8.0, **common)
    strong = sample(_toy_eps, generator=torch.Generator().manual_seed(4), **member(steps), **common)
    unguided = sample(_toy_eps, generator=torch.Generator().manual_seed(4), guidance_scale=2.0, **common)
    assert torch.equal(told, strong)
    assert torch.equal(unguided, sample(_toy_eps, generator=torch.Generator().manual_seed(4), extrapolation_gain=1.0,
                                        **common))
    assert not torch.equal(told, unguided)


@settings(max_examples=20, deadline=None)
@given(st.floats(0, 20))
def test_a_tuned_schedule_fixes_eta_and_order_whatever_the_scale(w):
    tuned = {"timesteps": [900, 500, 100], "eta": [1.0, 0.5, 0.0], "solver_order": 2, "nfe": 3,
             "num_train_timesteps": 1000}
    sched = SkippedStepScheduler(tuned_schedule=tuned, guidance_scale=w)
    assert sched.step_config.solver_order == 2 and list(sched.effective_eta) == [1.0, 0.5, 0.0]


def test_the_bench_default_is_told_the_run_scale_and_default_no_w_is_not(tmp_path):
    view = load_model(str(conditional_dir(tmp_path / "cond"))).at_guidance(8)
    told = scheduler_config_for(get_sampler("default"), view)
    assert told["guidance_scale"] == 8.0
    assert "guidance_scale" not in scheduler_config_for(get_sampler("default-no-w"), view)
    effective = sampler_settings(get_sampler("default"), view)["effective"]  # what the run records, both regimes
    assert (effective["eta"], effective["solver_order"], effective["use_corrector"]) == STRONG
    assert effective[f"below {N} steps"] == dict(zip(("eta", "solver_order", "use_corrector"), FEW))
    assert f"below {N} steps" not in sampler_settings(get_sampler("default-no-w"), view)["effective"]
    a = sample_cell(view, get_sampler("default"), 4, 0, 6, 6, "cpu").samples
    b = sample_cell(view, get_sampler("default-no-w"), 4, 0, 6, 6, "cpu").samples
    assert not torch.equal(a, b)  # w = 8: the strong member against the unguided default
    weak = load_model(str(conditional_dir(tmp_path / "cond"))).at_guidance(2)
    # w = 2: the same from 8 steps on; below, told w > 1 the default drops its few-step extrapolation gain
    assert torch.equal(sample_cell(weak, get_sampler("default"), N + 2, 0, 6, 6, "cpu").samples,
                       sample_cell(weak, get_sampler("default-no-w"), N + 2, 0, 6, 6, "cpu").samples)
    assert not torch.equal(sample_cell(weak, get_sampler("default"), 4, 0, 6, 6, "cpu").samples,
                           sample_cell(weak, get_sampler("default-no-w"), 4, 0, 6, 6, "cpu").samples)


def _k_denoiser(x, sigma):
    """A smooth, nonlinear x0 predictor: N(0.3, 0.5^2) data's exact denoiser, bent by a tanh."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (0.25 * x + s * s * 0.3) / (0.25 + s * s) + 0.2 * torch.tanh(x) / (1 + s)


def _k_run(n, **kwargs):
    from skipstep.k_diffusion import sample_skipstep

    sigmas = torch.cat([torch.logspace(1.2, -1.5, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]
    noise = torch.Generator().manual_seed(5)
    table = {}

    def noise_sampler(sigma, sigma_next):  # the same unit noise per step, whichever member asks
        key = (float(sigma), float(sigma_next))
        if key not in table:
            table[key] = torch.randn(x.shape, generator=noise, dtype=torch.float64)
        return table[key]

    return sample_skipstep(_k_denoiser, x, sigmas, disable=True, noise_sampler=noise_sampler, **kwargs)


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_the_k_diffusion_adapter_told_a_strong_scale_is_the_strong_member(n):
    strong = _k_run(n, **member(n, placement=False))
    assert torch.equal(_k_run(n, guidance_scale=8.0), strong)
    # below the threshold: the default, at gain 1 (a known scale above 1 turns the few-step gain off)
    assert torch.equal(_k_run(n, guidance_scale=4.0), _k_run(n, extrapolation_gain=1.0))
    assert not torch.equal(_k_run(n, guidance_scale=4.0), strong)
    # explicit choices are kept: an eta schedule and an order
    few = n < N
    assert torch.equal(_k_run(n, guidance_scale=8.0, eta_schedule="linear:1:0"),
                       _k_run(n, eta_schedule="linear:1:0", extrapolation_gain=1.0,
                              **({"use_corrector": False} if few else
                                 {"solver_order": STRONG_GUIDANCE_SOLVER_ORDER})))
    assert torch.equal(_k_run(n, guidance_scale=8.0, solver_order=3),
                       _k_run(n, solver_order=3, extrapolation_gain=1.0,
                              **({"use_corrector": False} if few else {"eta": STRONG_GUIDANCE_ETA})))


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "8", True])
def test_the_k_diffusion_adapter_refuses_a_bad_guidance_scale(bad):
    with pytest.raises(ValueError, match=r"guidance_scale must be None .* finite number >= 0"):
        _k_run(3, guidance_scale=bad)
