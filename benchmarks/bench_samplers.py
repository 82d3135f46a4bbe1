"""Images per second of each sampler at its step count, side by side in one process: the speed half of
"few-step sampling" (the quality half is scripts/sweep.py's FID). Runs are interleaved round by round so
that a change of load hits them all alike. Prints one line per run: seconds per batch, images/s, model
evaluations per image, milliseconds per evaluation (the sampler's own overhead shows as a higher figure)
and the speed-up over the first run.

    python benchmarks/bench_samplers.py                                   # the demo's architecture, CPU
    python benchmarks/bench_samplers.py --preset adm64_cond --batch_size 64 --runs ddpm:250,dpm++2m-sde:25

Weights are random (a sampler's cost does not depend on them). The model is --preset's (default "demo": the
quickstart's architecture with learned sigma; or a released model's, e.g. adm64_cond; or "" for script_util's
defaults); flags given on the command line change it (e.g. --attention_impl sdpa).
"""

import argparse
import time

import torch as th

from guided_diffusion import script_util as su
from guided_diffusion.presets import PRESETS
from guided_diffusion.samplers import SAMPLERS, sample

DEMO = dict(image_size=28, image_channels=1, num_classes=10, noise_schedule="cosine", num_channels=32,
            num_res_blocks=1, channel_mult="1,2,2", attention_resolutions="7", num_heads=2, class_cond=True,
            learn_sigma=True)


def parse_runs(text):
    """"ddpm:250,dpm++2m:25" -> [("ddpm", 250), ("dpm++2m", 25)]."""
    runs = []
    for item in text.split(","):
        name, _, steps = item.partition(":")
        if name not in SAMPLERS or not steps.isdigit():
            raise SystemExit(f"--runs: {item!r} is not SAMPLER:STEPS with SAMPLER one of {', '.join(SAMPLERS)}")
        runs.append((name, int(steps)))
    return runs


def _preset_flags():
    """The model flags of --preset (read ahead of the full parse): DEMO, a released model's, or {} for ""."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="demo")
    name = pre.parse_known_args()[0].preset
    presets = {"demo": DEMO, **PRESETS}
    if name and name not in presets:
        raise SystemExit(f"--preset: {name!r} is not one of {', '.join(presets)} (or \"\" for no preset)")
    return presets.get(name, {})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = _preset_flags()  # the preset's flags are the defaults: a flag given on the command line wins
    su.add_dict_to_argparser(parser, {**su.model_and_diffusion_defaults(), **preset})
    su.add_dict_to_argparser(parser, dict(preset="demo", runs="ddpm:250,ddpm:25,ddim:25,dpm++2m:25,dpm++2m-sde:25,heun:13",
                                          batch_size=64, rounds=2, threads=0,
                                          device="cuda" if th.cuda.is_available() else "cpu"))
    args = su.parse_args(parser)
    if args.threads:
        th.set_num_threads(args.threads)
    flags = su.args_to_dict(args, su.model_and_diffusion_defaults().keys())
    device = th.device(args.device)
    runs = parse_runs(args.runs)
    th.manual_seed(0)
    model, _ = su.create_model_and_diffusion(**flags)
    with th.no_grad():  # zero-initialised output layers get random weights: eps = 0 would be a special case
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    model.to(device).eval()
    diffusions = {steps: su.create_model_and_diffusion(**{**flags, "timestep_respacing": str(steps)})[1]
                  for _, steps in runs}
    shape = (args.batch_size, flags["image_channels"], flags["image_size"], flags["image_size"])
    labels = {"y": th.arange(args.batch_size, device=device) % flags["num_classes"]} if flags["class_cond"] else {}
    print(f"model: {args.preset or 'the flags given'}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          "parameters")
    seconds, evaluated = {run: [] for run in runs}, {}

    def counted(x, t, **kwargs):
        counted.images += len(x)
        return model(x, t, **kwargs)

    for _ in range(args.rounds):
        for sampler, steps in runs:
            th.manual_seed(0)
            counted.images = 0
            start = time.perf_counter()
            sample(diffusions[steps], counted, shape, sampler=sampler, model_kwargs=labels, device=device)
            if device.type == "cuda":
                th.cuda.synchronize()
            seconds[sampler, steps].append(time.perf_counter() - start)
            evaluated[sampler, steps] = counted.images / args.batch_size
    print(f"device={device} torch={th.__version__} threads={th.get_num_threads()} batch={args.batch_size} "
          f"image={shape[1]}x{shape[2]}x{shape[3]} rounds={args.rounds} (best round per run)")
    first = min(seconds[runs[0]])
    for sampler, steps in runs:
        best = min(seconds[sampler, steps])
        nfe = evaluated[sampler, steps]
        print(f"{sampler:>12} {steps:>4} steps  {best:8.2f} s/batch  {args.batch_size / best:8.2f} img/s  "
              f"{nfe:>4g} NFE  {1000 * best / nfe:7.1f} ms/NFE  {first / best:6.2f}x")


if __name__ == "__main__":
    main()
