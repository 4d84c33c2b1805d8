"""Integer rounding primitives of TFLite int8 kernels, vectorised over numpy int64 arrays.

The one home of the gemmlowp / TFLM arithmetic (QuantizeMultiplier, SaturatingRoundingDoublingHighMul,
RoundingDivideByPOT, MultiplyByQuantizedMultiplier in both rounding flavours) and of what the merge
derives from it (the effective scale M * 2^(e-31) and the requantization error bound rho): the
executor's kernels, the fixed-point softmax / logistic / tanh recipes, the merged network, the
emitted C's constants and the tests all call these functions.

int64 holds every int32 intermediate and every int32 x int32 product exactly, so each function
reproduces the C arithmetic bit for bit (C division truncates toward zero; >> on a negative
int32 is arithmetic, as on every target we support).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from numba import njit

Rounding = Literal["double", "single"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_half_away(x: float) -> int:
    """std::round / TfLiteRound on a double: halves go away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def round_half_away_f32(x: npt.ArrayLike) -> np.ndarray:
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


def effective_scale(multiplier: npt.ArrayLike, shift: npt.ArrayLike) -> np.ndarray:
    """The real factor the device applies: M * 2^(e-31) (exact in float64 for int32 M)."""
    return np.asarray(multiplier, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)


def saturating_rounding_doubling_high_mul(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul: (a*b + 2^30) >> 31 rounding half up.

    C nudges a*b by 2^30 (or 1-2^30 when a*b < 0) and divides truncating toward zero. For a*b < 0
    that is ceil((a*b + 1 - 2^30) / 2^31) = floor((a*b + 1 - 2^30 + 2^31 - 1) / 2^31)
    = floor((a*b + 2^30) / 2^31), the same expression as for a*b >= 0: one add and one arithmetic
    shift for every sign. The only overflow, INT32_MIN * INT32_MIN, saturates to INT32_MAX."""
    a64 = np.asarray(a, dtype=np.int64)
    b64 = np.asarray(b, dtype=np.int64)
    q = (a64 * b64 + np.int64(1 << 30)) >> 31
    if np.any(b64 == INT32_MIN):
        q = np.where((a64 == INT32_MIN) & (b64 == INT32_MIN), np.int64(INT32_MAX), q)
    return q


def rounding_divide_by_pot(x: npt.ArrayLike, exponent: npt.ArrayLike) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero.

    For exponent e > 0 this is floor((x + 2^(e-1) - [x < 0]) / 2^e): ties go up for x >= 0 and
    down for x < 0; for e = 0 it is x. [x < 0] is -(x >> 63) (arithmetic shift)."""
    x64 = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    nudge = (np.int64(1) << e) >> 1
    neg = (x64 >> 63) & -(e > 0).astype(np.int64)  # -1 where x < 0 and e > 0
    return (x64 + nudge + neg) >> e


class Requantizer:
    """MultiplyByQuantizedMultiplier with per-channel (last axis) constants folded once, applied
    in place on a fresh int64 accumulator: a handful of passes over memory and no temporaries
    beyond one int64 array. Bit-identical to `multiply_by_quantized_multiplier`.

    double: x << left times M is the int64 product x * (M << left) (both exact: |x << left| < 2^31
    in the kernels, M < 2^31), then (p + 2^30) >> 31 (see saturating_rounding_doubling_high_mul),
    then rounding_divide_by_pot by right = max(-shift, 0). single: (x*M + 2^(30-shift)) >> (31-shift).
    """

    def __init__(self, multiplier, shift, rounding: Rounding = "double", offset: int = 0) -> None:
        m = np.asarray(multiplier, dtype=np.int64)
        s = np.asarray(shift, dtype=np.int64)
        m, s = np.broadcast_arrays(m, s)
        self.rounding = rounding
        self.offset = int(offset)
        # INT32_MIN multipliers never come out of quantize_multiplier; they take the general path.
        self.general = bool(np.any(m == INT32_MIN)) or bool(np.any(m < 0))
        self.multiplier, self.shift = m, s
        if rounding == "single":
            total = 31 - s
            self.mul = _uniform(m)
            # + offset folded in: floor((v + o * 2^t) / 2^t) = floor(v / 2^t) + o, while o * 2^t
            # stays far from int64 overflow (|v| < 2^62); otherwise added after the shift.
            fold = abs(self.offset) < (1 << 8) and int(total.max(initial=0)) <= 52
            self.post_offset = 0 if fold else self.offset
            folded = np.int64(self.offset if fold else 0) << total
            self.add = _uniform((np.int64(1) << (total - 1)) + folded)
            self.right = _uniform(total)
            return
        if abs(self.offset) >= (1 << 24):  # folding below needs o * 2^31 far from overflow
            self.general = True
        left = np.maximum(s, 0)
        right = np.maximum(-s, 0)
        self.mul = _uniform(m << left)
        self.right = _uniform(right)
        self.any_right = bool(np.any(right > 0))
        self.all_right = bool(np.all(right > 0))
        # + offset folded into the last shift's addend, as for single rounding
        self.nudge = _uniform(((np.int64(1) << right) >> 1) + (np.int64(self.offset) << right))
        self.high_add = np.int64((1 << 30) + (0 if self.any_right else self.offset << 31))
        self.neg_mask = _uniform(-(right > 0).astype(np.int64))

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """MBQM of `acc` plus offset (`acc`: an int64 array this call may overwrite); returns int64."""
        if self.general:
            y = multiply_by_quantized_multiplier_reference(acc, self.multiplier, self.shift, self.rounding)
            return y + self.offset
        y = acc
        y *= self.mul
        if self.rounding == "single":
            y += self.add
            y >>= self.right
            if self.post_offset:
                y += self.post_offset
            return y
        y += self.high_add
        y >>= 31
        if self.any_right:
            t = y >> 63
            if not self.all_right:
                t &= self.neg_mask
            t += self.nudge
            y += t
            y >>= self.right
        return y


@njit(cache=True, nogil=True)
def _requantize_clamp(acc, mul, add, right, mask, double, offset, lo, hi, out):  # pragma: no cover - compiled
    """out[r, c] = clamp(MBQM(acc[r, c]) + offset, lo, hi), branch-free per element so that the
    compiler vectorises it over the channels (constants per channel, folded by requantize_clamp):
    double: h = (x * (M << left) + 2^30) >> 31 (SaturatingRoundingDoublingHighMul, which never
    saturates for M != INT32_MIN), then RoundingDivideByPOT as (h + nudge + [h < 0 and right > 0]*(-1))
    >> right, nudge = 2^(right-1) (`add`), halves away from zero; single: (x * M + 2^(30-e)) >> (31-e).
    >> on int64 is arithmetic, as the target's >> on int32. acc holds exact integers (float or int)."""
    rows, cols = acc.shape
    for r in range(rows):
        for c in range(cols):
            x = np.int64(acc[r, c])
            if double:
                h = (x * mul[c] + np.int64(1 << 30)) >> 31
                h = (h + add[c] + ((h >> 63) & mask[c])) >> right[c]
            else:
                h = (x * mul[c] + add[c]) >> right[c]
            y = h + offset
            out[r, c] = min(max(y, lo), hi)


# The lane kernel's offsets (see _requantize_clamp_lanes): v + 2^62 and h + 2^40 are nonnegative for every
# value the fast path admits, and 2^62, 2^40 are multiples of every power of two they are shifted by.
_LANE_BIAS1 = 1 << 62
_LANE_BIAS2 = 1 << 40


@njit(cache=True, nogil=True)
def _requantize_clamp_lanes(acc, mul, add1, right1, sub1, mask, add2, right2, sub2, lo, hi,
                            out):  # pragma: no cover - compiled
    """_requantize_clamp for accumulators held exactly in float32 (|acc| < 2^24) and multipliers below
    2^31 with no left shift, written for the vector units: AVX2 and NEON have a 32 x 32 -> 64-bit
    multiply and logical 64-bit shifts but no arithmetic one, so every floor(v / 2^k) is taken as
    ((v + B) >>> k) - B / 2^k with B a multiple of 2^k that makes v + B nonnegative (exact: adding a
    multiple of 2^k commutes with the floor). Stage 1: h = floor((x M + add) / 2^right1), the high
    multiply (double rounding) or the whole MBQM (single); stage 2: RoundingDivideByPOT with the
    output offset folded in (double; identity plus offset for single). Measured on 8192 x 50: 1.2 ns an
    element against 2.3 for the int64 kernel, which the compiler leaves scalar."""
    rows, cols = acc.shape
    for r in range(rows):
        a = acc[r]
        o = out[r]
        for c in range(cols):
            x = np.int64(np.int32(a[c]))
            h = np.int64(np.uint64(x * np.int64(mul[c]) + add1[c]) >> np.uint64(right1[c])) - sub1[c]
            neg = np.int64(np.uint64(h) >> np.uint64(63)) & mask[c]  # 1 where h < 0 and right > 0
            y = np.int64(np.uint64(h + add2[c] - neg) >> np.uint64(right2[c])) - sub2[c]
            o[c] = min(max(y, lo), hi)


class ClampedRequant:
    """The kernels' output stage with its per-channel constants folded once: out = clamp(MBQM(acc) +
    offset, lo, hi), MBQM per channel of acc's last axis (one compiled pass where the Requantizer makes
    several). acc (rows, channels) holds exact integers; `out` is any integer dtype holding [lo, hi].
    Multipliers outside [0, 2^31) (never made by quantize_multiplier) take the Requantizer's path."""

    def __init__(self, multiplier, shift, rounding: Rounding, offset: int, lo: int, hi: int) -> None:
        m = np.atleast_1d(np.asarray(multiplier, dtype=np.int64))
        e = np.atleast_1d(np.asarray(shift, dtype=np.int64))
        m, e = np.broadcast_arrays(m, e)
        self.multiplier, self.shift, self.rounding = m, e, rounding
        self.offset, self.lo, self.hi = int(offset), int(lo), int(hi)
        self.general = bool(np.any(m < 0) or np.any(m == INT32_MIN))
        self._wide: dict[int, ClampedRequant] = {}
        if self.general:
            return
        if rounding == "double":
            right = np.maximum(-e, 0)
            mul, add = m << np.maximum(e, 0), (np.int64(1) << right) >> 1
            mask = -(right > 0).astype(np.int64)
        else:
            right = 31 - e
            mul, add, mask = m, np.int64(1) << (right - 1), np.zeros_like(e)
        self._scalar = tuple(np.ascontiguousarray(a) for a in (mul, add, right, mask))
        self._lanes = self._lane_constants(m, e, rounding)

    def _lane_constants(self, m: np.ndarray, e: np.ndarray, rounding: Rounding) -> tuple | None:
        """Constants of _requantize_clamp_lanes, or None where its bounds do not hold: double rounding
        with a left shift (M << left passes 31 bits), single rounding with a shift past 15 (|h| could
        reach 2^40), an offset of 2^8 or more (|offset| 2^right must stay below 2^40 - 2^24)."""
        if abs(self.offset) >= 1 << 8:
            return None
        one = np.int64(1)
        if rounding == "double":
            if np.any(e > 0):
                return None
            right2 = -e
            add1 = np.full(m.shape, (1 << 30) + _LANE_BIAS1, dtype=np.int64)
            right1 = np.full(m.shape, 31, dtype=np.int64)
            mask = (right2 > 0).astype(np.int64)
            add2 = ((one << right2) >> 1) + (np.int64(self.offset) << right2) + _LANE_BIAS2
        else:
            if np.any(e > 15):
                return None
            right1 = 31 - e
            add1 = (one << (right1 - 1)) + _LANE_BIAS1
            right2 = np.zeros(m.shape, dtype=np.int64)
            mask = np.zeros(m.shape, dtype=np.int64)
            add2 = np.full(m.shape, self.offset + _LANE_BIAS2, dtype=np.int64)
        sub1 = np.int64(_LANE_BIAS1) >> right1
        sub2 = np.int64(_LANE_BIAS2) >> right2
        return tuple(np.ascontiguousarray(a) for a in
                     (m.astype(np.int32), add1, right1, sub1, mask, add2, right2, sub2))

    @property
    def monotone(self) -> bool:
        """Non-decreasing in acc (every multiplier in [0, 2^31): both MBQM stages are floors of
        non-decreasing functions, and offset and clamp keep the order). An accumulator range then
        maps to the output range of its two ends."""
        return not self.general

    def take(self, channels: np.ndarray) -> ClampedRequant:
        """The stage of some of its channels (a boolean mask or indices), constants sliced, not
        folded again (the executor takes one per chunk of a batch)."""
        if self.multiplier.size == 1:  # per-tensor: the same stage for any channels
            return self
        part = copy.copy(self)
        part.multiplier, part.shift = self.multiplier[channels], self.shift[channels]
        part._wide = {}
        if not self.general:
            part._scalar = tuple(np.ascontiguousarray(a[channels]) for a in self._scalar)
            if self._lanes is not None:
                part._lanes = tuple(np.ascontiguousarray(a[channels]) for a in self._lanes)
        return part

    def __call__(self, acc: np.ndarray, out: np.ndarray) -> None:
        if self.general:
            requantizer = Requantizer(self.multiplier, self.shift, self.rounding, self.offset)
            y = requantizer(np.asarray(acc).astype(np.int64))
            out[...] = np.clip(y, self.lo, self.hi)
            return
        channels = acc.shape[-1]
        if channels != self.multiplier.size:  # per-tensor constants: one copy per channel, built once
            wide = self._wide.get(channels)
            if wide is None:
                wide = self._wide[channels] = ClampedRequant(
                    np.broadcast_to(self.multiplier, (channels,)), np.broadcast_to(self.shift, (channels,)),
                    self.rounding, self.offset, self.lo, self.hi)
            wide(acc, out)
            return
        lo, hi = np.int64(self.lo), np.int64(self.hi)
        if self._lanes is not None and acc.dtype == np.float32:
            mul32, add1, right1, sub1, neg_mask, add2, right2, sub2 = self._lanes
            _requantize_clamp_lanes(acc, mul32, add1, right1, sub1, neg_mask, add2, right2, sub2, lo, hi,
                                    out)
            return
        mul, add, right, mask = self._scalar
        double = self.rounding == "double"
        _requantize_clamp(acc, mul, add, right, mask, double, np.int64(self.offset), lo, hi, out)


def requantize_clamp(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, rounding: Rounding,
                     offset: int, lo: int, hi: int, out: np.ndarray) -> None:
    """ClampedRequant(multiplier, shift, rounding, offset, lo, hi)(acc, out): per-channel or per-tensor
    constants over acc's channels (the last axis)."""
    ClampedRequant(multiplier, shift, rounding, offset, lo, hi)(acc, out)


def _uniform(a: np.ndarray):
    """A per-channel constant as a scalar when all channels agree (cheaper broadcasting)."""
    a = np.asarray(a, dtype=np.int64)
    if a.size and np.all(a == a.flat[0]):
        return np.int64(a.flat[0])
    return a


def multiply_by_quantized_multiplier(
    x: npt.ArrayLike, multiplier: npt.ArrayLike, shift: npt.ArrayLike, rounding: Rounding = "double"
) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (common.h): round(x * M * 2^(shift-31)) as the target does.

    double: SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (TFLM, CMSIS-NN default);
    single: (x*M + 2^(30-shift)) >> (31-shift) in int64 (TFLITE_SINGLE_ROUNDING builds).
    """
    xs = np.asarray(x, dtype=np.int64)
    r = Requantizer(multiplier, shift, rounding)
    if xs.ndim == 0 or r.general or np.broadcast_shapes(xs.shape, r.multiplier.shape) != xs.shape:
        return multiply_by_quantized_multiplier_reference(xs, multiplier, shift, rounding)
    return r(np.array(xs, dtype=np.int64, copy=True))


def multiply_by_quantized_multiplier_reference(
    x: npt.ArrayLike, multiplier: npt.ArrayLike, shift: npt.ArrayLike, rounding: Rounding = "double"
) -> np.ndarray:
    """The plain composition of the primitives, as common.h writes it (no in-place tricks)."""
    xs = np.asarray(x, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    e = np.asarray(shift, dtype=np.int64)
    if rounding == "single":
        total = 31 - e
        return (xs * m + (np.int64(1) << (total - 1))) >> total
    left = np.maximum(e, 0)
    right = np.maximum(-e, 0)
    # x * (1 << left) is an int32 product in C; models in range never overflow it.
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs << left, m), right)


def requant_error_bound(shift: npt.ArrayLike, rounding: Rounding = "double") -> np.ndarray:
    """Worst-case |MBQM(acc) - acc*M*2^(e-31)| over all int32 acc: the rho of DESIGN.md.

    double rounding: 1/2 from the final RoundingDivideByPOT plus up to 1/2 LSB of the high-mul,
    scaled by 2^-R with R = max(-e, 0): 1/2 + 2^-(R+1) (just 1/2 when R = 0). single: 1/2.
    """
    e = np.asarray(shift, dtype=np.float64)
    if rounding == "single":
        return np.full(e.shape, 0.5)
    r = np.maximum(-e, 0.0)
    # R = 0: the high-mul's own round-half-up is the only rounding.
    return np.where(r > 0, 0.5 + np.exp2(-(r + 1.0)), 0.5)
