"""The regimes users run, through bench / generate / tune on tiny random-weight directories: class-conditional
models with classifier-free guidance, flow matching, learned variance, zero terminal SNR; the zoo's registration
table; the shared reference cache."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from skipstep.lab import cli
from skipstep.lab import models as models_module
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.conditioning import GuidedModel, balanced_subset
from skipstep.lab.models import ModelLoadError, heldout_for, load_model, load_zoo_model, register_zoo_models
from skipstep.lab.run_dirs import load_tensor
from skipstep.lab.sample_sets import reference_cache_dir, sample_cell
from skipstep.lab.sampler_registry import build_scheduler, get_sampler, scheduler_config_for, steps_for_nfe
from skipstep.lab.tune import tune_schedule

from tiny_dirs import T, conditional_dir, flow_dir, learned_variance_dir, vzsnr_dir


def quiet(msg):
    pass


def bench(tmp_path, model, name="run", **kw):
    base = dict(model=str(model), samplers=["skipstep", "ddim"], nfes=[3], seeds=[0], num_samples=20,
                out=tmp_path / name, batch_size=10, progress=False)
    base.update(kw)
    return run_bench(BenchConfig(**base), log=quiet)


# --------------------------------------------------------------------------------------------------------------
# class-conditional models
# --------------------------------------------------------------------------------------------------------------
def test_guided_model_is_one_batched_call_of_both_branches():
    calls = []

    def net(x, t, class_labels):
        calls.append((x.shape[0], class_labels.tolist()))
        return x * (class_labels.float() + 1).reshape(-1, 1, 1, 1)  # a different output per label

    x, t = torch.randn(3, 1, 2, 2), torch.full((3,), 5)
    labels = torch.tensor([0, 1, 2])
    guided = GuidedModel(net, labels, null_label=10, scale=4.0, channels=1)
    out = guided(x, t)
    eps_c, eps_u = x * (labels.float() + 1).reshape(-1, 1, 1, 1), x * 11.0
    torch.testing.assert_close(out, eps_u + 4.0 * (eps_c - eps_u))
    assert calls == [(6, [0, 1, 2, 10, 10, 10])] and guided.branches == 2
    calls.clear()
    assert torch.equal(GuidedModel(net, labels, 10, 1.0, 1)(x, t), eps_c) and calls == [(3, [0, 1, 2])]
    assert GuidedModel(net, labels, 10, 0.0, 1).branches == 1


def test_conditional_bench_balanced_labels_cfg_nfe_and_class_match(tmp_path):
    root = conditional_dir(tmp_path / "cond")
    loaded = load_model(str(root))
    assert loaded.conditioning.null_label == 10 and "training_info.json" in loaded.conditioning.null_label_source
    labels = loaded.labels_for(range(20))
    assert Counter(labels.tolist()) == {k: 2 for k in range(10)}  # balanced: sample i asks for i mod 10
    net_calls = []
    net = loaded.model.net
    original = net.forward
    net.forward = lambda x, t, class_labels=None, **kw: (net_calls.append(x.shape[0]), original(
        x, t, class_labels=class_labels, **kw))[1]
    view = loaded.at_guidance(2.0)
    cell = sample_cell(view, get_sampler("ddim"), 3, 0, 20, 10, "cpu")
    assert cell.actual_nfe == 3 and cell.network_calls_unbatched == 6
    assert net_calls == [20] * 6  # 2 batches x 3 steps, each ONE call of [x; x]
    assert torch.equal(cell.labels, labels)
    result = bench(tmp_path, root, guidance_scales=[1, 2])
    by_w = {}
    for r in result.records:
        by_w.setdefault(r["guidance_scale"], []).append(r)
    assert set(by_w) == {1.0, 2.0}
    for w, rs in by_w.items():
        for r in rs:
            assert r["actual_nfe"] == 3 and r["network_calls_unbatched"] == 3 * (2 if w == 2.0 else 1)
            assert 0.0 <= r["metrics"]["class_match"] <= 1.0 and "fd" in r["metrics"]
            assert "class-conditional" in r["regime"]
    out = result.out
    assert (out / "reference" / "w1" / "reference.json").is_file() and (out / "reference" / "w2").is_dir()
    assert json.loads((out / "reference" / "w2" / "reference.json").read_text())["guidance_scale"] == 2.0
    assert (out / "quality_vs_nfe_w1.png").is_file() and (out / "quality_vs_nfe_w2.png").is_file()
    assert (out / "cells" / "ddim" / "nfe3_seed0_w2.json").is_file()
    md = result.markdown
    assert "guidance scale 1: seed 0" in md and "guidance scale 2: seed 0" in md and "network calls" in md
    # a rerun adds a guidance scale and reuses the finished cells
    again = bench(tmp_path, root, guidance_scales=[1, 2, 4])
    assert len(again.reused) == 4 and len(again.computed) == 2
    # the reference at w=2 came from the cache the first run filled (the same bytes)
    cache = reference_cache_dir(loaded.at_guidance(2.0), 20, 1_000_003, 10) / "reference"
    assert load_tensor(cache / "reference.safetensors").equal(load_tensor(out / "reference" / "w2" /
                                                                          "reference.safetensors"))


def test_the_null_label_comes_from_the_directory_or_the_option_or_it_is_refused(tmp_path, capsys):
    root = conditional_dir(tmp_path / "c", null_label=None)
    with pytest.raises(ModelLoadError, match="null_class_label.*--null-label N"):
        load_model(str(root))
    assert load_model(str(root), null_label=10).conditioning.null_label_source == "--null-label"
    assert load_model(str(root), null_label=0).conditioning.real_labels == list(range(1, 11))
    with pytest.raises(ModelLoadError, match="must be an integer in \\[0, 11\\)"):
        load_model(str(root), null_label=11)
    given = conditional_dir(tmp_path / "g")
    with pytest.raises(ModelLoadError, match="--null-label 3 contradicts"):
        load_model(str(given), null_label=3)
    args = ["bench", "--model", str(root), "--samplers", "ddim", "--nfe", "2", "--num-samples", "10", "--batch-size",
            "10", "--no-progress", "--out", str(tmp_path / "b")]
    assert cli.main(args) == 2 and "--null-label" in capsys.readouterr().err
    assert cli.main(args + ["--null-label", "10", "--guidance-scale", "1,2"]) == 0
    records = json.loads((tmp_path / "b" / "results.json").read_text())
    assert sorted(r["guidance_scale"] for r in records) == [1.0, 2.0]


def test_generate_and_tune_take_a_guidance_scale(tmp_path):
    root = conditional_dir(tmp_path / "cond")
    out = tmp_path / "g"
    assert cli.main(["generate", "--model", str(root), "--sampler", "skipstep", "--nfe", "2", "--num-samples", "6",
                     "--guidance-scale", "3", "--out", str(out), "--no-progress"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["guidance_scale"] == 3.0 and "i mod 10" in index["class_labels"]
    schedule = tune_schedule(load_model(str(root)), 2, "skipstep-ddim", num_samples=8, batch_size=8,
                             budget_nfe=48, budget_minutes=5, objective="sw", guidance_scale=2.0,
                             cache_dir=tmp_path / "cache")
    assert schedule.provenance["guidance_scale"] == 2.0 and "_w2" in schedule.provenance["reference"]["cache"]
    assert schedule.guidance_scale == 2.0


# --------------------------------------------------------------------------------------------------------------
# flow matching
# --------------------------------------------------------------------------------------------------------------
def test_a_flow_directory_runs_with_our_flow_sampler_and_the_flow_peers(tmp_path):
    root = flow_dir(tmp_path / "flow")
    result = bench(tmp_path, root, samplers=["skipstep", "skipstep-ddim", "flow-euler", "flow-heun", "dpmpp-2m",
                                             "unipc", "ipndm"], nfes=[3])
    config = json.loads((result.out / "config.json").read_text())
    settings = config["sampler_settings"]
    assert settings["skipstep"]["class"] == "SkippedStepFlowScheduler"
    assert settings["flow-euler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    assert settings["dpmpp-2m"]["effective"]["use_flow_sigmas"] is True
    assert settings["dpmpp-2m"]["effective"]["prediction_type"] == "flow_prediction"
    assert config["time_baseline"] == "flow-euler" and "ddim" not in config["peer_enumeration"]["peers"]
    assert "DDIMScheduler" in config["peer_enumeration"]["refused"]
    ref = json.loads((result.out / "reference" / "reference.json").read_text())
    assert "FlowMatchEulerDiscreteScheduler" in ref["source"] and ref["actual_nfe"] == T
    records = {r["sampler"]: r for r in result.records}
    assert all(r["actual_nfe"] == 3 for n, r in records.items() if n != "flow-heun")
    assert records["flow-heun"]["actual_nfe"] == 3 and records["flow-heun"]["num_inference_steps"] == 2
    # eta = 0 on the flow path is the Euler step of the velocity ODE: FlowMatchEuler, sample for sample
    load = lambda s: load_tensor(result.out / "cells" / s / "nfe3_seed0.safetensors")  # noqa: E731
    torch.testing.assert_close(load("skipstep-ddim"), load("flow-euler"), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="--samplers ddim: it cannot sample"):
        bench(tmp_path, root, samplers=["ddim"], name="refused")


def test_the_default_records_the_flow_eta_rule_on_a_flow_model(tmp_path):
    from skipstep import DEFAULT_ETA, DEFAULT_FLOW_ETA
    from skipstep.lab.sampler_recipes import sampler_settings

    default, loaded = get_sampler("default"), load_model(str(flow_dir(tmp_path / "flow")))
    flow = sampler_settings(default, loaded)
    assert flow["eta"] == flow["effective"]["eta"] == DEFAULT_FLOW_ETA
    assert sampler_settings(default)["eta"] == DEFAULT_ETA  # without a model: the VP rule
    assert build_scheduler(default, scheduler_config_for(default, loaded), 12).config.eta == DEFAULT_FLOW_ETA


# --------------------------------------------------------------------------------------------------------------
# learned variance, zero terminal SNR
# --------------------------------------------------------------------------------------------------------------
def test_a_learned_variance_directory_uses_the_learned_variance_for_ours(tmp_path):
    loaded = load_model(str(learned_variance_dir(tmp_path / "lv")))
    ours, ddpm, ddim = get_sampler("skipstep"), get_sampler("ddpm"), get_sampler("ddim")
    assert build_scheduler(ours, scheduler_config_for(ours, loaded), 4).step_config.variance_type == "learned"
    assert build_scheduler(ddpm, scheduler_config_for(ddpm, loaded), 4).config.variance_type == "learned_range"
    assert build_scheduler(ddim, scheduler_config_for(ddim, loaded), 4) is not None
    loaded.peer_spacing = "trailing"
    a = sample_cell(loaded, ours, 4, 0, 6, 6, "cpu").samples
    b = sample_cell(loaded, ddpm, 4, 0, 6, 6, "cpu").samples
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)  # our eta=1 with learned_range = respaced DDPM's
    default = get_sampler("default")  # reads the 2C output, injects the posterior's variance (the library default)
    step_config = build_scheduler(default, scheduler_config_for(default, loaded), 10).step_config
    assert (step_config.variance_type, step_config.variance_channels) == ("small", True)
    result = bench(tmp_path, tmp_path / "lv", samplers=["skipstep", "default", "ddpm", "ddim", "dpmpp-2m"])
    settings = json.loads((result.out / "config.json").read_text())["sampler_settings"]
    assert settings["skipstep"]["learned_variance"].startswith("used")
    assert settings["default"]["learned_variance"].startswith("read and set aside: the noise is the 'small'")
    assert settings["ddim"]["learned_variance"].startswith("not used")
    assert all(torch.isfinite(torch.tensor(r["metrics"]["sw"])) for r in result.records)


def test_a_zero_terminal_snr_directory_gets_the_peers_that_know_the_rescaling(tmp_path):
    result = bench(tmp_path, vzsnr_dir(tmp_path / "vz"), samplers=["skipstep", "ddim", "euler", "unipc"], nfes=[3])
    peers = json.loads((result.out / "config.json").read_text())["peer_enumeration"]
    assert "PNDMScheduler" in peers["refused"] and "rescale_betas_zero_snr" in peers["refused"]["PNDMScheduler"]
    assert {"ddim", "dpmpp-2m", "unipc", "euler", "ipndm"} <= set(peers["peers"])
    assert all(torch.isfinite(torch.tensor(r["metrics"]["sw"])) for r in result.records)


# --------------------------------------------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------------------------------------------
def test_zoo_registration_registers_the_directories_that_exist(tmp_path, monkeypatch):
    conditional_dir(tmp_path / "zoo" / "digits-cfg", null_label=None)  # as the zoo ships it: no null_class_label
    flow_dir(tmp_path / "zoo" / "digits-flow")
    monkeypatch.setattr(models_module, "_MODELS", dict(models_module._MODELS))
    names = register_zoo_models(tmp_path / "zoo")
    assert names == ["digits-cfg", "digits-flow"]
    cfg = load_model("digits-cfg")
    assert cfg.conditioning.null_label == 10 and "zoo table" in cfg.conditioning.null_label_source
    assert cfg.real_data is not None and "tiny conditional stand-in" in cfg.description
    heldout = heldout_for(cfg)
    counts = Counter(cfg.real_data["heldout_labels"][balanced_subset(cfg.real_data["heldout_labels"],
                                                                      range(10))].tolist())
    assert len(set(counts.values())) == 1 and heldout.shape[0] == sum(counts.values()) < 300
    assert load_model("digits-flow").regime == "flow"
    with pytest.raises(ModelLoadError, match="--null-label"):
        load_model("digits-flow", null_label=3)
    loaded = load_zoo_model(tmp_path / "zoo" / "digits-cfg", default_null_label=10)
    view = loaded.at_guidance(2)
    steps, _ = steps_for_nfe(get_sampler("skipstep"), 2, T)
    assert sample_cell(view, get_sampler("skipstep"), steps, 0, 10, 10, "cpu").network_calls_unbatched == 4


def test_the_reference_floor_cell_comes_through_the_shared_cache(tmp_path):
    root = conditional_dir(tmp_path / "cond")
    result = bench(tmp_path, root, samplers=["ddim", "reference-1000"], guidance_scales=[2])
    ref_cell = next(r for r in result.records if r["sampler"] == "reference-1000")
    assert ref_cell["actual_nfe"] == T and ref_cell["network_calls_unbatched"] == 2 * T
    cached = reference_cache_dir(load_model(str(root)).at_guidance(2.0), 20, 0, 10) / "reference"
    saved = load_tensor(result.out / "cells" / "reference-1000" / f"nfe{T}_seed0_w2.safetensors")
    assert torch.equal(load_tensor(cached / "reference.safetensors")[:saved.shape[0]], saved)
    # it is the set the sampler would draw itself
    view = load_model(str(root)).at_guidance(2.0)
    drawn = sample_cell(view, get_sampler("reference-1000"), T, 0, 20, 10, "cpu").samples
    torch.testing.assert_close(drawn[:saved.shape[0]], saved)
