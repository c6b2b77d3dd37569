"""Local model directories are recognised by their scheduler config: variance-preserving chains are sampled (with
the scheduler class's own defaults), FlowMatch configs as flows (dynamic shifting only with a fixed mu), flow keys
in a VP scheduler's config and anything the lab cannot sample correctly are refused with the reason, learned-variance
models keep their variance for the samplers that can use it. Never a silent reinterpretation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from skipstep.lab import cli
from skipstep.lab.models import ModelLoadError, load_model
from skipstep.lab.testbeds.digits import DIGITS_UNET_DIR


def model_with_scheduler(tmp_path: Path, config: dict, name: str = "m") -> Path:
    root = tmp_path / name
    shutil.copytree(DIGITS_UNET_DIR, root)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("config, shift", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, 3.0),
    ({"_class_name": "SkippedStepFlowScheduler", "shift": 2.0, "eta": 0.5}, 2.0),
])
def test_flow_matching_scheduler_configs_are_sampled_as_flows(tmp_path, config, shift):
    loaded = load_model(str(model_with_scheduler(tmp_path, config)))
    assert loaded.regime == "flow" and loaded.prediction_type == "flow"
    assert loaded.scheduler_config["shift"] == shift and "eta" not in loaded.scheduler_config
    assert "beta_schedule" not in loaded.scheduler_config  # no VP keys smuggled into a flow config


def test_dynamic_shifting_needs_a_fixed_mu(tmp_path, capsys):
    root = model_with_scheduler(tmp_path, {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                           "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15})
    with pytest.raises(ModelLoadError, match="use_dynamic_shifting=True.*--flow-mu"):
        load_model(str(root))
    loaded = load_model(str(root), flow_mu=0.5)
    assert loaded.scheduler_config["use_dynamic_shifting"] is False
    assert abs(loaded.scheduler_config["shift"] - 1.6487212707) < 1e-9 and "exp(mu)" in loaded.notes[0]
    with pytest.raises(ModelLoadError, match="--flow-mu: .* does not use dynamic shifting"):
        load_model(str(model_with_scheduler(tmp_path, {"_class_name": "FlowMatchEulerDiscreteScheduler"}, "s")),
                   flow_mu=0.5)
    assert cli.main(["generate", "--model", str(root), "--num-samples", "4", "--out", str(tmp_path / "g"),
                     "--no-progress"]) == 2
    assert "--flow-mu" in capsys.readouterr().err and not (tmp_path / "g").exists()


@pytest.mark.parametrize("config, reason", [
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
     "use_flow_sigmas=True"),
    ({"_class_name": "DDPMScheduler", "shift": 3.0}, "'shift' (=3.0)"),
])
def test_flow_keys_in_a_vp_scheduler_config_are_refused_not_sampled_as_ddpm(tmp_path, config, reason, capsys):
    root = model_with_scheduler(tmp_path, config)
    with pytest.raises(ModelLoadError, match="flow-matching model") as exc:
        load_model(str(root))
    assert reason in str(exc.value) and "FlowMatchEulerDiscreteScheduler" in str(exc.value)
    assert cli.main(["generate", "--model", str(root), "--num-samples", "4", "--out", str(tmp_path / "g"),
                     "--no-progress"]) == 2
    assert "flow-matching" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # refused before anything was written


@pytest.mark.parametrize("config, reason", [
    ({"num_train_timesteps": 1000}, "has no _class_name"),
    ({"_class_name": "EDMEulerScheduler"}, "unknown scheduler class 'EDMEulerScheduler'"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "continuous noise levels"),
    ({"_class_name": "DDPMScheduler", "prediction_type": "flow"}, "flow-matching"),
    ({"_class_name": "DDPMScheduler", "prediction_type": "noise"}, "prediction_type='noise'"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "unheard-of"}, "training chain cannot be built"),
])
def test_what_the_lab_cannot_sample_correctly_is_refused_with_the_reason(tmp_path, config, reason):
    with pytest.raises(ModelLoadError, match="--model") as exc:
        load_model(str(model_with_scheduler(tmp_path, config)))
    assert reason in str(exc.value)


def test_missing_keys_take_the_scheduler_classs_own_defaults(tmp_path):
    # DDPMScheduler clips by default (diffusers fills clip_sample=True); the loader used to fill False
    loaded = load_model(str(model_with_scheduler(tmp_path, {"_class_name": "DDPMScheduler"})))
    assert loaded.scheduler_config["clip_sample"] is True
    euler = load_model(str(model_with_scheduler(tmp_path, {"_class_name": "EulerDiscreteScheduler",
                                                           "prediction_type": "v_prediction"}, "euler")))
    assert euler.scheduler_config["clip_sample"] is False and euler.prediction_type == "v_prediction"
    # the shipped digits model (a complete config) keeps its fingerprint: the shipped schedules stay valid
    assert load_model("digits").fingerprint == "7304ef6e4245"


def _learned_variance_unet(tmp_path: Path, variance_type: str | None, out_channels: int) -> Path:
    root = tmp_path / f"lv-{out_channels}"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
                block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).save_pretrained(root / "unet")
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 20}
    if variance_type:
        config["variance_type"] = variance_type
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return root


def test_learned_variance_models_keep_their_variance_for_the_samplers_that_use_it(tmp_path, capsys):
    root = _learned_variance_unet(tmp_path, "learned_range", 2)
    loaded = load_model(str(root))
    assert loaded.learned_variance and loaded.scheduler_config["variance_type"] == "learned_range"
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor(3)
    assert loaded.model_for_batch()(x, t).shape == (2, 2, 8, 8)  # [eps, v] for ours and DDPM
    assert loaded.model_for_batch(with_variance=False)(x, t).shape == (2, 1, 8, 8)  # eps only for the rest
    assert "learned-variance model" in loaded.notes[0]
    assert cli.main(["sample", "--model", str(root), "--nfe", "2", "--num-samples", "2", "--out",
                     str(tmp_path / "x.png"), "--no-progress"]) == 0
    assert "learned-variance model" in capsys.readouterr().out
    # a 2C output whose config does not say learned_range: the C prediction channels only, said so
    other = _learned_variance_unet(tmp_path / "other", None, 2)
    plain = load_model(str(other))
    assert not plain.learned_variance and plain.model(x, t).shape == (2, 1, 8, 8)
    assert "extra channels are NOT used" in plain.notes[0]
    # a config that says "learned" for a network without the variance channels is a contradiction
    with pytest.raises(ModelLoadError, match="says variance_type='learned_range'.*out_channels=1"):
        load_model(str(_learned_variance_unet(tmp_path, "learned_range", 1)))
