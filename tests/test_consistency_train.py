"""scripts/consistency_train.py and guided_diffusion/distill/train.py on tiny_runs' 16x16 teacher (20 cosine
steps, learned sigma, label dropout): a CD run's checkpoint set samples with --model_path alone, the student
starts as the teacher's denoiser, exact resume with the target network and a growing grid, the target's EMA
at mu(k), CT from scratch, guidance baked into the teacher (a fixed W, or a drawn W that the student takes as an
input), and the one-line refusals."""

import dataclasses
import json
import shutil

import pytest
import torch as th

from guided_diffusion import logger
from guided_diffusion.build import build_diffusion, build_unet
from guided_diffusion.checkpoint import load_checkpoint
from guided_diffusion.cli import config_parser, parse_flags
from guided_diffusion.config import ClassSampleConfig, ConsistencyConfig, DiffusionConfig, ModelConfig
from guided_diffusion.distill.grid import timestep_grid
from guided_diffusion.distill.parameterisation import VPModel
from guided_diffusion.distill.sampling import consistency_sample
from guided_diffusion.distill.schedules import TargetSchedule
from guided_diffusion.distill.train import (ConsistencyTrainLoop, GuidedTeacher, check_consistency_run,
                                           check_teacher_classes, load_teacher, student_config)
from guided_diffusion import samplers
from guided_diffusion.errors import UsageError
from guided_diffusion.fp16_util import STEP_TAKEN
from guided_diffusion.run_flags import resolve_configs
from guided_diffusion.sampling import free_guidance, sampler_respacing
from guided_diffusion.train_setup import float32_init, run_config, training_images
from guided_diffusion.train_util import seed_all, update_ema

import test_cli_errors
import test_help
from _train_helpers import TINY_RUN, read_progress, run_script, to_argv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = (ModelConfig, DiffusionConfig, ConsistencyConfig)
# The teacher's 20-step cosine schedule fits 5 levels below sigma 80. A growing grid with an adaptive mu:
# N(k) = 2, 4, 4, 5 and mu(k) = 0.9^(2 / (N(k) - 1)) for steps k = 0..3, the run ending at K = 4.
GROWING = dict(scale_mode="progressive", target_ema_mode="adaptive", start_ema=0.9, start_scales=2, end_scales=4,
               total_training_steps=4)
COMMON = dict(batch_size=2, log_interval=1, ema_rate=0.9, num_workers=0, lr=1e-3)


def resolved(config_classes, argv):
    """The configs a script of config_classes gets from argv, the checkpoints' flags filled in."""
    values, origins = parse_flags(config_parser("", *config_classes), [str(arg) for arg in argv])
    return resolve_configs(values, origins, config_classes)[0]


def load(path):
    return th.load(path, weights_only=True)


def weights(path):
    """A state dict file's tensors (detached: training writes its parameters as they are)."""
    return {name: value.detach() for name, value in load(path).items()}


@pytest.fixture(scope="module")
def cd_runs(tiny_runs, tmp_path_factory):
    """{"straight": CD of tiny_runs' model for K = 4 steps on the GROWING schedule, a set every step;
    "split": the same run stopped at step 2 and resumed to its end}."""
    root = tmp_path_factory.mktemp("cd")
    flags = dict(COMMON, **GROWING, data_dir=tiny_runs["data"], teacher_path=tiny_runs["model"])
    run_script("consistency_train", dict(flags, save_interval=1), root / "straight")
    run_script("consistency_train", dict(flags, save_interval=2, max_steps=2), root / "split")
    run_script("consistency_train", dict(flags, save_interval=2, resume_checkpoint=root / "split" / "model000002.pt"),
               root / "split")
    return {"straight": root / "straight", "split": root / "split"}


def test_help_explains_every_flag():
    test_help.test_every_flag_has_a_description_and_its_default("consistency_train")


