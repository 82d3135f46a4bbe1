"""Training loops: `TrainLoop` for the diffusion models (image_train, super_res_train) and
`ClassifierTrainLoop` for the noisy-image classifier (classifier_train).

Both share one base: micro-batches (DDP gradient sync only on the last), fp16 with fp32 master weights
or bf16 autocast, AdamW, logging every log_interval steps, checkpoint sets every save_interval steps that
survive a kill at any moment, exact resume from any complete set (see train_state), a final checkpoint
and exit status 128 + signal on SIGINT/SIGTERM, and a clear stop after too many consecutive skipped
(non-finite) steps. `step` always counts completed training steps.
"""

import contextlib
import copy
import functools
import random
import signal
import threading

import blobfile as bf
import numpy as np
import torch as th
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel.distributed import DistributedDataParallel as DDP
from torch.optim import AdamW

from . import dist_util, logger, train_state
from .checkpoint import load_checkpoint, read_torch_file
from .errors import RunStopped
from .fp16_util import NONFINITE_LOSS, MixedPrecisionTrainer
from .resample import LossAwareSampler, create_named_schedule_sampler


class TrainingStopped(RunStopped):
    """Training cannot continue (e.g. every recent step had a non-finite loss or gradient)."""


def seed_all(seed):
    """Seed python, numpy and torch with seed + rank (ranks draw different noise and timesteps)."""
    seed = seed + dist_util.get_rank()
    random.seed(seed)
    np.random.seed(seed)
    th.manual_seed(seed)


