"""
Export a checkpoint: as a .safetensors file (the same state dict, tensors only; every --model_path and
--classifier_path reads it), or with its diffusion schedule as a diffusers folder that diffusers loads
offline (the model's flags come from its run's train_config.json, or from the release's preset its
shapes match, as for sampling):

    python scripts/export.py --to safetensors --model_path 64x64_diffusion.pt --out 64x64_diffusion.safetensors
    python scripts/export.py --to diffusers --model_path 64x64_diffusion.pt --out adm64

    UNet2DModel.from_pretrained("adm64", subfolder="unet"), DDPMScheduler.from_pretrained("adm64", subfolder="scheduler")

Refused for diffusers, with the reason: the classifiers, the upsamplers, the 128x128 model (4 heads over
levels of different widths) and the 512x512 model (first channel multiplier 0.5).
"""

import dataclasses
import os

from guided_diffusion.build import build_unet
from guided_diffusion.checkpoint import check_state_dict_fits, read_state_dict, write_safetensors
from guided_diffusion.cli import config_parser, configs_of, parse_flags
from guided_diffusion.config import DiffusionConfig, ExportConfig, ModelConfig
from guided_diffusion.errors import run as run_script
from guided_diffusion.export_diffusers import export, refuse_foreign_state_dict
from guided_diffusion.run_flags import resolve_configs

CONFIGS = (ModelConfig, DiffusionConfig, ExportConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    values, origins = parse_flags(create_argparser())
    if values["to"] == "safetensors":  # the state dict as it is: no flags needed
        model_config, diffusion_config, run = configs_of(values, CONFIGS)
    else:
        (model_config, diffusion_config, run), lines = resolve_configs(values, origins, CONFIGS)
        print("\n".join(lines))
    check_out(run)
    state_dict = read_state_dict(run.model_path)
    if run.to == "safetensors":
        write_safetensors(state_dict, run.out)
    else:
        export(loaded_unet(model_config, diffusion_config, state_dict, run.model_path), diffusion_config, run.out)
    print(f"wrote {run.out}")


def check_out(run):
    """ValueError unless --model_path is given and --out names a new file (or a new or empty folder)."""
    if not run.model_path or not run.out:
        raise ValueError("give the checkpoint to convert with --model_path and what to write with --out")
    if run.to == "safetensors" and not run.out.endswith(".safetensors"):
        raise ValueError(f"--out {run.out!r} must end in .safetensors")
    if run.to == "safetensors" and os.path.exists(run.out):
        raise ValueError(f"--out {run.out!r} exists; choose a new file name (nothing is overwritten)")
    if run.to == "diffusers" and os.path.exists(run.out) and (not os.path.isdir(run.out) or os.listdir(run.out)):
        raise ValueError(f"--out {run.out!r} exists and is not an empty folder; choose a new folder name")


def loaded_unet(model_config, diffusion_config, state_dict, path):
    """The UNet of the flags (in float32) holding state_dict; ExportError for a classifier or upsampler."""
    refuse_foreign_state_dict(state_dict, model_config.image_channels)
    model = build_unet(dataclasses.replace(model_config, use_fp16=False), diffusion_config.learn_sigma)
    check_state_dict_fits(model, state_dict, source=path)
    model.load_state_dict(state_dict)
    return model


if __name__ == "__main__":
    run_script(main)