@pytest.mark.slow
def test_cd_writes_a_set_that_samples_with_model_path_alone(cd_runs, tiny_runs):
    run = cd_runs["straight"]
    saved = json.loads((run / "train_config.json").read_text())
    teacher = json.loads((tiny_runs["model"].parent / "train_config.json").read_text())
    assert saved["model_flags"] == teacher["model_flags"] and saved["class_names"] == ["dark", "light"]
    assert saved["train_flags"]["teacher_path"] == str(tiny_runs["model"])
    assert saved["train_flags"]["training_mode"] == "consistency_distillation"
    rows = read_progress(run)
    assert [row["num_scales"] for row in rows] == [2, 4, 4, 5]
    assert [row["target_ema"] for row in rows] == pytest.approx([0.9**2, 0.9 ** (2 / 3), 0.9 ** (2 / 3), 0.9**0.5])
    assert any(key.startswith("loss_q") for row in rows for key in row) and all(row["loss"] > 0 for row in rows)

    path = run / "ema_0.9_000004.pt"
    model_config, diffusion_config, _ = resolved((ModelConfig, DiffusionConfig, ClassSampleConfig),
                                                 ["--model_path", path])
    assert (model_config.image_channels, model_config.class_dropout_prob, diffusion_config.diffusion_steps,
            diffusion_config.noise_schedule, diffusion_config.learn_sigma) == (1, 0.1, 20, "cosine", True)
    model = load_checkpoint(build_unet(model_config, diffusion_config.learn_sigma), path).eval()
    student = VPModel(model, build_diffusion(diffusion_config), clip_denoised=True)
    _, sigmas = timestep_grid(student.diffusion.alphas_cumprod, 5)
    noise = th.randn(2, 1, 16, 16, generator=th.Generator().manual_seed(0))
    samples = consistency_sample(student.consistency, noise, sigmas[[0, 2]], student.sigma_min,
                                 model_kwargs={"y": th.tensor([0, 1])})
    assert samples.shape == (2, 1, 16, 16) and bool(samples.isfinite().all()) and samples.abs().max() <= 1


@pytest.mark.slow
def test_cd_resumes_exactly_with_the_target_network_and_a_growing_grid(cd_runs):
    straight, split = cd_runs["straight"], cd_runs["split"]
    for name in ["model000004.pt", "ema_0.9_000004.pt"]:
        a, b = weights(straight / name), weights(split / name)
        assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a), name
    a, b = load(straight / "state000004.pt"), load(split / "state000004.pt")
    assert a["step"] == b["step"] == 4
    assert all(th.equal(a["target"][k], b["target"][k]) for k in a["target"])
    a, b = load(straight / "opt000004.pt")["state"], load(split / "opt000004.pt")["state"]
    assert all(th.equal(a[i][k], b[i][k]) for i in a for k in a[i] if isinstance(a[i][k], th.Tensor))
    assert read_progress(straight) == read_progress(split)
    assert not (straight / "model000005.pt").exists()  # the run ends at --total_training_steps


@pytest.mark.slow
def test_target_moves_by_the_schedules_mu_after_each_step(cd_runs, tiny_runs):
    """theta^-_{k+1} = mu(k) theta^-_k + (1 - mu(k)) theta_{k+1}, from theta^-_0 = theta_0 = the teacher."""
    run = cd_runs["straight"]
    schedule = TargetSchedule(target_ema_mode="adaptive", scale_mode="progressive", start_ema=0.9, start_scales=2,
                              end_scales=4, total_steps=4)  # GROWING's
    target = weights(tiny_runs["model"])
    for k in range(4):
        student = weights(run / f"model{k + 1:06d}.pt")
        expected = {name: value.clone() for name, value in target.items()}
        update_ema(list(expected.values()), [student[name] for name in expected], schedule(k)[0])
        target = load(run / f"state{k + 1:06d}.pt")["target"]
        assert all(th.equal(target[name], expected[name]) for name in expected), k
        assert any(not th.equal(target[name], student[name]) for name in expected), k


def consistency_loop(log_dir, data_dir, *argv):
    """The ConsistencyTrainLoop that consistency_train.py builds for argv, in this process (not run)."""
    model_config, diffusion_config, config = resolved(CONFIGS, ["--data_dir", data_dir, *to_argv(COMMON), *argv])
    logger.configure(dir=str(log_dir))
    seed_all(0)
    student = student_config(model_config, config)
    model = build_unet(float32_init(student), diffusion_config.learn_sigma)
    teacher = load_teacher(config, model_config, diffusion_config.learn_sigma)
    data = training_images(config, model_config.image_size, True, model_config.num_classes, 1)
    return ConsistencyTrainLoop(model=model, diffusion=build_diffusion(diffusion_config), data=data, config=config,
                                teacher=teacher, use_fp16=model_config.use_fp16,
                                run_config=run_config((student, diffusion_config), config, data.class_names))


def levels_and_inputs(loop, n=32):
    """x [n, 1, 16, 16] at the teacher's levels sigma [n] (those of a 5-level grid but the last, in turn),
    labels y [n] (0, 1 in turn)."""
    _, sigmas = loop.grid(5)
    sigma = sigmas[th.arange(n) % 4]
    gen = th.Generator().manual_seed(1)
    x = th.rand(n, 1, 16, 16, generator=gen) * 2 - 1 + sigma.view(-1, 1, 1, 1) * th.randn(n, 1, 16, 16, generator=gen)
    return x, sigma, th.arange(n) % 2


