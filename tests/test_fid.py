"""Standard-FID plumbing (``skipstep.lab.fid``) with stand-in feature networks: nothing here has real Inception
weights, and nothing may try to download them (sockets are blocked and watched)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket

import numpy as np
import pytest
import torch

import skipstep.lab.fid as F
import skipstep.lab.generate as G
from skipstep.lab import cli
from skipstep.lab.metrics import gaussian_stats
from skipstep.lab.models import load_gmm, register_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TinyConvFeatures(torch.nn.Module):
    """The stand-in feature network: a fixed random conv net, ``[-1, 1]`` images -> 8 features."""

    name = "tiny-conv"
    fingerprint = "tiny-conv:seed0:v1"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x[:, :1])).mean((2, 3))


tiny_features = TinyConvFeatures()


class FakeInception(torch.nn.Module):
    """Stands in for a StyleGAN/clean-fid TorchScript Inception: uint8 RGB in, 2048 features out."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return self.proj(x.float().mean((2, 3)) / 255.0)


def _tiny_gmm(device="cpu"):
    spec = load_gmm(device=device, num_means=5)
    spec.name = "tiny-gmm-fid"
    return spec


register_model("tiny-gmm-fid", _tiny_gmm, "5-mode digits mixture (fid tests)")


@pytest.fixture
def network_blocked(monkeypatch):
    """Any connection attempt is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv(F.INCEPTION_WEIGHTS_ENV, raising=False)
    return tmp_path / "torch-home"


def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 1, 8, 8), generator=g) * 2 - 1 + shift).clamp(-1, 1)


# ------------------------------------------------------------------------------------------------------------
def test_running_stats_match_the_batch_statistics():
    feats = torch.randn(37, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    acc = F.RunningStats()
    for chunk in (feats[:1], feats[1:10], feats[10:11], feats[11:]):
        acc.update(chunk)
    ref = gaussian_stats(feats)
    got = acc.stats()
    assert acc.n == 37
    np.testing.assert_allclose(got.mean, ref.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.cov, ref.cov, rtol=0, atol=1e-11)


def test_user_callable_and_module_spec():
    ext = F.resolve_feature_extractor("test_fid:tiny_features")
    assert isinstance(ext, F.FeatureExtractor)
    assert (ext.name, ext.fingerprint) == ("tiny-conv", "tiny-conv:seed0:v1")
    x = _images(20, 0)
    assert ext(x).shape == (20, 8)
    lam = F.as_feature_extractor(lambda im: im.flatten(1)[:, :4], name="first4")
    assert lam(x).shape == (20, 4) and lam.fingerprint == "callable:first4"
    assert F.compute_fid(x, x, features=tiny_features) == pytest.approx(0.0, abs=1e-9)
    assert F.compute_fid(x, _images(20, 1, shift=0.5), features=tiny_features) > 1e-3
    with pytest.raises(F.FeatureNetworkError, match="cannot import module"):
        F.resolve_feature_extractor("no_such_module_xyz:f")
    with pytest.raises(F.FeatureNetworkError, match="unknown feature network"):
        F.resolve_feature_extractor("nonsense")


def test_digit_classifier_features():
    ext = F.resolve_feature_extractor("digits")
    assert ext.name == "digit-classifier" and ext.fingerprint.startswith("digit-classifier:")
    assert ext(_images(6, 0)).shape[0] == 6


def test_stats_files_round_trip_and_refuse_another_network(tmp_path):
    ext = F.as_feature_extractor(tiny_features)
    stats = F.stats_of_samples(_images(30, 0), ext, batch_size=7)
    path = F.save_stats(tmp_path / "ref.npz", stats, ext, source="test", num_samples=30)
    loaded, info = F.load_reference_stats(path, ext)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    assert info["num_samples"] == 30 and "warning" not in info
    other = F.as_feature_extractor(lambda im: im.flatten(1)[:, :8], name="other")
    with pytest.raises(F.FeatureNetworkError, match="meaningless"):
        F.load_reference_stats(path, other)
    # pytorch-fid / clean-fid style files (mu, sigma, no fingerprint) are accepted with a warning
    np.savez(tmp_path / "plain.npz", mu=stats.mean, sigma=stats.cov)
    _, info = F.load_reference_stats(tmp_path / "plain.npz", ext)
    assert "no feature fingerprint" in info["warning"]


def test_missing_inception_weights_give_a_clear_message_and_no_download(network_blocked, empty_torch_home,
                                                                        tmp_path, capsys):
    with pytest.raises(F.FeatureNetworkError) as err:
        F.resolve_feature_extractor("inception")
    msg = str(err.value)
    assert "standard FID needs Inception weights" in msg and "--inception-weights" in msg
    assert "torchmetrics[image]" in msg and "pt_inception-2015-12-05" in msg
    with pytest.raises(F.FeatureNetworkError, match="file not found"):
        F.InceptionFeatures(tmp_path / "nope.pth")
    # the CLI refuses before sampling anything
    out = tmp_path / "gen"
    rc = cli.main(["generate", "--model", "tiny-gmm-fid", "--num-samples", "4", "--nfe", "2", "--out", str(out),
                   "--no-progress", "--fid-features", "inception"])
    assert rc == 2
    assert "standard FID needs Inception weights" in capsys.readouterr().err
    assert not (out / "shards").exists() or not list((out / "shards").iterdir())
    assert network_blocked == []


def test_torchscript_inception_from_a_local_file_and_from_the_hub_cache(network_blocked, empty_torch_home, tmp_path):
    scripted = torch.jit.script(FakeInception())
    path = tmp_path / "inception-2015-12-05.pt"
    scripted.save(str(path))
    ext = F.resolve_feature_extractor("inception", inception_weights=path)
    assert ext.kind == "torchscript" and ext.fingerprint.startswith("inception-v3-2048:torchscript:")
    feats = ext(_images(5, 0))
    assert feats.shape == (5, 2048) and torch.isfinite(feats).all()
    # found in torch's hub cache without any path
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    scripted.save(str(cache / "inception-2015-12-05.pt"))
    assert F.InceptionFeatures().fingerprint == ext.fingerprint
    # a user TorchScript feature network given as a path is called with [-1, 1] images
    user = tmp_path / "user_net.pt"
    torch.jit.script(TinyConvFeatures()).save(str(user))
    assert F.resolve_feature_extractor(str(user))(_images(3, 0)).shape == (3, 8)
    assert network_blocked == []


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_a_state_dict_without_torch_fidelity_names_the_package(network_blocked, tmp_path):
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(F.FeatureNetworkError, match=r"torchmetrics\[image\]"):
        F.InceptionFeatures(path)
    assert network_blocked == []


# ------------------------------------------------------------------------------------------------------------
def _gen(out, seed, **kw):
    cfg = G.GenerateConfig(model="tiny-gmm-fid", sampler="skipstep-ddim", nfe=3, num_samples=12, seed=seed, out=out,
                           shard_size=5, batch_size=4, progress=False, **kw)
    return G.generate(cfg, log=None)


def test_generate_writes_feature_stats_and_an_fid(tmp_path):
    a = tmp_path / "a"
    ra = _gen(a, 0, fid_features="test_fid:tiny_features")
    stats_file = a / "fid" / "tiny-conv.npz"
    assert stats_file.is_file() and ra.fid["stats"] == "fid/tiny-conv.npz" and "fid" not in ra.fid
    # the streamed statistics equal those of all samples at once
    samples, _ = G.load_samples(a)
    direct = gaussian_stats(tiny_features(samples).detach().numpy())
    saved, _ = F.load_reference_stats(stats_file, F.as_feature_extractor(tiny_features))
    # float32 features of batches of 4 vs one batch of 12 differ in the last bits (~2 ulp): rtol at float32's scale
    np.testing.assert_allclose(saved.cov, direct.cov, rtol=1e-6, atol=1e-12)
    b = tmp_path / "b"
    rb = _gen(b, 1, fid_features="test_fid:tiny_features", fid_reference=str(stats_file))
    record = json.loads((b / "fid.json").read_text())
    assert record["fid"] == rb.fid["fid"] > 0 and record["feature_fingerprint"] == "tiny-conv:seed0:v1"
    # a generate directory works as a reference too, and gives the same number
    c = tmp_path / "c"
    rc = _gen(c, 1, fid_features="test_fid:tiny_features", fid_reference=str(a))
    assert rc.fid["fid"] == pytest.approx(rb.fid["fid"], rel=1e-9)
    with pytest.raises(G.GenerateConfigError, match="needs --fid-features"):
        _gen(tmp_path / "d", 0, fid_reference=str(stats_file))


def test_bench_reports_fd_in_the_chosen_feature_space(tmp_path):
    from skipstep.lab.bench import BenchConfig, run_bench

    ref = tmp_path / "ref.npz"
    ext = F.as_feature_extractor(tiny_features)
    F.save_stats(ref, F.stats_of_samples(_images(40, 3), ext), ext)
    cfg = BenchConfig(model="tiny-gmm-fid", samplers=["skipstep-ddim"], nfes=[2], seeds=[0], num_samples=8,
                      out=tmp_path / "bench", batch_size=8, progress=False, fid_features="test_fid:tiny_features",
                      fid_reference=str(ref))
    result = run_bench(cfg, log=None)
    metrics = result.records[0]["metrics"]
    assert metrics["fid_ref"] > 0 and "fd" in metrics
    config = json.loads((tmp_path / "bench" / "config.json").read_text())
    assert config["identity"]["fid_features"] == "tiny-conv:seed0:v1"
    assert config["model"]["features"] == "tiny-conv"
    assert "fid_ref" in (tmp_path / "bench" / "results.md").read_text()
