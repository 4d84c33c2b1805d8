"""Vectorised building blocks the op kernels share, exact by construction.

Arrays are (B, *tensor.shape): the tensor's own batch dimension (1) is kept, the extra leading
axis runs a whole batch at once.

Speed without giving up exactness:
- Dot products run in floating-point BLAS on integer values. A float sum of integers is exact
  while every partial sum stays below 2^24 (float32) or 2^53 (float64) in magnitude, in any
  summation order, FMA or not. Every partial sum of sum_k w_k (x_k + offset) is bounded by
  max|x + offset| * sum_k |w_k| per output channel; `exact_float` picks float32 when that bound
  (plus the bias, added in the same dtype) is below 2^24 for the layer, float64 otherwise.
- Work runs in batch chunks so that accumulators and requantization stay in cache.
- Requantization is arith.ClampedRequant: MBQM, output offset and clamp in one compiled pass.
- Functions of one or two int8 inputs with per-tensor parameters are tabulated once (256 or
  65536 entries, computed with the op's own integer recipe) and looked up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from toolchain.arith import ClampedRequant, Rounding
from toolchain.ops.common import Requant

# Elements of int64/float accumulator per chunk: big enough for BLAS, small enough for cache.
CHUNK_ELEMS = 1 << 16
_F32_EXACT = float(1 << 24)
_F64_EXACT = float(1 << 53)


def input_magnitude(offset: int) -> int:
    """max |x + offset| over int8 x (padding contributes 0)."""
    return max(abs(-128 + offset), abs(127 + offset))


def exact_float(offset: int, w_abs_sum: np.ndarray, bias: np.ndarray) -> type[np.floating]:
    """float32 when every partial sum (bias included) is provably below 2^24, else float64."""
    bound = input_magnitude(offset) * np.asarray(w_abs_sum, dtype=np.float64)
    bound = bound + np.abs(bias.astype(np.float64))
    top = float(bound.max()) if bound.size else 0.0
    if top < _F32_EXACT:
        return np.float32
    if top < _F64_EXACT:
        return np.float64
    raise OverflowError("dot product does not fit float64 exactly")  # impossible for int8 x int8 < 2^31


class OutputStage:
    """acc (+ bias, float, exact) -> MBQM per channel + output offset, clamped, int8
    (arith.ClampedRequant: constants folded once, one compiled pass per call)."""

    def __init__(self, r: Requant, rounding: Rounding) -> None:
        self.requant = ClampedRequant(r.multiplier, r.shift, rounding, r.output_offset, r.act_min, r.act_max)

    def __call__(self, acc_float: np.ndarray, out: np.ndarray) -> None:
        channels = acc_float.shape[-1]
        self.requant(acc_float.reshape(-1, channels), out.reshape(-1, channels))


def batch_step(batch: int, per_item: int, elems: int = CHUNK_ELEMS) -> int:
    """Items per chunk so that a chunk holds about `elems` accumulator elements."""
    return max(1, min(batch, elems // max(1, per_item)))


@njit(cache=True, nogil=True)
def column_ranges(x):  # pragma: no cover - compiled
    """Smallest and largest value of each column of x (rows, cols), in one pass over it."""
    lo = x[0].copy()
    hi = x[0].copy()
    for r in range(1, x.shape[0]):
        for c in range(x.shape[1]):
            v = x[r, c]
            lo[c] = min(lo[c], v)
            hi[c] = max(hi[c], v)
    return lo, hi


def padded(x: np.ndarray, offset, dtype, pad_hw, need_hw, fill=0) -> np.ndarray:
    """(b, H, W, C) int8 -> x + offset in `dtype`, padded with `fill` to at least need_hw."""
    b, h, w, c = x.shape
    top, left = pad_hw
    hp = max(need_hw[0], top + h)
    wp = max(need_hw[1], left + w)
    if top == 0 and left == 0 and hp == h and wp == w:
        xp = x.astype(dtype, order="C")  # band GEMMs read rows as contiguous runs
        if offset:
            xp += offset
        return xp
    xp = np.full((b, hp, wp, c), fill, dtype=dtype)
    inner = xp[:, top : top + h, left : left + w]
    inner[...] = x
    if offset:
        inner += offset
    return xp


def tap(xp: np.ndarray, fy: int, fx: int, stride, dilation, out_hw) -> np.ndarray:
    """The strided view of the padded input that filter tap (fy, fx) reads for every output."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out_hw
    return xp[:, fy * dh : fy * dh + (oh - 1) * sh + 1 : sh, fx * dw : fx * dw + (ow - 1) * sw + 1 : sw]


def need(kh, kw, stride, dilation, out_hw) -> tuple[int, int]:
    """Padded input height and width a (kh, kw) window needs for out_hw outputs."""
    return ((out_hw[0] - 1) * stride[0] + (kh - 1) * dilation[0] + 1,
            (out_hw[1] - 1) * stride[1] + (kw - 1) * dilation[1] + 1)


def aligned(x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """A batched operand (B, *shape) with its tensor shape right-aligned to the output's rank (ones inserted
    after the batch axis), so that numpy broadcasts the tensor axes as TFLite does and the batch axis
    with the batch axis (the tensor (8,) beside (1, 8): (B, 8) -> (B, 1, 8))."""
    missing = len(out_shape) - (x.ndim - 1)
    return x.reshape((x.shape[0],) + (1,) * missing + x.shape[1:]) if missing > 0 else x


def all_int8(*xs) -> bool:
    """Tables index by the int8 bit pattern; other integer arrays take the plain recipe."""
    return all(isinstance(x, np.ndarray) and x.dtype == np.int8 for x in xs)


def pair_table(recipe: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """int8 table T[u1 * 256 + u2] = recipe(x1, x2), u = x viewed as uint8 (x mod 256)."""
    v = np.arange(256, dtype=np.int64)
    v = np.where(v < 128, v, v - 256)  # value of the uint8 bit pattern as int8
    return recipe(v[:, None], v[None, :]).astype(np.int8).reshape(-1)


def lookup_pair(table: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """table[u1 * 256 + u2] over the broadcast shape, in cache-sized chunks of uint16 indices."""
    shape = np.broadcast_shapes(x1.shape, x2.shape)
    u1 = np.ascontiguousarray(np.broadcast_to(x1, shape)).view(np.uint8).reshape(-1)
    u2 = np.ascontiguousarray(np.broadcast_to(x2, shape)).view(np.uint8).reshape(-1)
    out = np.empty(u1.size, dtype=np.int8)
    step = CHUNK_ELEMS
    idx = np.empty(min(step, u1.size), dtype=np.uint16)
    for i in range(0, u1.size, step):
        n = min(step, u1.size - i)
        ii = idx[:n]
        np.left_shift(u1[i : i + n], 8, out=ii, dtype=np.uint16)
        ii |= u2[i : i + n]
        table.take(ii, out=out[i : i + n])
    return out.reshape(shape)


def lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """table[x + 128] for int8 x (a 256-entry table of an elementwise int8 function)."""
    return table.take(x.view(np.uint8).astype(np.intp) ^ 128)
