"""End-to-end training speed: one full training step (forward, backward, SGD update) of the
full model (the paper's two-tower AlexNet, 227x227, 1000 classes) at batch 128, on our cuda
backend and on the same network in PyTorch, in one run on one card.

PyTorch side: float32, TF32 off (torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False), cudnn.benchmark = True; the same layers
(groups=2 in conv2/4/5, LRN with the paper's alpha (PyTorch divides alpha by size, so it
gets alpha*size), max-pool 3/2, dropout 0.5 on fc6/fc7), the same initial weights, SGD
with momentum 0.9 and weight decay 5e-4 on weights only. Both sides read the loss back
every step (as the trainer does) and keep the batch on the device (no host copies timed).

    python benchmarks/bench_train.py [--steps 20] [--warmup 5] [--batch-size 128]

Writes benchmarks/results/bench_train.json and .md (card, driver, date, commit): images/s
of both and the ratio ours/PyTorch. Without a usable GPU it prints why and exits with
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


def bench_ours(x, y, steps, warmup, lr):
    from alexnet_cuda import AlexNet, get_backend
    be = get_backend("cuda")
    model = AlexNet(num_classes=1000, backend=be, seed=0)
    xd, yd = be.asarray(x), be.asarray(y, dtype=np.int64)
    for _ in range(warmup):
        model.train_step(xd, yd, lr)
    be.synchronize()
    t = time.perf_counter()
    losses = [model.train_step(xd, yd, lr) for _ in range(steps)]
    be.synchronize()
    dt = time.perf_counter() - t
    return x.shape[0] * steps / dt, dt / steps * 1e3, losses


def bench_torch(state, x, y, steps, warmup, lr):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    net = torch_alexnet(state, 1000, dev).train()
    decay = [p for n, p in net.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)

    from common import require_gpu, write_results
    require_gpu("bench_train")

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.batch_size, 3, 227, 227)) * 50).astype(np.float32)
    y = rng.integers(0, 1000, args.batch_size).astype(np.int64)

    ours_ips, ours_ms, ours_losses = bench_ours(x, y, args.steps, args.warmup, args.lr)
    rows = [{"impl": "alexnet-cuda (ours)", "ms_per_step": ours_ms, "images_per_sec": ours_ips}]
    notes = [f"Full model (60.97 M parameters), batch {args.batch_size}, 227x227, float32; "
             f"{args.warmup} warm-up steps, {args.steps} timed; loss read back every step."]
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch cannot see the GPU")
    except ImportError as e:
        notes.append(f"PyTorch not measured: {e}.")
        print(f"bench_train: PyTorch not measured ({e})")
    else:
        from alexnet_cuda import AlexNet
        state = AlexNet(num_classes=1000, backend="numpy", seed=0).state_dict()
        t_ips, t_ms, t_losses, tv = bench_torch(state, x, y, args.steps, args.warmup, args.lr)
        rows.insert(0, {"impl": f"PyTorch {tv} (cuDNN, TF32 off, benchmark on)", "ms_per_step": t_ms,
                        "images_per_sec": t_ips})
        for r in rows:
            r["ratio_vs_pytorch"] = r["images_per_sec"] / t_ips
        notes.append(f"First losses: ours {ours_losses[0]:.4f}, PyTorch {t_losses[0]:.4f} (same init weights; "
                     "dropout masks differ).")
    cols = ["impl", "ms_per_step", "images_per_sec"] + (["ratio_vs_pytorch"] if "ratio_vs_pytorch" in rows[0]
                                                         else [])
    md = write_results("bench_train", rows, cols, title="End-to-end training step (batch 128, full model)",
                       notes=notes)
    print(md)
    print(per_layer_table(args.batch_size))
    return 0


def per_layer_table(batch_size):
    """The table of `alexnet-cuda time` (alexnet_cuda.timing): each layer alone, ours and PyTorch's;
    written to results/bench_train_layers.md."""
    from alexnet_cuda import AlexNet, get_backend
    from alexnet_cuda.timing import format_table, time_step, time_torch_layers

    from common import RESULTS, card_info, commit
    model = AlexNet(num_classes=1000, backend=get_backend("cuda"), seed=0)
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
    (RESULTS / "bench_train_layers.md").write_text(
        f"# Each layer of a training step alone (batch {batch_size}, full model, FP32)\n\nCard: {meta['card']} "
        f"(driver {meta['driver']}), commit {commit()}; `alexnet-cuda time` prints the same table.\n\n"
        f"```\n{table}\n```\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
