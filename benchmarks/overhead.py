"""Scheduler overhead: the sampling loop with a zero-cost model, skipstep vs diffusers, same steps, same batch.

The model returns a preallocated tensor, so the loop time is the schedulers' own cost (set_timesteps + step).
Pairs, each run the same number of steps with trailing spacing:

* ``eta=0``: ``SkippedStepScheduler(eta=0)`` vs ``DDIMScheduler`` (set_alpha_to_one=True) -- identical math;
* ``eta=1``: ``SkippedStepScheduler(eta=1)`` vs ``DDPMScheduler`` (respaced) -- identical math, both draw noise.

Ours is measured with its default ``check_finite=True`` (a NaN/inf scan of every model output, which diffusers
does not do) and with ``check_finite=False``.

Runs are repeated and interleaved (ours, theirs, theirs, ours, ...) so that drifts in machine load hit both; the
reported ratio is median(ours) / median(theirs) (target <= 1.0x). ``--profile`` prints where our step's time goes.

    python benchmarks/overhead.py                      # 50 steps, batches 64x4x64x64 and 1x4x64x64
    python benchmarks/overhead.py --steps 50 --repeats 15 --out overhead.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from skipstep import SkippedStepScheduler

BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            prediction_type="epsilon", clip_sample=False, timestep_spacing="trailing")


def make_pair(eta: float, check_finite: bool = True):
    ours = SkippedStepScheduler(**BASE, eta=eta, check_finite=check_finite)
    if eta == 0.0:
        theirs = DDIMScheduler(**BASE, set_alpha_to_one=True)
    else:
        theirs = DDPMScheduler(**BASE)
    return ours, theirs


def run_loop(sched, x_T: torch.Tensor, eps: torch.Tensor, steps: int, seed: int = 0) -> float:
    """One full loop; returns seconds. The model is free: it returns the preallocated ``eps``."""
    g = torch.Generator(device=x_T.device).manual_seed(seed)
    sync = x_T.is_cuda
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sched.set_timesteps(steps, device=x_T.device)
    x = x_T
    for t in sched.timesteps:
        out = eps  # zero-cost model
        x = sched.step(out, t, x, generator=g).prev_sample
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(shape, eta: float, steps: int, repeats: int, device: str, warmup: int = 2,
            check_finite: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g).to(device)
    eps = (0.1 * torch.randn(shape, generator=g)).to(device)
    ours, theirs = make_pair(eta, check_finite)
    for _ in range(warmup):
        run_loop(ours, x_T, eps, steps)
        run_loop(theirs, x_T, eps, steps)
    t_ours, t_theirs = [], []
    for rep in range(repeats):
        order = [(ours, t_ours), (theirs, t_theirs)]
        if rep % 2:
            order.reverse()
        for sched, sink in order:
            sink.append(run_loop(sched, x_T, eps, steps, seed=rep))
    m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    pair_ratios = [a / b for a, b in zip(t_ours, t_theirs)]
    return {
        "shape": list(shape),
        "eta": eta,
        "check_finite": check_finite,
        "steps": steps,
        "repeats": repeats,
        "ours": type(ours).__name__,
        "theirs": type(theirs).__name__,
        "ours_median_s": m_ours,
        "theirs_median_s": m_theirs,
        "ours_per_step_us": 1e6 * m_ours / steps,
        "theirs_per_step_us": 1e6 * m_theirs / steps,
        "ratio": m_ours / m_theirs,
        "ratio_of_pairs_median": statistics.median(pair_ratios),
        "ours_all_s": t_ours,
        "theirs_all_s": t_theirs,
    }


def profile_ours(shape, eta: float, steps: int, device: str, loops: int = 5) -> str:
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g).to(device)
    eps = (0.1 * torch.randn(shape, generator=g)).to(device)
    ours, _ = make_pair(eta)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(loops):
        run_loop(ours, x_T, eps, steps)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--shapes", default="64x4x64x64,1x4x64x64",
                   help="comma-separated batch shapes, e.g. 64x4x64x64,1x4x64x64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--profile", action="store_true", help="print a profile of our scheduler's loop")
    p.add_argument("--out", default="overhead.json", help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    results = []
    print(f"{'shape':>14} {'eta':>3} {'finite-check':>12}  {'skipstep':>22}  {'diffusers':>24}  ratio (ours/theirs)")
    for shape in shapes:
        for eta in (0.0, 1.0):
            for check in (True, False):
                r = measure(shape, eta, args.steps, args.repeats, args.device, check_finite=check)
                results.append(r)
                print(f"{'x'.join(map(str, shape)):>14} {eta:>3.0f} {'on' if check else 'off':>12}  "
                      f"{r['ours_median_s'] * 1e3:9.2f} ms "
                      f"({r['ours_per_step_us']:7.0f} us/step)  {r['theirs']:>14} {r['theirs_median_s'] * 1e3:8.2f} ms  "
                      f"{r['ratio']:.3f}x (pairs {r['ratio_of_pairs_median']:.3f}x)")
    report = {
        "what": "sampling loop with a zero-cost model; median over interleaved repeats; ratio = ours / diffusers",
        "steps": args.steps,
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": results,
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")
    if args.profile:
        for shape in shapes:
            for eta in (0.0, 1.0):
                print(f"\n--- profile: SkippedStepScheduler eta={eta}, shape {shape}, {args.steps} steps x 5 loops ---")
                print(profile_ours(shape, eta, args.steps, args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
