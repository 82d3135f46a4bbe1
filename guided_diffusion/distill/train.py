"""Consistency distillation and consistency training of an ADM student on its teacher's schedule: the checks
before a run writes anything, the teacher (with classifier-free guidance baked in), the target network, and
the training loop (train_util's, with the consistency loss of losses.py in place of the diffusion loss).

The student f, target f^- and teacher D are VPModel(network, diffusion).consistency / .denoise on the
teacher's un-respaced diffusion, so every network sees only the teacher's integer timesteps (grid.py).
"""

import copy
import dataclasses

import blobfile as bf
import torch as th

from .. import dist_util, logger
from ..build import build_diffusion, build_unet
from ..checkpoint import check_state_dict_fits, load_checkpoint, read_state_dict, read_torch_file
from ..errors import UsageError
from ..fp16_util import get_param_groups_and_shapes, master_params_to_model_params
from ..guidance import ClassifierFreeGuidance, GuidedDenoiser
from ..schedules import gather
from ..train_setup import run_config
from ..train_state import CONFIG_NAME, read_config
from ..train_util import TrainLoop, log_loss_dict, update_ema
from .grid import timestep_grid
from .losses import consistency_losses, draw_indices
from .parameterisation import VPModel
from .schedules import TargetSchedule

DISTILLATION = "consistency_distillation"


def target_schedule(config):
    """The (mu, N) schedule of a ConsistencyConfig: N is --num_scales on a fixed grid, else it grows from
    --start_scales."""
    fixed = config.scale_mode == "fixed"
    return TargetSchedule(target_ema_mode=config.target_ema_mode, scale_mode=config.scale_mode,
                          start_ema=config.start_ema, start_scales=config.num_scales if fixed else config.start_scales,
                          end_scales=config.end_scales, total_steps=config.total_training_steps)


def run_steps(config):
    """The steps a run of a ConsistencyConfig takes: --max_steps, else --total_training_steps."""
    return config.max_steps or config.total_training_steps


def check_consistency_run(configs):
    """Before anything is written: refuse a run that cannot work, each in one line. configs: (ModelConfig,
    DiffusionConfig, ConsistencyConfig), the model and diffusion flags filled from --teacher_path's run."""
    model_config, diffusion_config, config = configs
    if config.training_mode == DISTILLATION and not config.teacher_path:
        raise UsageError("--training_mode consistency_distillation needs the diffusion model to distil: pass "
                         "--teacher_path, or train without a teacher with --training_mode consistency_training")
    if config.teacher_path:
        _check_not_a_consistency_model(config.teacher_path)
    if config.guidance_scale != 1:
        _check_guidance("--guidance_scale", config.guidance_scale, config, model_config)
    if config.guidance_scale_max != 1:
        _check_guidance("--guidance_scale_max", config.guidance_scale_max, config, model_config)
    if diffusion_config.timestep_respacing:
        raise UsageError(f"--timestep_respacing {diffusion_config.timestep_respacing}: a consistency model trains on "
                         "the teacher's whole schedule (the grid picks its timesteps, --num_scales); leave it out")
    _check_grid(build_diffusion(diffusion_config).alphas_cumprod, config)


def _check_not_a_consistency_model(path):
    """A consistency model's checkpoint (its run's flags name a --training_mode) predicts the ODE's end, not
    the denoiser D that a teacher's step needs."""
    saved = read_config(bf.dirname(path)) or {}
    if "training_mode" in saved.get("train_flags", {}):
        raise UsageError(f"--teacher_path {path} is a consistency model ({saved['train_flags']['training_mode']}, "
                         f"from its {CONFIG_NAME}), not a diffusion model: pass the diffusion checkpoint it was "
                         "trained from (image_train.py's)")


