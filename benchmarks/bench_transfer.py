"""Where the towers meet (alexnet_cuda/towers.py): the transfer kernels against cudaMemcpyPeerAsync, and a
training step of the full model with the towers on two devices against one.

Measured (a GPU is needed):
* at each meeting point of the full model at batch 128 (conv3's input, fc6's, fc7's, fc8's, the logits),
  transfer_forward (the receiving device reads the peer's tower output and writes it into its slice of
  the concatenated input), transfer_backward (reads the peer's gradient slice and adds the local one),
  and the fallback without peer access: cudaMemcpyPeerAsync of the same bytes into a staging buffer
  plus the local kernel;
* the full training step, one device against `--devices 0,1` (two cards) or, on a machine with one
  card, `--devices 0,0` (both towers on one card through the same exchange code; two-card numbers
  are then not measured and the results say so).

    python benchmarks/bench_transfer.py [--steps 10] [--batch-size 128]
    python benchmarks/bench_transfer.py --projection     # no GPU: the paper-projection only

Writes benchmarks/results/bench_transfer.json and .md (card, driver, date, commit). `--projection`
writes benchmarks/results/transfer_projection.md: the bytes each meeting point moves per step and the
time they would take at NVLink and PCIe bandwidth. That table is arithmetic on the model's shapes and
the links' published bandwidths, a projection, never a measurement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

# Published peak bandwidths per direction (vendor figures): NVLink 4 on an H100/H200 SXM board,
# 900 GB/s in total over 18 links, 450 GB/s each way; PCIe 5.0 x16, 64 GB/s each way.
LINKS = {"NVLink 4 (450 GB/s per direction)": 450e9, "PCIe 5.0 x16 (64 GB/s per direction)": 64e9}
MEASURED_STEP_MS = 42.7  # one H200, full model, batch 128 (benchmarks/results/device_check_h200.md, 2026-11-26)


def meeting_points(batch):
    """[(name, floats tower 0 sends forward, floats it sends backward)] of the full model (towers 2,
    width 1, 227x227, 1000 classes, LRN on); each tower sends as much as it receives, except the
    logits (tower 1 to tower 0 forward, back the other way)."""
    from alexnet_cuda.model import BASE_CHANNELS, feature_sizes

    s1, p1, p2, p5 = feature_sizes(227)
    half = {n: c // 2 for n, c in BASE_CHANNELS.items()}
    h = 5 // 2  # the LRN's half window: the halo each tower reads of its neighbour
    return [
        ("lrn1 halo (2 channels of conv1, 55x55)", batch * h * s1 * s1, 3 * batch * h * s1 * s1),
        ("lrn2 halo (2 channels of conv2, 27x27)", batch * h * p1 * p1, 3 * batch * h * p1 * p1),
        ("conv3 input (128 maps, 13x13)", batch * half["conv2"] * p2 * p2, batch * half["conv2"] * p2 * p2),
        ("fc6 input (128 maps, 6x6)", batch * half["conv5"] * p5 * p5, batch * half["conv5"] * p5 * p5),
        ("fc7 input (2048 features)", batch * half["fc6"], batch * half["fc6"]),
        ("fc8 input (2048 features)", batch * half["fc7"], batch * half["fc7"]),
        ("logits (500 classes, one way)", batch * 500, batch * 500),
    ]


def projection(batch):
    """The projection rows and the markdown note (no GPU)."""
    rows, total = [], 0
    for name, fwd, bwd in meeting_points(batch):
        b = 4 * (fwd + bwd)
        total += b
        row = {"meeting point": name, "MB per step per direction": b / 1e6}
        row.update({f"ms at {k.split(' (')[0]}": b / bw * 1e3 for k, bw in LINKS.items()})
        rows.append(row)
    row = {"meeting point": "total", "MB per step per direction": total / 1e6}
    row.update({f"ms at {k.split(' (')[0]}": total / bw * 1e3 for k, bw in LINKS.items()})
    rows.append(row)
    notes = [f"A projection, not a measurement: float32 bytes each device sends per training step of the full "
             f"model at batch {batch} (forward and backward; the LRN halo is 2 channels forward and dy, y, scale "
             f"backward), divided by the links' published peak bandwidth per direction ("
             + "; ".join(LINKS) + "). Both directions run at once.",
             f"For scale: a whole step on one H200 measured {MEASURED_STEP_MS} ms (device_check_h200.md, "
             "2026-11-26). Two cards would each compute half of every layer (plus the duplicated dropout on "
             "fc6/fc7's outputs), so the exchange costs a fraction of a millisecond over NVLink and about "
             f"{total / 64e9 * 1e3:.1f} ms over PCIe, before any overlap with the towers' independent work."]
    return rows, notes


def bench_points(be, batch, peer):
    """Rows of kernel and peer-copy timings at each meeting point, the peer's arrays on device `peer`."""
    from common import time_cuda

    cp, rows = be.xp, []
    shapes = {"conv3 input": ((batch, 128, 13, 13), 256), "fc6 input": ((batch, 4608), 9216),
              "fc7/fc8 input": ((batch, 2048), 4096), "logits": ((batch, 500), 1000)}
    for name, (shape, cat) in shapes.items():
        with cp.cuda.Device(peer):
            src = cp.random.standard_normal(shape, dtype=cp.float32)
            grad = cp.random.standard_normal(shape[:1] + (cat,) + shape[2:], dtype=cp.float32)
        dst = cp.empty(shape[:1] + (cat,) + shape[2:], dtype=cp.float32)
        local = cp.empty_like(dst)
        staging = cp.empty(shape, dtype=cp.float32)
        mb = src.nbytes / 1e6
        for v in [0] + be.versions("transfer_forward"):
            ms = time_cuda(lambda: be.transfer_forward(src, dst, offset=0, version=v))
            rows.append({"meeting point": name, "op": f"transfer_forward v{v}", "MB": mb, "ms": ms,
                         "GB/s": mb / ms})
            ms = time_cuda(lambda: be.transfer_backward(grad, offset=0, channels=shape[1], local=local, version=v))
            rows.append({"meeting point": name, "op": f"transfer_backward v{v}", "MB": mb, "ms": ms,
                         "GB/s": mb / ms})

        def fallback():
            be.memcpy_peer(staging, 0, src, peer)
            be.transfer_forward(staging, dst, offset=0)
        ms = time_cuda(lambda: be.memcpy_peer(staging, 0, src, peer))
        rows.append({"meeting point": name, "op": "cudaMemcpyPeerAsync", "MB": mb, "ms": ms, "GB/s": mb / ms})
        ms = time_cuda(fallback)
        rows.append({"meeting point": name, "op": "fallback: peer copy + local kernel", "MB": mb, "ms": ms,
                     "GB/s": mb / ms})
    return rows


