"""Judge samples of the captioned colour Fashion-MNIST (fashion_mnist_captions.py): does each image show the
garment, the garment colour and the background colour its prompt asked for?

The colours are read by fashion_mnist_captions.read_colours (the corners' median for the background, the
best-fitting palette segment for the garment); the garment by the clean grey judge of fashion_mnist_judge.py on
the ink that to_grey recovers along that segment. Scores are split into the combinations seen in training and
the held-out ones (fashion_mnist_captions.HELD_OUT), which test composition.

    python datasets/fashion_mnist_caption_judge.py prompts PROMPTS.txt            # 10 unseen + 40 seen prompts
    python datasets/fashion_mnist_caption_judge.py real PROMPTS.txt REF.npz --per_prompt 200 --split t10k
    python datasets/fashion_mnist_caption_judge.py score --cache data/fashion_judge_28px.pt RUN/samples_*.npz \\
        [--prompts PROMPTS.txt] [--ref_batch REF.npz --real_images REAL.npz] [--json OUT.json]

    python datasets/fashion_mnist_caption_judge.py variation_inputs PROMPTS.txt INPUTS/ --per_prompt 4
    python datasets/fashion_mnist_caption_judge.py variations RUN/samples_*.npz --inputs INPUTS/inputs.npz \\
        --prompts INPUTS/prompts.txt --per_input 4

`score` reads each npz's prompts from the prompts.txt beside it (text_sample.py writes it) unless --prompts
names the prompts the samples were asked for (sample i: line i % P; e.g. for empty-caption samples, scored
against the prompts of a conditional run: the chance level). With --ref_batch, every npz also gets its FID with
a bootstrap spread (evaluations/scoring.py), and --real_images adds the real-data floor as the first row.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fashion_mnist_captions as captioned  # noqa: E402
import fashion_mnist_judge  # noqa: E402
from evaluations.npz_io import load_arrays, npz_keys  # noqa: E402
from guided_diffusion.errors import ArgumentParser, run  # noqa: E402

ATTRIBUTES = ("garment", "garment_colour", "background_colour")
GROUPS = ("all", "seen", "unseen")  # unseen: fashion_mnist_captions.HELD_OUT, never in the training split


def evaluation_combinations(seen_per_class=4, seed=0):
    """The held-out triples (one per class), then seen_per_class seen triples of each class drawn without
    replacement from a numpy Generator seeded with `seed`: a list of (class, garment colour, background colour)."""
    rng = np.random.default_rng(seed)
    seen = []
    for label in range(len(captioned.GARMENT_NAMES)):
        pairs = captioned.colour_pairs(label, "exclude")
        if not 0 <= seen_per_class <= len(pairs):
            raise ValueError(f"seen_per_class must be 0-{len(pairs)}, got {seen_per_class}")
        seen += [(label, *pairs[k]) for k in sorted(rng.choice(len(pairs), seen_per_class, replace=False))]
    return captioned.held_out_combinations() + seen


def read_lines(path, per_sample=False):
    """The prompts of a UTF-8 file. per_sample: the prompts.txt text_sample.py writes beside its npz, line i
    sample i's prompt, every line kept (a blank one is the empty caption); else a --prompts_file, blank lines
    skipped as text_sample.py skips them (a file of blank lines only: the empty caption)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines if per_sample else [line for line in lines if line.strip()] or lines


def requested(prompts, n):
    """Sample i asked for prompts[i % P]: its (class, garment colour, background colour) triples, int64 [n, 3]."""
    if not prompts:
        raise ValueError("no prompts to score against: pass --prompts FILE with the captions the samples asked for")
    try:
        triples = [captioned.parse_caption(prompt) for prompt in prompts]
    except ValueError as err:
        raise ValueError(f"{err}; for samples of the empty caption pass --prompts with the conditional run's "
                         "prompts (their chance level)") from None
    return np.array([triples[i % len(triples)] for i in range(n)], dtype=np.int64)


