"""Unit tests of the sampling scripts' library: seeds, labels, sharding, gathering, outputs, base samples,
the sampler choice and classifier guidance."""

import json
import os
import textwrap

import numpy as np
import pytest
import torch as th
from PIL import Image

from guided_diffusion import base_samples, sample_io, sample_seeds, sampling
from guided_diffusion.guidance import ClassifierGuidance
from _train_helpers import live_image_bytes



# ----------------------------------------------------------------------------- seeds and shards


@pytest.mark.parametrize("num_samples,world_size", [(5, 2), (4, 2), (1, 2), (7, 3), (10, 1)])
def test_shards_cover_indices_in_order(num_samples, world_size):
    shards = [sample_seeds.shard_range(num_samples, r, world_size) for r in range(world_size)]
    assert [i for shard in shards for i in shard] == list(range(num_samples))
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_noise_depends_only_on_seed_and_index():
    whole = sample_seeds.SeededBatch(7, range(0, 4))
    part = sample_seeds.SeededBatch(7, range(2, 3))
    x = th.zeros(4, 3, 5, 5)
    first, second = whole.noise_like(x), whole.noise_like(x)
    assert th.equal(first[2:3], part.noise_like(x[:1]))
    assert th.equal(second[2:3], part.noise_like(x[:1]))  # streams advance per sample
    assert not th.equal(first, second)
    assert not th.equal(first[0], first[1])
    other_seed = sample_seeds.SeededBatch(8, range(0, 4)).noise_like(x)
    assert not th.equal(first, other_seed)
    # standard normal draws
    big = sample_seeds.SeededBatch(0, range(3)).noise((3, 20000))
    assert abs(float(big.mean())) < 0.03 and abs(float(big.std()) - 1) < 0.03


def test_noise_fn_rejects_a_batch_of_the_wrong_size():
    with pytest.raises(ValueError, match="3 rows was asked of 2 samples"):
        sample_seeds.SeededBatch(0, range(2)).noise_like(th.zeros(3, 1))


def test_noise_keeps_dtype_and_device():
    noise = sample_seeds.SeededBatch(0, range(2)).noise_like(th.zeros(2, 3, dtype=th.float64))
    assert noise.dtype == th.float64 and noise.shape == (2, 3)


def test_random_labels_are_per_index_and_in_range():
    labels = sample_seeds.SeededBatch(3, range(0, 200)).labels(10)
    assert labels.dtype == th.int64 and labels.min() >= 0 and labels.max() < 10
    assert len(set(labels.tolist())) == 10
    assert th.equal(labels[50:60], sample_seeds.SeededBatch(3, range(50, 60)).labels(10))
    # drawing labels does not disturb the noise stream of the same samples
    batch = sample_seeds.SeededBatch(3, range(2))
    batch.labels(10)
    assert th.equal(batch.noise((2, 4)), sample_seeds.SeededBatch(3, range(2)).noise((2, 4)))


def test_requested_labels_cycle_over_indices():
    labels = sample_seeds.SeededBatch(0, range(3, 8)).labels(10, class_labels=(1, 4))
    assert labels.tolist() == [4, 1, 4, 1, 4] and labels.dtype == th.int64


def test_parse_class_labels():
    assert sample_seeds.parse_class_labels("", 10) == ()
    assert sample_seeds.parse_class_labels("3, 7", 10) == (3, 7)
    with pytest.raises(ValueError, match=r"\[10\] are outside \[0, 10\)"):
        sample_seeds.parse_class_labels("1,10", 10)
    with pytest.raises(ValueError, match="comma-separated integers"):
        sample_seeds.parse_class_labels("cat", 10)


def test_resolve_seed():
    assert sample_seeds.resolve_seed(5) == 5
    drawn = sample_seeds.resolve_seed(-1)
    assert drawn >= 0


# ----------------------------------------------------------------------------- outputs


