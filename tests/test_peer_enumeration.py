"""The peer set the bench enumerates for a model: every diffusers scheduler class listed with its peers or the
reason it is not run, the recommended variants present, the peers' timesteps from the model's own spacing (or
trailing), and ``--samplers peers`` running what was enumerated."""

from __future__ import annotations

import json

import pytest
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from skipstep.lab import cli
from skipstep.lab import peer_samplers
from skipstep.lab.bench import BenchConfig, run_bench
from skipstep.lab.models import load_model
from skipstep.lab.peer_samplers import enumerate_peers, scheduler_classes
from skipstep.lab.sampler_registry import build_scheduler, get_sampler, scheduler_config_for

from tiny_dirs import flow_dir, tiny_unet, vzsnr_dir

NEW_PEERS = {"sa-solver", "sa-solver-3", "unipc", "unipc-2", "deis", "deis-2", "dpmpp-3m", "dpmpp-3m-sde", "ipndm",
             "dpmpp-3m-sde-k"}


def vp_dir(root, **config):
    tiny_unet(root)
    DDPMScheduler(num_train_timesteps=20, **config).save_pretrained(root / "scheduler")
    return root


def test_vp_epsilon_enumeration_lists_every_class_and_the_new_peers(tmp_path):
    loaded = load_model(str(vp_dir(tmp_path / "m")))
    found = enumerate_peers(loaded)
    assert set(scheduler_classes()) <= set(found.classes)
    assert NEW_PEERS <= set(found.peers) and {"ddim", "ddpm", "pndm", "euler", "heun", "lms", "kdpm2"} <= set(found.peers)
    assert "ignores the betas" in found.refused["IPNDMScheduler"]
    assert "distilled" in found.refused["LCMScheduler"] and "distilled" in found.refused["TCDScheduler"]
    assert "flow-matching scheduler" in found.refused["FlowMatchEulerDiscreteScheduler"]
    assert "EDM" in found.refused["EDMEulerScheduler"]
    assert found.classes["SASolverScheduler"] == "peers: sa-solver, sa-solver-3"


def test_sa_solver_runs_from_a_dpm_solver_config(tmp_path):
    # a DPM-Solver config carries algorithm_type="dpmsolver++", which SASolverScheduler refuses; the peer states
    # SA-Solver's own default (data prediction) instead, so it stays in the peer set of such a model
    root = tmp_path / "m"
    tiny_unet(root)
    DPMSolverMultistepScheduler(num_train_timesteps=20, prediction_type="v_prediction").save_pretrained(
        root / "scheduler")
    found = enumerate_peers(load_model(str(root)))
    assert {"sa-solver", "sa-solver-3"} <= set(found.peers)
    sched = build_scheduler(get_sampler("sa-solver"), scheduler_config_for(get_sampler("sa-solver"), load_model(
        str(root))), 4)
    assert sched.config.algorithm_type == "data_prediction" and sched.config.prediction_type == "v_prediction"


def test_every_peer_runs_whichever_vp_scheduler_the_model_was_saved_with(tmp_path):
    # from_config carries a foreign class's solver keys (algorithm_type, solver_type, ...) by name; every peer must
    # still build and step, whichever scheduler class the model's directory names
    import diffusers

    import skipstep
    from skipstep.lab.model_dirs import VP_SCHEDULER_CLASSES

    expected = set(enumerate_peers(load_model(str(vp_dir(tmp_path / "ddpm")))).peers)
    for name in VP_SCHEDULER_CLASSES:
        root = tmp_path / name
        tiny_unet(root)
        cls = getattr(skipstep, name, None) or getattr(diffusers, name)
        cls(num_train_timesteps=20).save_pretrained(root / "scheduler")
        found = enumerate_peers(load_model(str(root)))
        assert set(found.peers) == expected, (name, sorted(expected - set(found.peers)), found.refused)
    # saved by skipstep's own scheduler, the config's grid and solver settings are skipstep's, not the model's: a
    # peer takes its class defaults there (DPM-Solver++(2M) stays in its midpoint form, on its linspace grid)
    saved = load_model(str(tmp_path / "SkippedStepScheduler"))
    dpm = build_scheduler(get_sampler("dpmpp-2m"), scheduler_config_for(get_sampler("dpmpp-2m"), saved), 4)
    assert dpm.config.solver_type == "midpoint" and dpm.config.timestep_spacing == "linspace"


