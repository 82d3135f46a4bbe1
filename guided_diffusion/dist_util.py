"""Process-group setup for a single process, an `mpiexec -n N` launch or a `torchrun` launch; the one rank
helper (get_rank / get_world_size) and variable-length gather (all_gather_rows); rank-0 work whose result
or error reaches every rank (on_rank0); and checkpoint reads that touch the file system once (rank 0) and
broadcast the bytes to every rank.

mpi4py is imported only when the process was started by an MPI launcher, so a plain
`python script.py` needs no MPI installation.
"""

import atexit
import io
import os
import socket

import blobfile as bf
import torch as th
import torch.distributed as dist

# Environment variables set by MPI launchers (MPICH/Hydra, Open MPI, PMIx, Intel MPI).
MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                "MPI_LOCALRANKID")
TORCHRUN_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BROADCAST_CHUNK_BYTES = 1 << 28


def launched_by_torchrun():
    """True when torchrun (or any launcher exporting RANK/WORLD_SIZE/MASTER_*) started this process."""
    return all(name in os.environ for name in TORCHRUN_ENV_VARS)


def launched_by_mpi():
    """True when an MPI launcher (mpiexec/mpirun/srun with PMI) started this process."""
    return any(name in os.environ for name in MPI_ENV_VARS)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_layout():
    """Rank, world size, local rank, local size from MPI; exports MASTER_ADDR/PORT for env:// init."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    single_node = local.Get_size() == comm.Get_size()
    if comm.Get_rank() == 0:
        addr = "127.0.0.1" if single_node else socket.gethostbyname(socket.getfqdn())
        master = (addr, _free_port())
    else:
        master = None
    os.environ["MASTER_ADDR"], port = comm.bcast(master, root=0)
    os.environ["MASTER_PORT"] = str(port)
    return comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size()


def _torchrun_layout():
    world = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]), local_size


def _choose_device(local_rank, local_size):
    """Pick this rank's GPU (one per local rank, honouring CUDA_VISIBLE_DEVICES) and the backend."""
    if not th.cuda.is_available():
        return "gloo"
    visible = th.cuda.device_count()
    if local_size > visible:
        raise RuntimeError(
            f"{local_size} processes were started on this node but only {visible} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
            f"Start at most {visible} processes per node (e.g. mpiexec -n {visible} or "
            f"torchrun --nproc_per_node {visible}), or make more GPUs visible."
        )
    th.cuda.set_device(local_rank)
    return "nccl"


def setup_dist():
    """Initialise torch.distributed once: MPI launch, torchrun launch, or a single process.

    NCCL with one GPU per local rank when CUDA is available, gloo on the CPU. Calling it again is a no-op.
    """
    if dist.is_initialized():
        return
    if launched_by_torchrun():
        rank, world, local_rank, local_size = _torchrun_layout()
    elif launched_by_mpi():
        rank, world, local_rank, local_size = _mpi_layout()
    else:
        rank, world, local_rank, local_size = 0, 1, 0, 1
    backend = _choose_device(local_rank, local_size)
    if world == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    atexit.register(_teardown)  # runs before mpi4py's MPI_Finalize (atexit is last-in, first-out)


def _teardown():
    """Destroy the process group before interpreter exit (avoids aborts in gloo's threads at shutdown)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank():
    """This process's rank (0 when torch.distributed is not initialised); the one rank helper."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    """Number of processes (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def dev():
    """The device this rank computes on: its GPU when CUDA is available, else the CPU."""
    if th.cuda.is_available():
        return th.device("cuda", th.cuda.current_device())
    return th.device("cpu")


def _comm_device():
    return dev() if dist.is_initialized() and dist.get_backend() == "nccl" else th.device("cpu")


def broadcast_bytes(data):
    """Broadcast `data` (bytes on rank 0, ignored elsewhere) to all ranks; returns the bytes everywhere.

    Rank 0 may pass an Exception instead of bytes: every rank then raises it (no rank hangs).
    """
    if get_world_size() == 1:
        if isinstance(data, Exception):
            raise data
        return data
    header = [data if isinstance(data, Exception) else len(data)] if get_rank() == 0 else [None]
    dist.broadcast_object_list(header, src=0)
    if isinstance(header[0], Exception):
        raise header[0]
    size = header[0]
    buf = th.empty(size, dtype=th.uint8, device=_comm_device())
    if get_rank() == 0:
        buf.copy_(th.frombuffer(bytearray(data), dtype=th.uint8))
    for start in range(0, size, BROADCAST_CHUNK_BYTES):
        dist.broadcast(buf[start:start + BROADCAST_CHUNK_BYTES], src=0)
    return data if get_rank() == 0 else buf.cpu().numpy().tobytes()


def on_rank0(fn):
    """Run fn() on rank 0 only and return its result on every rank.

    An exception raised there is raised on every rank, so no rank waits forever for a failed rank 0
    (file-system work such as writing checkpoints goes through here). fn's result must be picklable.
    """
    if get_world_size() == 1:
        return fn()
    outcome = [None]
    if get_rank() == 0:
        try:
            outcome = [(fn(), None)]
        except Exception as exc:  # noqa: BLE001 (re-raised on every rank below)
            outcome = [(None, exc)]
    dist.broadcast_object_list(outcome, src=0)
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


def all_gather_rows(rows):
    """rows: [n, ...] on this rank (n may differ between ranks) -> list over ranks of their [n_r, ...] rows.

    A collective: every rank calls it with the same trailing shape and dtype (on the backend's device).
    """
    if get_world_size() == 1:
        return [rows]
    count = th.tensor([rows.shape[0]], dtype=th.int64, device=rows.device)
    counts = [th.zeros_like(count) for _ in range(get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [th.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return [block[:n] for block, n in zip(gathered, counts)]


def read_bytes_once(path):
    """Read a file (local, gs://, az://) on rank 0 only and return its bytes on every rank."""
    data = None
    if get_rank() == 0:
        try:
            with bf.BlobFile(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = FileNotFoundError(f"checkpoint file not found: {path!r}; check the path (and that "
                                     f"every node can see it only if it is not on rank 0's file system)")
    return broadcast_bytes(data)


def load_state_dict(path, **kwargs):
    """torch.load a checkpoint read once on rank 0 and broadcast; weights_only=True unless overridden.

    kwargs are passed to torch.load (e.g. map_location="cpu").
    """
    kwargs.setdefault("weights_only", True)
    return th.load(io.BytesIO(read_bytes_once(path)), **kwargs)


def sync_params(params):
    """Copy rank 0's values of `params` (an iterable of tensors) to every rank, in place."""
    if get_world_size() == 1:
        return
    for p in params:
        with th.no_grad():
            dist.broadcast(p, 0)
