"""Read a .tflite flatbuffer into the typed IR, validating it on the way.

Parsing uses the TFLite schema's generated object API (ai_edge_litert.schema_py_generated),
never hand-decoded bytes and never TensorFlow. Everything handed later to an interpreter
(desktop TFLite, tflite-micro) has passed this reader first: those interpreters can abort the
whole process on malformed files, so every index, shape and buffer size is checked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain import ops
from toolchain.errors import ModelError, UnsupportedOpError
from toolchain.tflite import ir

_DTYPES = {
    "FLOAT32": "float32",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FLOAT16": "float16",
}
MAX_FILE_BYTES = 512 * 1024 * 1024


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _schema():
    # Imported here so that `import toolchain` stays cheap; the module itself is plain Python.
    import ai_edge_litert.schema_py_generated as schema

    return schema


def read_model(path: Path | str) -> ir.Graph:
    """Read and validate `path`; raise ModelError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelError("file not found", path)
    if path.is_dir():
        raise ModelError("is a directory, expected a .tflite file", path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelError(f"file too large ({size} bytes)", path)
    return parse_model(path.read_bytes(), path)


def parse_model(buf: bytes, path: Path | None = None) -> ir.Graph:
    """Parse flatbuffer bytes into a Graph. Any malformation becomes one ModelError."""
    where = path if path is not None else "<bytes>"
    if len(buf) < 16:
        raise ModelError(f"not a TFLite model (only {len(buf)} bytes)", where)
    if buf[4:8] != b"TFL3":
        raise ModelError("not a TFLite model (missing the 'TFL3' file identifier)", where)
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    except ModelError:
        raise
    except Exception as exc:  # flatbuffers raises assorted errors on corrupt offsets
        raise ModelError(f"corrupt flatbuffer ({type(exc).__name__})", where) from None
    try:
        return _build_graph(model, buf, path, schema)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"corrupt or inconsistent model ({type(exc).__name__}: {exc})", where) from None


def _build_graph(model, buf: bytes, path: Path | None, schema) -> ir.Graph:
    where = path if path is not None else "<bytes>"
    if not model.subgraphs:
        raise ModelError("model has no subgraph", where)
    sg = model.subgraphs[0]
    buffers = model.buffers or []
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    n_tensors = len(sg.tensors or [])

    tensors = []
    for i, t in enumerate(sg.tensors or []):
        name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        if any(d < 0 for d in shape):
            raise ModelError(f"tensor {i} '{name}' has a dynamic shape {shape}", where)
        tname = type_names.get(t.type, str(t.type))
        dtype = _DTYPES.get(tname)
        if dtype is None:
            raise UnsupportedOpError(f"tensor {i} '{name}' has unsupported type {tname}", where)
        quant = _quantization(t.quantization, i, name, shape, where)
        data = _constant(t, buffers, buf, dtype, shape, i, name, where)
        tensors.append(ir.Tensor(i, name, shape, dtype, quant, data))

    def check_indices(indices, what: str, allow_missing: bool) -> tuple[int, ...]:
        out = tuple(int(x) for x in (indices if indices is not None else []))
        for x in out:
            if x >= n_tensors or x < (-1 if allow_missing else 0):
                raise ModelError(f"{what} refers to tensor {x}, but the model has {n_tensors}", where)
        return out

    operators = []
    codes = model.operatorCodes or []
    for k, op in enumerate(sg.operators or []):
        if op.opcodeIndex >= len(codes):
            raise ModelError(f"op #{k} has opcode index {op.opcodeIndex} out of range", where)
        code = codes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        opname = op_names.get(builtin, f"BUILTIN_{builtin}")
        if opname == "CUSTOM":
            cc = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            opname = f"CUSTOM({cc})"
        impl = ops.lookup(opname, k, where)
        inputs = check_indices(op.inputs, f"op #{k} {opname} input", True)
        outputs = check_indices(op.outputs, f"op #{k} {opname} output", False)
        options = impl.parse_options(opname, op.builtinOptions, k, where)
        operators.append(ir.Operator(k, opname, inputs, outputs, options))

    graph = ir.Graph(
        path=path,
        tensors=tuple(tensors),
        operators=tuple(operators),
        inputs=check_indices(sg.inputs, "subgraph input", False),
        outputs=check_indices(sg.outputs, "subgraph output", False),
    )
    if not graph.inputs or not graph.outputs:
        raise ModelError("subgraph has no inputs or no outputs", where)
    _check_dataflow(graph, where)
    return graph


def _quantization(q, i: int, name: str, shape, where) -> ir.Quantization | None:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, dtype=np.float32)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(scale.size), dtype=np.int64)
    if zp.size != scale.size:
        if zp.size == 1:
            zp = np.full(scale.size, zp[0], dtype=np.int64)
        else:
            raise ModelError(f"tensor {i} '{name}': {scale.size} scales but {zp.size} zero points", where)
    axis = int(q.quantizedDimension)
    if scale.size > 1 and (axis >= len(shape) or shape[axis] != scale.size):
        raise ModelError(f"tensor {i} '{name}': per-channel scales do not match axis {axis}", where)
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise ModelError(f"tensor {i} '{name}' has an invalid scale", where)
    return ir.Quantization(scale=scale, zero_point=zp, axis=axis)


def _constant(t, buffers, buf: bytes, dtype: str, shape, i: int, name: str, where) -> np.ndarray | None:
    if t.buffer == 0 or t.buffer is None:
        return None
    if t.buffer >= len(buffers) or t.buffer < 0:
        raise ModelError(f"tensor {i} '{name}' refers to missing buffer {t.buffer}", where)
    b = buffers[t.buffer]
    raw: np.ndarray | bytes | None = b.data
    if (raw is None or len(raw) == 0) and b.offset and b.offset > 1:
        # Large models keep buffers after the flatbuffer, addressed by (offset, size).
        if b.offset + b.size > len(buf):
            raise ModelError(f"tensor {i} '{name}': buffer past the end of the file", where)
        raw = buf[b.offset : b.offset + b.size]
    if raw is None or len(raw) == 0:
        return None
    raw = np.asarray(raw, dtype=np.uint8).tobytes()
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = count * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ModelError(
            f"tensor {i} '{name}': buffer holds {len(raw)} bytes, shape {shape} needs {expected}", where
        )
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def _check_dataflow(graph: ir.Graph, where) -> None:
    """Every op input is a constant, a graph input, or written by an earlier op."""
    available = set(graph.inputs) | {t.index for t in graph.tensors if t.is_const}
    for op in graph.operators:
        for t in op.inputs:
            if t >= 0 and t not in available:
                raise ModelError(f"{op.describe()} reads tensor {t} before anything writes it", where)
        available.update(op.outputs)
    for t in graph.outputs:
        if t not in available:
            raise ModelError(f"graph output tensor {t} is never written", where)
