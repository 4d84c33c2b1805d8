"""gemmlowp fixed-point arithmetic and the TFLM int8 SOFTMAX / LOGISTIC / TANH kernels, in numpy.

Everything here reproduces, bit for bit, what TensorFlow Lite Micro's *reference* kernels compute
(default build: double-rounding ``MultiplyByQuantizedMultiplier``, no ``TFLITE_EMULATE_FLOAT``).

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
TFLM ``kernels/internal/common.{h,cc}``, ``kernels/internal/quantization_util.cc``,
``kernels/internal/reference/softmax.h``, ``reference/integer_ops/{logistic,tanh}.h``,
``micro/kernels/{softmax_common,logistic_common,tanh}.cc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
_U32 = (1 << 32) - 1

__all__ = [
    "INT32_MIN", "INT32_MAX",
    "wrap_int32", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
    "saturating_rounding_multiply_by_pot", "rounding_half_sum",
    "fixed_mul", "fixed_add", "fixed_sub", "fixed_neg", "rescale",
    "exp_on_interval_between_negative_one_quarter_and_0_excl", "exp_on_negative_values",
    "one_over_one_plus_x_for_x_in_0_1", "one_minus_x_over_one_plus_x_for_x_in_0_1",
    "logistic", "tanh", "count_leading_zeros_u32", "get_reciprocal",
    "multiply_by_quantized_multiplier", "multiply_by_quantized_multiplier_greater_than_one",
    "quantize_multiplier", "calculate_input_radius",
    "SoftmaxParams", "LogisticParams", "TanhParams",
    "softmax_params", "logistic_params", "tanh_params",
    "softmax_int8", "softmax_int8_aborts", "logistic_int8", "tanh_int8", "logistic_table", "tanh_table",
]


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def wrap_int32(x) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 range (C++ int32 overflow as compiled)."""
    x = _i64(x)
    return ((x + (1 << 31)) & _U32) - (1 << 31)


# --------------------------------------------------------------------------------------------
# gemmlowp scalar primitives (fixedpoint.h)
# --------------------------------------------------------------------------------------------

def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp::SaturatingRoundingDoublingHighMul<int32> (ARM VQRDMULH).

    (a*b + nudge) / 2^31 with C truncating division, nudge = 2^30 if a*b >= 0 else 1 - 2^30.
    That equals floor((a*b + 2^30) / 2^31): ties round *up* (toward +inf), so -0.5 -> 0 and
    -1.5 -> -1 (not away from zero).  a == b == INT32_MIN saturates to INT32_MAX.
    """
    a = _i64(a)
    b = _i64(b)
    ab = a * b  # |ab| <= 2^62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    q = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C division truncates toward zero
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, q).astype(np.int64)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp::RoundingDivideByPOT: arithmetic right shift rounding to nearest, ties away from 0.

    ``exponent`` in [0, 31], scalar or array broadcasting against ``x``.
    """
    x = _i64(x)
    e = _i64(exponent)
    if np.any(e < 0) or np.any(e > 31):
        raise ValueError("RoundingDivideByPOT exponent must be in [0, 31]")
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> e) + (remainder > threshold).astype(np.int64)


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


def multiply_by_quantized_multiplier(x, quantized_multiplier, shift) -> np.ndarray:
    """tflite::MultiplyByQuantizedMultiplier(int32 x, ...), double-rounding build (TFLM default):
    RoundingDivideByPOT(SRDHM(x * (1 << max(shift,0)), M), max(-shift,0)).
    The int32 product x * 2^left_shift wraps like the compiled C++.
    """
    shift = _i64(shift)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(wrap_int32(_i64(x) << left), quantized_multiplier), right)


def multiply_by_quantized_multiplier_greater_than_one(x, quantized_multiplier, left_shift) -> np.ndarray:
    """tflite::MultiplyByQuantizedMultiplierGreaterThanOne (double-rounding build):
    SRDHM(x * (1 << left_shift), M)."""
    return saturating_rounding_doubling_high_mul(wrap_int32(_i64(x) << _i64(left_shift)),
                                                 quantized_multiplier)


