"""gemmlowp fixed-point arithmetic (``fixedpoint/fixedpoint.h``), in numpy, bit for bit.

The FixedPoint<int32, IntegerBits> operations and transcendental functions that TFLM's int8
SOFTMAX, LOGISTIC and TANH kernels are built from (their recipes live in toolchain/ops/softmax.py
and toolchain/ops/lookup_table.py). The integer primitives underneath (SaturatingRoundingDoublingHighMul,
RoundingDivideByPOT, QuantizeMultiplier, MultiplyByQuantizedMultiplier) are toolchain.arith's:
there is one integer arithmetic in qassure.

Conventions
-----------
* int32 raw values are held in ``np.int64`` arrays.  Every helper returns values in
  [INT32_MIN, INT32_MAX]; where C++ int32 arithmetic would overflow (formally UB, in practice
  two's-complement wrap-around on every compiler TFLM targets) we wrap with :func:`wrap_int32`,
  and where gemmlowp saturates we saturate.
* ``FixedPoint<int32, IntegerBits>`` values are just their raw int32; the caller keeps track of
  the number of integer bits (passed explicitly where a function depends on it), as in gemmlowp.
* All functions are elementwise and broadcast like numpy ufuncs.

Sources of truth (facts only, no code copied): gemmlowp ``fixedpoint/fixedpoint.h``;
TFLM ``kernels/internal/common.{h,cc}``.
"""

from __future__ import annotations

import math

import numpy as np

