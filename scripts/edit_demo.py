"""
The editing demo: the quickstart's Fashion-MNIST model (scripts/quickstart.sh) as the prior for
restoration and editing of held-out *test* images, through the same code as scripts/image_edit.py
(guided_diffusion/editing/run.py, methods.py), judged by the clean classifier of the quickstart
(datasets/fashion_mnist_judge.py).

    RUN=runs/qs bash scripts/quickstart.sh               # once: the model and the judge's cache
    python scripts/edit_demo.py --run runs/qs            # the panel: 10 images, one per class (minutes on a CPU)
    python scripts/edit_demo.py --run runs/qs --full --images 100   # docs/editing.md's table and curves

The panel: inpainting the central 14x14 box (RePaint), x4 super-resolution from 7x7 (DPS), SDEdit toward
a neighbouring class (classifier-free guidance), and null-class samples steered by a second clean
classifier through the model (datasets/fashion_mnist_guide.py). --full adds DPS inpainting, deblurring
(sigma 2), SDEdit's accuracy and distance against the strength, DDIM inversion's PSNR against the steps,
and the cost of each task against plain sampling with the same steps. Writes panel.png, one
edit_grid_*.png per task, results.json and the printed table in --out (default RUN/edit_demo).
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import time

import numpy as np
import torch as th
from PIL import Image

from guided_diffusion import samplers
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.checkpoint import load_checkpoint
from guided_diffusion.config import DiffusionConfig, EditConfig, ModelConfig
from guided_diffusion.editing import run as edit_run
from guided_diffusion.editing.methods import with_label
from guided_diffusion.editing.operators import bicubic_upsample, pseudo_inverse_upsample
from guided_diffusion.guidance import ClassifierFreeGuidance, CleanImageGuidance, clean_classifier_loss
from guided_diffusion.image_metrics import psnr
from guided_diffusion.sample_io import save_edit_grid, save_grid, to_uint8_nhwc
from guided_diffusion.sample_seeds import SeededBatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SDEdit's targets: each class toward a neighbouring one ("turn this shirt into a t-shirt").
TARGETS = {0: 6, 1: 3, 2: 4, 3: 0, 4: 2, 5: 7, 6: 0, 7: 5, 8: 2, 9: 7}
GUIDANCE_SCALE = 4.0  # classifier-free W of SDEdit toward the target (the quickstart's)
# Each task's method and steps (--timestep_respacing), tuned on the quickstart model (docs/editing.md).
REPAINT = dict(task="inpaint", method="repaint", mask="box", steps=25, jump_length=5, resamplings=5)
DPS_INPAINT = dict(task="inpaint", method="dps", mask="box", sampler="ddpm", steps=50, zeta=1.0)
DPS_SR = dict(task="super_res", method="dps", factor=4, sampler="ddpm", steps=50, zeta=3.0)
DPS_DEBLUR = dict(task="deblur", method="dps", blur_sigma=2.0, sampler="ddpm", steps=50, zeta=1.0)
SDEDIT = dict(task="sdedit", sampler="ddpm", steps=25, strength=0.6)
STRENGTHS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
INVERSION_STEPS = (10, 25, 50, 100)
CLEAN_GUIDANCE = dict(sampler="ddpm", steps=50, scale=1.0)


def datasets_module(name):
    """A module of datasets/ (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_quickstart_model(run):
    """(model in eval mode, ModelConfig, DiffusionConfig) of the newest EMA checkpoint in RUN/model, built
    from the flags its train_config.json recorded."""
    folder = os.path.join(run, "model")
    checkpoints = sorted(f for f in os.listdir(folder) if f.startswith("ema_")) if os.path.isdir(folder) else []
    if not checkpoints:
        raise ValueError(f"no ema_*.pt in {folder}: train the model first with RUN={run} bash scripts/quickstart.sh")
    with open(os.path.join(folder, "train_config.json")) as f:
        flags = json.load(f)["model_flags"]
    configs = [cls(**{k: v for k, v in flags.items() if k in {f.name for f in dataclasses.fields(cls)}})
               for cls in (ModelConfig, DiffusionConfig)]
    model = build_unet(configs[0], configs[1].learn_sigma)
    load_checkpoint(model, os.path.join(folder, checkpoints[-1]))
    return model.eval(), configs[0], configs[1]


def held_out(fashion, per_class, image_size):
    """The first per_class test images of each class, one of each class in turn (classes 0-9, then again):
    (x [10 per_class, 1, S, S] in [-1, 1], labels [N])."""
    images, labels = fashion.load_split("t10k", image_size)
    index = np.stack([np.flatnonzero(labels == c)[:per_class] for c in range(10)], axis=1).reshape(-1)
    x = th.from_numpy(images[index]).float()[:, None] / 127.5 - 1
    return x, th.from_numpy(labels[index].astype(np.int64))


def quantised(x):
    """x [N, 1, H, W] in [-1, 1] as the saved uint8 would decode: the outputs every number is taken from."""
    return to_uint8_nhwc(x)[..., :1].permute(0, 3, 1, 2).float() / 127.5 - 1


class Demo:
    """The quickstart model, its test images x [N, 1, H, W] with labels [N] and the judge; runs and measures
    each task, keeping every output (columns) and number (results) by name."""

    def __init__(self, model, model_config, diffusion_config, x, labels, predict, seed, out, costs=False):
        """predict(images uint8 [N, H, W, C]) -> the judge's classes [N]; costs: also time plain sampling."""
        self.model, self.model_config, self.diffusion_config = model, model_config, diffusion_config
        self.x, self.labels, self.predict, self.seed, self.out = x, labels, predict, seed, out
        self.null = th.full_like(labels, model.null_class)
        self.plain = {} if costs else None  # (sampler, steps) -> seconds per image of plain sampling
        self.columns, self.results = {"original": x}, {}
        self.started = time.time()

    def diffusion(self, steps):
        return build_diffusion(dataclasses.replace(self.diffusion_config, timestep_respacing=str(steps)))

    def accuracy(self, images, labels):
        """The judge's accuracy on images [N, 1, H, W] in [-1, 1] against labels [N]."""
        return float((self.predict(to_uint8_nhwc(images).numpy()) == labels).float().mean())

    def edit(self, name, spec, labels=None, guidance=()):
        """Run one image_edit task (spec: EditConfig fields plus steps) on every image: (outputs quantised
        [N, 1, H, W], edit_run's metrics)."""
        fields = {k: v for k, v in spec.items() if k != "steps"}
        config = EditConfig(**fields, seed=self.seed, progress=False)
        task = edit_run.edit_task(config, self.model_config.image_size)
        diffusion = self.diffusion(spec["steps"])
        y = self.null if labels is None else labels
        start = time.time()
        out = edit_run.edit(task, diffusion, self.model, self.x, SeededBatch(self.seed, range(len(self.x))),
                            guidance, {"y": y})
        seconds = time.time() - start
        out = quantised(out)
        metrics = edit_run.edit_metrics(task, self.x, out, self.seed, seconds)
        metrics.update(steps=spec["steps"], plain_seconds_per_image=self.plain_cost(config.sampler, spec["steps"]))
        save_edit_grid(self.x[:20], edit_run.degraded(task, diffusion, self.x, self.seed)[:20], out[:20],
                       os.path.join(self.out, f"edit_grid_{name}.png"))
        return out, metrics

    def plain_cost(self, sampler, steps):
        """Seconds per image of plain (null-class) sampling of as many images with the same sampler and steps
        (None unless the Demo measures costs)."""
        if self.plain is None:
            return None
        if (sampler, steps) not in self.plain:
            batch = SeededBatch(self.seed, range(len(self.x)))
            start = time.time()
            samplers.sample(self.diffusion(steps), self.model, tuple(self.x.shape), sampler=sampler,
                            noise=batch.noise_like(self.x), noise_fn=batch.noise_like, model_kwargs={"y": self.null})
            self.plain[(sampler, steps)] = (time.time() - start) / len(self.x)
        return self.plain[(sampler, steps)]

    def record(self, name, outputs, metrics):
        """Keep a task's outputs and numbers, and print the numbers."""
        self.results[name], self.columns[name] = metrics, outputs
        numbers = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"[{time.time() - self.started:.0f} s] {name}: {numbers}", flush=True)


