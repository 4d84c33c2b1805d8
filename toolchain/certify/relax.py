"""Sound linear relaxations of the piecewise-linear functions of the merged network.

Every relaxation here returns, elementwise, lines  alpha_l z + beta_l <= h(z) <= alpha_u z + beta_u
valid for all z in [lo, hi]. For a piecewise-linear h, any slope is sound once its offset is
taken as the max (upper) or min (lower) of h(v) - alpha v over the vertices v: the interval ends
and the breakpoints inside it. Slopes are chosen per side by enclosed area (see _vertex_lines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lines:
    alpha_l: np.ndarray
    beta_l: np.ndarray
    alpha_u: np.ndarray
    beta_u: np.ndarray


def clamp(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(z, lo), hi)


_CANDIDATE_SLOPES = (-1.0, 0.0, 1.0)


def _vertex_lines(
    h: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray, breaks: Sequence[np.ndarray],
) -> Lines:
    """Lines below and above h over [lo, hi] with the given breakpoints.

    Every slope is sound once the offset is the min / max of h(v) - slope v over the vertices. Among
    the chord's slope and the pieces' own slopes (-1, 0, 1), each side takes the one whose line
    encloses the least area with h (CROWN's adaptive choice, generalised to any breakpoints)."""
    width = hi - lo
    wide = width > 1e-300
    with np.errstate(divide="ignore", invalid="ignore"):
        chord = np.where(wide, (h(hi) - h(lo)) / np.where(wide, width, 1.0), 0.0)
    chord = np.nan_to_num(chord, nan=0.0, posinf=0.0, neginf=0.0)
    vertices = [lo, hi] + [np.clip(b, lo, hi) for b in breaks]
    values = [h(v) for v in vertices]
    mid = (lo + hi) / 2
    best_l = best_u = None
    for slope in (chord,) + tuple(np.full_like(lo, c) for c in _CANDIDATE_SLOPES):
        offsets = np.stack([hv - slope * v for hv, v in zip(values, vertices)])
        bl, bu = offsets.min(axis=0), offsets.max(axis=0)
        # Mean height of the line over the interval: larger is better below, smaller above.
        ml, mu = slope * mid + bl, slope * mid + bu
        if best_l is None:
            best_l, best_u = (slope, bl, ml), (slope, bu, mu)
            continue
        take_l = ml > best_l[2]
        take_u = mu < best_u[2]
        best_l = tuple(np.where(take_l, new, old) for new, old in zip((slope, bl, ml), best_l))
        best_u = tuple(np.where(take_u, new, old) for new, old in zip((slope, bu, mu), best_u))
    return Lines(best_l[0], best_l[1], best_u[0], best_u[1])


def clamp_lines(lo: np.ndarray, hi: np.ndarray, c_lo: np.ndarray, c_hi: np.ndarray) -> Lines:
    """clamp(z, c_lo, c_hi) for z in [lo, hi] (c_lo / c_hi may be infinite)."""
    fin_lo = np.where(np.isfinite(c_lo), c_lo, lo)
    fin_hi = np.where(np.isfinite(c_hi), c_hi, hi)
    return _vertex_lines(lambda z: clamp(z, c_lo, c_hi), lo, hi, [fin_lo, fin_hi])


def difference_of_clamps_lines(
    lo: np.ndarray, hi: np.ndarray, f_lo: np.ndarray, f_hi: np.ndarray, g_lo: np.ndarray, g_hi: np.ndarray
) -> Lines:
    """B(u) = clamp(u, f_lo, f_hi) - clamp(u, g_lo, g_hi): the part of the error that comes from
    the int8 range alone (saturation), as a function of the quantized pre-activation u."""

    def h(z):
        return clamp(z, f_lo, f_hi) - clamp(z, g_lo, g_hi)

    breaks = [np.where(np.isfinite(b), b, lo) for b in (f_lo, f_hi, g_lo, g_hi)]
    return _vertex_lines(h, lo, hi, breaks)


def lipschitz_difference_lines(d_lo: np.ndarray, d_hi: np.ndarray) -> Lines:
    """A = f(p) - f(u) for a nondecreasing 1-Lipschitz f, in terms of delta = p - u in [d_lo, d_hi]:
    min(0, delta) <= A <= max(0, delta); the chords of those two functions bound A linearly."""
    upper = _vertex_lines(lambda z: np.maximum(z, 0.0), d_lo, d_hi, [np.zeros_like(d_lo)])
    lower = _vertex_lines(lambda z: np.minimum(z, 0.0), d_lo, d_hi, [np.zeros_like(d_lo)])
    return Lines(lower.alpha_l, lower.beta_l, upper.alpha_u, upper.beta_u)


def pick(coef: np.ndarray, lines: Lines) -> tuple[np.ndarray, np.ndarray]:
    """For an objective term coef * h(z) to be bounded from above: (coef * alpha, coef * beta)
    using the upper line where coef >= 0 and the lower line elsewhere. coef is (R, n)."""
    pos = np.maximum(coef, 0.0)
    neg = np.minimum(coef, 0.0)
    return pos * lines.alpha_u + neg * lines.alpha_l, pos @ lines.beta_u + neg @ lines.beta_l
