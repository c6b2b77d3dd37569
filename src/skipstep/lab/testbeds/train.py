"""Train the two digits testbeds and write their report: ``python -m skipstep.lab.testbeds.train {unet,classifier,report,all}``.

* ``unet`` -- a diffusers ``UNet2DModel`` on the 8x8 digits (``"train"`` split of
  :func:`skipstep.lab.testbeds.digits.load_digits_images`), epsilon prediction, ``DDPMScheduler`` (T=1000, linear
  betas 1e-4..0.02) for ``add_noise``, AdamW with linear warm-up and cosine decay, gradient clipping and an EMA of
  the weights. The EMA weights are saved with ``DDPMPipeline(unet, scheduler).save_pretrained(out,
  safe_serialization=True)`` (``model_index.json``, ``unet/``, ``scheduler/``). The loss curve goes to
  ``<docs>/training_digits.csv`` and ``<docs>/training_digits_loss.png``, a summary to
  ``<out>/training_info.json``.
* ``classifier`` -- :class:`skipstep.lab.testbeds.digits.DigitClassifier` on the same split with random +-1 pixel
  shifts, evaluated on the ``"heldout"`` split; saved as ``model.safetensors`` + ``config.json``; curve in
  ``<docs>/training_digits_classifier.csv``.
* ``report`` -- parameter counts, forward-pass timing (batch 2,000), a grid of 64 samples from 1000-step ancestral
  DDPM sampling (``<docs>/digits_samples_1000step.png``), classifier statistics and a Fréchet distance of
  1000-step samples against the held-out split (``<docs>/training_digits_report.json``).
* ``all`` -- the three in order.

Everything runs on CPU with ``--threads`` torch threads (default 1) and is seeded.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import frechet_distance
from .digits import (
    DIGIT_CLASSIFIER_DIR,
    DIGITS_SPLIT_SEED,
    DIGITS_UNET_DIR,
    DigitClassifier,
    load_digit_classifier,
    load_digits_images,
    load_digits_labels,
    load_digits_scheduler,
    load_digits_unet,
)

REPO_ROOT = Path(__file__).resolve().parents[4]  # src/skipstep/lab/testbeds/train.py
# docs/ of the source checkout; from an installed (non-editable) package, ./docs of the working directory
DEFAULT_DOCS = REPO_ROOT / "docs" if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd() / "docs"

UNET_BLOCK_CHANNELS = (16, 24, 32)


def make_unet(block_out_channels=UNET_BLOCK_CHANNELS, norm_num_groups: int = 8, attention_head_dim: int = 8,
              out_channels: int = 1, num_class_embeds: int | None = None):
    """The testbed architecture: 3 levels (8x8, 4x4, 2x2), one ResNet per level, self-attention in the mid block;
    ``out_channels=2`` for a learned-variance model, ``num_class_embeds`` for integer class labels."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
        add_attention=True,
        num_class_embeds=num_class_embeds,
    )


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, *, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    mod_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, mod_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


