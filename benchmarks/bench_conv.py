"""AlexNet's five convolutions, batch 128: our kernels (every numbered version) vs cuDNN
through PyTorch, forward, backward-data and backward-filter, in one run on one card.

    python benchmarks/bench_conv.py [--iters 20] [--warmup 3] [--batch-size 128]
                                    [--versions 0,1,2,3] [--only conv1,conv3] [--v1-iters 3]
                                    [--precision fp32|tf32|bf16]
    python benchmarks/bench_conv.py --check      # correctness only, tiny sizes, no GPU needed

Shapes (the paper, two towers as groups=2; input 227x227):
  conv1 11x11 s4      3x227x227 -> 96x55x55
  conv2  5x5 p2 g2   96x27x27   -> 256x27x27
  conv3  3x3 p1     256x13x13   -> 384x13x13
  conv4  3x3 p1 g2  384x13x13   -> 384x13x13
  conv5  3x3 p1 g2  384x13x13   -> 256x13x13

Each row: median milliseconds (CUDA events), TFLOP/s with FLOPs = 2*N*K*P*Q*(C/groups)*R*S
for every direction, and "x cuDNN" = our time / cuDNN's time (<= 1 is as fast or faster;
the goal is <= 2 for every layer and direction and <= 1.5 for the sum). Our kernels are
called through the extension with preallocated outputs and workspace (the allocation is
not timed; cuDNN's output allocation through PyTorch's caching allocator is). The
backward-filter time includes the split-reduction's second pass (and, for version 3, the
zero-padded copy of x). The filter gradient has a version 3 (conv_wgrad.cu) that the other
directions do not: its rows are listed, the "sum" rows are of versions every direction has.
The bias gradient is listed separately (cuDNN's weight gradient does not compute it) and is
not in the sums.
Winograd (csrc/kernels/conv_winograd.cu, algorithm="winograd": F(4x4, 3x3), fp32) runs the forward
and data rows of the 3x3, stride-1 layers (conv3-5) as "ours winograd v0, v1, v2" (every version of
conv2d_forward_winograd; its workspace, the transformed tensors, preallocated like the others'); the
row "ours v0 + winograd" of the sums is version 0 with Winograd v0 in those rows (the time a step
would take with it). Its TFLOP/s counts the direct convolution's FLOPs, as cuDNN's do.
"max |err|" is our version-0 result against cuDNN's, relative to max |cuDNN result|.

cuDNN settings: torch.backends.cudnn.benchmark = True (it picks its fastest algorithm per
shape), cudnn.allow_tf32 = False and cuda.matmul.allow_tf32 = False (FP32 against FP32).
Backward pieces: torch.nn.grad.conv2d_input and conv2d_weight (aten.convolution_backward
with one output each).

--precision tf32: our tensor-core kernels (conv2d_forward_tc, conv_tc.cu) against cuDNN with
allow_tf32 = True; --precision bf16: ours on BF16 x, w, dy (FP32 out) against cuDNN on
bfloat16 tensors (BF16 out). The bias gradient sums the FP32 dy at every precision. Results
go to bench_conv_<precision>.json / .md.

Writes benchmarks/results/bench_conv.json and .md (card, driver, date, commit). Without a
usable GPU it prints why and exits with status 2 (never estimated); --check runs anywhere
(cuda when usable, else emu) and exits 1 on a mismatch.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

# name: (C, H, W, K, R, S, stride, padding, groups)
LAYERS = {
    "conv1": (3, 227, 227, 96, 11, 11, 4, 0, 1),
    "conv2": (96, 27, 27, 256, 5, 5, 1, 2, 2),
    "conv3": (256, 13, 13, 384, 3, 3, 1, 1, 1),
    "conv4": (384, 13, 13, 384, 3, 3, 1, 1, 2),
    "conv5": (384, 13, 13, 256, 3, 3, 1, 1, 2),
}
# --check: the same kernel/stride/padding/groups with channels / 8 and small images
CHECK_LAYERS = {
    "conv1": (3, 35, 35, 12, 11, 11, 4, 0, 1),
    "conv2": (12, 9, 9, 32, 5, 5, 1, 2, 2),
    "conv3": (32, 5, 5, 48, 3, 3, 1, 1, 1),
    "conv4": (48, 5, 5, 48, 3, 3, 1, 1, 2),
    "conv5": (48, 5, 5, 32, 3, 3, 1, 1, 2),
}
DIRECTIONS = ("forward", "data", "filter")


def out_size(H, W, R, S, st, pad):
    return (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1


def op_name(precision, direction="forward"):
    """The op whose numbered versions run in `direction` at `precision` (at fp32 the filter gradient has
    versions of its own; the tensor-core kernels share one count)."""
    if precision != "fp32":
        return f"conv2d_forward_{precision}"
    return "conv2d_backward_filter" if direction == "filter" else "conv2d_forward"


def flops(N, layer):
    C, H, W, K, R, S, st, pad, g = layer
    P, Q = out_size(H, W, R, S, st, pad)
    return 2.0 * N * K * P * Q * (C // g) * R * S


class OurConv:
    """Preallocated outputs and workspace; one callable per (direction, version)."""

    def __init__(self, be, x, w, b, dy, geo, precision="fp32"):
        from alexnet_cuda.precision import bf16_bits

        self.dy32, self.p = dy, precision
        if precision == "bf16":  # the kernels take BF16 operands as uint16 bit patterns
            x, w, dy = (bf16_bits(a) for a in (x, w, dy))
        self.be, self.m, self.x, self.w, self.b, self.dy, self.geo = be, be._mod, x, w, b, dy, geo
        xp = be.xp
        self.y = xp.empty(dy.shape, dtype=np.float32)
        self.dx = xp.empty(x.shape, dtype=np.float32)
        self.dw = xp.empty(w.shape, dtype=np.float32)
        self.db = xp.empty((w.shape[0],), dtype=np.float32)
        self.work = {}
        for v in [0] + be.versions(op_name(precision, "filter")):
            n = self.m.conv2d_backward_check(dy, x, w, version=v, precision=precision, **geo)["workspace"]
            self.work[v] = xp.empty(n, dtype=np.float32) if n else None
        self.wino_versions = winograd_versions(be, x, w, geo) if precision == "fp32" else []
        if self.wino_versions:  # one workspace for every Winograd direction and version (they run one at a time)
            n = max(self.m.conv2d_winograd_check(x, w, version=v, direction=d, **geo)["workspace"]
                    for v in self.wino_versions for d in ("forward", "data"))
            self.wino_work = xp.empty(n, dtype=np.float32)

    def stream(self):
        return self.be._stream()

    def has(self, direction, v):
        """Whether `direction` has kernel version v (the filter gradient has versions of its own)."""
        return v == 0 or v in self.be.versions(op_name(self.p, direction))

    def fn(self, direction, v):
        m, g = self.m, dict(self.geo, precision=self.p)
        if direction == "forward":
            return lambda: m.conv2d_forward(self.x, self.w, self.b, self.y, version=v, stream=self.stream(), **g)
        if direction == "data":
            return lambda: m.conv2d_backward_data(self.dy, self.x, self.w, self.dx, version=v, stream=self.stream(), **g)
        if direction == "filter":
            return lambda: m.conv2d_backward_filter(self.dy, self.x, self.w, self.dw, self.work[v], version=v,
                                                    stream=self.stream(), **g)
        if direction == "bias":  # FP32 sums of the FP32 dy at every precision
            return lambda: m.conv2d_backward_bias(self.dy32, self.db, version=v if self.p == "fp32" else 0,
                                                  stream=self.stream())
        raise ValueError(direction)

    def fn_winograd(self, direction, v):
        m, g = self.m, dict(self.geo, algorithm="winograd", work=self.wino_work, version=v)
        if direction == "forward":
            return lambda: m.conv2d_forward(self.x, self.w, self.b, self.y, stream=self.stream(), **g)
        if direction == "data":
            return lambda: m.conv2d_backward_data(self.dy, self.x, self.w, self.dx, stream=self.stream(), **g)
        raise ValueError(direction)

    def result(self, direction):
        return {"forward": self.y, "data": self.dx, "filter": self.dw, "bias": self.db}[direction]


WINOGRAD_DIRECTIONS = ("forward", "data")


def winograd_versions(be, x, w, geo):
    """[0] + the Winograd versions when its kernels take this layer (3x3, stride 1, padding <= 2), else []."""
    try:
        be._mod.conv2d_winograd_check(x, w, **geo)
    except ValueError:
        return []
    return [0] + be.versions("conv2d_forward_winograd")


def torch_fns(torch, x, w, b, dy, geo):
    F = torch.nn.functional
    st, pad, g = geo["stride"], geo["padding"], geo["groups"]
    return {
        "forward": lambda: F.conv2d(x, w, b, stride=st, padding=pad, groups=g),
        "data": lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=st, padding=pad, groups=g),
        "filter": lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=st, padding=pad, groups=g),
        "bias": lambda: dy.sum(dim=(0, 2, 3)),
    }


WITH_WINOGRAD = "ours v0 + winograd"  # the sum row: Winograd v0 in its rows, version 0 elsewhere


# ---------------------------------------------------------------------------------------------
def check(args):
    """Every version and direction at tiny sizes against the float64 reference (and torch's CPU
    convolution when torch is importable)."""
    from alexnet_cuda import available_backends, get_backend
    from alexnet_cuda import reference as ref

    name = "cuda" if "cuda" in available_backends() else "emu"
    be = get_backend(name)
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    N = 2
    worst, ok = 0.0, True
    p = args.precision
    print(f"bench_conv.py --check on the {name} backend (N={N}, channels / 8, small images, {p})"
          f"{'; also against torch (CPU, fp32)' if torch and p == 'fp32' else ''}")
    for lname, layer in CHECK_LAYERS.items():
        C, H, W, K, R, S, st, pad, g = layer
        P, Q = out_size(H, W, R, S, st, pad)
        geo = dict(stride=st, padding=pad, groups=g)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((K, C // g, R, S)).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
        d = [a.astype(np.float64) for a in (x, w, b, dy)]
        want = {"forward": ref.conv2d_forward(d[0], d[1], d[2], precision=p, **geo)}
        want["data"], want["filter"], _ = ref.conv2d_backward(d[3], d[0], d[1], precision=p, **geo)
        want["bias"] = d[3].sum(axis=(0, 2, 3))  # FP32 dy at every precision (OurConv keeps it)
        if torch is not None and p == "fp32":
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in d)
            tf = torch_fns(torch, tx, tw, tb, tdy, geo)
            for k in want:
                diff = np.abs(tf[k]().numpy() - want[k]).max() / max(1e-30, np.abs(want[k]).max())
                assert diff < 1e-10, f"torch and the reference disagree on {lname} {k}: {diff}"
        ours = OurConv(be, *(be.asarray(a) for a in (x, w, b, dy)), geo, precision=p)
        w_, ok_ = common.check_versions(be, op_name(p), lname, ours, want)
        worst, ok = max(worst, w_), ok and ok_
        for v in be.versions(op_name(p, "filter")):  # the filter gradient's own versions
            if v not in be.versions(op_name(p)):
                ours.fn("filter", v)()
                got = be.to_numpy(ours.result("filter")).astype(np.float64)
                err = np.abs(got - want["filter"]).max() / max(1e-30, np.abs(want["filter"]).max())
                print(f"  {lname} v{v}: max |err| / max |ref|  filter {err:.1e}")
                worst, ok = max(worst, err), ok and bool(err < common.CHECK_LIMIT)
        for v in ours.wino_versions:  # Winograd's forward and data gradient (3x3, stride 1)
            errs = {}
            for k in WINOGRAD_DIRECTIONS:
                ours.fn_winograd(k, v)()
                got = be.to_numpy(ours.result(k)).astype(np.float64)
                errs[k] = np.abs(got - want[k]).max() / max(1e-30, np.abs(want[k]).max())
                ok &= bool(errs[k] < common.CHECK_LIMIT)
            worst = max([worst] + list(errs.values()))
            print(f"  {lname} winograd v{v}: max |err| / max |ref|  " + "  ".join(f"{k} {e:.1e}" for k, e in errs.items()))
    print(("OK" if ok else "MISMATCH") + f": worst relative error {worst:.2e} (limit 1e-5)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args = common.kernel_bench_args(__doc__, "conv1..conv5", "direct loops", argv, precisions=("fp32", "tf32", "bf16"))
    if args.check:
        return check(args)
    common.require_gpu("bench_conv.py")

    import cupy

    from alexnet_cuda import get_backend

    torch = common.fp32_torch("bench_conv.py", "cuDNN")
    if torch is None:
        return 2
    torch.backends.cudnn.benchmark = True
    p = args.precision
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
    be = get_backend("cuda")
    versions, only = common.selection(args, be, op_name(p, "filter"), LAYERS)  # every direction's versions
    N = args.batch_size
    rnd = cupy.random.default_rng(0)
    rows = []
    sums = {}  # impl -> ms over layers and directions

    def tt(a):
        t = torch.as_tensor(a, device="cuda")
        return t.bfloat16() if p == "bf16" else t

    for lname in only:
        layer = LAYERS[lname]
        C, H, W, K, R, S, st, pad, g = layer
        P, Q = out_size(H, W, R, S, st, pad)
        geo = dict(stride=st, padding=pad, groups=g)
        x = rnd.standard_normal((N, C, H, W), dtype=cupy.float32)
        w = rnd.standard_normal((K, C // g, R, S), dtype=cupy.float32) * np.float32(0.05)
        b = rnd.standard_normal((K,), dtype=cupy.float32)
        dy = rnd.standard_normal((N, K, P, Q), dtype=cupy.float32)
        ours = OurConv(be, x, w, b, dy, geo, precision=p)
        tf = torch_fns(torch, tt(x), tt(w), tt(b), tt(dy), geo)
        fl = flops(N, layer)
        shape = f"{N}x{C}x{H}x{W} -> {K}x{P}x{Q}"
        for direction in DIRECTIONS + ("bias",):
            t_ms = common.time_torch(tf[direction], warmup=args.warmup, iters=args.iters)
            ref_out = tf[direction]().float()
            torch.cuda.synchronize()
            ours.fn(direction, 0)()
            cupy.cuda.get_current_stream().synchronize()
            r0 = ours.result(direction).copy()
            err = float((torch.as_tensor(r0, device="cuda") - ref_out).abs().max()
                        / ref_out.abs().max().clamp_min(1e-30))
            is_conv = direction in DIRECTIONS
            rows.append({"layer": lname, "shape": shape, "direction": direction, "impl": "cuDNN", "ms": t_ms,
                         "TFLOP/s": fl / (t_ms * 1e-3) / 1e12 if is_conv else "", "x cuDNN": 1.0, "max |err|": ""})
            if is_conv:
                sums["cuDNN"] = sums.get("cuDNN", 0.0) + t_ms
            print(f"{lname} {direction:8s} cuDNN    {t_ms:9.3f} ms", flush=True)
            v0_ms = None  # version 0's time (when --versions has 0)
            for v in (v for v in versions if ours.has(direction, v)):
                iters = args.v1_iters if v == 1 else args.iters
                ms = common.time_cuda(ours.fn(direction, v), warmup=1 if v == 1 else args.warmup, iters=iters)
                # every version against version 0: an independent check where cuDNN's algorithm
                # (Winograd/FFT) is itself less exact than FP32 direct summation
                vs0 = float(cupy.abs(ours.result(direction) - r0).max() / max(float(cupy.abs(r0).max()), 1e-30))
                rows.append({"layer": lname, "shape": shape, "direction": direction, "impl": f"ours v{v}", "ms": ms,
                             "TFLOP/s": fl / (ms * 1e-3) / 1e12 if is_conv else "", "x cuDNN": ms / t_ms,
                             "max |err|": f"{err:.1e}" if v == 0 else f"{vs0:.1e} vs v0"})
                if is_conv and all(ours.has(d, v) for d in DIRECTIONS):  # sums of whole versions only
                    sums[f"ours v{v}"] = sums.get(f"ours v{v}", 0.0) + ms
                print(f"{lname} {direction:8s} ours v{v}  {ms:9.3f} ms  x cuDNN {ms / t_ms:6.2f}"
                      + (f"  max|err| {err:.1e}" if v == 0 else ""), flush=True)
                if v == 0:
                    v0_ms = ms
            if is_conv:
                with_wino = v0_ms  # the step with Winograd's version 0 where it runs, version 0 elsewhere
                for v in ours.wino_versions if direction in WINOGRAD_DIRECTIONS else []:
                    ms = common.time_cuda(ours.fn_winograd(direction, v), warmup=args.warmup, iters=args.iters)
                    vs0 = float(cupy.abs(ours.result(direction) - r0).max() / max(float(cupy.abs(r0).max()), 1e-30))
                    rows.append({"layer": lname, "shape": shape, "direction": direction,
                                 "impl": f"ours winograd v{v}", "ms": ms, "TFLOP/s": fl / (ms * 1e-3) / 1e12,
                                 "x cuDNN": ms / t_ms, "max |err|": f"{vs0:.1e} vs v0"})
                    print(f"{lname} {direction:8s} ours winograd v{v}  {ms:9.3f} ms  x cuDNN {ms / t_ms:6.2f}",
                          flush=True)
                    with_wino = ms if v == 0 and with_wino is not None else with_wino
                if p == "fp32" and with_wino is not None:
                    sums[WITH_WINOGRAD] = sums.get(WITH_WINOGRAD, 0.0) + with_wino
        del ours, x, w, b, dy
    total_fl = sum(flops(N, LAYERS[l]) for l in only) * len(DIRECTIONS)
    for impl, ms in sums.items():
        rows.append({"layer": "sum", "shape": ",".join(only), "direction": "fwd+data+filter", "impl": impl, "ms": ms,
                     "TFLOP/s": total_fl / (ms * 1e-3) / 1e12, "x cuDNN": ms / sums["cuDNN"], "max |err|": ""})
        print(f"sum {impl:10s} {ms:9.3f} ms  x cuDNN {ms / sums['cuDNN']:6.2f}")
    md = common.write_results(
        "bench_conv" if p == "fp32" else f"bench_conv_{p}", rows,
        ["layer", "shape", "direction", "impl", "ms", "TFLOP/s", "x cuDNN", "max |err|"],
        title=f"AlexNet convolutions, batch {N}: ours vs cuDNN "
              + {"fp32": "(FP32, TF32 off)", "tf32": "(TF32 tensor cores, FP32 accumulation)",
                 "bf16": "(BF16 inputs on tensor cores; torch bfloat16 tensors)"}[p],
        notes=["FLOPs = 2*N*K*P*Q*(C/groups)*R*S per direction; x cuDNN = our time / cuDNN's time "
               "(goal: <= 2 per layer and direction, <= 1.5 for the sum). Version 0 = the dispatcher's choice.",
               "The bias rows are not in the sums; max |err| is version 0 vs cuDNN relative to max |cuDNN|, and for "
               "the other versions their result vs version 0's (v1 is the direct-loop oracle). cuDNN may pick "
               "Winograd or FFT algorithms (TFLOP/s above the card's FP32 peak shows it), which are less exact."])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
