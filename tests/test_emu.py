"""Tests of the CUDA features our kernels rely on, through the self-test kernels
(csrc/kernels/selftest.cu). Each runs on emu in every fiber order and, when a GPU is
present, on cuda too, so the emulator's semantics are checked against the hardware's.
The race, divergence, poisoning and error-path tests are about the emulator itself.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda.precision import round_bf16, round_tf32

from conftest import KERNEL_BACKENDS


@pytest.fixture(params=KERNEL_BACKENDS)
def kb(request):
    return alexnet_cuda.get_backend(request.param)


def run(be, fn, *arrays, **kw):
    """Calls a selftest binding with arrays moved to the backend; returns them as numpy."""
    dev = [be.xp.asarray(a) for a in arrays]
    fn(be._mod.selftest)(*dev, **kw)
    be.synchronize()
    return [be.to_numpy(a) for a in dev]


# ---- barriers --------------------------------------------------------------------------

@pytest.mark.parametrize("threads,live", [(64, 64), (64, 40), (96, 33), (1024, 1000), (32, 1)])
def test_barrier_with_early_returning_threads(kb, emu_order, threads, live):
    out, counts = run(kb, lambda m: lambda o, c: m.barrier(o, c, threads, live),
                      np.zeros(threads, np.float32), np.zeros(3, np.int32))
    t = np.arange(live)
    np.testing.assert_array_equal(out[:live], (t + 1) % live + 1)
    np.testing.assert_array_equal(out[live:], 0)
    pred = t % 3 == 0
    assert counts.tolist() == [pred.sum(), int(pred.all()), int(pred.any())]


def test_divergent_barrier_raises_naming_threads(emu_order):
    be = alexnet_cuda.get_backend("emu")
    with pytest.raises(RuntimeError, match=r"barrier divergence.*Threads 0-9 at .*selftest\.cu.*Threads 10-63 at"):
        be._mod.selftest.divergent_barrier(np.zeros(64, np.float32), 64, 10)


def test_barrier_against_warp_collective_is_reported_not_hung():
    # Lanes 0-15 wait in __syncwarp for lanes 16-31, which have returned.
    be = alexnet_cuda.get_backend("emu")
    z = np.zeros(32, np.int32)
    with pytest.raises(RuntimeError, match=r"(names lane 16, which has returned|Threads 0-15 wait in __syncwarp.*Threads 16-31 have returned)"):
        be._mod.selftest.warp(z, z.copy(), z.copy(), 7, 0xFFFFFFFF, 0x0000FFFF, 32)


# ---- a deliberate race -------------------------------------------------------------------

def test_tree_sum_correct_with_barriers(kb, emu_order):
    x = np.arange(256, dtype=np.float32)
    (_, out) = run(kb, lambda m: lambda a, o: m.tree_sum(a, o, True), x, np.zeros(1, np.float32))
    assert out[0] == x.sum()


def test_missing_syncthreads_is_caught_in_some_fiber_order(monkeypatch):
    be = alexnet_cuda.get_backend("emu")
    x = np.arange(256, dtype=np.float32)
    results = {}
    for order in ("forward", "reverse", "shuffle:1", "shuffle:2"):
        monkeypatch.setenv("ALEXNET_EMU_ORDER", order)
        out = np.zeros(1, np.float32)
        be._mod.selftest.tree_sum(x, out, False)
        results[order] = float(out[0])
    wrong = [o for o, v in results.items() if v != x.sum()]
    assert wrong, f"the racy reduction gave the right sum in every order: {results}"


def test_fiber_order_setting_is_the_order_fibers_run(monkeypatch):
    """Each thread takes a ticket first thing: the tickets are the order the fibers started in."""
    be = alexnet_cuda.get_backend("emu")

    def tickets(order, n=64):
        monkeypatch.setenv("ALEXNET_EMU_ORDER", order)
        t, c = np.full(n, -1, np.int32), np.zeros(1, np.int32)
        be._mod.selftest.fiber_order(t, c)
        assert c[0] == n and sorted(t) == list(range(n))
        return t.tolist()

    assert tickets("forward") == list(range(64))
    assert tickets("reverse") == list(range(63, -1, -1))
    s1, s2 = tickets("shuffle:1"), tickets("shuffle:2")
    assert s1 == tickets("shuffle:1")                    # a seed gives one order
    assert s1 != s2                                      # another seed, another order
    for s in (s1, s2):
        assert s not in (list(range(64)), list(range(63, -1, -1)))


# ---- warp collectives ----------------------------------------------------------------------

def warp_reference(op, vals, args, mask, width):
    """CUDA's rules for one warp (lanes in mask take part)."""
    out = np.zeros(32, np.int64)
    lanes = [l for l in range(32) if mask >> l & 1]
    votes = sum(1 << l for l in lanes if vals[l] != 0)
    for l in lanes:
        lo = l & ~(width - 1)
        a = int(args[l])
        if op == 0:
            src = lo + (a & (width - 1))
        elif op == 1:
            src = l - a if l - lo >= a else l
        elif op == 2:
            src = l + a if l - lo + a < width else l
        elif op == 3:
            src = l ^ a
            if src >= lo + width:
                src = l
        if op <= 3:
            out[l] = vals[src]
        elif op == 4:
            out[l] = np.uint32(votes).view(np.int32)
        elif op == 5:
            out[l] = int(votes != 0)
        elif op == 6:
            out[l] = int(votes == sum(1 << x for x in lanes))
        else:
            out[l] = vals[l]
    return out


