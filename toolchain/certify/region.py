"""Input regions: boxes over the model's flattened float input."""

from __future__ import annotations

from dataclasses import dataclass

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

    def split(self, dim: int) -> tuple[Box, Box]:
        mid = (self.low[dim] + self.high[dim]) / 2
        hi1 = self.high.copy()
        hi1[dim] = mid
        lo2 = self.low.copy()
        lo2[dim] = mid
        return Box(self.low, hi1), Box(lo2, self.high)

    def to_dict(self) -> dict:
        return {"box": {"low": self.low.tolist(), "high": self.high.tolist()}}

    def snap_to_grid(self, scale: float, zero_point: int) -> Box:
        """For int8 input interfaces: the smallest box of int8-representable values inside."""
        qlo = np.clip(np.ceil(self.low / scale - 1e-9) + zero_point, -128, 127)
        qhi = np.clip(np.floor(self.high / scale + 1e-9) + zero_point, -128, 127)
        return Box(scale * (qlo - zero_point), scale * (qhi - zero_point))
