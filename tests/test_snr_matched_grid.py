"""The default placement below FEW_STEPS_BELOW steps: the power rule of the reference DDPM chain carried to the
model's chain at equal log-SNR (skipstep.timesteps.snr_matched_power_grid)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipstep import DiscreteVPPath, SkippedStepScheduler, select_timesteps
from skipstep.timesteps import (
    REFERENCE_CHAIN,
    FEW_STEPS_BELOW,
    power_grid,
    snr_matched_power_grid,
    spacing_power_for,
)

COSINE = {"beta_schedule": "squaredcos_cap_v2"}
ZERO_SNR = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def plain(path, n, power=None):
    return np.round(power_grid(n, spacing_power_for(n, power)) * path.num_train_timesteps).astype(int).tolist()


@pytest.mark.parametrize("n", range(1, 12))
def test_on_the_reference_chain_it_is_the_plain_power_grid(n):
    path = DiscreteVPPath.from_config(REFERENCE_CHAIN)
    assert select_timesteps(path, n, "power", power=None).tolist() == plain(path, n)


@pytest.mark.parametrize("config", [COSINE, ZERO_SNR])
@pytest.mark.parametrize("n", range(1, FEW_STEPS_BELOW))
def test_below_the_threshold_the_steps_sit_at_the_reference_log_snrs(config, n):
    ref = DiscreteVPPath.from_config(REFERENCE_CHAIN)
    path = DiscreteVPPath.from_config(config)
    ts = select_timesteps(path, n, "power", power=None)
    target = ref.log_snr(torch.as_tensor(plain(ref, n)))
    lam = path.log_snr(ts)
    # each index is the nearest one: the target lies between the log-SNRs of its neighbours
    above, below = path.log_snr(ts - 1), path.log_snr(torch.clamp(ts + 1, max=path.t_max))
    assert bool(((below <= target) & (target <= above)).all()), (ts.tolist(), lam.tolist(), target.tolist())
    assert ts.tolist() != plain(path, n) or n == 1 and config is ZERO_SNR


def test_cosine_starts_as_far_from_the_data_as_the_linear_chain():
    """The plain grid's first point on the cosine chain (t = 750 at n = 3) is at log-SNR -1.8; the matched one
    at the linear chain's -5.7."""
    path = DiscreteVPPath.from_config(COSINE)
    assert plain(path, 3) == [750, 291, 58]
    assert float(path.log_snr(torch.tensor(750))) == pytest.approx(-1.79, abs=0.01)
    ts = select_timesteps(path, 3, "power", power=None)
    assert ts.tolist() == [962, 549, 119]
    assert float(path.log_snr(ts[0])) == pytest.approx(-5.71, abs=0.05)


@pytest.mark.parametrize("config", [COSINE, ZERO_SNR])
def test_from_the_threshold_on_and_with_an_explicit_power_the_grid_is_plain(config):
    path = DiscreteVPPath.from_config(config)
    for n in (FEW_STEPS_BELOW, 10, 20):
        assert select_timesteps(path, n, "power", power=None).tolist() == plain(path, n)
    for n in (3, 5):
        assert select_timesteps(path, n, "power", power=1 + 4 / n).tolist() == plain(path, n, 1 + 4 / n)


@pytest.mark.parametrize("config", [SD, {"num_train_timesteps": 100}])
def test_a_chain_that_does_not_reach_the_reference_log_snrs_keeps_the_plain_grid(config):
    """Stable Diffusion's chain ends at log-SNR -5.4 (> -5.7); a 100-step linear chain far above."""
    path = DiscreteVPPath.from_config(config)
    for n in range(3, FEW_STEPS_BELOW):  # (at n = 2 the first point, t = 667 on the reference, is within reach)
        assert snr_matched_power_grid(path, n, spacing_power_for(n)) is None
        assert select_timesteps(path, n, "power", power=None).tolist() == plain(path, n)


def test_a_chain_cut_by_lambda_min_clipped_keeps_the_plain_grid_on_what_is_left():
    path = DiscreteVPPath.from_config(COSINE)
    ts = select_timesteps(path, 5, "power", power=None, lambda_min_clipped=-5.1)
    last_t = int((path.log_snr(torch.arange(1000)) / 2 >= -5.1).sum())
    assert last_t < 1000
    assert ts.tolist() == np.round(power_grid(5, 1.8) * last_t).astype(int).tolist()


def test_the_scheduler_uses_it_by_default():
    sched = SkippedStepScheduler.from_config(dict(COSINE, num_train_timesteps=1000))
    sched.set_timesteps(5)
    assert sched.timesteps.tolist() == select_timesteps(DiscreteVPPath.from_config(COSINE), 5, "power",
                                                        power=None).tolist() == [980, 867, 613, 319, 95]


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]), zero_snr=st.booleans(),
       T=st.integers(8, 2000), n=st.integers(1, FEW_STEPS_BELOW - 1))
