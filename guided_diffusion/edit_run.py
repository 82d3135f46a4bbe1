"""image_edit.py's run: its flags checked against the model and the inputs (before anything is written),
the edit of one batch with its per-input random streams, and the numbers of metrics.json.

Every random number of input i comes from its own stream (sample_seeds.SeededBatch), in the order: the
measurement noise (when --noise_sigma > 0), the starting noise (SDEdit's z, or x_T), then the sampler's
draws. So a run's outputs do not depend on the batch size or the number of ranks, and the measurement
(or SDEdit's noised input) can be drawn again anywhere from the first draws.
"""

import importlib.util
import os
from dataclasses import dataclass

import torch as th

from . import editing
from .config import EditConfig
from .image_metrics import measurement_consistency, psnr, ssim
from .operators import Operator, operator_from_flags
from .sample_seeds import SeededBatch
from .samplers import resolve_sampler
from .sampling import sampler_keywords

WITH_OPERATOR = ("inpaint", "super_res", "deblur")


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
    if config.method == "repaint" and config.task != "inpaint":
        raise ValueError(f"--method repaint inpaints; --task {config.task} takes --method dps")
    if config.method == "repaint" and sampler != "ddpm":
        raise ValueError(f"--method repaint takes DDPM steps: give --sampler ddpm (or --method dps for --sampler "
                         f"{sampler})")
    if config.method == "repaint":
        editing.repaint_states(2, config.jump_length, config.resamplings)  # checks both
    if config.task == "reconstruct" and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--task reconstruct inverts and samples with DDIM: give --sampler ddim (not {sampler})")
    if config.task == "sdedit":
        editing.check_strength(config.strength)
    if config.task in WITH_OPERATOR and config.method == "dps" and not config.zeta > 0:
        raise ValueError(f"--zeta {config.zeta}: DPS needs a step size > 0 (e.g. 1)")
    return EditTask(config.task, config.method, operator, config, sampler_keywords(config))


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
        return editing.reconstruct(diffusion, model, x, **keywords)[0]
    y = task.measure(x, batch.noise_like)
    start = batch.noise_like(x)
    if task.task == "sdedit":
        return editing.sdedit(diffusion, model, x, config.strength, noise=start, guidance=guidance, **keywords,
                              **task.sampling)
    if task.method == "repaint":
        return editing.repaint(diffusion, model, y, task.known_mask(), jump_length=config.jump_length,
                               resamplings=config.resamplings, guidance=guidance, noise=start, **keywords)
    return editing.dps(diffusion, model, x.shape, task.operator.A, y, config.zeta, guidance=guidance, noise=start,
                       **keywords, **task.sampling)


def degraded(task, diffusion, x, seed):
    """What the task starts from, shown as images [N, C, H, W] (edit_grid.png's middle column): the
    measurement at the input size, SDEdit's noised input at t0 (clipped), the input itself for reconstruct.
    Drawn again from the inputs' streams (seed), equal to what edit() drew."""
    batch = SeededBatch(seed, range(len(x)))
    if task.operator is not None:
        return task.operator.degraded(task.measure(x, batch.noise_like)).clamp(-1, 1)
    start = editing.sdedit_start_step(diffusion, task.config.strength) if task.task == "sdedit" else None
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