def judge_images(judge, images):
    """uint8 [N, H, W, 3] -> int64 [N, 3]: the judged (class, garment colour, background colour) of each image."""
    garment_colour, background_colour = captioned.read_colours(images)
    ink = captioned.to_grey(images, garment_colour, background_colour)
    garment = fashion_mnist_judge.predict(judge, ink).numpy()
    return np.stack([garment, garment_colour, background_colour], axis=1).astype(np.int64)


def accuracies(judged, asked):
    """Judged and asked triples [N, 3] -> {group: {"n", each attribute's accuracy, "all_three"}} for every group of
    GROUPS that has samples (None for an empty one)."""
    hits = judged == asked
    unseen = np.array([tuple(row) in captioned.HELD_OUT for row in asked.tolist()], dtype=bool)
    result = {}
    for group, rows in zip(GROUPS, (np.ones(len(asked), dtype=bool), ~unseen, unseen)):
        if not rows.any():
            result[group] = None
            continue
        result[group] = dict(n=int(rows.sum()), **{name: float(hits[rows, k].mean()) for k, name in
                                                   enumerate(ATTRIBUTES)}, all_three=float(hits[rows].all(1).mean()))
    return result


def read_batch(path):
    """A sampling script's npz -> its images uint8 [N, H, W, 3]; a one-line error naming the file otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file; pass the npz a sampling script wrote")
    if "arr_0" not in npz_keys(path):  # missing, damaged or not an npz: evaluations.npz_io's errors
        raise ValueError(f"{path} holds {sorted(npz_keys(path))}, not arr_0 (images)")
    images = load_arrays(path, ["arr_0"])["arr_0"]
    captioned.check_images(images)
    return images


def real_images(prompts, per_prompt, split):
    """uint8 [P * per_prompt, S, S, 3]: per_prompt real images of each prompt's caption, image i of prompt i % P
    as text_sample.py orders its samples, so `score --prompts` reads them (render_combinations; the images of a
    class are used in file order, each once)."""
    combos = [captioned.parse_caption(p) for _ in range(per_prompt) for p in prompts]
    return captioned.render_combinations(combos, split)


def recoloured(combo):
    """An inpainting prompt's triple: the same garment on the same background in the next palette colour after
    its own that is not the background's."""
    label, garment, background = combo
    colours = ((garment + k) % len(captioned.PALETTE) for k in range(1, len(captioned.PALETTE)))
    return label, next(c for c in colours if c != background), background


def hole_colours(images, hole, background):
    """uint8 [N, H, W, 3], hole bool [H, W] and background colour indices [N] -> [N]: the palette colour whose
    segment from the background explains the hole's pixels best (read_colours' rule, inside the hole)."""
    pixels = captioned.check_images(images)[:, hole][:, :, None]  # [N, hole pixels, 1, 3]
    return np.argmin(captioned.segment_errors(pixels, np.asarray(background)), axis=1)


def inpaint_scores(judge, inputs, edited, asked, known):
    """Inputs and edited uint8 [N, H, W, 3], asked triples [N, 3] (the prompts), known bool [H, W] (the kept
    pixels) -> {"n", "garment", "hole_colour", "all_both", "known_max_diff", "known_changed"}: the judged garment
    of the whole edited image (its ink along the input's garment colour outside the hole, the read hole colour
    inside), the hole's colour, both right, and how far the known pixels moved (levels; share moved > 1 level)."""
    original_colour, background = captioned.read_colours(inputs)
    hole = ~known
    colour = hole_colours(edited, hole, background)
    ink = np.where(hole, captioned.to_grey(edited, colour, background),
                   captioned.to_grey(edited, original_colour, background))
    garment = fashion_mnist_judge.predict(judge, ink).numpy()
    moved = np.abs(edited.astype(np.int64) - inputs.astype(np.int64))[:, known]
    garment_hits, colour_hits = garment == asked[:, 0], colour == asked[:, 1]
    return dict(n=len(edited), garment=float(garment_hits.mean()), hole_colour=float(colour_hits.mean()),
                all_both=float((garment_hits & colour_hits).mean()), known_max_diff=int(moved.max()),
                known_changed=float((moved > 1).any(axis=-1).mean()))


