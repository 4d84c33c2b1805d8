"""Input regions: boxes over the model's flattened float input, alone or as a batch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Box:
    low: np.ndarray  # float64, flattened model input
    high: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "low", np.asarray(self.low, dtype=np.float64).ravel())
        object.__setattr__(self, "high", np.asarray(self.high, dtype=np.float64).ravel())
        if self.low.shape != self.high.shape or np.any(self.low > self.high):
            raise ValueError("box low must not exceed high")

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(count, self.low.size))

    def corners(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Random vertices of the box: saturation and worst cases live on the boundary."""
        pick = rng.integers(0, 2, size=(count, self.low.size)).astype(bool)
        return np.where(pick, self.high, self.low)

    def cut(self, dim: int, at: float) -> tuple[Box, Box]:
        """The two halves of the box on either side of x[dim] = at (sharing that face)."""
        hi1 = self.high.copy()
        hi1[dim] = at
        lo2 = self.low.copy()
        lo2[dim] = at
        return Box(self.low, hi1), Box(lo2, self.high)

    def to_dict(self) -> dict:
        return {"box": {"low": self.low.tolist(), "high": self.high.tolist()}}

    def snap_to_grid(self, scale: float, zero_point: int) -> Box:
        """For int8 input interfaces: the smallest box of int8-representable values inside."""
        qlo = np.clip(np.ceil(self.low / scale - 1e-9) + zero_point, -128, 127)
        qhi = np.clip(np.floor(self.high / scale + 1e-9) + zero_point, -128, 127)
        return Box(scale * (qlo - zero_point), scale * (qhi - zero_point))


@dataclass(frozen=True)
class BoxBatch:
    """B boxes of one input space, bounded together by the batched engines: low, high (B, n)."""

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self):
        low = np.atleast_2d(np.asarray(self.low, dtype=np.float64))
        high = np.atleast_2d(np.asarray(self.high, dtype=np.float64))
        if low.shape != high.shape or np.any(low > high):
            raise ValueError("box low must not exceed high")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @staticmethod
    def of(boxes: list[Box]) -> BoxBatch:
        return BoxBatch(np.stack([b.low for b in boxes]), np.stack([b.high for b in boxes]))

    def __len__(self) -> int:
        return self.low.shape[0]

    def __getitem__(self, i: int) -> Box:
        return Box(self.low[i], self.high[i])

    # Computed once per batch (the engines read them per block of rows); low and high never change.
    @cached_property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2

    @cached_property
    def radius(self) -> np.ndarray:
        return (self.high - self.low) / 2
