"""What a .tflite file holds, for a person: per-op table, quantization, multipliers, memory.

The multipliers come from `prepare` (the same records the executor and the emitted C use), shown
by each op's `Op.multipliers`.
The activation-memory estimate follows TFLM's greedy memory planner: every non-constant
tensor is live from the op that writes it (or the start, for graph inputs) to its last
reader (or the end, for graph outputs); tensors are placed largest first at the lowest
16-byte-aligned offset that overlaps no live-at-the-same-time tensor already placed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolchain import ops
from toolchain.arith import Rounding
from toolchain.tflite import ir
from toolchain.tflite import prepare as P

ARENA_ALIGNMENT = 16


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None  # per-tensor scale (None when not quantized or per-channel)
    zero_point: int | None


@dataclass(frozen=True)
class OpInfo:
    index: int
    opcode: str
    activation: str
    inputs: tuple[TensorInfo, ...]  # non-constant inputs
    output: TensorInfo
    weight_bytes: int  # bytes of this op's constant inputs
    per_channel: bool | None  # None for ops without weights
    multipliers: dict[str, Any] = field(default_factory=dict)  # name -> (M, shift) or ranges


@dataclass(frozen=True)
class MemoryEstimate:
    arena_bytes: int  # greedy placement, ARENA_ALIGNMENT-aligned offsets
    peak_live_bytes: int  # largest sum of simultaneously live tensors (a lower bound on any plan)
    weight_bytes: int  # every constant tensor (weights, biases, shapes)
    file_bytes: int | None
    offsets: dict[int, int]  # tensor index -> arena offset


@dataclass(frozen=True)
class ModelInfo:
    model: str
    rounding: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    memory: MemoryEstimate

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory"].pop("offsets")
        return d


def _tensor_info(t: ir.Tensor) -> TensorInfo:
    scale = zp = None
    if t.quant is not None and not t.quant.per_channel:
        scale, zp = t.quant.scalar()
    return TensorInfo(t.index, t.name, tuple(t.shape), t.dtype, scale, zp)


def format_multipliers(m: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v[0]}..{v[1]}" if isinstance(v, list) else str(v)

    parts = [f"{k}: M={fmt(v['M'])} sh={fmt(v['shift'])}" for k, v in m.items()]
    return "; ".join(parts)


def lifetimes(graph: ir.Graph) -> dict[int, tuple[int, int]]:
    """Non-constant tensor -> (first op step, last op step) it must stay live, inclusive.

    Step -1 is before the first op (graph inputs); len(ops) is after the last (graph outputs)."""
    n = len(graph.operators)
    life: dict[int, list[int]] = {t: [-1, -1] for t in graph.inputs}
    for op in graph.operators:
        for t in op.outputs:
            life.setdefault(t, [op.index, op.index])
        for t in op.inputs:
            if t >= 0 and not graph.tensor(t).is_const:
                life.setdefault(t, [op.index, op.index])[1] = op.index
    for t in graph.outputs:
        if t in life:
            life[t][1] = n
    return {t: (a, b) for t, (a, b) in life.items() if not graph.tensor(t).is_const}


def _align(x: int) -> int:
    return (x + ARENA_ALIGNMENT - 1) // ARENA_ALIGNMENT * ARENA_ALIGNMENT


def memory_estimate(graph: ir.Graph, file_bytes: int | None = None) -> MemoryEstimate:
    life = lifetimes(graph)
    sizes = {t: graph.tensor(t).nbytes for t in life}
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[int, int] = {}
    for t in sorted(life, key=lambda t: (-sizes[t], life[t][0], t)):
        first, last = life[t]
        clashes = sorted((o, e) for o, e, f, la in placed if not (la < first or last < f))
        offset = 0
        for o, e in clashes:
            if offset + sizes[t] <= o:
                break
            offset = max(offset, _align(e))
        offsets[t] = offset
        placed.append((offset, offset + sizes[t], first, last))
    arena = max((e for _, e, _, _ in placed), default=0)
    steps = range(-1, len(graph.operators) + 1)
    peak = max((sum(sizes[t] for t, (a, b) in life.items() if a <= s <= b) for s in steps), default=0)
    weights = sum(t.nbytes for t in graph.tensors if t.is_const)
    return MemoryEstimate(_align(arena), peak, weights, file_bytes, offsets)


def inspect_graph(graph: ir.Graph, rounding: Rounding = "double", file_bytes: int | None = None) -> ModelInfo:
    """Describe every op of an integer graph (prepared with `rounding`) and estimate its memory."""
    pg = P.prepare(graph, rounding)
    infos = []
    for op, p in zip(graph.operators, pg.ops, strict=True):
        consts = [graph.tensor(t) for t in op.inputs if t >= 0 and graph.tensor(t).is_const]
        per_channel = getattr(p, "per_channel", None)  # records of ops with weights say it
        infos.append(OpInfo(
            index=op.index,
            opcode=op.opcode,
            activation=getattr(op.options, "activation", ir.ACT_NONE),
            inputs=tuple(_tensor_info(graph.tensor(t)) for t in op.inputs
                         if t >= 0 and not graph.tensor(t).is_const),
            output=_tensor_info(graph.tensor(op.outputs[0])),
            weight_bytes=sum(t.nbytes for t in consts),
            per_channel=None if per_channel is None else bool(per_channel),
            multipliers=ops.lookup(op.opcode, op.index, graph.path).multipliers(p),
        ))
    return ModelInfo(
        model=graph.name,
        rounding=rounding,
        inputs=tuple(_tensor_info(graph.tensor(t)) for t in graph.inputs),
        outputs=tuple(_tensor_info(graph.tensor(t)) for t in graph.outputs),
        ops=tuple(infos),
        memory=memory_estimate(graph, file_bytes),
    )
