"""The benchmark engine, the model and sampler registries: schema, protocol, resumption, refusals, errors.

All runs are tiny: a 5-mode digits mixture (exact model) or a randomly initialised 8x8 UNet with T=20.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from skipstep import SkippedStepScheduler
from skipstep.lab import bench
from skipstep.lab.run_dirs import load_tensor
from skipstep.lab.sample_sets import initial_noise
from skipstep.lab.bench import BenchConfig, BenchConfigError, BenchInterrupted, run_bench
from skipstep.lab.models import ModelLoadError, load_gmm, load_model, register_model
from skipstep.lab.sampler_registry import (
    SamplerError,
    available_samplers,
    build_scheduler,
    get_sampler,
    register_sampler,
    sampler_refusal,
    steps_for_nfe,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

register_model("tiny-gmm", lambda device="cpu": _tiny_gmm(device), "5-mode digits mixture (tests)")
RECORD_KEYS = {"model", "sampler", "nfe", "seed", "num_samples", "metrics", "seconds", "actual_nfe"}


def _tiny_gmm(device="cpu"):
    spec = load_gmm(device=device, num_means=5)
    spec.name = "tiny-gmm"
    return spec


def cfg(tmp_path, **kw):
    base = dict(model="tiny-gmm", samplers=["skipstep", "ddim"], nfes=[2, 3], seeds=[0], num_samples=12,
                out=tmp_path / "run", batch_size=8, progress=False)
    base.update(kw)
    return BenchConfig(**base)


def quiet(msg):
    pass


# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------
def test_results_schema_and_files(tmp_path):
    c = cfg(tmp_path, samplers=["skipstep", "ddim", "heun"], nfes=[2, 4], seeds=[0, 1])
    result = run_bench(c, log=quiet)
    out = c.out
    records = json.loads((out / "results.json").read_text())
    assert isinstance(records, list) and len(records) == 3 * 2 * 2
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["model"] == "tiny-gmm" and r["num_samples"] == 12
        duration = r["seconds"]  # schema: the cell's sampling time is recorded (a value, not a threshold)
        assert isinstance(r["metrics"], dict) and isinstance(duration, float) and duration > 0.0
        for name in ("fd", "sw", "mode_tv", "spread_ratio") if r["metrics"].get("fd") is not None else ("sw",):
            assert isinstance(r["metrics"][name], float)
        # honest NFE: heun spends 2k-1 evaluations, the others one per step
        expected = {2: 1, 4: 3}[r["nfe"]] if r["sampler"] == "heun" else r["nfe"]
        assert r["actual_nfe"] == expected
    md = (out / "results.md").read_text()
    assert "| sampler | NFE 2 | NFE 4 | time vs DDIM |" in md
    assert "| ddim |" in md and "1.00x" in md and "trailing" in md
    assert (out / "quality_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("skipstep", "ddim", "heun"):
        assert (out / "grids" / f"{name}_nfe2.png").is_file()
    assert (out / "grids" / "reference.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["model_fingerprint"] == load_model("tiny-gmm").fingerprint
    assert config["seeds"] == [0, 1] and config["nfes"] == [2, 4]
    assert len(result.computed) == 12 and not result.reused


def test_same_noise_for_every_sampler_of_a_seed(tmp_path):
    """Same x_T and per-step noise seeding: our eta=1 equals diffusers' respaced DDPM and eta=0 equals DDIM.

    (4 steps divide T=1000: with trailing spacing and a step count that does not divide T, diffusers' DDIM steps to
    ``t - T // k`` while the next visited timestep is one lower, so the two differ slightly there.)"""
    c = cfg(tmp_path, samplers=["skipstep", "ddpm", "skipstep-ddim", "ddim"], nfes=[4], seeds=[5],
            peer_spacing="trailing")  # the peers on our grid (by default they take the model's own spacing)
    run_bench(c, log=quiet)
    load = lambda s: load_tensor(c.out / "cells" / s / "nfe4_seed5.safetensors")  # noqa: E731
    torch.testing.assert_close(load("skipstep"), load("ddpm"), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(load("skipstep-ddim"), load("ddim"), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(load("skipstep"), load("ddim"))
    # and the same initial noise regardless of batch size
    assert torch.equal(initial_noise(5, 12, (1, 8, 8))[:4], initial_noise(5, 4, (1, 8, 8)))


# --------------------------------------------------------------------------------------------------------------
# resumption and the configuration check
# --------------------------------------------------------------------------------------------------------------
def test_resume_after_interruption_reuses_finished_cells(tmp_path):
    c = cfg(tmp_path)

    def kill_after_first(record):
        raise BenchInterrupted("simulated kill")

    with pytest.raises(BenchInterrupted):
        run_bench(c, on_cell_done=kill_after_first, log=quiet)
    done = list((c.out / "cells").glob("*/*.json"))
    assert len(done) == 1
    first = done[0]
    mtime = first.stat().st_mtime_ns
    seen = []
    result = run_bench(cfg(tmp_path), on_cell_done=seen.append, log=quiet)
    assert len(seen) == 3 and len(result.computed) == 3
    assert result.reused == [f"{first.parent.name}/{first.stem}"]
    assert first.stat().st_mtime_ns == mtime  # not recomputed
    assert len(json.loads((c.out / "results.json").read_text())) == 4
    # a third run computes nothing
    again = run_bench(cfg(tmp_path), log=quiet)
    assert again.computed == [] and len(again.reused) == 4


def test_stop_after_env_hook(tmp_path, monkeypatch):
    monkeypatch.setenv(bench.STOP_AFTER_ENV, "2")
    with pytest.raises(BenchInterrupted, match="stopped after 2"):
        run_bench(cfg(tmp_path), log=quiet)
    monkeypatch.delenv(bench.STOP_AFTER_ENV)
    assert len(run_bench(cfg(tmp_path), log=quiet).reused) == 2


def test_refuses_a_different_configuration_unless_overwrite(tmp_path):
    run_bench(cfg(tmp_path, nfes=[2], samplers=["ddim"]), log=quiet)
    with pytest.raises(BenchConfigError, match=r"num_samples: 12 -> 10.*--overwrite"):
        run_bench(cfg(tmp_path, nfes=[2], samplers=["ddim"], num_samples=10), log=quiet)
    with pytest.raises(BenchConfigError, match="batch_size"):
        run_bench(cfg(tmp_path, nfes=[2], samplers=["ddim"], batch_size=4), log=quiet)
    # adding samplers, NFEs and seeds is allowed and reuses the finished cell
    grown = run_bench(cfg(tmp_path, nfes=[2, 3], samplers=["ddim", "skipstep"], seeds=[0, 1]), log=quiet)
    assert grown.reused == ["ddim/nfe2_seed0"] and len(grown.computed) == 7
    # --overwrite discards the old results
    fresh = run_bench(cfg(tmp_path, nfes=[2], samplers=["ddim"], num_samples=10, overwrite=True), log=quiet)
    assert len(fresh.computed) == 1 and not fresh.reused
    assert len(json.loads((tmp_path / "run" / "results.json").read_text())) == 1


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no skipstep-run.json marker.*it holds notes.txt"):
        run_bench(cfg(tmp_path), log=quiet)
    with pytest.raises(ValueError, match="it holds notes.txt"):  # --overwrite too: never a directory it did not make
        run_bench(cfg(tmp_path, nfes=[2], samplers=["ddim"], overwrite=True), log=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_reference_seed_must_differ_from_sampler_seeds(tmp_path):
    with pytest.raises(ValueError, match="reference"):
        cfg(tmp_path, seeds=[bench.REFERENCE_SEED])


# --------------------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------------------
def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ModelLoadError, match=r"unknown model 'nope'.*digits.*gmm"):
        load_model("nope")
    with pytest.raises(SamplerError, match=r"unknown sampler 'nope'") as err:
        get_sampler("nope")
    assert "skipstep" in str(err.value) and "dpmpp-2m" in str(err.value)  # in registration order, which may vary
    with pytest.raises(SamplerError, match="valid samplers"):
        cfg(tmp_path, samplers=["ddim", "nope"])


def test_nfe_rules():
    T = 1000
    assert steps_for_nfe(get_sampler("ddim"), 10, T) == (10, 10)
    assert steps_for_nfe(get_sampler("heun"), 10, T) == (5, 9)
    assert steps_for_nfe(get_sampler("heun"), 9, T) == (5, 9)
    assert steps_for_nfe(get_sampler("pndm"), 10, T) == (9, 10)
    assert steps_for_nfe(get_sampler("reference-1000"), 5, T) == (1000, 1000)
    with pytest.raises(SamplerError, match=r"'heun' needs NFE >= 2 \(it is a 2nd-order method"):
        steps_for_nfe(get_sampler("heun"), 1, T)
    with pytest.raises(SamplerError, match=r"'dpmpp-2m' needs NFE >= 2"):
        steps_for_nfe(get_sampler("dpmpp-2m"), 1, T)
    with pytest.raises(SamplerError, match=r"NFE=1001 exceeds the model's 1000 training timesteps"):
        steps_for_nfe(get_sampler("ddim"), 1001, T)


def test_bench_skips_cells_below_the_order_and_refuses_nfe_above_T(tmp_path):
    result = run_bench(cfg(tmp_path, samplers=["ddim", "unipc"], nfes=[2, 3]), log=quiet)
    assert "unipc @ NFE 2" in result.skipped and "3rd-order" in result.skipped["unipc @ NFE 2"]
    assert "## Skipped cells" in result.markdown
    with pytest.raises(SamplerError, match="exceed the model's 1000 training timesteps"):
        run_bench(cfg(tmp_path, nfes=[2, 2000]), log=quiet)


def test_every_registered_sampler_runs_in_the_standard_loop():
    spec = _tiny_gmm()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in available_samplers():
        s = get_sampler(name)
        if s.fixed_steps is not None or sampler_refusal(s, spec) is not None:  # e.g. fractional t on the exact mixture
            continue
        steps, expected = steps_for_nfe(s, max(4, s.min_nfe), spec.num_train_timesteps)
        cell = bench.sample_cell(spec, s, steps, 0, 3, 3, "cpu")
        assert cell.actual_nfe == expected, name
        assert torch.isfinite(cell.samples).all(), name
    del x


def test_register_sampler_hook(tmp_path):
    from diffusers import DDIMScheduler

    register_sampler("test-ddim-leading",
                     lambda config, steps: DDIMScheduler.from_config(config, timestep_spacing="leading"),
                     description="DDIM, leading spacing (test)", replace=True)
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("test-ddim-leading", lambda config, steps: None)
    sched = build_scheduler(get_sampler("test-ddim-leading"), _tiny_gmm().scheduler_config, 4)
    assert sched.config.timestep_spacing == "leading"
    result = run_bench(cfg(tmp_path, samplers=["test-ddim-leading"], nfes=[4]), log=quiet)
    assert result.records[0]["sampler"] == "test-ddim-leading"


# --------------------------------------------------------------------------------------------------------------
# local diffusers directories
# --------------------------------------------------------------------------------------------------------------
def save_tiny_unet(root, num_train_timesteps=20):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=num_train_timesteps).save_pretrained(root / "scheduler")
    return root


def test_local_diffusers_dir_loads_and_benches(tmp_path):
    root = save_tiny_unet(tmp_path / "tiny-unet")
    spec = load_model(str(root))
    assert spec.sample_shape == (1, 8, 8) and spec.num_train_timesteps == 20 and spec.reference is None
    assert len(spec.fingerprint) == 12
    out = spec.model(torch.zeros(2, 1, 8, 8), torch.tensor(3))
    assert out.shape == (2, 1, 8, 8)
    c = cfg(tmp_path, model=str(root), samplers=["ddim", "reference-1000"], nfes=[2], num_samples=8)
    result = run_bench(c, log=quiet)
    ref = json.loads((c.out / "reference" / "reference.json").read_text())
    assert ref["actual_nfe"] == 20  # the model's own T-step ancestral samples
    assert {r["sampler"]: r["actual_nfe"] for r in result.records} == {"ddim": 2, "reference-1000": 20}
    assert "sw" in result.records[0]["metrics"]
    with pytest.raises(SamplerError, match="exceed the model's 20 training timesteps"):
        run_bench(cfg(tmp_path, model=str(root), nfes=[30]), log=quiet)


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    root = save_tiny_unet(tmp_path / "m")
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"corrupt weights file .*unet/diffusion_pytorch_model\.safetensors"):
        load_model(str(root))
    weights.unlink()
    with pytest.raises(ModelLoadError, match=r"UNet weights \(safetensors\) missing: .*diffusion_pytorch_model"):
        load_model(str(root))
    (root / "scheduler" / "scheduler_config.json").write_text("{not json")
    save_tiny_unet(tmp_path / "m2")
    (tmp_path / "m2" / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"corrupt JSON file .*scheduler_config\.json"):
        load_model(str(tmp_path / "m2"))
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_model(str(tmp_path / "absent"))


def test_clip_mode_follows_the_model_config(tmp_path):
    from skipstep.lab.bench import apply_clip_mode

    spec = load_model(str(save_tiny_unet(tmp_path / "u")))  # DDPMScheduler's default: clip_sample=True
    assert "clipped to [-1, 1]" in apply_clip_mode(spec, "model")
    for name in ("skipstep", "ddim", "dpmpp-2m", "heun"):
        s = get_sampler(name)
        steps, _ = steps_for_nfe(s, 4, spec.num_train_timesteps)
        x = bench.sample_cell(spec, s, steps, 0, 4, 4, "cpu").samples
        assert x.abs().max() <= 1 + 1e-5, name  # an untrained UNet: unclipped x0_hat would be far outside
    dpm = build_scheduler(get_sampler("dpmpp-2m"), spec.scheduler_config, 4)
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0
    assert "no x0_hat clipping" in apply_clip_mode(spec, "off")
    assert not build_scheduler(get_sampler("ddim"), spec.scheduler_config, 4).config.clip_sample
    assert not build_scheduler(get_sampler("dpmpp-2m"), spec.scheduler_config, 4).config.thresholding


def test_a_lab_sampler_s_spacing_survives_a_config_with_its_own_grid():
    """The lab passes its settings as keyword overrides: a candidate's power spacing is not taken for the config's
    own (foreign) grid, which from_config does not carry."""
    from skipstep.lab.sampler_recipes import from_config_accepting

    leading = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
               "timestep_spacing": "leading", "steps_offset": 1}
    grids = {}
    for name in ("cand-p1-e0-o3", "cand-pn4-e0-o3", "skipstep"):
        sched = get_sampler(name).factory(leading, 5)
        sched.set_timesteps(5)
        grids[name] = sched.timesteps.tolist()
    assert grids["cand-p1-e0-o3"] == [833, 667, 500, 333, 167]
    assert grids["cand-pn4-e0-o3"] != grids["cand-p1-e0-o3"]
    assert grids["skipstep"] == [999, 799, 599, 399, 199]  # trailing, as the recipe says
    kept = from_config_accepting(SkippedStepScheduler, leading, timestep_spacing="leading")
    assert kept.config.steps_offset == 1  # an overridden spacing keeps the config's offset