def _check_guidance(flag, value, config, model_config):
    """A fixed W (--guidance_scale) or a drawn one (--guidance_scale_max W_max > 1), not both, needs a teacher to
    guide (CD) with an unconditional branch (label dropout)."""
    given = f"{flag} {value:g}"
    if flag == "--guidance_scale_max" and value < 1:
        raise UsageError(f"{given}: W is drawn from U[1, W_max], so W_max must be above 1 (1: off)")
    if config.guidance_scale != 1 and config.guidance_scale_max != 1:
        raise UsageError(f"--guidance_scale {config.guidance_scale:g} with --guidance_scale_max "
                         f"{config.guidance_scale_max:g}: W is either fixed or drawn; give one of them")
    if config.training_mode != DISTILLATION:
        raise UsageError(f"{given} guides the teacher's step, and consistency training has no teacher: use "
                         f"--training_mode consistency_distillation or leave {flag} out")
    if not (model_config.class_cond and model_config.class_dropout_prob > 0):
        raise UsageError(f"{given} needs a class-conditional teacher trained with label dropout, and --teacher_path "
                         f"{config.teacher_path} has class_cond {model_config.class_cond}, class_dropout_prob "
                         f"{model_config.class_dropout_prob}: leave {flag} out, or use a teacher trained with "
                         "--class_dropout_prob > 0")


def _check_grid(alphas_cumprod, config):
    """The largest grid of the run (N never shrinks) must round to distinct timesteps of the schedule."""
    steps = run_steps(config)
    num_levels = target_schedule(config)(steps - 1)[1]
    try:
        timestep_grid(alphas_cumprod, num_levels, config.sigma_max)
    except ValueError as error:
        if config.scale_mode == "fixed":
            raise UsageError(f"--num_scales {num_levels}, --sigma_max {config.sigma_max:g}: {error}") from error
        raise UsageError(f"--end_scales {config.end_scales} with --scale_mode {config.scale_mode}: by step {steps} "
                         f"the grid has {num_levels} levels, and {str(error).replace('--num_scales ', 'N = ')}; "
                         "lower --end_scales (or --total_training_steps / --max_steps)") from error


def check_teacher_classes(teacher_path, class_names):
    """A class-conditional teacher's labels index its own classes: the data's must be the same."""
    saved = read_config(bf.dirname(teacher_path)) or {}
    if saved.get("class_names") not in (None, class_names):
        raise UsageError(f"the data's classes ({', '.join(class_names[:5])}, ...) are not the teacher's "
                         f"({', '.join(saved['class_names'][:5])}, ..., from its {CONFIG_NAME}): the labels would "
                         "name other classes; train on data with the teacher's class names")


def student_config(model_config, config):
    """The student's ModelConfig: the teacher's, with the W input (guidance_embed) under --guidance_scale_max."""
    return dataclasses.replace(model_config, guidance_embed=config.guidance_scale_max > 1)


def start_from_teacher(model, path):
    """Load `path` into a W-input student: strictly every key of the file, and the W embedding's too when it has
    them; a teacher's file leaves the embedding as built (zero output), so the student starts as the teacher."""
    fresh = {key: value for key, value in model.state_dict().items() if key.startswith("guidance_embed.")}
    state_dict = {**fresh, **read_state_dict(path)}
    check_state_dict_fits(model, state_dict, source=path)
    model.load_state_dict(state_dict)
    logger.log(f"initialising weights from {path}, the W embedding's from it or zero (step 0, fresh optimizer)")


def load_teacher(config, model_config, learn_sigma):
    """CD: the network of --teacher_path (built from its run's flags), in eval mode, without gradients; CT: None
    (--teacher_path only starts the student)."""
    if config.training_mode != DISTILLATION:
        return None
    teacher = load_checkpoint(build_unet(model_config, learn_sigma), config.teacher_path)
    return teacher.to(dist_util.dev()).eval().requires_grad_(False)


