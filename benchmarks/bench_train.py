"""End-to-end training speed: one full training step (forward, backward, SGD update) of the
full model (the paper's two-tower AlexNet, 227x227, 1000 classes) at batch 128, on our cuda
backend and on the same network in PyTorch, in one run on one card.

`--precision fp32` (default): both sides float32, TF32 off (torch.backends.cuda.matmul.allow_tf32 =
False, torch.backends.cudnn.allow_tf32 = False); `tf32`: ours with --precision tf32, PyTorch with TF32
on; `bf16`: ours with --precision bf16 (BF16 storage and tensor-core products), PyTorch under
autocast(bfloat16), its mixed precision (FP32 weights and update, no loss scaling needed for BF16).
PyTorch runs twice, NCHW and channels_last, and the ratio is against the faster of the two.
cudnn.benchmark = True; the same layers
(groups=2 in conv2/4/5, LRN with the paper's alpha (PyTorch divides alpha by size, so it
gets alpha*size), max-pool 3/2, dropout 0.5 on fc6/fc7), the same initial weights, SGD
with momentum 0.9 and weight decay 5e-4 on weights only. Both sides read the loss back
every step (as the trainer does) and keep the batch on the device (no host copies timed).

    python benchmarks/bench_train.py [--precision fp32|tf32|bf16] [--steps 20] [--warmup 5] [--batch-size 128]

Writes benchmarks/results/bench_train.json and .md (bench_train_tf32 / bench_train_bf16 for the other
precisions; card, driver, date, commit): images/s of both and the ratio ours/PyTorch. Without a usable GPU it prints why and exits with
status 2; without torch it measures ours only and says PyTorch was not measured.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def torch_alexnet(state, num_classes, device):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
            self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
            self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
            self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
            self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
            self.fc6 = nn.Linear(9216, 4096)
            self.fc7 = nn.Linear(4096, 4096)
            self.fc8 = nn.Linear(4096, num_classes)
            self.lrn = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)
            self.pool = nn.MaxPool2d(3, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            r = torch.relu
            x = self.pool(self.lrn(r(self.conv1(x))))
            x = self.pool(self.lrn(r(self.conv2(x))))
            x = r(self.conv3(x))
            x = r(self.conv4(x))
            x = self.pool(r(self.conv5(x)))
            x = torch.flatten(x, 1)
            x = self.drop(r(self.fc6(x)))
            x = self.drop(r(self.fc7(x)))
            return self.fc8(x)

    net = Net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return net.to(device)


_CHOICES = {}  # (precision, batch size) -> the autotune choice, measured once per run of this script


def tuned_model(precision, batch_size):
    """Our full model on cuda with the 3x3 convolutions' algorithms chosen as `train` chooses them (autotune)."""
    from alexnet_cuda import AlexNet, autotune, get_backend
    model = AlexNet(num_classes=1000, backend=get_backend("cuda"), seed=0, precision=precision)
    if autotune.measures(model):
        key = (precision, batch_size)
        if key not in _CHOICES:
            choice, times = autotune.choose(model, batch_size)
            print(autotune.describe(choice, times))
            _CHOICES[key] = choice
        autotune.apply(model, _CHOICES[key])
    return model


def bench_ours(x, y, steps, warmup, lr, precision, sync_every=1):
    """(images/s, ms per step, losses, host ms) of our step; the loss read back every `sync_every` steps (1:
    after each, as PyTorch's loop here does with .item(); 20: `train`'s default on cuda). host ms: the
    median time the host spends queueing a step that reads nothing back (None when every step reads):
    when it is well below the ms per step, the GPU never waits for a launch, and capturing the step in
    a CUDA graph has no launch gaps to remove."""
    model = tuned_model(precision, x.shape[0])
    be = model.backend
    xd, yd = be.asarray(x), be.asarray(y, dtype=np.int64)
    for _ in range(warmup):
        model.train_step(xd, yd, lr)
    be.synchronize()
    t = time.perf_counter()
    losses, queued = [], []
    for i in range(steps):
        last = (i + 1) % sync_every == 0 or i + 1 == steps
        t_step = time.perf_counter()
        losses.append(model.train_step(xd, yd, lr, sync=last))
        if not last:
            queued.append(time.perf_counter() - t_step)
    be.synchronize()
    dt = time.perf_counter() - t
    losses = [float(be.to_numpy(v)) for v in losses]
    host_ms = float(np.median(queued)) * 1e3 if queued else None
    return x.shape[0] * steps / dt, dt / steps * 1e3, losses, host_ms