def test_uint8_conversion_truncates_and_clamps():
    # (x + 1) * 127.5 = 3.9 -> 3 (truncated, not rounded); out of range values clamp
    x = th.tensor([3.9 / 127.5 - 1, -1.5, 1.2, 0.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    out = sample_io.to_uint8_nhwc(x)
    assert out.dtype == th.uint8 and out.shape == (1, 1, 4, 3)
    assert out[0, 0, :, 0].tolist() == [3, 0, 255, 127]


def test_greyscale_samples_are_saved_as_rgb():
    x = th.tensor([-1.0, 0.0, 1.0, -0.5, 0.5, 2.0]).view(1, 1, 2, 3)
    out = sample_io.to_uint8_nhwc(x)
    assert out.shape == (1, 2, 3, 3) and th.equal(out[..., 0], out[..., 2])
    assert out[0, :, :, 1].flatten().tolist() == [0, 127, 255, 63, 191, 255]


def test_save_samples_layout(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, size=(5, 8, 6, 3)).astype(np.uint8)
    path = sample_io.save_samples(str(tmp_path), images, labels=np.array([1, 0, 1, 1, 0]))
    assert os.path.basename(path) == "samples_5x8x6x3.npz"
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert np.array_equal(data["arr_0"], images) and data["arr_1"].dtype == np.int64
    grid = np.asarray(Image.open(tmp_path / "samples_grid.png"))
    assert grid.shape == (2 * (8 + 2) + 2, 3 * (6 + 2) + 2, 3)  # 5 images: 3 columns, 2 rows
    assert np.array_equal(grid[2:10, 2:8], images[0])
    assert np.array_equal(grid[12:20, 10:16], images[4])
    unlabelled = sample_io.save_samples(str(tmp_path), images[:2])
    with np.load(unlabelled) as data:
        assert data.files == ["arr_0"]


# ----------------------------------------------------------------------------- guidance


class LinearClassifier(th.nn.Module):
    """logits = W flatten(x) + b(t): closed-form gradient of its log-softmax."""

    def __init__(self, dim, classes):
        super().__init__()
        self.weight = th.nn.Parameter(th.randn(classes, dim))
        self.seen_t = None

    def forward(self, x, t):
        self.seen_t = t
        return x.flatten(1) @ self.weight.T + t[:, None].float()


def test_classifier_guidance_matches_closed_form():
    th.manual_seed(0)
    classifier = LinearClassifier(2 * 3 * 3, 4)
    x = th.randn(2, 2, 3, 3)
    t = th.tensor([5, 17])
    y = th.tensor([3, 0])
    grad = ClassifierGuidance(classifier, 2.5)(x, t, None, y=y, low_res=None)
    # d/dx log softmax(Wx)[y] = W_y - sum_k p_k W_k
    with th.no_grad():
        p = th.softmax(x.flatten(1) @ classifier.weight.T + t[:, None].float(), dim=-1)
        expected = classifier.weight[y] - p @ classifier.weight
    assert th.allclose(grad, 2.5 * expected.view_as(x), atol=1e-5)
    assert th.equal(classifier.seen_t, t)
    assert not x.requires_grad


def test_classifier_guidance_needs_labels():
    with pytest.raises(ValueError, match="target labels"):
        ClassifierGuidance(LinearClassifier(4, 2), 1.0)(th.zeros(1, 1, 2, 2), th.zeros(1), None)


# ----------------------------------------------------------------------------- base samples


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_base_samples_round_trip(tmp_path):
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    path = _write(tmp_path / "base.npz", arr_0=images, arr_1=np.array([2, 0, 1], dtype=np.int32))
    base = base_samples.load_base_samples(path, small_size=4, class_cond=True)
    low_res = base.low_res(range(2, 5))  # index 3 and 4 reuse base samples 0 and 1
    assert low_res.shape == (3, 3, 4, 4) and low_res.dtype == th.float32
    assert th.allclose(low_res[1], th.from_numpy(images[0]).permute(2, 0, 1).float() / 127.5 - 1)
    assert base.labels_for(range(2, 5)).tolist() == [1, 2, 0]
    assert base.labels_for(range(1)).dtype == th.int64
    assert th.equal(base.low_res(range(2, 5), channels=1), low_res[:, :1])  # a greyscale upsampler's input
    assert base_samples.load_base_samples(path, 4, class_cond=False).labels is None


@pytest.mark.parametrize(
    "arrays,class_cond,message",
    [
        ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, False, "has no arr_0"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8)}, False, r"uint8 \[2, 8, 8, 3\], expected uint8 \[N, 4, 4, 3\]"),
        ({"arr_0": np.zeros((2, 4, 4), np.uint8)}, False, "check --small_size"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.float32)}, False, "float32"),
        ({"arr_0": np.zeros((0, 4, 4, 3), np.uint8)}, False, r"\(N > 0\)"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8)}, True, "has no arr_1"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "arr_1": np.zeros(3, np.int64)}, True, "arr_1 is int64 \\[3\\]"),
    ],
)
def test_bad_base_samples_are_clear_errors(tmp_path, arrays, class_cond, message):
    path = _write(tmp_path / "base.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        base_samples.load_base_samples(path, small_size=4, class_cond=class_cond)


def test_unreadable_base_samples(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable npz"):
        base_samples.load_base_samples(str(path), 4, False)
    with pytest.raises(ValueError, match="not a readable npz"):
        base_samples.load_base_samples(str(tmp_path / "missing.npz"), 4, False)
    with pytest.raises(ValueError, match="--base_samples is required"):
        base_samples.load_base_samples("", 4, False)


# ----------------------------------------------------------------------------- all ranks


GATHER_SCRIPT = """
import json, os, socket, sys
import numpy as np, torch as th, torch.distributed as dist
from mpi4py import MPI
from guided_diffusion import sample_io, sampling

sys.path.insert(0, "tests")  # the working directory is the repository root
from _train_helpers import live_image_bytes

comm = MPI.COMM_WORLD
if comm.size > 1:
    port = None
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=comm.rank, world_size=comm.size)

kept = []  # per round, before it draws: the sampled images this rank holds

def sample_batch(batch):
    kept.append(live_image_bytes(4, 4))
    # a stand-in sampler: initial noise, one noise_fn step, labels from the per-sample streams
    x = batch.noise((len(batch), 3, 4, 4))
    x = 0.5 * x + 0.1 * batch.noise_like(x)
    return x.clamp(-1, 1), batch.labels(10)

out = sys.argv[1]
images, labels = sampling.sample_all(sample_batch, int(sys.argv[2]), int(sys.argv[3]), seed=11,
                                     sample_shape=(3, 4, 4), device="cpu", with_labels=True)
if images is not None:
    sample_io.save_samples(out, images, labels)
with open(os.path.join(out, f"kept_rank{comm.rank}.json"), "w") as f:
    json.dump(kept, f)
if dist.is_initialized():
    dist.destroy_process_group()  # before MPI_Finalize, as dist_util.setup_dist arranges for the scripts
"""


@pytest.fixture(scope="module")
def gathered(run_python, tmp_path_factory):
    """{"one": 5 samples by 1 rank in one batch of 5, "two": by 2 ranks one at a time (shards of 3 and
    2: three rounds, the last one empty on rank 1)}, each {"images", "labels", "kept": per rank, per round the bytes of sampled images
    held per device}."""
    tmp_path = tmp_path_factory.mktemp("gather")
    script = tmp_path / "gather.py"
    script.write_text(textwrap.dedent(GATHER_SCRIPT))
    runs = {}
    for name, ranks, batch_size in [("one", 1, 5), ("two", 2, 1)]:
        out = tmp_path / name
        out.mkdir()
        run_python([script, out, 5, batch_size], ranks=ranks)
        with np.load(out / "samples_5x4x4x3.npz") as data:
            runs[name] = {"images": data["arr_0"], "labels": data["arr_1"]}
        runs[name]["kept"] = [json.loads((out / f"kept_rank{r}.json").read_text()) for r in range(ranks)]
    return runs


@pytest.mark.slow
def test_gather_is_exact_and_independent_of_ranks_and_batch_size(gathered):
    one_rank, two_ranks = gathered["one"], gathered["two"]
    assert one_rank["images"].shape == (5, 4, 4, 3) and one_rank["labels"].shape == (5,)
    for key in ("images", "labels"):
        assert np.array_equal(one_rank[key], two_ranks[key])
    assert len(np.unique(one_rank["images"].reshape(5, -1), axis=0)) == 5
    # sample 4 recomputed here from its own stream alone
    batch = sample_seeds.SeededBatch(11, range(4, 5))
    x = batch.noise((1, 3, 4, 4))
    x = (0.5 * x + 0.1 * batch.noise_like(x)).clamp(-1, 1)
    assert np.array_equal(sample_io.to_uint8_nhwc(x)[0].numpy(), one_rank["images"][4])
    assert one_rank["labels"][4] == int(batch.labels(10)[0])


@pytest.mark.slow
def test_only_rank_0_keeps_images_and_only_on_the_host(gathered):
    # between rounds rank 0 holds the result being filled in (5 x 4 x 4 x 3 bytes, host memory) and
    # nothing else; rank 1 holds no image at all
    result_bytes = 5 * 4 * 4 * 3
    rank0, rank1 = gathered["two"]["kept"]
    assert rank0 == [{"cpu": result_bytes}] * 3
    assert rank1 == [{}] * 2
    assert gathered["one"]["kept"] == [[{"cpu": result_bytes}]]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if th.cuda.is_available() else []))  # no skip on a CPU
