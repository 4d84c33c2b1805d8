"""The executor's fast paths against straightforward references, on random data (no timings here).

The fast paths (arith.Requantizer's folded in-place passes, per-tap float32/float64 matmuls,
tabulated ADD/MUL/QUANTIZE) must equal plain integer code bit for bit. References below use
Python integers with C semantics, or int64 numpy with no float and no in-place tricks.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolchain import arith
from toolchain.arith import Rounding
from toolchain.ops import add as add_op
from toolchain.ops import conv as conv_op
from toolchain.ops import fully_connected as fc_op
from toolchain.ops import mul as mul_op
from toolchain.ops import pooling as pool_op
from toolchain.ops import quantize as quantize_op
from toolchain.ops.common import Requant

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---- Python-int references with C semantics (common.h, gemmlowp) ---------------------------------

def _srdhm(a: int, b: int) -> int:
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    n = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    q = abs(n) >> 31  # C division truncates toward zero
    return q if n >= 0 else -q


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    return (x >> e) + (1 if (x & mask) > (mask >> 1) + (1 if x < 0 else 0) else 0)


def _mbqm(x: int, m: int, shift: int, rounding: Rounding) -> int:
    if rounding == "single":
        total = 31 - shift
        return (x * m + (1 << (total - 1))) >> total
    return _rdbpot(_srdhm(x * (1 << max(shift, 0)), m), max(-shift, 0))


def _random_int32(rng, n: int) -> np.ndarray:
    edge = np.array([0, 1, -1, 2, -2, INT32_MIN, INT32_MAX, INT32_MIN + 1, 1 << 30, -(1 << 30)],
                    dtype=np.int64)
    wide = rng.integers(INT32_MIN, INT32_MAX, size=n, endpoint=True)
    small = rng.integers(-5000, 5000, size=n)
    return np.concatenate([edge, wide, small])


def test_srdhm_and_rdbpot_match_c_semantics() -> None:
    rng = np.random.default_rng(0)
    a = _random_int32(rng, 3000)
    b = np.concatenate([a[::-1][:10], rng.integers(INT32_MIN, INT32_MAX, size=a.size - 10, endpoint=True)])
    got = arith.saturating_rounding_doubling_high_mul(a, b)
    assert got.tolist() == [_srdhm(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    for e in (0, 1, 2, 5, 17, 30, 31):
        got = arith.rounding_divide_by_pot(a, e)
        assert got.tolist() == [_rdbpot(int(x), e) for x in a], e


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantizer_per_channel_matches_c_semantics(rounding: Rounding) -> None:
    rng = np.random.default_rng(1)
    channels = 7
    mult = rng.integers(1 << 30, 1 << 31, size=channels)
    last = -3 if rounding == "double" else 30
    shifts = np.array([-31, -12, -1, 0, 1, 5, last])
    for offset in (0, -128, 37):
        # x << left stays an int32, as in the kernels
        limit = (1 << 31) >> int(max(shifts.max(), 0))
        x = rng.integers(-limit, limit, size=(400, channels))
        x[0] = -limit
        x[1] = limit - 1
        want = [[_mbqm(int(x[i, c]), int(mult[c]), int(shifts[c]), rounding) + offset
                 for c in range(channels)] for i in range(x.shape[0])]
        got = arith.Requantizer(mult, shifts, rounding, offset=offset)(x.copy())
        assert got.tolist() == want
        if offset == 0:
            assert arith.multiply_by_quantized_multiplier(x, mult, shifts, rounding).tolist() == want


@pytest.mark.parametrize("shift", [-31, -20, -7, -1, 0, 3])
def test_requantizer_uniform_matches_c_semantics(shift: int) -> None:
    rng = np.random.default_rng(2)
    limit = (1 << 31) >> max(shift, 0)
    x = np.concatenate([rng.integers(-limit, limit, size=2000), [-limit, limit - 1, 0, -1, 1]])
    for m in (1 << 30, (1 << 31) - 1, int(rng.integers(1 << 30, 1 << 31))):
        for rounding in ("double", "single"):
            want = [_mbqm(int(v), m, shift, rounding) - 5 for v in x]
            assert arith.Requantizer(m, shift, rounding, offset=-5)(x.copy()).tolist() == want


# ---- kernels against int64 references --------------------------------------------------------------

def _ref_requant(acc: np.ndarray, r: Requant, rounding: Rounding) -> np.ndarray:
    y = arith.multiply_by_quantized_multiplier_reference(acc, r.multiplier, r.shift, rounding)
    y = y + r.output_offset
    return np.clip(y, r.act_min, r.act_max).astype(np.int8)


def _ref_conv(x: np.ndarray, p: conv_op.Conv, rounding: Rounding) -> np.ndarray:
    """Direct int64 convolution: zero-padded (x + offset), one integer einsum per tap."""
    b, h, w, c = x.shape
    kh, kw = p.weights.shape[1:3]
    (sh, sw), (dh, dw), (oh, ow), (top, left) = p.stride, p.dilation, p.out_hw, p.padding
    hp = max((oh - 1) * sh + (kh - 1) * dh + 1, top + h)
    wp = max((ow - 1) * sw + (kw - 1) * dw + 1, left + w)
    xp = np.zeros((b, hp, wp, c), dtype=np.int64)
    xp[:, top : top + h, left : left + w] = x.astype(np.int64) + p.input_offset
    n_out = p.bias.shape[0]
    acc = np.zeros((b, oh, ow, n_out), dtype=np.int64)
    for fy in range(kh):
        for fx in range(kw):
            sl = xp[:, fy * dh : fy * dh + (oh - 1) * sh + 1 : sh, fx * dw : fx * dw + (ow - 1) * sw + 1 : sw]
            if p.depthwise:
                m = p.depth_multiplier
                tap = p.weights[0, fy, fx].reshape(c, m)
                acc += (sl[..., :, None] * tap).reshape(b, oh, ow, n_out)
            else:
                acc += np.einsum("bhwc,oc->bhwo", sl, p.weights[:, fy, fx, :])
    return _ref_requant(acc + p.bias, p.requant, rounding)


def _requant_record(rng, n_out: int, per_channel: bool) -> Requant:
    n = n_out if per_channel else 1
    mult = rng.integers(1 << 30, 1 << 31, size=n)
    shift = rng.integers(-14, -4, size=n)
    return Requant(mult, shift, int(rng.integers(-128, 128)), -128, int(rng.integers(0, 128)))


CONV_CASES = [
    # depthwise, c_in, n_out or multiplier, k, stride, dilation, padding, (h, w), heavy weights
    (False, 3, 8, 3, (1, 1), (1, 1), (1, 1), (9, 9), False),
    (False, 5, 6, 3, (2, 2), (1, 1), (0, 1), (10, 9), False),
    (False, 4, 4, 3, (1, 1), (2, 2), (2, 2), (8, 8), False),
    (False, 4, 3, 1, (2, 2), (1, 1), (0, 0), (7, 7), False),
    (False, 3, 5, 3, (1, 1), (1, 1), (0, 0), (10, 10), False),  # VALID, whole tiles: no padded copy
    (False, 64, 5, 3, (1, 1), (1, 1), (1, 1), (5, 5), True),  # 576 taps of 127 * 255: float64
    (True, 3, 1, 3, (1, 1), (1, 1), (1, 1), (8, 8), False),
    (True, 3, 2, 3, (2, 2), (1, 1), (1, 0), (9, 8), False),
    (True, 2, 1, 5, (1, 1), (2, 2), (4, 4), (7, 7), False),
    # more than ConvPlan.BAND_MAX_CHANNELS input channels: the per-tap path
    (False, 12, 7, 3, (2, 1), (1, 2), (1, 2), (9, 9), False),
    (True, 12, 1, 3, (1, 2), (1, 1), (1, 1), (8, 9), False),
    (True, 10, 2, 3, (1, 1), (2, 1), (2, 1), (8, 8), False),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_conv_fast_path_equals_int64_reference(case, rounding: Rounding) -> None:
    depthwise, c_in, n, k, stride, dilation, padding, (h, w), heavy = case
    rng = np.random.default_rng(hash(case) % 2**32)
    n_out = c_in * n if depthwise else n
    shape = (1, k, k, n_out) if depthwise else (n_out, k, k, c_in)
    if heavy:
        weights = np.full(shape, 127) * rng.choice([-1, 1], size=shape)
    else:
        weights = rng.integers(-127, 128, shape)
    oh = (h + 2 * padding[0] - dilation[0] * (k - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (k - 1) - 1) // stride[1] + 1
    offset = 128 if heavy else int(rng.integers(-127, 129))
    bias = rng.integers(-5000, 5000, n_out).astype(np.int64)
    p = conv_op.Conv(depthwise, offset, weights.astype(np.int64), bias, _requant_record(rng, n_out, True),
                     stride, dilation, padding, (oh, ow), n if depthwise else 1, True)
    if heavy:
        assert conv_op.plan(p, rounding).dtype == np.float64
    x = rng.integers(-128, 128, size=(37, 1, h, w, c_in)).astype(np.int8)
    x[0] = -128
    x[1] = 127
    got = conv_op.conv(x, p, rounding)
    assert got.dtype == np.int8
    assert np.array_equal(conv_op.conv(np.asfortranarray(x), p, rounding), got)  # any memory layout
    assert np.array_equal(got.reshape(37, oh, ow, n_out), _ref_conv(x.reshape(37, h, w, c_in), p, rounding))


@pytest.mark.parametrize("heavy", [False, True])
def test_fully_connected_fast_path_equals_int64_reference(heavy: bool) -> None:
    rng = np.random.default_rng(3)
    n_in, n_out = (700, 9) if heavy else (40, 11)
    w = (127 * rng.choice([-1, 1], size=(n_out, n_in))) if heavy else rng.integers(-127, 128, (n_out, n_in))
    offset = -127 if heavy else 17
    p = fc_op.FullyConnected(offset, w.astype(np.int64), rng.integers(-9000, 9000, n_out).astype(np.int64),
                         _requant_record(rng, n_out, True), True)
    x = rng.integers(-128, 128, size=(300, 1, n_in)).astype(np.int8)
    acc = (x.reshape(300, n_in).astype(np.int64) + offset) @ w.T.astype(np.int64) + p.bias
    for rounding in ("double", "single"):
        got = fc_op.fully_connected(x, p, (1, n_out), rounding)
        assert np.array_equal(got.reshape(300, n_out), _ref_requant(acc, p.requant, rounding))


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("seed", range(6))
def test_fully_connected_pruned_chunks_equal_int64_reference(seed: int, rounding: Rounding,
                                                              monkeypatch) -> None:
    """Chunks of neighbouring inputs (most columns constant, as on the cells of a small box) run with
    their constant inputs folded into the bias and their provably constant outputs filled: bit for bit
    the int64 reference, and the pruned path is really taken (small chunks: several per batch)."""
    rng = np.random.default_rng(seed)
    n_in, n_out, batch = 30, 24, 500
    w = rng.integers(-127, 128, (n_out, n_in))
    bias = rng.integers(-20000, 8000, n_out).astype(np.int64)  # some outputs dead on every row
    p = fc_op.FullyConnected(int(rng.integers(-128, 129)), w.astype(np.int64), bias,
                             _requant_record(rng, n_out, bool(seed % 2)), True)
    base = rng.integers(-128, 128, n_in)
    moving = rng.random(n_in) < 0.3
    x = np.repeat(base[None], batch, axis=0)
    x[:, moving] += rng.integers(-3, 4, (batch, int(moving.sum())))
    x[: batch // 5] = rng.integers(-128, 128, (batch // 5, n_in))  # one chunk of unrelated rows
    x = np.clip(x, -128, 127).astype(np.int8)
    acc = (x.astype(np.int64) + p.input_offset) @ w.T.astype(np.int64) + bias
    taken = []
    pruned = fc_op._pruned
    monkeypatch.setattr(fc_op, "_pruned", lambda *a: taken.append(pruned(*a)) or taken[-1])
    monkeypatch.setattr(fc_op, "PRUNED_CHUNK_ELEMS", 100 * n_out)
    got = fc_op.fully_connected(x.reshape(batch, 1, n_in), p, (1, n_out), rounding)
    assert np.array_equal(got.reshape(batch, n_out), _ref_requant(acc, p.requant, rounding))
    assert any(taken) and not all(taken)


@pytest.mark.parametrize("average", [False, True])
def test_pool_equals_reference(average: bool) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, size=(20, 1, 7, 6, 3)).astype(np.int8)
    p = pool_op.Pool(average, (3, 2), (2, 2), (1, 0), (4, 3), -100, 120)
    got = pool_op.pool(x, p).reshape(20, 4, 3, 3)
    xs = x.reshape(20, 7, 6, 3).astype(np.int64)
    want = np.zeros_like(got, dtype=np.int64)
    for oy in range(4):
        for ox in range(3):
            ys = [oy * 2 - 1 + i for i in range(3) if 0 <= oy * 2 - 1 + i < 7]
            xs_ = [ox * 2 + j for j in range(2) if 0 <= ox * 2 + j < 6]
            win = xs[:, ys][:, :, xs_]
            if average:
                s, n = win.sum(axis=(1, 2)), len(ys) * len(xs_)
                num = np.where(s > 0, s + n // 2, s - n // 2)
                want[:, oy, ox] = np.sign(num) * (np.abs(num) // n)
            else:
                want[:, oy, ox] = win.max(axis=(1, 2))
    assert np.array_equal(got, np.clip(want, -100, 120).astype(np.int8))


def test_add_and_mul_tables_equal_their_recipes_with_broadcasting() -> None:
    rng = np.random.default_rng(5)
    a = add_op.Add(20, 7, -3, 1518500250, -1, 1932735283, -2, 1276901417, -17, -9, -128, 127)
    m = mul_op.Mul(-12, 100, 1644167168, -8, 4, -120, 110)
    x1 = rng.integers(-128, 128, size=(50, 1, 4, 4, 3)).astype(np.int8)
    x2 = rng.integers(-128, 128, size=(1, 1, 4, 4, 3)).astype(np.int8)
    for rounding in ("double", "single"):
        assert np.array_equal(add_op.add(x1, x2, a, rounding), add_op.add_recipe(x1, x2, a, rounding))
        assert np.array_equal(mul_op.mul(x1, x2, m, rounding), mul_op.mul_recipe(x1, x2, m, rounding))
        # int64 arrays of int8 values (as the firmware tests pass them) take the recipe, same values
        assert np.array_equal(add_op.add(x1.astype(np.int64), x2, a, rounding),
                              add_op.add(x1, x2, a, rounding))
        q = quantize_op.Quantize(False, 0.0, 5, -7, 1395864371, -1)
        assert np.array_equal(quantize_op.requantize(x1, q, rounding),
                              quantize_op.requantize_recipe(x1, q, rounding))