class GuidedTeacher:
    """The teacher's denoiser with classifier-free guidance at W baked in: D(x, sigma, y) is the x_0 of
    eps_u + W (eps_c - eps_u) (guidance.ClassifierFreeGuidance, both branches in one forward), unclipped.

    teacher: the VPModel of a class-conditional network with a null class; guidance_scale: W, or None for
    each example's own, the keyword guidance_scale [N] of each call (the W the student sees);
    x: [N, C, H, W]; sigma: [N], levels of the teacher's schedule; y: [N] labels.
    """

    def __init__(self, teacher, guidance_scale=None):
        self.teacher = teacher
        self.guidance_scale = guidance_scale

    def __call__(self, x, sigma, guidance_scale=None, **model_kwargs):
        diffusion = self.teacher.diffusion
        t = self.teacher.timesteps(sigma)
        x_t = gather(diffusion.sqrt_alphas_cumprod, t, x.shape) * x
        scale = guidance_scale if self.guidance_scale is None else self.guidance_scale
        guides = (ClassifierFreeGuidance(scale, self.teacher.model.null_class),)
        denoiser = GuidedDenoiser(diffusion, self.teacher.model, guides, clip_denoised=False,
                                  model_kwargs=model_kwargs)
        return denoiser(x_t, t)["pred_xstart"]


class TargetNetwork:
    """theta^-, the copy of the student that the consistency loss aims at, updated by EMA after each step.

    model: the student (its torso float16 when trained with --use_fp16); mp_trainer: its MixedPrecisionTrainer;
    state_dict: the float32 weights to start from. `params` are float32 in the layout of the trainer's master
    params; `model` computes with them (cast to its dtypes).
    """

    def __init__(self, model, mp_trainer, state_dict):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.model.load_state_dict(state_dict)
        self.mp_trainer = mp_trainer
        self.groups = get_param_groups_and_shapes(self.model.named_parameters()) if mp_trainer.use_fp16 else None
        if self.groups:
            self.params = [p.detach().clone() for p in mp_trainer.state_dict_to_master_params(state_dict)]
        else:
            self.params = list(self.model.parameters())

    @th.no_grad()
    def update(self, source_params, rate):
        """theta^- <- rate theta^- + (1 - rate) theta, theta: the trainer's master params."""
        update_ema(self.params, [p.detach() for p in source_params], rate)
        if self.groups:
            master_params_to_model_params(self.groups, self.params)

    def state_dict(self):
        """The target's float32 weights as a state dict of the student's keys."""
        return self.mp_trainer.master_params_to_state_dict(self.params)


