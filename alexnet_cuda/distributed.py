"""Data parallelism: one process per GPU (or per CPU rank), started by MPI.

`mpiexec -n N alexnet-cuda train ...` (or `mpirun`, or `srun` under Slurm) starts N copies of the
command; each is a *rank*. They train one model together:

* `--batch-size` is the global batch. Rank r computes rows [r*B/N, (r+1)*B/N) of every global batch
  (the same images, crops and flips as a single process would use for those rows) and its dropout
  masks are those rows of the whole batch's masks (`start` of the dropout op), so the arithmetic is
  the single-process run's up to the order of the gradient sums.
* After each layer's backward pass its gradients are averaged across the ranks (`GradientAverager`):
  MPI all-reduce on the host arrays on the CPU backends, NCCL (through cupy) on cuda, on a stream of
  its own that overlaps the rest of the backward pass.
* Validation is split by batches and the correct counts summed; the loss and the Ctrl-C flag are
  agreed on every step, so all ranks stop, diverge or finish at the same step.
* Only rank 0 writes the run folder. At start-up the ranks compare their configurations and code
  (`check_same`) and refuse to start when they differ.
* A rank that raises ends the whole job (`World.abort`, MPI_Abort) with a message naming the rank;
  a rank that dies is noticed by the MPI launcher, which ends the others.

Without an MPI launcher (no PMI/Open MPI/Slurm task variables) `World()` is the single process and
mpi4py is never imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import BackendError, TrainError

_ABORT_GRACE_S = 0.5  # World.abort: seconds between the failing rank's message and MPI_Abort

__all__ = ["World", "world", "code_fingerprint", "GradientAverager", "launched_ranks", "launch", "abort_job"]

# Variables the MPI launchers set in every process they start: MPICH's hydra (PMI_SIZE), Open MPI
# (OMPI_COMM_WORLD_SIZE), Slurm's srun (SLURM_STEP_NUM_TASKS). PMIX_RANK: any PMIx launcher.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def launched_ranks(environ=None):
    """The number of ranks the MPI launcher started (1 when not started by one)."""
    env = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        v = env.get(var, "")
        if v.isdigit() and int(v) > 1:
            return int(v)
    return 2 if "PMIX_RANK" in env and env.get("PMIX_SIZE", "2") != "1" else 1


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise BackendError(f"this process was started by an MPI launcher with {launched_ranks()} ranks, but mpi4py "
                           f"cannot be imported ({e}); install it with `pip install 'alexnet-cuda[mpi]'` (or "
                           f"mpi4py built against your cluster's MPI)") from e
    return MPI


class World:
    """The ranks of this job: `rank`, `size`, `local_rank` (the rank among those on this machine, which
    picks the GPU); collectives that are no-ops for a single process."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        MPI = _mpi()
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    @classmethod
    def from_environment(cls):
        """The MPI world when started by an MPI launcher with more than one rank, else the single process."""
        if launched_ranks() == 1:
            return cls()
        return cls(_mpi().COMM_WORLD)

    @property
    def writer(self):
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    def share_cores(self):
        """Give the emu backend's thread pool this rank's share of the machine's cores (unless
        ALEXNET_EMU_THREADS is set), so N ranks on one machine do not run N x cores threads."""
        if self.local_size > 1 and not os.environ.get("ALEXNET_EMU_THREADS"):
            os.environ["ALEXNET_EMU_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.local_size))

    def use_local_gpu(self):
        """Make GPU `local_rank` the current device of this process (one GPU per rank on each machine)."""
        if self.size == 1:
            return
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        if self.local_rank >= n:
            raise BackendError(f"rank {self.rank} is rank {self.local_rank} on its machine, which has {n} GPU(s): "
                               f"start at most {n} ranks per machine")
        cupy.cuda.Device(self.local_rank).use()

    # -- host collectives ---------------------------------------------------------------
    def sum_(self, a):
        """Sum the contiguous numpy array `a` over the ranks, in place; returns `a`."""
        if self.size > 1:
            self.comm.Allreduce(_mpi().IN_PLACE, a, op=_mpi().SUM)
        return a

    def sum_values(self, values):
        """The sums over the ranks of a few numbers (float64 numpy vector)."""
        return self.sum_(np.array(values, dtype=np.float64))

    def any_(self, flag):
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        return bool(self.sum_values([1.0 if flag else 0.0])[0] > 0)

    def any_mask_(self, mask):
        """Elementwise OR of a uint8/bool numpy array over the ranks, in place (as uint8)."""
        a = np.ascontiguousarray(mask, dtype=np.uint8)
        if self.size > 1:
            self.comm.Allreduce(_mpi().IN_PLACE, a, op=_mpi().MAX)
        return a

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def rank0_first(self, fn):
        """fn() on rank 0, then on the others (which find what rank 0 prepared, e.g. a data cache).
        When rank 0 fails, the others raise TrainError saying so instead of waiting."""
        if self.size == 1:
            return fn()
        err = None
        if self.rank == 0:
            try:
                out = fn()
            except BaseException as e:
                err = e
        why = self.comm.bcast(None if err is None else f"{type(err).__name__}: {err}", root=0)
        if err is not None:
            raise err
        if why is not None:
            raise TrainError(f"rank 0 failed while preparing: {why}")
        return out if self.rank == 0 else fn()

    def check_same(self, what, value):
        """Raise TrainError on every rank when `value` (JSON-able) differs between ranks, naming the
        ranks and, for dicts, the keys that differ."""
        if self.size == 1:
            return
        values = self.comm.allgather(value)
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if not bad:
            return
        r = bad[0]
        if isinstance(value, dict):
            keys = sorted(k for k in set(values[0]) | set(values[r]) if values[0].get(k) != values[r].get(k))
            diff = "; ".join(f"{k}: {_short(values[0].get(k))} on rank 0, {_short(values[r].get(k))} on rank {r}"
                             for k in keys)
        else:
            diff = f"{_short(values[0])} on rank 0, {_short(values[r])} on rank {r}"
        raise TrainError(f"the ranks were started with different {what} (ranks {', '.join(map(str, bad))} differ "
                         f"from rank 0): {diff}")

    def abort(self, code, message):
        """End the whole job now: `message` on stderr, then MPI_Abort (every rank exits). The pause between
        them lets mpiexec forward the message: the abort tears the job down, and about one failure in
        thirty lost the line without it (tests/test_distributed.py)."""
        sys.stderr.write(f"alexnet-cuda: rank {self.rank} of {self.size}: {message}\n")
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)
        self.comm.Abort(int(code) or 1)


