"""Typed IR of a TFLite graph: tensors, operators with typed options, one subgraph.

The IR is what every later stage reads (execute, merge, certify, emit); it holds no
behaviour beyond small accessors. Shapes keep the file's own batch dimension (1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Fused activation functions, as in the TFLite schema's ActivationFunctionType.
ACT_NONE = "NONE"
ACT_RELU = "RELU"
ACT_RELU_N1_TO_1 = "RELU_N1_TO_1"
ACT_RELU6 = "RELU6"


@dataclass(frozen=True)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point), per tensor or per channel along `axis`."""

    scale: np.ndarray  # float32, shape (1,) or (channels,)
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def scalar(self) -> tuple[float, int]:
        """(scale, zero_point) of a per-tensor quantization."""
        return float(self.scale[0]), int(self.zero_point[0])


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: int8, int32, float32, ...
    quant: Quantization | None
    data: np.ndarray | None  # constant contents, already shaped; None for activations

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


# --- typed operator options (only the fields the executor needs) -------------------------


@dataclass(frozen=True)
class ConvOptions:
    padding: str  # "SAME" | "VALID"
    stride_h: int
    stride_w: int
    dilation_h: int = 1
    dilation_w: int = 1
    depth_multiplier: int = 1  # DEPTHWISE_CONV_2D only
    activation: str = ACT_NONE


@dataclass(frozen=True)
class PoolOptions:
    padding: str
    stride_h: int
    stride_w: int
    filter_h: int
    filter_w: int
    activation: str = ACT_NONE


@dataclass(frozen=True)
class FullyConnectedOptions:
    activation: str = ACT_NONE
    keep_num_dims: bool = False


@dataclass(frozen=True)
class ActivationOptions:
    """ADD, MUL: only a fused activation."""

    activation: str = ACT_NONE


@dataclass(frozen=True)
class ConcatenationOptions:
    axis: int
    activation: str = ACT_NONE


@dataclass(frozen=True)
class ReducerOptions:
    keep_dims: bool = False


@dataclass(frozen=True)
class SoftmaxOptions:
    beta: float = 1.0


@dataclass(frozen=True)
class LeakyReluOptions:
    alpha: float  # the slope below zero (float32, as the flatbuffer holds it)


@dataclass(frozen=True)
class StridedSliceOptions:
    begin_mask: int = 0  # bit a: axis a starts at its first element (last, for a negative stride)
    end_mask: int = 0  # bit a: axis a runs to its end
    ellipsis_mask: int = 0
    new_axis_mask: int = 0
    shrink_axis_mask: int = 0  # bit a: axis a keeps one element and leaves the output shape
    offset: bool = False  # end is relative to begin


@dataclass(frozen=True)
class NoOptions:
    pass


OpOptions = (
    ConvOptions
    | PoolOptions
    | FullyConnectedOptions
    | ActivationOptions
    | ConcatenationOptions
    | ReducerOptions
    | SoftmaxOptions
    | LeakyReluOptions
    | StridedSliceOptions
    | NoOptions
)


@dataclass(frozen=True)
class Operator:
    index: int  # position in execution order
    opcode: str  # TFLite builtin name, e.g. "FULLY_CONNECTED"
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: OpOptions = field(default_factory=NoOptions)

    def describe(self) -> str:
        return f"op #{self.index} {self.opcode}"


@dataclass(frozen=True)
class Graph:
    """One subgraph of a .tflite file, ops in execution order."""

    path: Path | None
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    @property
    def input(self) -> Tensor:
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> Tensor:
        return self.tensors[self.outputs[0]]

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "<model>"

    @property
    def is_integer(self) -> bool:
        """True when every activation tensor is integer (a full-int8 graph, maybe with float I/O)."""
        inner = {t for op in self.operators for t in op.outputs} - set(self.outputs)
        return all(self.tensors[t].dtype != "float32" for t in inner)
