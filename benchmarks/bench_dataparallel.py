"""The data-parallel path on one GPU: what it costs at N=1, and NCCL's all-reduce of the whole gradient.

* The full model's training step at batch 128 (FP32), plain and through the data-parallel path
  (alexnet_cuda.distributed.GradientAverager over a NCCL communicator of one rank: each layer's
  gradients all-reduced in place on the averager's stream as the backward pass produces them, then
  scaled, the compute stream waiting for it before the update). The difference is the path's cost.
* ncclAllReduce of 61 M float32 (the whole gradient, 244 MB) in one call, at N=1. With one rank NCCL
  copies locally, so this is a floor, not a network number; the results' projection for 8 GPUs and
  several nodes uses published bus bandwidths.

    python benchmarks/bench_dataparallel.py [--steps 20] [--warmup 5]

Writes benchmarks/results/bench_dataparallel.json and .md (card, driver, date, commit). Without a
usable GPU it prints why and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def step_ms(model, x, y, steps, warmup, average):
    be = model.backend
    for _ in range(warmup):
        model.train_step(x, y, 0.01, average=average)
    be.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        model.train_step(x, y, 0.01, average=average)
    be.synchronize()
    return (time.perf_counter() - t) / steps * 1e3


def allreduce_ms(n, iters):
    import cupy
    from cupy.cuda import nccl

    from common import time_cuda
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    buf = cupy.ones(n, dtype=cupy.float32)
    stream = cupy.cuda.get_current_stream()
    return time_cuda(lambda: comm.allReduce(buf.data.ptr, buf.data.ptr, n, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                                            stream.ptr), iters=iters)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)

    from common import require_gpu, write_results
    require_gpu("bench_dataparallel")
    from alexnet_cuda import AlexNet, get_backend
    from alexnet_cuda.distributed import GradientAverager, World

    be = get_backend("cuda")
    model = AlexNet(num_classes=1000, backend=be, seed=0)
    rng = np.random.default_rng(0)
    x = be.asarray((rng.standard_normal((args.batch_size, 3, 227, 227)) * 50).astype(np.float32))
    y = be.asarray(rng.integers(0, 1000, args.batch_size), dtype=np.int64)
    plain = step_ms(model, x, y, args.steps, args.warmup, None)
    dp = step_ms(model, x, y, args.steps, args.warmup, GradientAverager(World(), be))
    n = model.num_parameters()
    ar = allreduce_ms(n, 20)
    rows = [{"what": "training step, plain", "ms": plain},
            {"what": "training step, data-parallel path at N=1 (NCCL, 1 rank)", "ms": dp},
            {"what": f"ncclAllReduce of {n / 1e6:.2f} M float32 at N=1 (local copy)", "ms": ar,
             "GB/s": 4 * n / ar / 1e6}]
    md = write_results("bench_dataparallel", rows, ["what", "ms", "GB/s"],
                       title="Data-parallel path on one GPU",
                       notes=[f"Full model, batch {args.batch_size}, FP32; {args.warmup} warm-up, {args.steps} timed "
                              f"steps. Cost of the path at N=1: {dp - plain:+.2f} ms per step "
                              f"({(dp / plain - 1) * 100:+.1f}%)."])
    print(md)


if __name__ == "__main__":
    main()