def test_every_flow_peer_runs_whichever_flow_scheduler_the_model_was_saved_with(tmp_path):
    import diffusers

    import skipstep
    from skipstep.lab.model_dirs import FLOW_SCHEDULER_CLASSES

    found = {}
    for name in FLOW_SCHEDULER_CLASSES:
        root = tmp_path / name
        tiny_unet(root)
        (getattr(skipstep, name, None) or getattr(diffusers, name))(num_train_timesteps=20, shift=3.0).save_pretrained(
            root / "scheduler")
        found[name] = set(enumerate_peers(load_model(str(root))).peers)
    assert {"sa-solver", "dpmpp-2m", "unipc", "flow-euler"} <= found["FlowMatchEulerDiscreteScheduler"]
    assert all(peers == found["FlowMatchEulerDiscreteScheduler"] for peers in found.values()), found


def test_flow_and_zero_snr_enumerations(tmp_path):
    flow = enumerate_peers(load_model(str(flow_dir(tmp_path / "f"))))
    assert {"flow-euler", "flow-heun", "dpmpp-2m", "unipc", "sa-solver", "ipndm", "ipndm-simple",
            "dpmpp-3m-sde-simple"} <= set(flow.peers)
    assert "ddim" not in flow.peers and "without flow sigmas" in flow.refused["DDIMScheduler"]
    assert "zero-length" in flow.refused["UniPCMultistepScheduler: unipc-bh1"]
    vz = enumerate_peers(load_model(str(vzsnr_dir(tmp_path / "v"))))
    assert "rescale_betas_zero_snr" in vz.refused["DEISMultistepScheduler"]
    assert {"ddim", "dpmpp-3m", "unipc", "euler-a"} <= set(vz.peers) and "pndm" not in vz.peers
    assert "ipndm-simple" not in vz.peers and "flow" in vz.refused["k-diffusion: ipndm-simple"]


def test_unknown_classes_and_missing_modules_are_refused_with_the_reason(tmp_path, monkeypatch):
    loaded = load_model(str(vp_dir(tmp_path / "m")))
    monkeypatch.setattr(peer_samplers, "scheduler_classes", lambda: ["DDIMScheduler", "BrandNewScheduler"])
    monkeypatch.setattr(peer_samplers, "_params", lambda name: set())
    found = enumerate_peers(loaded)
    assert "not in skipstep's peer table" in found.refused["BrandNewScheduler"]
    real_find_spec = peer_samplers.importlib.util.find_spec
    monkeypatch.setattr(peer_samplers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchsde" else real_find_spec(name, *a))
    assert "needs torchsde" in enumerate_peers(loaded).refused["DPMSolverSDEScheduler: dpmpp-sde"]


def test_peer_timesteps_follow_the_models_spacing_or_trailing(tmp_path):
    loaded = load_model(str(vp_dir(tmp_path / "m", timestep_spacing="leading")))
    ddim, dpm, ours = get_sampler("ddim"), get_sampler("dpmpp-2m"), get_sampler("skipstep")

    def timesteps(recipe):
        sched = build_scheduler(recipe, scheduler_config_for(recipe, loaded), 4)
        sched.set_timesteps(4)
        return sched.timesteps.tolist()

    assert timesteps(ddim) == [15, 10, 5, 0] and timesteps(ours) == [19, 14, 9, 4]
    loaded.peer_spacing = "trailing"
    assert timesteps(ddim) == [19, 14, 9, 4] and timesteps(dpm) == [19, 14, 9, 4]
    # a key the model's file left out takes the peer's own class default, as X.from_config does
    bare = tmp_path / "bare"
    tiny_unet(bare)
    (bare / "scheduler").mkdir()
    (bare / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler",
                                                                          "num_train_timesteps": 20}))
    plain = load_model(str(bare))
    config = scheduler_config_for(dpm, plain)
    assert "timestep_spacing" not in config
    assert build_scheduler(dpm, config, 4).config.timestep_spacing == "linspace"  # DPM-Solver's default


