"""The executor's input quantization, for callers that quantize float inputs outside a graph run
(the falsifier and the gate feed int8 graphs with quantized sensor values).

The kernels themselves live with their ops in toolchain/ops/ (affine_quantize: ops/quantize.py).
"""

from __future__ import annotations

from toolchain.ops.quantize import affine_quantize

__all__ = ["affine_quantize"]
