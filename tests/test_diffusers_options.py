"""Every diffusers option is honoured, mapped, refused or warned about -- never dropped silently -- and where the
meaning is the same, the result equals the diffusers scheduler's."""

from __future__ import annotations

import inspect
import logging

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers import AysSchedules

from skipstep import SkippedStepScheduler
from skipstep.diffusers_config import FOREIGN_KEY_RULES, diffusers_scheduler_keys
from skipstep.posterior import midpoint_x0_weight_rows, multistep_x0_weights

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
OWN_KEYS = set(inspect.signature(SkippedStepScheduler.__init__).parameters) - {"self"}
SOLVER_FAMILY = [DPMSolverMultistepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler, SASolverScheduler]
LOGGER = "skipstep.diffusers_config"


def strictly_descending(ts: torch.Tensor) -> bool:
    return bool((ts[1:] < ts[:-1]).all())


def test_every_key_of_every_compatible_scheduler_has_a_decision():
    undecided = sorted(k for k in diffusers_scheduler_keys() if k not in OWN_KEYS and k not in FOREIGN_KEY_RULES)
    assert undecided == []


def test_a_scheduler_whose_optional_backend_is_missing_does_not_break_the_key_table(monkeypatch):
    """diffusers exports a dummy for a scheduler whose backend is not installed (CosineDPMSolverMultistepScheduler
    without torchsde: a plain `pip install skipstep`); any attribute access on it raises ImportError. The key table
    skips it instead of failing every from_config."""
    from diffusers.utils import DummyObject
    from diffusers.utils.import_utils import BACKENDS_MAPPING

    import skipstep.diffusers_config as dc

    missing = next((k for k, (available, _) in BACKENDS_MAPPING.items() if not available()), None)
    if missing is None:
        pytest.skip("every optional diffusers backend is installed here")
    dummy = DummyObject("MissingBackendScheduler", (), {"_backends": [missing]})
    with pytest.raises(ImportError):
        hasattr(dummy, "config_name")
    before = dc._scheduler_key_sets()
    monkeypatch.setattr(diffusers.schedulers, "MissingBackendScheduler", dummy, raising=False)
    dc._scheduler_key_sets.cache_clear()
    try:
        after = dc._scheduler_key_sets()
    finally:
        dc._scheduler_key_sets.cache_clear()
    assert "MissingBackendScheduler" not in after and after == before


# ---------------------------------------------------------------------------------------------------------------
# the grids of the scheduler being replaced
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [DDIMScheduler, DDPMScheduler] + SOLVER_FAMILY, ids=lambda c: c.__name__)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("chain", [{}, SD], ids=["linear", "sd"])
def test_timesteps_equal_the_replaced_schedulers(source, spacing, chain):
    theirs = source(**chain, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    assert ours.config.replaced_scheduler == source.__name__
    for n in (1, 5, 10, 25, 50):
        theirs.set_timesteps(n)
        ours.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps), (n, ours.timesteps.tolist(), theirs.timesteps.tolist())


def test_replaced_scheduler_survives_save_and_load(tmp_path):
    ours = SkippedStepScheduler.from_config(DPMSolverMultistepScheduler(timestep_spacing="linspace").config, keep_grid=True)
    ours.save_config(tmp_path)
    again = SkippedStepScheduler.from_pretrained(tmp_path)
    assert again.config.replaced_scheduler == "DPMSolverMultistepScheduler"
    again.set_timesteps(10)
    assert again.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]  # not DDIM's [..., 111, 0]


def test_euler_family_linspace_is_rounded():
    """Euler evaluates at fractional timesteps (749.25); a discrete chain's model at the nearest integers."""
    theirs = EulerDiscreteScheduler(timestep_spacing="linspace")
    ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    theirs.set_timesteps(5)
    ours.set_timesteps(5)
    assert ours.timesteps.tolist() == np.round(theirs.timesteps.numpy()).astype(int).tolist()


@pytest.mark.parametrize("lambda_min_clipped", [-5.1, -3.0])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_lambda_min_clipped_equals_dpm_solver(lambda_min_clipped, spacing):
    cfg = dict(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing, lambda_min_clipped=lambda_min_clipped)
    theirs = DPMSolverMultistepScheduler(**cfg)
    ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)


FLAGS = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"]