def bench_graph(x, y, steps, warmup, lr, precision):
    """(images/s, ms per step) of one sync-free step captured into a CUDA graph and launched `steps` times
    (the same batch and dropout masks each time: a timing of the launches, not training), or the error
    that stopped the capture (a synchronization inside the step would)."""
    from alexnet_cuda import get_backend
    be = get_backend("cuda")
    cp = be.xp
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        model = tuned_model(precision, x.shape[0])
        xd, yd = be.asarray(x), be.asarray(y, dtype=np.int64)
        for _ in range(warmup):
            model.train_step(xd, yd, lr, sync=False)
        stream.synchronize()
        stream.begin_capture()
        try:
            model.train_step(xd, yd, lr, sync=False)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            graph.launch(stream)
        stream.synchronize()
    dt = time.perf_counter() - t
    return x.shape[0] * steps / dt, dt / steps * 1e3


def bench_torch(state, x, y, steps, warmup, lr, precision, channels_last):
    import torch

    from alexnet_cuda.timing import torch_precision
    amp = torch_precision(precision, "cuda")
    dev = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = torch_alexnet(state, 1000, dev).to(memory_format=fmt).train()
    decay = [p for n, p in net.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x).to(dev).contiguous(memory_format=fmt), torch.from_numpy(y).to(dev)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = lossf(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    losses = [step() for _ in range(steps)]
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return x.shape[0] * steps / dt, dt / steps * 1e3, losses, torch.__version__


TORCH_SETTING = {"fp32": "float32, TF32 off", "tf32": "float32, TF32 on",
                 "bf16": "autocast(bfloat16), FP32 weights"}


def _with_torch(rows, x, y, args, ours_losses):
    """PyTorch's rows (NCHW and channels_last) before ours, every ratio against the faster; and a note."""
    from alexnet_cuda import AlexNet
    state = AlexNet(num_classes=1000, backend="numpy", seed=0).state_dict()
    theirs, first = [], None
    for cl in (False, True):
        ips, ms, losses, tv = bench_torch(state, x, y, args.steps, args.warmup, args.lr, args.precision, cl)
        theirs.append({"impl": f"PyTorch {tv} (cuDNN, {TORCH_SETTING[args.precision]}, "
                               f"{'channels_last' if cl else 'NCHW'}, benchmark on)", "ms_per_step": ms,
                       "images_per_sec": ips})
        first = first if first is not None else losses[0]
    best = max(r["images_per_sec"] for r in theirs)
    rows = theirs + rows
    for r in rows:
        r["ratio_vs_pytorch"] = r["images_per_sec"] / best
    return rows, (f"ratio_vs_pytorch: images/s over the faster PyTorch layout. First losses: ours "
                  f"{ours_losses[0]:.4f}, PyTorch {first:.4f} (same init weights; dropout masks differ).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    args = ap.parse_args(argv)

    from common import require_gpu, write_results
    require_gpu("bench_train")

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.batch_size, 3, 227, 227)) * 50).astype(np.float32)
    y = rng.integers(0, 1000, args.batch_size).astype(np.int64)

    ours_ips, ours_ms, ours_losses, _ = bench_ours(x, y, args.steps, args.warmup, args.lr, args.precision)
    rows = [{"impl": f"alexnet-cuda (ours, --precision {args.precision})", "ms_per_step": ours_ms,
             "images_per_sec": ours_ips}]
    ips20, ms20, _, host_ms = bench_ours(x, y, args.steps, args.warmup, args.lr, args.precision, sync_every=20)
    rows.append({"impl": f"alexnet-cuda (ours, --precision {args.precision}, loss read every 20 steps)",
                 "ms_per_step": ms20, "images_per_sec": ips20})
    try:
        ips_g, ms_g = bench_graph(x, y, args.steps, args.warmup, args.lr, args.precision)
    except Exception as e:  # noqa: BLE001 - the row says why there is no number
        print(f"bench_train: the CUDA graph of the step failed: {type(e).__name__}: {e}")
        rows.append({"impl": f"alexnet-cuda (ours, one step as a CUDA graph: failed, {type(e).__name__})",
                     "ms_per_step": float("nan"), "images_per_sec": float("nan")})
    else:
        rows.append({"impl": f"alexnet-cuda (ours, --precision {args.precision}, one step captured as a CUDA graph "
                             "and replayed)", "ms_per_step": ms_g, "images_per_sec": ips_g})
    notes = [f"Full model (60.97 M parameters), batch {args.batch_size}, 227x227, precision {args.precision} "
             f"({TORCH_SETTING[args.precision]} on PyTorch's side); {args.warmup} warm-up steps, {args.steps} timed; "
             "loss read back every step (and, in the last row, every 20 steps: `train --sync-every`'s cuda default).",
             "Our model's 3x3 convolutions use the algorithm `train --conv-algorithms auto` picks (timed at the "
             "start of each of our rows; the choice is printed in the log). The per-layer table below runs the "
             "implicit GEMM (`alexnet-cuda time` applies the choice)."]
    notes.append("The CUDA-graph row: one sync-free step captured on a stream of its own and launched "
                 f"{args.steps} times on the same batch (the same dropout masks and lr each time): the step's time "
                 "without any launch gap, against the row above it.")
    if host_ms is not None:
        notes.append(f"Host time to queue one step that reads nothing back (median): {host_ms:.2f} ms, against "
                     f"{ms20:.2f} ms per step: " + ("the GPU does not wait for the host, so a CUDA graph of the step "
                                                    "would have no launch gaps to remove." if host_ms < 0.5 * ms20
                                                    else "the host is close to the GPU's pace; a CUDA graph could pay."))
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch cannot see the GPU")
    except ImportError as e:
        notes.append(f"PyTorch not measured: {e}.")
        print(f"bench_train: PyTorch not measured ({e})")
    else:
        rows, note = _with_torch(rows, x, y, args, ours_losses)
        notes.append(note)
    cols = ["impl", "ms_per_step", "images_per_sec"] + (["ratio_vs_pytorch"] if "ratio_vs_pytorch" in rows[0]
                                                         else [])
    name = "bench_train" if args.precision == "fp32" else f"bench_train_{args.precision}"
    md = write_results(name, rows, cols, title=f"End-to-end training step (batch {args.batch_size}, full model, "
                       f"{args.precision})", notes=notes)
    print(md)
    print(per_layer_table(args.batch_size, args.precision))
    return 0


def per_layer_table(batch_size, precision="fp32"):
    """The table of `alexnet-cuda time` (alexnet_cuda.timing): each layer alone, ours and PyTorch's;
    written to results/bench_train_layers.md."""
    from alexnet_cuda import AlexNet, get_backend
    from alexnet_cuda.timing import format_table, time_step, time_torch_layers

    from common import RESULTS, card_info, commit
    model = AlexNet(num_classes=1000, backend=get_backend("cuda"), seed=0, precision=precision)
    rows = time_step(model, batch_size)
    note = None
    try:
        theirs = time_torch_layers(model, batch_size)
    except ImportError as e:
        note = f"PyTorch not timed: {e}"
    else:
        for r in rows:
            r["torch_ms"] = theirs.get((r["layer"], r["direction"]))
    table = format_table(rows, note)
    meta = card_info()
    name = "bench_train_layers" if precision == "fp32" else f"bench_train_layers_{precision}"
    (RESULTS / f"{name}.md").write_text(
        f"# Each layer of a training step alone (batch {batch_size}, full model, {precision})\n\nCard: {meta['card']} "
        f"(driver {meta['driver']}), commit {commit()}; `alexnet-cuda time` prints the same table.\n\n"
        f"```\n{table}\n```\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
