"""Prepare once, run many: per-op integer parameters computed from the IR, as TFLM's Prepare().

Every float computation the device does at init time (QuantizeMultiplier, activation ranges,
padding) happens here, once. The executor, the emitted C and the certify engines all read
these records, so all three use the same multipliers and shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.errors import UnsupportedOpError
from toolchain.execute.arith import Rounding, quantize_multiplier, round_half_away_f32
from toolchain.tflite import ir

INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class Requant:
    """Output stage of an accumulate-then-requantize op (op-data of TFLM conv/fc/mul)."""

    multiplier: np.ndarray  # int64 per output channel (size 1 when per-tensor)
    shift: np.ndarray  # int64, TFLite convention: positive = left shift
    output_offset: int  # = output zero point
    act_min: int
    act_max: int


@dataclass(frozen=True)
class FullyConnected:
    input_offset: int  # = -input zero point
    weights: np.ndarray  # int64 [out, in]
    bias: np.ndarray  # int64 [out] (zeros when the op has no bias)
    requant: Requant
    per_channel: bool


@dataclass(frozen=True)
class Conv:
    """CONV_2D (weights [out, kh, kw, in]) or DEPTHWISE_CONV_2D (weights [1, kh, kw, out])."""

    depthwise: bool
    input_offset: int
    weights: np.ndarray  # int64
    bias: np.ndarray  # int64 [out]
    requant: Requant
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]  # (top, left): TFLM ComputePaddingHeightWidth
    out_hw: tuple[int, int]
    depth_multiplier: int
    per_channel: bool


@dataclass(frozen=True)
class Pool:
    average: bool
    filter: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]
    act_min: int
    act_max: int


@dataclass(frozen=True)
class Add:
    """TFLM int8 ADD: both inputs rescaled to a shared scale with 20 bits of headroom."""

    left_shift: int
    input1_offset: int
    input2_offset: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class Mul:
    input1_offset: int
    input2_offset: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class Reshape:
    pass


@dataclass(frozen=True)
class Pad:
    paddings: tuple[tuple[int, int], ...]  # per axis (before, after)
    pad_value: int  # the output zero point: a padded real zero (or PADV2's constant)


@dataclass(frozen=True)
class Concatenation:
    axis: int  # axis of the tensor's own shape (batch included)


@dataclass(frozen=True)
class Mean:
    """TFLM int8 MEAN (reduce.h QuantizedMeanOrSum): sum, then one requantization folding 1/n."""

    axes: tuple[int, ...]  # axes of the tensor's own shape
    keep_dims: bool
    input_zero_point: int
    count: int
    multiplier: int
    shift: int
    output_offset: int


@dataclass(frozen=True)
class Softmax:
    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass(frozen=True)
class Table:
    """LOGISTIC / TANH on int8: 256 possible inputs, so the exact outputs are tabulated."""

    table: np.ndarray  # int8[256], entry i is the output for input i - 128


@dataclass(frozen=True)
class Quantize:
    """QUANTIZE: float -> int8 (AffineQuantize) or int8 -> int8 (Requantize)."""

    from_float: bool
    scale: float  # output scale (float input path)
    zero_point: int  # output zero point
    input_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class Dequantize:
    scale: float
    zero_point: int


Prepared = (
    FullyConnected
    | Conv
    | Pool
    | Add
    | Mul
    | Reshape
    | Pad
    | Concatenation
    | Mean
    | Softmax
    | Table
    | Quantize
    | Dequantize
)


@dataclass(frozen=True)
class PreparedGraph:
    graph: ir.Graph
    ops: tuple[Prepared, ...]  # one record per graph operator, same order
    rounding: Rounding


def prepare(graph: ir.Graph, rounding: Rounding = "double") -> PreparedGraph:
    """Prepare every operator of an integer graph for `rounding` (the target's MBQM flavour)."""
    return PreparedGraph(graph, tuple(prepare_op(graph, op, rounding) for op in graph.operators), rounding)


def _scalar_quant(graph: ir.Graph, op: ir.Operator, t: int) -> tuple[float, int]:
    tensor = graph.tensor(t)
    if tensor.quant is None:
        raise UnsupportedOpError(f"{op.describe()}: tensor '{tensor.name}' is not quantized", graph.path)
    return tensor.quant.scalar()


def _require_int8(graph: ir.Graph, op: ir.Operator, *tensors: int) -> None:
    for t in tensors:
        dt = graph.tensor(t).dtype
        if dt != "int8":
            raise UnsupportedOpError(
                f"{op.describe()}: tensor '{graph.tensor(t).name}' is {dt}; qassure executes int8 graphs",
                graph.path,
            )


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused activation narrows [-128, 127].

    Bounds are quantized in float32 (f / scale, then roundf), as kernel_util.cc does."""

    def q(f: float) -> int:
        return zero_point + int(round_half_away_f32(np.float32(f) / np.float32(scale)))

    if activation == ir.ACT_RELU:
        return max(INT8_MIN, q(0.0)), INT8_MAX
    if activation == ir.ACT_RELU6:
        return max(INT8_MIN, q(0.0)), min(INT8_MAX, q(6.0))
    if activation == ir.ACT_RELU_N1_TO_1:
        return max(INT8_MIN, q(-1.0)), min(INT8_MAX, q(1.0))
    return INT8_MIN, INT8_MAX


def compute_padding(padding: str, stride: int, dilation: int, size: int, filt: int) -> tuple[int, int]:
    """(output size, leading pad) as TFLM ComputePaddingHeightWidth / ComputeOutSize."""
    eff = (filt - 1) * dilation + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
    else:
        out = (size - eff + stride) // stride
    total = max(0, (out - 1) * stride + eff - size)
    return out, total // 2


def _channel_multipliers(
    s_in: float, s_w: np.ndarray, s_out: float, n: int, rounding: Rounding
) -> tuple[np.ndarray, np.ndarray]:
    # PopulateConvolutionQuantizationParams / FC per-channel: every scale widened to double
    # before the product, per-tensor weights broadcast over channels.
    scales = np.broadcast_to(np.asarray(s_w, dtype=np.float32), (n,))
    pairs = [quantize_multiplier(float(np.float64(s_in) * np.float64(s) / np.float64(s_out)), rounding) for s in scales]
    return (np.array([m for m, _ in pairs], dtype=np.int64), np.array([e for _, e in pairs], dtype=np.int64))


def _bias(graph: ir.Graph, op: ir.Operator, n: int) -> np.ndarray:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(n, dtype=np.int64)
    b = graph.tensor(op.inputs[2])
    if b.data is None or b.dtype != "int32":
        raise UnsupportedOpError(f"{op.describe()}: bias must be a constant int32 tensor", graph.path)
    return b.data.astype(np.int64).reshape(n)


def prepare_op(graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Prepared:
    name = op.opcode
    o = op.options
    if name in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
        x_t, w_t = op.inputs[0], op.inputs[1]
        _require_int8(graph, op, x_t, w_t, op.outputs[0])
        w = graph.tensor(w_t)
        if w.data is None:
            raise UnsupportedOpError(f"{op.describe()}: non-constant weights", graph.path)
        s_in, zp_in = _scalar_quant(graph, op, x_t)
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        if w.quant is None or np.any(w.quant.zero_point != 0):
            raise UnsupportedOpError(f"{op.describe()}: weights must be symmetric int8", graph.path)
        n_out = w.shape[3] if name == "DEPTHWISE_CONV_2D" else w.shape[0]
        mult, shift = _channel_multipliers(s_in, w.quant.scale, s_out, n_out, rounding)
        act_min, act_max = activation_range(o.activation, s_out, zp_out)
        requant = Requant(mult, shift, zp_out, act_min, act_max)
        weights = w.data.astype(np.int64)
        bias = _bias(graph, op, n_out)
        if name == "FULLY_CONNECTED":
            return FullyConnected(-zp_in, weights, bias, requant, w.quant.per_channel)
        x = graph.tensor(x_t)
        _, in_h, in_w, _ = x.shape
        kh, kw = w.shape[1], w.shape[2]
        out_h, pad_h = compute_padding(o.padding, o.stride_h, o.dilation_h, in_h, kh)
        out_w, pad_w = compute_padding(o.padding, o.stride_w, o.dilation_w, in_w, kw)
        depthwise = name == "DEPTHWISE_CONV_2D"
        mult_depth = (n_out // x.shape[3]) if depthwise else 1
        return Conv(
            depthwise, -zp_in, weights, bias, requant,
            (o.stride_h, o.stride_w), (o.dilation_h, o.dilation_w), (pad_h, pad_w), (out_h, out_w),
            mult_depth, w.quant.per_channel,
        )
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        _require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        _, in_h, in_w, _ = graph.tensor(op.inputs[0]).shape
        out_h, pad_h = compute_padding(o.padding, o.stride_h, 1, in_h, o.filter_h)
        out_w, pad_w = compute_padding(o.padding, o.stride_w, 1, in_w, o.filter_w)
        act_min, act_max = activation_range(o.activation, s_out, zp_out)
        return Pool(name == "AVERAGE_POOL_2D", (o.filter_h, o.filter_w), (o.stride_h, o.stride_w),
                    (pad_h, pad_w), (out_h, out_w), act_min, act_max)
    if name == "ADD":
        _require_int8(graph, op, *op.inputs, op.outputs[0])
        s1, z1 = _scalar_quant(graph, op, op.inputs[0])
        s2, z2 = _scalar_quant(graph, op, op.inputs[1])
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        left_shift = 20
        # add_common.cc: max of the two float scales, widened to double, times 2.
        twice_max = 2 * np.float64(max(np.float32(s1), np.float32(s2)))
        m1, e1 = quantize_multiplier(float(np.float64(s1) / twice_max), rounding)
        m2, e2 = quantize_multiplier(float(np.float64(s2) / twice_max), rounding)
        mo, eo = quantize_multiplier(float(twice_max / ((1 << left_shift) * np.float64(s_out))), rounding)
        act_min, act_max = activation_range(o.activation, s_out, zp_out)
        return Add(left_shift, -z1, -z2, m1, e1, m2, e2, mo, eo, zp_out, act_min, act_max)
    if name == "MUL":
        _require_int8(graph, op, *op.inputs, op.outputs[0])
        s1, z1 = _scalar_quant(graph, op, op.inputs[0])
        s2, z2 = _scalar_quant(graph, op, op.inputs[1])
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        m, e = quantize_multiplier(float(np.float64(s1) * np.float64(s2) / np.float64(s_out)), rounding)
        act_min, act_max = activation_range(o.activation, s_out, zp_out)
        return Mul(-z1, -z2, m, e, zp_out, act_min, act_max)
    if name == "RESHAPE":
        return Reshape()
    if name in ("PAD", "PADV2"):
        _require_int8(graph, op, op.inputs[0], op.outputs[0])
        pads = graph.tensor(op.inputs[1]).data
        if pads is None:
            raise UnsupportedOpError(f"{op.describe()}: paddings must be constant", graph.path)
        _, zp_out = _scalar_quant(graph, op, op.outputs[0])
        value = zp_out
        if name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            cv = graph.tensor(op.inputs[2]).data
            value = int(np.asarray(cv).reshape(-1)[0])
        return Pad(tuple((int(a), int(b)) for a, b in np.asarray(pads).reshape(-1, 2)), value)
    if name == "CONCATENATION":
        _require_int8(graph, op, *op.inputs, op.outputs[0])
        q_out = _scalar_quant(graph, op, op.outputs[0])
        for t in op.inputs:
            q_in = _scalar_quant(graph, op, t)
            if not (np.float32(q_in[0]) == np.float32(q_out[0]) and q_in[1] == q_out[1]):
                raise UnsupportedOpError(
                    f"{op.describe()}: inputs with differing quantization are not supported", graph.path
                )
        rank = len(graph.tensor(op.outputs[0]).shape)
        return Concatenation(o.axis % rank)
    if name == "MEAN":
        _require_int8(graph, op, op.inputs[0], op.outputs[0])
        x = graph.tensor(op.inputs[0])
        axes_data = graph.tensor(op.inputs[1]).data
        if axes_data is None:
            raise UnsupportedOpError(f"{op.describe()}: axes must be constant", graph.path)
        axes = tuple(sorted({int(a) % len(x.shape) for a in np.asarray(axes_data).reshape(-1)}))
        s_in, zp_in = _scalar_quant(graph, op, op.inputs[0])
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        m, e = quantize_multiplier(float(np.float64(s_in) / np.float64(s_out)), rounding)
        count = int(np.prod([x.shape[a] for a in axes]))
        # reduce.h: fold 1/count into the multiplier, keeping `shift` bits of precision.
        extra = min(count.bit_length() - 1, 32, 31 + e)
        m = int((m << extra) // count)
        e = e - extra
        return Mean(axes, o.keep_dims, zp_in, count, m, e, zp_out)
    if name == "SOFTMAX":
        from toolchain.execute import fixedpoint

        _require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, _ = _scalar_quant(graph, op, op.inputs[0])
        p = fixedpoint.softmax_params(s_in, o.beta)
        return Softmax(p.input_multiplier, p.input_left_shift, p.diff_min)
    if name in ("LOGISTIC", "TANH"):
        from toolchain.execute import fixedpoint

        _require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, zp_in = _scalar_quant(graph, op, op.inputs[0])
        if name == "LOGISTIC":
            table = fixedpoint.logistic_table(fixedpoint.logistic_params(s_in, zp_in))
        else:
            table = fixedpoint.tanh_table(fixedpoint.tanh_params(s_in, zp_in))
        return Table(np.asarray(table, dtype=np.int8))
    if name == "QUANTIZE":
        x = graph.tensor(op.inputs[0])
        _require_int8(graph, op, op.outputs[0])
        s_out, zp_out = _scalar_quant(graph, op, op.outputs[0])
        if x.dtype == "float32":
            return Quantize(True, s_out, zp_out, 0, 0, 0)
        _require_int8(graph, op, op.inputs[0])
        s_in, zp_in = _scalar_quant(graph, op, op.inputs[0])
        m, e = quantize_multiplier(float(np.float64(s_in) / np.float64(s_out)), rounding)
        return Quantize(False, s_out, zp_out, zp_in, m, e)
    if name == "DEQUANTIZE":
        _require_int8(graph, op, op.inputs[0])
        s, zp = _scalar_quant(graph, op, op.inputs[0])
        return Dequantize(s, zp)
    raise UnsupportedOpError(f"unsupported op {name} at position #{op.index}", graph.path)
