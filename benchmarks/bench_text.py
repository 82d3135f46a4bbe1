"""What the caption costs: a text model (GLIDE's) against the class-conditional model of the same UNet widths.

Training: one AdamW step of the hybrid loss (learned sigma) on a batch, for the text model (tokens and mask of
random captions) and for the class-conditional UNet (labels), in one process, interleaved round by round, the
best round of each kept. Sampling: images per second of the text model with classifier-free guidance (the
doubled batch), the caption encoded once per batch (cache_text_emb, as text_sample.py does) against encoded at
every step. Random weights: the cost does not depend on them. Defaults: the text demo's model (28 px RGB, 32
base channels, a 2-block caption transformer of width 64); --xf_width 512 --xf_layers 16 --xf_heads 8 puts
GLIDE's caption transformer on the same UNet.

    python benchmarks/bench_text.py --rounds 3
"""

import argparse
import time

import torch as th

from guided_diffusion.build import build_diffusion, build_text_unet, build_unet
from guided_diffusion.config import DiffusionConfig, ModelConfig, TextModelConfig
from guided_diffusion.samplers import sample
from guided_diffusion.text.prompts import caption_guidance, encoded_once
from guided_diffusion.text.tokenizer import tokens_and_mask

UNET = dict(image_size=28, num_channels=32, num_res_blocks=1, channel_mult="1,2,2", attention_resolutions="7",
            num_heads=2, num_head_channels=-1, dropout=0.0, resblock_updown=False)
CAPTION = "a red sandal on a blue background"


def interleaved_best(fns, rounds):
    """{name: the fastest of `rounds` calls of fn(), in seconds}, each fn warmed up once, then timed round by round
    in turn (the machine's drift hits all alike)."""
    for fn in fns.values():
        fn()
    times = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def train_step(model, diffusion, batch, model_kwargs):
    """fn() running one AdamW step of the hybrid loss on `batch` at random timesteps."""
    opt = th.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        t = th.randint(0, diffusion.num_timesteps, (len(batch),))
        loss = diffusion.training_losses(model, batch, t, model_kwargs=model_kwargs)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32, help="training batch (default: 32, the demo's)")
    parser.add_argument("--sample_batch", type=int, default=50, help="images per sampling batch (default: 50)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps, DDIM (default: 25)")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="classifier-free W (default: 3)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per measurement (default: 3)")
    parser.add_argument("--text_ctx", type=int, default=12)
    parser.add_argument("--xf_width", type=int, default=64)
    parser.add_argument("--xf_layers", type=int, default=2)
    parser.add_argument("--xf_heads", type=int, default=2)
    args = parser.parse_args()
    th.manual_seed(0)

    text_config = TextModelConfig(**UNET, text_ctx=args.text_ctx, xf_width=args.xf_width, xf_layers=args.xf_layers,
                                  xf_heads=args.xf_heads)
    text_model = build_text_unet(text_config, learn_sigma=True)
    class_model = build_unet(ModelConfig(**UNET, class_cond=True, num_classes=10), learn_sigma=True)
    diffusion = build_diffusion(DiffusionConfig(learn_sigma=True, noise_schedule="cosine"))
    tokens, mask, _ = tokens_and_mask([CAPTION], args.text_ctx)
    n = args.batch_size
    batch = th.randn(n, 3, 28, 28)
    text_kwargs = dict(tokens=tokens.repeat(n, 1), mask=mask.repeat(n, 1))
    class_kwargs = dict(y=th.randint(0, 10, (n,)))
    count = lambda model: sum(p.numel() for p in model.parameters()) / 1e6  # noqa: E731
    print(f"device=cpu torch={th.__version__} threads={th.get_num_threads()} train batch={n} "
          f"sample batch={args.sample_batch} rounds={args.rounds} (best round each)")
    print(f"text model {count(text_model):.2f} M parameters (caption transformer width {args.xf_width}, "
          f"{args.xf_layers} blocks); class-conditional {count(class_model):.2f} M")

    steps = {name: train_step(model, diffusion, batch, kwargs) for name, model, kwargs in
             (("class-conditional", class_model, class_kwargs), ("text", text_model, text_kwargs))}
    times = interleaved_best(steps, args.rounds)
    for name, seconds in times.items():
        print(f"training   {name:18s} {1 / seconds:7.2f} steps/s   {seconds * 1000:8.1f} ms/step   "
              f"{times['class-conditional'] / seconds:5.2f}x")

    text_model.eval()
    sampling_diffusion = build_diffusion(DiffusionConfig(learn_sigma=True, noise_schedule="cosine",
                                                         timestep_respacing=f"ddim{args.steps}"))
    m = args.sample_batch
    sample_kwargs = dict(tokens=tokens.repeat(m, 1), mask=mask.repeat(m, 1))
    guides = caption_guidance(args.guidance_scale, args.text_ctx)

    def draw():
        with th.no_grad():
            return sample(sampling_diffusion, text_model, (m, 3, 28, 28), sampler="ddim", guidance=guides,
                          model_kwargs=sample_kwargs)

    runs = {"encoded every step": draw, "encoded once": lambda: encoded_once(text_model, draw)}
    times = interleaved_best(runs, args.rounds)
    for name, seconds in times.items():
        print(f"sampling   {name:18s} {m / seconds:7.2f} images/s  {seconds:8.2f} s/batch   "
              f"{times['encoded every step'] / seconds:5.2f}x  (DDIM {args.steps} steps, W = {args.guidance_scale:g})")


if __name__ == "__main__":
    main()
