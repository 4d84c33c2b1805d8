"""Interval and differential (symbolic) bounds on the merged network over one input box.

`interval` is the seed paper's baseline: float and quantized sides bounded separately, layer by
layer, and the error bound is the distance between the two intervals.

`differential` back-substitutes linear bounds (CROWN/DeepPoly style) through both sides at once,
over the shared input x and the per-neuron rounding terms eps (free, bounded). Wherever an
objective weighs y and ŷ with opposite signs it is rewritten as (l_f + l_q) y - l_q (y - ŷ), and
the difference d = y - ŷ is relaxed directly: d = [f(p) - f(u)] + [f(u) - g(u)], the first part
bounded through delta = p - u (ReluDiff-like), the second (saturation) through u. So the
shared part cancels symbolically instead of being bounded twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from toolchain.certify import relax
from toolchain.certify.region import Box
from toolchain.margins import CELL_TOL
from toolchain.merge import MergedNet, Node

# Rows of objectives pushed back at once; bounds a block's memory to rows x widest layer.
_BLOCK = 4096


@dataclass
class NodeBounds:
    """Certified ranges at one node over the box: float pre-activation p, quantized pre-activation
    u (with its rounding term), and their difference delta = p - u; then y and ŷ follow."""

    pl: np.ndarray
    ph: np.ndarray
    ul: np.ndarray
    uh: np.ndarray
    dl: np.ndarray
    dh: np.ndarray
    exact: np.ndarray | None = None  # quantized output known exactly over the box (one integer)
    _lines: tuple | None = field(default=None, repr=False)  # relaxations, once the ranges are final

    def relaxations(self, node: Node) -> tuple[relax.Lines, relax.Lines, tuple, relax.Lines]:
        """Lines for y = f(p), ŷ = g(u), A = f(p) - f(u) and B = f(u) - g(u) (in u).

        A is bounded in (p, u) as rows (coef_p, coef_u, const) for below and above: through delta =
        p - u (f is monotone and 1-Lipschitz: A between min(0, delta) and max(0, delta), narrowed
        where one side stays on one piece of f, relax.clamp_difference_lines; exactly delta or 0
        where p and u share one piece), or, where that is tighter over the box, with each side
        relaxed on its own."""
        if self._lines is None:
            lines_y = relax.clamp_lines(self.pl, self.ph, node.f_lo, node.f_hi)
            lines_q = relax.clamp_lines(self.ul, self.uh, node.q_lo, node.q_hi)
            lo_all, hi_all = np.minimum(self.pl, self.ul), np.maximum(self.ph, self.uh)
            ident = (lo_all >= node.f_lo) & (hi_all <= node.f_hi)
            flat = (hi_all <= node.f_lo) | (lo_all >= node.f_hi)
            la = relax.clamp_difference_lines(self.pl, self.ph, self.ul, self.uh, self.dl, self.dh,
                                              node.f_lo, node.f_hi)
            al, bl, au, bu = la.alpha_l, la.beta_l, la.alpha_u, la.beta_u
            # Alternative: both sides relaxed on their own, A <= f(p)^ - f(u)_ and A >= f(p)_ - f(u)^,
            # taken where its extreme value over the box is tighter than the delta line's.
            lines_fu = relax.clamp_lines(self.ul, self.uh, node.f_lo, node.f_hi)

            def extreme(alpha, beta, lo, hi, fn):
                return fn(alpha * lo, alpha * hi) + beta

            up_delta = extreme(au, bu, self.dl, self.dh, np.maximum)
            lo_delta = extreme(al, bl, self.dl, self.dh, np.minimum)
            up_sep = (extreme(lines_y.alpha_u, lines_y.beta_u, self.pl, self.ph, np.maximum)
                      - extreme(lines_fu.alpha_l, lines_fu.beta_l, self.ul, self.uh, np.minimum))
            lo_sep = (extreme(lines_y.alpha_l, lines_y.beta_l, self.pl, self.ph, np.minimum)
                      - extreme(lines_fu.alpha_u, lines_fu.beta_u, self.ul, self.uh, np.maximum))
            use_up = (up_sep < up_delta) & ~ident & ~flat
            use_lo = (lo_sep > lo_delta) & ~ident & ~flat
            lines_a = (
                np.where(use_lo, lines_y.alpha_l, al), np.where(use_lo, -lines_fu.alpha_u, -al),
                np.where(use_lo, lines_y.beta_l - lines_fu.beta_u, bl),
                np.where(use_up, lines_y.alpha_u, au), np.where(use_up, -lines_fu.alpha_l, -au),
                np.where(use_up, lines_y.beta_u - lines_fu.beta_l, bu),
            )
            lines_b = relax.difference_of_clamps_lines(self.ul, self.uh, node.f_lo, node.f_hi, node.q_lo, node.q_hi)
            self._lines = (lines_y, lines_q, lines_a, lines_b)
        return self._lines

    def snap_to_grid(self, node: Node) -> None:
        """The rounded value is an integer k (in LSBs, u = s k) within rho = noise / s of the
        noise-free value v = u -/+ noise: only the integers in [v_lo/s - rho, v_hi/s + rho] are
        possible. Where that is a single integer the device's value is known exactly, and the
        rounding term stops accumulating through the layers that follow."""
        s = node.scale
        rho = node.noise / s
        with np.errstate(invalid="ignore"):
            kmin = np.ceil((self.ul + node.noise) / s - rho - 1e-9)
            kmax = np.floor((self.uh - node.noise) / s + rho + 1e-9)
        ok = np.isfinite(kmin) & np.isfinite(kmax) & (kmin <= kmax)
        self.ul = np.where(ok, np.maximum(self.ul, s * kmin), self.ul)
        self.uh = np.where(ok, np.minimum(self.uh, s * kmax), self.uh)
        self.exact = ok & (kmin == kmax)
        self.dl = np.maximum(self.dl, self.pl - self.uh)
        self.dh = np.minimum(self.dh, self.ph - self.ul)

    def y(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return relax.clamp(self.pl, node.f_lo, node.f_hi), relax.clamp(self.ph, node.f_lo, node.f_hi)

    def yq(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return relax.clamp(self.ul, node.q_lo, node.q_hi), relax.clamp(self.uh, node.q_lo, node.q_hi)

    def tighten(self, other: NodeBounds) -> None:
        self.pl, self.ph = np.maximum(self.pl, other.pl), np.minimum(self.ph, other.ph)
        self.ul, self.uh = np.maximum(self.ul, other.ul), np.minimum(self.uh, other.uh)
        # delta = p - u also lies in [pl - uh, ph - ul] of the ranges just tightened.
        self.dl = np.maximum(np.maximum(self.dl, other.dl), self.pl - self.uh)
        self.dh = np.minimum(np.minimum(self.dh, other.dh), self.ph - self.ul)


@dataclass(frozen=True)
class Analysis:
    """Result of one engine on one box: per-output certified |error| bound, and node ranges."""

    upper: np.ndarray  # per output: max |y_k - ŷ_k| certified
    err_low: np.ndarray  # per output: certified lower end of y_k - ŷ_k
    err_high: np.ndarray
    bounds: list[NodeBounds]


def _interval_affine(mats, c, los, his) -> tuple[np.ndarray, np.ndarray]:
    lo = c.astype(np.float64).copy()
    hi = c.astype(np.float64).copy()
    for A, l, h in zip(mats, los, his):
        center, radius = (l + h) / 2, (h - l) / 2
        absA = abs(A) if sp.issparse(A) else np.abs(A)
        mid = A @ center
        rad = absA @ radius
        lo += np.asarray(mid - rad).ravel()
        hi += np.asarray(mid + rad).ravel()
    return lo, hi


def interval_node(net: MergedNet, t: int, bounds: list[NodeBounds], box: Box) -> NodeBounds:
    """Forward interval ranges of node t from the ranges of its inputs."""
    node = net.nodes[t]
    if t == 0:
        lo, hi = box.low.astype(np.float64), box.high.astype(np.float64)
        exact, value = exact_input(net, box)
        ul = np.where(exact, value, lo - node.noise)
        uh = np.where(exact, value, hi + node.noise)
        return NodeBounds(lo, hi, ul, uh, lo - uh, hi - ul)
    ys = [bounds[i].y(net.nodes[i]) for i in node.inputs]
    yqs = [bounds[i].yq(net.nodes[i]) for i in node.inputs]
    pl, ph = _interval_affine(node.A_f, node.c_f, [a for a, _ in ys], [b for _, b in ys])
    ul, uh = _interval_affine(node.A_q, node.c_q, [a for a, _ in yqs], [b for _, b in yqs])
    ul, uh = ul - node.noise, uh + node.noise
    return NodeBounds(pl, ph, ul, uh, pl - uh, ph - ul)


def interval_analysis(net: MergedNet, box: Box) -> Analysis:
    """The naive merged-network baseline: independent intervals on each side."""
    bounds: list[NodeBounds] = []
    for t in range(len(net.nodes)):
        bounds.append(interval_node(net, t, bounds, box))
    lo, hi = output_range(net, bounds)
    return Analysis(np.maximum(np.abs(lo), np.abs(hi)), lo, hi, bounds)


def exact_input(net: MergedNet, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Per input: does the box lie in one rounding cell of the input quantization, and the
    dequantized value the device then sees. Cells are taken with a margin of 2e-4 LSB so that
    float32 rounding of the sensor value and of x / s at a cell's edge cannot move an input to the
    neighbouring cell."""
    s = net.input_scale
    if net.input_interface == "int8":  # u_0 = x already holds exactly (noise 0)
        return np.zeros(box.low.size, dtype=bool), box.low
    tol = CELL_TOL
    k = [np.floor(v / s + 0.5 + d) for v in (box.low, box.high) for d in (-tol, tol)]
    exact = (k[0] == k[1]) & (k[1] == k[2]) & (k[2] == k[3]) & (np.abs(box.low) / s < 2**22)
    value = np.clip(s * k[0], net.nodes[0].q_lo, net.nodes[0].q_hi)
    return exact, value