def test_sample_all_moves_each_round_to_host_memory(device):
    # 7 samples of 3 x 5 in rounds of 3 (3 rounds): before each round the only images alive are the
    # host copy of the result, whatever the sampling device; nothing accumulates per round
    kept = []

    def sample_batch(batch):
        kept.append(live_image_bytes(3, 5))
        return th.zeros(len(batch), 3, 3, 5, device=device), None

    images, labels = sampling.sample_all(sample_batch, 7, 3, 0, (3, 3, 5), device, with_labels=False)
    assert kept == [{"cpu": 7 * 3 * 5 * 3}] * 3
    assert images.shape == (7, 3, 5, 3) and labels is None


def test_guidance_scale_needs_a_null_class():
    class Model(th.nn.Module):
        null_class = None

    assert sampling.free_guidance(1.0, Model()) == ()
    with pytest.raises(ValueError, match="--class_dropout_prob"):
        sampling.free_guidance(3.0, Model())
    Model.null_class = 10
    (guide,) = sampling.free_guidance(3.0, Model())
    assert (guide.scale, guide.null_class) == (3.0, 10)


def test_missing_checkpoint_flag_is_named():
    with pytest.raises(ValueError, match="pass --classifier_path PATH"):
        sampling.load_for_sampling(th.nn.Linear(1, 1), "", "cpu", flag="--classifier_path")


def test_sample_all_needs_samples_and_a_batch():
    with pytest.raises(ValueError, match="--num_samples \\(0\\)"):
        sampling.sample_all(None, 0, 4, 0, (3, 4, 4), "cpu", with_labels=False)


def test_sample_all_in_one_process_is_in_index_order():
    def sample_batch(batch):
        value = (th.tensor(batch.indices, dtype=th.float32).view(-1, 1, 1, 1) + 0.5) / 127.5 - 1
        return value.expand(len(batch), 3, 2, 2), th.tensor(batch.indices)

    images, labels = sampling.sample_all(sample_batch, 7, 3, 0, (3, 2, 2), "cpu", with_labels=True)
    assert images.shape == (7, 2, 2, 3) and images.dtype == np.uint8
    assert images[:, 0, 0, 0].tolist() == list(range(7)) and labels.tolist() == list(range(7))