@pytest.mark.parametrize("source", SOLVER_FAMILY, ids=lambda c: c.__name__)
@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("chain", [{}, SD, dict(beta_schedule="squaredcos_cap_v2")], ids=["linear", "sd", "cosine"])
def test_sigma_spacings_equal_the_replaced_schedulers_timesteps(source, flag, chain):
    if flag not in inspect.signature(source.__init__).parameters:
        pytest.skip(f"{source.__name__} has no {flag}")
    theirs = source(**chain, **{flag: True})
    ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    assert getattr(ours.config, flag) is True
    for n in (5, 10, 25):
        theirs.set_timesteps(n)
        ours.set_timesteps(n)
        assert strictly_descending(ours.timesteps) and len(ours.timesteps) == n
        if strictly_descending(theirs.timesteps):
            assert torch.equal(ours.timesteps, theirs.timesteps), (n, ours.timesteps.tolist(),
                                                                   theirs.timesteps.tolist())
        else:  # diffusers repeats timesteps there; ours are pushed apart to the nearest free ones (docs/drop_in.md)
            assert ours.timesteps[-1] == theirs.timesteps[-1]


def test_dpm_pp_2m_karras_config_is_honoured_and_algorithm_type_warned_once(caplog):
    theirs = DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, algorithm_type="dpmsolver++")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    warned = [r.getMessage() for r in caplog.records if "algorithm_type" in r.getMessage()]
    assert len(warned) == 1 and "'dpmsolver++'" in warned[0] and "eta=0.0" in warned[0]
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.allclose(ours.sigmas[:1], theirs.sigmas[:1])  # sigma_max is the table's; later ones are at integer t
    # passing eta (the choice the warning would suggest) silences it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        SkippedStepScheduler.from_config(theirs.config, eta=0.0, solver_type="midpoint", keep_grid=True)
    assert not [r for r in caplog.records if "algorithm_type" in r.getMessage()]


@pytest.mark.parametrize(
    "source,key",
    [
        (lambda: PNDMScheduler(skip_prk_steps=True), "skip_prk_steps"),
        (lambda: UniPCMultistepScheduler(disable_corrector=[0]), "disable_corrector"),
        (lambda: UniPCMultistepScheduler(solver_type="bh1"), "solver_type"),
        (lambda: SASolverScheduler(predictor_order=3), "predictor_order"),
        (lambda: EulerDiscreteScheduler(interpolation_type="log_linear"), "interpolation_type"),
        (lambda: DEISMultistepScheduler(algorithm_type="deis"), "algorithm_type"),
        (lambda: DDIMScheduler(set_alpha_to_one=False), "set_alpha_to_one"),
    ],
)
def test_keys_describing_the_replaced_scheduler_log_one_warning(caplog, source, key):
    theirs = source()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ours = SkippedStepScheduler.from_config(theirs.config, keep_grid=True)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().split(": ", 1)[-1].startswith(key)]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert repr(theirs.config[key]) in warned[0]
    assert ours.config.solver_type in ("heun", "midpoint")


def test_set_alpha_to_one_false_keeps_the_clean_final_step_unless_asked(caplog):
    ddim = DDIMScheduler(set_alpha_to_one=False)
    assert SkippedStepScheduler.from_config(ddim.config, keep_grid=True).config.final_sigmas_type == "zero"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ours = SkippedStepScheduler.from_config(ddim.config, final_sigmas_type="sigma_min", keep_grid=True)
    assert ours.config.final_sigmas_type == "sigma_min" and caplog.records == []


def test_inert_values_are_accepted_without_a_warning(caplog):
    theirs = DPMSolverMultistepScheduler(use_flow_sigmas=False, euler_at_final=False, lambda_min_clipped=-np.inf,
                                         variance_type=None, algorithm_type="dpmsolver++", solver_type="heun")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        SkippedStepScheduler.from_config(theirs.config, eta=0.0, keep_grid=True)
    assert caplog.records == []