class _FixedNoiseEval:
    """Epsilon-MSE on a fixed set of (x0, t, eps) triples: repeats of a split with stratified timesteps."""

    def __init__(self, x0: torch.Tensor, repeats: int, scheduler, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        x = x0.repeat(repeats, 1, 1, 1)
        n = x.shape[0]
        self.t = (torch.arange(n) * scheduler.config.num_train_timesteps // n)[torch.randperm(n, generator=g)]
        self.eps = torch.randn(x.shape, generator=g)
        self.xt = scheduler.add_noise(x, self.eps, self.t)

    @torch.no_grad()
    def __call__(self, model, batch: int = 2000) -> float:
        model.eval()
        total = 0.0
        for i in range(0, self.xt.shape[0], batch):
            pred = model(self.xt[i : i + batch], self.t[i : i + batch]).sample
            total += F.mse_loss(pred, self.eps[i : i + batch], reduction="sum").item()
        return total / self.eps.numel()


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s"


# ------------------------------------------------------------------------------------------------------ UNet
def train_unet(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import DDPMPipeline

    torch.manual_seed(args.seed)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    out = Path(args.unet_out)

    x_train = load_digits_images("train")
    x_held = load_digits_images("heldout")
    scheduler = make_scheduler()
    model = make_unet(args.channels)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay, eps=1e-8
    )
    eval_train = _FixedNoiseEval(x_train, 4, scheduler, seed=1)
    eval_held = _FixedNoiseEval(x_held, 20, scheduler, seed=2)
    print(
        f"[unet] params={n_params(model):,} train={len(x_train)} heldout={len(x_held)} steps={args.steps} "
        f"batch={args.batch_size} lr={args.lr} ema={args.ema_decay} threads={torch.get_num_threads()}",
        flush=True,
    )

    csv_path = docs / "training_digits.csv"
    fields = ["step", "lr", "train_loss", "ema_eval_loss_train", "ema_eval_loss_heldout", "elapsed_s"]
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(args.seed)
    n = x_train.shape[0]
    perm = torch.randperm(n, generator=gen)
    pos = 0
    running, running_n = 0.0, 0
    t0 = time.perf_counter()
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for step in range(args.steps):
            if pos + args.batch_size > n:
                perm = torch.randperm(n, generator=gen)
                pos = 0
            x0 = x_train[perm[pos : pos + args.batch_size]]
            pos += args.batch_size
            eps = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
            xt = scheduler.add_noise(x0, eps, t)
            lr = lr_at(step, peak=args.lr, warmup=args.warmup, total=args.steps, final_ratio=args.final_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.mse_loss(model(xt, t).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            ema_update(ema, model, min(args.ema_decay, (1.0 + step) / (10.0 + step)))
            running += loss.item()
            running_n += 1

            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                row: dict[str, Any] = {
                    "step": done,
                    "lr": f"{lr:.3e}",
                    "train_loss": f"{running / running_n:.6f}",
                    "ema_eval_loss_train": "",
                    "ema_eval_loss_heldout": "",
                    "elapsed_s": f"{time.perf_counter() - t0:.1f}",
                }
                running, running_n = 0.0, 0
                if done % args.eval_every == 0 or done == args.steps:
                    row["ema_eval_loss_train"] = f"{eval_train(ema):.6f}"
                    row["ema_eval_loss_heldout"] = f"{eval_held(ema):.6f}"
                    model.train()
                    print(
                        f"[unet] step {done:6d}  lr {lr:.2e}  loss {row['train_loss']}  "
                        f"EMA eval train {row['ema_eval_loss_train']} heldout {row['ema_eval_loss_heldout']}  "
                        f"{_fmt_time(time.perf_counter() - t0)}",
                        flush=True,
                    )
                rows.append(row)
                writer.writerow(row)
                fh.flush()
    wall = time.perf_counter() - t0

    final_train = float(rows[-1]["ema_eval_loss_train"])
    final_held = float(rows[-1]["ema_eval_loss_heldout"])
    ema_sched = make_scheduler()
    DDPMPipeline(unet=ema, scheduler=ema_sched).save_pretrained(str(out), safe_serialization=True)
    info = {
        "what": "EMA weights of a diffusers UNet2DModel (epsilon prediction) on the sklearn 8x8 digits",
        "command": args.command_line,
        "data": {
            "split": "train",
            "split_seed": DIGITS_SPLIT_SEED,
            "n_train": int(x_train.shape[0]),
            "scaling": "x/16*2-1",
        },
        "steps": args.steps,
        "batch_size": args.batch_size,
        "optimizer": {
            "name": "AdamW",
            "peak_lr": args.lr,
            "warmup_steps": args.warmup,
            "schedule": "linear warm-up then cosine decay",
            "final_lr_ratio": args.final_lr_ratio,
            "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip,
        },
        "ema_decay": args.ema_decay,
        "ema_warmup": "decay_k = min(ema_decay, (1+k)/(10+k))",
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 1),
        "final_train_loss_raw_last_window": float(rows[-1]["train_loss"]),
        "final_ema_eval_loss_train": final_train,
        "final_ema_eval_loss_heldout": final_held,
        "eval_loss_definition": "eps-MSE of the EMA model on fixed (x0, t, eps) triples: 4 repeats of the train "
        "split / 20 repeats of the held-out split, timesteps stratified over 0..999",
        "n_params": n_params(ema),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    plot_unet_curve(csv_path, docs / "training_digits_loss.png")
    print(f"[unet] done in {_fmt_time(wall)}; EMA eval loss train {final_train:.5f} heldout {final_held:.5f}")
    print(f"[unet] saved {out}")
    return info


def plot_unet_curve(csv_path: Path, png_path: Path, title: str = "Digits DDPM UNet training",
                    ylabel: str = "epsilon MSE") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["train_loss"]) for r in rows])
    ev = [(int(r["step"]), float(r["ema_eval_loss_train"] or "nan"), float(r["ema_eval_loss_heldout"]))
          for r in rows if r["ema_eval_loss_heldout"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step, loss, lw=0.8, alpha=0.7, label="training loss (raw weights, mean per log window)")
    if ev:
        e = np.array(ev)
        ax.plot(e[:, 0], e[:, 1], "o-", ms=3, label="EMA weights, fixed eval set (train split)")
        ax.plot(e[:, 0], e[:, 2], "s-", ms=3, label="EMA weights, fixed eval set (held-out split)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ classifier
def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by an integer offset in ``[-max_shift, max_shift]^2``, filling with background (-1)."""
    b = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    out = torch.empty_like(x)
    for i in range(2 * max_shift + 1):
        for j in range(2 * max_shift + 1):
            m = (dy == i) & (dx == j)
            if m.any():
                out[m] = pad[m, :, i : i + 8, j : j + 8]
    return out


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train_classifier(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    out = Path(args.classifier_out)
    out.mkdir(parents=True, exist_ok=True)

    x_tr, y_tr = load_digits_images("train"), load_digits_labels("train")
    x_ho, y_ho = load_digits_images("heldout"), load_digits_labels("heldout")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.clf_lr, weight_decay=args.clf_weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    n = x_tr.shape[0]
    steps_per_epoch = math.ceil(n / args.clf_batch_size)
    total = steps_per_epoch * args.clf_epochs
    rows = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(args.clf_epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_n = 0.0, 0
        for i in range(0, n, args.clf_batch_size):
            idx = perm[i : i + args.clf_batch_size]
            xb = _random_shift(x_tr[idx], gen)
            xb = xb + args.clf_noise * torch.randn(xb.shape, generator=gen)
            lr = lr_at(step, peak=args.clf_lr, warmup=steps_per_epoch, total=total, final_ratio=0.01)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot_loss += loss.item() * len(idx)
            tot_n += len(idx)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(tot_loss / tot_n, 6),
            "train_acc": round(_accuracy(model, x_tr, y_tr), 5),
            "heldout_acc": round(_accuracy(model, x_ho, y_ho), 5),
        }
        rows.append(row)
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.clf_epochs:
            print(f"[classifier] epoch {row['epoch']:3d} loss {row['train_loss']:.4f} train acc {row['train_acc']:.4f} heldout acc {row['heldout_acc']:.4f}", flush=True)
    wall = time.perf_counter() - t0
    with open(docs / "training_digits_classifier.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    acc = _accuracy(model, x_ho, y_ho)
    config = dict(model.config)
    config.update(
        {
            "architecture": "DigitClassifier",
            "input": "(B, 1, 8, 8) float32 in [-1, 1] (sklearn digits x/16*2-1)",
            "features": "pre-activation penultimate layer (Linear(4*c3 -> feature_dim))",
            "heldout_accuracy": round(acc, 5),
            "train_accuracy": round(_accuracy(model, x_tr, y_tr), 5),
            "split_seed": DIGITS_SPLIT_SEED,
            "training": {
                "command": args.command_line,
                "epochs": args.clf_epochs,
                "batch_size": args.clf_batch_size,
                "optimizer": "AdamW, 1 epoch linear warm-up then cosine decay",
                "peak_lr": args.clf_lr,
                "weight_decay": args.clf_weight_decay,
                "label_smoothing": 0.05,
                "augmentation": f"random integer shifts in [-1, 1]^2 px (background fill), Gaussian noise std {args.clf_noise}",
                "seed": args.seed,
                "wall_time_s": round(wall, 1),
                "n_params": n_params(model),
            },
        }
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"[classifier] done in {_fmt_time(wall)}; held-out accuracy {acc:.4f}; saved {out}")
    return config


# -------------------------------------------------------------------------------------------------- report
@torch.no_grad()
def ddpm_sample(unet, scheduler, n: int, *, seed: int, num_inference_steps: int = 1000, batch: int = 1000) -> torch.Tensor:
    """Ancestral DDPM sampling (what ``DDPMPipeline`` does), returns ``(n, 1, 8, 8)`` in ``[-1, 1]``."""
    g = torch.Generator().manual_seed(seed)
    outs = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        scheduler.set_timesteps(num_inference_steps)
        x = torch.randn((b, 1, 8, 8), generator=g)
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, generator=g).prev_sample
        outs.append(x.clamp(-1, 1))
    return torch.cat(outs)


def save_grid(x: torch.Tensor, path: Path, title: str, nrow: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = ((x[:, 0].numpy() + 1) / 2).clip(0, 1)
    n = imgs.shape[0]
    ncol = math.ceil(n / nrow)
    pad = 1
    canvas = np.ones((nrow * (8 + pad) + pad, ncol * (8 + pad) + pad)) * 0.5
    for k in range(n):
        r, c = divmod(k, ncol)
        canvas[pad + r * (8 + pad) : pad + r * (8 + pad) + 8, pad + c * (8 + pad) : pad + c * (8 + pad) + 8] = imgs[k]
    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_forward(unet, batch: int = 2000, threads: int = 2, repeats: int = 10) -> dict[str, float]:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0))
        ts = []
        with torch.inference_mode():
            for _ in range(3):
                unet(x, t)
            for _ in range(repeats):
                s = time.perf_counter()
                unet(x, t)
                ts.append(time.perf_counter() - s)
    finally:
        torch.set_num_threads(prev)
    return {"threads": threads, "batch": batch, "min_s": round(min(ts), 4), "median_s": round(float(np.median(ts)), 4)}


def report(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    unet = load_digits_unet(args.unet_out)
    scheduler = load_digits_scheduler(args.unet_out)
    clf = load_digit_classifier(args.classifier_out)
    res: dict[str, Any] = {"unet_params": n_params(unet), "classifier_params": n_params(clf)}
    res["unet_dir_bytes"] = sum(f.stat().st_size for f in Path(args.unet_out).rglob("*") if f.is_file())
    res["classifier_dir_bytes"] = sum(f.stat().st_size for f in Path(args.classifier_out).rglob("*") if f.is_file())
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        unet(torch.zeros(2000, 1, 8, 8), torch.zeros(2000, dtype=torch.long))
    res["unet_gflop_batch2000"] = round(fc.get_total_flops() / 1e9, 2)
    res["forward_timing"] = [time_forward(unet, threads=th) for th in (2, 1)]
    print(f"[report] params unet={res['unet_params']:,} classifier={res['classifier_params']:,}; timing {res['forward_timing']}", flush=True)

    x_ho, y_ho = load_digits_images("heldout"), load_digits_labels("heldout")
    res["classifier_heldout_accuracy"] = round(_accuracy(clf, x_ho, y_ho), 5)

    t0 = time.perf_counter()
    n = max(64, args.report_samples)
    samples = ddpm_sample(unet, scheduler, n, seed=args.seed, num_inference_steps=1000)
    res["sampling_wall_s"] = round(time.perf_counter() - t0, 1)
    res["n_samples"] = n
    save_grid(samples[:64], docs / "digits_samples_1000step.png", "64 samples, 1000-step ancestral DDPM (EMA UNet)")
    with torch.no_grad():
        probs = clf(samples).softmax(1)
        feats_s = clf.features(samples).double().numpy()
        feats_h = clf.features(x_ho).double().numpy()
        feats_t = clf.features(load_digits_images("train")).double().numpy()
    res["samples_classifier_mean_max_prob"] = round(probs.max(1).values.mean().item(), 4)
    res["samples_classifier_frac_confident_0.9"] = round((probs.max(1).values > 0.9).float().mean().item(), 4)
    res["samples_class_histogram"] = torch.bincount(probs.argmax(1), minlength=10).tolist()
    res["heldout_classifier_mean_max_prob"] = round(clf(x_ho).softmax(1).max(1).values.mean().item(), 4)
    res["frechet_samples_vs_heldout"] = round(frechet_distance(feats_s, feats_h), 3)
    res["frechet_train_vs_heldout"] = round(frechet_distance(feats_t, feats_h), 3)
    sub = np.random.RandomState(0).permutation(len(feats_t))[: len(feats_h)]
    res["frechet_train300_vs_heldout"] = round(frechet_distance(feats_t[sub], feats_h), 3)
    # nearest training image of each sample (memorisation check): mean L2 distance vs held-out's
    x_tr = load_digits_images("train").flatten(1)
    d_s = torch.cdist(samples.flatten(1), x_tr).min(1).values
    d_h = torch.cdist(x_ho.flatten(1), x_tr).min(1).values
    res["nn_dist_to_train_samples_median"] = round(d_s.median().item(), 3)
    res["nn_dist_to_train_heldout_median"] = round(d_h.median().item(), 3)
    res["command"] = args.command_line
    (docs / "training_digits_report.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return res


# ------------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skipstep.lab.testbeds.train", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["unet", "classifier", "report", "all"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", default=str(DEFAULT_DOCS), help="where curves, plots and the report go")
    p.add_argument("--unet-out", default=str(DIGITS_UNET_DIR))
    p.add_argument("--classifier-out", default=str(DIGIT_CLASSIFIER_DIR))
    g = p.add_argument_group("unet")
    g.add_argument("--steps", type=int, default=20000)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup", type=int, default=500)
    g.add_argument("--final-lr-ratio", type=float, default=0.02)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--ema-decay", type=float, default=0.999)
    g.add_argument("--channels", type=int, nargs="+", default=list(UNET_BLOCK_CHANNELS))
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--eval-every", type=int, default=1000)
    c = p.add_argument_group("classifier")
    c.add_argument("--clf-epochs", type=int, default=60)
    c.add_argument("--clf-batch-size", type=int, default=64)
    c.add_argument("--clf-lr", type=float, default=2e-3)
    c.add_argument("--clf-weight-decay", type=float, default=1e-4)
    c.add_argument("--clf-noise", type=float, default=0.05)
    r = p.add_argument_group("report")
    r.add_argument("--report-samples", type=int, default=1000, help="samples for the report statistics (>= 64)")
    return p


def main(argv: list[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    args.command_line = "python -m skipstep.lab.testbeds.train " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    if args.what in ("classifier", "all"):
        train_classifier(args)
    if args.what in ("unet", "all"):
        train_unet(args)
    if args.what in ("report", "all"):
        report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