def bench_step(be, devices, batch, steps):
    """(ms per training step, loss) of the full model on `devices`."""
    from alexnet_cuda import AlexNet

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((batch, 3, 227, 227)) * 50).astype(np.float32)
    y = rng.integers(0, 1000, batch).astype(np.int64)
    model = AlexNet(num_classes=1000, backend=be, seed=0, devices=devices)
    for _ in range(2):
        model.train_step(x, y, 0.01)
    be.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = model.train_step(x, y, 0.01)
    be.synchronize()
    return (time.perf_counter() - t) / steps * 1e3, loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--projection", action="store_true", help="write the projection only (no GPU)")
    args = ap.parse_args(argv)
    from common import require_gpu, write_results

    rows, notes = projection(args.batch_size)
    cols = list(rows[0])
    md = write_results("transfer_projection", rows, cols, title="Two towers on two cards: transfer bytes per "
                       "step (a projection)", notes=notes)
    if args.projection:
        print(md)
        return 0
    require_gpu("bench_transfer")
    from alexnet_cuda import get_backend
    be = get_backend("cuda")
    two = be.device_count() >= 2
    devices = (0, 1) if two else (0, 0)
    if two:
        with be.use_device(0):
            be.enable_peer_access(1)
    rows = bench_points(be, args.batch_size, 1 if two else 0)
    for d in (None, devices):
        ms, loss = bench_step(be, d, args.batch_size, args.steps)
        rows.append({"meeting point": "training step", "op": f"devices {d or (0,)}", "MB": 0.0, "ms": ms,
                     "GB/s": 0.0})
    notes = [f"Full model, batch {args.batch_size}, float32. Peer arrays on device {1 if two else 0}; "
             f"transfer_backward adds a local gradient (12 bytes per element moved, 4 of them over the link)."]
    if not two:
        notes.append("One card here: the 'peer' is the same device and the step runs with --devices 0,0. "
                     "Two-card numbers were not measured.")
    print(write_results("bench_transfer", rows, ["meeting point", "op", "MB", "ms", "GB/s"],
                        title="Transfer kernels and the two-device step", notes=notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
