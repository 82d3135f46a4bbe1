"""image_edit.py's run: the network its checkpoint holds, its flags and prompts checked against the model
and the inputs (before anything is written), the edit of one batch with its per-input random streams, and
the numbers of metrics.json.

Every random number of input i comes from its own stream (sample_seeds.SeededBatch), in the order: the
measurement noise (when --noise_sigma > 0), the starting noise (SDEdit's z, or x_T), then the sampler's
draws. So a run's outputs do not depend on the batch size or the number of ranks, and the measurement
(or SDEdit's noised input) can be drawn again anywhere from the first draws.
"""

import argparse
import dataclasses
import importlib.util
import os
from dataclasses import dataclass

import torch as th

from ..config import EditConfig, ModelConfig, TextModelConfig
from ..image_metrics import measurement_consistency, psnr, ssim
from ..run_flags import checkpoint_flags, network_of
from ..sample_seeds import SeededBatch
from ..samplers import resolve_sampler
from ..sampling import sampler_keywords
from ..text.prompts import PromptTokens, read_prompts
from . import methods
from .operators import Operator, operator_from_flags

WITH_OPERATOR = ("inpaint", "super_res", "deblur")
# The flags of a text model that a diffusion model lacks: given with a checkpoint that tells nothing, they
# make image_edit.py build a text model.
TEXT_FLAGS = tuple(sorted({f.name for f in dataclasses.fields(TextModelConfig)}
                          - {f.name for f in dataclasses.fields(ModelConfig)}))


@dataclass
class EditTask:
    """One image_edit.py task, checked: what edit() does to every input.

    task, method: the --task and --method; operator: the forward model (None for sdedit, reconstruct);
    config: the EditConfig it came from (zeta, strength, jump length, resamplings, clip_denoised);
    sampling: samplers.sample's sampler keywords (sampling.sampler_keywords).
    """

    task: str
    method: str
    operator: Operator
    config: EditConfig
    sampling: dict

    def measure(self, x, noise_fn):
        """The measurement y = A(x) + n [N, ...] of originals x, or None without a forward model."""
        return None if self.operator is None else self.operator.measure(x, noise_fn)

    def known_mask(self):
        """The inpainting mask [1, 1, H, W] (1 = known) or None."""
        return None if self.operator is None else self.operator.known_mask


def edit_task(config, image_size):
    """The EditTask of an EditConfig for a model of image_size pixels; ValueError naming the flag to fix."""
    operator = operator_from_flags(config.task, image_size, mask=config.mask, factor=config.factor,
                                   blur_sigma=config.blur_sigma, noise_sigma=config.noise_sigma,
                                   mask_seed=max(config.seed, 0))  # a random:F mask: the same on every rank
    sampler = resolve_sampler(config.sampler, config.use_ddim)
    if config.method in ("repaint", "glide") and config.task != "inpaint":
        raise ValueError(f"--method {config.method} inpaints; --task {config.task} takes --method dps")
    if config.method == "repaint" and sampler != "ddpm":
        raise ValueError(f"--method repaint takes DDPM steps: give --sampler ddpm (or --method dps for --sampler "
                         f"{sampler})")
    if config.method == "repaint":
        methods.repaint_states(2, config.jump_length, config.resamplings)  # checks both
    if config.task == "reconstruct" and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--task reconstruct inverts and samples with DDIM: give --sampler ddim (not {sampler})")
    if config.task == "sdedit":
        methods.check_strength(config.strength)
    if config.task in WITH_OPERATOR and config.method == "dps" and not config.zeta > 0:
        raise ValueError(f"--zeta {config.zeta}: DPS needs a step size > 0 (e.g. 1)")
    return EditTask(config.task, config.method, operator, config, sampler_keywords(config))


