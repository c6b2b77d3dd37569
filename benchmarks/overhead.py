"""Scheduler overhead: the sampling loop with a zero-cost model, skipstep against its diffusers counterpart.

The model is free (it returns a preallocated tensor), so a loop's time is the scheduler's own cost:
``set_timesteps(steps)`` plus ``steps`` calls of ``step(model_output, t, x, generator=g)``, exactly as a pipeline
drives it. Each skipstep configuration is paired with the diffusers scheduler that computes the same kind of step
(both with trailing spacing, a clean final step and no x0 clipping):

| pair | skipstep | diffusers |
|---|---|---|
| order 1, eta 0 | ``eta=0, solver_order=1`` | ``DDIMScheduler`` |
| order 1, eta 1 | ``eta=1, solver_order=1`` | ``DDPMScheduler`` (respaced, ``fixed_small``) |
| order 2, eta 0 | ``eta=0, solver_order=2`` | ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2) |
| order 2, eta 1 | ``eta=1, solver_order=2`` | ``DPMSolverMultistepScheduler`` (``sde-dpmsolver++``, 2) |
| the default | ``SkippedStepScheduler()`` (eta 0, order 2, corrector) | ``UniPCMultistepScheduler`` (bh2, order 2: a predictor-corrector) |
| order 3, eta 0 | ``eta=0, solver_order=3`` | ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 3) |

The non-default pairs run without the corrector (``use_corrector=False``), like their counterparts.

skipstep runs with its defaults otherwise, including ``check_finite=True`` (one reduction per model output that
diffusers does not do). Loops are repeated A B A B ... (skipstep, diffusers) after warm-up loops, so drifts in
machine load hit both; the ratio reported is the median over repeats of (skipstep loop / diffusers loop) -- target
<= 1.0. One torch thread by default. Timings are machine-dependent: they are never asserted in tests.

    python benchmarks/overhead.py                                    # all pairs, 4 shapes, 50 steps, 9 repeats
    python benchmarks/overhead.py --shapes 1x4x64x64 --pairs default --repeats 5    # a quick look
    python benchmarks/overhead.py --profile                          # where the default's step spends its time
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import json
import os
import platform
import pstats
import statistics
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from skipstep import SkippedStepScheduler

CHAIN = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
             prediction_type="epsilon", timestep_spacing="trailing")

DEFAULT_LABEL = "the default (order 2, corrector; eta 1 from 8 steps on)"
#: name -> (label, our config, their label, their scheduler)
PAIRS = {
    "o1-eta0": ("order 1, eta 0", dict(eta=0.0, solver_order=1, use_corrector=False), "DDIMScheduler",
                lambda: DDIMScheduler(**CHAIN, clip_sample=False, set_alpha_to_one=True)),
    "o1-eta1": ("order 1, eta 1", dict(eta=1.0, solver_order=1, use_corrector=False), "DDPMScheduler",
                lambda: DDPMScheduler(**CHAIN, clip_sample=False, variance_type="fixed_small")),
    "o2-eta0": ("order 2, eta 0", dict(eta=0.0, solver_order=2, use_corrector=False), "DPM-Solver++(2M)",
                lambda: DPMSolverMultistepScheduler(**CHAIN, algorithm_type="dpmsolver++", solver_order=2)),
    "o2-eta1": ("order 2, eta 1", dict(eta=1.0, solver_order=2, use_corrector=False), "SDE-DPM-Solver++(2M)",
                lambda: DPMSolverMultistepScheduler(**CHAIN, algorithm_type="sde-dpmsolver++", solver_order=2)),
    "default": (DEFAULT_LABEL, dict(), "UniPC-bh2 (order 2)",
                lambda: UniPCMultistepScheduler(**CHAIN, solver_order=2, solver_type="bh2")),
    "default-sde": (DEFAULT_LABEL, dict(), "SDE-DPM-Solver++(2M)",
                    lambda: DPMSolverMultistepScheduler(**CHAIN, algorithm_type="sde-dpmsolver++", solver_order=2)),
    "o3-eta0": ("order 3, eta 0", dict(eta=0.0, solver_order=3, use_corrector=False), "DPM-Solver++(3M)",
                lambda: DPMSolverMultistepScheduler(**CHAIN, algorithm_type="dpmsolver++", solver_order=3)),
}


def run_loop(sched, x_T: torch.Tensor, model_output: torch.Tensor, steps: int, seed: int = 0) -> float:
    """One full loop (set_timesteps + every step); returns seconds."""
    g = torch.Generator(device=x_T.device).manual_seed(seed)
    if x_T.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sched.set_timesteps(steps, device=x_T.device)
    # pipelines pass a generator only to schedulers whose step() takes one (UniPC's does not)
    kwargs = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    x = x_T
    for t in sched.timesteps:
        x = sched.step(model_output, t, x, **kwargs).prev_sample
    if x_T.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(pair: str, shape, steps: int, repeats: int, device: str, warmup: int = 2) -> dict:
    label, ours_kwargs, theirs_name, make_theirs = PAIRS[pair]
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g).to(device)
    model_output = (0.1 * torch.randn(shape, generator=g)).to(device)
    # the default pair takes the default spacing too (what users get); the step's cost does not depend on it
    chain = CHAIN if ours_kwargs else {k: v for k, v in CHAIN.items() if k != "timestep_spacing"}
    ours, theirs = SkippedStepScheduler(**chain, **ours_kwargs), make_theirs()
    for _ in range(warmup):
        run_loop(ours, x_T, model_output, steps)
        run_loop(theirs, x_T, model_output, steps)
    t_ours, t_theirs = [], []
    for rep in range(repeats):  # A B A B ...
        t_ours.append(run_loop(ours, x_T, model_output, steps, seed=rep))
        t_theirs.append(run_loop(theirs, x_T, model_output, steps, seed=rep))
    ratios = [a / b for a, b in zip(t_ours, t_theirs)]
    return {
        "pair": label, "shape": list(shape), "steps": steps, "repeats": repeats, "theirs": theirs_name,
        "ours_config": ours_kwargs, "ours_median_s": statistics.median(t_ours),
        "theirs_median_s": statistics.median(t_theirs), "ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "ours_all_s": t_ours, "theirs_all_s": t_theirs,
    }


def markdown_table(results: list[dict]) -> str:
    lines = ["| skipstep | diffusers | batch | skipstep ms/loop | diffusers ms/loop | ratio (median) | ratio range |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r['pair']} | {r['theirs']} | {'x'.join(map(str, r['shape']))} | {1e3 * r['ours_median_s']:.2f} | "
            f"{1e3 * r['theirs_median_s']:.2f} | {r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |"
        )
    return "\n".join(lines)


def profile_default(shape, steps: int, device: str, loops: int = 5) -> str:
    x_T = torch.randn(shape).to(device)
    model_output = (0.1 * torch.randn(shape)).to(device)
    sched = SkippedStepScheduler(**CHAIN)
    run_loop(sched, x_T, model_output, steps)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(loops):
        run_loop(sched, x_T, model_output, steps)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--shapes", default="1x4x64x64,64x4x64x64,1x4x32x32,64x4x32x32",
                   help="comma-separated sample shapes (batch x channels x height x width)")
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help="comma-separated subset of: " + ", ".join(f"{k} ({v[0]} vs {v[2]})" for k, v in PAIRS.items()))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--profile", action="store_true", help="also print a profile of the default's loop")
    p.add_argument("--out", default=None, help="write all timings to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    pairs = [name.strip() for name in args.pairs.split(",") if name.strip()]
    unknown = [name for name in pairs if name not in PAIRS]
    if unknown:
        p.error(f"unknown pairs {unknown}; choose from {list(PAIRS)}")
    results = []
    for shape in shapes:
        for pair in pairs:
            results.append(measure(pair, shape, args.steps, args.repeats, args.device))
            print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n{args.steps} steps, {args.repeats} interleaved repeats, {args.threads} thread(s), device {args.device}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average after the run {load}\n")
    print(markdown_table(results))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"steps": args.steps, "threads": args.threads, "device": args.device,
                       "torch": torch.__version__, "python": platform.python_version(),
                       "load_average_after": load, "results": results}, fh, indent=2)
        print(f"wrote {args.out}")
    if args.profile:
        print(f"\n--- profile: SkippedStepScheduler() (the default), shape {shapes[0]}, "
              f"{args.steps} steps x 5 loops ---")
        print(profile_default(shapes[0], args.steps, args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
