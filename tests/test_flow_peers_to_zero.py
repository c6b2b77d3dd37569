"""diffusers 0.42's SA-Solver and DEIS on flow sigmas end with a zero-length step (the last sigma repeats), so
their sample keeps that sigma's noise; the ``-zero`` peers take the last step to sigma 0 instead. Checked on a
point mass ``x_0 = c``, whose exact velocity is ``v(x, sigma) = (x - c) / sigma``: the repaired peers land on
``c`` exactly, the originals at ``(1 - sigma_last) c + sigma_last eps``."""

from __future__ import annotations

import pytest
import torch

from skipstep.lab.models import load_model
from skipstep.lab.peer_samplers import enumerate_peers
from skipstep.lab.sampler_registry import build_scheduler, get_sampler, scheduler_config_for

from tiny_dirs import flow_dir, tiny_unet

C = 0.3


def _run(name: str, loaded, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    recipe = get_sampler(name)
    sched = build_scheduler(recipe, scheduler_config_for(recipe, loaded), steps)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, 1, 1, 1, generator=g, dtype=torch.float64)
    trajectory = []
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i].double()
        kwargs = {"generator": g} if recipe.stochastic else {}
        trajectory.append(x)
        x = sched.step((x - C) / sigma, t, x, **kwargs).prev_sample
    return x, sched.sigmas, trajectory


@pytest.mark.parametrize("base", ["sa-solver", "sa-solver-3", "deis"])
@pytest.mark.parametrize("steps", [3, 5])
def test_the_repaired_flow_peers_end_on_clean_data_and_only_their_last_step_changes(tmp_path, base, steps):
    loaded = load_model(str(flow_dir(tmp_path / "f")))
    repaired, sigmas, path_r = _run(f"{base}-zero", loaded, steps)
    original, _, path_o = _run(base, loaded, steps)
    assert sigmas[-1] == sigmas[-2] > 0.1  # diffusers' zero-length final step
    torch.testing.assert_close(repaired, torch.full_like(repaired, C), rtol=0, atol=1e-6)
    for a, b in zip(path_r, path_o):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert abs(original.std().item() - float(sigmas[-1])) < 0.05  # the original keeps the last sigma's noise


def test_the_repaired_peers_are_enumerated_for_flow_models_only(tmp_path):
    flow = enumerate_peers(load_model(str(flow_dir(tmp_path / "f"))))
    assert {"sa-solver-zero", "sa-solver-3-zero", "deis-zero"} <= set(flow.peers)
    root = tmp_path / "vp"
    tiny_unet(root)
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=20).save_pretrained(root / "scheduler")
    vp = enumerate_peers(load_model(str(root)))
    assert not {"sa-solver-zero", "sa-solver-3-zero", "deis-zero"} & set(vp.peers)
    assert "flow models only" in vp.refused["SASolverScheduler: sa-solver-zero"]
