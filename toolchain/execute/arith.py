"""Integer rounding primitives of TFLite int8 kernels, vectorised over numpy int64 arrays.

int64 holds every int32 intermediate and every int32 x int32 product exactly, so each function
reproduces the C arithmetic bit for bit (C division truncates toward zero; >> on a negative
int32 is arithmetic, as on every target we support).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Rounding = Literal["double", "single"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_half_away(x: float) -> int:
    """std::round / TfLiteRound on a double: halves go away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def round_half_away_f32(x: np.ndarray) -> np.ndarray:
    """roundf on float32 values (input quantization, activation ranges, MEAN).

    Computed as trunc(x) + (|x - trunc(x)| >= 1/2) * sign(x), where every step is exact in
    float32; floor(x + 0.5) would be wrong for x just below a half (x + 0.5 rounds up)."""
    x = np.asarray(x, dtype=np.float32)
    t = np.trunc(x)
    return (t + np.where(np.abs(x - t) >= np.float32(0.5), np.sign(x), np.float32(0))).astype(np.float32)


def quantize_multiplier(real: float, rounding: Rounding = "double") -> tuple[int, int]:
    """QuantizeMultiplier (quantization_util.cc): real ~= M * 2^(e-31), M in [2^30, 2^31).

    Returns (M, e) where e is TFLite's `shift` (positive = left shift). The device computes with
    M and e, not with `real`: everything downstream must use these two integers.
    """
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    m = round_half_away(q * (1 << 31))
    if m == 1 << 31:
        m //= 2
        e += 1
    if e < -31:
        return 0, 0
    if rounding == "single" and e > 30:
        # Single-rounding builds cannot shift left by more than 30: saturate (quantization_util.cc).
        return (1 << 31) - 1, 30
    return m, e


def effective_scale(multiplier: int | np.ndarray, shift: int | np.ndarray) -> np.ndarray:
    """The real factor the device applies: M * 2^(e-31) (exact in float64 for int32 M)."""
    return np.asarray(multiplier, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul: (a*b + 2^30) >> 31 rounding half up,
    computed as C does: nudge 2^30 or 1-2^30 by the sign of a*b, then truncating division.
    The only overflow, INT32_MIN * INT32_MIN, saturates to INT32_MAX."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    num = ab + nudge
    # C++ integer division truncates toward zero.
    q = np.where(num >= 0, num >> 31, -((-num) >> 31))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), q)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int, rounding: Rounding = "double"
) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (common.h): round(x * M * 2^(shift-31)) as the target does.

    double: SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (TFLM, CMSIS-NN default);
    single: (x*M + 2^(30-shift)) >> (31-shift) in int64 (TFLITE_SINGLE_ROUNDING builds).
    """
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if rounding == "single":
        total = 31 - shift
        return (x * multiplier + (np.int64(1) << (total - 1))) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    # x * (1 << left) is an int32 product in C; models in range never overflow it.
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, multiplier), right)


def requant_error_bound(shift: np.ndarray | int, rounding: Rounding = "double") -> np.ndarray:
    """Worst-case |MBQM(acc) - acc*M*2^(e-31)| over all int32 acc: the rho of DESIGN.md.

    double rounding: 1/2 from the final RoundingDivideByPOT plus up to 1/2 LSB of the high-mul,
    scaled by 2^-R with R = max(-e, 0): 1/2 + 2^-(R+1) (just 1/2 when R = 0). single: 1/2.
    """
    shift = np.asarray(shift, dtype=np.float64)
    if rounding == "single":
        return np.full(shift.shape, 0.5)
    r = np.maximum(-shift, 0.0)
    # R = 0: the high-mul's own round-half-up is the only rounding.
    return np.where(r > 0, 0.5 + np.exp2(-(r + 1.0)), 0.5)