class _LoopBase:
    """Optimisation, checkpoints, resume and stopping shared by the diffusion and classifier loops.

    Subclasses implement forward_backward(batch, cond) and may extend after_step() and the saved files.
    config is a config.LoopConfig; the subclass passes what its own config names differently (EMA rates,
    the step limit, the fp16 scale growth) and its timestep sampler (or None).
    """

    initial_lg_loss_scale = 20.0

    def __init__(self, *, model, data, config, use_fp16, schedule_sampler, run_config, ema_rate, ema_warmup,
                 max_steps, fp16_scale_growth):
        if use_fp16 and config.use_bf16:
            raise ValueError("choose one of --use_fp16 True (fp16 weights, loss scaling) and --use_bf16 True")
        self.model, self.data = model, data
        self.batch_size = config.batch_size
        self.microbatch = config.microbatch if config.microbatch > 0 else config.batch_size
        self.lr, self.weight_decay = config.lr, config.weight_decay
        self.log_interval, self.save_interval = config.log_interval, config.save_interval
        self.ema_rate, self.ema_warmup = parse_ema_rates(ema_rate), ema_warmup
        self.use_bf16, self.max_steps, self.max_skipped_steps = config.use_bf16, max_steps, config.max_skipped_steps
        self.run_config = run_config
        self.global_batch = config.batch_size * dist_util.get_world_size()
        self.log_dir = logger.get_dir()

        resume = _ResumeFiles(config.resume_checkpoint) if config.resume_checkpoint else None
        self.step = resume.step if resume else 0
        self._check_run_config(resume)
        self._last_checkpoint = resume.model_path if resume else None  # the newest complete set's model file
        if resume:
            logger.log(f"resuming from {resume.model_path} at step {self.step}")
        elif config.init_checkpoint:
            logger.log(f"initialising weights from {config.init_checkpoint} (fine-tuning: step 0, fresh optimizer)")
        start_path = resume.model_path if resume else config.init_checkpoint
        # The file's float32 weights: an fp16 model holds them rounded, the master weights exactly.
        start_weights = (load_checkpoint(model, start_path, return_state_dict=True, widen=not resume)
                         if start_path else None)
        dist_util.sync_params(model.parameters())

        self.mp_trainer = MixedPrecisionTrainer(model=model, use_fp16=use_fp16, fp16_scale_growth=fp16_scale_growth,
                                                initial_lg_loss_scale=self.initial_lg_loss_scale,
                                                master_weights=start_weights)
        self.schedule_sampler = schedule_sampler
        self.opt = AdamW(self.mp_trainer.master_params, lr=self.lr, weight_decay=self.weight_decay)
        self.ema_params = [self._load_ema(resume, rate) for rate in self.ema_rate]
        if resume:
            self._load_optimizer(resume)
        self.ddp_model = self._wrap_ddp(model)
        self._skipped_in_a_row = 0
        self._last_saved_step = self.step
        if resume:
            self._load_train_state(resume)
        # the folder is tidied only once the resumed set has loaded: a failed resume leaves it as it was
        dist_util.on_rank0(functools.partial(_prepare_log_dir, self.log_dir, self.step, resume))
        self._write_run_config()

    # ----- set-up helpers -----

    def _wrap_ddp(self, model):
        if dist_util.get_world_size() == 1:
            return model
        device_ids = [dist_util.dev()] if th.cuda.is_available() else None
        # The models have no buffers, so the release's broadcast_buffers=False is moot (and deprecated).
        return DDP(model, device_ids=device_ids, output_device=device_ids[0] if device_ids else None,
                   bucket_cap_mb=128, find_unused_parameters=False)

    def _load_ema(self, resume, rate):
        path = resume.ema_path(rate) if resume else None
        if path is None:
            if resume:
                logger.warn(f"no EMA file for rate {rate} beside {resume.model_path}: EMA starts from the model")
            return copy.deepcopy([p.detach() for p in self.mp_trainer.master_params])
        state_dict = read_torch_file(path, map_location=dist_util.dev())
        return [p.detach().clone() for p in self.mp_trainer.state_dict_to_master_params(state_dict)]

    def _load_optimizer(self, resume):
        if resume.opt_path is None:
            logger.warn(f"no {train_state.opt_filename(resume.step)} beside the checkpoint: fresh optimizer state")
            return
        state = read_torch_file(resume.opt_path, "the optimizer state saved with the model file (optNNNNNN.pt)",
                                map_location=dist_util.dev())
        try:
            self.opt.load_state_dict(state)
        except ValueError as exc:
            raise ValueError(f"{resume.opt_path} does not fit this model's optimizer ({exc}); was it saved "
                             f"with another --use_fp16 or model flags?") from exc

    def _load_train_state(self, resume):
        """Loss scale, sampler state, and this rank's RNG states and data position."""
        if resume.state_path is None:
            logger.warn(f"no {train_state.state_filename(resume.step)} beside the checkpoint (a release "
                        f"checkpoint?): loss scale, RNG and data order restart, so the resume is not exact")
            return
        state = read_torch_file(resume.state_path, "the training state saved with the model file (stateNNNNNN.pt)")
        self.mp_trainer.load_state_dict(state["trainer"])
        if self.schedule_sampler is not None:
            self.schedule_sampler.load_state_dict(state["sampler"])
        per_rank = state["ranks"]
        if len(per_rank) != dist_util.get_world_size():
            logger.warn(f"checkpoint saved by {len(per_rank)} ranks, resumed on {dist_util.get_world_size()}: "
                        f"RNG and data positions restart")
            return
        mine = per_rank[dist_util.get_rank()]
        for name, stream in self._data_streams().items():
            if hasattr(stream, "load_state_dict") and name in mine["data"]:
                stream.load_state_dict(mine["data"][name])
        train_state.set_rng_state(mine["rng"])

    def _check_run_config(self, resume):
        if resume is None or self.run_config is None:
            return
        saved = train_state.read_config(resume.dir)
        if saved is None:
            logger.warn(f"no {train_state.CONFIG_NAME} beside {resume.model_path}: flags not checked")
            return
        train_state.check_config_matches(saved, self.run_config, resume.model_path)

    def _write_run_config(self):
        if self.run_config is not None and dist_util.get_rank() == 0:
            train_state.write_json_atomically(self.run_config, bf.join(self.log_dir, train_state.CONFIG_NAME))

    def _data_streams(self):
        """Named batch streams whose positions are saved for an exact resume."""
        return {"train": self.data}

    # ----- the loop -----

    def run_loop(self):
        """Train until max_steps / the anneal end (or forever), then save.

        On SIGINT/SIGTERM: finish the current step, save it, log the resume command and raise
        SystemExit(128 + the signal number), so a stopped run never looks finished (143 for SIGTERM).
        """
        signum = 0
        with _StopSignals() as stop:
            while not self._finished() and not signum:
                batch, cond = next(self.data)
                self.run_step(batch, cond)
                if self.step % self.log_interval == 0:
                    self.log_step()
                    logger.dumpkvs()
                if self.step % self.save_interval == 0:
                    self.save()
                signum = stop.agreed()
            if signum:
                logger.log(f"received {signal.Signals(signum).name}: saving step {self.step} and stopping")
            self.save()
        if signum:
            logger.log(f"stopped by {signal.Signals(signum).name}; {self._resume_hint()}")
            raise SystemExit(128 + signum)

    def _finished(self):
        return bool(self.max_steps) and self.step >= self.max_steps

    def run_step(self, batch, cond):
        """One optimisation step on a batch (split into micro-batches)."""
        self.set_lr()
        self.forward_backward(batch, cond)
        took_step = self.mp_trainer.optimize(self.opt)
        self.step += 1
        if took_step:
            self._skipped_in_a_row = 0
            self._update_ema()
        else:
            self._count_skip()
        self.after_step()

    def set_lr(self):
        """Subclasses anneal the learning rate here."""

    def after_step(self):
        """Subclasses evaluate here."""

    def micro_batches(self, batch, cond):
        """Yield (micro [n, ...] on dev, micro_cond, is_last) slices of size microbatch."""
        for i in range(0, batch.shape[0], self.microbatch):
            micro = batch[i:i + self.microbatch].to(dist_util.dev())
            micro_cond = {k: v[i:i + self.microbatch].to(dist_util.dev()) for k, v in cond.items()}
            yield micro, micro_cond, i + self.microbatch >= batch.shape[0]

    def forward(self, is_last, fn):
        """Run fn() under bf16 autocast when enabled and without DDP gradient sync unless is_last."""
        sync = is_last or self.ddp_model is self.model
        with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()), \
                th.autocast(device_type=dist_util.dev().type, dtype=th.bfloat16, enabled=self.use_bf16):
            return fn()

    def _update_ema(self):
        source = [p.detach() for p in self.mp_trainer.master_params]
        for rate, params in zip(self.ema_rate, self.ema_params):
            update_ema(params, source, rate=ema_rate_at(rate, self.step, self.ema_warmup))

    def _count_skip(self):
        self._skipped_in_a_row += 1
        reason = self.mp_trainer.last_status
        logger.logkv_mean("skipped_steps", 1.0)
        if reason == NONFINITE_LOSS:
            logger.log(f"step {self.step}: the loss is not finite (not a gradient overflow); step skipped")
        if self._skipped_in_a_row >= self.max_skipped_steps:
            raise TrainingStopped(
                f"{self._skipped_in_a_row} consecutive steps were skipped (last reason: {reason}, "
                f"lg_loss_scale {self.mp_trainer.lg_loss_scale:.3f}); stopping without saving. The last good "
                f"checkpoint is step {self._last_saved_step}: {self._resume_hint()}. Lower --lr, check the "
                f"data, or train with --use_fp16 False / --use_bf16 True."
            )

    def _resume_hint(self):
        if self._last_checkpoint is None:
            return "no checkpoint was written yet"
        return f"resume with --resume_checkpoint {self._last_checkpoint}"

    def log_step(self):
        logger.logkv("step", self.step)
        logger.logkv("samples", self.step * self.global_batch)
        skipped = getattr(self.data, "skipped_files", ())
        if skipped:
            logger.logkv("skipped_images", len(skipped))

    # ----- checkpoints -----

    def save(self):
        """Write the checkpoint set of the current step, the model file last (once per step; rank 0)."""
        if self.step == self._last_saved_step:
            return
        to_state_dict = self.mp_trainer.master_params_to_state_dict
        objects = [*(to_state_dict(params) for params in self.ema_params), self.opt.state_dict(),
                   self._train_state(), to_state_dict(self.mp_trainer.master_params)]
        files = dict(zip(train_state.checkpoint_set_names(self.step, self.ema_rate), objects))
        dist_util.on_rank0(functools.partial(train_state.write_checkpoint_set, self.log_dir, self.step, files,
                                             self._last_checkpoint))
        if dist_util.get_rank() == 0:
            logger.log(f"saved checkpoint of step {self.step} to {self.log_dir}")
        self._last_saved_step = self.step
        self._last_checkpoint = bf.join(self.log_dir, train_state.model_filename(self.step))

    def _train_state(self):
        mine = {"rng": train_state.rng_state(),
                "data": {name: s.state_dict() for name, s in self._data_streams().items()
                         if hasattr(s, "state_dict")}}
        per_rank = [mine]
        if dist_util.get_world_size() > 1:
            per_rank = [None] * dist_util.get_world_size()
            dist.all_gather_object(per_rank, mine)
        sampler = self.schedule_sampler.state_dict() if self.schedule_sampler is not None else {}
        return {"step": self.step, "trainer": self.mp_trainer.state_dict(), "sampler": sampler, "ranks": per_rank}