def quantize_multiplier(double_multiplier: float) -> tuple[int, int]:
    """tflite::QuantizeMultiplier (non-TFLITE_EMULATE_FLOAT): frexp, round half away from zero
    of q * 2^31, 2^31 -> 2^30 with shift + 1, shift < -31 flushes to (0, 0)."""
    if double_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(double_multiplier)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed > (1 << 31):
        raise ValueError("QuantizeMultiplier: q_fixed > 2^31")
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def _round_half_away(v: float) -> int:
    """std::round (TfLiteRound) on a double: half away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


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


def _f32(v: float) -> float:
    """A value as TFLite stores it (float32 tensor scale / op option), widened to double."""
    return float(np.float32(v))


# --------------------------------------------------------------------------------------------
# Prepare-time parameters
# --------------------------------------------------------------------------------------------

_SOFTMAX_SCALED_DIFF_INTEGER_BITS = 5
_SOFTMAX_ACCUM_INTEGER_BITS = 12
_ACT_INPUT_INTEGER_BITS = 4          # logistic / tanh int8: Q4.27 input


@dataclass(frozen=True)
class SoftmaxParams:
    """tflite::SoftmaxParams fields used by the int8 -> int8 reference kernel."""
    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass(frozen=True)
class LogisticParams:
    """tflite::OpDataLogistic (int8)."""
    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


@dataclass(frozen=True)
class TanhParams:
    """OpData of micro/kernels/tanh.cc (int8)."""
    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


# TFLM SOFTMAX int8->int8 requires output zero_point == -128 and scale == 1/256 *exactly*
# (float compare, softmax_common.cc); LOGISTIC int8 requires output zero_point == -128 but does
# not check the scale (the kernel assumes 1/256); TANH int8 checks neither (kernel assumes
# scale 1/128, zero point 0).  The converter always emits these.
SOFTMAX_OUTPUT_QUANT = (1.0 / 256.0, -128)
LOGISTIC_OUTPUT_QUANT = (1.0 / 256.0, -128)
TANH_OUTPUT_QUANT = (1.0 / 128.0, 0)


def softmax_params(input_scale: float, beta: float = 1.0) -> SoftmaxParams:
    """micro/kernels/softmax_common.cc CalculateSoftmaxParams, int8 input / int8 output.

    PreprocessSoftmaxScaling(double(beta), double(input_scale), 5): the real multiplier
    min(beta * scale * 2^26, 2^31 - 1) is computed in *double* from the float32 values
    (the float32 x float32 product is exact in double), then QuantizeMultiplierGreaterThanOne;
    diff_min = -CalculateInputRadius(5, left_shift).
    """
    beta_d = _f32(beta)
    scale_d = _f32(input_scale)
    max_real_multiplier = float((1 << 31) - 1.0)   # double-rounding build
    real = min(beta_d * scale_d * float(1 << (31 - _SOFTMAX_SCALED_DIFF_INTEGER_BITS)),
               max_real_multiplier)
    m, shift = quantize_multiplier(real)
    if shift < 0:  # TFLITE_CHECK_GE in QuantizeMultiplierGreaterThanOne aborts
        raise ValueError(f"softmax: beta*input_scale too small ({beta_d * scale_d!r}); TFLM aborts")
    diff_min = -calculate_input_radius(_SOFTMAX_SCALED_DIFF_INTEGER_BITS, shift)
    return SoftmaxParams(input_multiplier=m, input_left_shift=shift, diff_min=diff_min)


def _act_params(input_scale: float, input_zero_point: int):
    """Shared int8 prepare of micro/kernels/logistic_common.cc and tanh.cc:
    real = double(scale) * double(1 << 27); q, shift = frexp(real);
    M = int32(round(q * 2^31)); radius = CalculateInputRadius(4, shift, 31).

    Unlike QuantizeMultiplier there is no q == 2^31 fix-up; it cannot trigger for float32 scales
    (q <= 1 - 2^-24 gives q * 2^31 <= 2^31 - 128).
    """
    real = _f32(input_scale) * float(1 << (31 - _ACT_INPUT_INTEGER_BITS))
    q, shift = math.frexp(real)
    m = _round_half_away(q * (1 << 31))
    if m > INT32_MAX:
        raise ValueError("input multiplier overflows int32")
    if shift > 62:
        raise ValueError(f"input scale {input_scale} too large: 1LL << {shift} is undefined in TFLM")
    # For scale >= 8 (shift >= 31) the radius is 0: every input saturates (input 0 -> -128 since
    # 0 <= -0), so the multiplier path (where 1 << 31 would be undefined) is never reached.
    radius = calculate_input_radius(_ACT_INPUT_INTEGER_BITS, shift, 31)
    return int(input_zero_point), radius, m, shift


def logistic_params(input_scale: float, input_zero_point: int) -> LogisticParams:
    """micro/kernels/logistic_common.cc CalculateArithmeticOpDataLogistic, int8."""
    return LogisticParams(*_act_params(input_scale, input_zero_point))


def tanh_params(input_scale: float, input_zero_point: int) -> TanhParams:
    """micro/kernels/tanh.cc CalculateArithmeticOpData, int8."""
    return TanhParams(*_act_params(input_scale, input_zero_point))


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

def _softmax_core(x: np.ndarray, p: SoftmaxParams):
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError("softmax_int8 expects int8 input")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("softmax_int8 needs a non-empty last axis")
    xi = x.astype(np.int64)
    max_in_row = xi.max(axis=-1, keepdims=True)
    input_diff = xi - max_in_row
    valid = input_diff >= p.diff_min
    rescaled = multiply_by_quantized_multiplier_greater_than_one(
        np.where(valid, input_diff, 0), p.input_multiplier, p.input_left_shift)
    exp_in_0 = exp_on_negative_values(rescaled, _SOFTMAX_SCALED_DIFF_INTEGER_BITS)  # Q0.31
    terms = rescale(exp_in_0, 0, _SOFTMAX_ACCUM_INTEGER_BITS)                       # Q12.19
    # int32 accumulation with wrap-around (mod 2^32 sum is order independent).
    sum_of_exps = wrap_int32(np.where(valid, terms, 0).sum(axis=-1, keepdims=True))
    shifted_scale, num_bits_over_unit = get_reciprocal(sum_of_exps, _SOFTMAX_ACCUM_INTEGER_BITS)
    exponent = num_bits_over_unit + 31 - 8
    return valid, exp_in_0, shifted_scale, exponent


def softmax_int8_aborts(x: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """Boolean over the leading axes: rows on which TFLM's int8 softmax hits
    ``TFLITE_CHECK(0 <= exponent && exponent <= 31)`` and aborts the program.

    exponent = floor(log2(sum of exps)) + 23, so this happens when the fixed-point sum of
    exp(beta * scale * (x - max)) reaches 512, i.e. only for depth >= 512 with a flat row.
    """
    _, _, _, exponent = _softmax_core(x, p)
    return ((exponent < 0) | (exponent > 31))[..., 0]


def softmax_int8(x: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """reference_ops::Softmax<int8_t, int8_t> (reference/softmax.h), along the last axis.

    TFLM's micro SOFTMAX calls this reference kernel for int8 -> int8.  Raises ArithmeticError
    if any row would make TFLM abort (see :func:`softmax_int8_aborts`).
    """
    valid, exp_in_0, shifted_scale, exponent = _softmax_core(x, p)
    bad = (exponent < 0) | (exponent > 31)
    if np.any(bad):
        raise ArithmeticError(
            f"softmax: {int(bad.sum())} row(s) fail TFLITE_CHECK(0 <= exponent <= 31) "
            "(sum of exps >= 512): TFLM aborts")
    unsat = rounding_divide_by_pot(fixed_mul(shifted_scale, exp_in_0), exponent)
    out = np.clip(unsat - 128, -128, 127)
    out = np.where(valid, out, -128)
    return out.astype(np.int8)


def _act_int8(x, zp, radius, m, shift, fn, out_shift, out_zp) -> np.ndarray:
    xi = np.asarray(x).astype(np.int64)
    inp = xi - zp
    in_q4 = multiply_by_quantized_multiplier(
        np.where((inp > -radius) & (inp < radius), inp, 0), m, shift)
    out_q0 = fn(in_q4, _ACT_INPUT_INTEGER_BITS)
    out = np.clip(rounding_divide_by_pot(out_q0, out_shift) + out_zp, -128, 127)
    out = np.where(inp <= -radius, -128, np.where(inp >= radius, 127, out))
    return out.astype(np.int8)


def logistic_int8(x: np.ndarray, p: LogisticParams) -> np.ndarray:
    """reference_integer_ops::Logistic (int8), which TFLM's LOGISTIC runs for int8 (no LUT)."""
    return _act_int8(x, p.input_zero_point, p.input_range_radius, p.input_multiplier,
                     p.input_left_shift, logistic, 31 - 8, -128)


def tanh_int8(x: np.ndarray, p: TanhParams) -> np.ndarray:
    """reference_integer_ops::Tanh (int8), which TFLM's TANH runs for int8 (no LUT)."""
    return _act_int8(x, p.input_zero_point, p.input_range_radius, p.input_multiplier,
                     p.input_left_shift, tanh, 31 - 7, 0)


_ALL_INT8 = np.arange(-128, 128, dtype=np.int64).astype(np.int8)


def logistic_table(p: LogisticParams) -> np.ndarray:
    """int8[256]: entry i = TFLM LOGISTIC output for input int8 value i - 128 (use table[x + 128])."""
    return logistic_int8(_ALL_INT8, p)


def tanh_table(p: TanhParams) -> np.ndarray:
    """int8[256]: entry i = TFLM TANH output for input int8 value i - 128 (use table[x + 128])."""
    return tanh_int8(_ALL_INT8, p)
