"""Execute a prepared int8 graph on a batch, bit-exactly as the target's kernels do.

The loop is TFLM's Invoke: each op's kernel (`Op.execute`, toolchain/ops/) reads its prepared
record and its input tensors, vectorised over a leading batch axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from toolchain import blas, ops
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


def run(pg: PreparedGraph, x: np.ndarray, keep_intermediates: bool = False, until: int | None = None) -> Run:
    """Run the graph on a batch of inputs (int8 for int8-input graphs, float32 for float-input ones).

    With `until` (a tensor index), stop once that tensor is computed and return it as the only
    output (the certify engines need the logits, not the softmax after them)."""
    with blas.limit_threads(BLAS_THREADS):
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