def test_bench_peers_group_runs_the_enumeration_and_reports_refusals(tmp_path, capsys):
    root = vp_dir(tmp_path / "m")
    result = run_bench(BenchConfig(model=str(root), samplers=["peers"], nfes=[4], seeds=[0], num_samples=6,
                                   out=tmp_path / "b", batch_size=6, progress=False), log=lambda m: None)
    ran = {r["sampler"] for r in result.records}
    assert ran == set(result.peers["peers"]) and NEW_PEERS <= ran
    assert all(r["actual_nfe"] <= 4 for r in result.records)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "IPNDMScheduler" in config["peer_enumeration"]["refused"]
    assert config["sampler_settings"]["ddim"]["effective"]["timestep_spacing"] == "leading"  # DDPMScheduler's
    assert "| IPNDMScheduler | ignores the betas" in result.markdown
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--model", str(root), "--peer-spacing", "sideways", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--peer-spacing" in err and "'config', 'trailing'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(NEW_PEERS - {"ipndm", "dpmpp-3m-sde-k"}))
def test_each_new_diffusers_peer_records_its_recommended_settings(tmp_path, name):
    from skipstep.lab.sampler_registry import sampler_settings

    settings = sampler_settings(get_sampler(name), load_model(str(vp_dir(tmp_path / "m"))))
    effective = settings["effective"]
    expected = {"sa-solver": ("predictor_order", 2), "sa-solver-3": ("predictor_order", 3), "unipc": ("solver_order", 3),
                "unipc-2": ("solver_order", 2), "deis": ("solver_order", 3), "deis-2": ("solver_order", 2),
                "dpmpp-3m": ("solver_order", 3), "dpmpp-3m-sde": ("algorithm_type", "sde-dpmsolver++")}[name]
    assert effective[expected[0]] == expected[1]


def test_the_karras_variants_are_the_webuis_samplers_on_vp_chains_only(tmp_path):
    """'DPM++ 2M Karras', 'DPM++ 2M SDE Karras', 'DPM++ SDE Karras': diffusers' classes with use_karras_sigmas, whose
    timesteps do not follow the model's spacing; not on a flow model (diffusers' flow sigmas replace them)."""
    from skipstep.lab.sampler_registry import sampler_settings

    karras = {"dpmpp-2m-karras", "dpmpp-2m-sde-karras", "dpmpp-sde-karras"}
    vp = load_model(str(vp_dir(tmp_path / "m")))
    assert karras <= set(enumerate_peers(vp).peers)
    assert all(sampler_settings(get_sampler(n), vp)["effective"]["use_karras_sigmas"] for n in karras)  # recorded
    assert not sampler_settings(get_sampler("dpmpp-2m"), vp)["effective"]["use_karras_sigmas"]
    assert not karras & set(enumerate_peers(load_model(str(flow_dir(tmp_path / "f")))).peers)
    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
              "timestep_spacing": "leading", "_class_name": "DDPMScheduler"}
    reference = DPMSolverMultistepScheduler(**{k: v for k, v in config.items() if k != "_class_name"},
                                            use_karras_sigmas=True, final_sigmas_type="zero")
    reference.set_timesteps(6)
    for name in ("dpmpp-2m-karras", "dpmpp-2m-sde-karras"):
        sched = build_scheduler(get_sampler(name), config, 6)
        sched.set_timesteps(6)
        assert sched.config.use_karras_sigmas and sched.timesteps.tolist() == reference.timesteps.tolist()
        assert sched.timesteps.tolist()[0] == 999 and sched.timesteps.tolist() != [999, 832, 666, 499, 332, 166]


def test_a_karras_grid_that_repeats_timesteps_is_refused_with_the_step_count(tmp_path):
    """On a cosine chain diffusers rounds most Karras sigmas to t = 998 (4 steps: [998, 998, 983, 0]) and its step
    index runs past the end; the dry run tries every step count 3-20 for such a grid and names the first failure."""
    root = tmp_path / "c"
    tiny_unet(root)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(root / "scheduler")
    cosine = enumerate_peers(load_model(str(root)))
    for name in ("dpmpp-2m-karras", "dpmpp-2m-sde-karras"):
        assert name not in cosine.peers
        reason = cosine.refused[f"DPMSolverMultistepScheduler: {name}"]
        assert "fail at 4 steps" in reason and "998, 998" in reason and "IndexError" in reason
    assert "dpmpp-2m" in cosine.peers  # the model's own spacing has no repeats


def test_a_step_dependent_dry_run_that_fails_to_build_is_a_refusal(tmp_path, monkeypatch):
    variant = next(v for v in peer_samplers.VARIANTS if v.name == "dpmpp-2m-karras")

    def broken(*args, **kwargs):
        raise ValueError("no such config")

    monkeypatch.setattr(peer_samplers, "build_scheduler", broken)
    monkeypatch.setattr(peer_samplers, "_DRY_RUNS", {})
    reason = peer_samplers.variant_refusal(variant, load_model(str(vp_dir(tmp_path / "m"))))
    assert "fail at 3 steps (None)" in reason and "ValueError: no such config" in reason