def fid_scorer(ref_batch, bootstrap):
    """evaluations.scoring.Scorer against ref_batch (Inception features; the spread from `bootstrap` resamples)."""
    from evaluations import evaluator
    from evaluations.scoring import Scorer
    from evaluations.weights import load_inception

    extractor = load_inception(None, "cpu")
    return Scorer(evaluator.reference_stats(ref_batch, extractor, 100), extractor, 100, "cpu", bootstrap)


def fid_columns(scorer, images):
    """{"fid", "fid_std", "fid_low", "fid_high"} of uint8 images [N, H, W, 3]."""
    metrics = scorer(images)
    return {k: metrics[k] for k in ("fid", "fid_std", "fid_low", "fid_high")}


def report(name, scores):
    """One printed block per npz: each group's n and accuracies, then the FID when measured."""
    lines = [name]
    for group in GROUPS:
        if scores.get(group):
            row = scores[group]
            lines.append(f"  {group:6s} (n={row['n']:4d}): " + ", ".join(
                f"{k} {row[k]:.3f}" for k in (*ATTRIBUTES, "all_three")))
    if "fid" in scores:
        spread = "" if scores["fid_std"] is None else (f" +- {scores['fid_std']:.2f} (95% {scores['fid_low']:.2f}-"
                                                       f"{scores['fid_high']:.2f})")  # None: --bootstrap 0
        lines.append(f"  FID {scores['fid']:.2f}{spread}")
    return "\n".join(lines)