@pytest.mark.parametrize(
    "make,kwargs,match",
    [
        (lambda: EDMEulerScheduler(), {}, "EDM"),
        (lambda: DPMSolverMultistepScheduler(), dict(use_dynamic_shifting=True), "use_dynamic_shifting"),
        (lambda: EulerDiscreteScheduler(timestep_type="continuous"), {}, "timestep_type"),
        (lambda: UniPCMultistepScheduler(shift_terminal=0.1), {}, "shift_terminal"),
        (lambda: DDIMScheduler(), dict(etaa=0.5), r"unknown SkippedStepScheduler option\(s\) \['etaa'\]"),
    ],
)
def test_refused_keys_name_the_key_and_the_alternative(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler.from_config(make().config, **kwargs, keep_grid=True)


# ---------------------------------------------------------------------------------------------------------------
# custom sigmas, AYS timesteps, the final step
# ---------------------------------------------------------------------------------------------------------------
def test_custom_sigmas_map_to_the_nearest_integer_timesteps():
    ours, euler = SkippedStepScheduler(**SD), EulerDiscreteScheduler(**SD)
    sigmas = AysSchedules["StableDiffusionSigmas"]
    ours.set_timesteps(sigmas=sigmas)
    euler.set_timesteps(sigmas=sigmas)
    assert ours.timesteps.tolist() == np.round(euler.timesteps.numpy()).astype(int).tolist()
    assert ours.num_inference_steps == 10 and ours.custom_timesteps and float(ours.sigmas[-1]) == 0.0
    # a pipeline's retrieve_timesteps accepts the scheduler for sigmas= (it checks set_timesteps' signature)
    timesteps, n = retrieve_timesteps(SkippedStepScheduler(**SD), sigmas=sigmas)
    assert n == 10 and timesteps.tolist() == ours.timesteps.tolist()


def test_a_positive_final_sigma_stops_there():
    ours = SkippedStepScheduler(eta=0.0, solver_order=1)
    table = ((1 - ours.alphas_cumprod) / ours.alphas_cumprod) ** 0.5
    ours.set_timesteps(sigmas=[float(table[999]), float(table[500]), float(table[20])])
    assert ours.timesteps.tolist() == [999, 500] and int(ours.previous_timestep(500)) == 20


def test_ays_timesteps():
    ours = SkippedStepScheduler(**SD)
    ours.set_timesteps(timesteps=AysSchedules["StableDiffusionTimesteps"])
    assert ours.timesteps.tolist() == AysSchedules["StableDiffusionTimesteps"]
    timesteps, n = retrieve_timesteps(ours, timesteps=AysSchedules["StableDiffusionXLTimesteps"])
    assert n == 10 and timesteps.tolist() == AysSchedules["StableDiffusionXLTimesteps"]


@pytest.mark.parametrize(
    "sigmas,match",
    [
        ([1.0, 2.0, 0.0], "strictly descending"),
        ([14.6, 0.0, 0.0], "only the last one may be 0"),
        ([500.0, 1.0, 0.0], "range"),
        ([14.6, 14.59, 0.0], "repeated timesteps"),
        ([1.0], "at least one noisy sigma"),
    ],
)
def test_bad_custom_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        SkippedStepScheduler(**SD).set_timesteps(sigmas=sigmas)


def test_sigma_spacing_refuses_explicit_timesteps():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        SkippedStepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500])