class ConsistencyTrainLoop(TrainLoop):
    """TrainLoop with the consistency loss: checkpoint sets, exact resume, signals, ranks, the student's EMA
    and --max_steps as image_train's; the target network's weights are in each stateNNNNNN.pt.

    model:      the student, built in float32 from student_config; it starts from --init_checkpoint or else
                --teacher_path (none: CT from scratch).
    diffusion:  the teacher's GaussianDiffusion, not respaced: the grid lies on its timesteps.
    teacher:    the teacher network for CD (load_teacher), None for CT.
    config:     a config.ConsistencyConfig; use_fp16, run_config: as TrainLoop's.
    Step k (counted from 0) trains on N(k) levels and then moves the target by mu(k) (TargetSchedule), as
    consistency_models does; both are functions of the step, so a resumed run needs only its step.
    With --guidance_scale_max, each example draws W ~ U[1, W_max] after its z and n: the teacher is guided at
    W and the student and target take it as their input guidance_scale.
    """

    def __init__(self, *, model, diffusion, data, config, teacher=None, use_fp16=False, run_config=None):
        self.schedule = target_schedule(config)
        self.sigma_max, self.solver = config.sigma_max, config.teacher_solver
        self.loss_options = dict(loss_norm=config.loss_norm, weight_schedule=config.weight_schedule,
                                 huber_c=config.huber_c or None)
        self.guidance_scale_max = config.guidance_scale_max
        self._grids = {}
        self._resumed_target = None
        if teacher is not None:
            # The student learns the teacher's conditional trajectories: it keeps the batch's labels, as
            # consistency_models' students do (its null class, if any, stays as the teacher left it).
            model.class_dropout_prob = 0.0
        start_path = config.init_checkpoint or config.teacher_path
        if config.guidance_scale_max > 1 and start_path and not config.resume_checkpoint:
            start_from_teacher(model, start_path)
            start_path = ""
        loop_config = dataclasses.replace(config, init_checkpoint=start_path, max_steps=run_steps(config))
        super().__init__(model=model, diffusion=diffusion, data=data, config=loop_config, use_fp16=use_fp16,
                         run_config=run_config)
        start = self._resumed_target
        if start is None:
            start = self.mp_trainer.master_params_to_state_dict(self.mp_trainer.master_params)
        self.target = TargetNetwork(model, self.mp_trainer, start)
        self.student = VPModel(self.ddp_model, diffusion).consistency
        self.target_f = VPModel(self.target.model, diffusion).consistency
        self.teacher = None
        if teacher is not None:
            teacher_vp = VPModel(teacher, diffusion)
            if config.guidance_scale_max > 1:
                self.teacher = GuidedTeacher(teacher_vp)
            elif config.guidance_scale != 1:
                self.teacher = GuidedTeacher(teacher_vp, config.guidance_scale)
            else:
                self.teacher = teacher_vp.denoise

    def grid(self, num_levels):
        """(timesteps [N] int64, sigmas [N] float32) on the device: the teacher's grid of N levels (cached per N)."""
        if num_levels not in self._grids:
            grid = timestep_grid(self.diffusion.alphas_cumprod, num_levels, self.sigma_max)
            self._grids[num_levels] = tuple(values.to(dist_util.dev()) for values in grid)
        return self._grids[num_levels]

    def forward_backward(self, batch, cond):
        """Accumulate the gradients of the mean consistency loss over the micro-batches on the grid of N(step):
        per example z, then the level index n (consistency_models' order), then the student, teacher and target.
        Logs N, the loss and its means per quartile of the teacher's timestep at sigma_hi (loss_q0: least noise)."""
        self.mp_trainer.zero_grad()
        timesteps, sigmas = self.grid(self.schedule(self.step)[1])
        logger.logkv("num_scales", len(sigmas))
        for micro, micro_cond, is_last in self.micro_batches(batch, cond):
            noise = th.randn_like(micro)
            indices = draw_indices(micro.shape[0], len(sigmas), micro.device)
            if self.guidance_scale_max > 1:
                scale = 1 + (self.guidance_scale_max - 1) * th.rand(micro.shape[0], device=micro.device)
                micro_cond = dict(micro_cond, guidance_scale=scale)
            terms = self.forward(is_last, lambda: consistency_losses(
                self.student, self.target_f, micro, sigmas, indices, noise, teacher=self.teacher, solver=self.solver,
                model_kwargs=micro_cond, **self.loss_options))
            log_loss_dict(self.diffusion, timesteps[indices], {"loss": terms["loss"]})
            self.mp_trainer.backward(terms["loss"].mean())

    def _update_ema(self):
        """The student's EMAs, then the target with mu of the step just taken (logged as target_ema)."""
        super()._update_ema()
        target_ema = self.schedule(self.step - 1)[0]
        self.target.update(self.mp_trainer.master_params, target_ema)
        logger.logkv("target_ema", target_ema)

    def _train_state(self):
        return dict(super()._train_state(), target=self.target.state_dict())

    def _load_train_state(self, resume):
        """TrainLoop's state, and the target's weights kept for __init__ (the target is built after the student's
        weights have loaded)."""
        super()._load_train_state(resume)
        if resume.state_path is None:
            return
        state = read_torch_file(resume.state_path, "the training state saved with the model file (stateNNNNNN.pt)",
                                map_location=dist_util.dev())
        if "target" not in state:
            raise UsageError(f"--resume_checkpoint {resume.model_path} is not a consistency run's (no target network "
                             f"in its {resume.state_path}): start from its weights with --teacher_path or "
                             "--init_checkpoint")
        self._resumed_target = state["target"]


def train_consistency(model, diffusion, data, config, model_configs, class_names, teacher=None):
    """Run ConsistencyTrainLoop to the end; model_configs: (ModelConfig, DiffusionConfig), for --use_fp16 and
    train_config.json (the teacher's flags with the consistency ones, so --model_path alone samples the student)."""
    if config.teacher_path and model_configs[0].class_cond:
        check_teacher_classes(config.teacher_path, class_names)
    ConsistencyTrainLoop(model=model, diffusion=diffusion, data=data, config=config, teacher=teacher,
                         use_fp16=model_configs[0].use_fp16,
                         run_config=run_config(model_configs, config, class_names)).run_loop()
