"""The trained digits testbeds: data split, shipped UNet/scheduler/classifier, and clear errors on bad files.

Offline only: everything is read from the local asset directories (``HF_HUB_OFFLINE=1``).
"""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from skipstep.lab.testbeds.digits import (
    DIGIT_CLASSIFIER_DIR,
    DIGITS_UNET_DIR,
    DigitClassifier,
    digits_split_indices,
    load_digit_classifier,
    load_digits_images,
    load_digits_labels,
    load_digits_scheduler,
    load_digits_scheduler_config,
    load_digits_unet,
)



# ----------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("split,n", [("train", 1497), ("heldout", 300), ("all", 1797)])
def test_images_shape_dtype_range(split, n):
    x = load_digits_images(split)
    y = load_digits_labels(split)
    assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    # values are k/16*2-1 for integer k in 0..16
    k = (x + 1) / 2 * 16
    assert torch.allclose(k, k.round(), atol=1e-5)


def test_split_is_fixed_disjoint_and_complete():
    tr, ho = digits_split_indices("train"), digits_split_indices("heldout")
    assert len(np.intersect1d(tr, ho)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, ho])), np.arange(1797))
    assert np.array_equal(tr, digits_split_indices("train"))  # deterministic
    # the images themselves line up with the indices
    assert torch.equal(load_digits_images("all")[torch.from_numpy(ho)], load_digits_images("heldout"))
    assert torch.equal(load_digits_labels("all")[torch.from_numpy(tr)], load_digits_labels("train"))


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        load_digits_images("test")


# ------------------------------------------------------------------------------------------------------ UNet
def test_shipped_unet_loads_and_predicts_noise_shape():
    unet = load_digits_unet()
    assert not unet.training
    assert unet.config.sample_size == 8 and unet.config.in_channels == 1 and unet.config.out_channels == 1
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unet(x, torch.tensor([0, 10, 250, 500, 999])).sample
        out_scalar_t = unet(x, 500).sample
    assert out.shape == (5, 1, 8, 8) and torch.isfinite(out).all()
    assert out_scalar_t.shape == (5, 1, 8, 8)
    # trained: at high noise the epsilon prediction is close to x_t itself
    with torch.no_grad():
        xt = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        err = (unet(xt, 999).sample - xt).pow(2).mean().item()
    assert err < 0.05


def test_shipped_scheduler_config():
    cfg = load_digits_scheduler_config()
    assert cfg["num_train_timesteps"] == 1000
    assert cfg["beta_schedule"] == "linear"
    assert cfg["beta_start"] == pytest.approx(1e-4) and cfg["beta_end"] == pytest.approx(0.02)
    assert cfg["prediction_type"] == "epsilon"
    sched = load_digits_scheduler()
    assert sched.betas.shape == (1000,) and sched.betas[0].item() == pytest.approx(1e-4)


def test_shipped_dir_is_a_ddpm_pipeline():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(str(DIGITS_UNET_DIR), local_files_only=True, use_safetensors=True)
    assert pipe.unet.config.sample_size == 8
    assert pipe.scheduler.config.num_train_timesteps == 1000


# ------------------------------------------------------------------------------------------------ classifier
def test_shipped_classifier_heldout_accuracy():
    clf = load_digit_classifier()
    assert isinstance(clf, DigitClassifier) and not clf.training
    x, y = load_digits_images("heldout"), load_digits_labels("heldout")
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
        feats = clf.features(x)
    assert acc >= 0.97
    assert feats.shape == (300, clf.feature_dim) and 64 <= clf.feature_dim <= 128
    assert torch.isfinite(feats).all() and (feats.std(0) > 0).all()


def test_classifier_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        load_digit_classifier().features(torch.zeros(2, 64))


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def unet_copy(tmp_path):
    dst = tmp_path / "digits-unet"
    shutil.copytree(DIGITS_UNET_DIR, dst)
    return dst


@pytest.fixture
def classifier_copy(tmp_path):
    dst = tmp_path / "digit-classifier"
    shutil.copytree(DIGIT_CLASSIFIER_DIR, dst)
    return dst


def test_missing_unet_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_digits_unet(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_digits_scheduler_config(missing)


def test_unet_copy_loads(unet_copy):
    assert load_digits_unet(unet_copy).config.sample_size == 8


def test_missing_unet_weights_names_the_file(unet_copy):
    (unet_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_digits_unet(unet_copy)


def test_corrupt_unet_weights_names_the_file(unet_copy):
    f = unet_copy / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_digits_unet(unet_copy)
    f.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_digits_unet(unet_copy)


def test_corrupt_or_missing_unet_config_names_the_file(unet_copy):
    cfg = unet_copy / "unet" / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_digits_unet(unet_copy)
    cfg.unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_digits_unet(unet_copy)


def test_mismatched_unet_config_names_the_file(unet_copy):
    cfg_file = unet_copy / "unet" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["block_out_channels"] = [c * 2 for c in cfg["block_out_channels"]]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_digits_unet(unet_copy)


def test_missing_or_corrupt_scheduler_config(unet_copy):
    f = unet_copy / "scheduler" / "scheduler_config.json"
    f.write_text("[1, 2")
    with pytest.raises(ValueError, match="scheduler_config.json"):
        load_digits_scheduler_config(unet_copy)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_digits_scheduler_config(unet_copy)


def test_classifier_errors_name_the_file(classifier_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_digit_classifier(tmp_path / "nope")
    assert load_digit_classifier(classifier_copy / "model.safetensors").feature_dim == 64
    w = classifier_copy / "model.safetensors"
    w.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_digit_classifier(classifier_copy)
    w.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_digit_classifier(classifier_copy)
    (classifier_copy / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json"):
        load_digit_classifier(classifier_copy)