def test_student_and_target_start_as_the_teacher_and_f_is_its_denoiser_plus_s0_eps(tmp_path, tiny_runs):
    loop = consistency_loop(tmp_path, tiny_runs["data"], "--teacher_path", tiny_runs["model"], "--num_scales", 5)
    teacher = weights(tiny_runs["model"])
    for start in (loop.model.state_dict(), loop.target.state_dict()):
        assert start.keys() == teacher.keys() and all(th.equal(start[k], teacher[k]) for k in teacher)
    x, sigma, y = levels_and_inputs(loop)
    with th.no_grad():  # in training mode, as the loss calls them
        student, denoised = loop.student(x, sigma, y=y), loop.teacher(x, sigma, y=y)
        assert th.equal(loop.student(x, sigma, y=y), student)  # no label dropout: it learns the teacher's labels
    s0 = VPModel(loop.model, loop.diffusion).sigma_min
    eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
    th.testing.assert_close(student, denoised + s0 * eps, atol=2e-6 * x.abs().max().item(), rtol=0)


def test_fp16_target_computes_with_its_float32_weights(tmp_path, tiny_runs):
    loop = consistency_loop(tmp_path, tiny_runs["data"], "--teacher_path", tiny_runs["model"], "--num_scales", 5,
                            "--use_fp16", True)
    loop.run_step(*next(loop.data))
    assert loop.mp_trainer.last_status == STEP_TAKEN
    expected = weights(tiny_runs["model"])
    student = loop.mp_trainer.master_params_to_state_dict(loop.mp_trainer.master_params)
    update_ema(list(expected.values()), [student[name] for name in expected], 0.95)
    target = loop.target.state_dict()
    assert all(th.equal(target[name], expected[name]) for name in expected)
    halves = dict(loop.target.model.named_parameters())
    assert any(p.dtype == th.float16 for p in halves.values())
    assert all(th.equal(p, target[name].to(p.dtype)) for name, p in halves.items())


def test_guided_teacher_is_the_x0_of_the_classifier_free_guided_eps(tmp_path, tiny_runs):
    loop = consistency_loop(tmp_path, tiny_runs["data"], "--teacher_path", tiny_runs["model"], "--num_scales", 5,
                            "--guidance_scale", 3)
    assert json.loads((tmp_path / "train_config.json").read_text())["train_flags"]["guidance_scale"] == 3
    x, sigma, y = levels_and_inputs(loop)
    network, diffusion = loop.teacher.teacher.model, loop.diffusion
    t = VPModel(network, diffusion).timesteps(sigma)
    alpha_bar = th.from_numpy(diffusion.alphas_cumprod).float()[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x
    with th.no_grad():
        eps_c, eps_u = (network(x_t, t, y=labels)[:, :1] for labels in (y, th.full_like(y, network.null_class)))
        guided = loop.teacher(x, sigma, y=y)
    eps = eps_u + 3 * (eps_c - eps_u)
    x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    th.testing.assert_close(guided, x0, atol=2e-6 * x.abs().max().item(), rtol=0)


def test_a_w_input_model_is_the_plain_one_at_init_for_every_w_and_off_by_default():
    config = ModelConfig(**{k: v for k, v in TINY_RUN.items() if k not in ("learn_sigma", "diffusion_steps",
                                                                           "noise_schedule")})
    th.manual_seed(0)
    plain = build_unet(config)
    th.manual_seed(0)
    w_input = build_unet(dataclasses.replace(config, guidance_embed=True))
    keys, w_keys = list(plain.state_dict()), list(w_input.state_dict())
    assert w_keys[:len(keys)] == keys and all(key.startswith("guidance_embed.") for key in w_keys[len(keys):])
    assert all(th.equal(plain.state_dict()[k], w_input.state_dict()[k]) for k in keys)
    gen = th.Generator().manual_seed(0)
    x, t, y = th.randn(4, 1, 16, 16, generator=gen), th.tensor([0, 5, 10, 19]), th.tensor([0, 1, 2, 1])
    with th.no_grad():
        expected = plain(x, t, y)
        for scale in (None, 1.0, 3.5, th.tensor([1.0, 2.0, 7.5, 1.25])):
            assert th.equal(w_input(x, t, y, guidance_scale=scale), expected), scale
        with pytest.raises(ValueError, match="guidance_scale is an input of a model built with guidance_embed only"):
            plain(x, t, y, guidance_scale=2.0)


def test_a_drawn_w_guides_the_teacher_per_example_and_is_the_students_input(tmp_path, tiny_runs):
    loop = consistency_loop(tmp_path, tiny_runs["data"], "--teacher_path", tiny_runs["model"], "--num_scales", 5,
                            "--guidance_scale_max", 4)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["model_flags"]["guidance_embed"] and saved["train_flags"]["guidance_scale_max"] == 4
    teacher, start = weights(tiny_runs["model"]), loop.model.state_dict()
    assert all(th.equal(start[k], teacher[k]) for k in teacher)
    assert sorted(set(start) - set(teacher)) == [f"guidance_embed.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    x, sigma, y = levels_and_inputs(loop)
    scale = th.tensor([1.0, 2.5, 4.0, 1.75]).repeat(8)
    with th.no_grad():
        guided = loop.teacher(x, sigma, y=y, guidance_scale=scale)
        for w in scale.unique():  # W fixed, the whole batch, its examples' rows
            rows = scale == w
            assert th.equal(guided[rows], GuidedTeacher(loop.teacher.teacher, float(w))(x, sigma, y=y)[rows]), w
        assert th.equal(loop.student(x, sigma, y=y, guidance_scale=scale), loop.student(x, sigma, y=y))
    seen = []
    loop.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["guidance_scale"]),
                                         with_kwargs=True)
    loop.run_step(*next(loop.data))
    assert len(seen) == 1 and seen[0].shape == (2,) and bool(((seen[0] >= 1) & (seen[0] <= 4)).all())


