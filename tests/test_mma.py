"""The warp-level matrix instructions of csrc/common/mma_sync.h (mma.sync m16n8k16 BF16 and
m16n8k8 TF32): the self-test kernel loads A, B and C into each lane's registers by the PTX
ISA's fragment layouts, runs one mma, stores D by the layout; the result must be the NumPy
product of the rounded inputs. Deliberately wrong mappings (registers swapped, a lane
reading its neighbour group's values, D's elements swapped) must give a wrong result: the
emulator places every value by lane and register, as the hardware does. On emu in every
fiber order, and on cuda when a GPU is present.
"""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda.precision import round_bf16, round_tf32

from conftest import KERNEL_BACKENDS

KINDS = {0: ("bf16", 16, round_bf16), 1: ("tf32", 8, round_tf32)}
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(params=KERNEL_BACKENDS)
def kb(request):
    return alexnet_cuda.get_backend(request.param)


def run_mma(be, kind, variant, a, b, c):
    dev = [be.xp.asarray(v) for v in (a, b, c, np.zeros((16, 8), np.float32))]
    be._mod.selftest.mma(*dev, kind, variant)
    be.synchronize()
    return be.to_numpy(dev[3])


def operands(kind, seed):
    _, K, _ = KINDS[kind]
    rng = np.random.default_rng(seed)
    # Distinct values everywhere, so any misplaced element changes the product.
    a = rng.standard_normal((16, K)).astype(np.float32)
    b = rng.standard_normal((K, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    return a, b, c


def reference(kind, a, b, c):
    """D of the rounded inputs in float64, and the bound on the kernel's FP32 error: the
    products of rounded inputs are exact in FP32, the K + 1 terms are summed with at most
    K rounding steps (any order), each <= eps32 times the sum of magnitudes so far."""
    _, K, rnd = KINDS[kind]
    ar, br = rnd(a).astype(np.float64), rnd(b).astype(np.float64)
    ref = ar @ br + c
    bound = K * EPS32 * (np.abs(ar) @ np.abs(br) + np.abs(c))
    return ref, bound


@pytest.mark.parametrize("kind", list(KINDS), ids=[v[0] for v in KINDS.values()])
def test_mma_fragment_layouts_match_numpy(kb, emu_order, kind):
    for seed in range(3):
        a, b, c = operands(kind, seed)
        d = run_mma(kb, kind, 0, a, b, c)
        ref, bound = reference(kind, a, b, c)
        assert np.all(np.abs(d - ref) <= bound), np.abs(d - ref).max()


@pytest.mark.parametrize("kind", list(KINDS), ids=[v[0] for v in KINDS.values()])
def test_mma_inputs_are_rounded_as_the_hardware_does(kb, kind):
    # Inputs that are not representable in the narrow format: the product must be that of the
    # rounded values (bf16 nearest-even, tf32 cvt.rna), not of the FP32 values or of truncated ones.
    name, K, rnd = KINDS[kind]
    rng = np.random.default_rng(7)
    a = (1 + rng.integers(1, 2**20, (16, K)) * 2.0**-20).astype(np.float32)  # mostly between grid points
    a[0, :] = 1 + 2.0**-11 if name == "tf32" else 1 + 2.0**-8  # exact ties: away from zero / to even
    b = np.ones((K, 8), np.float32)
    c = np.zeros((16, 8), np.float32)
    d = run_mma(kb, kind, 0, a, b, c)
    ref, bound = reference(kind, a, b, c)
    assert np.all(np.abs(d - ref) <= bound)
    expected_tie = K * (1 + 2.0**-10) if name == "tf32" else K * 1.0
    assert d[0, 0] == pytest.approx(expected_tie, rel=1e-7)
    trunc = (a.view(np.uint32) & (0xFFFFE000 if name == "tf32" else 0xFFFF0000)).view(np.float32)
    assert not np.allclose(d, trunc.astype(np.float64) @ b + c, rtol=0, atol=0)


@pytest.mark.parametrize("variant", [1, 2, 3], ids=["a-registers-swapped", "b-neighbour-group", "d-swapped"])
@pytest.mark.parametrize("kind", list(KINDS), ids=[v[0] for v in KINDS.values()])
def test_wrong_lane_mapping_gives_a_wrong_result(kb, kind, variant):
    a, b, c = operands(kind, 11)
    d = run_mma(kb, kind, variant, a, b, c)
    ref, bound = reference(kind, a, b, c)
    wrong = np.abs(d - ref) > bound
    # Each variant misplaces whole registers of every lane: many elements of D are wrong.
    assert wrong.sum() >= 32, wrong.sum()


@pytest.mark.parametrize("kind", list(KINDS), ids=[v[0] for v in KINDS.values()])
def test_lanes_at_different_mma_instructions_are_an_error_on_emu(kind):
    be = alexnet_cuda.get_backend("emu")
    a, b, c = operands(kind, 0)
    with pytest.raises(RuntimeError, match=r"mma\.sync: the lanes of a warp are at different instructions"):
        run_mma(be, kind, 4, a, b, c)


def test_tf32_conversion_is_cvt_rna(kb):
    u = np.array([0x3F800000, 0x3F801000, 0x3F800FFF, 0x3F803000, 0xBF801000, 0x7F7FF000, 0x00001000, 0x7F800000,
                  0xFF800000, 0x7FC00001, 0x3F7FF000], np.uint32)
    rng = np.random.default_rng(3)
    x = np.concatenate([u.view(np.float32), rng.standard_normal(1000).astype(np.float32) * 1e3])
    dev = [kb.xp.asarray(x), kb.xp.zeros(x.size, kb.xp.int32)]
    kb._mod.selftest.tf32(*dev)
    kb.synchronize()
    got = kb.to_numpy(dev[1]).view(np.uint32)
    want = round_tf32(x).view(np.uint32)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float32)).all()
    # Ties away from zero (0x1000 is half a TF32 unit), the carry into the next binade, and to infinity.
    assert want[1] == 0x3F802000 and want[2] == 0x3F800000 and want[4] == 0xBF802000
    assert want[10] == 0x3F800000 and want[5] == 0x7F800000


