"""Training on captions: load_data's captioned stream (a line of each image's own caption file, drawn seeded and
resumably, long captions cut with one warning), the refusals of bad caption folders before anything is written,
and scripts/text_train.py (checkpoint set, train_config.json, exact resume, fine-tuning from a text run)."""

import json
import os
import re

import pytest
import torch as th
from PIL import Image

from _train_helpers import read_progress, run_script
from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import load_data
from guided_diffusion.text.tokenizer import get_encoder

TEXT_CTX = 8
IMAGES = 4
LINES = 3
TINY_TEXT = dict(image_size=16, xf_width=32, xf_layers=1, xf_heads=2, num_channels=32, num_res_blocks=1,
                 channel_mult="1,2", attention_resolutions="8", num_head_channels=16, text_ctx=TEXT_CTX,
                 diffusion_steps=20, noise_schedule="cosine")


def write_captioned(folder, images=IMAGES, lines=LINES):
    """images flat grey 16x16 PNGs, image i of value 60 i, each with `lines` captions "photo i variant k"."""
    folder.mkdir(parents=True)
    for i in range(images):
        Image.new("RGB", (16, 16), (60 * i,) * 3).save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text("".join(f"photo {i} variant {k}\n" for k in range(lines)))
    return folder


@pytest.fixture
def captioned(tmp_path):
    return write_captioned(tmp_path / "data")


def read_batches(stream, n):
    """n batches as [(image index, caption)]: the index read from the flat grey value, the caption decoded from
    the masked tokens."""
    items = []
    for _ in range(n):
        images, cond = next(stream)
        assert cond["tokens"].shape == cond["mask"].shape == (len(images), TEXT_CTX)
        assert cond["tokens"].dtype == th.int64 and cond["mask"].dtype == th.bool
        for image, tokens, mask in zip(images, cond["tokens"], cond["mask"]):
            index = round(((image.mean().item() + 1) * 127.5) / 60)
            items.append((index, get_encoder().decode(tokens[mask].tolist())))
    return items


def stream_of(data_dir, seed=0, **options):
    return load_data(data_dir=str(data_dir), batch_size=2, image_size=16, text_ctx=TEXT_CTX, seed=seed,
                     num_workers=0, **options)


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_each_image_gets_a_line_of_its_own_caption_file_drawn_among_them(captioned, monkeypatch, rank, world):
    monkeypatch.setattr(dist_util, "get_rank", lambda: rank)
    monkeypatch.setattr(dist_util, "get_world_size", lambda: world)
    items = read_batches(stream_of(captioned), 12)  # 6 epochs of 4 images, or 12 of this rank's 2
    drawn = {}
    for index, caption in items:
        assert caption in (captioned / f"img_{index}.txt").read_text().splitlines(), (index, caption)
        drawn.setdefault(index, set()).add(caption)
    assert sorted(drawn) == list(range(rank, IMAGES, world))  # the rank's shard of the sorted files
    assert all(len(captions) > 1 for captions in drawn.values()), drawn  # a new draw each epoch


def test_captions_are_seeded_and_resume_exactly(captioned):
    straight = stream_of(captioned)
    first = read_batches(straight, 6)
    resumed = stream_of(captioned)
    read_batches(resumed, 2)
    state = resumed.state_dict()
    fresh = stream_of(captioned)
    fresh.load_state_dict(state)
    assert read_batches(fresh, 4) == first[4:]
    assert read_batches(stream_of(captioned), 6) == first
    other_seed = read_batches(stream_of(captioned, seed=1), 6)
    assert sorted(other_seed) != sorted(first)  # other images' orders aside, other captions