def inpainting(demo, full):
    """The central 14x14 box: RePaint (and DPS with --full); known pixels, judge accuracies."""
    x, labels = demo.x, demo.labels
    masked = edit_run.edit_task(EditConfig(task="inpaint", mask="box"), demo.model_config.image_size).operator
    demo.columns["masked"] = masked.degraded(masked.A(x))
    known = masked.known_mask.bool().expand_as(x)
    for name, spec in [("repaint", REPAINT)] + ([("dps_inpaint", DPS_INPAINT)] if full else []):
        outputs, metrics = demo.edit(name, spec)
        metrics.update(known_max_error_uint8=float(((outputs - x)[known].abs() * 127.5).max()),
                       known_psnr=psnr(outputs, x, mask=masked.known_mask, reduction="mean").item(),
                       accuracy=demo.accuracy(outputs, labels), original_accuracy=demo.accuracy(x, labels),
                       masked_accuracy=demo.accuracy(demo.columns["masked"], labels))
        demo.record(name, outputs, metrics)


def super_resolution(demo):
    """x4 from 7x7 by DPS, beside bicubic upsampling."""
    x, labels = demo.x, demo.labels
    low = th.nn.functional.avg_pool2d(x, 4)
    demo.columns["7x7"] = pseudo_inverse_upsample(low, 4)
    demo.columns["bicubic"] = bicubic_upsample(low, 4)
    outputs, metrics = demo.edit("dps_super_res", DPS_SR)
    metrics.update(accuracy=demo.accuracy(outputs, labels), original_accuracy=demo.accuracy(x, labels),
                   bicubic_accuracy=demo.accuracy(demo.columns["bicubic"], labels),
                   bicubic_psnr=psnr(quantised(demo.columns["bicubic"]), x, reduction="mean").item())
    demo.record("dps_super_res", outputs, metrics)