def test_always_n_strictly_descending_steps_on_the_chain(schedule, zero_snr, T, n):
    config = {"beta_schedule": schedule, "num_train_timesteps": T, "rescale_betas_zero_snr": zero_snr}
    if schedule == "scaled_linear":
        config.update(beta_start=0.00085, beta_end=0.012)
    path = DiscreteVPPath.from_config(config)
    ts = select_timesteps(path, n, "power", power=None)
    assert len(ts) == n and bool((ts[1:] < ts[:-1]).all()) and 0 <= int(ts[-1]) and int(ts[0]) <= T - 1


def test_tune_checks_a_tuned_schedule_against_the_default_rule_too():
    """skipstep tune writes a schedule only if it beats every plain spacing, the default's own grid included."""
    from skipstep.lab.tune_search import plain_spacings

    cosine = plain_spacings(DiscreteVPPath.from_config(COSINE), 5)
    assert cosine["power, the default rule"] == [980, 867, 613, 319, 95]
    linear = plain_spacings(DiscreteVPPath.from_config(REFERENCE_CHAIN), 5)
    assert linear["power p=1+4/n / power, the default rule"] == [833, 558, 332, 160, 46]


def test_the_exponent_rule_has_two_regimes_split_where_the_default_eta_turns_stochastic():
    from skipstep import DEFAULT_ETA
    from skipstep.plan import resolve_eta_schedule

    assert FEW_STEPS_BELOW == 7  # from 8 to 7 in the thirteenth round (docs/results.md)
    assert [spacing_power_for(n) for n in (4, 5, 6)] == pytest.approx([2.0, 1.8, 1 + 4 / 6])
    assert [spacing_power_for(n) for n in (7, 8, 10, 20)] == pytest.approx([1 + 2 / 7, 1.25, 1.2, 1.1])
    assert spacing_power_for(7, None, few_steps_below=8) == pytest.approx(1 + 4 / 7)
    assert spacing_power_for(10, 1.4) == 1.4
    assert resolve_eta_schedule(DEFAULT_ETA, FEW_STEPS_BELOW - 1) == [0.0] * (FEW_STEPS_BELOW - 1)
    assert set(resolve_eta_schedule(DEFAULT_ETA, FEW_STEPS_BELOW)) == {1.0}


@pytest.mark.parametrize(("flow", "nfe", "member"), [(False, 5, "cand-pn4-e0-o2"), (False, 10, "cand-pn2-e1-o2"),
                                                    (True, 5, "cand-pn4-e0-o2"), (True, 10, "cand-pn2-e1-o2")])
def test_the_default_samples_the_chosen_composite_members_cells(flow, nfe, member):
    """docs/results.md scores the default from its members' cells: below 7 steps the deterministic member with
    p = 1 + 4/n (on a linear chain the matched grid is that grid), from 7 on the eta-1 member with p = 1 + 2/n; a
    flow path has its own grids since the sixteenth and seventeenth rounds (and eta 1 only while sigma >= 1/2)."""
    from test_analytic_first_lab import _loaded

    from skipstep.lab.sample_sets import sample_cell
    from skipstep.lab.sampler_registry import get_sampler

    loaded = _loaded(flow)
    cells = [sample_cell(loaded, get_sampler(name), nfe, seed=3, num_samples=8, batch_size=8, device="cpu")
             for name in ("default", member)]
    if flow:
        # sixteenth / seventeenth rounds: a flow path visits the default rule's own grid (the reference chain's
        # log-SNRs below 7 steps, uniform from 7), whatever its shift
        from skipstep.paths import RectifiedFlowPath

        sigmas = select_timesteps(RectifiedFlowPath(), nfe, "power", power=None).float()
        assert cells[0].timesteps == pytest.approx((sigmas * loaded.num_train_timesteps).tolist(), rel=1e-6)
        assert cells[0].timesteps != cells[1].timesteps
        return
    assert cells[0].timesteps == cells[1].timesteps
    torch.testing.assert_close(cells[0].samples, cells[1].samples, rtol=0, atol=0)


def test_tune_compares_with_the_default_rule_placed_as_the_told_scheduler_places_it():
    """Under strong guidance the default rule keeps its few-step placement at 7 steps (placement_split), and tune's
    plain spacings list the default rule's grid as that scheduler uses it."""
    from types import SimpleNamespace

    from skipstep.lab.tune_grids import DEFAULT_RULE_LABEL, model_plain_spacings

    cosine = DiscreteVPPath.from_config(COSINE)

    def default_rule(spacings):
        return next(ts for name, ts in spacings.items() if DEFAULT_RULE_LABEL in name)

    for w, split in ((None, 7), (1.0, 7), (4.0, 7), (8.0, 8)):
        loaded = SimpleNamespace(scheduler_config=dict(COSINE), guidance_scale=w)
        told = SkippedStepScheduler(**COSINE, guidance_scale=w)
        told.set_timesteps(7)
        assert default_rule(model_plain_spacings(loaded, cosine, 7)) == told.timesteps.tolist(), w
        assert told.timesteps.tolist() == select_timesteps(cosine, 7, "power", power=None,
                                                           few_steps_below=split).tolist()
    assert (select_timesteps(cosine, 7, "power", power=None).tolist()
            != select_timesteps(cosine, 7, "power", power=None, few_steps_below=8).tolist())