def test_long_captions_are_cut_with_one_warning(tmp_path, captioned):
    long_caption = "a very long caption of many words that will not fit in eight tokens"
    (captioned / "img_1.txt").write_text(f"{long_caption}\n{long_caption}, twice\n")
    logger.configure(dir=str(tmp_path / "log"), format_strs=["log"])
    stream = stream_of(captioned, deterministic=True)
    for _ in range(4):
        images, cond = next(stream)  # epoch 1: images 0-3 in order
    warnings = [line for line in (tmp_path / "log" / "log.txt").read_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and re.search(r"2 of the 11 captions .* more than text_ctx 8 tokens", warnings[0])
    tokens, mask = next(stream)[1].values()  # epoch 2: images 0 and 1
    assert tokens[1].tolist() == get_encoder().encode(long_caption)[:TEXT_CTX] and mask[1].all()


def text_flags(data_dir, **more):
    return dict(TINY_TEXT, data_dir=data_dir, batch_size=2, log_interval=1, save_interval=2, ema_rate=0.9,
                dropout=0.1, **more)


@pytest.mark.parametrize("case", ["missing", "none", "empty", "not_utf8", "image_model_init"])
def test_bad_caption_folders_fail_in_one_line_naming_the_file_and_write_nothing(tmp_path, captioned, case):
    flags = text_flags(captioned, max_steps=1)
    if case == "missing":
        os.remove(captioned / "img_2.txt")
        expected = r"'.*img_2\.png' has no caption file: write its captions, one per line, to '.*img_2\.txt'"
    elif case == "none":
        for i in range(IMAGES):
            os.remove(captioned / f"img_{i}.txt")
        expected = r"no caption files: .*img_0\.txt.* use scripts/image_train\.py"
    elif case == "empty":
        (captioned / "img_3.txt").write_text("\n  \n")
        expected = r"'.*img_3\.txt' holds no caption"
    elif case == "not_utf8":
        (captioned / "img_1.txt").write_bytes("café au lait\n".encode("latin-1"))
        expected = r"'.*img_1\.txt' is not UTF-8 text .* save the captions as UTF-8"
    else:
        image_run = tmp_path / "image_run"
        image_run.mkdir()
        (image_run / "model000001.pt").write_bytes(b"")
        (image_run / "train_config.json").write_text(json.dumps({"train_flags": {"image_size": 16}}))
        flags["init_checkpoint"] = image_run / "model000001.pt"
        expected = r"--init_checkpoint .*model000001\.pt holds a diffusion model .*, not a text-conditional model"
    result = run_script("text_train", flags, tmp_path / "log", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch("text_train.py: error: .*" + expected + ".*", lines[0]), lines[0]
    assert not (tmp_path / "log").exists()


@pytest.mark.slow
def test_text_train_writes_its_set_resumes_exactly_and_fine_tunes(tmp_path):
    captioned = write_captioned(tmp_path / "data", images=6)  # 3 batches an epoch: the resume is mid-epoch
    run_script("text_train", text_flags(captioned, max_steps=4), tmp_path / "straight")
    run_script("text_train", text_flags(captioned, max_steps=2), tmp_path / "split")
    resume = text_flags(captioned, max_steps=4, resume_checkpoint=tmp_path / "split" / "model000002.pt")
    run_script("text_train", resume, tmp_path / "split")
    for name in ["model000004.pt", "ema_0.9_000004.pt", "opt000004.pt", "state000004.pt"]:
        assert (tmp_path / "straight" / name).exists()
    for name in ["model000004.pt", "ema_0.9_000004.pt"]:
        straight = th.load(tmp_path / "straight" / name, weights_only=True)
        split = th.load(tmp_path / "split" / name, weights_only=True)
        assert straight.keys() == split.keys() and "transformer.resblocks.0.attn.c_qkv.weight" in straight
        assert all(th.equal(straight[k], split[k]) for k in straight), name
    saved = json.loads((tmp_path / "straight" / "train_config.json").read_text())
    assert {k: saved["model_flags"][k] for k in TINY_TEXT} == TINY_TEXT
    assert saved["model_flags"]["learn_sigma"] is True  # GLIDE's default: learned sigma, the hybrid loss
    assert {"mse", "vb"} <= set(read_progress(tmp_path / "straight")[-1])

    # fine-tuning: the network's flags come from the run beside --init_checkpoint (the schedule may change)
    init = tmp_path / "straight" / "model000004.pt"
    run_script("text_train", dict(data_dir=captioned, batch_size=2, max_steps=1, save_interval=1,
                                  init_checkpoint=init), tmp_path / "tuned")
    tuned = json.loads((tmp_path / "tuned" / "train_config.json").read_text())["model_flags"]
    network = {k: v for k, v in TINY_TEXT.items() if k not in ("diffusion_steps", "noise_schedule")}
    assert {k: tuned[k] for k in network} == network and tuned["diffusion_steps"] == 1000
    assert "initialising weights from" in (tmp_path / "tuned" / "log.txt").read_text()