def sdedit(demo, strengths):
    """SDEdit toward TARGETS with classifier-free guidance at each strength: target accuracy, distance."""
    targets = th.tensor([TARGETS[int(c)] for c in demo.labels])
    cfg = (ClassifierFreeGuidance(GUIDANCE_SCALE, demo.model.null_class),)
    for strength in strengths:
        name = f"sdedit_{strength:g}"
        outputs, metrics = demo.edit(name, dict(SDEDIT, strength=strength, target_class=0), targets, cfg)
        metrics.update(strength=strength, target_accuracy=demo.accuracy(outputs, targets),
                       source_accuracy=demo.accuracy(outputs, demo.labels),
                       distance=float((outputs - demo.x).pow(2).flatten(1).mean(1).sqrt().mean()))
        demo.record(name, outputs, metrics)


def clean_guidance(demo, guide_module, guide_cache, judge_module):
    """Null-class samples, unguided and steered by the guide classifier through the model, toward the classes
    0-9 in turn; returns those classes [N]."""
    guide_net, guide_test = guide_module.load_or_train_guide(guide_cache, demo.model_config.image_size)
    guide_net.eval().requires_grad_(False)
    wanted = th.arange(len(demo.x)) % 10
    for name, scale in [("null_class", 0.0), ("clean_guided", CLEAN_GUIDANCE["scale"])]:
        guidance = (CleanImageGuidance(clean_classifier_loss(guide_net), scale),) if scale else ()
        outputs, seconds = guided_samples(demo, wanted, guidance)
        guide_says = judge_module.predict(guide_net, to_uint8_nhwc(outputs).numpy())
        metrics = dict(scale=scale, accuracy=demo.accuracy(outputs, wanted), guide_test_accuracy=guide_test,
                       guide_accuracy=float((guide_says == wanted).float().mean()),
                       seconds_per_image=seconds / len(demo.x), steps=CLEAN_GUIDANCE["steps"],
                       plain_seconds_per_image=demo.plain_cost(CLEAN_GUIDANCE["sampler"], CLEAN_GUIDANCE["steps"]))
        demo.record(name, outputs, metrics)
    return wanted


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the quickstart's RUN folder (its model/ is used)")
    parser.add_argument("--out", default="", help="where to write (default: RUN/edit_demo)")
    parser.add_argument("--images", type=int, default=10, help="test images per task, the first of each class in "
                        "turn (a multiple of 10)")
    parser.add_argument("--full", action="store_true", help="also DPS inpainting, deblurring, the strength and "
                        "step curves and the cost table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-image random streams")
    parser.add_argument("--judge_cache", default="data/fashion_judge_28px.pt", help="the judge (quickstart's)")
    parser.add_argument("--guide_cache", default="data/fashion_guide_28px.pt", help="the guiding clean classifier")
    args = parser.parse_args()
    out = args.out or os.path.join(args.run, "edit_demo")
    os.makedirs(out, exist_ok=True)
    fashion, judge_module = datasets_module("fashion_mnist"), datasets_module("fashion_mnist_judge")
    model, model_config, diffusion_config = load_quickstart_model(args.run)
    judge_net, judge_test = judge_module.load_or_train(args.judge_cache, model_config.image_size)
    x, labels = held_out(fashion, max(1, args.images // 10), model_config.image_size)
    demo = Demo(model, model_config, diffusion_config, x, labels, functools.partial(judge_module.predict, judge_net),
                args.seed, out, costs=args.full)
    print(f"{len(x)} held-out test images; judge accuracy {judge_test:.3f} on the 10k test images", flush=True)

    inpainting(demo, args.full)
    super_resolution(demo)
    if args.full:
        demo.record("dps_deblur", *demo.edit("dps_deblur", DPS_DEBLUR))
    sdedit(demo, STRENGTHS if args.full else (SDEDIT["strength"],))
    if args.full:
        for steps in INVERSION_STEPS:
            spec = dict(task="reconstruct", sampler="ddim", steps=steps)
            demo.record(f"reconstruct_{steps}", *demo.edit(f"reconstruct_{steps}", spec))
    wanted = clean_guidance(demo, datasets_module("fashion_mnist_guide"), args.guide_cache, judge_module)

    results = dict(images=len(x), judge_test_accuracy=judge_test, tasks=demo.results,
                   seconds=time.time() - demo.started)
    columns = demo.columns
    panel = ["original", "masked", "repaint", "dps_inpaint", "7x7", "bicubic", "dps_super_res",
             f"sdedit_{SDEDIT['strength']:g}", "clean_guided"]
    results["panel_columns"] = save_columns(columns, panel, os.path.join(out, "panel.png"))
    if args.full:
        save_columns(columns, ["original"] + [f"sdedit_{s:g}" for s in STRENGTHS],
                     os.path.join(out, "sdedit_curve.png"))
        save_columns(columns, ["original"] + [f"reconstruct_{n}" for n in INVERSION_STEPS],
                     os.path.join(out, "reconstruct.png"))
        save_columns(columns, ["original", "dps_deblur"], os.path.join(out, "deblur.png"))
        for name in ("null_class", "clean_guided"):  # one row per requested class
            grid = judge_module.class_grid(to_uint8_nhwc(columns[name]).numpy(), wanted.numpy())
            Image.fromarray(grid).save(os.path.join(out, f"{name}_classes.png"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"[{results['seconds']:.0f} s] panel.png ({' | '.join(results['panel_columns'])}), grids and "
          f"results.json in {out}")


def save_columns(columns, names, path, rows=10):
    """A PNG with one column per name present in columns ({name: images [N, 1, H, W] in [-1, 1]}), the first
    `rows` images each; returns the names shown."""
    shown = [name for name in names if name in columns]
    grid = th.stack([columns[name][:rows] for name in shown], dim=1).flatten(0, 1)
    save_grid(to_uint8_nhwc(grid)[..., :1].numpy(), path, cols=len(shown))
    return shown


def guided_samples(demo, wanted, guidance):
    """Null-class samples [N, 1, H, W] (quantised) steered toward the classes `wanted` [N] by `guidance`
    through the model (the model sees its null class, the guides see `wanted`), and the seconds taken."""
    diffusion = demo.diffusion(CLEAN_GUIDANCE["steps"])
    batch = SeededBatch(demo.seed + 1, range(len(wanted)))
    model = with_label(demo.model, demo.model.null_class)
    start = time.time()
    x = samplers.sample(diffusion, model, tuple(demo.x.shape), sampler=CLEAN_GUIDANCE["sampler"], guidance=guidance,
                        noise=batch.noise_like(demo.x), noise_fn=batch.noise_like, model_kwargs={"y": wanted})
    return quantised(x), time.time() - start


if __name__ == "__main__":
    main()
