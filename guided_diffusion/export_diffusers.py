"""The ADM diffusion UNet and its schedule as a diffusers folder (UNet2DModel and DDPMScheduler).

    DIR/unet/config.json, DIR/unet/diffusion_pytorch_model.safetensors   -> UNet2DModel.from_pretrained(DIR, subfolder="unet")
    DIR/scheduler/scheduler_config.json                                   -> DDPMScheduler.from_pretrained(DIR, subfolder="scheduler")

Each ADM module has a diffusers counterpart with the same operations: a ResBlock is a ResnetBlock2D
(AdaGN is resnet_time_scale_shift="scale_shift", BigGAN resampling the "resnet" down/upsample types),
an AttentionBlock an Attention with separate to_q / to_k / to_v. The packed qkv convolution's output
rows are [heads][q,k,v][ch] in the legacy order and [q,k,v][heads][ch] in the new one; a permutation
of those rows gives the [q,k,v][heads][ch] layout of diffusers' projections in both cases. Writing
the folder needs only torch and safetensors (not diffusers). What UNet2DModel cannot express raises
ExportError with the reason.
"""

import json
import os

import torch as th

from .checkpoint import infer_architecture, write_safetensors
from .schedules import get_named_beta_schedule
from .unet import AttentionBlock, Downsample, EncoderUNetModel, ResBlock, SuperResModel, UNetModel, Upsample

DIFFUSERS_VERSION = "0.42.1"  # the diffusers release this layout is tested against (requirements.txt)
UNET_FILE = "diffusion_pytorch_model.safetensors"
BETA_SCHEDULE_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # informative: trained_betas rule


class ExportError(ValueError):
    """diffusers' UNet2DModel or DDPMScheduler cannot express this model; the message says why."""


CLASSIFIER_REFUSED = (
    "the noisy-image classifier (EncoderUNetModel) has no diffusers counterpart: UNet2DModel is a denoiser "
    "with an image-shaped output (export the classifier with --to safetensors instead)"
)
SUPER_RES_REFUSED = (
    "the super-resolution model takes a low-resolution image, upsampled and concatenated inside the model; "
    "UNet2DModel has no such input (only its noisy sample)"
)


def export(model, diffusion_config, out_dir):
    """Write model (a UNetModel with its weights) and its diffusion (a DiffusionConfig) to out_dir as
    unet/ and scheduler/ subfolders (weights in float32). Raises ExportError before writing anything."""
    config, weights, scheduler = unet_config(model), unet_weights(model), scheduler_config(diffusion_config)
    _write_json(os.path.join(out_dir, "unet", "config.json"), config)
    write_safetensors(weights, os.path.join(out_dir, "unet", UNET_FILE))
    _write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"), scheduler)


def refuse_foreign_state_dict(state_dict, image_channels):
    """Raise ExportError when a state dict {name: tensor} is a classifier's or a super-resolution
    model's (its input has twice image_channels: the noisy image and the upsampled low-resolution one)."""
    arch = infer_architecture({name: tuple(t.shape) for name, t in state_dict.items()})
    if arch["classifier_pool"] is not None:
        raise ExportError(CLASSIFIER_REFUSED)
    if arch.get("in_channels") == 2 * image_channels:
        raise ExportError(SUPER_RES_REFUSED)


def unet_config(model):
    """The UNet2DModel config (a JSON-able dict) of model's architecture; ExportError if there is none."""
    _check_expressible(model)
    levels = range(len(model.channel_mult))
    with_attention = [2**level in model.attention_ds for level in levels]
    resblocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    updown = any(isinstance(m.resample, (Upsample, Downsample)) for m in resblocks)
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else ("DownBlock2D", "UpBlock2D")
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": model.image_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,  # ADM's sinusoidal embedding is [cos, sin]
        "freq_shift": 0,
        "block_out_channels": [model.width(level) for level in levels],
        "layers_per_block": _res_blocks_per_level(model),
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in with_attention],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(with_attention)],
        "mid_block_type": "UNetMidBlock2D",
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "downsample_padding": 1,
        "dropout": resblocks[0].out_layers[2].p,
        "act_fn": "silu",
        "attention_head_dim": _head_dim(model),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,  # else diffusers leaves out the mid block's attention norm under scale_shift
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if resblocks[0].use_scale_shift_norm else "default",
        "mid_block_scale_factor": 1,
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": model.label_emb.num_embeddings if hasattr(model, "label_emb") else None,
    }


