"""FULLY_CONNECTED (TFLM micro/kernels/fully_connected.cc, reference_integer_ops/fully_connected.h).

acc = sum_k w[o, k] (x_k + input_offset) + bias[o]; y = clamp(MBQM(acc, M_o, e_o) + zp_out, lo, hi),
per output channel o (per-tensor weights: one M, e broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.arith import Rounding, effective_scale, requant_error_bound
from toolchain.errors import QassureError, UnsupportedOpError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class FullyConnected(OpData):
    input_offset: int  # = -input zero point
    weights: np.ndarray  # int64 [out, in]
    bias: np.ndarray  # int64 [out] (zeros when the op has no bias)
    requant: C.Requant
    per_channel: bool


class _Plan:
    """Float weights (exact, see ops.kernels) and the output stage of one prepared op."""

    def __init__(self, p: FullyConnected, rounding: Rounding) -> None:
        w = p.weights
        self.dtype = K.exact_float(p.input_offset, np.abs(w).sum(axis=1), p.bias)
        self.wt = np.ascontiguousarray(w.T.astype(self.dtype))
        self.bias = p.bias.astype(self.dtype)
        self.offset = self.dtype(p.input_offset)
        self.out = K.OutputStage(p.requant, rounding)
        # For _pruned, in float64 (an interval's ends and a folded bias are exact sums there): the
        # weights, and the weights by sign.
        self.w64 = w.T.astype(np.float64)
        self.w_pos = np.maximum(self.w64, 0)
        self.w_neg = np.minimum(self.w64, 0)
        self.bias64 = p.bias.astype(np.float64)


# A chunk is run pruned when its live inputs x live outputs are at most this share of the layer: the
# pruned path gathers columns and scatters outputs, which a dense GEMM of the same size does not.
PRUNED_SHARE = 0.5
# Accumulator elements per chunk: the pruned path's fixed costs (ranges, interval, gathers) are per
# chunk, so chunks are larger than the dense GEMM's cache-sized ones (ops.kernels.CHUNK_ELEMS).
PRUNED_CHUNK_ELEMS = 1 << 18


def fully_connected(x: np.ndarray, p: FullyConnected, out_shape: tuple[int, ...],
                    rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::FullyConnected(PerChannel): acc = sum w*(x+input_offset) + bias."""
    plan = p.constants.get(rounding, lambda: _Plan(p, rounding))
    batch = x.shape[0]
    n_in, n_out = plan.wt.shape
    rows = x.reshape(-1, n_in)
    out = np.empty((rows.shape[0], n_out), dtype=np.int8)
    block = K.batch_step(rows.shape[0], n_out, PRUNED_CHUNK_ELEMS)
    step = K.batch_step(rows.shape[0], n_out)
    for start in range(0, rows.shape[0], block):
        stop = min(start + block, rows.shape[0])
        if block > 1 and _pruned(rows[start:stop], plan, out[start:stop]):
            continue
        for i in range(start, stop, step):
            xr = rows[i : min(i + step, stop)].astype(plan.dtype)
            xr += plan.offset
            acc = xr @ plan.wt
            acc += plan.bias
            plan.out(acc, out[i : i + xr.shape[0]])
    return out.reshape((batch,) + out_shape)


def _pruned(rows: np.ndarray, plan: _Plan, out: np.ndarray) -> bool:
    """The chunk's outputs computed from its varying inputs only, for the outputs that vary, if that
    is at most PRUNED_SHARE of the work (False, nothing written, otherwise).

    Batches of neighbouring inputs (the cells of a box: certify's cell enumeration) leave many
    inputs the same on every row (a dead ReLU upstream) and many outputs provably the same: an
    input constant over the chunk moves into the bias, and an output whose accumulator range
    (interval arithmetic over the chunk's input ranges, exact in float64) maps to one value through
    the output stage, which is monotone in acc, takes that value on every row. The rest is the
    kernel's own sum in the kernel's exact dtype: every partial sum of the pruned sum is a partial
    sum of the full one, which ops.kernels.exact_float bounds. Bit-exact by construction."""
    stage = plan.out.requant
    if not stage.monotone:
        return False
    lo, hi = K.column_ranges(rows)
    live_in = lo != hi
    lo64 = lo.astype(np.float64) + plan.offset
    hi64 = hi.astype(np.float64) + plan.offset
    ends = np.stack([lo64 @ plan.w_pos + hi64 @ plan.w_neg, hi64 @ plan.w_pos + lo64 @ plan.w_neg])
    ends += plan.bias64
    y = np.empty(ends.shape, dtype=np.int8)
    stage(ends, y)
    live_out = y[0] != y[1]
    n_in, n_out = plan.wt.shape
    if int(live_in.sum()) * int(live_out.sum()) > PRUNED_SHARE * n_in * n_out:
        return False
    out[...] = y[0]
    if not live_out.any():
        return True
    fixed = ~live_in
    bias = plan.bias64[live_out] + lo64[fixed] @ plan.w64[np.ix_(fixed, live_out)]
    xr = rows[:, live_in].astype(plan.dtype)
    xr += plan.offset
    acc = xr @ plan.wt[np.ix_(live_in, live_out)]
    acc += bias.astype(plan.dtype)
    part = np.empty(acc.shape, dtype=np.int8)
    stage.take(live_out)(acc, part)
    out[:, live_out] = part
    return True


