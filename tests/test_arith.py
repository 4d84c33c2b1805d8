"""Rounding primitives of toolchain/arith.py (qassure's one integer arithmetic: the executor, the
fixed-point recipes, the merge and the emitted C's constants all use it) on hand-worked integer
cases, plus properties.

Values are worked out by hand from gemmlowp / TFLM common.h; comments show the arithmetic.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.arith import (
    INT32_MAX,
    INT32_MIN,
    Rounding,
    effective_scale,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requant_error_bound,
    round_half_away,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

HALF = 1 << 30  # M = 2^30 stands for 0.5


def srdhm(a: int, b: int) -> int:
    return int(saturating_rounding_doubling_high_mul(np.int64(a), np.int64(b)))


def rdbpot(x: int, e: int) -> int:
    return int(rounding_divide_by_pot(np.int64(x), e))


def mbqm(x: int, m: int, shift: int, rounding: Rounding = "double") -> int:
    return int(multiply_by_quantized_multiplier(np.int64(x), m, shift, rounding))


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        (HALF, HALF, 1 << 29),  # 2^60 / 2^31
        (1, HALF, 1),  # +0.5 tie: (2^30 + 2^30) >> 31 = 1, rounds up
        (-1, HALF, 0),  # -0.5 tie: (-2^30 + 1 - 2^30) / 2^31 truncates to 0 (half up, not away)
        (3, HALF, 2),  # 1.5 -> 2
        (-3, HALF, -1),  # -1.5 -> -1: (1 - 2^32) / 2^31 truncates to -1
        (INT32_MIN, INT32_MIN, INT32_MAX),  # the one overflow saturates
        (INT32_MIN, INT32_MAX, -INT32_MAX),  # -2^31 (2^31 - 1) / 2^31 = -(2^31 - 1)
        (INT32_MAX, INT32_MAX, INT32_MAX - 1),  # (2^31-1)^2 / 2^31 = 2^31 - 2 + 2^-31
        (0, INT32_MIN, 0),
    ],
)
def test_saturating_rounding_doubling_high_mul(a: int, b: int, want: int) -> None:
    assert srdhm(a, b) == want


@pytest.mark.parametrize(
    ("x", "e", "want"),
    [
        (5, 0, 5), (-5, 0, -5),
        (5, 1, 3), (-5, 1, -3),  # +-2.5 -> +-3 (half away from zero)
        (3, 1, 2), (-3, 1, -2),  # +-1.5 -> +-2
        (2, 2, 1), (-2, 2, -1),  # +-0.5 -> +-1
        (1, 2, 0), (-1, 2, 0),  # +-0.25 -> 0
        (7, 2, 2), (-7, 2, -2),  # +-1.75 -> +-2
        (-6, 2, -2),  # -1.5 -> -2
        (INT32_MIN, 31, -1), (INT32_MAX, 31, 1),  # -1 and 1 - 2^-31
        (INT32_MIN, 1, -(1 << 30)),
    ],
)
def test_rounding_divide_by_pot(x: int, e: int, want: int) -> None:
    assert rdbpot(x, e) == want


@pytest.mark.parametrize(
    ("x", "m", "shift", "double", "single"),
    [
        (3, HALF, 2, 6, 6),  # left shift: 3 * 4 * 0.5
        (3, HALF, 0, 2, 2),  # 1.5 -> 2 in both
        (-3, HALF, 0, -1, -1),  # -1.5: both round half up
        (1, HALF, -1, 1, 0),  # 0.25: double rounds 0.5 -> 1 then 0.5 -> 1; single rounds 0.25 -> 0
        (-1, HALF, -1, 0, 0),  # -0.25
        (6, HALF, -1, 2, 2),  # 1.5
        (-6, HALF, -1, -2, -1),  # -1.5: double -> high-mul -3, RDBPOT(-3, 1) = -2; single half up -> -1
        (1000, 1 << 30, -10, 0, 0),  # 1000 / 2048 = 0.488
        (1024, 1 << 30, -10, 1, 1),  # 0.5 tie: double 512 -> RDBPOT(512, 10) = 1; single half up = 1
        (-1024, 1 << 30, -10, -1, 0),  # -0.5: double away from zero, single half up
    ],
)
def test_multiply_by_quantized_multiplier(x: int, m: int, shift: int, double: int, single: int) -> None:
    assert mbqm(x, m, shift, "double") == double
    assert mbqm(x, m, shift, "single") == single


@pytest.mark.parametrize(
    ("real", "rounding", "want"),
    [
        (0.0, "double", (0, 0)),
        (1.0, "double", (1 << 30, 1)),  # frexp(1) = (0.5, 1)
        (0.5, "double", (1 << 30, 0)),
        (0.25, "double", (1 << 30, -1)),
        (0.75, "double", (3 << 29, 0)),
        (2.0**-31, "double", (1 << 30, -30)),
        (2.0**-32, "double", (1 << 30, -31)),  # e = -31 is still kept
        (2.0**-33, "double", (0, 0)),  # e < -31 -> the multiplier is zero
        (2.0**-40, "double", (0, 0)),
        (1.0 - 2.0**-33, "double", (1 << 30, 1)),  # q * 2^31 = 2^31 - 1/4 rounds to 2^31 -> 2^30, e + 1
        (0.5 + 2.0**-32, "double", ((1 << 30) + 1, 0)),  # q * 2^31 = 2^30 + 1/2 rounds away
        (2.0**31, "double", (1 << 30, 32)),
        (2.0**31, "single", ((1 << 31) - 1, 30)),  # single-rounding builds cap the shift at 30
        (3.0, "single", (3 << 29, 2)),
    ],
)
def test_quantize_multiplier(real: float, rounding: Rounding, want: tuple[int, int]) -> None:
    assert quantize_multiplier(real, rounding) == want


def test_effective_scale_and_round_half_away() -> None:
    assert effective_scale(1 << 30, 1) == 1.0
    assert effective_scale(3 << 29, -1) == 0.375
    assert [round_half_away(v) for v in (0.5, -0.5, 1.5, -1.5, 2.4999, -2.5)] == [1, -1, 2, -2, 2, -3]


def test_requant_error_bound_values() -> None:
    assert requant_error_bound(0).item() == 0.5
    assert requant_error_bound(3).item() == 0.5
    assert requant_error_bound(-1).item() == 0.75
    assert requant_error_bound(-10).item() == 0.5 + 2.0**-11
    assert requant_error_bound(-10, "single").item() == 0.5


def _c_div(n: int, d: int) -> int:
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def _ref_double(x: int, m: int, shift: int) -> int:
    """Pure-Python transcription of common.h (no numpy): SRDHM then RoundingDivideByPOT."""
    a = x * (1 << max(shift, 0))
    ab = a * m
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    h = INT32_MAX if a == m == INT32_MIN else _c_div(ab + nudge, 1 << 31)
    r = max(-shift, 0)
    mask = (1 << r) - 1
    rem, thr = h & mask, (mask >> 1) + (1 if h < 0 else 0)
    return (h >> r) + (1 if rem > thr else 0)


_M = st.integers(1 << 30, (1 << 31) - 1)


@st.composite
def _mbqm_case(draw, max_shift: int = 10):
    shift = draw(st.integers(-31, max_shift))
    limit = (1 << 31) >> max(shift, 0)  # x << shift stays an int32, as in the kernels
    return draw(st.integers(-limit, limit - 1)), draw(_M), shift


@settings(max_examples=400, deadline=None)
@given(_mbqm_case())
def test_double_rounding_matches_c_transcription(case) -> None:
    x, m, shift = case
    assert mbqm(x, m, shift, "double") == _ref_double(x, m, shift)


@settings(max_examples=400, deadline=None)
@given(_mbqm_case(max_shift=30), st.sampled_from(["double", "single"]))
def test_mbqm_error_within_requant_error_bound(case, rounding: Rounding) -> None:
    x, m, shift = case
    exact = Fraction(x * m) * Fraction(2) ** (shift - 31)
    err = abs(Fraction(mbqm(x, m, shift, rounding)) - exact)
    assert err <= Fraction(float(requant_error_bound(shift, rounding)))


def test_vectorised_over_arrays() -> None:
    x = np.array([1, -1, 6, -6, 1024, -1024], dtype=np.int64)
    shifts = np.array([-1, -1, -1, -1, -10, -10])
    got = multiply_by_quantized_multiplier(x, HALF, shifts)
    assert got.tolist() == [_ref_double(int(a), HALF, int(s)) for a, s in zip(x, shifts, strict=True)]


def test_srdhm_random_against_exact_integers() -> None:
    """floor((a*b + 2^30) / 2^31) on whole int32 arrays, saturating only INT32_MIN * INT32_MIN."""
    rng = np.random.default_rng(0)
    a = rng.integers(INT32_MIN, INT32_MAX, 4000, endpoint=True)
    b = rng.integers(INT32_MIN, INT32_MAX, 4000, endpoint=True)
    a[:5] = [INT32_MIN, INT32_MIN, INT32_MAX, 0, -1]
    b[:5] = [INT32_MIN, INT32_MAX, INT32_MIN, INT32_MIN, INT32_MIN]
    want = [INT32_MAX if x == y == INT32_MIN else (int(x) * int(y) + (1 << 30)) >> 31
            for x, y in zip(a, b, strict=True)]
    assert saturating_rounding_doubling_high_mul(a, b).tolist() == want


def test_rounding_divide_by_pot_broadcasts_exponents() -> None:
    """Per-element exponents (the softmax's per-row exponent) against exact integers: round |x| / 2^k
    half up, then restore the sign (= ties away from zero)."""
    assert rounding_divide_by_pot(np.array([[8], [8]]), np.array([[2], [3]])).tolist() == [[2], [1]]
    rng = np.random.default_rng(1)
    v = rng.integers(INT32_MIN, INT32_MAX, 2000, endpoint=True)
    e = rng.integers(0, 32, 2000)
    want = [(1 if x >= 0 else -1) * ((abs(int(x)) + ((1 << int(k)) >> 1)) >> int(k))
            for x, k in zip(v, e, strict=True)]
    assert rounding_divide_by_pot(v, e).tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["double", "single"]), st.integers(0, 2**32 - 1), st.integers(-128, 127),
       st.sampled_from([np.float32, np.float64, np.int64]))
def test_compiled_output_stage_equals_the_reference(rounding: Rounding, seed: int, offset: int,
                                                     dtype) -> None:
    """requantize_clamp (the kernels' one-pass output stage) = reference MBQM + offset, clamped,
    element for element, for per-channel multipliers and shifts of both signs."""
    from toolchain.arith import multiply_by_quantized_multiplier_reference, requantize_clamp

    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, 9))
    m = rng.integers(1 << 30, 1 << 31, channels)
    shift = rng.integers(-20, 4, channels)
    limit = (1 << 31) >> int(max(shift.max(), 0))
    acc = rng.integers(-limit, limit, (37, channels))
    acc[:3] = [[-limit], [limit - 1], [0]]
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    out = np.empty(acc.shape, dtype=np.int8)
    source = acc if dtype is not np.float32 else acc.clip(-2**23, 2**23)  # float32 holds these exactly
    requantize_clamp(source.astype(dtype), m, shift, rounding, offset, lo, hi, out)
    want = np.clip(multiply_by_quantized_multiplier_reference(source, m, shift, rounding) + offset, lo, hi)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_output_stage_is_exact_on_every_accumulator_near_zero(rounding: Rounding, dtype) -> None:
    """Every accumulator in [-2^17, 2^17] through multipliers at both ends of [2^30, 2^31) and shifts
    whose halves fall on many of them (the ties RoundingDivideByPOT and the high multiply round away
    or up): the compiled stage, float32 lanes included, equals the reference element for element."""
    from toolchain.arith import ClampedRequant, multiply_by_quantized_multiplier_reference

    acc = np.repeat(np.arange(-(1 << 17), 1 << 17)[:, None], 8, axis=1)
    m = np.array([1 << 30, (1 << 31) - 1, 1 << 30, 1518500250, (1 << 31) - 1, 1 << 30, 1073741825,
                  2**31 - 2])
    shift = np.array([0, 0, -1, -3, -7, -12, -18, -31]) if rounding == "double" else np.array(
        [15, 0, -1, -3, -7, -12, -18, -31])
    for offset, lo, hi in ((0, -128, 127), (-128, -128, 127), (37, -20, 90)):
        out = np.empty(acc.shape, dtype=np.int8)
        ClampedRequant(m, shift, rounding, offset, lo, hi)(acc.astype(dtype), out)
        want = np.clip(multiply_by_quantized_multiplier_reference(acc, m, shift, rounding) + offset, lo, hi)
        np.testing.assert_array_equal(out, want)
