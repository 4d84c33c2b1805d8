"""The op registry (toolchain/ops): one module per TFLite op, reached by every stage through one lookup.

What is checked: the reader accepts exactly the registered builtins and rejects the others with one
line; every registered op provides the documented contract; an op is wired into prepare, the
executor, inspect, the merge and the C generator by registering it, nothing else; the per-record
kernel constants are built once per rounding and never travel with a pickled record.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from toolchain import blas, execute, ops
from toolchain.arith import Rounding
from toolchain.emit.c_codegen import generate
from toolchain.errors import QassureError, UnsupportedOpError
from toolchain.inspect import inspect_graph
from toolchain.merge import build
from toolchain.ops.base import Constants, LowerContext, Lowered, Op, OpData, Role
from toolchain.tflite import ir, prepare, reader

CONTRACT = ("parse_options", "prepare", "execute", "lower", "emit_c", "multipliers")


def _schema():
    import ai_edge_litert.schema_py_generated as schema

    return schema


def _builtin_names() -> dict[str, int]:
    codes = vars(_schema().BuiltinOperator)
    return {k: v for k, v in codes.items() if not k.startswith("_") and isinstance(v, int)}


def _with_builtin(buf: bytes, code: int) -> bytes:
    """The same model with its first operator's opcode replaced by builtin `code`."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    op = model.subgraphs[0].operators[0]
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, 127)  # 127: PLACEHOLDER_FOR_GREATER_OP_CODES
    entry.version = 1
    model.operatorCodes.append(entry)
    op.opcodeIndex = len(model.operatorCodes) - 1
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


# --------------------------------------------------------------------------------------------- registry


def test_registered_names_are_tflite_builtins() -> None:
    builtins = _builtin_names()
    assert set(ops.REGISTRY) <= set(builtins), set(ops.REGISTRY) - set(builtins)
    assert ops.SUPPORTED_OPS == frozenset(ops.REGISTRY)


def test_reader_accepts_exactly_the_registry(zoo: dict) -> None:
    """Every schema builtin put at op #0 of a real model: registered ones pass the op check (they
    may still fail later on options or tensors that do not fit), all others are refused there."""
    base = zoo["mlp_fused"].int8_tflite.read_bytes()
    refused = 0
    for name, code in sorted(_builtin_names().items(), key=lambda kv: kv[1]):
        if name == "CUSTOM":
            continue
        buf = _with_builtin(base, code)
        try:
            reader.parse_model(buf)
            message = ""
        except UnsupportedOpError as exc:
            message = str(exc)
        except QassureError:
            message = ""
        if name in ops.REGISTRY:
            assert "unsupported op" not in message, (name, message)
        else:
            assert message == f"<bytes>: unsupported op {name} at position #0", (name, message)
            refused += 1
    assert refused > 100  # the schema has about two hundred builtins


def test_every_zoo_op_is_registered_and_prepares(zoo: dict) -> None:
    for z in zoo.values():
        for path in (z.int8_tflite, z.float_tflite):
            graph = reader.read_model(path)
            assert {op.opcode for op in graph.operators} <= ops.SUPPORTED_OPS
        pg = prepare.prepare(reader.read_model(z.int8_tflite))
        for p in pg.ops:
            assert isinstance(p, OpData) and dataclasses.is_dataclass(p)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(p, "x", 1)  # noqa: B010 - the record is frozen


def test_unknown_builtin_is_one_line_unsupported_op_error(zoo: dict) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        ops.lookup("SQUARED_DIFFERENCE", 3, "m.tflite")
    assert str(info.value) == "m.tflite: unsupported op SQUARED_DIFFERENCE at position #3"
    buf = _with_builtin(zoo["mlp_fused"].int8_tflite.read_bytes(), _builtin_names()["GATHER"])
    with pytest.raises(UnsupportedOpError) as info:
        reader.parse_model(buf)
    assert "\n" not in str(info.value) and str(info.value).endswith("unsupported op GATHER at position #0")


@pytest.mark.parametrize("name", sorted(ops.REGISTRY))
def test_registered_op_provides_the_contract(name: str) -> None:
    impl = ops.REGISTRY[name]
    assert isinstance(impl, Op) and not pyinspect.isabstract(type(impl))
    assert name in impl.names and isinstance(impl.role, Role)
    assert (impl.role is Role.TERMINAL) == bool(impl.merge_note)
    for method in CONTRACT:
        mine = pyinspect.signature(getattr(type(impl), method))
        documented = pyinspect.signature(getattr(Op, method))
        assert list(mine.parameters) == list(documented.parameters), (name, method)


