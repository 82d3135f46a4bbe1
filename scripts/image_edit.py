"""
Restore or edit images with a trained diffusion model as the prior: inpainting, super-resolution and
deblurring (DPS, or RePaint for inpainting), SDEdit toward a class or a prompt, DDIM inversion then
reconstruction, and GLIDE's inpainting by prompt. Writes edited_{N}x{H}x{W}x3.npz (arr_0 the outputs, arr_1
their labels when known), edit_grid.png (original | degraded | output per row, the first 64 inputs),
metrics.json (PSNR, SSIM, measurement consistency, FID against --ref_batch, seconds per image) and, with
prompts, prompts.txt (line i: input i's prompt) in the log dir.

    python scripts/image_edit.py --model_path model.pt --input test.npz --task inpaint \\
        --mask box --method repaint --timestep_respacing 50
    python scripts/image_edit.py ... --task super_res --factor 4 --zeta 1 --sampler ddpm --timestep_respacing 100
    python scripts/image_edit.py ... --task sdedit --strength 0.6 --target_class 3 --guidance_scale 3
    python scripts/image_edit.py --model_path distilled.pt ... --task sdedit --strength 0.6 --sampler consistency \
        --timestep_respacing at:597
    python scripts/image_edit.py --model_path inpaint_run/ema_0.9999_100000.pt --input photos --task inpaint \\
        --method glide --prompt "a red dress" --guidance_scale 3 --sampler dpm++2m --timestep_respacing 25

With a text model's checkpoint (text_train.py's run, or GLIDE's) the model flags are a text model's
(TextModelConfig: see text_sample.py --help) and --prompt TEXT (repeatable; input i gets prompt i % P) or
--prompts_file FILE says what to edit toward; without either every input gets the empty caption.
--method glide inpaints with an inpainting text model; RePaint, DPS and SDEdit take any base text model.

Inputs are split over ranks (mpiexec -n K) and each draws from its own seeded stream, so the outputs do
not depend on K or --batch_size. The model's flags come from its checkpoint's run (run_flags.py). Bad
flags or inputs stop the run before anything is written.
"""

import json
import os
import sys
import time

import torch as th
import torch.distributed as dist

from guided_diffusion import dist_util, editing, errors, logger, sampling
from guided_diffusion.build import build_classifier, build_diffusion, build_text_unet, build_unet
from guided_diffusion.cli import config_parser
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, EditConfig, ModelConfig
from guided_diffusion.editing import run as edit_run
from guided_diffusion.editing.inputs import load_edit_inputs
from guided_diffusion.guidance import ClassifierGuidance, CleanImageGuidance
from guided_diffusion.sample_io import GRID_MAX_IMAGES, save_edit_grid, save_npz
from guided_diffusion.sample_seeds import resolve_seed
from guided_diffusion.text import prompts as text_prompts
from guided_diffusion.unet import null_class_of

PROMPT_HELP = ("a text model: the caption to edit toward; repeat the flag for more prompts, input i gets prompt i %% P "
               "(default: none, then --prompts_file, else the empty caption)")


def configs_of(network):
    """The script's config classes with the model's (ModelConfig or TextModelConfig)."""
    return network, DiffusionConfig, ClassifierConfig, EditConfig


def create_argparser(network=ModelConfig):
    parser = config_parser(__doc__, *configs_of(network))
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help=PROMPT_HELP)
    return parser