from toolchain.arith import (
    INT32_MAX,
    INT32_MIN,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

_U32 = (1 << 32) - 1

__all__ = [
    "wrap_int32", "saturating_rounding_multiply_by_pot", "rounding_half_sum",
    "fixed_mul", "fixed_add", "fixed_sub", "fixed_neg", "rescale",
    "exp_on_interval_between_negative_one_quarter_and_0_excl", "exp_on_negative_values",
    "one_over_one_plus_x_for_x_in_0_1", "one_minus_x_over_one_plus_x_for_x_in_0_1",
    "logistic", "tanh", "count_leading_zeros_u32", "get_reciprocal",
    "multiply_by_quantized_multiplier_greater_than_one", "calculate_input_radius",
]


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def wrap_int32(x) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 range (C++ int32 overflow as compiled)."""
    x = _i64(x)
    return ((x + (1 << 31)) & _U32) - (1 << 31)


# --------------------------------------------------------------------------------------------
# gemmlowp scalar primitives (fixedpoint.h) beyond toolchain.arith
# --------------------------------------------------------------------------------------------

def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp::SaturatingRoundingMultiplyByPOT<Exponent> (compile-time exponent).

    Exponent > 0: saturating left shift (x > 2^(31-E)-1 -> INT32_MAX, x < -(2^(31-E)-1) ->
    INT32_MIN); Exponent < 0: RoundingDivideByPOT(x, -Exponent); 0: identity.
    """
    x = _i64(x)
    exponent = int(exponent)
    if exponent == 0:
        return x.copy()
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    r = x << exponent
    r = np.where(x > threshold, INT32_MAX, r)
    r = np.where(x < -threshold, INT32_MIN, r)
    return r.astype(np.int64)


def rounding_half_sum(a, b) -> np.ndarray:
    """gemmlowp::RoundingHalfSum<int32>: (a + b + sign) / 2 in int64 with C truncation."""
    s = _i64(a) + _i64(b)
    t = s + np.where(s >= 0, 1, -1)
    return np.where(t >= 0, t >> 1, -((-t) >> 1)).astype(np.int64)


def fixed_mul(a, b) -> np.ndarray:
    """FixedPoint<int32, Ia> * FixedPoint<int32, Ib> -> FixedPoint<int32, Ia + Ib> (raw SRDHM)."""
    return saturating_rounding_doubling_high_mul(a, b)


def fixed_add(a, b) -> np.ndarray:
    """FixedPoint operator+ : plain int32 addition (wraps; gemmlowp does not saturate int32)."""
    return wrap_int32(_i64(a) + _i64(b))


def fixed_sub(a, b) -> np.ndarray:
    """FixedPoint operator- (binary): plain int32 subtraction (wraps)."""
    return wrap_int32(_i64(a) - _i64(b))


def fixed_neg(a) -> np.ndarray:
    """FixedPoint unary operator-: -INT32_MIN wraps to INT32_MIN."""
    return wrap_int32(-_i64(a))


def rescale(x, src_integer_bits: int, dst_integer_bits: int) -> np.ndarray:
    """gemmlowp::Rescale<dst>(FixedPoint<int32, src>): SaturatingRoundingMultiplyByPOT<src - dst>."""
    return saturating_rounding_multiply_by_pot(x, src_integer_bits - dst_integer_bits)


def _one(integer_bits: int) -> int:
    """FixedPoint<int32, I>::One() raw value (INT32_MAX for I == 0)."""
    return INT32_MAX if integer_bits == 0 else 1 << (31 - integer_bits)


# --------------------------------------------------------------------------------------------
# gemmlowp transcendental functions
# --------------------------------------------------------------------------------------------

def exp_on_interval_between_negative_one_quarter_and_0_excl(a) -> np.ndarray:
    """gemmlowp::exp_on_interval_between_negative_one_quarter_and_0_excl (Q0.31 in, Q0.31 out).

    4th-order Taylor expansion around -1/8.
    """
    constant_term = 1895147668      # exp(-1/8) in Q0.31
    constant_1_over_3 = 715827883   # 1/3 in Q0.31
    x = fixed_add(a, 1 << 28)       # a + 1/8
    x2 = fixed_mul(x, x)
    x3 = fixed_mul(x2, x)
    x4 = fixed_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = saturating_rounding_multiply_by_pot(
        fixed_add(fixed_mul(fixed_add(x4_over_4, x3), constant_1_over_3), x2), -1)
    # AddSaturatingIf16Bit is a plain (wrapping) add for int32.
    return fixed_add(constant_term, fixed_mul(constant_term, fixed_add(x, poly)))


# (Exponent, Q0.31 multiplier exp(-2^Exponent)) of gemmlowp's GEMMLOWP_EXP_BARREL_SHIFTER.
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """gemmlowp::exp_on_negative_values(FixedPoint<int32, integer_bits>) -> FixedPoint<int32, 0>."""
    a = _i64(a)
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    mask = one_quarter - 1
    a_mod_quarter_minus_one_quarter = fixed_sub(a & mask, one_quarter)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0))
    remainder = fixed_sub(a_mod_quarter_minus_one_quarter, a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            shift = frac_bits + exponent
            bit_set = (remainder & (1 << shift)) != 0
            result = np.where(bit_set, fixed_mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))  # -32.0 in this format
        result = np.where(a < clamp, 0, result)
    result = np.where(a == 0, INT32_MAX, result)  # ResultF::One()
    return result.astype(np.int64)


def _newton_reciprocal_half_denominator(a) -> np.ndarray:
    """Shared core of gemmlowp's one_over_one_plus_x / one_minus_x_over_one_plus_x: returns F2 x
    ~= 1 / half_denominator after 3 Newton-Raphson steps, half_denominator = RoundingHalfSum(a, 1).
    """
    half_denominator = rounding_half_sum(a, INT32_MAX)   # F0
    constant_48_over_17 = 1515870810                      # F2
    constant_neg_32_over_17 = -1010580540                 # F2
    x = fixed_add(constant_48_over_17, fixed_mul(half_denominator, constant_neg_32_over_17))
    f2_one = _one(2)
    for _ in range(3):
        half_denominator_times_x = fixed_mul(half_denominator, x)             # F2
        one_minus = fixed_sub(f2_one, half_denominator_times_x)               # F2
        x = fixed_add(x, rescale(fixed_mul(x, one_minus), 4, 2))              # F4 -> F2
    return x


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp::one_over_one_plus_x_for_x_in_0_1 (Q0.31 in/out)."""
    x = _newton_reciprocal_half_denominator(a)
    return rescale(x, 1, 0)  # Rescale<0>(ExactMulByPot<-1>(x)): F2 raw reinterpreted as F1


def one_minus_x_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp::one_minus_x_over_one_plus_x_for_x_in_0_1 (Q0.31 in/out)."""
    x = _newton_reciprocal_half_denominator(a)
    return rescale(fixed_sub(x, _one(2)), 2, 0)


