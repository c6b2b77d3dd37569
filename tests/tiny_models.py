"""Tiny randomly initialised diffusers components, built from configs (offline, CPU, milliseconds per call).

Shared by the pipeline tests. Every builder seeds torch itself, so a component is the same in every test run.
Tokenizers are character-level CLIP BPE vocabularies written to a folder the caller provides (``tmp_path``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DiTTransformer2DModel,
    UNet2DConditionModel,
    WanTransformer3DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


#: A Stable-Diffusion-style scheduler config (the one SD 1.x ships): scaled_linear betas, leading spacing with
#: steps_offset=1, no clipping, DDIM's set_alpha_to_one=False.
SD_SCHEDULER_CONFIG = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    timestep_spacing="leading",
    clip_sample=False,
    set_alpha_to_one=False,
)

TOKENIZER_MAX_LENGTH = 16


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (lowercase letters) written to ``folder`` and loaded from it."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                         model_max_length=TOKENIZER_MAX_LENGTH)


def _clip_config(vocab_size: int, hidden: int, projection_dim: int | None = None) -> CLIPTextConfig:
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=TOKENIZER_MAX_LENGTH,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, **extra)


def clip_text_encoder(vocab_size: int, hidden: int = 16, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(_clip_config(vocab_size, hidden)).eval()


def clip_text_encoder_with_projection(vocab_size: int, hidden: int = 16, projection_dim: int = 16,
                                      seed: int = 1) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(_clip_config(vocab_size, hidden, projection_dim)).eval()


def vae(latent_channels: int = 4, seed: int = 0) -> AutoencoderKL:
    """Downsamples x2 (two blocks)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels, norm_num_groups=4, layers_per_block=1,
    ).eval()


def sd_unet(sample_size: int = 16, cross_attention_dim: int = 16, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=4, attention_head_dim=4,
    ).eval()


def sdxl_unet(sample_size: int = 16, text_hidden: int = 16, projection_dim: int = 16, time_embed_dim: int = 4,
              seed: int = 0) -> UNet2DConditionModel:
    """SDXL layout: cross-attention on both encoders' hidden states (concatenated), ``text_time`` added
    conditioning from the pooled projection and the six size/crop ids."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * text_hidden, norm_num_groups=4, attention_head_dim=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + projection_dim,
    ).eval()


def sd_components(tmp_path: Path) -> dict:
    tokenizer = clip_tokenizer(Path(tmp_path) / "tokenizer")
    return dict(unet=sd_unet(), vae=vae(), text_encoder=clip_text_encoder(len(tokenizer)), tokenizer=tokenizer)


def sdxl_components(tmp_path: Path) -> dict:
    tokenizer = clip_tokenizer(Path(tmp_path) / "tokenizer")
    tokenizer_2 = clip_tokenizer(Path(tmp_path) / "tokenizer_2")
    return dict(
        unet=sdxl_unet(), vae=vae(), text_encoder=clip_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder_with_projection(len(tokenizer_2)), tokenizer_2=tokenizer_2,
    )


def dit_transformer(learned_sigma: bool = True, sample_size: int = 8, in_channels: int = 4,
                    seed: int = 0) -> DiTTransformer2DModel:
    """A DiT with ``out_channels = 2 * in_channels`` (eps + variance values) when ``learned_sigma``."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
        out_channels=2 * in_channels if learned_sigma else in_channels, num_layers=1, sample_size=sample_size,
        patch_size=2, num_embeds_ada_norm=1000,
    ).eval()


def wan_components(seed: int = 0) -> dict:
    """Wan 2.1 layout (flow matching, 5-D latents ``(B, 16, frames, H, W)``); no text encoder (pass embeddings
    of width 32)."""
    torch.manual_seed(seed)
    wan_vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    return dict(vae=wan_vae, transformer=transformer, tokenizer=None, text_encoder=None)
