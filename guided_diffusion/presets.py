"""The exact flags of every checkpoint released with the paper, selectable with `--preset NAME`.

The attention order (`use_new_attention_order`) and the head count change no state-dict key, so a
checkpoint loaded with a wrong flag loads strictly and samples garbage: presets rule that out.
"""

# What every released diffusion model and upsampler has in common.
_ADM = dict(attention_resolutions="32,16,8", diffusion_steps=1000, learn_sigma=True, noise_schedule="linear",
            num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)
_ADM256 = dict(_ADM, image_size=256, num_channels=256, num_head_channels=64)

PRESETS = {
    # ImageNet diffusion models (64x64_diffusion.pt ... 512x512_diffusion.pt).
    "adm64_cond": dict(_ADM, class_cond=True, dropout=0.1, image_size=64, noise_schedule="cosine", num_channels=192,
                       num_head_channels=64, num_res_blocks=3, use_new_attention_order=True),
    "adm128_cond": dict(_ADM, class_cond=True, image_size=128, num_channels=256, num_heads=4),
    "adm256_cond": dict(_ADM256, class_cond=True),
    "adm256_uncond": dict(_ADM256, class_cond=False),
    "adm512_cond": dict(_ADM256, class_cond=True, image_size=512, use_fp16=False),
    # LSUN bedroom / cat / horse (lsun_horse_nodropout.pt: add --dropout 0.0).
    "lsun256": dict(_ADM256, class_cond=False, dropout=0.1),
    # Upsamplers (64_256_upsampler.pt, 128_512_upsampler.pt).
    "upsampler64_256": dict(_ADM, class_cond=True, large_size=256, small_size=64, num_channels=192, num_heads=4),
    "upsampler128_512": dict(_ADM, attention_resolutions="32,16", class_cond=True, large_size=512, small_size=128,
                             num_channels=192, num_head_channels=64),
    # Noisy-image classifiers (64x64_classifier.pt ... 512x512_classifier.pt); the rest are the defaults.
    "classifier64": dict(image_size=64, classifier_depth=4),
    "classifier128": dict(image_size=128, classifier_attention_resolutions="32,16,8", classifier_depth=2,
                          classifier_width=128, classifier_pool="attention", classifier_resblock_updown=True,
                          classifier_use_scale_shift_norm=True),
    "classifier256": dict(image_size=256),
    "classifier512": dict(image_size=512),
}


def preset_flags(names):
    """Comma-separated preset names -> {flag: value} of them all (later presets win on shared flags)."""
    flags = {}
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
        flags.update(PRESETS[name])
    return flags