class TrainLoop(_LoopBase):
    """The diffusion training loop of image_train and super_res_train.

    model:      the UNetModel / SuperResModel, built in float32 (with use_fp16 the fp32 master weights are
                copied from it before its torso is cast to float16, as the release does).
    diffusion:  the GaussianDiffusion whose training_losses it minimises.
    data:       endless (batch [N, C, H, W] in [-1, 1], model_kwargs) pairs (load_data's stream).
    config:     a config.TrainConfig: batch sizes, optimizer, intervals, resume/init checkpoint, EMA rates,
                fp16 scale growth, bf16, annealing and stopping (--max_steps, --max_skipped_steps), the
                timestep sampler's name.
    use_fp16:   the model config's --use_fp16 (fp16 torso, fp32 master weights, dynamic loss scale).
    run_config: {"model_flags", "train_flags", "class_names"} written to train_config.json and checked when
                resuming (None: neither).
    """

    def __init__(self, *, model, diffusion, data, config, use_fp16=False, run_config=None):
        self.diffusion = diffusion
        self.lr_anneal_steps = config.lr_anneal_steps
        super().__init__(model=model, data=data, config=config, use_fp16=use_fp16,
                         schedule_sampler=create_named_schedule_sampler(config.schedule_sampler, diffusion),
                         run_config=run_config, ema_rate=config.ema_rate, ema_warmup=config.ema_warmup,
                         max_steps=config.max_steps, fp16_scale_growth=config.fp16_scale_growth)

    def _finished(self):
        annealed = bool(self.lr_anneal_steps) and self.step >= self.lr_anneal_steps
        return annealed or super()._finished()

    def set_lr(self):
        if self.lr_anneal_steps:
            set_annealed_lr(self.opt, self.lr, self.step / self.lr_anneal_steps)

    def forward_backward(self, batch, cond):
        """Accumulate the gradients of the importance-weighted diffusion loss over the micro-batches.

        Each micro-batch draws its timesteps t with weights w from the schedule sampler (w = 1 when uniform),
        logs every loss term times w, and backpropagates mean(w * loss); a loss-aware sampler learns from
        the unweighted losses.
        """
        self.mp_trainer.zero_grad()
        learns = isinstance(self.schedule_sampler, LossAwareSampler)
        for micro, micro_cond, is_last in self.micro_batches(batch, cond):
            t, weights = self.schedule_sampler.sample(micro.shape[0], dist_util.dev())
            terms = self.forward(is_last, lambda: self.diffusion.training_losses(self.ddp_model, micro, t,
                                                                                 model_kwargs=micro_cond))
            if learns:
                self.schedule_sampler.update_with_local_losses(t, terms["loss"].detach())
            weighted = {name: values * weights for name, values in terms.items()}
            log_loss_dict(self.diffusion, t, weighted)
            self.mp_trainer.backward(weighted["loss"].mean())