def _short(v):
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


_WORLD = None


def abort_job(code, message):
    """In a job of several ranks: end all of them (World.abort) and do not return. Else return False."""
    if _WORLD is None or _WORLD.size == 1:
        return False
    _WORLD.abort(code, message)
    return True


def launch(ranks, argv, log):
    """Run `python -m alexnet_cuda ARGV` as `ranks` ranks through the installed mpiexec (--gpus N);
    returns its exit status. Ctrl-C reaches the ranks too (they save a checkpoint and stop); this
    process waits for them."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mpiexec = shutil.which("mpiexec", path=path)
    if mpiexec is None:
        raise BackendError("--gpus N starts N processes with mpiexec, which was not found; install MPI with "
                           "`pip install 'alexnet-cuda[mpi]'` (or put your cluster's mpiexec on PATH)")
    cmd = [mpiexec, "-n", str(int(ranks)), sys.executable, "-m", "alexnet_cuda", *argv]
    log(f"starting {ranks} ranks: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def world():
    """The World of this process (created on first use)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World.from_environment()
    return _WORLD


def code_fingerprint():
    """{"sources": a hash of the package's Python sources (its version number included)}, so ranks
    running different code refuse to train together."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return {"sources": h.hexdigest()[:16]}


# ---------------------------------------------------------------------------
# Gradient averaging
# ---------------------------------------------------------------------------

class GradientAverager:
    """Averages a model's gradients over the ranks, layer by layer as the backward pass produces them.

    `layer_done(layer)` is called by AlexNet.loss_and_grads after each parameter layer's backward;
    `finish()` waits for all of them. On the host backends the gradients are packed into buckets of
    at least `bucket_bytes` and each bucket is summed with a non-blocking MPI all-reduce
    (Iallreduce) as soon as it is full; on cuda each layer's gradients are summed in place by NCCL on
    the averager's own stream, ordered after the layer's backward by an event, while the compute
    stream goes on with the layers below. Either way the sum is then scaled by 1/size.
    """

    def __init__(self, world, backend, bucket_bytes=8 << 20):
        self.world, self.backend, self.bucket_bytes = world, backend, int(bucket_bytes)
        self._impl = _NcclImpl(world) if backend.name == "cuda" else _HostImpl(world, backend)

    def layer_done(self, layer):
        self._impl.add([getattr(layer, "grad_" + p) for p in layer.params], self.bucket_bytes)

    def finish(self):
        self._impl.finish()

    def step_totals(self, loss, correct):
        """(the mean over the ranks of each rank's loss, as a float, NaN if any is; the sum of their top-1
        hits, an int) from this rank's backend scalars."""
        to = self.backend.to_numpy
        sums = self.world.sum_values([float(to(loss)), float(to(correct))])
        return float(sums[0]) / self.world.size, int(sums[1])