@pytest.mark.parametrize("solver_order", [1, 2])
def test_final_sigmas_type_sigma_min_equals_dpm_solver(solver_order):
    from test_diffusers_contract import full_loop  # same loop as the contract tests

    theirs = DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", timestep_spacing="linspace",
                                         solver_order=solver_order, solver_type="midpoint", lower_order_final=True)
    ours = SkippedStepScheduler.from_config(theirs.config, eta=0.0, use_corrector=False, keep_grid=True)
    assert ours.config.final_sigmas_type == "sigma_min"
    ref = full_loop(theirs)
    assert float((full_loop(ours) - ref).abs().max()) < 2e-6
    assert torch.allclose(ours.sigmas, theirs.sigmas, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# orders: lower_order_final, euler_at_final, solver_type
# ---------------------------------------------------------------------------------------------------------------
def _orders(sched, n):
    sched.set_timesteps(n)
    return [min(sched.step_config.solver_order, step.max_order()) for step in sched._plan]


def test_lower_order_final_as_dpm_solver():
    cfg = dict(solver_order=3, final_sigmas_type="sigma_min", timestep_spacing="trailing")
    plain = _orders(SkippedStepScheduler(**cfg), 10)
    lowered = _orders(SkippedStepScheduler(**cfg, lower_order_final=True), 10)
    assert lowered[-1] == 1 and lowered[-2] <= 2 and lowered[:-2] == plain[:-2]
    assert _orders(SkippedStepScheduler(**cfg, lower_order_final=True), 20) == _orders(SkippedStepScheduler(**cfg), 20)
    assert _orders(SkippedStepScheduler(**cfg, euler_at_final=True), 20)[-1] == 1


def test_midpoint_weights_and_order_three():
    lams, lam_s = [0.2, -0.5], 0.9
    r = (lams[0] - lams[1]) / (lam_s - lams[0])
    for eta in (0.0, 0.4, 1.0):
        w = multistep_x0_weights(lams, lam_s, eta, solver_type="midpoint")
        assert w == pytest.approx([1 + 1 / (2 * r), -1 / (2 * r)], abs=1e-14)
    assert midpoint_x0_weight_rows([lams], [lam_s]).shape == (1, 2)
    three = [0.2, -0.5, -1.1]
    assert multistep_x0_weights(three, lam_s, 0.3, solver_type="midpoint") == multistep_x0_weights(three, lam_s, 0.3)


def test_solver_type_heun_is_the_default_and_differs_from_midpoint():
    from test_diffusers_contract import full_loop

    # order 2, where the two forms differ
    heun, mid = SkippedStepScheduler(eta=0.0, solver_order=2), SkippedStepScheduler(eta=0.0, solver_order=2,
                                                                                     solver_type="midpoint")
    assert heun.config.solver_type == "heun"
    assert float((full_loop(heun) - full_loop(mid)).abs().max()) > 1e-4


def test_a_foreign_grid_is_not_carried_unless_asked(caplog):
    """The replaced scheduler's grid (timestep_spacing, steps_offset) gives way to skipstep's step rule; keep_grid or
    a keyword keeps it; a skipstep config keeps its own, also through another class and back."""
    sd_like = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                            timestep_spacing="leading", set_alpha_to_one=False)
    default = SkippedStepScheduler()
    from skipstep import diffusers_config

    diffusers_config._WARNED.clear()  # noqa: SLF001  (each warning is once per process)
    with caplog.at_level(logging.WARNING, logger="skipstep.diffusers_config"):
        ours = SkippedStepScheduler.from_config(sd_like.config)
        SkippedStepScheduler.from_config(sd_like.config)
    grid_warnings = [r for r in caplog.records if "is not carried" in r.getMessage()]
    assert len(grid_warnings) == 1 and "timestep_spacing='leading'" in grid_warnings[0].getMessage()
    assert ours.config.timestep_spacing == default.config.timestep_spacing
    assert ours.config.steps_offset == default.config.steps_offset
    ours.set_timesteps(5)
    assert ours.timesteps.tolist() == (default.set_timesteps(5) or default.timesteps.tolist())
    kept = SkippedStepScheduler.from_config(sd_like.config, keep_grid=True)
    kept.set_timesteps(5)
    sd_like.set_timesteps(5)
    assert kept.timesteps.tolist() == sd_like.timesteps.tolist() == [801, 601, 401, 201, 1]
    by_keyword = SkippedStepScheduler.from_config(sd_like.config, timestep_spacing="leading")
    assert (by_keyword.config.timestep_spacing, by_keyword.config.steps_offset) == ("leading", 1)
    mine = SkippedStepScheduler(timestep_spacing="linspace")
    back = SkippedStepScheduler.from_config(DDIMScheduler.from_config(mine.config).config)
    assert back.config.timestep_spacing == "linspace"
    with pytest.raises(ValueError, match="keep_grid must be True or False"):
        SkippedStepScheduler.from_config(sd_like.config, keep_grid="yes")


def test_a_foreign_key_warning_is_logged_once_per_process_not_per_rebuild(caplog):
    """A benchmark or a pipeline rebuilds its scheduler from the same config for every cell / swap."""
    from diffusers import DDIMScheduler

    config = DDIMScheduler(set_alpha_to_one=False).config
    with caplog.at_level("WARNING", logger="skipstep"):
        for _ in range(3):
            SkippedStepScheduler.from_config(config)
    assert sum("set_alpha_to_one=False" in r.getMessage() for r in caplog.records) == 1
