"""What a seed guarantees across batch sizes and rank counts (README, "Sampling and guidance"): sample i
draws everything from its own (seed, i) streams, so any split of the indices into batches (which is
all a rank count changes) gives the same images up to float round-off: float samples within 1e-3,
uint8 images at most one level apart, in under 1% of the pixels. Checked for every sampler and kind
of guidance, and for super-resolution; tests/test_sampling.py runs 1 and 2 real ranks."""

import pytest
import torch as th

from guided_diffusion import samplers
from guided_diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from guided_diffusion.sample_io import to_uint8_nhwc
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.script_util import (
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 16, 16)
SPLITS = [range(0, 1), range(1, 3), range(3, 6)]  # one batch of 6 vs batches of 1, 2 and 3
SMALL = dict(num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8", num_heads=2,
             learn_sigma=True, diffusion_steps=100, timestep_respacing="8", noise_schedule="cosine")


def randomised(module):
    """A module with small random weights (no zero-initialised output), in eval mode."""
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for param in module.parameters():
            param.copy_(th.randn(param.shape, generator=generator) * 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def networks():
    model, diffusion = create_model_and_diffusion(**dict(model_and_diffusion_defaults(), image_size=16, class_cond=True,
                                                         num_classes=4, class_dropout_prob=0.1, **SMALL))
    classifier = create_classifier(**dict(classifier_defaults(), image_size=16, classifier_width=32,
                                          classifier_depth=1, classifier_channel_mult="1,2",
                                          classifier_attention_resolutions="8", num_classes=4))
    return randomised(model), diffusion, randomised(classifier)


def assert_same_images(whole, parts):
    """Equal up to float round-off, as the README states."""
    assert (whole - parts).abs().max() < 1e-3
    levels = (to_uint8_nhwc(whole).int() - to_uint8_nhwc(parts).int()).abs()
    assert levels.max() <= 1 and (levels > 0).float().mean() < 0.01


@pytest.mark.parametrize("guidance", ["none", "classifier", "classifier-free"])
@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
def test_a_seed_gives_the_same_images_whatever_the_batches(networks, sampler, guidance):
    model, diffusion, classifier = networks
    guides = {"none": (), "classifier": ClassifierGuidance(classifier, 3.0),
              "classifier-free": ClassifierFreeGuidance(3.0, model.null_class)}[guidance]

    def draw(indices):
        batch = SeededBatch(7, indices)
        return samplers.sample(diffusion, model, (len(batch), *SHAPE), sampler=sampler, guidance=guides,
                               noise=batch.noise((len(batch), *SHAPE)), model_kwargs={"y": batch.labels(4)},
                               noise_fn=batch.noise_like)

    whole = draw(range(6))
    assert_same_images(whole, th.cat([draw(split) for split in SPLITS]))
    assert (whole[0] - whole[1]).abs().max() > 0.1  # different indices, different images


def test_super_resolution_gives_the_same_images_whatever_the_batches():
    flags = dict(sr_model_and_diffusion_defaults(), large_size=16, small_size=8, **SMALL)
    model, diffusion = sr_create_model_and_diffusion(**flags)
    model = randomised(model)
    low_res = th.rand(6, 3, 8, 8, generator=th.Generator().manual_seed(1)) * 2 - 1

    def draw(indices):
        batch = SeededBatch(7, indices)
        return samplers.sample(diffusion, model, (len(batch), *SHAPE), sampler="ddpm",
                               noise=batch.noise((len(batch), *SHAPE)), noise_fn=batch.noise_like,
                               model_kwargs={"low_res": low_res[list(indices)]})

    assert_same_images(draw(range(6)), th.cat([draw(split) for split in SPLITS]))
