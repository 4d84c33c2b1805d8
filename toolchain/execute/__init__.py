"""Execute a prepared int8 graph on a batch, bit-exactly as the target's kernels do.

The loop is TFLM's Invoke: each op's kernel (`Op.execute`, toolchain/ops/) reads its prepared
record and its input tensors, vectorised over a leading batch axis.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from toolchain import ops
from toolchain.errors import ModelError
from toolchain.tflite.ir import Graph
from toolchain.tflite.prepare import PreparedGraph


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
# One thread while the executor runs, restored after (0 in the environment: leave BLAS alone).
BLAS_THREADS = int(os.environ.get("QASSURE_EXECUTOR_BLAS_THREADS", "1"))


_FOUND: dict[int, tuple[Any, ...]] = {}  # len(sys.modules) at the scan -> the BLAS controllers found


def _blas_libraries() -> tuple[Any, ...]:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (numpy's OpenBLAS,
    and scipy's own once scipy.linalg is imported). Scanned again only when modules were imported
    since the last scan (a new import is how a new BLAS gets loaded): one scan costs ~1 ms."""
    key = len(sys.modules)
    if key not in _FOUND:
        _FOUND.clear()
        _FOUND[key] = tuple(lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")
    return _FOUND[key]


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    """At most n BLAS threads inside the block, the previous counts restored after. The libraries'
    own setters, not ThreadpoolController.limit: this runs once per executor call, and limit()
    costs ~20 us where two setter calls cost ~2 us."""
    libs = _blas_libraries() if n > 0 else ()
    changed = [(lib, old) for lib in libs if (old := lib.get_num_threads()) != n]
    for lib, _ in changed:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, old in changed:
            lib.set_num_threads(old)


def run(pg: PreparedGraph, x: np.ndarray, keep_intermediates: bool = False, until: int | None = None) -> Run:
    """Run the graph on a batch of inputs (int8 for int8-input graphs, float32 for float-input ones).

    With `until` (a tensor index), stop once that tensor is computed and return it as the only
    output (the certify engines need the logits, not the softmax after them)."""
    with _blas_threads(BLAS_THREADS):
        return _run(pg, x, keep_intermediates, until)


def _run(pg: PreparedGraph, x: np.ndarray, keep_intermediates: bool, until: int | None = None) -> Run:
    graph = pg.graph
    values: dict[int, np.ndarray] = {graph.inputs[0]: as_batch(graph, x)}
    for t in graph.tensors:
        if t.data is not None:
            values[t.index] = t.data[None]
    for op, prep in zip(graph.operators, pg.ops, strict=True):
        if until is not None and until in values:
            break
        kernel = ops.lookup(op.opcode, op.index, graph.path)
        inputs = [values[t] if t >= 0 else None for t in op.inputs]
        values[op.outputs[0]] = kernel.execute(prep, inputs, graph.tensor(op.outputs[0]).shape, pg.rounding)
    outs = (values[until],) if until is not None else tuple(values[t] for t in graph.outputs)
    return Run(outs, values if keep_intermediates else None)
