"""Helpers several op modules share (TFLM's kernel_util / padding / quantization_util, in short).

Options: fused activations and padding as the flatbuffer encodes them. Prepare: tensor checks,
CalculateActivationRangeQuantized, ComputePaddingHeightWidth, the per-channel output stage of
conv and fully connected. Lowering: clamp ranges and selection matrices. C: shapes padded to 4-D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from toolchain.arith import (
    Rounding,
    effective_scale,
    quantize_multiplier,
    requant_error_bound,
    round_half_away_f32,
)
from toolchain.errors import ModelError, QassureError, UnsupportedOpError
from toolchain.margins import FP_SLACK
from toolchain.ops.base import CWriter, LowerContext, Lowered
from toolchain.tflite import ir

INT8_MIN, INT8_MAX = -128, 127
OptionsT = TypeVar("OptionsT")

# --------------------------------------------------------------------------------------------- options

PADDING = {0: "SAME", 1: "VALID"}  # schema Padding
_ACTIVATIONS = {0: ir.ACT_NONE, 1: ir.ACT_RELU, 2: ir.ACT_RELU_N1_TO_1, 3: ir.ACT_RELU6}


def fused_activation(value: int, position: int, where: object) -> str:
    """schema ActivationFunctionType -> ir.ACT_*; the others (TANH, SIGN_BIT, ...) are refused."""
    if value not in _ACTIVATIONS:
        raise UnsupportedOpError(f"op #{position}: unsupported fused activation {value}", where)
    return _ACTIVATIONS[value]


def require_options(name: str, options: Any, position: int, where: object) -> Any:
    if options is None:
        raise ModelError(f"op #{position} {name} has no options", where)
    return options


# --------------------------------------------------------------------------------------------- prepare


def options(graph: ir.Graph, op: ir.Operator, kind: type[OptionsT]) -> OptionsT:
    """The op's typed options, checked to be what the op's parse_options produces."""
    if not isinstance(op.options, kind):
        raise ModelError(f"{op.describe()}: options are {type(op.options).__name__}, "
                         f"expected {kind.__name__}", graph.path)
    return op.options


def scalar_quant(graph: ir.Graph, op: ir.Operator, t: int) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized tensor of `op`."""
    tensor = graph.tensor(t)
    if tensor.quant is None:
        raise UnsupportedOpError(f"{op.describe()}: tensor '{tensor.name}' is not quantized", graph.path)
    return tensor.quant.scalar()


def require_int8(graph: ir.Graph, op: ir.Operator, *tensors: int) -> None:
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


@dataclass(frozen=True)
class Requant:
    """Output stage of an accumulate-then-requantize op (op-data of TFLM conv / fully connected)."""

    multiplier: np.ndarray  # int64 per output channel (size 1 when per-tensor)
    shift: np.ndarray  # int64, TFLite convention: positive = left shift
    output_offset: int  # = output zero point
    act_min: int
    act_max: int


def channel_multipliers(
    s_in: float, s_w: np.ndarray, s_out: float, n: int, rounding: Rounding
) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams / FC per-channel: every scale widened to double before
    the product, per-tensor weights broadcast over channels."""
    scales = np.broadcast_to(np.asarray(s_w, dtype=np.float32), (n,))
    pairs = [quantize_multiplier(float(np.float64(s_in) * np.float64(s) / np.float64(s_out)), rounding)
             for s in scales]
    return (np.array([m for m, _ in pairs], dtype=np.int64), np.array([e for _, e in pairs], dtype=np.int64))


def bias(graph: ir.Graph, op: ir.Operator, n: int, slot: int = 2) -> np.ndarray:
    """The int32 bias (input `slot`, the third by default) as int64 [n]; zeros when the op has none."""
    if len(op.inputs) <= slot or op.inputs[slot] < 0:
        return np.zeros(n, dtype=np.int64)
    b = graph.tensor(op.inputs[slot])
    if b.data is None or b.dtype != "int32":
        raise UnsupportedOpError(f"{op.describe()}: bias must be a constant int32 tensor", graph.path)
    return b.data.astype(np.int64).reshape(n)


# --------------------------------------------------------------------------------------------- lower


def clamp_range(prep_min: int, prep_max: int, scale: float, zp: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The int8 clamp [prep_min, prep_max] as dequantized bounds, per element."""
    return np.full(n, scale * (prep_min - zp)), np.full(n, scale * (prep_max - zp))