def tanh(a, integer_bits: int) -> np.ndarray:
    """gemmlowp::tanh(FixedPoint<int32, integer_bits>) -> FixedPoint<int32, 0>."""
    a = _i64(a)
    negative = a < 0
    n = np.where(negative, a, fixed_neg(a))
    # neg_tanh_on_negative_values: ExactMulByPot<1> reinterprets n with integer_bits + 1.
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(n, integer_bits + 1))
    return np.where(a == 0, 0, np.where(negative, fixed_neg(t), t)).astype(np.int64)


def logistic(a, integer_bits: int) -> np.ndarray:
    """gemmlowp::logistic(FixedPoint<int32, integer_bits>) -> FixedPoint<int32, 0>."""
    a = _i64(a)
    positive = a > 0
    abs_input = np.where(positive, a, fixed_neg(a))
    # logistic_on_positive_values
    r_pos = one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(fixed_neg(abs_input), integer_bits))
    r_neg = fixed_sub(INT32_MAX, r_pos)
    return np.where(a == 0, 1 << 30, np.where(positive, r_pos, r_neg)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# TFLite helpers (kernels/internal/common.{h,cc})
# --------------------------------------------------------------------------------------------

def count_leading_zeros_u32(x) -> np.ndarray:
    """tflite::CountLeadingZeros(static_cast<uint32_t>(x)); 32 for 0."""
    u = _i64(x) & _U32
    out = np.full(u.shape, 32, dtype=np.int64)
    nz = u != 0
    # floor(log2(u)) exactly for u < 2^32 via frexp (float64 holds 32-bit ints exactly).
    _, e = np.frexp(u[nz].astype(np.float64))
    out[nz] = 32 - e.astype(np.int64)
    return out


def get_reciprocal(x, x_integer_digits: int):
    """tflite::GetReciprocal -> (FixedPoint<int32,0> raw of 1/x scaled, num_bits_over_unit).

    x must be positive (a softmax sum of exps is).
    """
    x = _i64(x)
    headroom_plus_one = count_leading_zeros_u32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x & _U32) << headroom_plus_one) & _U32          # uint32 shift
    shifted_sum_minus_one = wrap_int32(shifted - (1 << 31))     # uint32 subtract, cast int32
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


def multiply_by_quantized_multiplier_greater_than_one(x, quantized_multiplier, left_shift) -> np.ndarray:
    """tflite::MultiplyByQuantizedMultiplierGreaterThanOne (double-rounding build):
    SRDHM(x * (1 << left_shift), M)."""
    return saturating_rounding_doubling_high_mul(wrap_int32(_i64(x) << _i64(left_shift)),
                                                 quantized_multiplier)


def calculate_input_radius(input_integer_bits: int, input_left_shift: int,
                           total_signed_bits: int = 31) -> int:
    """tflite::CalculateInputRadius (double path):
    floor((2^I - 1) * 2^(T - I) / 2^left_shift), evaluated in double (exact here)."""
    if input_left_shift < 0:
        # (1LL << negative) is undefined behaviour in the C++; only reachable for absurd scales.
        raise ValueError(f"CalculateInputRadius: negative left shift {input_left_shift}")
    max_input_rescaled = (1.0 * ((1 << input_integer_bits) - 1)
                          * float(1 << (total_signed_bits - input_integer_bits))
                          / float(1 << input_left_shift))
    return int(math.floor(max_input_rescaled))