class ClassifierTrainLoop(_LoopBase):
    """classifier_train's loop: cross-entropy on images noised at sampled t (or clean, noised=False),
    top-1/top-5 accuracy, evaluation on val_data every eval_interval steps, optional linear lr anneal
    to zero at `iterations`. Saves modelNNNNNN.pt and optNNNNNN.pt (no EMA) plus the resume state.

    model, diffusion, data, use_fp16, run_config: as for TrainLoop (use_fp16: --classifier_use_fp16).
    val_data:   a second stream evaluated every config.eval_interval steps, or None.
    config:     a config.ClassifierTrainConfig (iterations, anneal_lr, noised, eval_interval and the
                LoopConfig fields).
    """

    initial_lg_loss_scale = 16.0

    def __init__(self, *, model, diffusion, data, val_data, config, use_fp16=False, run_config=None):
        self.diffusion, self.val_data = diffusion, val_data
        self.anneal_lr, self.noised, self.eval_interval = config.anneal_lr, config.noised, config.eval_interval
        sampler = create_named_schedule_sampler(config.schedule_sampler, diffusion) if config.noised else None
        super().__init__(model=model, data=data, config=config, use_fp16=use_fp16, schedule_sampler=sampler,
                         run_config=run_config, ema_rate="", ema_warmup=False, max_steps=config.iterations,
                         fp16_scale_growth=1e-3)

    def _data_streams(self):
        streams = {"train": self.data}
        if self.val_data is not None:
            streams["val"] = self.val_data
        return streams

    def set_lr(self):
        if self.anneal_lr:
            set_annealed_lr(self.opt, self.lr, self.step / self.max_steps)

    def forward_backward(self, batch, cond, prefix="train"):
        """Cross-entropy of the classifier on (noised) batch; backward only for prefix "train"."""
        batch, labels = batch.to(dist_util.dev()), cond["y"].to(dist_util.dev())
        t = self._noise_timesteps(batch.shape[0])
        batch = self.diffusion.q_sample(batch, t) if self.noised else batch
        training = prefix == "train"
        if training:
            self.mp_trainer.zero_grad()
        for sub_batch, sub, is_last in self.micro_batches(batch, {"y": labels, "t": t}):
            model = self.ddp_model if training else self.model
            logits = self.forward(is_last or not training, lambda: model(sub_batch, timesteps=sub["t"]))
            loss = F.cross_entropy(logits.float(), sub["y"], reduction="none")
            log_loss_dict(self.diffusion, sub["t"], {
                f"{prefix}_loss": loss.detach(),
                f"{prefix}_acc@1": compute_top_k(logits, sub["y"], k=1),
                f"{prefix}_acc@5": compute_top_k(logits, sub["y"], k=5),
            })
            if training:
                self.mp_trainer.backward(loss.mean() * len(sub_batch) / len(batch))

    def _noise_timesteps(self, n):
        """[n] timesteps the batch is noised at: drawn by the schedule sampler, or all 0 (clean images)."""
        if self.noised:
            return self.schedule_sampler.sample(n, dist_util.dev())[0]
        return th.zeros(n, dtype=th.long, device=dist_util.dev())

    def after_step(self):
        if self.val_data is not None and self.step % self.eval_interval == 0:
            batch, cond = next(self.val_data)
            self.model.eval()
            with th.no_grad():
                self.forward_backward(batch, cond, prefix="val")
            self.model.train()


