"""Soundness of the linear relaxations the differential engine and the MILP rows rely on: every
line must hold at every point of its domain (sampled densely, plus the domain's vertices and
kinks, where a piecewise-linear function's gaps are largest)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.certify import relax

_TOL = 1e-9


def _points(pl, ph, ul, uh, dl, dh, kinks, rng) -> tuple[np.ndarray, np.ndarray]:
    """Points (p, u) of the ranges with delta = p - u in [dl, dh]: random ones, every combination
    of the ranges' ends and the clamp's kinks, and points on the delta range's ends."""
    p_special = [v for v in [pl, ph, *kinks] if pl <= v <= ph]
    u_special = [v for v in [ul, uh, *kinks] if ul <= v <= uh]
    P, U = np.meshgrid(p_special, u_special)
    ps = np.concatenate([rng.uniform(pl, ph, 4000), P.ravel()])
    us = np.concatenate([rng.uniform(ul, uh, 4000), U.ravel()])
    # On the ends of the delta range: u = p - dl and u = p - dh where that lies in [ul, uh].
    for end in (dl, dh):
        ps = np.concatenate([ps, ps[:4000]])
        us = np.concatenate([us, ps[:4000] - end])
    keep = (us >= ul) & (us <= uh) & (ps - us >= dl) & (ps - us <= dh)
    return ps[keep], us[keep]


def _chord_value(h, z, dl, dh):
    return h(dl) + (h(dh) - h(dl)) * (z - dl) / (dh - dl)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), lo=st.sampled_from([0.0, -0.7, -np.inf]), hi_finite=st.booleans())
def test_clamp_difference_lines_hold_and_never_loosen(data, lo, hi_finite):
    # ReLU (floor 0), a clamp with a negative floor (zero point above -128), a ceiling alone.
    hi = data.draw(st.floats(0.2, 3.0)) if hi_finite or not np.isfinite(lo) else np.inf
    # (+ 0.0 turns -0.0 into 0.0, which numpy's uniform(0.0, -0.0) would refuse)
    pl, ph = sorted(data.draw(st.floats(-4, 4)) + 0.0 for _ in range(2))
    ul, uh = sorted(data.draw(st.floats(-4, 4)) + 0.0 for _ in range(2))
    # The engine's delta range is often tighter than the interval one (back-substitution).
    shrink_l, shrink_h = (data.draw(st.floats(0, 0.5)) for _ in range(2))
    dl0, dh0 = pl - uh, ph - ul
    dl, dh = dl0 + shrink_l * (dh0 - dl0), dh0 - shrink_h * (dh0 - dl0)
    arr = [np.array([v]) for v in (pl, ph, ul, uh, dl, dh, lo, hi)]
    lines = relax.clamp_difference_lines(*arr)
    al, bl, au, bu = (float(v[0]) for v in (lines.alpha_l, lines.beta_l, lines.alpha_u, lines.beta_u))
    kinks = [v for v in (lo, hi) if np.isfinite(v)]
    ps, us = _points(pl, ph, ul, uh, dl, dh, kinks, np.random.default_rng(0))
    d = ps - us
    a = np.clip(ps, lo, hi) - np.clip(us, lo, hi)
    assert np.all(al * d + bl <= a + _TOL)
    assert np.all(a <= au * d + bu + _TOL)
    # Never looser than the chords of min(0, delta) and max(0, delta) anywhere in [dl, dh] (both
    # are lines, so checking the ends suffices).
    if dh - dl > 1e-9:
        for z in (dl, dh):
            assert al * z + bl >= _chord_value(lambda v: min(0.0, v), z, dl, dh) - 1e-9
            assert au * z + bu <= _chord_value(lambda v: max(0.0, v), z, dl, dh) + 1e-9


def test_clamp_difference_lines_exact_where_one_side_is_surely_active():
    """A ReLU whose float value is surely active while the int8 one may not be: A = min(delta, p)
    <= delta, so the upper line is delta itself (the chord of max(0, delta) is much looser at
    negative delta), and the lower one the chord of min(delta, pl)."""
    v = [np.array([x]) for x in (0.5, 0.6, -1.0, 1.0, -0.5, 1.6, 0.0, np.inf)]
    lines = relax.clamp_difference_lines(*v)
    assert lines.alpha_u[0] == 1.0 and abs(lines.beta_u[0]) < 1e-12
    # Below: the chord of min(delta, 0.5) over [-0.5, 1.6].
    assert np.isclose(lines.alpha_l[0] * -0.5 + lines.beta_l[0], -0.5)
    assert np.isclose(lines.alpha_l[0] * 1.6 + lines.beta_l[0], 0.5)