class FullyConnectedOp(Op):
    names = ("FULLY_CONNECTED",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        if options is None:
            return ir.FullyConnectedOptions()
        if int(options.weightsFormat) != 0:
            raise UnsupportedOpError(f"op #{position} FULLY_CONNECTED: shuffled weights format", where)
        return ir.FullyConnectedOptions(C.fused_activation(options.fusedActivationFunction, position, where),
                                        bool(options.keepNumDims))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> FullyConnected:
        x_t, w_t = op.inputs[0], op.inputs[1]
        C.require_int8(graph, op, x_t, w_t, op.outputs[0])
        w = graph.tensor(w_t)
        if w.data is None:
            raise UnsupportedOpError(f"{op.describe()}: non-constant weights", graph.path)
        s_in, zp_in = C.scalar_quant(graph, op, x_t)
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        if w.quant is None or np.any(w.quant.zero_point != 0):
            raise UnsupportedOpError(f"{op.describe()}: weights must be symmetric int8", graph.path)
        n_out = w.shape[0]
        mult, shift = C.channel_multipliers(s_in, w.quant.scale, s_out, n_out, rounding)
        activation = C.options(graph, op, ir.FullyConnectedOptions).activation
        act_min, act_max = C.activation_range(activation, s_out, zp_out)
        requant = C.Requant(mult, shift, zp_out, act_min, act_max)
        return FullyConnected(-zp_in, w.data.astype(np.int64), C.bias(graph, op, n_out), requant,
                              w.quant.per_channel)

    def execute(self, p: FullyConnected, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return fully_connected(x, p, out_shape, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """A_q = s_out M 2^(e-31) W_q / s_in per output row; noise: rho of the device's MBQM."""
        p: FullyConnected = ctx.prepared
        wf, bf = C.float_weights(ctx.float_graph, ctx.float_op)
        m = effective_scale(p.requant.multiplier, p.requant.shift)  # per channel
        rho = requant_error_bound(p.requant.shift, ctx.rounding)
        s_out, n = ctx.scale, ctx.size
        A_q = (s_out * m / ctx.input_scales[0])[:, None] * p.weights.astype(np.float64)
        n_ch = wf.shape[0]
        if n // n_ch != 1:
            raise QassureError(f"{ctx.name}: batched FULLY_CONNECTED rows are not supported by the certify "
                               "engines")
        c_f = bf if bf is not None else np.zeros(n_ch)
        c_q = s_out * m * p.bias
        noise = s_out * rho * np.ones(n_ch)
        q_lo, q_hi = C.clamp_range(p.requant.act_min, p.requant.act_max, s_out, ctx.zero_point, n)
        return Lowered((wf,), c_f, ctx.f_lo, ctx.f_hi, (A_q,), c_q, noise * (1 + FP_SLACK), q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: FullyConnected) -> None:
        name = f"op{op.index}"
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        r = p.requant
        n_out = int(r.multiplier.size)
        mult = w.array(f"{name}_multiplier", "int32_t", r.multiplier, 8)
        shift = w.array(f"{name}_shift", "int32_t", r.shift, 8)
        filt = w.array(f"{name}_filter", "int8_t", p.weights)
        bias = w.array(f"{name}_bias", "int32_t", p.bias, 8) if np.any(p.bias != 0) else "0"
        n_in = int(p.weights.shape[1])
        prm = w.params("qa_fc_params", f"{name}_params", {
            "input_offset": p.input_offset, "output_offset": r.output_offset, "act_min": r.act_min,
            "act_max": r.act_max, "filter_offset": 0, "batches": x.size // n_in, "accum_depth": n_in,
            "output_depth": n_out, "per_channel": 1, "output_multiplier": mult, "output_shift": shift})
        w.call(op, f"qa_fully_connected(&{prm}, {X}, {filt}, {bias}, {Y});")

    def multipliers(self, p: FullyConnected) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.requant.multiplier, p.requant.shift)}
