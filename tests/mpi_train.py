"""Run by tests/test_distributed.py under mpiexec: one training run (or resume) of the configuration in the
JSON file argv[1], through the command line's error handling (alexnet_cuda.cli._run), so that a
failing rank ends the job as `alexnet-cuda train` does.

    mpiexec -n 2 python tests/mpi_train.py CONFIG.json
JSON: {"config": {...default_config keys...}} or {"resume": RUN_FOLDER, "epochs": N}; with
"misalign_dropout": true every rank draws the dropout masks of rows 0.. (a deliberately wrong
mapping, the tests' negative control); with "fail": [RANK, STEP] that rank raises RuntimeError at
that training step.
"""
import json
import sys

from alexnet_cuda import cli, distributed
from alexnet_cuda import train as T
from alexnet_cuda.data import TrainLoader
from alexnet_cuda.model import AlexNet


def _fail_at(step):
    plain = AlexNet.train_step

    def train_step(self, *args, **kw):
        if self.step == step:
            raise RuntimeError(f"injected failure at step {step}")
        return plain(self, *args, **kw)
    AlexNet.train_step = train_step


def main(path):
    job = json.loads(open(path).read())
    if job.get("misalign_dropout"):
        TrainLoader.row0 = property(lambda self: 0)
    if job.get("fail") and distributed.world().rank == job["fail"][0]:
        _fail_at(job["fail"][1])

    def run(_args):
        if "resume" in job:
            return T.train(resume=True, out=job["resume"], overrides={"epochs": job["epochs"]}, log=print)
        return T.train(T.default_config(**job["config"]), log=print)

    return cli._run(run, None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
