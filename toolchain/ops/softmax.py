"""SOFTMAX, int8 -> int8 (TFLM micro/kernels/softmax.cc, softmax_common.cc; reference/softmax.h),
in gemmlowp fixed point (toolchain.fixedpoint), bit for bit.

TFLM's micro SOFTMAX calls the reference kernel for int8 -> int8 and requires the output
quantization (1/256, -128) exactly. In the merged network SOFTMAX may only end the graph: the
certificate bounds the logits before it (Role.TERMINAL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain import fixedpoint as fx
from toolchain.arith import Rounding, quantize_multiplier, rounding_divide_by_pot
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, Op, OpData, Role
from toolchain.tflite import ir

SCALED_DIFF_INTEGER_BITS = 5
ACCUM_INTEGER_BITS = 12
# softmax_common.cc checks the int8 output quantization is exactly this (the converter emits it).
SOFTMAX_OUTPUT_QUANT = (1.0 / 256.0, -128)


@dataclass(frozen=True)
class Softmax(OpData):
    """tflite::SoftmaxParams fields used by the int8 -> int8 reference kernel."""

    input_multiplier: int
    input_left_shift: int
    diff_min: int


def softmax_params(input_scale: float, beta: float = 1.0) -> Softmax:
    """micro/kernels/softmax_common.cc CalculateSoftmaxParams, int8 input / int8 output.

    PreprocessSoftmaxScaling(double(beta), double(input_scale), 5): the real multiplier
    min(beta * scale * 2^26, 2^31 - 1) is computed in *double* from the float32 values
    (the float32 x float32 product is exact in double), then QuantizeMultiplierGreaterThanOne
    (QuantizeMultiplier as in double-rounding builds); diff_min = -CalculateInputRadius(5, left_shift).
    """
    beta_d = float(np.float32(beta))
    scale_d = float(np.float32(input_scale))
    max_real_multiplier = float((1 << 31) - 1.0)  # double-rounding build
    real = min(beta_d * scale_d * float(1 << (31 - SCALED_DIFF_INTEGER_BITS)), max_real_multiplier)
    m, shift = quantize_multiplier(real, "double")
    if shift < 0:  # TFLITE_CHECK_GE in QuantizeMultiplierGreaterThanOne aborts
        raise ValueError(f"softmax: beta*input_scale too small ({beta_d * scale_d!r}); TFLM aborts")
    diff_min = -fx.calculate_input_radius(SCALED_DIFF_INTEGER_BITS, shift)
    return Softmax(input_multiplier=m, input_left_shift=shift, diff_min=diff_min)


def _softmax_core(x: np.ndarray, p: Softmax):
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError("softmax_int8 expects int8 input")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("softmax_int8 needs a non-empty last axis")
    xi = x.astype(np.int64)
    max_in_row = xi.max(axis=-1, keepdims=True)
    input_diff = xi - max_in_row
    valid = input_diff >= p.diff_min
    rescaled = fx.multiply_by_quantized_multiplier_greater_than_one(
        np.where(valid, input_diff, 0), p.input_multiplier, p.input_left_shift)
    exp_in_0 = fx.exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS)  # Q0.31
    terms = fx.rescale(exp_in_0, 0, ACCUM_INTEGER_BITS)  # Q12.19
    # int32 accumulation with wrap-around (mod 2^32 sum is order independent).
    sum_of_exps = fx.wrap_int32(np.where(valid, terms, 0).sum(axis=-1, keepdims=True))
    shifted_scale, num_bits_over_unit = fx.get_reciprocal(sum_of_exps, ACCUM_INTEGER_BITS)
    exponent = num_bits_over_unit + 31 - 8
    return valid, exp_in_0, shifted_scale, exponent


def softmax_int8_aborts(x: np.ndarray, p: Softmax) -> np.ndarray:
    """Boolean over the leading axes: rows on which TFLM's int8 softmax hits
    ``TFLITE_CHECK(0 <= exponent && exponent <= 31)`` and aborts the program.

    exponent = floor(log2(sum of exps)) + 23, so this happens when the fixed-point sum of
    exp(beta * scale * (x - max)) reaches 512, i.e. only for depth >= 512 with a flat row.
    """
    _, _, _, exponent = _softmax_core(x, p)
    return ((exponent < 0) | (exponent > 31))[..., 0]


def softmax_int8(x: np.ndarray, p: Softmax) -> np.ndarray:
    """reference_ops::Softmax<int8_t, int8_t> (reference/softmax.h), along the last axis.

    Raises ArithmeticError if any row would make TFLM abort (see :func:`softmax_int8_aborts`).
    """
    valid, exp_in_0, shifted_scale, exponent = _softmax_core(x, p)
    bad = (exponent < 0) | (exponent > 31)
    if np.any(bad):
        raise ArithmeticError(
            f"softmax: {int(bad.sum())} row(s) fail TFLITE_CHECK(0 <= exponent <= 31) "
            "(sum of exps >= 512): TFLM aborts")
    unsat = rounding_divide_by_pot(fx.fixed_mul(shifted_scale, exp_in_0), exponent)
    out = np.clip(unsat - 128, -128, 127)
    out = np.where(valid, out, -128)
    return out.astype(np.int8)


class SoftmaxOp(Op):
    names = ("SOFTMAX",)
    role = Role.TERMINAL
    merge_note = ("the model ends in SOFTMAX: the certificate bounds the logits before it "
                  "(the int8 softmax recipe has no proven error bound yet)")

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        return ir.SoftmaxOptions(float(options.beta) if options is not None else 1.0)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Softmax:
        o = C.options(graph, op, ir.SoftmaxOptions)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, _ = C.scalar_quant(graph, op, op.inputs[0])
        return softmax_params(s_in, o.beta)

    def execute(self, p: Softmax, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return softmax_int8(x, p)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Softmax) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        depth = int(x.shape[-1])
        prm = w.params("qa_softmax_params", f"op{op.index}_params", {
            "outer_size": x.size // depth, "depth": depth, "input_multiplier": p.input_multiplier,
            "input_left_shift": p.input_left_shift, "diff_min": p.diff_min})
        w.call(op, f"qa_softmax(&{prm}, {X}, {Y});")

    def multipliers(self, p: Softmax) -> dict[str, Any]:
        return {"input": C.mbqm_row(p.input_multiplier, p.input_left_shift)}