def compute_top_k(logits, labels, k):
    """[N] float: 1 where the label is among the k largest logits (k capped at the class count)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


def set_annealed_lr(opt, base_lr, frac_done):
    """Linear decay: lr = base_lr * (1 - frac_done)."""
    for group in opt.param_groups:
        group["lr"] = base_lr * (1 - frac_done)


def ema_rate_at(rate, step, warmup):
    """The EMA rate of the update after training step `step` (1, 2, ...): with warm-up
    min(rate, (1 + step) / (10 + step)), so a short run's EMA is not stuck near its random start."""
    return min(rate, (1 + step) / (10 + step)) if warmup else rate


def update_ema(target_params, source_params, rate=0.99):
    """target <- rate * target + (1 - rate) * source, in place, for lists of tensors."""
    th._foreach_mul_(target_params, rate)
    th._foreach_add_(target_params, source_params, alpha=1 - rate)


def log_loss_dict(diffusion, ts, losses):
    """Log the mean of each [N] loss and its means per timestep quartile (key_q0 .. key_q3).

    Stays on the device: the values become numbers only when the logger dumps.
    """
    quartile = (4 * ts // diffusion.num_timesteps).clamp(max=3)
    for key, values in losses.items():
        values = values.detach().float()
        logger.logkv_mean(key, values.mean())
        for q in range(4):
            mask = (quartile == q).float()
            count = mask.sum()
            logger.logkv_mean(f"{key}_q{q}", (values * mask).sum() / count.clamp(min=1), n=count)


def parse_ema_rates(ema_rate):
    """"0.9999,0.99" (or a float, or "") -> [0.9999, 0.99]."""
    if isinstance(ema_rate, float):
        return [ema_rate]
    return [float(x) for x in ema_rate.split(",") if x.strip()]


class _ResumeFiles:
    """What --resume_checkpoint points at: the model file, and the opt/EMA/state files beside it."""

    def __init__(self, path):
        if not bf.exists(path):
            raise FileNotFoundError(f"--resume_checkpoint {path!r} does not exist; pass a modelNNNNNN.pt "
                                    f"written by a previous run (or a released checkpoint to fine-tune)")
        self.model_path, self.dir = path, bf.dirname(path)
        step = train_state.parse_resume_step_from_filename(path)
        if step is None:
            logger.log(f"{bf.basename(path)} is not named modelNNNNNN.pt: starting at step 0 from its "
                       f"weights (fine-tuning)")
        self.step = step or 0
        self.named_like_run = step is not None
        self.opt_path = self._beside(train_state.opt_filename(self.step))
        self.state_path = self._beside(train_state.state_filename(self.step))
        self._refuse_an_incomplete_set()

    def _refuse_an_incomplete_set(self):
        """A run of this project (state files beside it) resumes only from a complete set, exactly; a
        release checkpoint (no state files) resumes as released, with warnings for the missing files."""
        complete = train_state.complete_steps(self.dir)
        if not self.named_like_run or self.step in complete or not train_state.has_resume_state(self.dir):
            return
        missing = [name for name in (train_state.opt_filename(self.step), train_state.state_filename(self.step))
                   if not bf.exists(bf.join(self.dir, name))]
        newest = (f"resume from the newest complete set instead, --resume_checkpoint "
                  f"{bf.join(self.dir, train_state.model_filename(complete[-1]))}" if complete
                  else "no complete set is in that folder")
        raise ValueError(f"{self.model_path} is part of an incomplete checkpoint set ({', '.join(missing)} "
                         f"missing), left by an interrupted save: {newest}; or start from its weights at "
                         f"step 0 with --init_checkpoint")

    def _beside(self, name):
        path = bf.join(self.dir, name)
        return path if self.named_like_run and bf.exists(path) else None

    def ema_path(self, rate):
        return self._beside(train_state.ema_filename(rate, self.step))


def _prepare_log_dir(log_dir, start_step, resume):
    """Tidy log_dir for a run starting at start_step (rank 0 only): remove the temp files of an interrupted
    save; move aside the files of later steps when a run resumes in its own folder, else those of later
    incomplete sets only; refuse other conflicts (the checkpoints of another run)."""
    removed = train_state.remove_temp_files(log_dir)
    if removed:
        logger.log(f"removed {len(removed)} temp file(s) left in {log_dir} by an interrupted save: "
                   f"{', '.join(removed)}")
    own_folder = resume is not None and resume.named_like_run and train_state.same_folder(resume.dir, log_dir)
    later = train_state.later_files(log_dir, start_step, incomplete_only=not own_folder)
    if later:
        folder = train_state.set_aside(log_dir, start_step, later)
        kind = "later checkpoints (complete or not)" if own_folder else "incomplete checkpoint sets (no model file)"
        logger.warn(f"starting at step {start_step}: moved the {len(later)} files of {kind} aside to {folder}, "
                    f"deleting nothing: {', '.join(later)}")
    train_state.check_log_dir_is_free(log_dir, start_step, resume.dir if resume else None)


class _StopSignals:
    """Context that turns SIGINT/SIGTERM into a stop request agreed on by all ranks."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self._old = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self):
        """The signal number any rank received, else 0 (one small all-reduce when several ranks run)."""
        if dist_util.get_world_size() == 1:
            return self.signum
        device = dist_util.dev() if dist.get_backend() == "nccl" else "cpu"
        received = th.tensor([self.signum], device=device)
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
        return int(received.item())