def edit_network(argv, prompts=()):
    """The model config class of image_edit.py's command line argv (without its --prompt flags, `prompts`):
    TextModelConfig when --model_path's run is a text model's (its train_config.json, or the shapes of a
    released GLIDE file), or, for a checkpoint that tells neither, when the command line gives a prompt
    (--prompt, --prompts_file) or a flag only text models have (--xf_width, --inpaint, ...); else ModelConfig
    (a missing file or a foreign network is start_run's error)."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--model_path", default="")
    peek.add_argument("--prompts_file", default="")
    known, rest = peek.parse_known_args(argv)
    try:
        found = checkpoint_flags(known.model_path, "model_path") if known.model_path else None
    except FileNotFoundError:
        found = None
    if found is not None:
        return TextModelConfig if network_of(found.flags) is TextModelConfig else ModelConfig
    text_flag = any(arg.split("=")[0] in {f"--{name}" for name in TEXT_FLAGS} for arg in rest)
    return TextModelConfig if prompts or known.prompts_file or text_flag else ModelConfig


def edit_prompts(prompts, config, model_config):
    """A text model's prompts as PromptTokens (input i reads prompt i % P; the empty caption for every input
    without --prompt or --prompts_file), None for a model without text; the model checked against the
    method first. prompts: the --prompt values. ValueError naming the fix."""
    text = isinstance(model_config, TextModelConfig)
    given = bool(prompts or config.prompts_file)
    path = config.model_path
    if given and not text:
        raise ValueError(f"--prompt and --prompts_file need a text-conditional model, but --model_path {path} holds a "
                         "diffusion model without text: leave them out (--target_class edits toward a class), or pass "
                         "a text model (text_train.py's run, or GLIDE's)")
    inpainter = text and model_config.inpaint
    if config.method == "glide" and not inpainter:
        raise ValueError(f"--method glide needs an inpainting text model (--inpaint True, or GLIDE's base_inpaint.pt), "
                         f"but --model_path {path} holds {'a text' if text else 'a diffusion'} model without a known-"
                         "image input: use --method repaint or dps")
    if not text:
        return None
    if model_config.super_res:
        raise ValueError(f"--model_path {path} holds a super-resolution text model: image_edit.py edits with a base or "
                         "an inpainting text model")
    if inpainter and config.method != "glide":
        raise ValueError(f"--model_path {path} holds an inpainting text model, which needs its known image: give "
                         "--task inpaint --method glide")
    if not given and config.guidance_scale != 1:
        raise ValueError(f"--guidance_scale {config.guidance_scale} guides toward a prompt: give --prompt TEXT (without "
                         "one every input gets the empty caption, the unconditional branch itself)")
    return PromptTokens(read_prompts(prompts, config.prompts_file) if given else [""], model_config.text_ctx)


def edit_labels(config, n, class_cond, num_classes, null_class=None, input_labels=None):
    """The class labels y [n] int64 that the model and the guides see, or None; ValueError naming the fix.

    --target_class K >= 0: K everywhere (a class-conditional model, or --classifier_path / --loss to steer
    an unconditional one; --classifier_path needs one). Otherwise a class-conditional model sees its null
    class when it has one, else the inputs' labels (input_labels [n] or None).
    """
    steers = bool(config.classifier_path or config.loss)
    if config.target_class >= 0:
        if not (class_cond or steers):
            raise ValueError(f"--target_class {config.target_class} is a class edit but the model is unconditional "
                             "(--class_cond False): use a class-conditional model, or steer with --classifier_path "
                             "or --loss")
        if config.target_class >= num_classes:
            raise ValueError(f"--target_class {config.target_class} is not a class of a {num_classes}-class model; "
                             f"give 0 to {num_classes - 1}")
        return th.full((n,), config.target_class, dtype=th.int64)
    if config.classifier_path:
        raise ValueError("--classifier_path steers toward a class: give --target_class")
    if not class_cond:
        return None
    if null_class is not None:
        return th.full((n,), null_class, dtype=th.int64)
    if input_labels is None:
        raise ValueError("a class-conditional model without a null class needs each input's label: give an npz "
                         "with arr_1 labels (or class-prefixed file names), or --target_class")
    return input_labels.clone()


def load_loss(spec):
    """The function NAME of the Python file FILE from --loss FILE.py:NAME (None for "")."""
    if not spec:
        return None
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"--loss {spec!r}: give FILE.py:NAME, a file defining loss(x0, **model_kwargs) -> [N]")
    if not os.path.isfile(path):
        raise ValueError(f"--loss {spec!r}: {path} does not exist; give FILE.py:NAME of an existing file")
    module_spec = importlib.util.spec_from_file_location("edit_loss", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loss = getattr(module, name, None)
    if not callable(loss):
        raise ValueError(f"--loss {spec!r}: {path} defines no function {name}; give FILE.py:NAME")
    return loss


def edit(task, diffusion, model, x, batch, guidance=(), model_kwargs=None):
    """The task's outputs [N, C, H, W] in [-1, 1] for originals x [N, C, H, W], every random number from
    batch (a SeededBatch of the inputs' indices) in the order of the module docstring."""
    config = task.config
    keywords = dict(clip_denoised=config.clip_denoised, model_kwargs=model_kwargs, noise_fn=batch.noise_like)
    if task.task == "reconstruct":
        return methods.reconstruct(diffusion, model, x, **keywords)[0]
    y = task.measure(x, batch.noise_like)
    start = batch.noise_like(x)
    if task.task == "sdedit":
        return methods.sdedit(diffusion, model, x, config.strength, noise=start, guidance=guidance, **keywords,
                              **task.sampling)
    if task.method == "glide":
        return methods.glide_inpaint(diffusion, model, x.shape, y, task.known_mask(), guidance=guidance, noise=start,
                                     **keywords, **task.sampling)
    if task.method == "repaint":
        return methods.repaint(diffusion, model, y, task.known_mask(), jump_length=config.jump_length,
                               resamplings=config.resamplings, guidance=guidance, noise=start, **keywords)
    return methods.dps(diffusion, model, x.shape, task.operator.A, y, config.zeta, guidance=guidance, noise=start,
                       **keywords, **task.sampling)


def degraded(task, diffusion, x, seed):
    """What the task starts from, shown as images [N, C, H, W] (edit_grid.png's middle column): the
    measurement at the input size, SDEdit's noised input at t0 (clipped), the input itself for reconstruct.
    Drawn again from the inputs' streams (seed), equal to what edit() drew."""
    batch = SeededBatch(seed, range(len(x)))
    if task.operator is not None:
        return task.operator.degraded(task.measure(x, batch.noise_like)).clamp(-1, 1)
    start = methods.sdedit_start_step(diffusion, task.config.strength) if task.task == "sdedit" else None
    if start is None:
        return x
    t0 = th.full((len(x),), start, dtype=th.long)
    return diffusion.q_sample(x, t0, noise=batch.noise_like(x)).clamp(-1, 1)


def edit_metrics(task, originals, outputs, seed, seconds):
    """metrics.json's numbers for outputs [N, C, H, W] (decoded from the saved uint8) of originals
    [N, C, H, W], both in [-1, 1]: PSNR (dB) and SSIM against the originals (means), and with a forward
    model the measurement consistency ||A(x) - y|| / sqrt(dim) (RMS, over the known pixels for inpainting)
    and the PSNR of A(x) against y (the degraded input's own PSNR and SSIM beside them)."""
    n = len(originals)
    metrics = dict(task=task.task, method=task.method if task.operator is not None else None, images=n,
                   psnr=psnr(outputs, originals, reduction="mean").item(),
                   ssim=ssim(outputs, originals, reduction="mean").item(), seconds=seconds,
                   seconds_per_image=seconds / n)
    if task.operator is not None:
        y = task.measure(originals, SeededBatch(seed, range(n)).noise_like)
        shown = task.operator.degraded(y).clamp(-1, 1)
        mask = task.known_mask()
        measured = task.operator.A(outputs)
        metrics.update(
            degraded_psnr=psnr(shown, originals, reduction="mean").item(),
            degraded_ssim=ssim(shown, originals, reduction="mean").item(),
            consistency=measurement_consistency(measured, y, mask=mask, reduction="mean").item(),
            measurement_psnr=psnr(measured, y, mask=mask, reduction="mean").item(),
        )
    return metrics
