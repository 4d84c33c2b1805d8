"""The merged network: the float graph and the target's int8 graph side by side, op by op.

Every supported op of both graphs becomes one `Node` with the same shape on both sides:

    float      p = sum_i A_f[i] y_i + c_f          y = clamp(p, f_lo, f_hi)
    quantized  u = sum_i A_q[i] ŷ_i + c_q + eps    ŷ = clamp(u, q_lo, q_hi),  |eps| <= noise

ŷ are *dequantized* int8 values, s (q - zp). The quantized affine map uses the device's exact
integer multipliers M, shift (A_q = s_out M 2^(e-31) W_q / s_in), `noise` is the worst requantization
rounding of the target's MBQM (DESIGN.md: |q - v| <= rho), and [q_lo, q_hi] the int8 range after
the fused activation, so every value the device can output lies inside the model. Node 0 is the
input: y_0 = x, ŷ_0 = clamp(x + eps_0, ...) with the input quantization's rounding as noise.
The merged output is y_K - ŷ_K. SOFTMAX at the end is not bounded: the logits before it are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from toolchain import ops
from toolchain.arith import Rounding
from toolchain.errors import QassureError
from toolchain.margins import INPUT_FLOAT_SLACK
from toolchain.ops.base import LowerContext, Matrix, OpData, Role
from toolchain.ops.common import clamp_range
from toolchain.tflite import ir
from toolchain.tflite.prepare import PreparedGraph

_FLOAT_ACT = {
    ir.ACT_NONE: (-np.inf, np.inf),
    ir.ACT_RELU: (0.0, np.inf),
    ir.ACT_RELU6: (0.0, 6.0),
    ir.ACT_RELU_N1_TO_1: (-1.0, 1.0),
}


@dataclass(frozen=True)
class Node:
    name: str  # op description, e.g. "op #3 FULLY_CONNECTED"
    tensor: str  # int8 output tensor name
    inputs: tuple[int, ...]  # node indices; the input node has none
    A_f: tuple[Matrix, ...]
    c_f: np.ndarray
    f_lo: np.ndarray
    f_hi: np.ndarray
    A_q: tuple[Matrix, ...]
    c_q: np.ndarray
    noise: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    scale: float  # output scale of the int8 tensor (grid step of ŷ)
    zero_point: int
    linear_only: bool = False  # RESHAPE/PAD/CONCAT-like: exact, no rounding, no clamp

    @property
    def size(self) -> int:
        return self.c_f.shape[0]


@dataclass(frozen=True)
class MergedNet:
    nodes: tuple[Node, ...]
    output: int  # node whose y - ŷ is certified
    input_shape: tuple[int, ...]
    input_scale: float
    input_zero_point: int
    input_interface: str  # "float" | "int8"
    certified_tensor: str
    int8_output_tensor: int  # tensor index in the int8 graph of the certified tensor
    notes: tuple[str, ...] = ()

    def derived(self, key: str, build: Callable[[], Any]) -> Any:
        """A value derived from this network on first use (e.g. the engines' sparsity patterns),
        kept with it: never pickled (a worker derives its own), never compared."""
        cache = self.__dict__.setdefault("_derived", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_derived", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def n_inputs(self) -> int:
        return self.nodes[0].size

    @property
    def n_outputs(self) -> int:
        return self.nodes[self.output].size

    def forward_float(self, x: np.ndarray) -> list[np.ndarray]:
        """Float graph in real (float64) arithmetic: y of every node for a batch x (B, n_in)."""
        return self._forward_float(x)[1]

    def _forward_float(self, x: np.ndarray) -> tuple[list[np.ndarray | None], list[np.ndarray]]:
        """(p, y) of every node (p of the input node: None)."""
        ps: list[np.ndarray | None] = [None]
        ys: list[np.ndarray] = [np.asarray(x, dtype=np.float64)]
        for node in self.nodes[1:]:
            p = node.c_f[None, :] + sum(matmul_t(ys[i], A)
                                        for i, A in zip(node.inputs, node.A_f, strict=True))
            ps.append(p)
            ys.append(np.clip(p, node.f_lo, node.f_hi))
        return ps, ys

    def float_gradient(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """d (w_b . y_K(x_b)) / dx_b for a batch x (B, n_in) and output weights w (B, n_out): the
        float graph's gradient (clamps pass it where p is strictly inside their range)."""
        ps, ys = self._forward_float(x)
        grads: dict[int, np.ndarray] = {self.output: np.asarray(w, dtype=np.float64)}
        for t in range(self.output, 0, -1):
            if t not in grads:
                continue
            node = self.nodes[t]
            g = grads.pop(t) * ((ps[t] > node.f_lo) & (ps[t] < node.f_hi))
            for i, A in zip(node.inputs, node.A_f, strict=True):
                gi = np.asarray((A.T @ g.T).T) if sp.issparse(A) else g @ A
                grads[i] = grads[i] + gi if i in grads else gi
        return grads.get(0, np.zeros_like(ys[0]))


def matmul(P: np.ndarray, A: Matrix) -> np.ndarray:
    """P (R, n_out) times A (n_out, n_in), dense or sparse: rows of coefficients on a layer's outputs
    carried back to its inputs."""
    if sp.issparse(A):
        return np.asarray((A.T @ P.T).T)
    return P @ A


def matmul_t(x: np.ndarray, A: Matrix) -> np.ndarray:
    """x (B, n_in) times A^T, with A (n_out, n_in) dense or sparse."""
    if sp.issparse(A):
        return np.asarray((A @ x.T).T)
    return x @ A.T


def _ops(graph: ir.Graph) -> list[ir.Operator]:
    """The ops that enter the merged network: all but the float interface's (Role.INTERFACE)."""
    return [op for op in graph.operators
            if ops.lookup(op.opcode, op.index, graph.path).role is not Role.INTERFACE]


def build(float_graph: ir.Graph, pg: PreparedGraph, input_interface: str = "float") -> MergedNet:
    """Pair the float graph's ops with the prepared int8 graph's ops and build the merged network."""
    qg = pg.graph
    fops, qops = _ops(float_graph), _ops(qg)
    prep_of = {op.index: p for op, p in zip(qg.operators, pg.ops, strict=True)}
    if [o.opcode for o in fops] != [o.opcode for o in qops]:
        raise QassureError(
            "the float and int8 graphs do not share topology "
            f"({len(fops)} vs {len(qops)} ops): give both .tflite files of one conversion"
        )
    notes: list[str] = []
    # The int8 model's input as the device sees it: after QUANTIZE if the graph has float input.
    q_in = qg.inputs[0]
    for op in qg.operators:
        if op.opcode == "QUANTIZE" and op.inputs[0] == q_in:
            q_in = op.outputs[0]
    t_in = qg.tensor(q_in)
    if t_in.quant is None or t_in.dtype != "int8":
        raise QassureError("the int8 model's input is not an int8 quantized tensor", qg.path)
    s0, zp0 = t_in.quant.scalar()
    n0 = t_in.size
    if input_interface == "float":
        # roundf(x / s0) on the device: half an LSB, plus float32 effects. The sensor value is a
        # float32 (relative error 2^-24) and so is the quotient (another 2^-24); only inputs within
        # the int8 range matter (|x / s0| <= 256 LSB, beyond it the clamp decides), so both together
        # move x / s0 by less than 256 * 2^-23 = 3.1e-5 LSB. INPUT_FLOAT_SLACK covers it.
        noise0 = np.full(n0, s0 * (0.5 + INPUT_FLOAT_SLACK))
    else:
        noise0 = np.zeros(n0)
    lo0, hi0 = clamp_range(-128, 127, s0, zp0, n0)
    eye = sp.identity(n0, format="csr")
    nodes: list[Node] = [
        Node("input", t_in.name, (), (eye,), np.zeros(n0), np.full(n0, -np.inf), np.full(n0, np.inf),
             (eye,), np.zeros(n0), noise0, lo0, hi0, s0, zp0)
    ]
    node_of_q: dict[int, int] = {q_in: 0}
    node_of_f: dict[int, int] = {float_graph.inputs[0]: 0}
    output_node, out_tensor, certified = 0, q_in, t_in.name
    final_q = qg.outputs[0]
    # Follow DEQUANTIZE at the int8 output back to the int8 tensor.
    for op in qg.operators:
        if op.opcode == "DEQUANTIZE" and op.outputs[0] == final_q:
            final_q = op.inputs[0]

    for fo, qo in zip(fops, qops, strict=True):
        impl = ops.lookup(qo.opcode, qo.index, qg.path)
        prep = prep_of[qo.index]
        qt = qg.tensor(qo.outputs[0])
        if impl.role is Role.TERMINAL:
            if qo.outputs[0] != final_q:
                raise QassureError(f"{qo.describe()}: {qo.opcode} inside the network is not supported by the "
                                   "certify engines")
            notes.append(impl.merge_note)
            final_q = qo.inputs[0]
            break
        ins_q = [node_of_q[t] for t in qo.inputs if t >= 0 and t in node_of_q]
        ins_f = [node_of_f[t] for t in fo.inputs if t >= 0 and t in node_of_f]
        if ins_q != ins_f:
            raise QassureError(f"{qo.describe()}: float and int8 graphs are wired differently")
        if impl.role is Role.ALIAS:
            node_of_q[qo.outputs[0]] = ins_q[0]
            node_of_f[fo.outputs[0]] = ins_f[0]
            continue
        nodes.extend(_nodes(impl, float_graph, fo, qg, qo, prep, pg.rounding, tuple(ins_q), nodes))
        node_of_q[qo.outputs[0]] = len(nodes) - 1
        node_of_f[fo.outputs[0]] = len(nodes) - 1
        certified = qt.name

    if final_q not in node_of_q:
        raise QassureError("could not locate the certified output tensor in the merged network", qg.path)
    output_node = node_of_q[final_q]
    out_tensor = final_q
    certified = qg.tensor(final_q).name
    return MergedNet(
        nodes=tuple(nodes),
        output=output_node,
        input_shape=t_in.shape,
        input_scale=s0,
        input_zero_point=zp0,
        input_interface=input_interface,
        certified_tensor=certified,
        int8_output_tensor=out_tensor,
        notes=tuple(notes),
    )


def _nodes(impl: ops.Op, fg: ir.Graph, fo: ir.Operator, qg: ir.Graph, qo: ir.Operator, prep: OpData,
           rounding: Rounding, ins: tuple[int, ...], nodes: list[Node]) -> list[Node]:
    """The op's nodes: what its `Op.lower` contributes, named and placed in the network (its auxiliary
    nodes first, tensor "": no int8 tensor holds them; then the op's own node)."""
    qt = qg.tensor(qo.outputs[0])
    if qt.quant is None:
        raise QassureError(f"{qo.describe()}: output tensor '{qt.name}' is not quantized", qg.path)
    s_out, zp_out = qt.quant.scalar()
    n = qt.size
    f_lo, f_hi = (np.full(n, v) for v in _FLOAT_ACT[getattr(fo.options, "activation", ir.ACT_NONE)])
    ctx = LowerContext(fg, fo, qg, qo, prep, rounding, ins, tuple(nodes[i].scale for i in ins),
                       s_out, zp_out, n, f_lo, f_hi, len(nodes))
    low = impl.lower(ctx)
    out = []
    for k, aux in enumerate(low.aux):
        assert aux.inputs is not None and max(aux.inputs) < len(nodes) + k, "aux nodes read earlier nodes"
        grid = s_out if aux.grid is None else aux.grid
        out.append(Node(f"{qo.describe()} step {k + 1}", "", aux.inputs, aux.A_f, aux.c_f, aux.f_lo, aux.f_hi,
                        aux.A_q, aux.c_q, aux.noise, aux.q_lo, aux.q_hi, grid, 0, aux.linear_only))
    reads = ins if low.inputs is None else low.inputs
    out.append(Node(qo.describe(), qt.name, reads, low.A_f, low.c_f, low.f_lo, low.f_hi, low.A_q, low.c_q,
                    low.noise, low.q_lo, low.q_hi, s_out, zp_out, low.linear_only))
    return out
