"""Quick-look front ends: ``skipstep demo`` (the main job, a small side-by-side on the shipped digits model) and
``skipstep sample`` (draw a grid with one sampler).

``skipstep demo`` runs our default sampler (``skipstep.DEFAULT_ETA``, ``skipstep.DEFAULT_SOLVER_ORDER``), DDIM and DPM-Solver++(2M) at
10 NFE on the digits UNet, scores them against the model's own 1000-step ancestral samples, prints the table and
writes the plot and grids into ``./skipstep-demo`` (a benchmark directory: rerunning reuses it). Sized to finish
in about three minutes on two CPU cores; the 1000-step reference is most of that.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .bench import BenchConfig, run_bench
from .bench_report import save_grid
from .cli_args import (HelpFormatter, add_common_run_args, add_model_args, apply_threads, check_device, check_seed,
                       model_options, positive_int)
from .models import apply_clip_mode, load_model
from .run_dirs import RunDirectoryError, check_writable_file, remove_stale_temp_files
from .sample_sets import sample_cell
from .sampler_registry import SamplerError, get_sampler, sampler_refusal, steps_for_nfe

__all__ = ["DEMO_NFE", "DEMO_SAMPLERS", "add_subcommand", "main_demo", "main_sample"]

DEMO_SAMPLERS = ["default", "ddim", "dpmpp-2m"]
DEMO_NFE = 10
DEMO_NUM_SAMPLES = 500
DEMO_NUM_REFERENCE = 300


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="small side-by-side on the shipped digits model (about 3 minutes on 2 CPU cores)",
        description="Our default sampler, DDIM and DPM-Solver++(2M) at 10 NFE on the shipped digits UNet, scored "
                    "against the model's 1000-step ancestral samples. Prints the table; writes results.md, "
                    "results.json, quality_vs_nfe.png and grids/ into --out (a benchmark directory: a rerun "
                    "reuses it).",
        formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("skipstep-demo"),
                   help="output directory (new or empty, or an earlier demo to reuse)")
    p.add_argument("--model", default="digits", help="model name or path (the demo is sized for digits)")
    p.add_argument("--num-samples", type=positive_int, default=DEMO_NUM_SAMPLES, help="samples per sampler")
    p.add_argument("--num-reference", type=positive_int, default=DEMO_NUM_REFERENCE,
                   help="1000-step reference samples (the dominant cost)")
    p.add_argument("--seed", type=check_seed, default=0,
                   help="seed of the initial noise and the per-step noise (0 <= seed < 2**63)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results of a different configuration in --out (only files skipstep wrote there)")
    add_common_run_args(p)
    p.set_defaults(func=main_demo)

    s = subparsers.add_parser(
        "sample", help="draw samples with one sampler and write a PNG grid",
        description="Draw --num-samples samples from --model with --sampler at --nfe network evaluations, print a "
                    "summary, then write them as a PNG grid.",
        formatter_class=HelpFormatter)
    s.add_argument("--model", required=True, help="gmm, digits, a zoo model, or a path to a local diffusers "
                   "directory (required)")
    add_model_args(s)
    s.add_argument("--sampler", default="default",
                   help="sampler name; `skipstep bench --samplers` lists them all with their meanings")
    s.add_argument("--nfe", type=positive_int, default=10, help="network evaluations per sample")
    s.add_argument("--num-samples", type=positive_int, default=64, help="how many samples to draw (the grid's tiles)")
    s.add_argument("--seed", type=check_seed, default=0,
                   help="seed of the initial noise and the per-step noise (0 <= seed < 2**63)")
    s.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG file to write")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_common_run_args(s)
    s.set_defaults(func=main_sample)


def main_demo(args: argparse.Namespace) -> int:
    apply_threads(args)
    t0 = time.perf_counter()
    cfg = BenchConfig(model=args.model, samplers=list(DEMO_SAMPLERS), nfes=[DEMO_NFE], seeds=[args.seed],
                      num_samples=args.num_samples, out=args.out, batch_size=args.batch_size, device=args.device,
                      num_reference=args.num_reference, progress=not args.no_progress, overwrite=args.overwrite,
                      clip=args.clip)
    result = run_bench(cfg)
    print(result.markdown.split("## Sampler settings")[0].rstrip())
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s: {args.out}/results.md, "
          f"{args.out}/quality_vs_nfe.png, {args.out}/grids/")
    return 0


def main_sample(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {args.out}")
    check_writable_file(args.out, "--out", args.overwrite)  # before any sampling
    remove_stale_temp_files(args.out.parent, targets=[args.out.name])  # of killed sample runs only
    device = check_device(args.device)
    sampler = get_sampler(args.sampler)
    loaded = load_model(args.model, device=device, **model_options(args)).at_guidance(args.guidance_scale)
    if sampler_refusal(sampler, loaded) is not None:
        raise SamplerError(f"--sampler {args.sampler}: it cannot sample model {loaded.name!r}: "
                           f"{sampler_refusal(sampler, loaded)}")
    clip = apply_clip_mode(loaded, args.clip)
    steps, expected = steps_for_nfe(sampler, args.nfe, loaded.num_train_timesteps)
    cell = sample_cell(loaded, sampler, steps, args.seed, args.num_samples, args.batch_size, device,
                       progress=not args.no_progress, desc=args.sampler)
    x = cell.samples
    finite = bool(torch.isfinite(x).all())
    print(f"model    {loaded.name} (fingerprint {loaded.fingerprint}, {loaded.prediction_type}, shape {loaded.sample_shape})")
    print(f"sampler  {args.sampler}: {sampler.description}")
    print(f"steps    {steps} (NFE requested {args.nfe}, counted {cell.actual_nfe})")
    print(f"clipping {clip.split(' by every sampler')[0]}")
    print(f"samples  {x.shape[0]}, seed {args.seed}, {cell.seconds:.2f} s ({1000 * cell.seconds / x.shape[0]:.2f} ms "
          f"per sample) on {args.device}")
    if finite:
        print(f"values   min {x.min().item():.3f}, max {x.max().item():.3f}, mean {x.mean().item():.3f}, "
              f"std {x.std().item():.3f}")
        if loaded.reference is not None and x.shape[0] >= 2:
            m = loaded.reference.metrics(x)
            print(f"exact    mode-frequency TV {m['mode_tv']:.3f}, within-mode spread ratio {m['spread_ratio']:.3f} "
                  "(exact samples: 1)")
    else:
        print("values   contain NaN/inf")
    for note in loaded.notes:
        print(f"note     {note}")
    try:
        save_grid(cell.samples, args.out)
    except OSError as err:
        raise RunDirectoryError(f"--out {args.out} could not be written ({err.strerror or err}); the summary "
                                "above is all that is left of this run") from None
    print(f"wrote    {args.out}")
    return 0
