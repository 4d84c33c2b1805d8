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

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from toolchain.errors import QassureError
from toolchain.execute.arith import effective_scale, requant_error_bound
from toolchain.margins import FP_SLACK as _FP_SLACK
from toolchain.margins import INPUT_FLOAT_SLACK
from toolchain.tflite import ir
from toolchain.tflite import prepare as P

_SKIP = ("QUANTIZE", "DEQUANTIZE")
_FLOAT_ACT = {
    ir.ACT_NONE: (-np.inf, np.inf),
    ir.ACT_RELU: (0.0, np.inf),
    ir.ACT_RELU6: (0.0, 6.0),
    ir.ACT_RELU_N1_TO_1: (-1.0, 1.0),
}

Matrix = np.ndarray | sp.csr_matrix


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
            p = node.c_f[None, :] + sum(_matmul(ys[i], A) for i, A in zip(node.inputs, node.A_f))
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
            for i, A in zip(node.inputs, node.A_f):
                gi = np.asarray((A.T @ g.T).T) if sp.issparse(A) else g @ A
                grads[i] = grads[i] + gi if i in grads else gi
        return grads.get(0, np.zeros_like(ys[0]))


def _matmul(x: np.ndarray, A: Matrix) -> np.ndarray:
    """x (B, n_in) times A^T, with A (n_out, n_in) dense or sparse."""
    if sp.issparse(A):
        return np.asarray((A @ x.T).T)
    return x @ A.T


def _ops(graph: ir.Graph) -> list[ir.Operator]:
    return [op for op in graph.operators if op.opcode not in _SKIP]


def _clamp_range(prep_min: int, prep_max: int, scale: float, zp: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, scale * (prep_min - zp)), np.full(n, scale * (prep_max - zp))


def _conv_matrix(in_shape, out_shape, weights_oihw_like, stride, dilation, padding, depthwise, mult) -> sp.csr_matrix:
    """Sparse (n_out, n_in) matrix of a CONV_2D / DEPTHWISE_CONV_2D in NHWC flattened order.

    weights: CONV [out, kh, kw, in]; DEPTHWISE [1, kh, kw, out]."""
    _, h, w, c_in = in_shape
    _, oh, ow, c_out = out_shape
    kh, kw = weights_oihw_like.shape[1], weights_oihw_like.shape[2]
    rows, cols, vals = [], [], []
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    for fy in range(kh):
        for fx in range(kw):
            iy = oy * stride[0] - padding[0] + fy * dilation[0]
            ix = ox * stride[1] - padding[1] + fx * dilation[1]
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            oyv, oxv, iyv, ixv = oy[ok], ox[ok], iy[ok], ix[ok]
            if oyv.size == 0:
                continue
            if not depthwise:
                co, ci = np.meshgrid(np.arange(c_out), np.arange(c_in), indexing="ij")
                r = ((oyv * ow + oxv) * c_out)[:, None, None] + co[None]
                c = ((iyv * w + ixv) * c_in)[:, None, None] + ci[None]
                v = np.broadcast_to(weights_oihw_like[:, fy, fx, :][None], r.shape)
            else:
                co = np.arange(c_out)
                ci = co // mult
                r = ((oyv * ow + oxv) * c_out)[:, None] + co[None]
                c = ((iyv * w + ixv) * c_in)[:, None] + ci[None]
                v = np.broadcast_to(weights_oihw_like[0, fy, fx, :][None], r.shape)
            rows.append(r.ravel())
            cols.append(c.ravel())
            vals.append(np.asarray(v, dtype=np.float64).ravel())
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(oh * ow * c_out, h * w * c_in)
    )


