"""Execute a prepared int8 graph on a batch, bit-exactly as the target's kernels do."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from dataclasses import dataclass

import numpy as np

from toolchain.errors import ModelError
from toolchain.execute import kernels as K
from toolchain.tflite import prepare as P
from toolchain.tflite.ir import Graph, Operator


@dataclass(frozen=True)
class Run:
    """Result of one batched execution: graph outputs, and every tensor when asked."""

    outputs: tuple[np.ndarray, ...]  # each (B, *tensor.shape)
    tensors: dict[int, np.ndarray] | None  # tensor index -> (B, *shape), when keep_intermediates

    @property
    def output(self) -> np.ndarray:
        return self.outputs[0]


def as_batch(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Accept (B, *input_shape), (*input_shape) or (B, n) flattened inputs; return (B, *shape)."""
    shape = graph.input.shape
    x = np.asarray(x)
    size = int(np.prod(shape))
    if x.shape == shape:
        return x[None]
    if x.ndim >= 1 and x.size % size == 0 and (x.shape[1:] == shape or int(np.prod(x.shape[1:])) == size):
        return x.reshape((x.shape[0],) + shape)
    raise ModelError(f"input of shape {x.shape} does not fit the model input {shape}", graph.path)


# BLAS threads for the executor's matmuls. Its GEMMs are thin (K and N of tens to hundreds): a
# second OpenBLAS thread gains little on an idle machine, and on a busy one (the certify engines,
# tests or other jobs on the same cores) waiting for a descheduled BLAS thread made a batch of 256
# through AD01 take 200 ms instead of 3 ms and ResNet-8 1.5 s instead of 0.45 s (bench/run.py).
# One thread, set only for the calling thread (openblas_set_num_threads_local) and restored after.
BLAS_THREADS = int(os.environ.get("QASSURE_EXECUTOR_BLAS_THREADS", "1"))


def _openblas_set_threads_local():
    """numpy's bundled OpenBLAS openblas_set_num_threads_local, or None when not available."""
    root = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(root, "libscipy_openblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


_SET_THREADS = _openblas_set_threads_local() if BLAS_THREADS > 0 else None


@contextlib.contextmanager
def _blas_threads(n: int):
    if _SET_THREADS is None:
        yield
        return
    old = _SET_THREADS(n)
    try:
        yield
    finally:
        _SET_THREADS(old)


def run(pg: P.PreparedGraph, x: np.ndarray, keep_intermediates: bool = False, until: int | None = None) -> Run:
    """Run the graph on a batch of inputs (int8 for int8-input graphs, float32 for float-input ones).

    With `until` (a tensor index), stop once that tensor is computed and return it as the only
    output (the certify engines need the logits, not the softmax after them)."""
    with _blas_threads(BLAS_THREADS):
        return _run(pg, x, keep_intermediates, until)


def _run(pg: P.PreparedGraph, x: np.ndarray, keep_intermediates: bool, until: int | None = None) -> Run:
    graph = pg.graph
    values: dict[int, np.ndarray] = {graph.inputs[0]: as_batch(graph, x)}
    for t in graph.tensors:
        if t.data is not None:
            values[t.index] = t.data[None]
    for op, prep in zip(graph.operators, pg.ops):
        if until is not None and until in values:
            break
        values[op.outputs[0]] = run_op(graph, op, prep, values, pg.rounding)
    outs = (values[until],) if until is not None else tuple(values[t] for t in graph.outputs)
    return Run(outs, values if keep_intermediates else None)


def run_op(graph: Graph, op: Operator, p: P.Prepared, values: dict[int, np.ndarray], rounding) -> np.ndarray:
    """Execute one operator on the current tensor values."""
    x = values[op.inputs[0]]
    out_shape = graph.tensor(op.outputs[0]).shape
    batch = x.shape[0]
    if isinstance(p, P.FullyConnected):
        return K.fully_connected(x, p, out_shape, rounding)
    if isinstance(p, P.Conv):
        return K.conv(x, p, rounding)
    if isinstance(p, P.Pool):
        return K.pool(x, p)
    if isinstance(p, P.Add):
        return K.add(x, values[op.inputs[1]], p, rounding)
    if isinstance(p, P.Mul):
        return K.mul(x, values[op.inputs[1]], p, rounding)
    if isinstance(p, P.Reshape):
        return x.reshape((batch,) + out_shape)
    if isinstance(p, P.Pad):
        return np.pad(x, ((0, 0),) + p.paddings, constant_values=p.pad_value).astype(np.int8)
    if isinstance(p, P.Concatenation):
        parts = [np.broadcast_to(values[t], (batch,) + values[t].shape[1:]) for t in op.inputs]
        return np.concatenate(parts, axis=p.axis + 1)
    if isinstance(p, P.Mean):
        return K.mean(x, p, out_shape, rounding)
    if isinstance(p, P.Softmax):
        from toolchain.execute import fixedpoint

        return fixedpoint.softmax_int8(x, fixedpoint.SoftmaxParams(p.input_multiplier, p.input_left_shift, p.diff_min))
    if isinstance(p, P.Table):
        return p.table[x.astype(np.int64) + 128]
    if isinstance(p, P.Quantize):
        if p.from_float:
            return K.affine_quantize(x, p.scale, p.zero_point)
        return K.requantize(x, p, rounding)
    if isinstance(p, P.Dequantize):
        return K.dequantize(x, p)
    raise ModelError(f"{op.describe()}: no executor", graph.path)
