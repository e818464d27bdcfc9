"""Shared pieces of the benchmark scripts: timing on the GPU, the card's description,
and writing results (JSON + a markdown table) under benchmarks/results/ with the card,
the driver, the date and the commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def commit():
    """The commit measured: ALEXNET_COMMIT when set (a copy of the tree without .git), else git's."""
    if os.environ.get("ALEXNET_COMMIT"):
        return os.environ["ALEXNET_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


def card_info():
    """Name, driver, memory of GPU 0 (via nvidia-smi), or the CPU for emu runs."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        if out:
            name, driver, mem = [s.strip() for s in out[0].split(",")]
            return {"card": name, "driver": driver, "memory": mem}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"card": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", "driver": "n/a",
            "memory": "n/a"}


def time_cuda(fn, *, warmup=3, iters=20):
    """Median milliseconds of fn() on the current cupy stream, timed with CUDA events."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(iters):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def time_torch(fn, *, warmup=3, iters=20):
    """Median milliseconds of fn() on torch's current stream."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measured_copy_bandwidth_gbs(nbytes=1 << 28):
    """Device-to-device copy bandwidth (read + write bytes per second), in GB/s."""
    import cupy

    a = cupy.empty(nbytes // 4, dtype=cupy.float32)
    b = cupy.empty_like(a)
    ms = time_cuda(lambda: b.__setitem__(Ellipsis, a), iters=10)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def write_results(name, rows, columns, *, title, notes=()):
    """Writes results/<name>.json and results/<name>.md; returns the markdown text."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {**card_info(), "date": _dt.date.today().isoformat(), "commit": commit()}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {title}", "",
             f"Card: {meta['card']} (driver {meta['driver']}), date {meta['date']}, commit {meta['commit']}.", ""]
    lines += list(notes) + ([""] if notes else [])
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    return md


def require_gpu(script):
    """Exits with a clear message when the cuda backend or torch is missing."""
    import sys

    from alexnet_cuda.backends import cuda_unusable_reason

    why = cuda_unusable_reason()
    if why:
        print(f"{script}: not run: {why}. This benchmark needs a GPU (results are never estimated).")
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# The kernel benchmarks against cuDNN / cuBLAS (bench_conv.py, bench_linear.py)

CHECK_LIMIT = 1e-5  # relative to the largest reference value: float32 kernels against float64


def kernel_bench_args(doc, layers, v1_note, argv, precisions=("fp32",)):
    """The options shared by the kernel benchmarks, parsed (--precision when `precisions` offers more than fp32)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if len(precisions) > 1:
        ap.add_argument("--precision", choices=precisions, default="fp32",
                        help="fp32 (default), or tf32 / bf16 on our tensor-core kernels against the vendor's")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--v1-iters", type=int, default=3, help=f"iterations for version 1 ({v1_note}: slow)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--versions", default="", help="comma-separated kernel versions (default: 0 and every numbered one)")
    ap.add_argument("--only", default="", help=f"comma-separated layers ({layers})")
    ap.add_argument("--check", action="store_true", help="correctness at tiny sizes on cuda or emu, then exit")
    return ap.parse_args(argv)


def fp32_torch(script, baseline):
    """torch with TF32 off (FP32 against FP32), or None after one line when it cannot see the GPU."""
    import torch

    if not torch.cuda.is_available():
        print(f"{script}: not run: torch cannot see the GPU ({baseline} is the baseline of this benchmark).")
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def selection(args, be, op, layers):
    """(versions, layer names) chosen by --versions and --only."""
    versions = ([int(v) for v in args.versions.split(",") if v.strip()] if args.versions
                else [0] + be.versions(op))
    return versions, [s.strip() for s in args.only.split(",") if s.strip()] or list(layers)


def check_versions(be, op, lname, ours, want):
    """Every version of our op against the float64 reference `want` (direction -> array): one line
    per version; returns (worst relative error, all within CHECK_LIMIT)."""
    import numpy as np

    worst, ok = 0.0, True
    for v in [0] + be.versions(op):
        errs = {}
        for k in want:
            ours.fn(k, v)()
            got = be.to_numpy(ours.result(k)).astype(np.float64)
            errs[k] = np.abs(got - want[k]).max() / max(1e-30, np.abs(want[k]).max())
            ok &= bool(errs[k] < CHECK_LIMIT)
        worst = max([worst] + list(errs.values()))
        print(f"  {lname} v{v}: max |err| / max |ref|  " + "  ".join(f"{k} {e:.1e}" for k, e in errs.items()))
    return worst, ok
