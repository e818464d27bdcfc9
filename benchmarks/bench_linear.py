"""AlexNet's fully connected layers, batch 128: our SGEMM kernels (every numbered version) vs
cuBLAS through PyTorch, forward, backward-data and backward-weight, in one run on one card.

    python benchmarks/bench_linear.py [--iters 20] [--warmup 3] [--batch-size 128]
                                      [--versions 0,1,2] [--only fc6,fc8] [--v1-iters 3]
                                      [--precision fp32|tf32|bf16]
    python benchmarks/bench_linear.py --check    # correctness only, tiny sizes, no GPU needed

Shapes: fc6 9216 -> 4096, fc7 4096 -> 4096, fc8 4096 -> 1000; x (N, I), w (O, I), dy (N, O):
  forward  y  = x w^T + b    (torch.addmm(b, x, w.t()))
  data     dx = dy w         (dy @ w)
  weight   dw = dy^T x       (dy.t() @ x)
  bias     db = column sums of dy (dy.sum(0)); listed, not in the sums
FLOPs = 2*N*I*O per direction. Each row: median ms (CUDA events), TFLOP/s, "x cuBLAS" = our
time / cuBLAS's time (<= 1: as fast or faster). Ours are called through the extension with
preallocated outputs and split-K workspace; the split-K second pass is timed.
torch.backends.cuda.matmul.allow_tf32 = False (FP32 against FP32).

--precision tf32: our tensor-core kernels (gemm_tc) against cuBLAS with allow_tf32 = True;
--precision bf16: ours on BF16 x, w, dy (FP32 out) against torch on bfloat16 tensors (BF16
out); results go to bench_linear_<precision>.json / .md.

Writes benchmarks/results/bench_linear.json and .md (card, driver, date, commit). Without a
usable GPU it prints why and exits with status 2; --check runs anywhere (cuda when usable,
else emu) and exits 1 on a mismatch.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

LAYERS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # (I, O)
CHECK_LAYERS = {"fc6": (288, 128), "fc7": (128, 128), "fc8": (128, 31)}  # / 32, odd fc8
DIRECTIONS = ("forward", "data", "weight")


def op_name(precision):
    """The op whose numbered versions run at `precision` (fp32: gemm; tf32, bf16: gemm_tc)."""
    return "linear_forward" if precision == "fp32" else f"linear_forward_{precision}"


class OurLinear:
    def __init__(self, be, x, w, b, dy, precision="fp32"):
        from alexnet_cuda.precision import bf16_bits

        self.dy32, self.p = dy, precision
        if precision == "bf16":  # the kernels take BF16 operands as uint16 bit patterns
            x, w, dy = (bf16_bits(a) for a in (x, w, dy))
        self.be, self.m, self.x, self.w, self.b, self.dy = be, be._mod, x, w, b, dy
        xp = be.xp
        self.y = xp.empty(dy.shape, dtype=np.float32)
        self.dx = xp.empty(x.shape, dtype=np.float32)
        self.dw = xp.empty(w.shape, dtype=np.float32)
        self.db = xp.empty((w.shape[0],), dtype=np.float32)
        self.work = {}
        for v in [0] + be.versions(op_name(precision)):
            f = self.m.linear_check(x, w, b, None, version=v, precision=precision)["forward"]["workspace"]
            p = self.m.linear_check(x, w, None, dy, version=v, precision=precision)
            n = max(f, p["data"]["workspace"], p["weight"]["workspace"])
            self.work[v] = xp.empty(n, dtype=np.float32) if n else None

    def fn(self, direction, v):
        m, s, p = self.m, self.be._stream, self.p
        wk = self.work.get(v)
        if direction == "forward":
            return lambda: m.linear_forward(self.x, self.w, self.b, self.y, wk, version=v, precision=p, stream=s())
        if direction == "data":
            return lambda: m.linear_backward_data(self.dy, self.x, self.w, self.dx, wk, version=v, precision=p,
                                                  stream=s())
        if direction == "weight":
            return lambda: m.linear_backward_weight(self.dy, self.x, self.w, self.dw, wk, version=v, precision=p,
                                                    stream=s())
        if direction == "bias":  # FP32 column sums at every precision
            return lambda: m.linear_backward_bias(self.dy32, self.db, version=v if p == "fp32" else 0, stream=s())
        raise ValueError(direction)

    def result(self, direction):
        return {"forward": self.y, "data": self.dx, "weight": self.dw, "bias": self.db}[direction]


def torch_fns(torch, x, w, b, dy):
    return {
        "forward": lambda: torch.addmm(b, x, w.t()),
        "data": lambda: dy @ w,
        "weight": lambda: dy.t() @ x,
        "bias": lambda: dy.sum(0),
    }


def check(args):
    from alexnet_cuda import available_backends, get_backend
    from alexnet_cuda import reference as ref

    name = "cuda" if "cuda" in available_backends() else "emu"
    be = get_backend(name)
    rng = np.random.default_rng(0)
    N = 5
    ok, worst = True, 0.0
    p = args.precision
    print(f"bench_linear.py --check on the {name} backend (N={N}, features / 32, {p})")
    for lname, (I, O) in CHECK_LAYERS.items():
        x = rng.standard_normal((N, I)).astype(np.float32)
        w = rng.standard_normal((O, I)).astype(np.float32)
        b = rng.standard_normal(O).astype(np.float32)
        dy = rng.standard_normal((N, O)).astype(np.float32)
        d = [a.astype(np.float64) for a in (x, w, b, dy)]
        want = {"forward": ref.linear_forward(d[0], d[1], d[2], precision=p)}
        want["data"], want["weight"], _ = ref.linear_backward(d[3], d[0], d[1], precision=p)
        want["bias"] = d[3].sum(axis=0)  # FP32 dy at every precision (OurLinear keeps it)
        ours = OurLinear(be, *(be.asarray(a) for a in (x, w, b, dy)), precision=p)
        w_, ok_ = common.check_versions(be, op_name(p), lname, ours, want)
        worst, ok = max(worst, w_), ok and ok_
    print(("OK" if ok else "MISMATCH") + f": worst relative error {worst:.2e} (limit 1e-5)")
    return 0 if ok else 1


def main(argv=None):
    args = common.kernel_bench_args(__doc__, "fc6,fc7,fc8", "naive", argv, precisions=("fp32", "tf32", "bf16"))
    if args.check:
        return check(args)
    common.require_gpu("bench_linear.py")

    import cupy

    from alexnet_cuda import get_backend

    torch = common.fp32_torch("bench_linear.py", "cuBLAS")
    if torch is None:
        return 2
    p = args.precision
    torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
    be = get_backend("cuda")
    versions, only = common.selection(args, be, op_name(p), LAYERS)
    N = args.batch_size
    rnd = cupy.random.default_rng(0)
    rows, sums = [], {}

    def tt(a):
        t = torch.as_tensor(a, device="cuda")
        return t.bfloat16() if p == "bf16" else t

    for lname in only:
        I, O = LAYERS[lname]
        x = rnd.standard_normal((N, I), dtype=cupy.float32)
        w = rnd.standard_normal((O, I), dtype=cupy.float32) * np.float32(0.01)
        b = rnd.standard_normal((O,), dtype=cupy.float32)
        dy = rnd.standard_normal((N, O), dtype=cupy.float32)
        ours = OurLinear(be, x, w, b, dy, precision=p)
        tf = torch_fns(torch, tt(x), tt(w), tt(b), tt(dy))
        fl = 2.0 * N * I * O
        shape = f"{N}x{I} -> {O}"
        for direction in DIRECTIONS + ("bias",):
            is_mm = direction in DIRECTIONS
            t_ms = common.time_torch(tf[direction], warmup=args.warmup, iters=args.iters)
            ref_out = tf[direction]()
            torch.cuda.synchronize()
            ours.fn(direction, 0)()
            cupy.cuda.get_current_stream().synchronize()
            got = torch.as_tensor(ours.result(direction), device="cuda")
            ref_out = ref_out.float()
            err = float((got - ref_out).abs().max() / ref_out.abs().max().clamp_min(1e-30))
            rows.append({"layer": lname, "shape": shape, "direction": direction, "impl": "cuBLAS", "ms": t_ms,
                         "TFLOP/s": fl / (t_ms * 1e-3) / 1e12 if is_mm else "", "x cuBLAS": 1.0, "max |err|": ""})
            if is_mm:
                sums["cuBLAS"] = sums.get("cuBLAS", 0.0) + t_ms
            print(f"{lname} {direction:8s} cuBLAS   {t_ms:9.3f} ms", flush=True)
            for v in versions:
                ms = common.time_cuda(ours.fn(direction, v), warmup=1 if v == 1 else args.warmup,
                                      iters=args.v1_iters if v == 1 else args.iters)
                rows.append({"layer": lname, "shape": shape, "direction": direction, "impl": f"ours v{v}", "ms": ms,
                             "TFLOP/s": fl / (ms * 1e-3) / 1e12 if is_mm else "", "x cuBLAS": ms / t_ms,
                             "max |err|": f"{err:.1e}" if v == 0 else ""})
                if is_mm:
                    sums[f"ours v{v}"] = sums.get(f"ours v{v}", 0.0) + ms
                print(f"{lname} {direction:8s} ours v{v}  {ms:9.3f} ms  x cuBLAS {ms / t_ms:6.2f}"
                      + (f"  max|err| {err:.1e}" if v == 0 else ""), flush=True)
        del ours, x, w, b, dy
    total_fl = sum(2.0 * N * I * O for I, O in (LAYERS[l] for l in only)) * len(DIRECTIONS)
    for impl, ms in sums.items():
        rows.append({"layer": "sum", "shape": ",".join(only), "direction": "fwd+data+weight", "impl": impl, "ms": ms,
                     "TFLOP/s": total_fl / (ms * 1e-3) / 1e12, "x cuBLAS": ms / sums["cuBLAS"], "max |err|": ""})
        print(f"sum {impl:10s} {ms:9.3f} ms  x cuBLAS {ms / sums['cuBLAS']:6.2f}")
    md = common.write_results(
        "bench_linear" if p == "fp32" else f"bench_linear_{p}", rows, ["layer", "shape", "direction", "impl", "ms", "TFLOP/s", "x cuBLAS", "max |err|"],
        title=f"AlexNet fully connected layers, batch {N}: ours vs cuBLAS "
              + {"fp32": "(FP32, TF32 off)", "tf32": "(TF32 tensor cores, FP32 accumulation)",
                 "bf16": "(BF16 inputs on tensor cores; torch bfloat16 tensors)"}[p],
        notes=["FLOPs = 2*N*I*O per direction; x cuBLAS = our time / cuBLAS's time. Version 0 = the dispatcher's "
               "choice. The bias rows are not in the sums; max |err| is version 0 vs cuBLAS relative to max |cuBLAS|."])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
