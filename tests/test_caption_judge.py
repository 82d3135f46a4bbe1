"""datasets/fashion_mnist_caption_judge.py: the evaluation prompts, the prompts each sample asked for, the
accuracies split into seen and held-out combinations, the judging of clean renders (exact colours, the garment
read from to_grey's ink), and its command line (prompts, real, score and their one-line refusals). The garment
judge here is a stub whose answer is known, or an untrained Judge saved as the cache: nothing is trained."""

import json
import re
import sys

import numpy as np
import pytest
import torch as th
from torch import nn

from _train_helpers import REPO
from test_demo import load_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

judging = load_module("fashion_mnist_caption_judge")
captioned = judging.captioned  # the module the judge reads HELD_OUT and the colours from
fashion = load_module("fashion_mnist")
SCRIPT = REPO / "datasets" / "fashion_mnist_caption_judge.py"
PER_PROMPT = 2  # real images per evaluation prompt: 100 images of 50 prompts
JUDGE_TEST_ACCURACY = 0.125  # what the cached untrained judge claims; printed back by `score`


class InkBinJudge(nn.Module):
    """A stand-in garment judge with a known answer: the class is (total ink * 25 // (pixels * 255)) % 10 of the
    grey input [N, 1, S, S] in [-1, 1], in exact integers (the input's grey levels rounded back)."""

    def __init__(self, image_size=28):
        super().__init__()
        self.image_size = image_size

    def forward(self, x):
        ink = th.round((x.double() + 1) * 127.5).long().sum(dim=(1, 2, 3))
        return nn.functional.one_hot(ink * 25 // (x.shape[2] * x.shape[3] * 255) % 10, 10).float()


def expected_bins(grey):
    """InkBinJudge's class of grey uint8 images [N, S, S], in numpy."""
    total = grey.astype(np.int64).sum(axis=(1, 2))
    return total * 25 // (grey.shape[1] * grey.shape[2] * 255) % 10


def prompts_of(combos, phrasing=0):
    return [captioned.caption(*combo, phrasing=phrasing) for combo in combos]


@pytest.fixture(scope="module")
def t10k():
    return fashion.read_split("t10k")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{"prompts": the 50 evaluation prompts (a file), "real": their PER_PROMPT real images each (an npz),
    "cache": an untrained Judge(28) saved as fashion_mnist_judge's cache, "combos": each image's triple}."""
    root = tmp_path_factory.mktemp("caption_judge")
    combos = judging.evaluation_combinations()
    prompts = root / "prompts_eval.txt"
    prompts.write_text("".join(line + "\n" for line in prompts_of(combos)), encoding="utf-8")
    real = root / "real.npz"
    np.savez(real, arr_0=judging.real_images(prompts_of(combos), PER_PROMPT, "t10k"))
    th.manual_seed(0)
    cache = root / "judge_28px.pt"
    th.save(dict(image_size=28, test_accuracy=JUDGE_TEST_ACCURACY,
                 state_dict=judging.fashion_mnist_judge.Judge(28).state_dict()), cache)
    return dict(root=root, prompts=prompts, real=real, cache=cache,
                combos=np.tile(np.array(combos, dtype=np.int64), (PER_PROMPT, 1)))  # image i: prompt i % 50


def run_main(monkeypatch, capsys, *argv):
    """The script's entry point (guided_diffusion.errors.run) in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, argv)])
    try:
        judging.run(judging.main)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


# evaluation_combinations


def test_evaluation_combinations_are_the_held_out_triples_then_distinct_seen_ones_per_class():
    combos = judging.evaluation_combinations(seen_per_class=4, seed=0)
    assert len(combos) == 50 and len(set(combos)) == 50
    assert combos[:10] == list(captioned.HELD_OUT)
    seen = combos[10:]
    assert [c for c, _, _ in seen] == [c for c in range(10) for _ in range(4)]  # class by class, 4 each
    assert set(seen) <= set(captioned.seen_combinations()) and set(seen).isdisjoint(captioned.HELD_OUT)
    assert all(g != b for _, g, b in seen)
    # every seen combination of a class is 29 (30 colour pairs, one held out): all of them, in order
    assert judging.evaluation_combinations(seen_per_class=29)[10:] == captioned.seen_combinations()
    assert judging.evaluation_combinations(seen_per_class=0) == list(captioned.HELD_OUT)


def test_evaluation_combinations_are_fixed_by_the_seed():
    assert judging.evaluation_combinations(4, seed=0) == judging.evaluation_combinations(4, seed=0)
    assert judging.evaluation_combinations(4, seed=1) == judging.evaluation_combinations(4, seed=1)
    assert judging.evaluation_combinations(4, seed=0)[10:] != judging.evaluation_combinations(4, seed=1)[10:]


@pytest.mark.parametrize("count", [-1, 30])
def test_evaluation_combinations_refuse_a_count_beyond_a_class_seen_pairs(count):
    with pytest.raises(ValueError, match=f"seen_per_class must be 0-29, got {count}"):
        judging.evaluation_combinations(count)


# requested and read_lines


def test_sample_i_asks_for_prompt_i_mod_p_in_any_phrasing():
    combos = [(5, 0, 2), (0, 1, 4), (8, 3, 5)]
    prompts = [captioned.caption(*combo, phrasing=k) for k, combo in enumerate(combos)]
    asked = judging.requested(prompts, 7)
    assert asked.dtype == np.int64 and asked.shape == (7, 3)
    assert asked.tolist() == [list(combos[i % 3]) for i in range(7)]
    assert judging.requested(prompts, 2).tolist() == [list(c) for c in combos[:2]]


@pytest.mark.parametrize("prompts, message", [
    ([], "no prompts to score against: pass --prompts FILE with the captions the samples asked for"),
    (["a red sandal on a blue background", "a red sandal"],
     r"cannot read the caption 'a red sandal': write it like 'a red sandal on a blue background'.*; for samples of "
     r"the empty caption pass --prompts with the conditional run's prompts \(their chance level\)"),
    ([""], r"cannot read the caption '': .*for samples of the empty caption pass --prompts"),
])
def test_requested_refuses_prompts_it_cannot_read_with_the_fix(prompts, message):
    with pytest.raises(ValueError, match=message):
        judging.requested(prompts, 4)


def test_read_lines_skips_blank_lines_unless_the_file_holds_only_the_empty_caption(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red sandal on a blue background\n\n  \nsandal in red, blue background\n", encoding="utf-8")
    assert judging.read_lines(path) == ["a red sandal on a blue background", "sandal in red, blue background"]
    # text_sample.py's prompts.txt: line i is sample i's prompt, so a blank line stays (and cannot be scored)
    per_sample = judging.read_lines(path, per_sample=True)
    assert per_sample == ["a red sandal on a blue background", "", "  ", "sandal in red, blue background"]
    with pytest.raises(ValueError, match="cannot read the caption ''"):
        judging.requested(per_sample, 4)
    path.write_text("\n\n", encoding="utf-8")  # prompts.txt of two samples of the empty caption
    assert judging.read_lines(path) == ["", ""]
    with pytest.raises(ValueError, match="for samples of the empty caption pass --prompts"):
        judging.requested(judging.read_lines(path), 2)


# accuracies


def test_accuracies_split_seen_and_held_out_combinations_by_what_was_asked():
    held_tshirt, held_sandal, held_bag = captioned.HELD_OUT[0], captioned.HELD_OUT[5], captioned.HELD_OUT[8]
    assert (held_tshirt, held_sandal, held_bag) == ((0, 0, 1), (5, 0, 2), (8, 3, 5))
    rows = [  # asked -> judged
        (held_tshirt, (0, 0, 1)),  # all three right
        (held_sandal, (5, 1, 2)),  # garment colour wrong
        ((5, 2, 0), (7, 2, 0)),  # garment wrong
        ((0, 1, 4), (0, 1, 4)),  # all three right
        ((0, 0, 2), (0, 0, 4)),  # background wrong (a seen triple that shares two parts with a held-out one)
        ((8, 4, 5), held_bag),  # garment colour wrong: judged as a held-out triple, still a seen sample
    ]
    asked, judged = (np.array(column, dtype=np.int64) for column in zip(*rows))
    scores = judging.accuracies(judged, asked)
    assert set(scores) == {"all", "seen", "unseen"}
    assert scores["unseen"] == dict(n=2, garment=1.0, garment_colour=0.5, background_colour=1.0, all_three=0.5)
    assert scores["seen"] == dict(n=4, garment=0.75, garment_colour=0.75, background_colour=0.75, all_three=0.25)
    assert scores["all"] == pytest.approx(dict(n=6, garment=5 / 6, garment_colour=4 / 6, background_colour=5 / 6,
                                               all_three=2 / 6))
    assert scores["all"]["n"] == 6


def test_accuracies_give_none_for_a_group_without_samples():
    seen = np.array([(5, 2, 0), (0, 1, 4)], dtype=np.int64)
    only_seen = judging.accuracies(seen, seen)
    assert only_seen["unseen"] is None
    assert only_seen["seen"] == only_seen["all"] == dict(n=2, garment=1.0, garment_colour=1.0,
                                                         background_colour=1.0, all_three=1.0)
    held = np.array(captioned.HELD_OUT, dtype=np.int64)
    wrong_background = held.copy()
    wrong_background[:, 2] = (held[:, 2] + 1) % 6
    only_held = judging.accuracies(wrong_background, held)
    assert only_held["seen"] is None
    assert only_held["unseen"] == only_held["all"] == dict(n=10, garment=1.0, garment_colour=1.0,
                                                           background_colour=0.0, all_three=0.0)
    text = judging.report("run/samples.npz", only_held)
    assert text.splitlines() == ["run/samples.npz",
                                 "  all    (n=  10): garment 1.000, garment_colour 1.000, background_colour 0.000, "
                                 "all_three 0.000",
                                 "  unseen (n=  10): garment 1.000, garment_colour 1.000, background_colour 0.000, "
                                 "all_three 0.000"]


# judge_images


def test_judge_images_reads_the_exact_colours_and_judges_the_garment_on_to_grey_ink(t10k):
    images, labels = t10k
    combos = np.array(judging.evaluation_combinations(seen_per_class=2, seed=5), dtype=np.int64)  # 30 triples
    rendered = captioned.render_combinations(combos.tolist(), "t10k")
    # the k-th triple of a class paints that class's k-th t10k image
    indices = [np.flatnonzero(labels == c)[int((combos[:k, 0] == c).sum())] for k, c in enumerate(combos[:, 0])]
    grey = np.stack([fashion.to_size(images[i], 28) for i in indices])
    expected = expected_bins(grey)
    assert len(set(expected.tolist())) >= 5  # the stub's answer varies from image to image
    judged = judging.judge_images(InkBinJudge(28), rendered)
    assert judged.dtype == np.int64 and judged.shape == (30, 3)
    assert (judged[:, 1:] == combos[:, 1:]).all()  # garment colour, background colour: exact
    assert (judged[:, 0] == expected).all()
    # the judge sees the ink, not the coloured pixels (their channel mean would give other classes)
    assert (expected_bins(rendered.mean(axis=3).astype(np.uint8)) != expected).sum() >= 10
    scores = judging.accuracies(judged, combos)
    assert (scores["seen"]["n"], scores["unseen"]["n"]) == (20, 10)
    assert all(scores[group][k] == 1.0 for group in judging.GROUPS for k in ("garment_colour", "background_colour"))
    assert scores["all"]["garment"] == scores["all"]["all_three"] == (expected == combos[:, 0]).mean()


def test_variation_scores_judge_each_variation_against_its_input_and_measure_rms_distances(files):
    inputs = np.load(files["real"])["arr_0"][:6]  # six real renders, their triples files["combos"][:6]
    asked = files["combos"][:6]
    # three variations of each input: itself, itself with its garment recoloured, and itself plus 10 grey levels
    other = np.array([judging.recoloured(combo)[1] for combo in asked.tolist()])
    recoloured = captioned.render(captioned.to_grey(inputs, asked[:, 1], asked[:, 2]), other, asked[:, 2])
    brighter = np.clip(inputs.astype(np.int64) + 10, 0, 255).astype(np.uint8)
    variations = np.stack([inputs, recoloured, brighter], axis=1)  # [6, 3, 28, 28, 3]
    scores = judging.variation_scores(InkBinJudge(28), inputs, variations, asked)
    assert scores["all"]["n"] == 18
    judged = judging.judge_images(InkBinJudge(28), variations.reshape(18, 28, 28, 3)).reshape(6, 3, 3)
    kept = judged == asked[:, None]
    assert scores["all"]["garment_colour"] == pytest.approx(kept[..., 1].mean()) and kept[:, 1, 1].sum() == 0
    assert scores["all"]["background_colour"] == pytest.approx(kept[..., 2].mean())
    flat = variations.reshape(6, 3, -1).astype(np.float64)
    rms = lambda a, b: np.sqrt(((a - b) ** 2).mean(-1))  # noqa: E731
    between = np.mean([rms(flat[:, 0], flat[:, 1]), rms(flat[:, 0], flat[:, 2]), rms(flat[:, 1], flat[:, 2])])
    assert scores["rms_between_variations"] == pytest.approx(between)
    assert scores["rms_to_input"] == pytest.approx(rms(flat, inputs.reshape(6, 1, -1)).mean())
    assert 0 < scores["rms_to_input"] < scores["rms_between_variations"]  # one of three is the input itself


def test_judge_images_refuses_images_of_another_size_than_the_judge():
    images = captioned.render(np.zeros((2, 16, 16), np.uint8), [0, 1], [2, 3])
    with pytest.raises(ValueError, match="images are 16x16 but the judge was trained at 28x28"):
        judging.judge_images(InkBinJudge(28), images)


# the command line


def test_prompts_command_writes_the_evaluation_prompts_one_a_line(tmp_path, run_python):
    out = tmp_path / "prompts.txt"
    result = run_python([SCRIPT, "prompts", out])
    assert result.stdout == f"wrote 50 prompts (10 held out) to {out}\n"
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and lines[0] == "a red t-shirt on a green background"
    assert [captioned.parse_caption(line) for line in lines] == judging.evaluation_combinations(4, 0)
    run_python([SCRIPT, "prompts", out, "--seen_per_class", 1, "--seed", 3, "--phrasing", 2])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and all(" background with a " in line for line in lines)
    assert [captioned.parse_caption(line) for line in lines] == judging.evaluation_combinations(1, 3)


def test_real_command_writes_image_i_of_prompt_i_mod_p_as_samples_are_ordered(tmp_path, files, t10k, monkeypatch,
                                                                              capsys):
    out = tmp_path / "ref.npz"
    code, stdout, _ = run_main(monkeypatch, capsys, "real", files["prompts"], out, "--per_prompt", PER_PROMPT)
    assert code == 0 and stdout == f"wrote 100 real t10k images of the prompts to {out}\n"
    with np.load(out) as f:
        assert list(f.keys()) == ["arr_0"]
        images = f["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (100, 28, 28, 3)
    garment_colour, background_colour = captioned.read_colours(images)
    assert (garment_colour == files["combos"][:, 1]).all() and (background_colour == files["combos"][:, 2]).all()
    # the t-shirt prompts are 0 (held out: red on green) and 10-13 (seen): in sample order they paint the
    # t10k t-shirts in file order, each once
    t10k_images, labels = t10k
    tshirt_samples = [0, 10, 11, 12, 13, 50, 60, 61, 62, 63]
    assert (files["combos"][tshirt_samples, 0] == 0).all() and (files["combos"][:, 0] == 0).sum() == 10
    ink = captioned.to_grey(images[tshirt_samples], files["combos"][tshirt_samples, 1],
                            files["combos"][tshirt_samples, 2])
    assert (ink == t10k_images[np.flatnonzero(labels == 0)[:10]]).all()


def test_score_command_prints_and_writes_the_accuracies_of_real_images(files, tmp_path, run_python):
    out = tmp_path / "scores.json"
    cache_bytes = files["cache"].read_bytes()
    result = run_python([SCRIPT, "score", "--cache", files["cache"], files["real"], "--prompts", files["prompts"],
                         "--json", out])
    lines = result.stdout.splitlines()
    assert lines[0] == f"garment judge: {JUDGE_TEST_ACCURACY:.3f} accuracy on the real grey test images"
    assert lines[1] == str(files["real"]) and len(lines) == 5
    for line, group, n in zip(lines[2:], ("all", "seen", "unseen"), (100, 80, 20)):
        assert re.fullmatch(rf"  {group} +\(n= *{n}\): garment \d\.\d{{3}}, garment_colour 1\.000, "
                            r"background_colour 1\.000, all_three \d\.\d{3}", line)
    scores = json.loads(out.read_text())
    assert list(scores) == [str(files["real"])]
    for group, n in (("all", 100), ("seen", 80), ("unseen", 20)):
        row = scores[str(files["real"])][group]
        assert row["n"] == n and row["garment_colour"] == 1.0 and row["background_colour"] == 1.0
        assert 0 <= row["all_three"] == row["garment"] <= 1  # the colours are right: only the garment can miss
    assert files["cache"].read_bytes() == cache_bytes  # the cached judge was used, not retrained


def test_score_reads_the_prompts_txt_beside_each_npz(files, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with np.load(files["real"]) as f:
        np.savez(run / "samples_100x28x28x3.npz", arr_0=f["arr_0"])
    # text_sample.py's prompts.txt: line i holds sample i's prompt
    (run / "prompts.txt").write_text("".join(captioned.caption(*combo) + "\n" for combo in files["combos"]),
                                     encoding="utf-8")
    out = tmp_path / "scores.json"
    code, _, err = run_main(monkeypatch, capsys, "score", "--cache", files["cache"], run / "samples_100x28x28x3.npz",
                            "--json", out)
    assert code == 0 and err == ""
    scores = json.loads(out.read_text())[str(run / "samples_100x28x28x3.npz")]
    assert (scores["seen"]["n"], scores["unseen"]["n"]) == (80, 20)
    assert scores["all"]["garment_colour"] == scores["all"]["background_colour"] == 1.0


class StubScorer:
    """evaluations.scoring.Scorer's columns without Inception: the FID is the images' mean pixel value."""

    def __init__(self, rounds):
        self.rounds, self.calls = rounds, []

    def __call__(self, images):
        self.calls.append(len(images))
        fid = float(images.mean())
        spread = dict(fid_std=0.5, fid_low=fid - 1, fid_high=fid + 1) if self.rounds else dict(
            fid_std=None, fid_low=None, fid_high=None)
        return dict(fid=fid, sfid=1.0, inception_score=2.0, precision=0.5, recall=0.5, accuracy=None, **spread)


def test_fid_columns_and_the_floor_row_come_from_the_scorer(files, tmp_path, monkeypatch, capsys):
    assert judging.fid_columns(StubScorer(rounds=50), np.full((3, 8, 8, 3), 10, np.uint8)) == dict(
        fid=10.0, fid_std=0.5, fid_low=9.0, fid_high=11.0)
    scorer = StubScorer(rounds=50)
    monkeypatch.setattr(judging, "fid_scorer", lambda ref_batch, bootstrap: scorer)
    out = tmp_path / "scores.json"
    code, stdout, err = run_main(monkeypatch, capsys, "score", "--cache", files["cache"], "--prompts",
                                 files["prompts"], "--ref_batch", files["real"], "--real_images", files["real"],
                                 files["real"], "--json", out)
    assert code == 0 and err == "" and scorer.calls == [100, 100]
    scores = json.loads(out.read_text())
    with np.load(files["real"]) as f:
        fid = float(f["arr_0"].mean())
    assert scores["floor"] == dict(fid=fid, fid_std=0.5, fid_low=fid - 1, fid_high=fid + 1)
    assert {k: scores[str(files["real"])][k] for k in scores["floor"]} == scores["floor"]
    assert scores[str(files["real"])]["seen"]["garment_colour"] == 1.0
    assert stdout.startswith(f"floor: {files['real']}\n  FID {fid:.2f} +- 0.50 (95% {fid - 1:.2f}-{fid + 1:.2f})\n")


def test_a_fid_without_bootstrap_spread_is_reported_without_one(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(judging, "fid_scorer", lambda ref_batch, bootstrap: StubScorer(bootstrap))
    out = tmp_path / "scores.json"
    code, stdout, err = run_main(monkeypatch, capsys, "score", "--cache", files["cache"], "--prompts",
                                 files["prompts"], "--ref_batch", files["real"], "--bootstrap", 0, files["real"],
                                 "--json", out)
    assert (code, err) == (0, "")
    assert re.search(r"^  FID \d+\.\d\d$", stdout, re.M)
    assert json.loads(out.read_text())[str(files["real"])]["fid_std"] is None


def write_npz_without_arr_0(folder):
    path = folder / "samples.npz"
    np.savez(path, images=np.zeros((2, 28, 28, 3), np.uint8))
    return path


def write_float_npz(folder):
    path = folder / "samples.npz"
    np.savez(path, arr_0=np.zeros((2, 28, 28, 3), np.float32))
    return path


def write_npy(folder):
    path = folder / "samples.npy"
    np.save(path, np.zeros((2, 28, 28, 3), np.uint8))
    return path


def write_npz_alone(folder):
    (folder / "alone").mkdir()
    path = folder / "alone" / "samples.npz"
    np.savez(path, arr_0=np.zeros((2, 28, 28, 3), np.uint8))
    return path


def write_prompts(text):
    def write(folder):
        (folder / "prompts.txt").write_text(text, encoding="utf-8")
        path = folder / "samples.npz"
        np.savez(path, arr_0=captioned.render(np.zeros((2, 28, 28), np.uint8), [0, 1], [2, 3]))
        return path
    return write


@pytest.mark.parametrize("make, flags, message", [
    (lambda folder: folder / "nope.npz", [], r"\S*nope\.npz: no such file; pass the npz a sampling script wrote"),
    (write_npz_without_arr_0, [], r"\S*samples\.npz holds \['images'\], not arr_0 \(images\)"),
    (write_npy, [], r"\S*samples\.npy is not a complete \.npz file \(File is not a zip file: .*\); expected an \.npz "
                    r"written by np\.savez: a batch \(arr_0 = uint8 images \[N, H, W, 3\]\).*"),
    (write_float_npz, [], r"expected RGB images uint8 \[N, H, W, 3\], got float32 \(2, 28, 28, 3\): .*"),
    (write_npz_alone, [], r"\S*alone/prompts\.txt: no such file; pass --prompts with the captions \S*alone/"
                          r"samples\.npz asked for"),
    (write_prompts(""), [], "no prompts to score against: pass --prompts FILE with the captions the samples asked for"),
    (write_prompts("\n\n"), [], r"cannot read the caption '': .*; for samples of the empty caption pass --prompts "
                                r"with the conditional run's prompts \(their chance level\)"),
    (write_npz_alone, ["--real_images", "real.npz"], "--real_images is the FID's floor: pass --ref_batch too"),
])
def test_score_refusals_are_one_line_with_the_fix(files, tmp_path, monkeypatch, capsys, make, flags, message):
    path = make(tmp_path)
    code, stdout, err = run_main(monkeypatch, capsys, "score", "--cache", files["cache"], *flags, path)
    assert code == 2 and "garment judge" not in stdout
    assert re.fullmatch(rf"fashion_mnist_caption_judge\.py: error: {message}\n", err)


@pytest.mark.parametrize("argv, message", [
    (["prompts", "{tmp}/p.txt", "--seen_per_class", "30"], "seen_per_class must be 0-29, got 30"),
    (["real", "{prompts}", "{tmp}/ref.npz", "--per_prompt", "201"],
     r"t10k has 1000 images of class 0, not 1001: ask for fewer triples of that class or render from "
     r"split='train'"),
    (["real", "{tmp}/none.txt", "{tmp}/ref.npz"], r"No such file or directory: \S*none\.txt"),
])
def test_prompts_and_real_refusals_are_one_line(files, tmp_path, monkeypatch, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path, prompts=files["prompts"]) for arg in argv]
    code, _, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2 and re.fullmatch(rf"fashion_mnist_caption_judge\.py: error: {message}\n", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_refusal_ends_the_script_process_with_one_line_and_code_2(tmp_path, run_python):
    result = run_python([SCRIPT, "score", tmp_path / "nope.npz"], check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"fashion_mnist_caption_judge.py: error: {tmp_path / 'nope.npz'}: no such file; "
                             "pass the npz a sampling script wrote\n")