def _pool_matrix(in_shape, out_shape, p: P.Pool) -> sp.csr_matrix:
    """Average over the valid window elements (TFLite excludes padding from the count)."""
    _, h, w, c = in_shape
    _, oh, ow, _ = out_shape
    rows, cols, vals = [], [], []
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * p.stride[0] - p.padding[0], ox * p.stride[1] - p.padding[1]
            ys = [y for y in range(y0, y0 + p.filter[0]) if 0 <= y < h]
            xs = [x for x in range(x0, x0 + p.filter[1]) if 0 <= x < w]
            n = len(ys) * len(xs)
            for y in ys:
                for x in xs:
                    for ch in range(c):
                        rows.append((oy * ow + ox) * c + ch)
                        cols.append((y * w + x) * c + ch)
                        vals.append(1.0 / n)
    return sp.csr_matrix((vals, (rows, cols)), shape=(oh * ow * c, h * w * c))


def _selection(n_out: int, n_in: int, out_index: np.ndarray) -> sp.csr_matrix:
    """Matrix copying input element j to output element out_index[j] (others zero)."""
    return sp.csr_matrix((np.ones(n_in), (out_index, np.arange(n_in))), shape=(n_out, n_in))


def build(float_graph: ir.Graph, pg: P.PreparedGraph, input_interface: str = "float") -> MergedNet:
    """Pair the float graph's ops with the prepared int8 graph's ops and build the merged network."""
    qg = pg.graph
    fops, qops = _ops(float_graph), _ops(qg)
    prep_of = {op.index: p for op, p in zip(qg.operators, pg.ops)}
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
    lo0, hi0 = _clamp_range(-128, 127, s0, zp0, n0)
    eye = sp.identity(n0, format="csr")
    nodes: list[Node] = [
        Node("input", t_in.name, (), (eye,), np.zeros(n0), np.full(n0, -np.inf), np.full(n0, np.inf),
             (eye,), np.zeros(n0), noise0, lo0, hi0, s0, zp0)
    ]
    node_of_q: dict[int, int] = {q_in: 0}
    node_of_f: dict[int, int] = {float_graph.inputs[0]: 0}
    output_node, out_tensor, certified = 0, q_in, t_in.name
    final_q = qg.outputs[0]
    final_f = float_graph.outputs[0]
    # Follow DEQUANTIZE at the int8 output back to the int8 tensor.
    for op in qg.operators:
        if op.opcode == "DEQUANTIZE" and op.outputs[0] == final_q:
            final_q = op.inputs[0]

    for fo, qo in zip(fops, qops):
        prep = prep_of[qo.index]
        qt = qg.tensor(qo.outputs[0])
        if qo.opcode == "SOFTMAX":
            if qo.outputs[0] != final_q:
                raise QassureError(f"{qo.describe()}: SOFTMAX inside the network is not supported by the certify engines")
            notes.append(
                "the model ends in SOFTMAX: the certificate bounds the logits before it "
                "(the int8 softmax recipe has no proven error bound yet)"
            )
            final_q = qo.inputs[0]
            final_f = fo.inputs[0]
            break
        ins_q = [node_of_q[t] for t in qo.inputs if t >= 0 and t in node_of_q]
        ins_f = [node_of_f[t] for t in fo.inputs if t >= 0 and t in node_of_f]
        if ins_q != ins_f:
            raise QassureError(f"{qo.describe()}: float and int8 graphs are wired differently")
        if qo.opcode == "RESHAPE":
            node_of_q[qo.outputs[0]] = ins_q[0]
            node_of_f[fo.outputs[0]] = ins_f[0]
            continue
        node = _node(float_graph, fo, qg, qo, prep, pg.rounding, tuple(ins_q), nodes)
        nodes.append(node)
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


def _float_weights(fg: ir.Graph, fo: ir.Operator) -> tuple[np.ndarray, np.ndarray | None]:
    w = fg.tensor(fo.inputs[1])
    if w.data is None:
        raise QassureError(f"float graph {fo.describe()}: non-constant weights", fg.path)
    wf = w.data.astype(np.float64)
    if w.dtype != "float32" and w.quant is not None:  # weight-only quantized float graph
        wf = (wf - w.quant.zero_point.reshape(-1, *[1] * (wf.ndim - 1))) * w.quant.scale.astype(np.float64).reshape(
            -1, *[1] * (wf.ndim - 1)
        )
    b = None
    if len(fo.inputs) > 2 and fo.inputs[2] >= 0:
        b = fg.tensor(fo.inputs[2]).data.astype(np.float64).reshape(-1)
    return wf, b