@pytest.mark.slow
def test_a_w_input_student_samples_with_model_path_alone_its_w_from_guidance_scale(tmp_path, tiny_runs):
    flags = dict(COMMON, data_dir=tiny_runs["data"], teacher_path=tiny_runs["model"], num_scales=5, max_steps=2,
                 save_interval=2, guidance_scale_max=4)
    run_script("consistency_train", flags, tmp_path)
    path = tmp_path / "model000002.pt"
    model_config, diffusion_config, _ = resolved((ModelConfig, DiffusionConfig, ClassSampleConfig),
                                                 ["--model_path", path, "--sampler", "consistency"])
    assert model_config.guidance_embed
    model = load_checkpoint(build_unet(model_config, diffusion_config.learn_sigma), path).eval()
    diffusion = build_diffusion(dataclasses.replace(diffusion_config, timestep_respacing=sampler_respacing(
        "consistency", "2")))
    batches = []

    def counted(x, t, **kwargs):
        batches.append(len(x))
        return model(x, t, **kwargs)

    def draw(scale):
        noise = th.randn(2, 1, 16, 16, generator=th.Generator().manual_seed(0))
        return samplers.sample(diffusion, counted, (2, 1, 16, 16), sampler="consistency", noise=noise,
                               guidance=free_guidance(scale, model), model_kwargs={"y": th.tensor([0, 1])},
                               noise_fn=lambda x: th.zeros_like(x))

    with th.no_grad():
        assert not th.equal(draw(1.0), draw(3.0))
    assert batches == [2] * 4  # one evaluation per level, no doubled batch


@pytest.mark.parametrize("flags, teacher_flags, expected", [
    (dict(guidance_scale_max=4), dict(class_dropout_prob=0.0),
     r"--guidance_scale_max 4 needs a class-conditional teacher trained with label dropout"),
    (dict(guidance_scale_max=4, training_mode="consistency_training"), None,
     r"--guidance_scale_max 4 guides the teacher's step, and consistency training has no teacher"),
    (dict(guidance_scale_max=4, guidance_scale=2), None,
     r"--guidance_scale 2 with --guidance_scale_max 4: W is either fixed or drawn"),
    (dict(guidance_scale_max=0.5), None, r"--guidance_scale_max 0.5: .*W_max must be above 1"),
])
def test_a_drawn_w_is_refused_where_it_cannot_work(tmp_path, tiny_runs, flags, teacher_flags, expected):
    teacher = relabelled(tiny_runs["model"], tmp_path / "teacher", **teacher_flags) if teacher_flags else tiny_runs[
        "model"]
    configs = resolved(CONFIGS, ["--data_dir", tiny_runs["data"], "--teacher_path", teacher, "--num_scales", 5,
                                 *to_argv(flags)])
    with pytest.raises(UsageError, match=expected):
        check_consistency_run(configs)


