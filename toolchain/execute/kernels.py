"""One pure integer recipe per op, vectorised over a leading batch axis.

Arrays are (B, *tensor.shape): the tensor's own batch dimension (1) is kept, the extra leading
axis runs a whole batch at once. Each function mirrors a TFLite Micro reference kernel
(tensorflow/lite/kernels/internal/reference/integer_ops/*.h); comments say which.
Dot products run in float64 BLAS: every partial sum is an integer below 2^53, so it is exact.
"""

from __future__ import annotations

import numpy as np

from toolchain.execute.arith import Rounding, multiply_by_quantized_multiplier, round_half_away_f32
from toolchain.tflite import prepare as P


def _requantize(acc: np.ndarray, r: P.Requant, rounding: Rounding) -> np.ndarray:
    """acc -> MBQM per channel (last axis) + output offset, clamped to the activation range."""
    y = multiply_by_quantized_multiplier(acc, r.multiplier, r.shift, rounding) + r.output_offset
    return np.clip(y, r.act_min, r.act_max).astype(np.int8)


def _exact_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def fully_connected(x: np.ndarray, p: P.FullyConnected, out_shape: tuple[int, ...], rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::FullyConnected(PerChannel): acc = sum w*(x+input_offset) + bias."""
    batch = x.shape[0]
    n_in = p.weights.shape[1]
    rows = x.reshape(batch, -1, n_in).astype(np.int64) + p.input_offset
    acc = _exact_dot(rows, p.weights.T) + p.bias
    return _requantize(acc, p.requant, rounding).reshape((batch,) + out_shape)


def _patches(x: np.ndarray, kh: int, kw: int, stride, dilation, padding, out_hw, fill: int) -> np.ndarray:
    """(B, H, W, C) -> (B, out_h, out_w, kh, kw, C) windows; points outside the image get `fill`."""
    b, h, w, c = x.shape
    sh, sw = stride
    dh, dw = dilation
    oh, ow = out_hw
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    top, left = padding
    bottom = max(0, need_h - top - h)
    right = max(0, need_w - left - w)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    cols = np.empty((b, oh, ow, kh, kw, c), dtype=x.dtype)
    for fy in range(kh):
        for fx in range(kw):
            cols[:, :, :, fy, fx, :] = xp[
                :, fy * dh : fy * dh + (oh - 1) * sh + 1 : sh, fx * dw : fx * dw + (ow - 1) * sw + 1 : sw, :
            ]
    return cols


def conv(x: np.ndarray, p: P.Conv, rounding: Rounding) -> np.ndarray:
    """ConvPerChannel / DepthwiseConvPerChannel: points outside the image are skipped, which is
    the same as padding (x + input_offset) with zeros."""
    batch = x.shape[0]
    xin = x.reshape((batch,) + x.shape[-3:]).astype(np.int64) + p.input_offset
    kh, kw = p.weights.shape[1], p.weights.shape[2]
    cols = _patches(xin, kh, kw, p.stride, p.dilation, p.padding, p.out_hw, 0)
    oh, ow = p.out_hw
    if not p.depthwise:
        n_out = p.weights.shape[0]
        acc = _exact_dot(cols.reshape(batch, oh, ow, -1), p.weights.reshape(n_out, -1).T)
    else:
        c_in = xin.shape[-1]
        m = p.depth_multiplier
        w = p.weights.reshape(kh, kw, c_in, m).astype(np.float64)
        acc = np.rint(np.einsum("bhwyxc,yxcm->bhwcm", cols.astype(np.float64), w, optimize=True)).astype(np.int64)
        acc = acc.reshape(batch, oh, ow, c_in * m)  # output channel = c * multiplier + m
    acc = acc + p.bias
    return _requantize(acc, p.requant, rounding).reshape(batch, 1, oh, ow, -1)


def pool(x: np.ndarray, p: P.Pool) -> np.ndarray:
    """AveragePool: sum of valid int8 inputs, divided by their count rounding half away from zero
    (C truncating division after adding +-count/2); MaxPool: max of valid inputs."""
    batch = x.shape[0]
    xin = x.reshape((batch,) + x.shape[-3:]).astype(np.int64)
    fh, fw = p.filter
    if p.average:
        ones = np.ones((1,) + xin.shape[1:3] + (1,), dtype=np.int64)
        sums = _patches(xin, fh, fw, p.stride, (1, 1), p.padding, p.out_hw, 0).sum(axis=(3, 4))
        count = _patches(ones, fh, fw, p.stride, (1, 1), p.padding, p.out_hw, 0).sum(axis=(3, 4))
        half = count // 2
        num = np.where(sums > 0, sums + half, sums - half)
        out = np.sign(num) * (np.abs(num) // count)  # C division truncates toward zero
    else:
        out = _patches(xin, fh, fw, p.stride, (1, 1), p.padding, p.out_hw, -(1 << 20)).max(axis=(3, 4))
    return np.clip(out, p.act_min, p.act_max).astype(np.int8).reshape(batch, 1, p.out_hw[0], p.out_hw[1], -1)


def add(x1: np.ndarray, x2: np.ndarray, p: P.Add, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Add: offsets, << left_shift, rescale each input, sum, rescale out."""
    a = (x1.astype(np.int64) + p.input1_offset) << p.left_shift
    b = (x2.astype(np.int64) + p.input2_offset) << p.left_shift
    a = multiply_by_quantized_multiplier(a, p.input1_multiplier, p.input1_shift, rounding)
    b = multiply_by_quantized_multiplier(b, p.input2_multiplier, p.input2_shift, rounding)
    y = multiply_by_quantized_multiplier(a + b, p.output_multiplier, p.output_shift, rounding) + p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def mul(x1: np.ndarray, x2: np.ndarray, p: P.Mul, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Mul: (x1+off1)*(x2+off2), one requantization, offset, clamp."""
    prod = (x1.astype(np.int64) + p.input1_offset) * (x2.astype(np.int64) + p.input2_offset)
    y = multiply_by_quantized_multiplier(prod, p.output_multiplier, p.output_shift, rounding) + p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def mean(x: np.ndarray, p: P.Mean, out_shape: tuple[int, ...], rounding: Rounding) -> np.ndarray:
    """reference_ops::QuantizedMeanOrSum: int32 sum, minus zp*count, one MBQM with 1/count folded in."""
    s = x.astype(np.int64).sum(axis=tuple(a + 1 for a in p.axes)) - p.input_zero_point * p.count
    y = multiply_by_quantized_multiplier(s, p.multiplier, p.shift, rounding) + p.output_offset
    return np.clip(y, -128, 127).astype(np.int8).reshape((x.shape[0],) + out_shape)


def affine_quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """AffineQuantize (float -> int8): roundf(x / scale) + zero_point, clamped; float32 arithmetic."""
    q = round_half_away_f32(np.asarray(x, dtype=np.float32) / np.float32(scale))
    q = np.clip(q, -(2**31), 2**31 - 1).astype(np.int64) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def requantize(x: np.ndarray, p: P.Quantize, rounding: Rounding) -> np.ndarray:
    """reference_ops::Requantize (int8 -> int8 QUANTIZE)."""
    y = multiply_by_quantized_multiplier(x.astype(np.int64) - p.input_zero_point, p.multiplier, p.shift, rounding)
    return np.clip(y + p.zero_point, -128, 127).astype(np.int8)


def dequantize(x: np.ndarray, p: P.Dequantize) -> np.ndarray:
    """reference_ops::Dequantize: float(double(scale) * (q - zp))."""
    return (np.float64(p.scale) * (x.astype(np.float64) - p.zero_point)).astype(np.float32)