class _HostImpl:
    def __init__(self, world, backend):
        self.world, self.backend = world, backend
        self.pending, self.inflight = [], []

    def add(self, grads, bucket_bytes):
        self.pending += grads
        if sum(g.nbytes for g in self.pending) >= bucket_bytes:
            self._flush()

    def _flush(self):
        if not self.pending:
            return
        grads, self.pending = self.pending, []
        buf = np.concatenate([np.asarray(self.backend.to_numpy(g), np.float32).ravel() for g in grads])
        req = self.world.comm.Iallreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
        self.inflight.append((req, buf, grads))

    def finish(self):
        self._flush()
        scale = np.float32(1.0 / self.world.size)
        for req, buf, grads in self.inflight:
            req.Wait()
            buf *= scale
            at = 0
            for g in grads:
                g[...] = buf[at:at + g.size].reshape(g.shape)
                at += g.size
        self.inflight = []


class _NcclImpl:
    """NCCL all-reduce of each layer's gradients on a stream of its own (cuda backend)."""

    def __init__(self, world):
        import cupy
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise BackendError(f"data-parallel training on cuda needs NCCL, which cupy cannot load ({e}); install "
                               f"`pip install 'alexnet-cuda[cuda]'` (it brings NCCL's wheel)") from e
        self.cupy, self.nccl = cupy, nccl
        if world.size == 1:  # a communicator of one (benchmarks/bench_dataparallel.py measures the path)
            uid = nccl.get_unique_id()
        else:
            uid = world.comm.bcast(nccl.get_unique_id() if world.rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.size = world.size
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.done = None

    def add(self, grads, bucket_bytes):
        cp, nccl = self.cupy, self.nccl
        ready = cp.cuda.get_current_stream().record()
        self.stream.wait_event(ready)
        nccl.groupStart()
        for g in grads:
            self.comm.allReduce(g.data.ptr, g.data.ptr, g.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, self.stream.ptr)
        nccl.groupEnd()
        with self.stream:
            for g in grads:
                g *= np.float32(1.0 / self.size)
        self.done = self.stream.record()

    def finish(self):
        if self.done is not None:
            self.cupy.cuda.get_current_stream().wait_event(self.done)
            self.done = None
