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
    candidates = []
    for slope in (chord,) + tuple(np.full_like(lo, c) for c in _CANDIDATE_SLOPES):
        offsets = np.stack([hv - slope * v for hv, v in zip(values, vertices, strict=True)])
        candidates.append((slope, offsets.min(axis=0), offsets.max(axis=0)))
    # Mean height of each line over the interval: larger is better below, smaller above (the first
    # candidate wins ties).
    al, bl = candidates[0][0], candidates[0][1]
    au, bu = candidates[0][0], candidates[0][2]
    for slope, low, high in candidates[1:]:
        take_l = slope * mid + low > al * mid + bl
        take_u = slope * mid + high < au * mid + bu
        al, bl = np.where(take_l, slope, al), np.where(take_l, low, bl)
        au, bu = np.where(take_u, slope, au), np.where(take_u, high, bu)
    return Lines(al, bl, au, bu)


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


def _chord(v_lo: np.ndarray, v_hi: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Slope and offset of the line through (lo, v_lo) and (hi, v_hi); a flat line at the smaller
    value where the interval is a point."""
    width = hi - lo
    wide = width > 1e-300
    slope = np.where(wide, (v_hi - v_lo) / np.where(wide, width, 1.0), 0.0)
    offset = np.where(wide, v_lo - slope * lo, np.minimum(v_lo, v_hi))
    return slope, offset


def clamp_difference_lines(
    pl: np.ndarray, ph: np.ndarray, ul: np.ndarray, uh: np.ndarray, d_lo: np.ndarray, d_hi: np.ndarray,
    lo: np.ndarray, hi: np.ndarray,
) -> Lines:
    """A = f(p) - f(u) for the clamp f to [lo, hi], in terms of delta = p - u in [d_lo, d_hi],
    using where p and u lie, not only delta.

    Always min(0, delta) <= A <= max(0, delta) (f is monotone and 1-Lipschitz). Where one side stays
    on one piece of f that tightens, e.g. for p in the linear piece and u <= hi (a ReLU whose float
    value is surely active while the int8 one may not be): A = p - max(u, lo) = min(delta, p - lo),
    so delta >= A >= min(delta, pl - lo). Each case gives A >= min(delta + a_l, c_l) and
    A <= max(delta + a_u, c_u) (an infinite constant drops that piece); below, the chord of the
    concave lower function, above, the chord of the convex upper one. Every case's functions lie
    within the generic ones, so these lines are never looser at any delta of the range. Where both
    sides stay on one piece the lines are exact (delta, or 0)."""
    zero = np.zeros_like(d_lo)
    inf = np.full_like(d_lo, np.inf)
    a_l, c_l, a_u, c_u = zero.copy(), zero.copy(), zero.copy(), zero.copy()
    p_lin = (pl >= lo) & (ph <= hi)
    u_lin = (ul >= lo) & (uh <= hi)
    cases = (
        # p linear: A = p - f(u).
        (p_lin & (uh <= hi), zero, pl - lo, zero, -inf),  # u may be clamped low: min(delta, p - lo)
        (p_lin & (ul >= lo), zero, inf, zero, ph - hi),  # u may be clamped high: max(delta, p - hi)
        # u linear: A = f(p) - u.
        (u_lin & (ph <= hi), zero, inf, zero, lo - ul),  # max(delta, lo - u)
        (u_lin & (pl >= lo), zero, hi - uh, zero, -inf),  # min(delta, hi - u)
        # p clamped low (A = lo - f(u) <= 0) / high (A = hi - f(u) >= 0).
        ((ph <= lo) & (uh <= hi), lo - ph, zero, -inf, zero),  # min(0, delta + lo - p)
        ((pl >= hi) & (ul >= lo), inf, zero, hi - pl, zero),  # max(0, delta + hi - p)
        # u clamped low (A = f(p) - lo >= 0) / high (A = f(p) - hi <= 0).
        ((uh <= lo) & (ph <= hi), inf, zero, uh - lo, zero),  # max(0, delta + u - lo)
        ((ul >= hi) & (pl >= lo), ul - hi, zero, -inf, zero),  # min(0, delta + u - hi)
    )
    for where, al, cl, au, cu in cases:
        a_l, c_l = np.where(where, al, a_l), np.where(where, cl, c_l)
        a_u, c_u = np.where(where, au, a_u), np.where(where, cu, c_u)
    alpha_l, beta_l = _chord(np.minimum(d_lo + a_l, c_l), np.minimum(d_hi + a_l, c_l), d_lo, d_hi)
    alpha_u, beta_u = _chord(np.maximum(d_lo + a_u, c_u), np.maximum(d_hi + a_u, c_u), d_lo, d_hi)
    # Both sides on one piece: A is delta itself (linear piece) or 0 (clamped on the same side).
    ident = p_lin & u_lin
    flat = ((ph <= lo) & (uh <= lo)) | ((pl >= hi) & (ul >= hi))
    one = np.ones_like(d_lo)
    alpha_l, alpha_u = (np.where(ident, one, np.where(flat, zero, a)) for a in (alpha_l, alpha_u))
    beta_l, beta_u = (np.where(ident | flat, zero, b) for b in (beta_l, beta_u))
    return Lines(alpha_l, beta_l, alpha_u, beta_u)


def pick(coef: np.ndarray, lines: Lines) -> tuple[np.ndarray, np.ndarray]:
    """For an objective term coef * h(z) to be bounded from above: (coef * alpha, coef * beta)
    using the upper line where coef >= 0 and the lower line elsewhere. coef is (R, n)."""
    pos = np.maximum(coef, 0.0)
    neg = np.minimum(coef, 0.0)
    return pos * lines.alpha_u + neg * lines.alpha_l, pos @ lines.beta_u + neg @ lines.beta_l