def main(argv=None):
    prompt_flags, argv = text_prompts.split_prompts(sys.argv[1:] if argv is None else argv)
    network = edit_run.edit_network(argv, prompt_flags)
    inputs = {}

    def check_inputs(configs, log_dir):
        """Read the inputs and check the model, prompts, task, loss and FID inputs before anything is written."""
        model_config, run = configs[0], configs[-1]
        prompts = edit_run.edit_prompts(prompt_flags, run, model_config)
        originals, input_labels = load_edit_inputs(run.input, model_config.image_size, model_config.image_channels)
        if run.num_samples > 0:
            originals = originals[:run.num_samples]
            input_labels = None if input_labels is None else input_labels[:run.num_samples]
        null_class = null_class_of(model_config.num_classes, getattr(model_config, "class_dropout_prob", 0.0))
        labels = edit_run.edit_labels(run, len(originals), model_config.class_cond, model_config.num_classes,
                                      null_class, input_labels)
        loss = edit_run.load_loss(run.loss)
        if loss is not None:
            shape = (2, model_config.image_channels, model_config.image_size, model_config.image_size)
            editing.check_loss(loss, shape, {} if labels is None else {"y": labels[:2].to(dist_util.dev())},
                               dist_util.dev())
        inputs.update(originals=originals, input_labels=input_labels, labels=labels, loss=loss, prompts=prompts,
                      task=edit_run.edit_task(run, model_config.image_size),
                      inception_path=check_fid_inputs(run.ref_batch))
        return prompts.warnings if prompts else []

    model_config, diffusion_config, classifier_config, run = sampling.start_sampling(
        create_argparser(network), configs_of(network), argv, before_writing=check_inputs)
    originals, input_labels, labels, task, loss, prompts = (
        inputs[k] for k in ("originals", "input_labels", "labels", "task", "loss", "prompts"))
    device = dist_util.dev()
    model = (build_unet if prompts is None else build_text_unet)(model_config, diffusion_config.learn_sigma)
    diffusion = build_diffusion(diffusion_config)
    if prompts is None:
        guidance = list(sampling.free_guidance(run.guidance_scale, model))
    else:  # the empty caption as the unconditional branch (its inpainting inputs too, as every batched keyword)
        guidance = list(text_prompts.caption_guidance(run.guidance_scale, model_config.text_ctx))
    sampling.load_for_sampling(model, run.model_path, device)
    if run.classifier_path:
        classifier = build_classifier(classifier_config)
        sampling.load_for_sampling(classifier, run.classifier_path, device, flag="--classifier_path")
        guidance.append(ClassifierGuidance(classifier, run.classifier_scale))
    sample_shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    if loss is not None:
        guidance.append(CleanImageGuidance(loss, run.loss_scale))

    def model_fn(x, t, y=None, **kwargs):
        """The model, given the labels only when it takes them (else they are the guides' target)."""
        return model(x, t, **({"y": y} if model_config.class_cond else {}), **kwargs)

    seed = resolve_seed(run.seed)
    logger.log(f"{run.task} ({task.method}) of {len(originals)} inputs from {run.input} with --seed {seed}...")
    if prompts is not None and dist_util.get_rank() == 0 and (prompt_flags or run.prompts_file):
        logger.log(f"prompts of the inputs: {text_prompts.save_prompts(logger.get_dir(), prompts, len(originals))}")

    def edit_batch(batch):
        index = list(batch.indices)
        model_kwargs = {} if labels is None else {"y": labels[index].to(device)}
        if prompts is not None:
            model_kwargs.update(prompts.model_kwargs(index, device))  # the captions, encoded once per batch

        def edit():
            return edit_run.edit(task, diffusion, model_fn, originals[index].to(device), batch, guidance, model_kwargs)

        return (edit() if prompts is None else text_prompts.encoded_once(model, edit)), None

    start = time.time()
    images, _ = sampling.sample_all(edit_batch, len(originals), run.batch_size, seed, sample_shape, device,
                                    with_labels=False, progress=run.progress)
    seconds = time.time() - start
    if images is not None:
        shown = labels if run.target_class >= 0 else input_labels
        path = save_npz(logger.get_dir(), "edited", images, None if shown is None else shown.numpy())
        outputs = th.from_numpy(images[..., :model_config.image_channels]).permute(0, 3, 1, 2).float() / 127.5 - 1
        shown_inputs = originals[:GRID_MAX_IMAGES]
        save_edit_grid(shown_inputs, edit_run.degraded(task, diffusion, shown_inputs, seed), outputs[:GRID_MAX_IMAGES],
                       os.path.join(logger.get_dir(), "edit_grid.png"))
        metrics = edit_run.edit_metrics(task, originals, outputs, seed, seconds)
        if inputs["inception_path"]:
            metrics["fid"] = fid_of(inputs["inception_path"], run.ref_batch, path)
        with open(os.path.join(logger.get_dir(), "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        logger.log(f"saved {path}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                  if isinstance(v, float)))
    if dist.is_initialized():
        dist.barrier()
    logger.log("editing complete")


def check_fid_inputs(ref_batch):
    """The Inception weights' path for --ref_batch's FID ("" without one); errors name what is missing."""
    if not ref_batch:
        return ""
    from evaluations.weights import resolve_inception_path

    if not os.path.isfile(ref_batch):
        raise ValueError(f"--ref_batch {ref_batch} does not exist; give a reference batch npz or leave it out")
    try:
        return resolve_inception_path()
    except FileNotFoundError as err:
        raise ValueError(f"--ref_batch needs the Inception weights: {err}") from None


def fid_of(inception_path, ref_batch, sample_path):
    """The FID of the saved outputs against the reference batch."""
    from evaluations.evaluator import evaluate
    from evaluations.weights import load_inception

    model = load_inception(inception_path, device=dist_util.dev())
    return float(evaluate(ref_batch, sample_path, model, device=dist_util.dev())["fid"])


if __name__ == "__main__":
    errors.run(main)