def unet_weights(model):
    """{UNet2DModel parameter name: float32 tensor} with model's weights (qkv split into to_q, to_k, to_v)."""
    _check_expressible(model)
    weights = {}
    for module, prefix in _counterparts(model):
        for name, tensor in _renamed_weights(module).items():
            weights[f"{prefix}.{name}"] = tensor.detach().float()
    return weights


def scheduler_config(diffusion_config):
    """The DDPMScheduler config (a JSON-able dict) of a DiffusionConfig's training schedule.

    trained_betas are the project's float64 betas (diffusers holds them, and the alpha_bar it multiplies
    from them, in float32; the project casts its float64 tables at use); beta_schedule names the
    schedule for readers only.
    """
    steps = diffusion_config.diffusion_steps
    if diffusion_config.rescale_timesteps and steps != 1000:
        raise ExportError(
            f"--rescale_timesteps True with --diffusion_steps {steps} feeds the model t * 1000 / {steps}; "
            "diffusers' schedulers feed it t itself"
        )
    betas = get_named_beta_schedule(diffusion_config.noise_schedule, steps)
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": steps,
        "beta_schedule": BETA_SCHEDULE_NAMES[diffusion_config.noise_schedule],
        "trained_betas": betas.tolist(),
        "variance_type": "learned_range" if diffusion_config.learn_sigma else "fixed_large",
        "prediction_type": "sample" if diffusion_config.predict_xstart else "epsilon",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }


def qkv_rows(order, heads, ch):
    """[3, heads * ch] long: the qkv convolution's output row of (q/k/v, head h, channel c) at [j, h * ch + c].

    order "legacy": row = h * 3ch + j * ch + c ([heads][q,k,v][ch]); "new": row = j * heads * ch + h * ch + c
    ([q,k,v][heads][ch]). Row j of the result indexes diffusers' to_q (j = 0), to_k (1) or to_v (2).
    """
    j, h, c = th.meshgrid(th.arange(3), th.arange(heads), th.arange(ch), indexing="ij")
    rows = h * 3 * ch + j * ch + c if order == "legacy" else j * heads * ch + h * ch + c
    return rows.reshape(3, heads * ch)


def _check_expressible(model):
    """Raise ExportError naming what UNet2DModel cannot express in model."""
    if isinstance(model, EncoderUNetModel):
        raise ExportError(CLASSIFIER_REFUSED)
    if isinstance(model, SuperResModel):
        raise ExportError(SUPER_RES_REFUSED)
    if not isinstance(model, UNetModel):
        raise TypeError(f"expected a UNetModel, got {type(model).__name__}")
    if not isinstance(model.input_blocks[0][0], th.nn.Conv2d):
        raise ExportError("only 2-D models can be exported: UNet2DModel takes images [N, C, H, W]")
    if model.width(0) != model.model_channels:
        raise ExportError(
            f"channel_mult starts with {model.channel_mult[0]}, not 1: UNet2DModel's timestep embedding is as "
            f"wide as the first level ({model.width(0)} channels), ADM's is --num_channels ({model.model_channels}) "
            "(the 512x512 model's 0.5,1,1,2,2,4,4 has no diffusers counterpart)"
        )
    if any(m.output_scale != 1 for m in model.modules() if isinstance(m, ResBlock)):
        raise ExportError(
            "--resblock_rescale True divides every residual sum by sqrt(2); UNet2DModel sets that factor "
            "only for its middle block (mid_block_scale_factor), not for the down and up blocks"
        )
    _head_dim(model)


