"""Model-pair validation: `float_tflite` is a float graph, `int8_tflite` a full-int8 graph of the same model.

The certify engines compare f(x) with f_q(x) op by op, so a pair is only meaningful when the int8 file is
a faithful int8 conversion of the float file: the same op sequence (QUANTIZE / DEQUANTIZE aside, they only
change the representation), the same wiring, shapes and options, and weights that round to the int8 ones.

Weight criterion. A converter quantizes a weight w to q = round(w / s) + zp, so a faithful conversion
keeps |w − s (q − zp)| ≤ s / 2 in every channel (symmetric int8 weights never clamp: s = max|w| / 127).
A bias is held to the scale the kernel really uses, s_in · s_w[c] (TFLite's int8 kernels ignore the bias
tensor's own scale). That scale can be finer than float32 can resolve: a bias of 0.18 with s_b = 1.7e-10
(|b| / s_b = 2^30: for a dead channel the converter enlarges the weight scale just enough for the bias to
fit) has float32 neighbours 90 s_b apart, so the float bias itself, or the same BatchNorm folded in
another order, differs from the int32 value by an ulp or two.
Each element is therefore allowed
    |c_f − c_q| ≤ (s / 2) (1 + ROUNDING_SLACK) + FLOAT32_SLACK · max|c_f|   (max over the tensor),
and the deviation reported is max |c_f − c_q| / (s / 2 + FLOAT32_SLACK · max|c_f|) (≤ 1: faithful).
Measured on faithful pairs (ours from TF 2.21, MLPerf Tiny's from older converters): weights up to
1.00001 half-scales, biases up to 229 half-scales but never more than 1.04 · 2^-24 · max|b| beyond s/2;
two trainings of one architecture differ by whole weights, hundreds of half-scales.

Everything here is pure: it reads only the public `ir.Graph` API and raises `ModelError` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.errors import ModelError
from toolchain.tflite import ir

# Relative slack on the half-scale bound (a float32 scale times |q| ≤ 127 moves it by < 1e-5).
ROUNDING_SLACK = 1e-3
# Absolute slack, relative to the largest |constant| of the tensor: 16 float32 ulps of the range, 15x the
# largest excess measured on faithful pairs (1.04 · 2^-24), a millionth of what a retraining moves.
FLOAT32_SLACK = 2.0**-20

_PASS_THROUGH = frozenset({"QUANTIZE", "DEQUANTIZE"})
# Ops with weights: the input slots of (activation input, weights, bias).
_WEIGHTED = {"CONV_2D": (0, 1, 2), "DEPTHWISE_CONV_2D": (0, 1, 2), "FULLY_CONNECTED": (0, 1, 2),
             "TRANSPOSE_CONV": (2, 1, 3)}  # slot 0 of TRANSPOSE_CONV: the output shape (int32)
_INT_WEIGHT_DTYPES = frozenset({"int8", "uint8", "int16"})
_INDEX_DTYPES = frozenset({"int32", "int64"})  # shapes, axes, paddings: not weights unless quantized


@dataclass(frozen=True)
class ConstantDeviation:
    """How far one float constant lies from its int8 counterpart."""

    op: str  # the int8 graph's op, e.g. "op #3 CONV_2D"
    slot: int  # input position of the constant
    role: str  # "weights", "bias" or "constant"
    half_scales: float  # max |c_f − c_q| / (s / 2): ≤ 1 for exact rounding of exact values
    allowed_fraction: float  # max |c_f − c_q| / allowance (module docstring): ≤ 1 for a faithful conversion


def validate_pair(float_graph: ir.Graph, int8_graph: ir.Graph) -> None:
    """Raise ModelError (one line, saying what differs) unless the graphs are one model, float and int8."""
    worst = max(constant_deviations(float_graph, int8_graph), key=lambda d: d.allowed_fraction, default=None)
    if worst is not None and not worst.allowed_fraction <= 1.0:
        raise ModelError(
            f"not an int8 conversion of {_where(float_graph)}: {worst.op} {worst.role} differ from the float "
            f"ones by {worst.half_scales:.4g} half-scales of the int8 quantization (rounding allows 1): "
            "different weights, e.g. another training",
            _where(int8_graph),
        )


# --------------------------------------------------------------------------------------------- kinds


def check_float_graph(graph: ir.Graph) -> None:
    """Every activation float32 and every weight float32, else a ModelError naming what the file is."""
    activations = _activation_dtypes(graph)
    weights = _weight_dtypes(graph)
    if graph.is_integer and any(d != "float32" for d in activations.values()):  # float I/O allowed
        raise ModelError("is a full-integer quantized model (integer activations), not a float model",
                         _where(graph))
    if weights & _INT_WEIGHT_DTYPES:
        raise ModelError("is a dynamic-range quantized model (int8 weights, float activations), "
                         "not a float model", _where(graph))
    if "float16" in weights:
        raise ModelError("is a float16-quantized model (float16 weights), not a float32 model", _where(graph))
    for t, dtype in activations.items():
        if dtype != "float32":
            raise ModelError(f"tensor '{graph.tensor(t).name}' is {dtype}: a partly quantized model, "
                             "not a float model", _where(graph))
    for op in graph.operators:
        for t in _const_inputs(graph, op):
            tensor = graph.tensor(t)
            if tensor.dtype != "float32" and (tensor.dtype not in _INDEX_DTYPES or tensor.quant is not None):
                raise ModelError(f"{op.describe()} has a {tensor.dtype} constant '{tensor.name}': "
                                 "not a float model", _where(graph))


def check_int8_graph(graph: ir.Graph) -> None:
    """Integer activations inside (int8) and quantized integer weights, else a ModelError naming the file."""
    activations = _activation_dtypes(graph)
    weights = _weight_dtypes(graph)
    if "int8" not in activations.values():
        kind = ("a dynamic-range quantized model (int8 weights, float activations)"
                if weights & _INT_WEIGHT_DTYPES else "a float model (float32 weights and activations)")
        raise ModelError(f"is {kind}, not a full-int8 model", _where(graph))
    if not graph.is_integer:
        inner = {t for op in graph.operators for t in op.outputs} - set(graph.outputs)
        t = min(t for t in inner if graph.tensor(t).dtype == "float32")
        writer = next(op for op in graph.operators if t in op.outputs)
        raise ModelError(f"{writer.describe()} computes in float32: a partly quantized model, "
                         "not a full-int8 model", _where(graph))
    for op in _compute_ops(graph):
        for t in (*op.inputs, *op.outputs):
            tensor = graph.tensor(t) if t >= 0 else None
            if tensor is None or tensor.is_const or (tensor.dtype == "int8" and tensor.quant is not None):
                continue
            what = tensor.dtype if tensor.dtype != "int8" else "unquantized int8"
            raise ModelError(f"{op.describe()} reads or writes {what} '{tensor.name}': not a full-int8 model",
                             _where(graph))
    for op in _compute_ops(graph):
        for slot, t in enumerate(op.inputs):
            if t < 0 or not graph.tensor(t).is_const:
                continue
            tensor = graph.tensor(t)
            role = _role(op, slot)
            if role == "bias":
                ok = tensor.dtype == "int32" and tensor.quant is not None
            elif role == "weights":
                ok = tensor.dtype == "int8" and tensor.quant is not None
            else:  # a constant operand (ADD, MUL, CONCATENATION) is int8; shapes, axes, paddings are int32
                ok = tensor.dtype == "int8" and tensor.quant is not None or (
                    tensor.dtype in _INDEX_DTYPES and tensor.quant is None)
            if not ok:
                what = tensor.dtype if tensor.quant is not None else f"unquantized {tensor.dtype}"
                raise ModelError(f"{op.describe()} has {what} {role} '{tensor.name}': not a full-int8 model",
                                 _where(graph))


def _activation_dtypes(graph: ir.Graph) -> dict[int, str]:
    """dtype of every non-constant tensor an op reads or writes (graph inputs and outputs included)."""
    out: dict[int, str] = {}
    for op in graph.operators:
        for t in (*op.inputs, *op.outputs):
            if t >= 0 and not graph.tensor(t).is_const:
                out[t] = graph.tensor(t).dtype
    return out


def _weight_dtypes(graph: ir.Graph) -> set[str]:
    """dtypes of the constants that hold real values (quantized, or not an integer shape/axis/padding)."""
    return {graph.tensor(t).dtype for op in graph.operators for t in _const_inputs(graph, op)
            if graph.tensor(t).dtype not in _INDEX_DTYPES or graph.tensor(t).quant is not None}


def _const_inputs(graph: ir.Graph, op: ir.Operator) -> list[int]:
    return [t for t in op.inputs if t >= 0 and graph.tensor(t).is_const]


def _role(op: ir.Operator, slot: int) -> str:
    if op.opcode in _WEIGHTED:
        _, weights, bias = _WEIGHTED[op.opcode]
        return {weights: "weights", bias: "bias"}.get(slot, "constant")
    return "constant"


def _where(graph: ir.Graph) -> object:
    return graph.path if graph.path is not None else graph.name


# --------------------------------------------------------------------------------------------- architecture


def _compute_ops(graph: ir.Graph) -> list[ir.Operator]:
    return [op for op in graph.operators if op.opcode not in _PASS_THROUGH]


def _sources(graph: ir.Graph, ops: list[ir.Operator]) -> dict[int, tuple[str, int, int]]:
    """Tensor -> where its value comes from: ("input", k, 0) or ("op", position among `ops`, output slot).

    QUANTIZE and DEQUANTIZE pass their source through, so a float graph and an int8 graph with float I/O
    or requantizing QUANTIZE ops in between give the same sources.
    """
    src: dict[int, tuple[str, int, int]] = {t: ("input", k, 0) for k, t in enumerate(graph.inputs)}
    position = {op.index: k for k, op in enumerate(ops)}
    for op in graph.operators:
        if op.opcode in _PASS_THROUGH:
            if op.inputs and op.inputs[0] in src:
                src[op.outputs[0]] = src[op.inputs[0]]
            continue
        for slot, t in enumerate(op.outputs):
            src[t] = ("op", position[op.index], slot)
    return src


def _check_architecture(fg: ir.Graph, qg: ir.Graph) -> list[tuple[ir.Operator, ir.Operator]]:
    """The op pairs of two graphs with the same op sequence, wiring, options and shapes; else ModelError."""
    fops, qops = _compute_ops(fg), _compute_ops(qg)
    names_f, names_q = [op.opcode for op in fops], [op.opcode for op in qops]

    def differ(what: str) -> ModelError:
        return _differ(fg, qg, what)

    if names_f != names_q:
        k = next((k for k, (a, b) in enumerate(zip(names_f, names_q, strict=False)) if a != b), None)
        if k is None:
            raise differ(f"{len(fops)} ops in the float graph, {len(qops)} in the int8 graph "
                         "(QUANTIZE/DEQUANTIZE aside)")
        raise differ(f"op sequences differ at op {k}: {names_f[k]} in the float graph, {qops[k].describe()} "
                     "in the int8 graph (QUANTIZE/DEQUANTIZE aside)")
    for kf, kq in ((fg.inputs, qg.inputs), (fg.outputs, qg.outputs)):
        if len(kf) != len(kq):
            raise differ(f"{len(kf)} graph inputs/outputs in the float graph, {len(kq)} in the int8 graph")
    for tf_, tq in zip(fg.inputs, qg.inputs, strict=True):
        if fg.tensor(tf_).shape != qg.tensor(tq).shape:
            raise differ(f"input shapes differ: {fg.tensor(tf_).shape} vs {qg.tensor(tq).shape}")
    src_f, src_q = _sources(fg, fops), _sources(qg, qops)
    for tf_, tq in zip(fg.outputs, qg.outputs, strict=True):
        if src_f.get(tf_) != src_q.get(tq) or fg.tensor(tf_).shape != qg.tensor(tq).shape:
            raise differ("the graph outputs come from different ops or have different shapes")
    pairs = list(zip(fops, qops, strict=True))
    for fo, qo in pairs:
        name = qo.describe()
        if _activation(fo) != _activation(qo):
            raise differ(f"{name} fused activation {_activation(fo)} in the float graph, {_activation(qo)} "
                         "in the int8 graph")
        if fo.options != qo.options:
            raise differ(f"{name} options differ: {fo.options} vs {qo.options}")
        if len(fo.outputs) != len(qo.outputs):
            raise differ(f"{name} has {len(fo.outputs)} outputs in the float graph, {len(qo.outputs)} in the "
                         "int8 graph")
        for tf_, tq in zip(fo.outputs, qo.outputs, strict=True):
            if fg.tensor(tf_).shape != qg.tensor(tq).shape:
                raise differ(f"{name} output shapes differ: {fg.tensor(tf_).shape} vs {qg.tensor(tq).shape}")
        n = max(len(fo.inputs), len(qo.inputs))
        for slot in range(n):
            a = fo.inputs[slot] if slot < len(fo.inputs) else -1
            b = qo.inputs[slot] if slot < len(qo.inputs) else -1
            if a < 0 or b < 0:
                if (a < 0) != (b < 0) and _role(qo, slot) != "bias":
                    raise differ(f"{name} input {slot} is present in one graph only")
                continue
            ta, tb = fg.tensor(a), qg.tensor(b)
            if ta.is_const != tb.is_const:
                raise differ(f"{name} input {slot} is a constant in one graph only")
            if ta.shape != tb.shape:
                raise differ(f"{name} input {slot} shapes differ: {ta.shape} vs {tb.shape}")
            if not ta.is_const and src_f.get(a) != src_q.get(b):
                raise differ(f"{name} input {slot} comes from different ops (wired differently)")
    return pairs


def _differ(fg: ir.Graph, qg: ir.Graph, what: str) -> ModelError:
    return ModelError(f"not an int8 conversion of {_where(fg)}: {what}", _where(qg))


def _activation(op: ir.Operator) -> str:
    return getattr(op.options, "activation", ir.ACT_NONE)


# --------------------------------------------------------------------------------------------- weights


def constant_deviations(float_graph: ir.Graph, int8_graph: ir.Graph) -> list[ConstantDeviation]:
    """Deviation of every float constant from its int8 counterpart, after checking kinds and architecture.

    Integer constants that are not quantized (shapes, axes, paddings) must be equal, except RESHAPE's
    new shape whose meaning the output shape already fixes; a missing bias counts as a zero bias.
    """
    check_float_graph(float_graph)
    check_int8_graph(int8_graph)
    out: list[ConstantDeviation] = []
    for fo, qo in _check_architecture(float_graph, int8_graph):
        for slot in range(max(len(fo.inputs), len(qo.inputs))):
            a = fo.inputs[slot] if slot < len(fo.inputs) else -1
            b = qo.inputs[slot] if slot < len(qo.inputs) else -1
            ta = float_graph.tensor(a) if a >= 0 else None
            tb = int8_graph.tensor(b) if b >= 0 else None
            if (ta is not None and not ta.is_const) or (tb is not None and not tb.is_const):
                continue
            role = _role(qo, slot)
            if tb is not None and tb.quant is None:  # shape, axis or padding
                if ta is None or ta.quant is not None or ta.data is None or tb.data is None:
                    raise _differ(float_graph, int8_graph, f"{qo.describe()} input {slot} differs in kind")
                if qo.opcode != "RESHAPE" and not np.array_equal(ta.data, tb.data):
                    raise _differ(float_graph, int8_graph,
                                  f"{qo.describe()} input {slot} {ta.data.tolist()} vs {tb.data.tolist()}")
                continue
            real, scale = _int8_real_and_scale(int8_graph, qo, slot, tb)
            want = np.zeros_like(real) if ta is None or ta.data is None else ta.data.astype(np.float64)
            if want.shape != real.shape:
                raise _differ(float_graph, int8_graph,
                              f"{qo.describe()} {role} shapes differ: {want.shape} vs {real.shape}")
            half, allowed = deviation(want, real, scale)
            out.append(ConstantDeviation(qo.describe(), slot, role, half, allowed))
    return out


def _int8_real_and_scale(graph: ir.Graph, op: ir.Operator, slot: int,
                         tensor: ir.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """The real values an int8 kernel uses for a constant and the scale they were rounded with (per element).

    A bias is added in the accumulator's scale s_in · s_w[c] (TFLite's int8 CONV_2D / FULLY_CONNECTED
    kernels read only its int32 values), so that is the scale it must have been rounded with.
    """
    if _role(op, slot) == "bias":
        x_slot, w_slot, _ = _WEIGHTED[op.opcode]
        s_in = graph.tensor(op.inputs[x_slot]).quant
        w = graph.tensor(op.inputs[w_slot]).quant
        assert s_in is not None and w is not None  # check_int8_graph ran first
        out_channels = graph.tensor(op.outputs[0]).shape[-1]
        scale = float(s_in.scale[0]) * np.broadcast_to(w.scale.astype(np.float64), (out_channels,))
        q = (tensor.data.astype(np.float64).reshape(-1) if tensor is not None and tensor.data is not None
             else np.zeros(out_channels))
        return q * scale, scale
    assert tensor is not None and tensor.quant is not None and tensor.data is not None
    quant = tensor.quant
    shape = [1] * tensor.data.ndim
    if quant.per_channel:
        shape[quant.axis] = -1
    s = quant.scale.astype(np.float64).reshape(shape)
    zp = quant.zero_point.astype(np.float64).reshape(shape)
    return s * (tensor.data.astype(np.float64) - zp), np.broadcast_to(s, tensor.data.shape)


def deviation(want: np.ndarray, real: np.ndarray, scale: np.ndarray) -> tuple[float, float]:
    """(max |want − real| / (s / 2), max |want − real| / allowance), the allowance as in the module docstring.

    `scale` broadcasts against `want` (one value, or one per channel). A zero-scale element with a
    difference gives infinity in the first number.
    """
    want, real = np.asarray(want, np.float64), np.asarray(real, np.float64)
    if want.size == 0:
        return 0.0, 0.0
    half = 0.5 * np.broadcast_to(np.asarray(scale, np.float64), want.shape)
    err = np.abs(want - real)
    allowance = half * (1.0 + ROUNDING_SLACK) + FLOAT32_SLACK * float(np.abs(want).max())
    with np.errstate(divide="ignore", invalid="ignore"):
        halves = np.where(half > 0, err / np.where(half > 0, half, 1.0), np.where(err > 0, np.inf, 0.0))
        allowed = np.where(allowance > 0, err / np.where(allowance > 0, allowance, 1.0),
                           np.where(err > 0, np.inf, 0.0))
    return float(halves.max()), float(allowed.max())