# --------------------------------------------------------------------------------------------- one module


@dataclass(frozen=True)
class _Negate(OpData):
    output_offset: int


class _NegateOp(Op):
    """A toy elementwise op (y = -x around the zero point) defined only here, to show that
    registering a class is all prepare / execute / inspect / merge / emit-c need."""

    names = ("NEG",)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> _Negate:
        return _Negate(int(graph.tensor(op.outputs[0]).quant.scalar()[1]))  # type: ignore[union-attr]

    def execute(self, p: _Negate, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return np.clip(2 * p.output_offset - x.astype(np.int64), -128, 127).astype(np.int8)

    def multipliers(self, p: _Negate) -> dict[str, Any]:
        return {"output": {"M": 1, "shift": 0}}


def _negate_graph() -> ir.Graph:
    q = ir.Quantization(np.array([0.5], np.float32), np.array([3], np.int64))
    tensors = (ir.Tensor(0, "x", (1, 4), "int8", q, None), ir.Tensor(1, "y", (1, 4), "int8", q, None))
    return ir.Graph(None, tensors, (ir.Operator(0, "NEG", (0,), (1,)),), (0,), (1,))


def test_registering_an_op_wires_every_stage(monkeypatch) -> None:
    monkeypatch.setitem(ops.REGISTRY, "NEG", _NegateOp())
    graph = _negate_graph()
    pg = prepare.prepare(graph)
    assert pg.ops == (_Negate(3),)
    x = np.array([[[-128, 0, 3, 127]]], dtype=np.int8)
    assert execute.run(pg, x).output.tolist() == [[[127, 6, 3, -121]]]
    assert inspect_graph(graph).ops[0].multipliers == {"output": {"M": 1, "shift": 0}}
    with pytest.raises(UnsupportedOpError, match=r"^op #0 NEG: emit-c has no C kernel for NEG$"):
        generate(pg)
    with pytest.raises(QassureError, match=r"^op #0 NEG: NEG is not supported by the certify engines$"):
        build(graph, pg, "int8")


def test_unregistered_op_is_refused_by_prepare() -> None:
    with pytest.raises(UnsupportedOpError, match=r"^unsupported op NEG at position #0$"):
        prepare.prepare(_negate_graph())


def test_interface_ops_cannot_be_emitted() -> None:
    """QUANTIZE float -> int8 and DEQUANTIZE run on the host: emit-c says so in one line."""
    w_stub = type("W", (), {"graph": _negate_graph()})()
    op = ir.Operator(5, "DEQUANTIZE", (0,), (1,))
    with pytest.raises(UnsupportedOpError, match="emit-c needs int8 in and out"):
        ops.REGISTRY["DEQUANTIZE"].emit_c(w_stub, op, None)  # type: ignore[arg-type]


def test_lowered_node_fields_match_the_merged_node() -> None:
    """Lowered carries exactly the per-op fields of merge.Node (the rest merge adds itself)."""
    from toolchain.merge import Node

    node_fields = {f.name for f in dataclasses.fields(Node)}
    lowered = {f.name for f in dataclasses.fields(Lowered)}
    assert lowered - {"inputs", "aux", "grid"} <= node_fields
    assert node_fields - lowered == {"name", "tensor", "scale", "zero_point"}
    ctx_fields = {f.name for f in dataclasses.fields(LowerContext)}
    assert {"scale", "zero_point", "inputs", "input_scales"} <= ctx_fields


@pytest.mark.parametrize("padding, stride, size", [("SAME", 2, 3), ("VALID", 1, 3), ("SAME", 1, 2), ("VALID", 2, 1)])
def test_max_pool_lowering_gives_the_kernels_window_maxima(padding, stride, size) -> None:
    """MAX_POOL_2D's merged nodes (pairwise maxes as ReLUs, then their exact sum), evaluated as the engines
    read them, give the executor's output on random int8 inputs: windows of 1 to 9 elements, odd counts
    (a term carried to the next level) and windows clipped by padding (the first element repeated)."""
    from types import SimpleNamespace

    from toolchain.merge import matmul_t
    from toolchain.ops import common
    from toolchain.ops.pooling import Pool, PoolOp, pool

    h, w, c, scale, zp = 7, 6, 3, 0.05, -3
    oh, pad_h = common.compute_padding(padding, stride, 1, h, size)
    ow, pad_w = common.compute_padding(padding, stride, 1, w, size)
    p = Pool(False, (size, size), (stride, stride), (pad_h, pad_w), (oh, ow), -128, 127)
    n = oh * ow * c
    ctx = SimpleNamespace(prepared=p, scale=scale, zero_point=zp, size=n, inputs=(4,), input_scales=(scale,),
                          next_node=9, f_lo=np.full(n, -np.inf), f_hi=np.full(n, np.inf), name="op #5 MAX_POOL_2D",
                          output=SimpleNamespace(shape=(1, oh, ow, c)), input_shape=lambda k: (1, h, w, c))
    low = PoolOp().lower(ctx)  # type: ignore[arg-type]
    q = np.random.default_rng(size).integers(-128, 128, (50, 1, h, w, c)).astype(np.int8)
    device = pool(q, p).reshape(50, -1).astype(np.float64)
    for side in ("A_f", "A_q"):
        y = {4: scale * (q.reshape(50, -1).astype(np.float64) - zp)}
        for t, node in enumerate((*low.aux, low), 9):
            v = sum(matmul_t(y[i], A) for i, A in zip(node.inputs, getattr(node, side), strict=True))
            lo, hi = (node.f_lo, node.f_hi) if side == "A_f" else (node.q_lo, node.q_hi)
            y[t] = np.clip(v + (node.c_f if side == "A_f" else node.c_q), lo, hi)
            assert np.all(node.noise == 0)
        assert np.allclose(y[9 + len(low.aux)], scale * (device - zp), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- constants


def test_constants_are_built_once_per_rounding() -> None:
    c = Constants()
    calls: list[str] = []

    def build(tag: str):
        def make() -> np.ndarray:
            calls.append(tag)
            return np.arange(3)

        return make

    first = c.get("double", build("double"))
    assert c.get("double", build("again")) is first
    c.get("single", build("single"))
    assert calls == ["double", "single"]


def test_kernel_constants_stay_with_the_record_and_not_in_pickles(zoo: dict) -> None:
    pg = prepare.prepare(reader.read_model(zoo["cnn_residual"].int8_tflite))
    x = np.random.default_rng(0).integers(-128, 128, (8, *pg.graph.input.shape)).astype(np.int8)
    want = execute.run(pg, x).output
    built = [p for p in pg.ops if p.constants._built]
    assert built, "the executor built no per-record constants"
    assert all("constants" not in dataclasses.asdict(p) for p in pg.ops)
    again = pickle.loads(pickle.dumps(pg))
    assert all(not p.constants._built for p in again.ops)
    assert [type(p) for p in again.ops] == [type(p) for p in pg.ops]
    assert np.array_equal(execute.run(again, x).output, want)


def test_executor_runs_blas_on_one_thread() -> None:
    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with blas.limit_threads(1):
        inside = blas_threads()
    assert inside and all(n == 1 for n in inside)
    assert blas_threads() == before


# --------------------------------------------------------------------------------------------- STRIDED_SLICE

@pytest.mark.parametrize("seed", range(40))
def test_strided_slice_axis_ranges_are_python_slicing(seed: int) -> None:
    """strided_slice_logic.h's start and stop agree with Python's slice semantics (negative indices
    from the end, out-of-range ends clamped, a masked begin or end open, negative strides backwards;
    a shrunk axis keeps its one start index), on random begin, end, stride and masks."""
    from toolchain.ops.strided_slice import axis_range

    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 9))
    begin, end = (int(v) for v in rng.integers(-12, 12, size=2))
    stride = int(rng.choice([-3, -2, -1, 1, 2, 3]))
    masks = {"begin_mask": int(rng.integers(2)), "end_mask": int(rng.integers(2))}
    shrink = bool(rng.integers(4) == 0) and -size <= begin < size and stride > 0  # (negative: empty)
    o = ir.StridedSliceOptions(**masks, shrink_axis_mask=int(shrink))
    start, count = axis_range(size, begin, end, stride, 0, o)
    got = [start + stride * i for i in range(count)]
    if shrink:
        want = [begin % size]
    else:
        s = slice(None if masks["begin_mask"] else begin, None if masks["end_mask"] else end, stride)
        want = list(range(size))[s]
    assert got == want, (size, begin, end, stride, o)
    # offset: end counted from the start (clamped begin), as tf.strided_slice's `offset` attribute
    if not shrink and not masks["end_mask"] and end >= 0 and stride > 0:
        rel = ir.StridedSliceOptions(**masks, offset=True)
        start, count = axis_range(size, begin, end, stride, 0, rel)
        assert [start + stride * i for i in range(count)] == list(range(size))[start:start + end:stride]
