"""Hand-written Python reference for what `toolchain.execute` does not model: SOFTMAX built with
TFLITE_SINGLE_ROUNDING (the executor's softmax is the default double-rounding recipe).
Everything else is checked against toolchain.execute directly."""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---- gemmlowp fixed point on Python ints (C semantics spelled out) -------------------------

def _tdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _wrap32(v: int) -> int:
    return ((v + 2**31) & 0xFFFFFFFF) - 2**31


def srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _tdiv(ab + nudge, 1 << 31)


def rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def _mul_pot(x: int, e: int) -> int:
    if e > 0:
        thr = (1 << (31 - e)) - 1
        if x > thr:
            return INT32_MAX
        if x < -thr:
            return INT32_MIN
        return _wrap32(x << e)
    return rdbpot(x, -e) if e < 0 else x


def _exp_interval(a: int) -> int:
    c, third = 1895147668, 715827883
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    poly = _mul_pot(srdhm(_mul_pot(x4, -2) + x3, third) + x2, -1)
    return c + srdhm(c, x + poly)


def exp_on_negative_values_q5(a: int) -> int:
    quarter = 1 << 24
    amq = (a & (quarter - 1)) - quarter
    result = _exp_interval(_mul_pot(amq, 5))
    rem = amq - a
    for k, m in zip(range(-2, 5), (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242),
                    strict=True):
        if rem & (1 << (26 + k)):
            result = srdhm(result, m)
    return INT32_MAX if a == 0 else result


def _one_over_one_plus_x(a: int) -> int:
    s = a + INT32_MAX
    half = _tdiv(s + (1 if s >= 0 else -1), 2)
    x = 1515870810 + srdhm(half, -1010580540)
    for _ in range(3):
        x = x + _mul_pot(srdhm(x, (1 << 29) - srdhm(half, x)), 2)
    return _mul_pot(x, 1)


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """TFLM softmax Prepare for int8: PreprocessSoftmaxScaling(beta, s, 5) and diff_min."""
    real = min(beta * input_scale * (1 << 26), (1 << 31) - 1.0)
    q, e = math.frexp(real)
    m = int(math.copysign(math.floor(abs(q * (1 << 31)) + 0.5), q))
    if m == 1 << 31:
        m //= 2
        e += 1
    radius = math.floor(1.0 * ((1 << 5) - 1) * (1 << 26) / (1 << e))
    return m, e, -radius


def softmax_tflm(x: np.ndarray, mult: int, left_shift: int, diff_min: int, single: bool) -> np.ndarray:
    """reference_ops::Softmax<int8_t, int8_t>, row by row."""
    def rescale(d: int) -> int:
        if single:
            tot = 31 - left_shift
            return (d * mult + (1 << (tot - 1))) >> tot
        return srdhm(_wrap32(d << left_shift), mult)

    out = np.empty_like(x)
    for r, row in enumerate(x.astype(int)):
        mx = max(int(v) for v in row)
        total = 0
        for v in row:
            d = int(v) - mx
            if d >= diff_min:
                total += rdbpot(exp_on_negative_values_q5(rescale(d)), 12)
        hp1 = 32 - total.bit_length()
        nbou = 12 - hp1
        scale = _one_over_one_plus_x(_wrap32(((total << hp1) & 0xFFFFFFFF) - (1 << 31)))
        for c, v in enumerate(row):
            d = int(v) - mx
            if d >= diff_min:
                u = rdbpot(srdhm(scale, exp_on_negative_values_q5(rescale(d))), nbou + 23)
                out[r, c] = min(max(u - 128, -128), 127)
            else:
                out[r, c] = -128
    return out
