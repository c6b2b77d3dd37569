"""The zoo trainer (skipstep.lab.testbeds.zoo): each regime's loss is the one its scheduler config describes, and a
trained directory loads in that regime, reproducibly."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from skipstep.lab.models import ZOO_MODELS, load_zoo_model
from skipstep.lab.testbeds import zoo
from skipstep.lab.testbeds.zoo import ZOO_SPECS, ZooLoss


def test_the_trainer_and_the_registration_table_name_the_same_models():
    assert set(ZOO_SPECS) == set(ZOO_MODELS)
    assert ZOO_MODELS["digits-cfg"].null_label == zoo.NULL_LABEL


@pytest.mark.parametrize("name", [n for n, s in ZOO_SPECS.items() if s.regime != "flow"])
def test_the_chain_is_the_saved_scheduler_s_chain(name):
    spec = ZOO_SPECS[name]
    loss = ZooLoss(spec)
    config = {k: v for k, v in spec.scheduler.items() if k != "_class_name"}
    expected = getattr(diffusers, spec.scheduler["_class_name"])(**config).alphas_cumprod  # the class it is saved as
    torch.testing.assert_close(loss.abar, expected, rtol=0, atol=1e-7)


def test_the_zero_snr_chain_ends_at_zero_signal_and_its_target_is_diffusers_velocity():
    spec = ZOO_SPECS["digits-vzsnr"]
    loss = ZooLoss(spec)
    assert loss.abar[-1].item() == 0.0 and loss.abar[-2].item() > 0
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    xt, t, eps = loss.draw(x0, g)
    ddpm = DDPMScheduler(**{k: v for k, v in spec.scheduler.items() if k in (
        "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "rescale_betas_zero_snr")})
    torch.testing.assert_close(xt, ddpm.add_noise(x0, eps, t), rtol=0, atol=1e-6)

    class Echo(torch.nn.Module):  # returns a fixed output, so the loss is ||out - target||^2 with a known out
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    got = loss(Echo(), x0, None, g, draw=(xt, t, eps))
    assert got.item() == pytest.approx(ddpm.get_velocity(x0, eps, t).pow(2).mean().item(), rel=1e-6)


def test_the_flow_draw_is_flow_match_euler_s_interpolation():
    loss = ZooLoss(ZOO_SPECS["digits-flow"])
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1
    xt, t_model, eps = loss.draw(x0, g)
    sigma = t_model / 1000.0
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=sigma.sort(descending=True).values.tolist())
    order = sigma.argsort(descending=True)
    for k, i in enumerate(order):
        ref = sched.scale_noise(x0[i:i + 1], sched.timesteps[k:k + 1], eps[i:i + 1])
        torch.testing.assert_close(xt[i:i + 1], ref, rtol=0, atol=1e-5)


def test_the_sd3_style_flow_draw_is_a_shifted_logit_normal_sigma():
    spec = ZOO_SPECS["digits-flow-d"]
    assert spec.flow_sigma == "logit-normal-shifted" and spec.scheduler["shift"] == 3.0
    loss = ZooLoss(spec)
    g = torch.Generator().manual_seed(3)
    x0 = torch.zeros(20000, 1, 1, 1)
    xt, t_model, eps = loss.draw(x0, g)
    sigma = t_model.double() / 1000.0
    torch.testing.assert_close(xt.flatten().double(), sigma * eps.flatten().double(), rtol=0, atol=1e-6)
    u = sigma / (3.0 - 2.0 * sigma)  # undo the shift s u / (1 + (s - 1) u)
    z = torch.log(u / (1 - u))
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1.0) < 0.03
    assert abs(sigma.median().item() - 0.75) < 0.01  # shift(1/2) = 3/4: training leans on high noise


def test_an_unknown_flow_sigma_is_refused_by_name():
    import dataclasses

    loss = ZooLoss(dataclasses.replace(ZOO_SPECS["digits-flow"], flow_sigma="beta"))
    with pytest.raises(ValueError, match="flow_sigma"):
        loss.draw(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0))


def test_the_learned_variance_bound_is_zero_at_the_true_posterior_and_positive_elsewhere():
    loss = ZooLoss(ZOO_SPECS["digits-lv"])
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    t = torch.arange(1, 9) * 100
    eps = torch.randn(x0.shape, generator=g)
    a = loss.abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    nu_posterior = -torch.ones_like(x0)  # frac = 0: log sigma^2 = log beta~_t, the true posterior variance
    exact = loss.vlb(xt, t, x0, eps, nu_posterior)
    torch.testing.assert_close(exact, torch.zeros_like(exact), rtol=0, atol=2e-6)
    # a wrong mean: x0_hat off by -0.1 sqrt(1 - abar)/sqrt(abar), so KL = (coef_x0 dx0)^2 / (2 beta~_t) / ln 2
    dx0 = 0.1 * (1 - a).sqrt() / a.sqrt()
    expected = (loss.coef_x0[t].view(-1, 1, 1, 1) * dx0) ** 2 / (2 * loss.log_post_var[t].exp().view(-1, 1, 1, 1))
    torch.testing.assert_close(loss.vlb(xt, t, x0, eps + 0.1, nu_posterior),
                               (expected / math.log(2)).flatten(1).mean(1), rtol=1e-3, atol=1e-7)
    # the variance beta_t instead of beta~_t: KL = (-1 + log(beta/beta~) + beta~/beta) / 2 / ln 2 per dimension
    ratio = (loss.beta[t] / loss.log_post_var[t].exp()).double()
    expected = (-1 + ratio.log() + 1 / ratio) / 2 / math.log(2)
    torch.testing.assert_close(loss.vlb(xt, t, x0, eps, torch.ones_like(x0)).double(), expected, rtol=1e-3, atol=5e-8)


def test_the_decoder_likelihood_is_a_distribution_over_the_seventeen_pixel_levels():
    levels = torch.linspace(-1, 1, 17).view(17, 1, 1, 1)
    for mean, log_var in ((0.3, math.log(0.01)), (-0.9, math.log(0.2)), (1.0, math.log(1e-4))):
        m = torch.full_like(levels, mean)
        lv = torch.full_like(levels, log_var)
        total = zoo._discretised_gaussian_log_likelihood(levels, m, lv).exp().sum().item()  # noqa: SLF001
        assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", list(ZOO_SPECS))
def test_a_short_training_writes_a_directory_that_loads_in_its_regime(name, tmp_path, monkeypatch):
    train_info = zoo.train(name, tmp_path / "zoo", tmp_path / "docs", threads=1, steps=3)
    loaded = load_zoo_model(tmp_path / "zoo" / name, name=name)
    regime = ZOO_SPECS[name].regime
    assert train_info["spec"]["steps"] == 3
    assert (tmp_path / "docs" / "zoo" / f"{name}_training.csv").is_file()
    assert loaded.regime == ("flow" if regime == "flow" else "vp")
    assert loaded.learned_variance == (regime == "learned-variance")
    assert (loaded.conditioning is not None) == (regime == "cfg")
    if regime == "cfg":
        assert loaded.conditioning.null_label == zoo.NULL_LABEL and loaded.conditioning.num_class_embeds == 11
    assert loaded.zero_terminal_snr == (regime == "v-zero-snr")
    assert loaded.prediction_type == {"flow": "flow", "v": "v_prediction", "v-zero-snr": "v_prediction"}.get(regime,
                                                                                                           "epsilon")


def test_training_is_reproducible(tmp_path):
    for run in ("a", "b"):
        zoo.train("digits-eps-b", tmp_path / run, tmp_path / "docs", threads=1, steps=4)
    first = load_file(tmp_path / "a" / "digits-eps-b" / "unet" / "diffusion_pytorch_model.safetensors")
    second = load_file(tmp_path / "b" / "digits-eps-b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