def float_weights(fg: ir.Graph, fo: ir.Operator, bias_slot: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    """The float op's weights (input 1; dequantized when the float graph is weight-only quantized) and bias
    (input `bias_slot`)."""
    w = fg.tensor(fo.inputs[1])
    if w.data is None:
        raise QassureError(f"float graph {fo.describe()}: non-constant weights", fg.path)
    wf = w.data.astype(np.float64)
    if w.dtype != "float32" and w.quant is not None:  # weight-only quantized float graph
        per_row = (-1, *[1] * (wf.ndim - 1))
        wf = (wf - w.quant.zero_point.reshape(per_row)) * w.quant.scale.astype(np.float64).reshape(per_row)
    b = None
    if len(fo.inputs) > bias_slot and fo.inputs[bias_slot] >= 0:
        data = fg.tensor(fo.inputs[bias_slot]).data
        if data is None:
            raise QassureError(f"float graph {fo.describe()}: non-constant bias", fg.path)
        b = data.astype(np.float64).reshape(-1)
    return wf, b


def float_constant(fg: ir.Graph, t: int) -> np.ndarray:
    """A constant tensor of the float graph as float64 (dequantized when the graph stores it quantized)."""
    tensor = fg.tensor(t)
    if tensor.data is None:
        raise QassureError(f"float graph: tensor '{tensor.name}' is not constant", fg.path)
    data = tensor.data.astype(np.float64)
    if tensor.dtype != "float32" and tensor.quant is not None:
        scale, zp = tensor.quant.scalar()
        data = (data - zp) * scale
    return data


def output_stage_lowered(ctx: LowerContext, requant: Requant, bias_q: np.ndarray, A_f: sp.spmatrix,
                         bias_f: np.ndarray | None, A_int: sp.spmatrix) -> Lowered:
    """The node of a convolution-like op over flattened NHWC tensors: float side A_f y + bias_f; int8 side
    the integer weights A_int (output channel last) scaled row by row by the device's effective multiplier
    of the row's channel, s_out M / s_in, its bias s_out M b, and one output-stage rounding (rho per
    channel) before the activation clamp."""
    m = effective_scale(requant.multiplier, requant.shift)  # per channel
    rho = requant_error_bound(requant.shift, ctx.rounding)
    s_out, n = ctx.scale, ctx.size
    reps = n // len(m)
    A_q = sp.csr_matrix(sp.diags(np.tile(s_out * m / ctx.input_scales[0], reps)) @ A_int)
    c_f = np.tile(bias_f if bias_f is not None else np.zeros(len(m)), reps)
    c_q = np.tile(s_out * m * bias_q, reps)
    noise = np.tile(s_out * rho, reps)
    q_lo, q_hi = clamp_range(requant.act_min, requant.act_max, s_out, ctx.zero_point, n)
    return Lowered((A_f,), c_f, ctx.f_lo, ctx.f_hi, (A_q,), c_q, noise * (1 + FP_SLACK), q_lo, q_hi)


def copying(ctx: LowerContext, source: np.ndarray) -> Lowered:
    """The node of an op that only copies its input's elements (TRANSPOSE, STRIDED_SLICE): output element i
    is input element source[i], the same matrix on both sides, exact. The int8 kernels copy the values
    without rescaling them, so input and output must share one quantization."""
    if scalar_quant(ctx.graph, ctx.op, ctx.op.inputs[0]) != (ctx.scale, ctx.zero_point):
        raise QassureError(f"{ctx.name}: {ctx.op.opcode} between two quantizations is not supported by the "
                           "certify engines")
    n, n_in = ctx.size, int(np.prod(ctx.input_shape(0)))
    gather = sp.csr_matrix((np.ones(n), (np.arange(n), source)), shape=(n, n_in))
    return Lowered.rearrangement((gather,), ctx.inputs[:1])


def selection(n_out: int, n_in: int, out_index: np.ndarray) -> sp.csr_matrix:
    """Matrix copying input element j to output element out_index[j] (others zero)."""
    return sp.csr_matrix((np.ones(n_in), (out_index, np.arange(n_in))), shape=(n_out, n_in))


# --------------------------------------------------------------------------------------------- inspect


def value_range(values: Any) -> int | list[int]:
    """One value, or [min, max] when a per-channel array holds several."""
    values = np.asarray(values).reshape(-1)
    lo, hi = int(values.min()), int(values.max())
    return lo if lo == hi else [lo, hi]


def mbqm_row(m: Any, e: Any) -> dict[str, Any]:
    """One inspect row of `Op.multipliers`: the stage's M and shift (or their ranges)."""
    return {"M": value_range(m), "shift": value_range(e)}


# --------------------------------------------------------------------------------------------- C


def c_shape4(shape: tuple[int, ...], graph: ir.Graph, op: ir.Operator) -> list[int]:
    """A shape as the C kernels' 4-D dims, leading ones added."""
    if len(shape) > 4:
        raise UnsupportedOpError(f"{op.describe()}: rank {len(shape)} > 4 is not supported by emit-c",
                                 graph.path)
    return [1] * (4 - len(shape)) + [int(d) for d in shape]


# --------------------------------------------------------------------------------------------- emit


ALL_INT8 = np.arange(-128, 128, dtype=np.int64)  # every int8 value, in table order


def emit_table(w: CWriter, op: ir.Operator, table: np.ndarray) -> None:
    """An elementwise int8 op as its output for each of the 256 int8 inputs (the executor's own values,
    table index = input + 128) and one qa_lookup_table call."""
    size = w.graph.tensor(op.outputs[0]).size
    X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
    name = w.array(f"op{op.index}_table", "int8_t", table)
    w.call(op, f"qa_lookup_table({name}, {X}, {Y}, {size});")
