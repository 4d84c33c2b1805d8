"""Prepare once, run many: per-op integer parameters computed from the IR, as TFLM's Prepare().

Every float computation the device does at init time (QuantizeMultiplier, activation ranges,
padding) happens here, once, in each op's `Op.prepare` (toolchain/ops/). The executor, the emitted
C and the certify engines all read these records, so all three use the same multipliers and shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain import ops
from toolchain.arith import Rounding
from toolchain.ops.base import OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class PreparedGraph:
    graph: ir.Graph
    ops: tuple[OpData, ...]  # one op-data record per graph operator, same order
    rounding: Rounding


def prepare_op(graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> OpData:
    """The op-data record of one operator for `rounding` (the target's MBQM flavour)."""
    return ops.lookup(op.opcode, op.index, graph.path).prepare(graph, op, rounding)


def prepare(graph: ir.Graph, rounding: Rounding = "double") -> PreparedGraph:
    """Prepare every operator of an integer graph for `rounding` (the target's MBQM flavour)."""
    return PreparedGraph(graph, tuple(prepare_op(graph, op, rounding) for op in graph.operators), rounding)
