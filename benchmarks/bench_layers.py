"""Layer kernels at AlexNet's shapes, batch 128: our cuda backend (every numbered version) vs
PyTorch/cuDNN on the same card, in one run.

    python benchmarks/bench_layers.py [--iters 50] [--warmup 5] [--batch-size 128] [--only lrn,maxpool]

Each row: median milliseconds (CUDA events), achieved GB/s counting the bytes the op must
move at least once (listed per op below), that as a percentage of the measured
device-to-device copy bandwidth (benchmarks/common.measured_copy_bandwidth_gbs), and the
speed relative to PyTorch (PyTorch ms / our ms: >= 1 means no slower). These ops are
memory-bound; the aim is >= 80% of the copy bandwidth and >= 1x PyTorch.

Minimal bytes per element (float32 = 4, mask = 1):
  relu and tanh fwd 8, bwd 12 | lrn fwd 12 (x; y, scale), bwd 20 (dy, x, y, scale; dx)
  maxpool fwd 4*in + 4*out, bwd 8*in + 4*out (x, dx; dy) | dropout fwd 9 (x; y, mask), bwd 9
  softmax xent 8 per logit (logits; dlogits) | sgd 20 per parameter (w, dw, v; w, v)
  top-5 4 per logit.
  ReLU backward folded in (the model's relu5 -> pool5, relu6/relu7 -> dropout): maxpool bwd + relu as
  maxpool bwd (x is the ReLU's output); dropout bwd + relu 13 (dy, mask, relu_y; dx). "ours separate"
  is the op then relu_backward (what the model ran before the fold), PyTorch its backward then
  threshold_backward.
PyTorch equivalents: torch.relu / threshold_backward; torch.tanh / tanh_backward; F.local_response_norm with alpha*size
(PyTorch divides alpha by size; the paper does not); F.max_pool2d(3, 2) and its autograd
backward; aten.native_dropout and native_dropout_backward; F.cross_entropy forward+backward;
torch.optim.SGD(momentum=0.9, weight_decay=5e-4 on weights, foreach=True, and fused=True when
this torch has it) over every AlexNet parameter (PyTorch's rule applies lr after momentum,
the traffic is the same); torch.topk(5) + compare + sum.

Our softmax_cross_entropy and topk_correct scan the labels on the device first and copy one
int back (so a bad label raises before anything is written): their times include that
launch and the stream synchronization.

Writes benchmarks/results/bench_layers.json and .md (card, driver, date, commit). Without a
usable GPU it prints why and exits with status 2; without torch it measures ours only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

# AlexNet's parameter shapes (two towers as groups=2), for the SGD step.
ALEXNET_PARAMS = [
    ("conv1.weight", (96, 3, 11, 11)), ("conv1.bias", (96,)),
    ("conv2.weight", (256, 48, 5, 5)), ("conv2.bias", (256,)),
    ("conv3.weight", (384, 256, 3, 3)), ("conv3.bias", (384,)),
    ("conv4.weight", (384, 192, 3, 3)), ("conv4.bias", (384,)),
    ("conv5.weight", (256, 192, 3, 3)), ("conv5.bias", (256,)),
    ("fc6.weight", (4096, 9216)), ("fc6.bias", (4096,)),
    ("fc7.weight", (4096, 4096)), ("fc7.bias", (4096,)),
    ("fc8.weight", (1000, 4096)), ("fc8.bias", (1000,)),
]


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated op families (relu,tanh,lrn,maxpool,dropout,softmax,sgd,topk)")
    args = ap.parse_args(argv)
    common.require_gpu("bench_layers.py")

    import cupy

    from alexnet_cuda import get_backend

    be = get_backend("cuda")
    torch = torch_or_none()
    F = None
    if torch is not None:
        import torch.nn.functional as F
        torch.backends.cudnn.benchmark = True
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    N = args.batch_size
    copy_bw = common.measured_copy_bandwidth_gbs()
    rows = []

    def t_ours(fn):
        return common.time_cuda(fn, warmup=args.warmup, iters=args.iters)

    def t_torch(fn):
        return common.time_torch(fn, warmup=args.warmup, iters=args.iters)

    def add(op, shape, nbytes, ours, torch_fn):
        """ours: {label: callable}; torch_fn: callable or None."""
        tms = t_torch(torch_fn) if (torch is not None and torch_fn is not None) else None
        for label, fn in ours.items():
            ms = t_ours(fn)
            gbs = nbytes / (ms * 1e-3) / 1e9
            rows.append({"op": op, "shape": shape, "impl": label, "ms": ms, "GB/s": gbs,
                         "% copy BW": 100 * gbs / copy_bw,
                         "vs PyTorch": (tms / ms) if tms else "n/a"})
            print(f"{op:28s} {shape:18s} {label:12s} {ms:8.4f} ms {gbs:8.1f} GB/s", flush=True)
        if tms is not None:
            gbs = nbytes / (tms * 1e-3) / 1e9
            rows.append({"op": op, "shape": shape, "impl": "PyTorch", "ms": tms, "GB/s": gbs,
                         "% copy BW": 100 * gbs / copy_bw, "vs PyTorch": 1.0})
            print(f"{op:28s} {shape:18s} {'PyTorch':12s} {tms:8.4f} ms {gbs:8.1f} GB/s", flush=True)

    def versions(op):
        return [v for v in be.versions(op)]

    def shp(s):
        return "x".join(str(d) for d in s)

    def tt(a):  # zero-copy torch view of a cupy array
        return torch.as_tensor(a, device="cuda")

    rnd = cupy.random.default_rng(0)

    def randn(shape, scale=1.0):
        return (rnd.standard_normal(shape, dtype=cupy.float32) * scale).astype(cupy.float32)

    # ---- relu, tanh ---------------------------------------------------------------------
    activations = {"relu": (lambda t: torch.relu(t), lambda g, t: torch.ops.aten.threshold_backward(g, t, 0)),
                   "tanh": (lambda t: torch.tanh(t), lambda g, t: torch.ops.aten.tanh_backward(g, t))}
    for act, (t_fwd, t_bwd) in activations.items():
        if only and act not in only:
            continue
        s = (N, 96, 55, 55)
        x, dy = randn(s), randn(s)
        fwd, bwd = getattr(be, f"{act}_forward"), getattr(be, f"{act}_backward")
        y = fwd(x)
        n = x.size
        add(f"{act}_forward", shp(s), 8 * n, {f"ours v{v}": (lambda v=v: fwd(x, version=v))
                                               for v in versions(f"{act}_forward")},
            (lambda: t_fwd(tt(x))) if torch else None)
        add(f"{act}_backward", shp(s), 12 * n, {f"ours v{v}": (lambda v=v: bwd(dy, y, version=v))
                                                for v in versions(f"{act}_backward")},
            (lambda: t_bwd(tt(dy), tt(y))) if torch else None)

    # ---- LRN ----------------------------------------------------------------------------
    if not only or "lrn" in only:
        for s in [(N, 96, 55, 55), (N, 256, 27, 27)]:
            x = cupy.maximum(randn(s, 3.0), 0)
            dy = randn(s)
            y, scale = be.lrn_forward(x)
            n = x.size
            tfwd = tbwd = None
            if torch:
                tx = tt(x).clone().requires_grad_(True)
                ty = F.local_response_norm(tx, 5, alpha=1e-4 * 5, beta=0.75, k=2.0)
                tdy = tt(dy)
                tfwd = lambda tx=tx: F.local_response_norm(tx.detach(), 5, alpha=1e-4 * 5, beta=0.75, k=2.0)  # noqa: E731
                tbwd = lambda ty=ty, tx=tx, tdy=tdy: torch.autograd.grad(ty, tx, tdy, retain_graph=True)  # noqa: E731
            add("lrn_forward", shp(s), 12 * n,
                {f"ours v{v}": (lambda v=v, x=x: be.lrn_forward(x, version=v)) for v in versions("lrn_forward")}, tfwd)
            add("lrn_backward", shp(s), 20 * n,
                {f"ours v{v}": (lambda v=v, x=x, y=y, scale=scale, dy=dy: be.lrn_backward(dy, x, y, scale, version=v))
                 for v in versions("lrn_backward")}, tbwd)

    # ---- max pooling ----------------------------------------------------------------------
    if not only or "maxpool" in only:
        for s in [(N, 96, 55, 55), (N, 256, 27, 27), (N, 256, 13, 13)]:
            x = randn(s)
            y = be.maxpool_forward(x)
            dy = randn(y.shape)
            nin, nout = x.size, y.size
            tfwd = tbwd = None
            if torch:
                tx = tt(x).clone().requires_grad_(True)
                ty = F.max_pool2d(tx, 3, 2)
                tdy = tt(dy)
                tfwd = lambda tx=tx: F.max_pool2d(tx.detach(), 3, 2)  # noqa: E731
                tbwd = lambda ty=ty, tx=tx, tdy=tdy: torch.autograd.grad(ty, tx, tdy, retain_graph=True)  # noqa: E731
            add("maxpool_forward 3/2", shp(s), 4 * nin + 4 * nout,
                {f"ours v{v}": (lambda v=v, x=x: be.maxpool_forward(x, version=v)) for v in versions("maxpool_forward")},
                tfwd)
            add("maxpool_backward 3/2", shp(s), 8 * nin + 4 * nout,
                {f"ours v{v}": (lambda v=v, x=x, y=y, dy=dy: be.maxpool_backward(dy, x, y, version=v))
                 for v in versions("maxpool_backward")}, tbwd)
        s = (N, 256, 13, 13)  # pool5, after relu5
        x = be.relu_forward(randn(s))
        y = be.maxpool_forward(x)
        dy = randn(y.shape)
        ours = {f"ours v{v}": (lambda v=v: be.maxpool_backward(dy, x, y, relu_input=True, version=v))
                for v in versions("maxpool_backward")}
        ours["ours separate"] = lambda: be.relu_backward(be.maxpool_backward(dy, x, y), x)
        tbwd = None
        if torch:
            tx = tt(x).clone().requires_grad_(True)
            ty, tdy = F.max_pool2d(tx, 3, 2), tt(dy)
            tbwd = lambda: torch.ops.aten.threshold_backward(  # noqa: E731
                torch.autograd.grad(ty, tx, tdy, retain_graph=True)[0], tx.detach(), 0)
        add("maxpool_backward + relu", shp(s), 8 * x.size + 4 * y.size, ours, tbwd)

    # ---- dropout --------------------------------------------------------------------------
    if not only or "dropout" in only:
        for s in [(N, 4096), (N, 96, 55, 55)]:  # fc6/fc7 (the paper's use); a large one for bandwidth
            x, dy = randn(s), randn(s)
            _, mask = be.dropout_forward(x, p=0.5, seed=1)
            n = x.size
            tfwd = tbwd = None
            if torch:
                tx = tt(x)
                tmask = torch.ops.aten.native_dropout(tx, 0.5, True)[1]
                tdy = tt(dy)
                tfwd = lambda tx=tx: torch.ops.aten.native_dropout(tx, 0.5, True)  # noqa: E731
                tbwd = lambda tdy=tdy, tmask=tmask: torch.ops.aten.native_dropout_backward(tdy, tmask, 2.0)  # noqa: E731
            step = iter(range(1 << 62))
            add("dropout_forward p=0.5", shp(s), 9 * n,
                {f"ours v{v}": (lambda v=v, x=x: be.dropout_forward(x, p=0.5, seed=1, offset=next(step), version=v))
                 for v in versions("dropout_forward")}, tfwd)
            add("dropout_backward p=0.5", shp(s), 9 * n,
                {f"ours v{v}": (lambda v=v, dy=dy, mask=mask: be.dropout_backward(dy, mask, p=0.5, version=v))
                 for v in versions("dropout_backward")}, tbwd)
        s = (N, 4096)  # drop6/drop7, after relu6/relu7
        x, dy = be.relu_forward(randn(s)), randn(s)
        _, mask = be.dropout_forward(x, p=0.5, seed=1)
        ours = {f"ours v{v}": (lambda v=v: be.dropout_backward(dy, mask, p=0.5, relu_y=x, version=v))
                for v in versions("dropout_backward")}
        ours["ours separate"] = lambda: be.relu_backward(be.dropout_backward(dy, mask, p=0.5), x)
        tbwd = None
        if torch:
            tx, tdy = tt(x), tt(dy)
            tmask = torch.ops.aten.native_dropout(tx, 0.5, True)[1]
            tbwd = lambda: torch.ops.aten.threshold_backward(  # noqa: E731
                torch.ops.aten.native_dropout_backward(tdy, tmask, 2.0), tx, 0)
        add("dropout_backward + relu", shp(s), 13 * x.size, ours, tbwd)

    # ---- softmax cross-entropy ----------------------------------------------------------------
    if not only or "softmax" in only:
        s = (N, 1000)
        logits = randn(s, 3.0)
        labels = cupy.asarray(np.random.default_rng(0).integers(0, 1000, N).astype(np.int64))
        tfn = None
        if torch:
            tl = tt(logits).clone().requires_grad_(True)
            tlab = tt(labels)
            tfn = lambda: torch.autograd.grad(F.cross_entropy(tl, tlab), tl)  # noqa: E731
        add("softmax_cross_entropy", shp(s), 8 * logits.size,
            {f"ours v{v}": (lambda v=v: be.softmax_cross_entropy(logits, labels, version=v))
             for v in versions("softmax_cross_entropy")}, tfn)

    # ---- top-5 --------------------------------------------------------------------------------
    if not only or "topk" in only:
        s = (N, 1000)
        logits = randn(s)
        labels = cupy.asarray(np.random.default_rng(1).integers(0, 1000, N).astype(np.int64))
        tfn = None
        if torch:
            tl, tlab = tt(logits), tt(labels)
            tfn = lambda: (tl.topk(5, dim=1).indices == tlab[:, None]).any(dim=1).sum()  # noqa: E731
        add("topk_correct k=5", shp(s), 4 * logits.size,
            {f"ours v{v}": (lambda v=v: be.topk_correct(logits, labels, 5, version=v))
             for v in versions("topk_correct")}, tfn)

    # ---- SGD ----------------------------------------------------------------------------------
    if not only or "sgd" in only:
        ws = [randn(sh, 0.01) for _, sh in ALEXNET_PARAMS]
        gs = [randn(sh, 0.01) for _, sh in ALEXNET_PARAMS]
        vs = [cupy.zeros(sh, cupy.float32) for _, sh in ALEXNET_PARAMS]
        decays = [5e-4 if name.endswith("weight") else 0.0 for name, _ in ALEXNET_PARAMS]
        nparam = sum(w.size for w in ws)
        ours = {"ours multi": lambda: be.sgd_update_multi(ws, gs, vs, lr=1e-4, momentum=0.9, weight_decays=decays)}
        for v in versions("sgd_update"):
            ours[f"ours v{v} x16"] = (lambda v=v: [be.sgd_update(w, g, m, lr=1e-4, weight_decay=wd, version=v)
                                                   for w, g, m, wd in zip(ws, gs, vs, decays)])
        tstep = None
        tstep_fused = None
        if torch:
            tparams = [tt(w.copy()).requires_grad_(True) for w in ws]
            for p, g in zip(tparams, gs):
                p.grad = tt(g.copy())
            def groups():  # fresh dicts: an optimizer fills its defaults into the dicts it is given
                return [{"params": [p for p, d in zip(tparams, decays) if d], "weight_decay": 5e-4},
                        {"params": [p for p, d in zip(tparams, decays) if not d], "weight_decay": 0.0}]
            opt = torch.optim.SGD(groups(), lr=1e-4, momentum=0.9, foreach=True)
            tstep = opt.step
            try:
                opt_f = torch.optim.SGD(groups(), lr=1e-4, momentum=0.9, fused=True)
                opt_f.step()
                tstep_fused = opt_f.step
            except (TypeError, RuntimeError, ValueError):
                tstep_fused = None
        add("sgd step (all AlexNet params)", f"{nparam / 1e6:.2f}M", 20 * nparam, ours, tstep)
        if tstep_fused is not None:
            ms = t_torch(tstep_fused)
            gbs = 20 * nparam / (ms * 1e-3) / 1e9
            rows.append({"op": "sgd step (all AlexNet params)", "shape": f"{nparam / 1e6:.2f}M",
                         "impl": "PyTorch fused", "ms": ms, "GB/s": gbs, "% copy BW": 100 * gbs / copy_bw,
                         "vs PyTorch": "n/a"})
            print(f"{'sgd fused':28s} {'':18s} {'PyTorch fused':12s} {ms:8.4f} ms {gbs:8.1f} GB/s", flush=True)

    notes = [f"Batch {N}. Measured device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write).",
             "GB/s counts the minimal bytes of each op (see benchmarks/bench_layers.py); "
             "'vs PyTorch' = PyTorch ms / our ms (>= 1: ours is no slower).",
             "Our softmax_cross_entropy and topk_correct include the on-device label check and one stream sync.",
             "PyTorch not measured (torch with CUDA not installed)." if torch is None else
             f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}."]
    md = common.write_results("bench_layers", rows, ["op", "shape", "impl", "ms", "GB/s", "% copy BW", "vs PyTorch"],
                              title="Layer kernels vs PyTorch (AlexNet shapes)", notes=notes)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