def score_command(args):
    judge = None
    scorer = fid_scorer(args.ref_batch, args.bootstrap) if args.ref_batch else None
    results = {}
    if args.real_images:
        if scorer is None:
            raise ValueError("--real_images is the FID's floor: pass --ref_batch too")
        results["floor"] = fid_columns(scorer, read_batch(args.real_images))
        print(report(f"floor: {args.real_images}", results["floor"]), flush=True)
    for path in args.samples:
        images = read_batch(path)
        prompts_path = args.prompts or os.path.join(os.path.dirname(os.path.abspath(path)), "prompts.txt")
        if not os.path.isfile(prompts_path):
            raise ValueError(f"{prompts_path}: no such file; pass --prompts with the captions {path} asked for")
        asked = requested(read_lines(prompts_path, per_sample=not args.prompts), len(images))  # unreadable prompts: refused before any training
        if judge is None:
            judge, test_accuracy = fashion_mnist_judge.load_or_train(args.cache, images.shape[1])
            print(f"garment judge: {test_accuracy:.3f} accuracy on the real grey test images", flush=True)
        scores = accuracies(judge_images(judge, images), asked)
        if scorer is not None:
            scores |= fid_columns(scorer, images)
        results[path] = scores
        print(report(path, scores), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def prompts_command(args):
    combos = evaluation_combinations(args.seen_per_class, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(captioned.caption(*combo, phrasing=args.phrasing) + "\n" for combo in combos)
    print(f"wrote {len(combos)} prompts ({len(captioned.HELD_OUT)} held out) to {args.out}")


def real_command(args):
    images = real_images(read_lines(args.prompts), args.per_prompt, args.split)
    np.savez(args.out, arr_0=images)
    print(f"wrote {len(images)} real {args.split} images of the prompts to {args.out}")


def inpaint_inputs_command(args):
    prompts = read_lines(args.prompts)
    images = real_images(prompts, args.per_prompt, "t10k")
    combos = [recoloured(captioned.parse_caption(prompts[i % len(prompts)])) for i in range(len(images))]
    os.makedirs(args.out_dir, exist_ok=True)
    np.savez(os.path.join(args.out_dir, "inputs.npz"), arr_0=images)
    with open(os.path.join(args.out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.writelines(captioned.caption(*combo) + "\n" for combo in combos)
    print(f"wrote {len(images)} test images and their recoloured prompts to {args.out_dir}/inputs.npz, prompts.txt")


def variation_inputs_command(args):
    prompts = read_lines(args.prompts)
    images = real_images(prompts, args.per_prompt, "t10k")
    os.makedirs(args.out_dir, exist_ok=True)
    np.savez(os.path.join(args.out_dir, "inputs.npz"), arr_0=images)
    width = len(str(len(images) - 1))
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(args.out_dir, f"input_{i:0{width}d}.png"))
    with open(os.path.join(args.out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.writelines(prompts[i % len(prompts)] + "\n" for i in range(len(images)))
    print(f"wrote {len(images)} test images of the prompts to {args.out_dir}/input_*.png (and inputs.npz) and their "
          "captions, one per input, to prompts.txt")


def variation_scores(judge, inputs, variations, asked):
    """inputs uint8 [M, S, S, 3]; variations uint8 [M, V, S, S, 3] (V of each input); asked: the inputs' triples
    [M, 3] -> each group's share of variations that keep the input's garment and colours, and the diversity: the
    mean RMS pixel distance (0..255) between two variations of one input, and between a variation and its input."""
    m, v = variations.shape[:2]
    scores = accuracies(judge_images(judge, variations.reshape(m * v, *variations.shape[2:])), np.repeat(asked, v, 0))
    flat = variations.reshape(m, v, -1).astype(np.float64)
    pairs = [(a, b) for a in range(v) for b in range(a + 1, v)]
    between = np.mean([np.sqrt(((flat[:, a] - flat[:, b]) ** 2).mean(1)) for a, b in pairs]) if pairs else np.nan
    to_input = np.sqrt(((flat - inputs.reshape(m, 1, -1)) ** 2).mean(2)).mean()
    return dict(scores, rms_between_variations=float(between), rms_to_input=float(to_input))


def variations_command(args):
    inputs = read_batch(args.inputs)
    asked = requested(read_lines(args.prompts), len(inputs))
    judge, test_accuracy = fashion_mnist_judge.load_or_train(args.cache, inputs.shape[1])
    print(f"garment judge: {test_accuracy:.3f} accuracy on the real grey test images", flush=True)
    results = {}
    for path in args.variations:
        images = read_batch(path)
        if len(images) != len(inputs) * args.per_input or images.shape[1:] != inputs.shape[1:]:
            raise ValueError(f"{path} holds {len(images)} images of {images.shape[1:]}; {args.per_input} variations of "
                             f"each of the {len(inputs)} inputs of {inputs.shape[1:]} make {len(inputs) * args.per_input}:"
                             " pass --per_input as unclip_sample.py's --variations_per_image")
        variations = images.reshape(len(inputs), args.per_input, *images.shape[1:])
        results[path] = scores = variation_scores(judge, inputs, variations, asked)
        print(report(f"{path} (variations keep the input's)", scores), flush=True)
        print(f"  RMS distance (0..255): between variations of an input {scores['rms_between_variations']:.1f}, "
              f"variation to input {scores['rms_to_input']:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def inpaint_score_command(args):
    from guided_diffusion.editing.operators import parse_mask

    inputs = read_batch(args.inputs)
    asked = requested(read_lines(args.prompts), len(inputs))
    known = parse_mask(args.mask, inputs.shape[1])[0, 0].numpy() > 0.5
    judge, test_accuracy = fashion_mnist_judge.load_or_train(args.cache, inputs.shape[1])
    print(f"garment judge: {test_accuracy:.3f} accuracy on the real grey test images", flush=True)
    results = {}
    for path in args.edited:
        edited = read_batch(path)
        if edited.shape != inputs.shape:
            raise ValueError(f"{path} holds {edited.shape[0]} images of {edited.shape[1:]}, {args.inputs} "
                             f"{inputs.shape[0]} of {inputs.shape[1:]}: pass the edits of those inputs")
        results[path] = inpaint_scores(judge, inputs, edited, asked, known)
        print(f"{path}\n  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in results[path].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prompts = commands.add_parser("prompts", help="write the evaluation prompts: the held-out triples, then seen ones")
    prompts.add_argument("out", help="the prompts file to write (one caption a line)")
    prompts.add_argument("--seen_per_class", type=int, default=4, help="seen combinations per class (default: 4)")
    prompts.add_argument("--seed", type=int, default=0, help="seeds the choice of seen combinations")
    prompts.add_argument("--phrasing", type=int, default=0, choices=range(len(captioned.CAPTION_FORMATS)),
                         help="which of CAPTION_FORMATS words the prompts (default: 0, 'a red sandal on a ...')")
    prompts.set_defaults(handler=prompts_command)
    real = commands.add_parser("real", help="real images of the prompts' captions as an npz (a reference batch)")
    real.add_argument("prompts", help="prompts file")
    real.add_argument("out", help="npz to write (arr_0 uint8 [P * per_prompt, 28, 28, 3])")
    real.add_argument("--per_prompt", type=int, default=200, help="images per prompt (default: 200)")
    real.add_argument("--split", default="t10k", choices=["train", "t10k"], help="which Fashion-MNIST split to paint")
    real.set_defaults(handler=real_command)
    inputs = commands.add_parser("inpaint_inputs", help="test images of the prompts and, for each, a prompt for the "
                                 "same garment and background in another colour")
    inputs.add_argument("prompts", help="prompts file (the evaluation prompts)")
    inputs.add_argument("out_dir", help="folder for inputs.npz and prompts.txt (one prompt per input)")
    inputs.add_argument("--per_prompt", type=int, default=4, help="test images per prompt (default: 4)")
    inputs.set_defaults(handler=inpaint_inputs_command)
    var_inputs = commands.add_parser("variation_inputs", help="test images of the prompts as PNG files (the inputs "
                                     "of unclip_sample.py --image_variations) and their captions")
    var_inputs.add_argument("prompts", help="prompts file (the evaluation prompts)")
    var_inputs.add_argument("out_dir", help="folder for input_*.png and prompts.txt (one caption per input)")
    var_inputs.add_argument("--per_prompt", type=int, default=4, help="test images per prompt (default: 4)")
    var_inputs.set_defaults(handler=variation_inputs_command)
    variations = commands.add_parser("variations", help="judge image variations: the input's garment and colours "
                                     "kept, and how far variations lie from each other and from their input")
    variations.add_argument("variations", nargs="+", help="npz files of unclip_sample.py --image_variations (the "
                            "variations of input j at j * per_input + k)")
    variations.add_argument("--inputs", required=True, help="the inputs as an npz (in the order of their files)")
    variations.add_argument("--prompts", required=True, help="the inputs' captions, one per input")
    variations.add_argument("--per_input", type=int, required=True, help="variations per input")
    variations.add_argument("--cache", default="data/fashion_judge_28px.pt", help="where the garment judge is kept")
    variations.add_argument("--json", default="", help="also write the scores to this JSON file")
    variations.set_defaults(handler=variations_command)
    inpaint = commands.add_parser("inpaint", help="judge inpainted images: the garment, the hole's colour, the "
                                  "known pixels kept")
    inpaint.add_argument("edited", nargs="+", help="npz files written by image_edit.py (edited_*.npz)")
    inpaint.add_argument("--inputs", required=True, help="the inputs' npz (inpaint_inputs' inputs.npz)")
    inpaint.add_argument("--prompts", required=True, help="the prompts the edits asked for, one per input")
    inpaint.add_argument("--mask", default="box", help="the --mask of image_edit.py (default: box)")
    inpaint.add_argument("--cache", default="data/fashion_judge_28px.pt", help="where the garment judge is kept")
    inpaint.add_argument("--json", default="", help="also write the scores to this JSON file")
    inpaint.set_defaults(handler=inpaint_score_command)
    score = commands.add_parser("score", help="judge sample npz files against their prompts")
    score.add_argument("samples", nargs="+", help="npz files written by text_sample.py")
    score.add_argument("--cache", default="data/fashion_judge_28px.pt", help="where the garment judge is kept")
    score.add_argument("--prompts", default="", help="the prompts the samples asked for (default: prompts.txt "
                       "beside each npz)")
    score.add_argument("--ref_batch", default="", help="reference npz (e.g. `real` of the prompts) for each FID")
    score.add_argument("--real_images", default="", help="npz of real images scored as the FID's floor")
    score.add_argument("--bootstrap", type=int, default=50, help="resamples for the FID's spread (default: 50)")
    score.add_argument("--json", default="", help="also write the scores to this JSON file")
    score.set_defaults(handler=score_command)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    run(main)