# ---- ldmatrix (common/mma_sync.h: ldmatrix_x4, ldmatrix_x4_trans) ---------------------------
# The PTX ISA's ldmatrix .m8n8.x4.b16, written out here on its own: lane 8i + j supplies the
# address of row j of matrix i; lane l receives in register i the two 16-bit elements of matrix
# i at row l // 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half first); with .trans those at
# column l // 4, rows 2 (l % 4) and 2 (l % 4) + 1. The wrong models below misplace elements
# in ways a kernel could: they must not match.

def ldsm_model(S, rows, cols, trans, wrong=None):
    out = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        for i in range(4):
            word = 0
            for h in range(2):
                hh = 1 - h if wrong == "halves-swapped" else h
                if wrong == "row-by-lane-mod-8":
                    r, c = lane % 8, 2 * (lane // 8) + hh
                elif trans != (wrong == "trans-flipped"):
                    r, c = 2 * (lane % 4) + hh, lane // 4
                else:
                    r, c = lane // 4, 2 * (lane % 4) + hh
                src = 8 * (lane // 8 if wrong == "matrix-by-lane-group" else i) + r  # the lane with the row's address
                word |= int(S[rows[src], cols[src] + c]) << (16 * h)
            out[lane, i] = word
    return out


LDSM_WRONG = ("halves-swapped", "row-by-lane-mod-8", "trans-flipped", "matrix-by-lane-group")


def run_ldmatrix(be, S, rows, cols, trans):
    dev = [be.xp.asarray(a) for a in (S, rows.astype(np.int32), cols.astype(np.int32), np.zeros(128, np.int32))]
    be._mod.selftest.ldmatrix(*dev, trans)
    be.synchronize()
    return be.to_numpy(dev[3]).view(np.uint32).reshape(32, 4)


def ldsm_inputs(seed):
    rng = np.random.default_rng(seed)
    S = rng.permutation(65536)[:4096].astype(np.uint16).reshape(64, 64)  # distinct values
    rows = rng.choice(64, 32, replace=False)  # each lane its own row, in no order
    cols = 8 * rng.integers(0, 8, 32)  # 16-byte aligned columns, different per lane
    return S, rows, cols


@pytest.mark.parametrize("trans", [False, True], ids=["x4", "x4.trans"])
def test_ldmatrix_registers_per_lane_match_the_ptx_layout(kb, emu_order, trans):
    for seed in range(2):
        S, rows, cols = ldsm_inputs(seed)
        got = run_ldmatrix(kb, S, rows, cols, trans)
        np.testing.assert_array_equal(got, ldsm_model(S, rows, cols, trans))
        for wrong in LDSM_WRONG:  # the comparison sees a misplaced element
            assert (got != ldsm_model(S, rows, cols, trans, wrong)).sum() >= 64, wrong


def test_ldmatrix_unaligned_row_is_an_error_on_emu():
    be = alexnet_cuda.get_backend("emu")
    S, rows, cols = ldsm_inputs(0)
    cols[5] = 4  # 8 bytes into a row: not 16-byte aligned
    with pytest.raises(RuntimeError, match=r"ldmatrix: lane 5's row address is not 16-byte aligned"):
        run_ldmatrix(be, S, rows, cols, False)


@pytest.mark.parametrize("b_kmajor", [True, False], ids=["b-k-contiguous", "b-n-contiguous"])
@pytest.mark.parametrize("a_kmajor", [True, False], ids=["a-k-contiguous", "a-m-contiguous"])
def test_ldmatrix_fed_mma_matches_numpy(kb, emu_order, a_kmajor, b_kmajor):
    """D = A B (16 x 16 x 16) from ldmatrix fragments (plain for a k-contiguous tile, .trans
    for the other) and two mma.sync: the NumPy product of the bf16-rounded inputs within the
    FP32 bound of reference(); A read with the wrong form is wrong in most elements."""
    rng = np.random.default_rng(int(a_kmajor) * 2 + int(b_kmajor))
    a, b = (rng.standard_normal((16, 16)).astype(np.float32) for _ in range(2))
    ref, bound = reference(0, a, b, np.zeros((16, 16), np.float32))
    for wrong in (False, True):
        dev = [kb.xp.asarray(v) for v in (a, b, np.zeros((16, 16), np.float32))]
        kb._mod.selftest.ldmatrix_mma(*dev, a_kmajor, b_kmajor, wrong)
        kb.synchronize()
        bad = np.abs(kb.to_numpy(dev[2]) - ref) > bound
        if wrong:
            assert bad.sum() >= 128, bad.sum()
        else:
            assert not bad.any()
