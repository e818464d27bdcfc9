"""BF16 and TF32 rounding of the reference (alexnet_cuda/precision.py): BF16 bit for bit
against ml_dtypes (ties, NaN, infinity, overflow, subnormals), TF32 against the definition
of cvt.rna (nearest, ties away from zero) computed independently in float64."""
import ml_dtypes
import numpy as np
import pytest

from alexnet_cuda import precision as P


def bits(*u):
    return np.array(u, np.uint32).view(np.float32)


SPECIAL = bits(
    0x00000000, 0x80000000,  # +-0
    0x3F808000, 0x3F818000,  # 1 + half a bf16 unit: tie to even (down), 1 + 3 halves: tie to even (up)
    0xBF808000, 0xBF818000,  # the same, negative
    0x3F808001, 0x3F807FFF,  # just above / below the tie
    0x7F7FFFFF, 0xFF7FFFFF,  # the largest finite floats: round to infinity
    0x7F7F7FFF, 0x7F7F8000,  # just below the overflow tie, and the tie (even: infinity)
    0x00000001, 0x00008000, 0x00018000, 0x007FFFFF,  # subnormals, ties among them
    0x7F800000, 0xFF800000,  # infinities
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFF800001,  # NaNs, signalling ones included
)


def test_bf16_matches_ml_dtypes_on_special_values():
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on NaN inputs
        want = SPECIAL.astype(ml_dtypes.bfloat16).view(np.uint16)
    got = P.bf16_bits(SPECIAL)
    nan = np.isnan(SPECIAL)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    # NaN stays NaN with its sign (ml_dtypes' payload bits are not part of the contract).
    back = P.from_bf16_bits(got[nan])
    assert np.isnan(back).all()
    np.testing.assert_array_equal(np.signbit(back), np.signbit(SPECIAL[nan]))
    assert got[2] == 0x3F80 and got[3] == 0x3F82 and got[8] == 0x7F80 and got[10] == 0x7F7F and got[11] == 0x7F80


def test_bf16_matches_ml_dtypes_on_random_bit_patterns():
    rng = np.random.default_rng(5)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    x = x[~np.isnan(x)]
    np.testing.assert_array_equal(P.bf16_bits(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(P.round_bf16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))


def tf32_by_definition(x):
    """cvt.rna in float64: the nearest multiple of the TF32 unit of x's binade, ties away from zero."""
    x = x.astype(np.float64)
    m, e = np.frexp(np.abs(x))  # |x| = m 2^e, 0.5 <= m < 1
    e = np.maximum(e, -125)  # subnormals share the smallest normal binade's unit
    unit = np.ldexp(1.0, e - 11)  # 11 significant bits
    r = np.floor(np.abs(x) / unit + 0.5) * unit
    with np.errstate(over="ignore"):
        return (np.sign(x) * r).astype(np.float32)


def test_tf32_is_cvt_rna():
    rng = np.random.default_rng(6)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(P.round_tf32(x), tf32_by_definition(x))
    # Ties go away from zero; infinity and NaN pass; the largest floats round to infinity.
    t = bits(0x3F801000, 0xBF801000, 0x3F803000, 0x7F7FF000, 0x7F800000, 0xFF800000, 0x7FC00001)
    r = P.round_tf32(t).view(np.uint32)
    assert r[:6].tolist() == [0x3F802000, 0xBF802000, 0x3F804000, 0x7F800000, 0x7F800000, 0xFF800000]
    assert np.isnan(P.round_tf32(t)[6])


def test_bf16_representations():
    x = np.array([1.0, 1 + 2**-8, -3.39e38, np.nan], np.float32)
    b = P.to_bf16(x)
    assert b.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(b.view(np.uint16), P.bf16_bits(x))
    assert P.as_bf16_bits(b).dtype == np.uint16 and P.as_bf16_bits(b).base is not None  # a view, not a copy
    np.testing.assert_array_equal(P.as_bf16_bits(x), P.bf16_bits(x))
    np.testing.assert_array_equal(P.from_bf16_bits(P.bf16_bits(x))[:3], b.astype(np.float32)[:3])


def test_round_to_and_precision_names():
    x = np.array([1 + 2**-9, 1 + 2**-12], np.float32)
    assert P.round_to("fp32", x).tolist() == x.tolist()
    assert P.round_to("tf32", x).tolist() == [1 + 2**-9, 1.0]
    assert P.round_to("bf16", x).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"f: precision must be one of fp32, tf32, bf16, got 'fp16'"):
        P.check_precision("f", "fp16")
