"""The exact flags of every checkpoint released with the paper, selectable with `--preset NAME`.

The attention order (`use_new_attention_order`) and the head count change no state-dict key, so a
checkpoint loaded with a wrong flag loads strictly and samples garbage: presets rule that out.
"""

PRESETS = {
    # ImageNet diffusion models (64x64_diffusion.pt ... 512x512_diffusion.pt).
    "adm64_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 "
    "--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True "
    "--use_scale_shift_norm True",
    "adm128_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "adm256_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "adm256_uncond": "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "adm512_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True",
    # LSUN bedroom / cat / horse (lsun_horse_nodropout.pt: add --dropout 0.0).
    "lsun256": "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    # Upsamplers (64_256_upsampler.pt, 128_512_upsampler.pt).
    "upsampler64_256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
    "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "upsampler128_512": "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 "
    "--small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    # Noisy-image classifiers (64x64_classifier.pt ... 512x512_classifier.pt).
    "classifier64": "--image_size 64 --classifier_depth 4",
    "classifier128": "--image_size 128 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 "
    "--classifier_width 128 --classifier_pool attention --classifier_resblock_updown True "
    "--classifier_use_scale_shift_norm True",
    "classifier256": "--image_size 256",
    "classifier512": "--image_size 512",
}


def preset_argv(names):
    """Comma-separated preset names -> the list of command-line tokens they stand for."""
    argv = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
        argv += PRESETS[name].split()
    return argv
