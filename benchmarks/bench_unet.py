"""Throughput of one denoising step (UNet forward) and one training step, per speed option.

Prints one line per option set: images/s and the max abs deviation of the output from the
float32 "math" reference on the same weights and inputs. Example (GPU):

    python benchmarks/bench_unet.py --preset adm256_uncond --batch_size 16
    python benchmarks/bench_unet.py --preset adm64_cond --batch_size 64 --train True

On the CPU use a tiny configuration, e.g. --preset "" --image_size 32 --channel_mult 1,2 --num_channels 32.
"""

import argparse
import time

import torch as th

from guided_diffusion import script_util as su

OPTIONS = [  # (name, attention_impl, precision, compile)
    ("fp32 math (reference)", "math", "fp32", False),
    ("fp32 sdpa", "sdpa", "fp32", False),
    ("fp16 torso (release)", "math", "fp16", False),
    ("fp16 torso + sdpa", "sdpa", "fp16", False),
    ("bf16 autocast + sdpa", "sdpa", "bf16", False),
    ("bf16 autocast + sdpa + compile", "sdpa", "bf16", True),
]


def build(args, attention_impl, precision, device):
    flags = su.args_to_dict(args, su.model_and_diffusion_defaults().keys())
    flags.update(attention_impl=attention_impl, use_fp16=precision == "fp16")
    th.manual_seed(0)
    model, _ = su.create_model_and_diffusion(**flags)
    with th.no_grad():  # zero-initialised output layers get random weights, or every option would agree
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    return model.to(device)


def timed(fn, iters, device):
    fn()
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        th.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        out = fn()
    if device.type == "cuda":
        th.cuda.synchronize()
    return (time.perf_counter() - start) / iters, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    su.add_dict_to_argparser(parser, su.model_and_diffusion_defaults())
    su.add_dict_to_argparser(parser, dict(batch_size=8, iters=10, train=False, device="cuda" if th.cuda.is_available() else "cpu"))
    args = su.parse_args(parser)
    device = th.device(args.device)
    n = args.batch_size
    g = th.Generator().manual_seed(1)
    x = th.randn(n, 3, args.image_size, args.image_size, generator=g).to(device)
    t = th.randint(0, 1000, (n,), generator=g).to(device)
    kwargs = {"y": th.randint(0, args.num_classes, (n,), generator=g).to(device)} if args.class_cond else {}
    print(f"device={th.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} torch={th.__version__} "
          f"preset={args.preset or '-'} image_size={args.image_size} batch={n} mode={'train' if args.train else 'forward'}")
    reference = None
    for name, impl, precision, compile_ in OPTIONS:
        if device.type == "cpu" and (precision != "fp32" or compile_):
            continue  # half-precision kernels and compilation are GPU options
        model = build(args, impl, precision, device)
        run = th.compile(model) if compile_ else model
        autocast = th.autocast(device.type, dtype=th.bfloat16, enabled=precision == "bf16")

        def step():
            with autocast:
                if not args.train:
                    with th.no_grad():
                        return run(x, t, **kwargs).float()
                out = run(x, t, **kwargs).float()
            out.square().mean().backward()
            return out.detach()

        seconds, out = timed(step, args.iters, device)
        reference = out if reference is None else reference
        deviation = (out - reference).abs().max().item()
        print(f"{name:34s} {n / seconds:9.1f} img/s  {seconds * 1000:8.1f} ms/step  max|out-ref|={deviation:.2e}")


if __name__ == "__main__":
    main()
