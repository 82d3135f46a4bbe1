"""dist_util: launch detection, device choice, read-once-and-broadcast loading, rank-0 work, variable-length
gathers, under MPI and torchrun."""

import subprocess
import textwrap

import pytest
import torch as th

from _train_helpers import MPIEXEC, PYTHON, REPO, TIMEOUT, TORCHRUN
from guided_diffusion import dist_util

WORKER = textwrap.dedent("""
    import os, sys, torch as th, torch.distributed as dist
    from guided_diffusion import dist_util, logger
    dist_util.setup_dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    logger.configure(dir=sys.argv[1], format_strs=["log", "csv"] if rank == 0 else ["log"])
    # read once + broadcast
    sd = dist_util.load_state_dict(os.path.join(sys.argv[1], "w.pt"), map_location="cpu")
    assert th.equal(sd["w"], th.arange(6.0).view(2, 3)), sd
    try:
        dist_util.load_state_dict(os.path.join(sys.argv[1], "missing.pt"))
    except FileNotFoundError as exc:
        assert "missing.pt" in str(exc)
    else:
        raise AssertionError("no error for a missing file")
    # sync_params copies rank 0's values
    p = th.full((3,), float(rank))
    dist_util.sync_params([p])
    assert th.equal(p, th.zeros(3))
    # variable-length gather: rank r sends r + 1 rows
    rows = dist_util.all_gather_rows(th.arange(2 * (rank + 1), dtype=th.uint8).view(-1, 2) + 10 * rank)
    assert [r.tolist() for r in rows] == [[[0, 1]], [[10, 11], [12, 13]]], rows
    # rank-0 work: its result on every rank, its exception raised on every rank
    assert dist_util.on_rank0(lambda: f"from rank {rank}") == "from rank 0"
    try:
        dist_util.on_rank0(lambda: [][rank])
    except IndexError:
        pass
    else:
        raise AssertionError("rank 0's exception was not raised on rank " + str(rank))
    # means are pooled over ranks, weighted by counts: rank 0 logs 1.0 (x1), rank 1 logs 4.0 (x3)
    logger.logkv_mean("m", 1.0 + 3.0 * rank, n=1 + 2 * rank)
    row = logger.dumpkvs()
    assert abs(row["m"] - (1.0 + 12.0) / 4) < 1e-12, row
    print(f"OK rank={rank} world={world} dev={dist_util.dev()} backend={dist.get_backend()}")
""")


def _run(cmd, tmp_path):
    th.save({"w": th.arange(6.0).view(2, 3)}, tmp_path / "w.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    result = subprocess.run([*cmd, PYTHON, str(tmp_path / "worker.py"), str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_mpiexec_two_ranks(tmp_path):
    out = _run([MPIEXEC, "-n", "2"], tmp_path)
    assert "OK rank=0 world=2 dev=cpu backend=gloo" in out and "OK rank=1 world=2" in out
    assert (tmp_path / "log-rank001.txt").exists() and (tmp_path / "log.txt").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_have_their_own_ranks(tmp_path):
    out = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "--no-python"], tmp_path)
    assert "OK rank=0 world=2" in out and "OK rank=1 world=2" in out


def test_single_process_needs_no_mpi(tmp_path):
    code = ("import sys, guided_diffusion.dist_util as d, torch.distributed as dist; d.setup_dist(); "
            "print(dist.get_world_size(), d.dev(), 'mpi4py' in sys.modules)")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin"}, timeout=TIMEOUT)
    assert out.stdout.split() == ["1", "cpu", "False"], out.stderr


def test_single_process_gather_and_rank0_work_are_direct():
    rows = th.ones(3, 2)
    assert dist_util.all_gather_rows(rows)[0] is rows and len(dist_util.all_gather_rows(rows)) == 1
    assert dist_util.on_rank0(lambda: 7) == 7
    with pytest.raises(KeyError):
        dist_util.on_rank0(lambda: {}["missing"])


def test_launch_detection(monkeypatch):
    for name in dist_util.MPI_ENV_VARS + dist_util.TORCHRUN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not dist_util.launched_by_mpi() and not dist_util.launched_by_torchrun()
    monkeypatch.setenv("PMI_RANK", "0")
    assert dist_util.launched_by_mpi()
    for name, value in zip(dist_util.TORCHRUN_ENV_VARS, ["0", "2", "0", "127.0.0.1", "29500"]):
        monkeypatch.setenv(name, value)
    assert dist_util.launched_by_torchrun()


def test_more_local_ranks_than_visible_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(th.cuda, "is_available", lambda: True)
    monkeypatch.setattr(th.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(RuntimeError, match=r"4 processes .* only 2 GPU.*CUDA_VISIBLE_DEVICES=3,5"):
        dist_util._choose_device(local_rank=1, local_size=4)


def test_load_state_dict_single_process_is_weights_only(tmp_path):
    th.save({"a": th.ones(2)}, tmp_path / "ok.pt")
    assert th.equal(dist_util.load_state_dict(str(tmp_path / "ok.pt"))["a"], th.ones(2))
    th.save({"a": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        dist_util.load_state_dict(str(tmp_path / "evil.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        dist_util.load_state_dict(str(tmp_path / "nope.pt"))


class Exploit:
    """An arbitrary pickled object: weights_only loading must refuse it."""
