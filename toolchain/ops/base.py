"""The contract of one TFLite operator: everything qassure knows about it, in one class.

As TFLM registers Init / Prepare / Invoke per builtin in one kernel file, and auto_LiRPA gives every
operator one class with its concrete and abstract transformers side by side, an `Op` holds, for one
builtin (or a family TFLM serves from one kernel file, e.g. CONV_2D + DEPTHWISE_CONV_2D):

    parse_options  flatbuffer builtin options -> typed ir options           (tflite.reader)
    prepare        IR -> a frozen op-data record: multipliers, shifts, ranges,
                   padding: every float computation the device does at init  (tflite.prepare)
    execute        op-data + int8 inputs -> int8 output, bit-exact, vectorised
                   over a leading batch axis                                  (execute.run)
    lower          the (float op, int8 op) pair -> its node of the merged
                   network: affine maps, clamps, rounding noise               (merge.build)
    emit_c         op-data -> C constants and one call into qassure_kernels   (emit.c_codegen)
    multipliers    op-data -> the (M, shift) pairs `qassure inspect` shows    (inspect)

`prepare` and `execute` are required. An op the certify engines or emit-c do not handle keeps the
default `lower` / `emit_c`, which raise a one-line error naming the op. `role` tells the merge how
the op enters the merged network at all (most ops: one node each).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

import numpy as np
import scipy.sparse as sp

from toolchain.arith import Rounding
from toolchain.errors import QassureError, UnsupportedOpError
from toolchain.tflite import ir

Matrix: TypeAlias = np.ndarray | sp.csr_matrix  # dense or sparse (n_out, n_in)
T = TypeVar("T")


class Constants:
    """What a kernel derives from its op-data record on first use (float weights, band matrices,
    lookup tables, requantizers), keyed by the rounding it was built for. It lives and dies with
    the record; pickling (to worker processes) drops it and the worker rebuilds on first use."""

    __slots__ = ("_built",)

    def __init__(self) -> None:
        self._built: dict[object, Any] = {}

    def get(self, key: object, build: Callable[[], T]) -> T:
        hit = self._built.get(key)
        if hit is None:
            hit = self._built[key] = build()
        return hit

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Constants, ())


@dataclass(frozen=True)
class OpData:
    """Base of every prepared op-data record (TFLM's OpData): frozen, built once by `Op.prepare` and
    read by the executor, the emitted C, the merge and inspect alike, so all use the same M and shift."""

    @cached_property
    def constants(self) -> Constants:
        """The executor's per-record constants (not a dataclass field: not compared, not emitted)."""
        return Constants()


class Role(enum.Enum):
    """How merge.build treats an op of the int8 graph."""

    NODE = "node"  # one node of the merged network, built by Op.lower
    ALIAS = "alias"  # the same values in another shape (RESHAPE): its output is its input's node
    INTERFACE = "interface"  # float <-> int8 at the graph's edge (QUANTIZE, DEQUANTIZE): not merged
    TERMINAL = "terminal"  # allowed only as the last op; the certificate bounds its input (SOFTMAX)


@dataclass(frozen=True)
class LowerContext:
    """One (float op, int8 op) pair as merge.build hands it to `Op.lower`."""

    float_graph: ir.Graph
    float_op: ir.Operator
    graph: ir.Graph  # the int8 graph
    op: ir.Operator
    prepared: Any  # the op's record from Op.prepare
    rounding: Rounding
    inputs: tuple[int, ...]  # merged-network node of each non-constant input, in op order
    input_scales: tuple[float, ...]  # output scale (grid step of ŷ) of each of those nodes
    scale: float  # output scale and zero point of the int8 output tensor
    zero_point: int
    size: int  # elements of the output tensor
    f_lo: np.ndarray  # the float op's fused activation as a clamp [f_lo, f_hi]
    f_hi: np.ndarray
    next_node: int = 0  # index the op's first new node gets (its `Lowered.aux`, else the node itself)

    @property
    def name(self) -> str:
        return self.op.describe()

    @property
    def output(self) -> ir.Tensor:
        return self.graph.tensor(self.op.outputs[0])

    def input_shape(self, k: int = 0) -> tuple[int, ...]:
        return self.graph.tensor(self.op.inputs[k]).shape


@dataclass(frozen=True)
class Lowered:
    """One op's node of the merged network (fields as in toolchain.merge.Node):

        float      p = sum_i A_f[i] y_i + c_f          y = clamp(p, f_lo, f_hi)
        quantized  u = sum_i A_q[i] ŷ_i + c_q + eps    ŷ = clamp(u, q_lo, q_hi),  |eps| <= noise
    """

    A_f: tuple[Matrix, ...]
    c_f: np.ndarray
    f_lo: np.ndarray
    f_hi: np.ndarray
    A_q: tuple[Matrix, ...]
    c_q: np.ndarray
    noise: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    linear_only: bool = False  # exact rearrangement: no rounding, no clamp
    inputs: tuple[int, ...] | None = None  # the nodes A_f / A_q read, when not all of ctx.inputs
    # Nodes of the merged network that no tensor holds, placed before this one at ctx.next_node,
    # ctx.next_node + 1, ... (each with its own `inputs`): an op that is not one affine map and one
    # clamp per element is lowered to several (MAX_POOL_2D: a tree of max(a, b) = a + relu(b - a)).
    aux: tuple[Lowered, ...] = ()
    grid: float | None = None  # an auxiliary node's grid step (of its ŷ), when not the op's output scale

    @staticmethod
    def rearrangement(mats: tuple[Matrix, ...], inputs: tuple[int, ...] | None = None) -> Lowered:
        """An op that only moves values (PAD, CONCATENATION, TRANSPOSE): the same selection matrices on
        both sides, exact (no rounding, no clamp)."""
        n = mats[0].shape[0]
        inf = np.full(n, np.inf)
        return Lowered(mats, np.zeros(n), -inf, inf, mats, np.zeros(n), np.zeros(n), -inf, inf,
                       linear_only=True, inputs=inputs)


class CWriter(Protocol):
    """What `Op.emit_c` may use of the C code generator (toolchain.emit.c_codegen.Writer)."""

    graph: ir.Graph
    decls: list[str]

    def array(self, name: str, ctype: str, values: Any, per_line: int = 16) -> str:
        """A file-scope const array; returns its name."""
        ...

    def params(self, ctype: str, name: str, fields: dict[str, Any]) -> str:
        """A file-scope const struct with designated initialisers; returns its name."""
        ...

    def ref(self, t: int) -> str:
        """A C expression for tensor t's int8 data (an arena slice or a const array)."""
        ...

    def call(self, op: ir.Operator, text: str) -> None:
        """Append one statement of model_invoke, under a comment naming the op."""
        ...


class Op(ABC):
    """One TFLite builtin (or one TFLM kernel family): see the module docstring for the contract."""

    names: ClassVar[tuple[str, ...]]  # the builtins this class implements
    role: ClassVar[Role] = Role.NODE
    merge_note: ClassVar[str] = ""  # Role.TERMINAL: what the certificate says about the skipped op

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        """The flatbuffer's builtin options object (None when absent) as typed ir options."""
        return ir.NoOptions()

    @abstractmethod
    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> OpData:
        """TFLM Prepare: validate the op's tensors and compute its op-data record for `rounding`."""

    @abstractmethod
    def execute(self, p: Any, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        """TFLM Invoke on a batch: `inputs` are the op's input tensors as (B, *shape) arrays (None
        for an omitted optional input; constants have B = 1); returns (B, *out_shape)."""

    def lower(self, ctx: LowerContext) -> Lowered:
        """The op's node of the merged network."""
        raise QassureError(f"{ctx.name}: {ctx.op.opcode} is not supported by the certify engines")

    def emit_c(self, w: CWriter, op: ir.Operator, p: Any) -> None:
        """Declare the op's constants in `w` and append its kernel call."""
        raise UnsupportedOpError(f"{op.describe()}: emit-c has no C kernel for {op.opcode}", w.graph.path)

    def multipliers(self, p: Any) -> dict[str, Any]:
        """{stage: {"M": m or [min, max], "shift": e or [min, max]}} for every MBQM the op applies."""
        return {}
