"""``skipstep bench``: the command line of the benchmark (:mod:`skipstep.lab.bench` is the engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .bench import PEER_SPACINGS, BenchConfig, run_bench
from .cli_args import (HelpFormatter, add_common_run_args, add_model_args, apply_threads, name_list, positive_int,
                       positive_int_list, seed_list)
from .sampler_registry import format_sampler_list

__all__ = ["add_subcommand", "main_bench"]


class ListOrChooseSamplers(argparse.Action):
    """``--samplers LIST`` chooses samplers; ``--samplers`` alone prints every sampler with its meaning and exits."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            print(format_sampler_list())
            parser.exit(0)
        setattr(namespace, self.dest, name_list(values))


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="side-by-side benchmark of samplers on one model",
        description="Run every (sampler, NFE, seed[, guidance scale]) cell with the same initial noise, score it "
                    "against a reference set and write results.json, results.md, quality-vs-NFE plots and sample "
                    "grids into --out. Resumable: finished cells are verified and reused. `skipstep bench "
                    "--samplers` lists every sampler.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="gmm, digits, a zoo model (digits-cfg, ...), or a path to a local diffusers directory "
                        "(required)")
    p.add_argument("--samplers", nargs="?", action=ListOrChooseSamplers, default=None,
                   help="comma-separated sampler names, the groups all / ours / peers (peers: every peer the bench "
                        "enumerates for the model), or tuned:FILE.json; alone (no value) it lists every sampler with "
                        "its meaning (default: skipstep, skipstep-ddim, ddim (flow-euler for flow models), dpmpp-2m, "
                        "unipc)")
    p.add_argument("--nfe", type=positive_int_list, default=[5, 10, 20, 50, 100],
                   help="comma-separated network evaluations per sample (positive; cells below a sampler's order "
                        "are skipped with the reason)")
    p.add_argument("--num-samples", type=positive_int, default=1000, help="samples per cell (at least 4)")
    p.add_argument("--seed", "--seeds", dest="seeds", type=seed_list, default=[0],
                   help="comma-separated seeds, 0 <= seed < 2**63 (tables show mean ± std over seeds)")
    p.add_argument("--num-reference", type=positive_int, default=None,
                   help="reference-set size (default: --num-samples)")
    p.add_argument("--peer-spacing", choices=PEER_SPACINGS, default="config",
                   help="the peers' timesteps: the model's own timestep_spacing (config: what "
                        "X.from_config(model_config) gives) or trailing (ours always run trailing)")
    add_model_args(p, guidance_list=True)
    p.add_argument("--out", type=Path, default=Path("skipstep-bench"),
                   help="output directory: new or empty, or an earlier benchmark directory to resume or extend")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results of a different configuration in --out (only files the benchmark wrote "
                        "there are removed; a directory skipstep did not create is always refused)")
    add_common_run_args(p)
    p.add_argument("--fid-features", default=None,
                   help="feature network for FD: inception (local weights only), digits, a TorchScript file or "
                        "module:function (default: the model's own, the digit classifier for 8x8 models)")
    p.add_argument("--fid-reference", default=None,
                   help="also report fid_ref: FD vs this reference (statistics .npz, generate output directory, "
                        "image folder or .safetensors samples) in the --fid-features space (default: none)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 weights (never downloaded; default: $SKIPSTEP_INCEPTION_WEIGHTS or "
                        "torch's hub cache)")
    p.set_defaults(func=main_bench)


def main_bench(args: argparse.Namespace) -> int:
    apply_threads(args)
    cfg = BenchConfig(model=args.model, samplers=args.samplers, nfes=args.nfe, seeds=args.seeds,
                      num_samples=args.num_samples, out=args.out, batch_size=args.batch_size, device=args.device,
                      num_reference=args.num_reference, progress=not args.no_progress, overwrite=args.overwrite,
                      clip=args.clip, fid_features=args.fid_features, fid_reference=args.fid_reference,
                      inception_weights=args.inception_weights, guidance_scales=args.guidance_scales,
                      null_label=args.null_label, flow_mu=args.flow_mu, peer_spacing=args.peer_spacing)
    result = run_bench(cfg)
    print(result.markdown.split("## All metrics")[0].rstrip())
    print(f"\n{len(result.computed)} cells computed, {len(result.reused)} reused, {len(result.skipped)} skipped; "
          f"{result.seconds:.1f} s. Outputs in {cfg.out}/ (results.md, results.json, quality-vs-NFE plots, grids/)")
    return 0