def _head_dim(model):
    """UNet2DModel's attention_head_dim: channels per head, or None for one head per attention block."""
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    head_dims = sorted({b.channels // b.num_heads for b in blocks})
    if len(head_dims) == 1:
        return head_dims[0]
    if all(b.num_heads == 1 for b in blocks):
        return None
    widths = sorted({b.channels for b in blocks})
    raise ExportError(
        f"a fixed head count over attention blocks of different widths ({', '.join(map(str, widths))} channels) "
        f"gives heads of {', '.join(map(str, head_dims))} channels; UNet2DModel has one head size "
        "(attention_head_dim) for all blocks: export models trained with --num_head_channels (or --num_heads 1)"
    )


def _res_blocks_per_level(model):
    """num_res_blocks: each level has num_res_blocks + 1 output blocks."""
    return len(model.output_blocks) // len(model.channel_mult) - 1


def _counterparts(model):
    """Yield (ADM module, its UNet2DModel name) for every module with weights."""
    per_level = _res_blocks_per_level(model)
    levels = len(model.channel_mult)
    yield model.time_embed[0], "time_embedding.linear_1"
    yield model.time_embed[2], "time_embedding.linear_2"
    if hasattr(model, "label_emb"):
        yield model.label_emb, "class_embedding"
    yield model.input_blocks[0][0], "conv_in"
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        for j in range(per_level):
            yield from _with_attention(model.input_blocks[first + j], f"down_blocks.{level}", j)
        if level < levels - 1:
            yield model.input_blocks[first + per_level][0], f"down_blocks.{level}.downsamplers.0"
    resnet, attention, resnet_after = model.middle_block
    yield resnet, "mid_block.resnets.0"
    yield attention, "mid_block.attentions.0"
    yield resnet_after, "mid_block.resnets.1"
    for i in range(levels):
        for j in range(per_level + 1):
            block = model.output_blocks[i * (per_level + 1) + j]
            rises = i < levels - 1 and j == per_level
            yield from _with_attention(block[:-1] if rises else block, f"up_blocks.{i}", j)
            if rises:
                yield block[-1], f"up_blocks.{i}.upsamplers.0"
    yield model.out[0], "conv_norm_out"
    yield model.out[2], "conv_out"


def _with_attention(layers, prefix, j):
    """A resblock and its optional attention block: block j of a diffusers down or up block."""
    yield layers[0], f"{prefix}.resnets.{j}"
    if len(layers) > 1:
        yield layers[1], f"{prefix}.attentions.{j}"


# ADM submodule -> ResnetBlock2D / Upsample2D / Downsample2D submodule
_RESBLOCK_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                   "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESAMPLE_NAMES = {"conv": "conv", "op": "conv"}


def _renamed_weights(module):
    """{diffusers name inside the counterpart: tensor} of one ADM module's weights."""
    if isinstance(module, AttentionBlock):
        return _attention_weights(module)
    names = _RESBLOCK_NAMES if isinstance(module, ResBlock) else _RESAMPLE_NAMES
    renamed = {}
    for key, tensor in module.state_dict().items():
        sub, _, param = key.rpartition(".")
        renamed[f"{names[sub]}.{param}" if sub else key] = tensor
    return renamed


def _attention_weights(block):
    """AttentionBlock -> Attention: group_norm, to_q / to_k / to_v (rows of qkv), to_out.0 (proj_out)."""
    rows = qkv_rows(block.attention.order, block.num_heads, block.channels // block.num_heads)
    weight, bias = block.qkv.weight[:, :, 0], block.qkv.bias  # [3C, C, 1] conv1d -> [3C, C] linear
    weights = {"group_norm.weight": block.norm.weight, "group_norm.bias": block.norm.bias,
               "to_out.0.weight": block.proj_out.weight[:, :, 0], "to_out.0.bias": block.proj_out.bias}
    for name, r in zip(("to_q", "to_k", "to_v"), rows):
        weights[f"{name}.weight"], weights[f"{name}.bias"] = weight[r], bias[r]
    return weights


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
