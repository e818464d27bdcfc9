"""Data-parallel training (alexnet_cuda.distributed): the sharded loaders, the launcher detection, and
real MPI jobs (mpiexec from the `mpi` extra, which the test extra includes) on the numpy backend:
two ranks match one process, rank 0 alone writes, resume across rank counts, mismatched ranks are
refused, a killed rank ends the job."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet_cuda import cli, distributed
from alexnet_cuda import runfolder as rf
from alexnet_cuda import train as T
from alexnet_cuda.data import EvalLoader, PreparedDataset, TrainLoader

HERE = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


# ---------------------------------------------------------------------------
# In one process
# ---------------------------------------------------------------------------

def test_shards_of_a_batch_are_its_rows(tiny_data):
    """Rank r of N gets rows [r*B/N, (r+1)*B/N) of every batch: the same images, crops, flips and lighting."""
    ds = PreparedDataset(tiny_data, "train")
    whole = TrainLoader(ds, batch_size=12, crop=67, seed=5)
    for n in (2, 3, 4):
        shards = [TrainLoader(ds, batch_size=12, crop=67, seed=5, shard=(r, n)) for r in range(n)]
        assert [s.row0 for s in shards] == [r * 12 // n for r in range(n)]
        for b in range(len(whole)):
            x, y = whole.batch(1, b)
            parts = [s.batch(1, b) for s in shards]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="divide"):
        TrainLoader(ds, batch_size=10, crop=67, seed=5, shard=(0, 3))
    with pytest.raises(ValueError, match="rank"):
        TrainLoader(ds, batch_size=12, crop=67, seed=5, shard=(2, 2))


def test_eval_shards_partition_the_batches(tiny_data):
    ds = PreparedDataset(tiny_data, "val")
    whole = list(EvalLoader(ds, batch_size=4, crop=67))
    for n in (2, 3, 5):
        got = {}
        for r in range(n):
            shard = EvalLoader(ds, batch_size=4, crop=67, shard=(r, n))
            batches = list(shard)
            assert len(batches) == len(shard)
            for k, xy in zip(range(r, len(whole), n), batches):
                got[k] = xy
        assert sorted(got) == list(range(len(whole)))
        for k, (x, y) in enumerate(whole):
            np.testing.assert_array_equal(got[k][0], x)
            np.testing.assert_array_equal(got[k][1], y)


def test_launched_ranks_from_the_launchers_variables():
    assert distributed.launched_ranks({}) == 1
    assert distributed.launched_ranks({"PMI_SIZE": "4"}) == 4                 # MPICH hydra
    assert distributed.launched_ranks({"OMPI_COMM_WORLD_SIZE": "3"}) == 3     # Open MPI
    assert distributed.launched_ranks({"SLURM_STEP_NUM_TASKS": "8"}) == 8     # srun
    assert distributed.launched_ranks({"PMI_SIZE": "1", "SLURM_NTASKS": "8"}) == 1  # sbatch without srun
    assert distributed.launched_ranks({"PMIX_RANK": "0", "PMIX_SIZE": "1"}) == 1


def test_single_process_world_is_a_no_op():
    w = distributed.World()
    assert (w.rank, w.size, w.local_rank, w.writer) == (0, 1, 0, True)
    a = np.arange(4, dtype=np.float32)
    assert w.sum_(a) is a and a.tolist() == [0, 1, 2, 3]
    assert w.any_(True) and not w.any_(False)
    w.check_same("configurations", {"lr": 1})
    assert w.rank0_first(lambda: 7) == 7
    assert distributed.abort_job(1, "not in a job") is False


def test_gpus_option_is_removed_from_the_ranks_command_line():
    assert cli._without_gpus(["train", "--gpus", "4", "--epochs", "2"]) == ["train", "--epochs", "2"]
    assert cli._without_gpus(["train", "--gpus=4", "--lr", "0.1"]) == ["train", "--lr", "0.1"]


def test_global_batch_must_divide_by_the_ranks(tiny_data, tmp_path):
    class ThreeRanks(distributed.World):
        def __init__(self):
            super().__init__()
            self.size = 3
    cfg = T.default_config(data=tiny_data, out=str(tmp_path / "r"), preset="small", backend="numpy",
                           batch_size=8, epochs=1)
    with pytest.raises(T.TrainError, match="multiple of 3"):
        T.train(cfg, log=lambda *a: None, world=ThreeRanks())


# ---------------------------------------------------------------------------
# Real MPI jobs
# ---------------------------------------------------------------------------

def _cfg(data, out, **kw):
    base = dict(data=data, out=str(out), preset="small", backend="numpy", epochs=1, batch_size=8, width=1 / 16,
                data_size=72, eval_batch_size=4, dropout=0.5, seed=3)  # dropout on: the masks must follow the rows
    base.update(kw)
    return base


def _job(tmp_path, name, job, ranks=2, timeout=300):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(HERE / "mpi_train.py"), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _weights(out):
    tensors, info = rf.load_checkpoint(Path(out) / rf.CHECKPOINT)
    return {k: v for k, v in tensors.items() if not k.startswith(("data.", "health."))}, info


# Two ranks sum each gradient in another order than one process (two half-batch means averaged
# instead of one mean over the batch), so the results agree to float32 round-off, not bitwise:
# after 6 and 12 SGD steps at lr 0.01 the weights (|w| up to ~0.5) and momenta differ by at most
# 6e-8 here (a few ulps). 2e-6 absolute leaves room for other BLAS summation orders; a wrong
# row-to-dropout-mask mapping changes them by more than 100 times that (the negative control).
ATOL = 2e-6


def _assert_close(a, b, atol=ATOL):
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= atol, f"max |difference| {worst:.3g} > {atol:g}"
    return worst


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """One process: epoch 1, then resumed to epoch 2. Two ranks: epoch 1, then resumed on one process."""
    tmp = tmp_path_factory.mktemp("dp")
    one, two = tmp / "one", tmp / "two"
    assert T.train(T.default_config(**_cfg(tiny_data, one)), log=lambda *a: None) == 0
    one_ep1 = _weights(one)
    r = _job(tmp, "two", {"config": _cfg(tiny_data, two)})
    assert r.returncode == 0, r.stdout + r.stderr
    two_ep1 = _weights(two)
    logs = r.stdout
    assert T.train(resume=True, out=one, overrides={"epochs": 2}, log=lambda *a: None) == 0
    r = _job(tmp, "two-resume", {"resume": str(two), "epochs": 2}, ranks=1)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(tmp=tmp, one=one, two=two, one_ep1=one_ep1, two_ep1=two_ep1, logs=logs, resume_logs=r.stdout)


def test_two_ranks_match_one_process(runs):
    (wa, ia), (wb, ib) = runs["one_ep1"], runs["two_ep1"]
    assert ia["step"] == ib["step"] == 6
    print("max |difference| after 6 steps:", _assert_close(wa, wb))
    assert "data parallel: 2 ranks, 4 images of each batch per rank" in runs["logs"]


def test_two_ranks_match_one_process_on_emu(tiny_data, tmp_path):
    """The same on our kernels (emu): the gradients are the extension's arrays, averaged on the host."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert T.train(T.default_config(**_cfg(tiny_data, one, backend="emu")), log=lambda *a: None) == 0
    r = _job(tmp_path, "two", {"config": _cfg(tiny_data, two, backend="emu")})
    assert r.returncode == 0, r.stdout + r.stderr
    print("emu: max |difference| after 6 steps:", _assert_close(_weights(one)[0], _weights(two)[0]))