def test_ct_from_scratch_trains_without_a_teacher(tmp_path, tiny_runs):
    flags = dict(COMMON, data_dir=tiny_runs["data"], training_mode="consistency_training", num_scales=4,
                 max_steps=2, save_interval=2, image_size=16, image_channels=1, num_channels=32, num_res_blocks=1,
                 channel_mult="1,2", attention_resolutions="8", class_cond=True, num_classes=2, diffusion_steps=20,
                 noise_schedule="cosine", loss_norm="pseudo-huber", weight_schedule="ict")
    run_script("consistency_train", flags, tmp_path)
    saved = json.loads((tmp_path / "train_config.json").read_text())["train_flags"]
    assert saved["teacher_path"] == "" and saved["training_mode"] == "consistency_training"
    assert "initialising weights" not in (tmp_path / "log.txt").read_text()
    assert [row["loss"] > 0 for row in read_progress(tmp_path)] == [True, True]
    assert "target" in load(tmp_path / "state000002.pt")


def test_ct_from_a_teachers_weights_evaluates_no_teacher(tmp_path, tiny_runs):
    loop = consistency_loop(tmp_path, tiny_runs["data"], "--teacher_path", tiny_runs["model"], "--num_scales", 5,
                            "--training_mode", "consistency_training")
    teacher = weights(tiny_runs["model"])
    assert loop.teacher is None and all(th.equal(loop.model.state_dict()[k], teacher[k]) for k in teacher)


def test_a_teacher_of_other_classes_is_refused(tiny_runs):
    check_teacher_classes(tiny_runs["model"], ["dark", "light"])
    with pytest.raises(UsageError, match=r"the data's classes \(cats, dogs, ...\) are not the teacher's \(dark, light"):
        check_teacher_classes(tiny_runs["model"], ["cats", "dogs"])


def relabelled(model, folder, **flags):
    """A copy of model (a checkpoint of tiny_runs) in folder, its run's train_flags changed by flags."""
    folder.mkdir()
    saved = json.loads((model.parent / "train_config.json").read_text())
    saved["train_flags"].update(flags)
    (folder / "train_config.json").write_text(json.dumps(saved))
    return shutil.copy(model, folder / model.name)


REFUSALS = {  # name: (flags over a CD of tiny_runs' model, its train_flags changed (or None), the error)
    "missing teacher": (dict(teacher_path="missing.pt"), None, r"--teacher_path 'missing.pt' does not exist"),
    "classifier teacher": (dict(teacher_path="classifier"), None,
                           r"holds a noisy-image classifier .*, not a diffusion model"),
    "student teacher": ({}, dict(training_mode="consistency_training"),
                        r"is a consistency model \(consistency_training, from its train_config.json\)"),
    "cd without teacher": (dict(teacher_path=""), None,
                           r"consistency_distillation needs the diffusion model to distil"),
    "guidance without label dropout": (dict(guidance_scale=2), dict(class_dropout_prob=0.0),
                                       r"--guidance_scale 2 needs a class-conditional teacher trained with label "
                                       r"dropout.*class_dropout_prob 0.0"),
    "guidance in ct": (dict(training_mode="consistency_training", guidance_scale=2), None,
                       r"consistency training has no teacher"),
    "grid": (dict(num_scales=8), None, r"--num_scales 8, --sigma_max 80: a grid of 8 levels does not fit a schedule of "
                                       r"20 timesteps .*--num_scales 5, which fit"),
    "growing grid": (dict(scale_mode="progressive", end_scales=10, total_training_steps=4, max_steps=0), None,
                     r"--end_scales 10 with --scale_mode progressive: by step 4 the grid has 10 levels.* N = 5"),
    "respacing": (dict(timestep_respacing="10"), None, r"--timestep_respacing 10: .*whole schedule"),
    "loss norm": (dict(loss_norm="lpips"), None, r"argument --loss_norm: invalid choice: 'lpips'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_runs_fail_in_one_line_and_write_nothing(tmp_path, tiny_runs, case):
    flags, teacher_flags, expected = REFUSALS[case]
    teacher = tiny_runs["model"]
    if teacher_flags:
        teacher = relabelled(teacher, tmp_path / "teacher", **teacher_flags)
    flags = {**COMMON, "data_dir": tiny_runs["data"], "teacher_path": teacher, "num_scales": 5, "max_steps": 1,
             **flags}  # were a refusal missing: one step
    if flags["teacher_path"] == "classifier":
        flags["teacher_path"] = tiny_runs["classifier"]
    result = run_script("consistency_train", flags, tmp_path / "log", check=False)
    test_cli_errors.assert_one_line_error(result, "consistency_train.py", 2, expected)
    assert not (tmp_path / "log").exists()
