"""Train the digits zoo: ``python -m skipstep.lab.testbeds.zoo {train NAME | report NAME... | list}``.

Each zoo model is a diffusers ``UNet2DModel`` on the 8x8 digits (the ``"train"`` split of
:func:`skipstep.lab.testbeds.digits.load_digits_images`, pixels ``x/16*2-1``) in the regime a user runs, saved as
``<zoo>/<name>/unet/`` (safetensors) + ``scheduler/scheduler_config.json`` + ``training_info.json``:

* ``digits-eps-b``, ``digits-eps-c`` -- epsilon models that differ from the shipped ``digits`` model in size,
  training length, seed and (``-c``) noise schedule: ``L = E ||eps_theta(x_t, t) - eps||^2``.
* ``digits-cfg`` -- class-conditional epsilon model, ``num_class_embeds = 11``: labels 0..9 and the null label 10,
  which replaces the label with probability ``p_uncond = 0.1`` (label dropout), so one network gives both branches of
  classifier-free guidance ``eps_w = eps(x, null) + w (eps(x, y) - eps(x, null))``; ``digits-cfg-b`` the same,
  smaller, on Stable Diffusion's scaled-linear chain and DDIM config (the second guided model).
* ``digits-flow`` -- rectified flow in ``FlowMatchEulerDiscreteScheduler``'s convention:
  ``x_sigma = (1 - sigma) x_0 + sigma eps``, the network sees ``t = 1000 sigma`` and predicts the velocity
  ``v = eps - x_0``; ``sigma ~ U(0, 1)`` in training; the config's ``shift`` only moves the sampling grid.
  ``digits-flow-d`` is trained as SD3 is: ``sigma = 3u / (1 + 2u)``, ``u = sigmoid(z)``, ``z ~ N(0, 1)``.
* ``digits-lv`` -- learned variance in the ADM/IDDPM layout: ``2C`` outputs ``[eps, nu]``, ``nu in [-1, 1]``
  interpolating ``log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t``, ``frac = (nu + 1)/2``
  (``variance_type="learned_range"``), trained with the hybrid loss ``L_simple + L_vlb``: ``L_vlb`` is the KL from
  ``q(x_{t-1} | x_t, x_0)`` to ``N(mu_theta, sigma_t^2)`` in bits per dimension, with the mean's epsilon detached
  (it trains only the variance), and at ``t = 0`` the discretised-Gaussian decoder NLL over the 17 pixel levels.
  ``lambda = 0.001`` of the IDDPM paper times ``T = 1000`` uniform timesteps makes the per-sample weight 1.
* ``digits-vzsnr`` -- v-prediction ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` on SD 2.x's scaled-linear chain
  rescaled to zero terminal SNR (``rescale_betas_zero_snr=True``; ``abar_{T-1} = 0`` exactly), trailing spacing;
  ``digits-v`` the same loss on SD 2.x's chain as it is (terminal SNR above zero), in a DPM-Solver config.

Everything runs on CPU with ``--threads`` torch threads (default 1) and is seeded: the same command gives the same
weights on the same torch build. ``report`` samples 64 images per model with the bench's converged reference
sampler (1000-step ancestral; 1000-step Euler for flow) and writes ``docs/zoo/<name>_samples.png`` and
``docs/zoo/<name>_loss.png`` (from ``docs/zoo/<name>_training.csv``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F

from ...paths import shift_flow_time
from ...storage import atomic_write_json
from ..models import load_zoo_model
from ..sample_sets import draw_reference
from .digits import DIGITS_SPLIT_SEED, load_digits_images, load_digits_labels
from .train import DEFAULT_DOCS, ema_update, lr_at, make_unet, n_params, plot_unet_curve, save_grid

ZOO_ROOT = Path(__file__).resolve().parents[2] / "assets" / "zoo"
NULL_LABEL = 10
LABEL_DROPOUT = 0.1


@dataclass(frozen=True)
class ZooSpec:
    """How one zoo model is trained: its regime, scheduler, UNet width, steps and seed."""

    regime: str  # "epsilon" | "cfg" | "flow" | "learned-variance" | "v" | "v-zero-snr"
    description: str
    scheduler: dict
    channels: tuple[int, ...]
    steps: int
    seed: int
    lr: float = 1e-3
    batch_size: int = 128
    #: a flow model's training sigma: "uniform" (``sigma ~ U(0, 1)``) or "logit-normal-shifted" (SD3's recipe:
    #: ``u = sigmoid(z)``, ``z ~ N(0, 1)``, then the config's shift ``sigma = s u / (1 + (s - 1) u)``)
    flow_sigma: str = "uniform"


_LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
ZOO_SPECS: dict[str, ZooSpec] = {
    "digits-eps-b": ZooSpec(
        "epsilon", "smaller epsilon UNet (8/16/24 channels), 4k steps, seed 1, linear betas",
        {"_class_name": "DDPMScheduler", **_LINEAR, "prediction_type": "epsilon", "clip_sample": False},
        (8, 16, 24), 4000, 1),
    "digits-eps-c": ZooSpec(
        "epsilon", "epsilon UNet (16/24/32), 8k steps, seed 2, cosine betas, SD-style DDIM config",
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
         "prediction_type": "epsilon", "clip_sample": True, "set_alpha_to_one": False, "steps_offset": 1,
         "timestep_spacing": "leading"},  # clipped: unclipped 1000-step ancestral sampling on a cosine chain blows up
        (16, 24, 32), 8000, 2),
    "digits-cfg": ZooSpec(
        "cfg", "class-conditional epsilon UNet (16/24/32), label dropout 0.1 (null label 10), 6k steps, seed 3",
        {"_class_name": "DDPMScheduler", **_LINEAR, "prediction_type": "epsilon", "clip_sample": False},
        (16, 24, 32), 6000, 3),
    "digits-flow": ZooSpec(
        "flow", "rectified-flow velocity UNet (16/24/32), FlowMatchEulerDiscreteScheduler shift 2, 6k steps, seed 4",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 2.0},
        (16, 24, 32), 6000, 4),
    "digits-lv": ZooSpec(
        "learned-variance", "learned-variance UNet (16/24/32, 2C outputs, hybrid loss), 6k steps, seed 5",
        {"_class_name": "DDPMScheduler", **_LINEAR, "prediction_type": "epsilon", "clip_sample": False,
         "variance_type": "learned_range"},
        (16, 24, 32), 6000, 5),
    # Second models of the flow and learned-variance regimes, so a rule for one of them can be chosen on one model
    # and reported on another (leave-one-model-out needs two per regime).
    "digits-flow-b": ZooSpec(
        "flow", "smaller rectified-flow velocity UNet (8/16/24), FlowMatchEulerDiscreteScheduler shift 3 (SD3's), "
        "4k steps, seed 7",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
        (8, 16, 24), 4000, 7),
    "digits-lv-b": ZooSpec(
        "learned-variance", "smaller learned-variance UNet (8/16/24, 2C outputs, hybrid loss), cosine betas "
        "(IDDPM's), clipped x0, 4k steps, seed 8",
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
         "prediction_type": "epsilon", "clip_sample": True, "variance_type": "learned_range"},
        (8, 16, 24), 4000, 8),
    # A second guided model (Stable Diffusion's chain and DDIM config), so a rule for guidance can be chosen on one
    # guided model and reported on the other.
    "digits-cfg-b": ZooSpec(
        "cfg", "smaller class-conditional epsilon UNet (8/16/24), label dropout 0.1 (null label 10), scaled-linear "
        "betas with Stable Diffusion's DDIM config, 4k steps, seed 9",
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon", "clip_sample": False,
         "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"},
        (8, 16, 24), 4000, 9),
    # A third guided model: digits-cfg's width on digits-cfg-b's chain and grid (SDXL's Euler config), so a
    # guidance rule can be chosen on two guided models and reported on the third, and a difference between the
    # first two can be put on the chain or on the network.
    "digits-cfg-c": ZooSpec(
        "cfg", "class-conditional epsilon UNet (16/24/32), label dropout 0.1 (null label 10), scaled-linear betas "
        "with Stable Diffusion XL's Euler config, 4k steps, seed 10",
        {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon", "interpolation_type": "linear",
         "use_karras_sigmas": False, "steps_offset": 1, "timestep_spacing": "leading"},
        (16, 24, 32), 4000, 10),
    # v-prediction on a chain whose terminal SNR is not zero, in the config Stable Diffusion 2.x users run
    # (DPMSolverMultistepScheduler on SD 2.x's scaled-linear betas); trained after the fifteenth round, as a model
    # no choice has seen.
    "digits-v": ZooSpec(
        "v", "v-prediction UNet (16/24/32), scaled-linear betas (SD 2.x's), DPMSolverMultistepScheduler config, "
        "4k steps, seed 11",
        {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction", "steps_offset": 1,
         "algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "linspace"},
        (16, 24, 32), 4000, 11),
    # A third flow model at shift 1 (the plain rectified-flow grid of the first flow model), trained after the
    # fifteenth round, as a model no choice has seen.
    "digits-flow-c": ZooSpec(
        "flow", "rectified-flow velocity UNet (16/24/32), FlowMatchEulerDiscreteScheduler shift 1, 4k steps, seed 12",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0},
        (16, 24, 32), 4000, 12),
    # A fourth flow model trained the way Stable Diffusion 3 is (logit-normal sigma, shifted by the config's 3 in
    # training too), after the seventeenth round: the flow pair and digits-flow-c all saw uniform sigma in training,
    # so a placement that ignores the static shift has not yet been judged on a model whose training leaned on it.
    "digits-flow-d": ZooSpec(
        "flow", "rectified-flow velocity UNet (16/24/32) trained as SD3 is: logit-normal sigma shifted by 3, "
        "FlowMatchEulerDiscreteScheduler shift 3, 4k steps, seed 13",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
        (16, 24, 32), 4000, 13, flow_sigma="logit-normal-shifted"),
    "digits-vzsnr": ZooSpec(
        "v-zero-snr", "v-prediction UNet (16/24/32), scaled-linear betas rescaled to zero terminal SNR, 4k steps, "
        "seed 6", {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
                   "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "clip_sample": False,
                   "set_alpha_to_one": False},
        (16, 24, 32), 4000, 6),
}


def _check_name(name: str) -> ZooSpec:
    if name not in ZOO_SPECS:
        raise SystemExit(f"zoo: unknown model {name!r}; one of {', '.join(ZOO_SPECS)}")
    return ZOO_SPECS[name]


def _alphas_cumprod(config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "rescale_betas_zero_snr")
    return DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod.double()


# ------------------------------------------------------------------------------------------------ the losses
class ZooLoss:
    """One regime's training loss ``loss(net, x0, y, gen) -> scalar`` (y: labels or None) and its eval loss."""

    def __init__(self, spec: ZooSpec):
        self.spec = spec
        if spec.regime != "flow":
            abar = _alphas_cumprod(spec.scheduler)
            self.abar = abar.float()
            abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
            self.beta = (1 - abar / abar_prev).float()
            post_var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
            # log beta~_t with t = 0 clipped to t = 1 (IDDPM's posterior_log_variance_clipped)
            self.log_post_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])).float()
            self.coef_x0 = (abar_prev.sqrt() * (1 - abar / abar_prev) / (1 - abar)).float()
            self.coef_xt = ((1 - abar_prev) * (abar / abar_prev).sqrt() / (1 - abar)).float()

    def draw(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, t_model, eps)`` for a batch: integer t for a chain, ``1000 sigma`` for flow."""
        eps = torch.randn(x0.shape, generator=gen)
        if self.spec.regime == "flow":
            sigma = self._flow_sigma(x0.shape[0], gen)
            s = sigma.view(-1, 1, 1, 1)
            return (1 - s) * x0 + s * eps, sigma * 1000.0, eps
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        a = self.abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    def _flow_sigma(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.spec.flow_sigma == "uniform":
            return torch.rand(n, generator=gen)
        if self.spec.flow_sigma == "logit-normal-shifted":
            u = torch.sigmoid(torch.randn(n, generator=gen))
            return shift_flow_time(u, float(self.spec.scheduler.get("shift", 1.0)))
        raise ValueError(f"flow_sigma: {self.spec.flow_sigma!r}; one of 'uniform', 'logit-normal-shifted'")

    def __call__(self, net, x0: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator,
                 draw: tuple | None = None) -> torch.Tensor:
        xt, t, eps = draw if draw is not None else self.draw(x0, gen)
        out = net(xt, t, class_labels=y).sample if y is not None else net(xt, t).sample
        regime = self.spec.regime
        if regime == "flow":
            return F.mse_loss(out, eps - x0)
        if regime in ("v", "v-zero-snr"):
            a = self.abar[t].view(-1, 1, 1, 1)
            return F.mse_loss(out, a.sqrt() * eps - (1 - a).sqrt() * x0)
        if regime != "learned-variance":
            return F.mse_loss(out, eps)
        eps_hat, nu = out[:, :1], out[:, 1:]
        return F.mse_loss(eps_hat, eps) + self.vlb(xt, t, x0, eps_hat.detach(), nu).mean()

    def vlb(self, xt, t, x0, eps_hat, nu) -> torch.Tensor:
        """Per-sample ``L_t`` in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p_theta) for t > 0, decoder NLL at t = 0."""
        v = lambda c: c[t].view(-1, 1, 1, 1)  # noqa: E731
        a = v(self.abar)
        x0_hat = (xt - (1 - a).sqrt() * eps_hat) / a.sqrt()
        mean_true = v(self.coef_x0) * x0 + v(self.coef_xt) * xt
        mean_model = v(self.coef_x0) * x0_hat + v(self.coef_xt) * xt
        frac = (nu + 1) / 2
        log_var = frac * torch.log(v(self.beta)) + (1 - frac) * v(self.log_post_var)
        log_var_true = v(self.log_post_var)
        kl = 0.5 * (-1 + log_var - log_var_true + torch.exp(log_var_true - log_var)
                    + (mean_true - mean_model) ** 2 * torch.exp(-log_var))
        nll = -_discretised_gaussian_log_likelihood(x0, mean_model, log_var)
        per_dim = torch.where((t == 0).view(-1, 1, 1, 1), nll, kl) / math.log(2.0)
        return per_dim.flatten(1).mean(1)


def _discretised_gaussian_log_likelihood(x, mean, log_var, levels: int = 17) -> torch.Tensor:
    """``log P(x)`` of the pixel bin ``[x - 1/(L-1), x + 1/(L-1)]`` (edge bins open) under ``N(mean, e^log_var)``;
    the digits have ``L = 17`` levels in [-1, 1]."""
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-0.5 * log_var)
    cdf = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    upper = torch.where(x > 1 - 1e-3, torch.ones_like(x), cdf((x - mean + half) * inv_std))
    lower = torch.where(x < -1 + 1e-3, torch.zeros_like(x), cdf((x - mean - half) * inv_std))
    return torch.log((upper - lower).clamp(min=1e-12))


# ------------------------------------------------------------------------------------------------ training
def train(name: str, out_root: Path, docs: Path, threads: int, steps: int | None = None,
          command_line: str = "") -> dict[str, Any]:
    """Train zoo model ``name`` and write ``<out_root>/<name>/`` and ``<docs>/zoo/<name>_training.csv``."""
    spec = _check_name(name)
    steps = int(steps or spec.steps)
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    x_train, y_train = load_digits_images("train"), load_digits_labels("train")
    x_held, y_held = load_digits_images("heldout"), load_digits_labels("heldout")
    conditional = spec.regime == "cfg"
    net = make_unet(spec.channels, out_channels=2 if spec.regime == "learned-variance" else 1,
                    num_class_embeds=NULL_LABEL + 1 if conditional else None)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=0.0)
    loss_fn = ZooLoss(spec)
    eval_gen = torch.Generator().manual_seed(10_000 + spec.seed)
    held_x = x_held.repeat(4, 1, 1, 1)
    held_y = y_held.repeat(4) if conditional else None
    held_draw = loss_fn.draw(held_x, eval_gen)  # fixed (x_t, t, eps) triples for the held-out curve
    gen = torch.Generator().manual_seed(spec.seed)
    docs_dir = docs / "zoo"
    docs_dir.mkdir(parents=True, exist_ok=True)
    csv_path = docs_dir / f"{name}_training.csv"
    fields = ["step", "lr", "train_loss", "ema_eval_loss_train", "ema_eval_loss_heldout", "elapsed_s"]
    n, pos, running, count = x_train.shape[0], 0, 0.0, 0
    perm = torch.randperm(n, generator=gen)
    print(f"[zoo] {name}: {spec.description}; params={n_params(net):,} steps={steps} threads={threads}", flush=True)
    t0 = time.perf_counter()
    last_eval = float("nan")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for step in range(steps):
            if pos + spec.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + spec.batch_size]
            pos += spec.batch_size
            y = None
            if conditional:
                y = y_train[idx].clone()
                y[torch.rand(y.shape, generator=gen) < LABEL_DROPOUT] = NULL_LABEL
            lr = lr_at(step, peak=spec.lr, warmup=300, total=steps, final_ratio=0.02)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(net, x_train[idx], y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            ema_update(ema, net, min(0.999, (1.0 + step) / (10.0 + step)))
            running, count = running + loss.item(), count + 1
            if (step + 1) % 100 == 0 or step + 1 == steps:
                row = {"step": step + 1, "lr": f"{lr:.3e}", "train_loss": f"{running / count:.6f}",
                       "ema_eval_loss_train": "", "ema_eval_loss_heldout": "",
                       "elapsed_s": f"{time.perf_counter() - t0:.1f}"}
                running, count = 0.0, 0
                if (step + 1) % 500 == 0 or step + 1 == steps:
                    with torch.no_grad():
                        last_eval = float(loss_fn(ema, held_x, held_y, eval_gen, draw=held_draw))
                    row["ema_eval_loss_heldout"] = f"{last_eval:.6f}"
                    print(f"[zoo] {name} step {step + 1}: loss {row['train_loss']} EMA held-out {last_eval:.5f} "
                          f"({time.perf_counter() - t0:.0f}s)", flush=True)
                writer.writerow(row)
                fh.flush()
    wall = time.perf_counter() - t0
    return _save(name, spec, ema, out_root, steps, wall, last_eval, threads, command_line)


def _save(name: str, spec: ZooSpec, ema, out_root: Path, steps: int, wall: float, heldout_loss: float,
          threads: int, command_line: str) -> dict[str, Any]:
    out = out_root / name
    ema.save_pretrained(str(out / "unet"), safe_serialization=True)
    config = {k: v for k, v in spec.scheduler.items() if k != "_class_name"}
    getattr(diffusers, spec.scheduler["_class_name"])(**config).save_pretrained(str(out / "scheduler"))
    info = {
        "description": spec.description, "regime": spec.regime, "spec": {**asdict(spec), "steps": steps},
        "command": command_line, "data": {"split": "train", "split_seed": DIGITS_SPLIT_SEED, "scaling": "x/16*2-1"},
        "optimizer": "AdamW, linear warm-up 300 steps then cosine decay to 0.02x, grad clip 1.0, EMA 0.999",
        "final_ema_eval_loss_heldout": heldout_loss, "n_params": n_params(ema), "wall_time_s": round(wall, 1),
        "threads": threads, "torch": torch.__version__, "platform": platform.platform(),
    }
    if spec.regime == "cfg":
        info.update(null_class_label=NULL_LABEL, label_dropout=LABEL_DROPOUT)
    atomic_write_json(out / "training_info.json", info)
    print(f"[zoo] {name}: saved {out} ({wall:.0f}s)", flush=True)
    return info


# ------------------------------------------------------------------------------------------------ report
def report(name: str, out_root: Path, docs: Path, num_samples: int = 64) -> dict[str, Any]:
    """Loss curve and a grid of converged samples (labels ``i mod 10`` for the CFG model at guidance 1)."""
    _check_name(name)
    loaded = load_zoo_model(out_root / name, name=name, default_null_label=NULL_LABEL)
    if loaded.conditioning is not None:
        loaded = loaded.at_guidance(1.0)
    samples, meta = draw_reference(loaded, num_samples, seed=0, batch_size=num_samples)
    docs_dir = docs / "zoo"
    save_grid(samples.clamp(-1, 1), docs_dir / f"{name}_samples.png", f"{name}: {meta['source']}")
    csv_path = docs_dir / f"{name}_training.csv"
    if csv_path.is_file():
        plot_unet_curve(csv_path, docs_dir / f"{name}_loss.png", title=f"{name} training",
                        ylabel="training loss (regime's own, see the module doc)")
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skipstep.lab.testbeds.zoo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train one zoo model")
    t.add_argument("name", choices=sorted(ZOO_SPECS))
    t.add_argument("--steps", type=int, default=None, help="override the spec's training steps")
    r = sub.add_parser("report", help="sample grids and loss curves of trained zoo models")
    r.add_argument("names", nargs="+", choices=sorted(ZOO_SPECS))
    sub.add_parser("list", help="the zoo's specs")
    for q in (t, r):
        q.add_argument("--out", default=str(ZOO_ROOT), help="zoo root (default: the package's assets/zoo)")
        q.add_argument("--docs", default=str(DEFAULT_DOCS), help="docs folder (curves and grids go to DOCS/zoo)")
        q.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "list":
        for name, spec in ZOO_SPECS.items():
            print(f"{name:14s} {spec.regime:17s} {spec.description}")
        return 0
    torch.set_num_threads(args.threads)
    if args.what == "train":
        line = "python -m skipstep.lab.testbeds.zoo " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        train(args.name, Path(args.out), Path(args.docs), args.threads, args.steps, line)
    else:
        for name in args.names:
            print(name, report(name, Path(args.out), Path(args.docs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