def test_rank_zero_alone_writes_and_prints(runs):
    two = runs["two"]
    assert sorted(p.name for p in two.iterdir()) == sorted([rf.CHECKPOINT, rf.METRICS, rf.CONFIG, rf.CURVES])
    recs = [json.loads(l) for l in (two / rf.METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]          # one record per epoch, not one per rank
    assert runs["logs"].count("epoch 1/1: train loss") == 1
    cfg = json.loads((two / rf.CONFIG).read_text())
    assert cfg["ranks"] == 1 and cfg["batch_size"] == 8   # rewritten by the one-process resume


def test_resume_from_two_ranks_on_one(runs):
    assert "resume: ranks 2 -> 1" in runs["resume_logs"]
    wa, ia = _weights(runs["one"])
    wb, ib = _weights(runs["two"])
    assert ia["step"] == ib["step"] == 12
    print("max |difference| after 12 steps:", _assert_close(wa, wb))
    ra = [json.loads(l) for l in (runs["one"] / rf.METRICS).read_text().splitlines()]
    rb = [json.loads(l) for l in (runs["two"] / rf.METRICS).read_text().splitlines()]
    for a, b in zip(ra, rb):  # the same validation counts (one of the 12 images can differ on a near-tie)
        assert abs(a["val_top1_err"] - b["val_top1_err"]) <= 1 / 12 and a["train_loss"] == pytest.approx(
            b["train_loss"], abs=1e-5)
        # the training error counts every rank's hits over the whole epoch (48 images)
        assert abs(a["train_top1_err"] - b["train_top1_err"]) <= 1 / 48


def test_negative_control_misaligned_dropout_masks_are_caught(runs, tiny_data):
    """The tolerance is meaningful: two ranks that both draw the masks of rows 0..3 (rank 1 should draw
    rows 4..7's) end far outside it."""
    out = runs["tmp"] / "misaligned"
    r = _job(runs["tmp"], "misaligned", {"config": _cfg(tiny_data, out), "misalign_dropout": True})
    assert r.returncode == 0, r.stdout + r.stderr
    base, wrong = runs["one_ep1"][0], _weights(out)[0]
    worst = max(float(np.max(np.abs(base[k] - wrong[k]))) for k in base)
    print("misaligned masks: max |difference|", worst)
    assert worst > 100 * ATOL, worst


def test_ranks_with_different_configurations_are_refused(tiny_data, tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"config": _cfg(tiny_data, tmp_path / "r", lr=0.01)}))
    b.write_text(json.dumps({"config": _cfg(tiny_data, tmp_path / "r", lr=0.02)}))
    script = str(HERE / "mpi_train.py")
    t0 = time.monotonic()
    r = subprocess.run([MPIEXEC, "-n", "1", sys.executable, script, str(a), ":", "-n", "1", sys.executable, script,
                        str(b)], capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode != 0
    assert "different configurations" in r.stderr and "lr: 0.01 on rank 0, 0.02 on rank 1" in r.stderr, r.stderr
    assert "rank 0 of 2" in r.stderr or "rank 1 of 2" in r.stderr
    assert not (tmp_path / "r").exists()     # nothing written
    assert time.monotonic() - t0 < 60


def test_ranks_running_different_code_are_refused(tiny_data, tmp_path):
    """Rank 1 imports a copy of the package with one line changed: refused at start-up, nothing written."""
    import shutil

    import alexnet_cuda
    pkg = Path(alexnet_cuda.__file__).parent
    copy = tmp_path / "other"
    shutil.copytree(pkg, copy / "alexnet_cuda", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    with open(copy / "alexnet_cuda" / "schedule.py", "a") as f:
        f.write("# changed\n")
    job = tmp_path / "j.json"
    job.write_text(json.dumps({"config": _cfg(tiny_data, tmp_path / "r")}))
    script = str(HERE / "mpi_train.py")
    r = subprocess.run([MPIEXEC, "-n", "1", sys.executable, script, str(job), ":", "-n", "1", "-env", "PYTHONPATH",
                        str(copy), sys.executable, script, str(job)], capture_output=True, text=True, timeout=120,
                       env=_env())
    assert r.returncode != 0
    assert "different code versions" in r.stderr and "sources" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()


def test_a_rank_that_raises_ends_the_job_naming_the_rank(tiny_data, tmp_path):
    t0 = time.monotonic()
    r = _job(tmp_path, "fail", {"config": _cfg(tiny_data, tmp_path / "r", epochs=100), "fail": [1, 8]}, timeout=120)
    assert r.returncode != 0
    assert "rank 1 of 2: RuntimeError: injected failure at step 8" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
    tensors, info = rf.load_checkpoint(tmp_path / "r" / rf.CHECKPOINT)   # epoch 1's checkpoint, intact
    assert info["epoch"] == 1


def _rank_pid(marker, rank):
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes()
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and b"mpi_train.py" in cmdline and f"PMI_RANK={rank}".encode() in env:
            return int(p.name)
    return None


def test_a_killed_rank_ends_the_job_within_60_s(tiny_data, tmp_path):
    out = tmp_path / "killed"
    job = tmp_path / "long.json"
    job.write_text(json.dumps({"config": _cfg(tiny_data, out, epochs=1000)}))
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(HERE / "mpi_train.py"), str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not (out / rf.METRICS).exists():   # training is under way (an epoch has ended)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        pid = _rank_pid(str(job), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        rc = proc.wait(timeout=60)
        assert time.monotonic() - t0 < 60
        assert rc != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_ctrl_c_stops_every_rank_at_the_same_step_and_saves(tiny_data, tmp_path):
    """SIGINT to mpiexec reaches every rank; they agree on the step, rank 0 saves, all exit 130, and the
    run resumes."""
    out = tmp_path / "run"
    job = tmp_path / "long.json"
    job.write_text(json.dumps({"config": _cfg(tiny_data, out, epochs=1000)}))
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(HERE / "mpi_train.py"), str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (out / rf.METRICS).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert stdout.count("checkpoint saved to") == 1, stdout
    _, info = rf.load_checkpoint(out / rf.CHECKPOINT)
    r = _job(tmp_path, "resume", {"resume": str(out), "epochs": info["epoch"] + 1}, ranks=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rf.load_checkpoint(out / rf.CHECKPOINT)[1]["epoch"] == info["epoch"] + 1


def test_gpus_option_starts_the_ranks_with_mpiexec(raw_data, tmp_path):
    """`alexnet-cuda train --gpus 2` on a CPU backend: two processes through mpiexec, one run folder."""
    out = tmp_path / "g"
    env = _env()
    env["ALEXNET_CUDA_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "alexnet_cuda", "train", "--gpus", "2", "--backend", "numpy",
                        "--data", raw_data, "--out", str(out), "--epochs", "1", "--batch-size", "8"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "starting 2 ranks" in r.stdout and "data parallel: 2 ranks" in r.stdout
    assert r.stdout.count("epoch 1/1: train loss") == 1
    assert json.loads((out / rf.CONFIG).read_text())["ranks"] == 2
