"""Tiny random-weight model directories of every regime (8x8, T=20, saved with diffusers' save_pretrained): the
stand-ins of the zoo models in the tests (milliseconds per call, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

T = 20


def tiny_unet(root: Path, out_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0) -> None:
    torch.manual_seed(seed)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds
                ).save_pretrained(Path(root) / "unet")


def conditional_dir(root: Path, null_label: int | None = 10, info_key: str = "null_class_label") -> Path:
    """A class-conditional epsilon UNet (11 class embeddings: labels 0..9 and the null label 10)."""
    tiny_unet(root, num_class_embeds=11)
    DDPMScheduler(num_train_timesteps=T).save_pretrained(Path(root) / "scheduler")
    info = {"description": "tiny conditional stand-in", "regime": "class-conditional epsilon"}
    if null_label is not None:
        info[info_key] = null_label
    (Path(root) / "training_info.json").write_text(json.dumps(info))
    return Path(root)


def flow_dir(root: Path, shift: float = 1.0) -> Path:
    """A rectified-flow velocity UNet (FlowMatchEulerDiscreteScheduler config; the UNet gets sigma * T)."""
    tiny_unet(root)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift).save_pretrained(Path(root) / "scheduler")
    return Path(root)


def learned_variance_dir(root: Path) -> Path:
    """A [eps, v] UNet (2C outputs) on the cosine chain with variance_type='learned_range'."""
    tiny_unet(root, out_channels=2)
    DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                  clip_sample=False).save_pretrained(Path(root) / "scheduler")
    return Path(root)


def vzsnr_dir(root: Path) -> Path:
    """A v-prediction UNet on a zero-terminal-SNR scaled-linear chain with trailing spacing."""
    tiny_unet(root)
    DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"
                  ).save_pretrained(Path(root) / "scheduler")
    return Path(root)
