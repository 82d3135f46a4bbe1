"""Train DALL-E 2's decoder (unCLIP) on a folder of images: each image's unit CLIP image embedding (computed once
by --clip_model_path's image encoder and cached in --embedding_cache) conditions the UNet, projected into the
timestep embedding and into --clip_emb_tokens context tokens. --clip_emb_dropout_prob zeroes it in training, which
trains the unconditional branch of classifier-free guidance. --clip_caption True also conditions on the caption
(`<stem>.txt` beside each image, as text_train.py reads them). unclip_sample.py then needs --model_path alone.

    python scripts/unclip_train.py --data_dir DIR --clip_model_path clip_run/model010000.pt --batch_size 32 \\
        --image_size 64 --num_channels 128 --num_res_blocks 2 --xf_width 512
    mpiexec -n 8 python scripts/unclip_train.py --data_dir DIR --clip_model_path CLIP.pt --clip_caption True \\
        --caption_dropout_prob 0.2 --embedding_cache DIR_embeddings.npz
"""

import dataclasses
import os

from guided_diffusion import dist_util, logger
from guided_diffusion.build import build_diffusion, build_unclip_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import TextDiffusionConfig, UnCLIPModelConfig, UnCLIPTrainConfig
from guided_diffusion.errors import UsageError, run
from guided_diffusion.image_datasets import list_image_files, read_captions
from guided_diffusion.train_setup import float32_init, run_config, start_training, training_images
from guided_diffusion.train_util import TrainLoop
from guided_diffusion.unclip.data import with_embeddings
from guided_diffusion.unclip.embeddings import (cached_embeddings, embedding_dim, encoder_fingerprint,
                                               load_clip_for_embeddings)

CONFIGS = (UnCLIPModelConfig, TextDiffusionConfig, UnCLIPTrainConfig)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main():
    clips = []

    def check_run(configs):
        """Before anything is written: the CLIP loads, its width agrees with --clip_emb_dim, captions are there."""
        model_config, _, train = configs
        clip = load_clip_for_embeddings(model_config.clip_model_path)
        dim = embedding_dim(clip)
        if model_config.clip_emb_dim not in (0, dim):
            raise UsageError(f"--clip_emb_dim {model_config.clip_emb_dim} but --clip_model_path "
                             f"{model_config.clip_model_path} gives {dim}-dimensional embeddings: leave --clip_emb_dim "
                             "out (it is the CLIP's)")
        if model_config.clip_caption:
            read_captions(list_image_files(train.data_dir))
        clips.append((clip, dim))

    model_config, diffusion_config, train = start_training(create_argparser(), CONFIGS, check_data=check_run)
    clip, dim = clips[0]
    clip = clip.to(dist_util.dev())
    model_config = dataclasses.replace(model_config, clip_emb_dim=dim)
    cache = train.embedding_cache or os.path.join(logger.get_dir(), "clip_embeddings.npz")
    embeddings = cached_embeddings(cache, clip, train.data_dir, train.embedding_batch_size, dist_util.dev())
    fingerprint = encoder_fingerprint(clip)
    del clip

    logger.log("creating model and diffusion...")
    model = build_unclip_unet(float32_init(model_config), diffusion_config.learn_sigma).to(dist_util.dev())
    diffusion = build_diffusion(diffusion_config)

    logger.log("creating data loader...")
    data = training_images(train, model_config.image_size, False, model_config.num_classes,
                           model_config.image_channels,
                           text_ctx=model_config.text_ctx if model_config.clip_caption else None)
    data = with_embeddings(data, embeddings, train.data_dir)

    logger.log("training...")
    config = dict(run_config((model_config, diffusion_config), train, []),
                  unclip={"clip_model_path": model_config.clip_model_path, "clip_fingerprint": fingerprint,
                          "embedding_cache": cache})
    TrainLoop(model=model, diffusion=diffusion, data=data, config=train, use_fp16=model_config.use_fp16,
              run_config=config).run_loop()


if __name__ == "__main__":
    run(main)