OPS = {0: "shfl", 1: "shfl_up", 2: "shfl_down", 3: "shfl_xor", 4: "ballot", 5: "any", 6: "all", 7: "syncwarp"}


@pytest.mark.parametrize("op", list(OPS), ids=list(OPS.values()))
@pytest.mark.parametrize("width", [32, 16, 8, 1])
def test_warp_collectives_full_warp(kb, emu_order, op, width):
    rng = np.random.default_rng(op * 100 + width)
    warps = 3
    vals = rng.integers(-1000, 1000, size=32 * warps).astype(np.int32)
    if op >= 4:
        # warp 0 random votes, warp 1 all false, warp 2 all true
        vals = (rng.random(32 * warps) < np.array([0.5, 0.0, 1.0])[np.arange(32 * warps) // 32]).astype(np.int32)
    if op == 0:
        args = rng.integers(-40, 40, size=32 * warps)
    elif op == 3:
        args = rng.integers(0, 32, size=32 * warps)
    else:
        args = rng.integers(0, 32, size=32 * warps)
    args = args.astype(np.int32)
    (_, _, out) = run(kb, lambda m: lambda i, a, o: m.warp(i, a, o, op, 0xFFFFFFFF, 0xFFFFFFFF, width),
                      vals, args, np.zeros_like(vals))
    for w in range(warps):
        s = slice(32 * w, 32 * w + 32)
        np.testing.assert_array_equal(out[s], warp_reference(op, vals[s], args[s], 0xFFFFFFFF, width).astype(np.int32),
                                      err_msg=f"warp {w}")


@pytest.mark.parametrize("op", [1, 2, 4, 5, 6, 7], ids=["up", "down", "ballot", "any", "all", "syncwarp"])
def test_warp_collectives_partial_mask(kb, emu_order, op):
    # Two disjoint halves of the warp, each a group of its own: only lanes in the mask.
    rng = np.random.default_rng(op)
    vals = rng.integers(0, 2 if op >= 4 else 1000, size=32).astype(np.int32)
    args = rng.integers(0, 4, size=32).astype(np.int32)
    mask = 0x0000FFFF
    (_, _, out) = run(kb, lambda m: lambda i, a, o: m.warp(i, a, o, op, mask, mask, 16),
                      vals, args, np.full(32, -7, np.int32))
    ref = warp_reference(op, vals, args, mask, 16).astype(np.int32)
    np.testing.assert_array_equal(out[:16], ref[:16])
    np.testing.assert_array_equal(out[16:], -7)
    if op >= 4:
        # every lane of the group votes true (the lanes outside it would vote false): a vote
        # that looked at the whole warp instead of the mask gives another answer
        vals = np.r_[np.ones(16), np.zeros(16)].astype(np.int32)
        (_, _, out) = run(kb, lambda m: lambda i, a, o: m.warp(i, a, o, op, mask, mask, 16),
                          vals, args, np.full(32, -7, np.int32))
        ref = warp_reference(op, vals, args, mask, 16).astype(np.int32)
        np.testing.assert_array_equal(out[:16], ref[:16])


def test_shuffle_from_lane_outside_mask_is_an_error():
    be = alexnet_cuda.get_backend("emu")
    args = np.full(32, 20, np.int32)  # every lane reads lane 20, which is not in the mask
    z = np.zeros(32, np.int32)
    with pytest.raises(RuntimeError, match=r"reads lane 20, which is not in the mask 0x0000ffff"):
        be._mod.selftest.warp(z, args, z.copy(), 0, 0x0000FFFF, 0x0000FFFF, 32)


def test_calling_lane_outside_its_mask_is_an_error():
    be = alexnet_cuda.get_backend("emu")
    z = np.zeros(32, np.int32)
    with pytest.raises(RuntimeError, match=r"calling lane 16 is not in its mask"):
        be._mod.selftest.warp(z, z.copy(), z.copy(), 7, 0x0000FFFF, 0xFFFFFFFF, 32)


def test_bad_shuffle_width_is_an_error():
    be = alexnet_cuda.get_backend("emu")
    z = np.zeros(32, np.int32)
    with pytest.raises(RuntimeError, match=r"width must be a power of two"):
        be._mod.selftest.warp(z, z.copy(), z.copy(), 0, 0xFFFFFFFF, 0xFFFFFFFF, 12)


# ---- atomics -------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", ["1", "4"])
def test_atomics_exact_under_concurrent_blocks(kb, monkeypatch, threads):
    monkeypatch.setenv("ALEXNET_EMU_THREADS", threads)
    # Enough work per block that the OS threads really overlap (a racy add loses updates).
    blocks, per_block, reps = 96, 64, 2000
    ints, f = run(kb, lambda m: lambda i, fl: m.atomics(i, fl, blocks, per_block, reps),
                  np.zeros(3, np.int32), np.zeros(1, np.float32))
    total = blocks * per_block * reps  # < 2^24, so the float sum is exact too
    assert ints.tolist() == [total, blocks * per_block - 1, total]
    assert f[0] == total


# ---- wmma ----------------------------------------------------------------------------------

WMMA = {0: ("half", 16, 16, 16), 1: ("half", 32, 8, 16), 2: ("half", 8, 32, 16), 3: ("bf16", 16, 16, 16),
        4: ("tf32", 16, 16, 8), 5: ("half-colmajor", 32, 8, 16)}


@pytest.mark.parametrize("kind", list(WMMA), ids=[f"{v[0]}-m{v[1]}n{v[2]}k{v[3]}" for v in WMMA.values()])
def test_wmma_tiles_match_numpy(kb, emu_order, kind):
    typ, M, N, K = WMMA[kind]
    rng = np.random.default_rng(kind)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    col = typ.endswith("colmajor")  # C passed and D returned column-major (transposed)
    (_, _, _, d) = run(kb, lambda m: lambda *x: m.wmma(*x, kind), a, b, np.ascontiguousarray(c.T) if col else c,
                       np.zeros((N, M) if col else (M, N), np.float32))
    d = d.T if col else d
    rnd = {"half": lambda x: x.astype(np.float16).astype(np.float32), "bf16": round_bf16,
           "tf32": round_tf32}[typ.split("-")[0]]
    ar, br = rnd(a).astype(np.float64), rnd(b).astype(np.float64)
    ref = ar @ br + c
    # Products of rounded inputs are exact in float32; the K-term sum rounds at most
    # K+1 times, so |d - ref| <= (K+1) * eps32 * (|a||b| + |c|).
    bound = (K + 1) * np.finfo(np.float32).eps * (np.abs(ar) @ np.abs(br) + np.abs(c))
    assert np.all(np.abs(d - ref) <= bound + 1e-30)


# ---- shared memory -------------------------------------------------------------------------

def test_dynamic_shared_memory(kb, emu_order):
    blocks, per_block = 5, 96
    x = np.arange(blocks * per_block, dtype=np.float32)
    (_, y, poisoned) = run(kb, lambda m: lambda *a: m.dyn_smem_reverse(*a, per_block), x,
                           np.zeros_like(x), np.zeros(blocks, np.int32))
    np.testing.assert_array_equal(y, x.reshape(blocks, per_block)[:, ::-1].ravel())
    if kb.name == "emu":
        # Both dynamic and static shared memory read as NaN before they are written.
        assert poisoned.tolist() == [3] * blocks


def test_too_much_dynamic_shared_memory_is_a_launch_error():
    be = alexnet_cuda.get_backend("emu")
    x = np.zeros(64, np.float32)
    with pytest.raises(RuntimeError, match=r"cudaErrorInvalidConfiguration.*dynamic shared memory, more than the 49152"):
        be._mod.selftest.dyn_smem_reverse(x, x.copy(), np.zeros(1, np.int32), 64, extra_smem=49152)


def test_invalid_block_size_is_a_launch_error():
    be = alexnet_cuda.get_backend("emu")
    with pytest.raises(RuntimeError, match=r"cudaErrorInvalidConfiguration.*exceeds 1024 threads"):
        be._mod.selftest.divergent_barrier(np.zeros(2048, np.float32), 2048, 0)


# ---- half and bfloat16 ----------------------------------------------------------------------

def test_half_and_bfloat16_round_to_nearest_even(kb):
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf, 6e-8, 2.9802322e-08,
                        2.9802326e-08, 5.9604645e-08, 1e-10, 3.0e-5, -3.0e-5, 1.0009765625, 1.00048828125,
                        1.00146484375, 1 + 2**-8, 1 + 3 * 2**-9], np.float32)
    x = np.concatenate([special, rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 2000)])
    x = x.astype(np.float32)
    (_, h, b, back) = run(kb, lambda m: lambda *a: m.convert(*a), x, np.zeros(x.size, np.uint16),
                          np.zeros(x.size, np.uint16), np.zeros_like(x))
    np.testing.assert_array_equal(h, x.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(b, (round_bf16(x).view(np.uint32) >> 16).astype(np.uint16))
    # NaNs stay NaN in both formats, also those whose payload sits in the low bits only (which
    # rounding to nearest even would carry into the exponent: +-inf)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF], np.uint32).view(np.float32)
    _, h, b, back = run(kb, lambda m: lambda *a: m.convert(*a), nans, np.zeros(4, np.uint16),
                        np.zeros(4, np.uint16), np.zeros(4, np.float32))
    assert np.isnan(back).all() and np.isnan(h.view(np.float16)).all()
    assert np.isnan((b.astype(np.uint32) << 16).view(np.float32)).all()


# ---- settings and fiber implementations ------------------------------------------------------

def test_bad_fiber_order_setting_is_reported(monkeypatch):
    be = alexnet_cuda.get_backend("emu")
    monkeypatch.setenv("ALEXNET_EMU_ORDER", "sideways")
    with pytest.raises(RuntimeError, match="ALEXNET_EMU_ORDER"):
        be.relu_forward(np.ones(4, np.float32))


@pytest.mark.parametrize("impl", ["asm", "ucontext"])
def test_both_fiber_implementations(impl, tmp_path):
    # The implementation is chosen once per process, so each runs in a child process.
    code = (
        "import numpy as np, alexnet_cuda\n"
        "be = alexnet_cuda.get_backend('emu')\n"
        f"assert 'fibers={impl}' in be._mod.emu_settings(), be._mod.emu_settings()\n"
        "o = np.zeros(64, np.float32); c = np.zeros(3, np.int32)\n"
        "be._mod.selftest.barrier(o, c, 64, 50)\n"
        "assert (o[:50] == (np.arange(50) + 1) % 50 + 1).all()\n"
        "x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)\n"
        "assert abs(float(be.reduce_sum(x, version=2)) - x.sum(dtype=np.float64)) < 1e-3\n"
        "print('ok')\n"
    )
    # The child imports the same alexnet_cuda as this process (installed, or the checkout).
    pkg_parent = os.path.dirname(os.path.dirname(alexnet_cuda.__file__))
    env = dict(os.environ, ALEXNET_EMU_FIBERS=impl,
               PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
    if env.get("ALEXNET_CUDA_EXT_DIR"):
        env["ALEXNET_CUDA_EXT_DIR"] = os.path.abspath(env["ALEXNET_CUDA_EXT_DIR"])
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path.
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