# --- back-substitution -----------------------------------------------------------------------


def _rmul(P: np.ndarray, A) -> np.ndarray:
    """P (R, n_out) @ A (n_out, n_in) for dense or sparse A."""
    if sp.issparse(A):
        return np.asarray((A.T @ P.T).T)
    return P @ A


def _relax_node(node: Node, b: NodeBounds, Lf: np.ndarray, Lq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace Lf·y + Lq·ŷ at a node by P·p + U·u + const (an upper bound, row by row)."""
    if node.linear_only:
        return Lf, Lq, np.zeros(Lf.shape[0])
    const = np.zeros(Lf.shape[0])
    if b.exact is not None and b.exact.any():
        # ŷ is a constant on these elements: its term is a number, nothing flows further back.
        value = relax.clamp(b.ul, node.q_lo, node.q_hi)
        const = const + Lq[:, b.exact] @ value[b.exact]
        Lq = np.where(b.exact[None, :], 0.0, Lq)
    diff = (Lf * Lq) < 0
    a = np.where(diff, Lf + Lq, Lf)  # on y
    bq = np.where(diff, 0.0, Lq)  # on ŷ
    c = np.where(diff, -Lq, 0.0)  # on d = y - ŷ
    lines_y, lines_q, lines_a, lines_b = b.relaxations(node)
    coef_p, k1 = relax.pick(a, lines_y)
    coef_u, k2 = relax.pick(bq, lines_q)
    const = const + k1 + k2
    if diff.any():
        # d = y - ŷ = A(delta) + B(u): the shared part through delta, saturation through u.
        lp, lu, lb, up, uu, ub = lines_a
        pos = c >= 0
        coef_b, k4 = relax.pick(c, lines_b)
        coef_p = coef_p + c * np.where(pos, up, lp)
        coef_u = coef_u + c * np.where(pos, uu, lu) + coef_b
        const = const + (c * np.where(pos, ub, lb)).sum(axis=1) + k4
    return coef_p, coef_u, const


def _back_substitute(
    net: MergedNet, start: int, P: np.ndarray, U: np.ndarray, const: np.ndarray, bounds: list[NodeBounds], box: Box,
    linear: bool = False, rounding_terms: dict[int, np.ndarray] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Upper bounds of P·p_start + U·u_start + const over the box, pushed back to the input; with
    `linear`, the bounding affine function of x itself, (G, k): every row <= G x + k on the box.
    `rounding_terms`, when given, receives per node the coefficients (R, n) of its rounding terms
    (each bounded by |coefficient| x noise)."""
    R = P.shape[0]
    lam_f: dict[int, np.ndarray] = {}
    lam_q: dict[int, np.ndarray] = {}
    const = const.copy()
    pending = {start: (P, U)}
    for t in range(start, -1, -1):
        if t in pending:
            Pt, Ut = pending.pop(t)
        elif t in lam_f:
            Pt, Ut, k = _relax_node(net.nodes[t], bounds[t], lam_f.pop(t), lam_q.pop(t))
            const += k
        else:
            continue
        node = net.nodes[t]
        const += Pt @ node.c_f + Ut @ node.c_q + np.abs(Ut) @ node.noise
        if rounding_terms is not None:
            rounding_terms[t] = Ut
        if t == 0:
            # p_0 = x and u_0 = x + eps_0; where the whole box lies in one rounding cell of the
            # input quantization, u_0 is that cell's constant instead.
            exact, value = exact_input(net, box)
            const -= np.abs(Ut[:, exact]) @ node.noise[exact]
            const += Ut[:, exact] @ value[exact]
            G = Pt + np.where(exact[None, :], 0.0, Ut)
            if linear:
                return G, const
            center, radius = (box.low + box.high) / 2, (box.high - box.low) / 2
            return const + G @ center + np.abs(G) @ radius
        for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q):
            lf, lq = _rmul(Pt, Af), _rmul(Ut, Aq)
            if i in lam_f:
                lam_f[i] += lf
                lam_q[i] += lq
            else:
                lam_f[i], lam_q[i] = lf, lq
    return const  # pragma: no cover - every path reaches node 0