def _node(fg, fo, qg, qo, prep, rounding, ins, nodes) -> Node:
    qt = qg.tensor(qo.outputs[0])
    s_out, zp_out = qt.quant.scalar()
    n = qt.size
    name, tname = qo.describe(), qt.name
    opts = fo.options
    f_lo, f_hi = (np.full(n, v) for v in _FLOAT_ACT.get(getattr(opts, "activation", ir.ACT_NONE)))

    def q_in_scale(k: int = 0) -> float:
        return nodes[ins[k]].scale

    if isinstance(prep, (P.FullyConnected, P.Conv)):
        wf, bf = _float_weights(fg, fo)
        m = effective_scale(prep.requant.multiplier, prep.requant.shift)  # per channel
        rho = requant_error_bound(prep.requant.shift, rounding)
        if isinstance(prep, P.FullyConnected):
            A_f = wf
            A_q = (s_out * m / q_in_scale())[:, None] * prep.weights.astype(np.float64)
            n_ch = A_f.shape[0]
            reps = n // n_ch
            if reps != 1:
                raise QassureError(f"{name}: batched FULLY_CONNECTED rows are not supported by the certify engines")
            c_f = bf if bf is not None else np.zeros(n_ch)
            c_q = s_out * m * prep.bias
            noise = s_out * rho * np.ones(n_ch)
        else:
            in_shape = qg.tensor(qo.inputs[0]).shape
            out_shape = qt.shape
            A_f = _conv_matrix(in_shape, out_shape, wf, prep.stride, prep.dilation, prep.padding,
                               prep.depthwise, prep.depth_multiplier)
            wq_scaled = prep.weights.astype(np.float64)
            ch_scale = s_out * m / q_in_scale()
            if prep.depthwise:
                wq_scaled = wq_scaled * ch_scale[None, None, None, :]
            else:
                wq_scaled = wq_scaled * ch_scale[:, None, None, None]
            A_q = _conv_matrix(in_shape, out_shape, wq_scaled, prep.stride, prep.dilation, prep.padding,
                               prep.depthwise, prep.depth_multiplier)
            reps = n // len(m)
            c_f = np.tile(bf if bf is not None else np.zeros(len(m)), reps)
            c_q = np.tile(s_out * m * prep.bias, reps)
            noise = np.tile(s_out * rho, reps)
        q_lo, q_hi = _clamp_range(prep.requant.act_min, prep.requant.act_max, s_out, zp_out, n)
        return Node(name, tname, ins, (A_f,), c_f, f_lo, f_hi, (A_q,), c_q,
                    noise * (1 + _FP_SLACK), q_lo, q_hi, s_out, zp_out)
    if isinstance(prep, P.Pool):
        if not prep.average:
            raise QassureError(f"{name}: MAX_POOL_2D is not supported by the certify engines yet")
        s_in = q_in_scale()
        if not np.isclose(s_in, s_out, rtol=0, atol=0):
            raise QassureError(f"{name}: average pool with rescaling is not supported")
        A = _pool_matrix(qg.tensor(qo.inputs[0]).shape, qt.shape, prep)
        q_lo, q_hi = _clamp_range(prep.act_min, prep.act_max, s_out, zp_out, n)
        return Node(name, tname, ins, (A,), np.zeros(n), f_lo, f_hi, (A,), np.zeros(n),
                    np.full(n, 0.5 * s_out * (1 + _FP_SLACK)), q_lo, q_hi, s_out, zp_out)
    if isinstance(prep, P.Add):
        if qg.tensor(qo.inputs[0]).shape != qg.tensor(qo.inputs[1]).shape or len(ins) != 2:
            raise QassureError(f"{name}: broadcasting ADD is not supported by the certify engines")
        mo = float(effective_scale(prep.output_multiplier, prep.output_shift))
        m1 = float(effective_scale(prep.input1_multiplier, prep.input1_shift))
        m2 = float(effective_scale(prep.input2_multiplier, prep.input2_shift))
        a1 = s_out * mo * (1 << prep.left_shift) * m1 / q_in_scale(0)
        a2 = s_out * mo * (1 << prep.left_shift) * m2 / q_in_scale(1)
        r1 = float(requant_error_bound(prep.input1_shift, rounding))
        r2 = float(requant_error_bound(prep.input2_shift, rounding))
        ro = float(requant_error_bound(prep.output_shift, rounding))
        eye = sp.identity(n, format="csr")
        noise = np.full(n, s_out * (ro + mo * (r1 + r2)) * (1 + _FP_SLACK))
        q_lo, q_hi = _clamp_range(prep.act_min, prep.act_max, s_out, zp_out, n)
        return Node(name, tname, ins, (eye, eye), np.zeros(n), f_lo, f_hi, (a1 * eye, a2 * eye), np.zeros(n),
                    noise, q_lo, q_hi, s_out, zp_out)
    if isinstance(prep, P.Mean):
        in_shape = qg.tensor(qo.inputs[0]).shape
        idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
        out_idx = np.zeros(in_shape, dtype=np.int64)
        kept = [a for a in range(len(in_shape)) if a not in prep.axes]
        kept_shape = [in_shape[a] for a in kept]
        grid = np.indices(in_shape)
        flat = np.ravel_multi_index(tuple(grid[a] for a in kept), kept_shape) if kept else np.zeros(in_shape, int)
        out_idx[...] = flat
        rows, cols = out_idx.ravel(), idx.ravel()
        A_f = sp.csr_matrix((np.full(rows.size, 1.0 / prep.count), (rows, cols)), shape=(n, idx.size))
        # reduce.h QuantizedMeanOrSum: 1/count folded into (multiplier, shift), one MBQM.
        mq = float(effective_scale(prep.multiplier, prep.shift))
        A_q = sp.csr_matrix((np.full(rows.size, s_out * mq / q_in_scale()), (rows, cols)), shape=(n, idx.size))
        noise = np.full(n, s_out * float(requant_error_bound(prep.shift, rounding)) * (1 + _FP_SLACK))
        q_lo, q_hi = _clamp_range(-128, 127, s_out, zp_out, n)
        return Node(name, tname, ins, (A_f,), np.zeros(n), f_lo, f_hi, (A_q,), np.zeros(n), noise, q_lo, q_hi,
                    s_out, zp_out)
    if isinstance(prep, P.Pad):
        in_shape = qg.tensor(qo.inputs[0]).shape
        idx = np.indices(in_shape)
        shifted = tuple(idx[a] + prep.paddings[a][0] for a in range(len(in_shape)))
        out_index = np.ravel_multi_index(shifted, qt.shape).ravel()
        S = _selection(n, int(np.prod(in_shape)), out_index)
        inf = np.full(n, np.inf)
        return Node(name, tname, ins[:1], (S,), np.zeros(n), -inf, inf, (S,), np.zeros(n), np.zeros(n), -inf, inf,
                    s_out, zp_out, linear_only=True)
    if isinstance(prep, P.Concatenation):
        mats = []
        offset = 0
        out_shape = qt.shape
        for t in qo.inputs:
            shp = qg.tensor(t).shape
            idx = np.indices(shp)
            moved = tuple(idx[a] + (offset if a == prep.axis else 0) for a in range(len(shp)))
            mats.append(_selection(n, int(np.prod(shp)), np.ravel_multi_index(moved, out_shape).ravel()))
            offset += shp[prep.axis]
        inf = np.full(n, np.inf)
        return Node(name, tname, ins, tuple(mats), np.zeros(n), -inf, inf, tuple(mats), np.zeros(n), np.zeros(n),
                    -inf, inf, s_out, zp_out, linear_only=True)
    raise QassureError(f"{name}: {qo.opcode} is not supported by the certify engines")
