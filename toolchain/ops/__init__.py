"""The TFLite operators qassure supports: one module each (or per TFLM kernel family), one registry.

Every stage reaches an op through `lookup(builtin name)`: the reader (options), prepare, the
executor, the merge, the C code generator and inspect. The set of supported ops is the registry's
keys; adding an op is one module here plus its C kernel (docs/adding-an-op.md).
"""

from __future__ import annotations

from toolchain.errors import UnsupportedOpError
from toolchain.ops.add import AddOp
from toolchain.ops.base import Op
from toolchain.ops.concatenation import ConcatenationOp
from toolchain.ops.conv import ConvOp
from toolchain.ops.fully_connected import FullyConnectedOp
from toolchain.ops.leaky_relu import LeakyReluOp
from toolchain.ops.lookup_table import LookupTableOp
from toolchain.ops.mul import MulOp
from toolchain.ops.pad import PadOp
from toolchain.ops.pooling import PoolOp
from toolchain.ops.prelu import PreluOp
from toolchain.ops.quantize import DequantizeOp, QuantizeOp
from toolchain.ops.reduce import MeanOp, ReduceMaxOp
from toolchain.ops.relu import ReluOp
from toolchain.ops.reshape import ReshapeOp
from toolchain.ops.softmax import SoftmaxOp
from toolchain.ops.strided_slice import StridedSliceOp
from toolchain.ops.sub import SubOp
from toolchain.ops.transpose import TransposeOp
from toolchain.ops.transpose_conv import TransposeConvOp

_IMPLEMENTATIONS: tuple[Op, ...] = (
    FullyConnectedOp(),
    ConvOp(),
    TransposeConvOp(),
    PoolOp(),
    AddOp(),
    SubOp(),
    MulOp(),
    ReshapeOp(),
    TransposeOp(),
    StridedSliceOp(),
    PadOp(),
    ConcatenationOp(),
    MeanOp(),
    ReduceMaxOp(),
    SoftmaxOp(),
    LookupTableOp(),
    ReluOp(),
    LeakyReluOp(),
    PreluOp(),
    QuantizeOp(),
    DequantizeOp(),
)

REGISTRY: dict[str, Op] = {name: impl for impl in _IMPLEMENTATIONS for name in impl.names}
SUPPORTED_OPS = frozenset(REGISTRY)


def lookup(name: str, position: int, where: object = None) -> Op:
    """The implementation of builtin `name` (op #`position` of the file `where`), or one line saying
    it is not supported."""
    impl = REGISTRY.get(name)
    if impl is None:
        raise UnsupportedOpError(f"unsupported op {name} at position #{position}", where)
    return impl


__all__ = ["REGISTRY", "SUPPORTED_OPS", "Op", "lookup"]
