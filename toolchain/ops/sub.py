"""SUB, int8 (TFLM micro/kernels/sub.cc, sub_common.cc; reference_ops Sub / BroadcastQuantSubSlow).

ADD's recipe with the second rescaled input subtracted (ops/add.py: the record, the table, the lowering
and the C parameters are ADD's). Prepare differs in precision: sub_common.cc takes twice the larger scale
and the three real multipliers in float, then widens them to double for
QuantizeMultiplierSmallerThanOneExp.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from toolchain.ops.add import AddOp


class SubOp(AddOp):
    names = ("SUB",)
    sign: ClassVar[int] = -1
    kernel: ClassVar[str] = "qa_sub"

    @staticmethod
    def real_multipliers(s1: float, s2: float, s_out: float, left_shift: int) -> tuple[float, float, float]:
        """sub_common.cc: every ratio computed in float, then widened to double."""
        twice_max = np.float32(2) * max(np.float32(s1), np.float32(s2))
        out = twice_max / (np.float32(1 << left_shift) * np.float32(s_out))
        return float(np.float32(s1) / twice_max), float(np.float32(s2) / twice_max), float(out)