def differential_analysis(net: MergedNet, box: Box, parent: Analysis | None = None) -> Analysis:
    """Symbolic bounds for every node, then for the output error y_K - ŷ_K.

    `parent` (the analysis of an enclosing box) tightens every range: a child's linear bound can
    be looser than its parent's, so the smaller one is kept."""
    bounds: list[NodeBounds] = []
    for t, node in enumerate(net.nodes):
        nb = interval_node(net, t, bounds, box)
        if t > 0 and not node.linear_only:
            n = node.size
            for s in range(0, n, _BLOCK // 6 or 1):
                e = min(n, s + max(1, _BLOCK // 6))
                k = e - s
                I = np.zeros((k, n))
                I[np.arange(k), np.arange(s, e)] = 1.0
                Z = np.zeros_like(I)
                # rows: +p, -p, +u, -u, +delta, -delta (delta = p - u)
                P = np.vstack([I, -I, Z, Z, I, -I])
                U = np.vstack([Z, Z, I, -I, -I, I])
                up = _back_substitute(net, t, P, U, np.zeros(6 * k), bounds, box)
                sym = NodeBounds(-up[k:2 * k], up[:k], -up[3 * k:4 * k], up[2 * k:3 * k], -up[5 * k:], up[4 * k:5 * k])
                part = NodeBounds(nb.pl[s:e], nb.ph[s:e], nb.ul[s:e], nb.uh[s:e], nb.dl[s:e], nb.dh[s:e])
                part.tighten(sym)
                nb.pl[s:e], nb.ph[s:e], nb.ul[s:e], nb.uh[s:e], nb.dl[s:e], nb.dh[s:e] = (
                    part.pl, part.ph, part.ul, part.uh, part.dl, part.dh)
        if parent is not None:
            nb.tighten(parent.bounds[t])
        if t > 0 and not node.linear_only:
            nb.snap_to_grid(node)
        bounds.append(nb)
    # Output: y_K - ŷ_K, both signs.
    K = net.output
    n = net.nodes[K].size
    I = np.eye(n)
    Lf = np.vstack([I, -I])
    Lq = np.vstack([-I, I])
    Pk, Uk, k0 = _relax_node(net.nodes[K], bounds[K], Lf, Lq)
    up = _back_substitute(net, K, Pk, Uk, k0, bounds, box)
    hi, lo = up[:n], -up[n:]
    ref_lo, ref_hi = output_range(net, bounds)
    hi, lo = np.minimum(hi, ref_hi), np.maximum(lo, ref_lo)
    if parent is not None:
        hi, lo = np.minimum(hi, parent.err_high), np.maximum(lo, parent.err_low)
    return Analysis(np.maximum(np.abs(lo), np.abs(hi)), lo, hi, bounds)


def float_linear_bounds(net: MergedNet, bounds: list[NodeBounds], box: Box) -> tuple[np.ndarray, ...]:
    """Affine bounds of the float output over the box, from the node ranges of an analysis of it:
    (G_lo, k_lo, G_hi, k_hi) with G_lo x + k_lo <= y_K(x) <= G_hi x + k_hi for every x in the box
    (the float side of the back-substitution alone)."""
    K = net.output
    n = net.nodes[K].size
    I = np.eye(n)
    Pk, Uk, k0 = _relax_node(net.nodes[K], bounds[K], np.vstack([I, -I]), np.zeros((2 * n, n)))
    G, k = _back_substitute(net, K, Pk, Uk, k0, bounds, box, linear=True)
    return -G[n:], -k[n:], G[:n], k[:n]


def output_range(net: MergedNet, bounds: list[NodeBounds]) -> tuple[np.ndarray, np.ndarray]:
    """Output error range implied by the output node's ranges alone: [y_lo - ŷ_hi, y_hi - ŷ_lo]."""
    node = net.nodes[net.output]
    yl, yh = bounds[net.output].y(node)
    ql, qh = bounds[net.output].yq(node)
    return yl - qh, yh - ql
