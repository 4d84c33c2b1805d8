"""The one result type of every certify engine.

An engine bounds the error e_k(x) = y_k(x) - ŷ_k(x) (float output minus dequantized int8 output) of
every output k over a region. `ErrorBound` holds the certified range [low_k, high_k] of e_k; two sound
bounds of the same region `meet` (both hold, so their intersection does), and bounds of the parts of a
region `join` (the region's error lies in their union). `EngineResult` adds what the engine did to get
there (its work, why it stopped) and what it learnt on the way (float ranges, witness candidates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ErrorBound:
    """Certified low_k <= y_k - ŷ_k <= high_k for every output k, over one region; arrays (..., n_out)
    (a leading batch axis holds one bound per box)."""

    low: np.ndarray
    high: np.ndarray

    @property
    def upper(self) -> np.ndarray:
        """Certified max |y_k - ŷ_k| per output."""
        return np.maximum(np.abs(self.low), np.abs(self.high))

    def meet(self, other: ErrorBound) -> ErrorBound:
        """Both bounds hold on the same region: so does their intersection."""
        return ErrorBound(np.maximum(self.low, other.low), np.minimum(self.high, other.high))

    def join(self, other: ErrorBound) -> ErrorBound:
        """Bounds of two parts of a region: the region's error lies in their union."""
        return ErrorBound(np.minimum(self.low, other.low), np.maximum(self.high, other.high))

    @staticmethod
    def join_all(bounds: list[ErrorBound]) -> ErrorBound:
        return ErrorBound(np.min([b.low for b in bounds], axis=0), np.max([b.high for b in bounds], axis=0))

    def item(self, i: int) -> ErrorBound:
        """The bound of box i of a batch."""
        return ErrorBound(self.low[i], self.high[i])


# Why a search stopped (recorded in the certificate).
STOP_DECIDED = "decided"  # every output within its budget, or (budget refuted) the bound within target_ratio
#   of the witness
STOP_BUDGET = "work budget spent"  # max_boxes or max_work reached: deterministic
STOP_STALLED = "stalled"  # auto: the last 3/4 of the work tightened the bound by less than 1%
STOP_EXHAUSTED = "nothing left to refine"  # every box is as small as the engine can make it
STOP_TIME = "time limit"  # the wall-clock safety net bit before the work budget was spent
STOP_ONE_PASS = "single pass"  # engines without a search (interval, differential, milp)


@dataclass(frozen=True)
class EngineResult:
    """What one engine certified on one region, and how."""

    bound: ErrorBound
    stopped: str  # one of the STOP_* reasons
    work: dict[str, float] = field(default_factory=dict)  # boxes, enumerations, MILP solves, multiply-adds
    float_ranges: list[tuple[np.ndarray, np.ndarray]] | None = None  # per node: float pre-activation range
    candidates: np.ndarray | None = None  # inputs where the bound is approached (witness candidates)
    notes: tuple[str, ...] = ()  # engine status lines, for people
    details: dict = field(default_factory=dict)  # engine-specific numbers (e.g. the MILP's incumbent)
