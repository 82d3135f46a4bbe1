"""The evaluator cache: --save_stats files as references, inputs checked before any Inception pass,
damaged npz files, unreadable images in the reference builder. Uses PixelFeatures (the Inception
network is exercised in test_eval_cli.py); the pipeline does not depend on which extractor runs."""

import io

import numpy as np
import pytest
from PIL import Image

from evaluations import evaluator, tools
from evaluations.features import PixelFeatures
from evaluations.npz_io import BatchFileError
from evaluations.stats import BatchStats

METRICS = ("fid", "sfid", "precision", "recall")


class CountingFeatures(PixelFeatures):
    """PixelFeatures that counts the images it has seen."""

    def __init__(self):
        self.images_seen = 0

    def __call__(self, images):
        self.images_seen += len(images)
        return super().__call__(images)


def _images(n, seed, brightness=0):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 200, (n, 1, 1, 3)) + brightness  # per-image colour, then pixel noise
    return np.clip(base + rng.randint(0, 56, (n, 12, 12, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def batches(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "sample.npz"
    np.savez(ref, arr_0=_images(40, seed=0))
    np.savez(sample, arr_0=_images(30, seed=1, brightness=80), arr_1=np.arange(30))
    return str(ref), str(sample)


def test_save_stats_file_as_reference_gives_the_same_metrics(batches, tmp_path):
    ref, sample = batches
    from_images = evaluator.evaluate(ref, sample, PixelFeatures(), batch_size=7)
    stats = str(tmp_path / "ref_stats.npz")
    evaluator.save_stats(stats, ref, PixelFeatures(), batch_size=16)
    counting = CountingFeatures()
    from_stats = evaluator.evaluate(stats, sample, counting, batch_size=7)
    assert counting.images_seen == 30  # only the samples went through the network
    assert 0 < from_images["precision"] < 1 and 0 < from_images["recall"] < 1 and from_images["fid"] > 0.01
    assert {k: from_stats[k] for k in METRICS} == {k: from_images[k] for k in METRICS}
    assert from_stats["inception_score"] is None  # PixelFeatures has no softmax


def test_save_stats_through_the_command_line(batches, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluator, "load_inception", lambda path, device: PixelFeatures())
    ref, sample = batches
    stats = str(tmp_path / "ref_stats.npz")
    evaluator.main(["--save_stats", str(tmp_path / "ref_stats"), ref])  # np.savez adds .npz
    assert capsys.readouterr().out == f"wrote {stats}\n"
    with np.load(stats) as data:
        assert sorted(data) == ["mu", "mu_s", "pool_3", "sigma", "sigma_s"]
        assert data["pool_3"].dtype == np.float16 and data["pool_3"].shape == (40, 12)
    with pytest.warns(UserWarning, match="50000 samples"):
        evaluator.main([stats, sample, "--json"])
    lines = capsys.readouterr().out
    assert '"precision": ' in lines and '"precision": null' not in lines


def test_moments_only_reference_reports_precision_and_recall_unavailable(batches, tmp_path):
    ref, sample = batches
    full = evaluator.reference_stats(ref, PixelFeatures())
    moments = tmp_path / "moments.npz"
    np.savez(moments, mu=full.mu, sigma=full.sigma, mu_s=full.mu_s, sigma_s=full.sigma_s)  # the release's keys
    results = evaluator.evaluate(str(moments), sample, PixelFeatures())
    assert results["fid"] == evaluator.evaluate(ref, sample, PixelFeatures())["fid"]
    assert results["precision"] is None and results["recall"] is None
    assert "Precision: unavailable (the reference stores no pool_3" in evaluator.format_report(results)


def _truncated(path, out):
    data = open(path, "rb").read()
    out.write_bytes(data[: len(data) // 2])
    return out


BAD_SAMPLES = {
    "float images": (lambda tmp, good: _savez(tmp / "float.npz", arr_0=np.zeros((8, 12, 12, 3), np.float32)),
                     "uint8"),
    "NCHW images": (lambda tmp, good: _savez(tmp / "nchw.npz", arr_0=np.zeros((8, 3, 12, 12), np.uint8)),
                    "NHWC"),
    "no arr_0": (lambda tmp, good: _savez(tmp / "noarr.npz", images=np.zeros((8, 12, 12, 3), np.uint8)),
                 "has no arr_0"),
    "too few images": (lambda tmp, good: _savez(tmp / "few.npz", arr_0=np.zeros((3, 12, 12, 3), np.uint8)),
                       "at least 4"),
    "truncated": (lambda tmp, good: _truncated(good, tmp / "cut.npz"), "not a complete .npz file"),
    "empty": (lambda tmp, good: _touch(tmp / "empty.npz"), "is empty"),
    "not an npz": (lambda tmp, good: _png(tmp / "image.npz"), "not a complete .npz file"),
    "missing": (lambda tmp, good: tmp / "nowhere.npz", "does not exist"),
    "wrong stored statistics": (
        lambda tmp, good: _savez(tmp / "stats.npz", arr_0=np.zeros((8, 12, 12, 3), np.uint8), mu=np.zeros(5),
                                 sigma=np.eye(5), mu_s=np.zeros(6), sigma_s=np.eye(6)),
        "feature sizes are 12"),
}


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return path


def _touch(path):
    path.write_bytes(b"")
    return path


def _png(path):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_sample_file_fails_before_any_inception_pass(batches, tmp_path, case, monkeypatch):
    ref, sample = batches
    make, message = BAD_SAMPLES[case]
    bad = str(make(tmp_path, sample))
    counting = CountingFeatures()
    with pytest.raises(BatchFileError, match=message) as error:
        evaluator.evaluate(ref, bad, counting)
    assert bad in str(error.value)  # the message names the file
    monkeypatch.setattr(evaluator, "load_inception", lambda path, device: counting)
    with pytest.raises(BatchFileError, match=message) as error:  # scripts end it as one line (errors.run)
        evaluator.main([ref, bad])
    assert bad in str(error.value)
    assert counting.images_seen == 0  # the reference was never processed


def test_bad_reference_fails_before_the_samples_are_processed(batches, tmp_path):
    ref, sample = batches
    counting = CountingFeatures()
    mismatched = _savez(tmp_path / "ref_stats.npz", mu=np.zeros(12), sigma=np.eye(12), mu_s=np.zeros(6),
                        sigma_s=np.eye(6), pool_3=np.zeros((10, 2048), np.float16))
    with pytest.raises(BatchFileError, match=r"pool_3 is float16 \(10, 2048\), expected floating \(10, 12\)"):
        evaluator.evaluate(str(mismatched), sample, counting)
    partial = _savez(tmp_path / "partial.npz", mu=np.zeros(12), sigma=np.eye(12))
    with pytest.raises(BatchFileError, match=r"without \['mu_s', 'sigma_s'\]"):
        evaluator.evaluate(str(partial), sample, counting)
    with pytest.raises(BatchFileError, match="not a complete .npz file"):
        evaluator.evaluate(str(_truncated(ref, tmp_path / "cut_ref.npz")), sample, counting)
    assert counting.images_seen == 0


def test_reference_builder_skips_unreadable_images_and_names_them(tmp_path):
    good, mixed = tmp_path / "good", tmp_path / "mixed"
    good.mkdir()
    mixed.mkdir()
    for i, image in enumerate(_images(6, seed=3)):
        Image.fromarray(image).save(good / f"{i}.png")
        Image.fromarray(image).save(mixed / f"{i}.png")
    png = (good / "0.png").read_bytes()
    (mixed / "3_truncated.png").write_bytes(png[: len(png) // 2])
    (mixed / "4_text.png").write_text("not an image")
    (mixed / "5_empty.jpg").write_bytes(b"")
    bad = sorted(str(p) for p in mixed.glob("?_*"))
    with pytest.warns(UserWarning) as record:
        used, skipped = tools.make_reference(str(mixed), str(tmp_path / "mixed.npz"), 12, 5, PixelFeatures(), 4)
    assert used == 6 and skipped == bad
    warned = [str(w.message) for w in record if "skipping unreadable image" in str(w.message)]
    assert len(warned) == 3 and all(path in message for path, message in zip(bad, warned))
    assert tools.make_reference(str(good), str(tmp_path / "good.npz"), 12, 5, PixelFeatures(), 4) == (6, [])
    with np.load(tmp_path / "mixed.npz") as got, np.load(tmp_path / "good.npz") as want:
        assert sorted(got) == sorted(want) == ["arr_0", "mu", "mu_s", "pool_3", "sigma", "sigma_s"]
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_stats_round_trip_keeps_moments_exact_and_pool_in_float16(tmp_path):
    acts = {"pool": np.random.RandomState(4).rand(9, 12).astype(np.float32),
            "spatial": np.random.RandomState(5).rand(9, 6).astype(np.float32)}
    stats = BatchStats.from_activations(acts)
    stats.save(tmp_path / "s.npz")
    loaded = evaluator.reference_stats(str(tmp_path / "s.npz"), PixelFeatures())
    for key in ("mu", "sigma", "mu_s", "sigma_s"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(stats, key))
    np.testing.assert_array_equal(loaded.pool, acts["pool"].astype(np.float16))


def test_to_png_names_a_damaged_batch(batches, tmp_path):
    cut = str(_truncated(batches[1], tmp_path / "cut.npz"))
    with pytest.raises(BatchFileError, match="is not a complete .npz file") as error:
        tools.main(["to_png", cut, str(tmp_path / "png")])
    assert f"{cut} is not a complete .npz file" in str(error.value)
