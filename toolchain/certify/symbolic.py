"""Interval and differential (symbolic) bounds on the merged network, over a batch of input boxes.

`interval` is the seed paper's baseline: float and quantized sides bounded separately, layer by
layer, and the error bound is the distance between the two intervals.

`differential` back-substitutes linear bounds (CROWN/DeepPoly style) through both sides at once,
over the shared input x and the per-neuron rounding terms eps (free, bounded). Wherever an
objective weighs y and ŷ with opposite signs it is rewritten as (l_f + l_q) y - l_q (y - ŷ), and
the difference d = y - ŷ is relaxed directly: d = [f(p) - f(u)] + [f(u) - g(u)], the first part
bounded through delta = p - u (ReluDiff-like), the second (saturation) through u. So the
shared part cancels symbolically instead of being bounded twice.

Both engines work on a `BoxBatch` of B boxes at once: every range is a (B, n) array, every
objective a (B, R, n) array, and pushing objectives back through a layer is one matrix product for
the whole batch (the layer's matrices are shared by every box). A single box is a batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numba import njit

from toolchain import blas
from toolchain.certify import fused, relax
from toolchain.certify.alpha import BoxSlopes, float_rows_bound
from toolchain.certify.region import BoxBatch
from toolchain.certify.result import ErrorBound
from toolchain.certify.settings import DEFAULT, Settings
from toolchain.margins import CELL_TOL, EMPTY_LSB, EMPTY_REL, GRID_TOL
from toolchain.merge import MergedNet, Node, matmul, matmul_t


@dataclass(frozen=True)
class NodeBounds:
    """Certified ranges at one node over each box of a batch, (B, n) each: the float
    pre-activation p, the quantized pre-activation u (rounding term included), and their
    difference delta = p - u; y and ŷ follow through the clamps. `exact`: the quantized output is
    one known integer over the box."""

    pl: np.ndarray
    ph: np.ndarray
    ul: np.ndarray
    uh: np.ndarray
    dl: np.ndarray
    dh: np.ndarray
    exact: np.ndarray

    def y(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return relax.clamp(self.pl, node.f_lo, node.f_hi), relax.clamp(self.ph, node.f_lo, node.f_hi)

    def yq(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return relax.clamp(self.ul, node.q_lo, node.q_hi), relax.clamp(self.uh, node.q_lo, node.q_hi)

    def meet(self, other: NodeBounds) -> NodeBounds:
        """Both hold: the intersection, with p = u + delta used both ways (p within [ul + dl, uh + dh],
        u within [pl - dh, ph - dl], delta within [pl - uh, ph - ul]; each sum rounded outward). A range
        cut on one side (a neuron-branched box's u <= at) so also reaches the other: without it a
        float range that the cut makes impossible would keep bounding y."""
        pl, ph = np.maximum(self.pl, other.pl), np.minimum(self.ph, other.ph)
        ul, uh = np.maximum(self.ul, other.ul), np.minimum(self.uh, other.uh)
        dl, dh = np.maximum(self.dl, other.dl), np.minimum(self.dh, other.dh)
        down, up = -np.inf, np.inf
        with np.errstate(invalid="ignore"):  # inf - inf where a range is unbounded: nan, ignored by fmax/fmin
            pl2 = np.fmax(pl, np.nextafter(ul + dl, down))
            ph2 = np.fmin(ph, np.nextafter(uh + dh, up))
            ul2 = np.fmax(ul, np.nextafter(pl - dh, down))
            uh2 = np.fmin(uh, np.nextafter(ph - dl, up))
            dl2 = np.fmax(dl, np.nextafter(pl2 - uh2, down))
            dh2 = np.fmin(dh, np.nextafter(ph2 - ul2, up))
        return NodeBounds(pl2, ph2, ul2, uh2, dl2, dh2, self.exact | other.exact)

    def snapped(self, node: Node) -> NodeBounds:
        """The rounded value is an integer k (in LSBs, u = s k) within rho = noise / s of the
        noise-free value v = u -/+ noise: only the integers in [v_lo/s - rho, v_hi/s + rho] are
        possible. Where that is a single integer the device's value is known exactly, and the
        rounding term stops accumulating through the layers that follow."""
        s = node.scale
        rho = node.noise / s
        with np.errstate(invalid="ignore"):
            kmin = np.ceil((self.ul + node.noise) / s - rho - GRID_TOL)
            kmax = np.floor((self.uh - node.noise) / s + rho + GRID_TOL)
        ok = np.isfinite(kmin) & np.isfinite(kmax) & (kmin <= kmax)
        ul = np.where(ok, np.maximum(self.ul, s * kmin), self.ul)
        uh = np.where(ok, np.minimum(self.uh, s * kmax), self.uh)
        dl = np.maximum(self.dl, self.pl - uh)
        dh = np.minimum(self.dh, self.ph - ul)
        return NodeBounds(self.pl, self.ph, ul, uh, dl, dh, ok & (kmin == kmax))

    def ordered(self, node: Node) -> tuple[np.ndarray, NodeBounds]:
        """(empty (B,), ranges): `empty` where some neuron's p, u or delta range is empty by more than the
        engine's own float64 rounding could make it (EMPTY_REL x (|lo| + |hi|) + EMPTY_LSB x the
        node's LSB). Every range holds for every input of the box's domain, so such a domain holds
        no input at all (a neuron-branched box whose constraint contradicts what the rest of the
        analysis knows). Ranges reversed by less (rounding, or an empty domain) are swapped so
        that the relaxations built on them stay well formed: [hi, lo] holds the true value within
        the same rounding as [lo, hi] would."""
        empty = np.zeros(self.pl.shape[0], dtype=bool)
        out = []
        for lo, hi in ((self.pl, self.ph), (self.ul, self.uh), (self.dl, self.dh)):
            # delta too: its range holds for every input of the domain like p's and u's (it is not
            # only pl - uh .. ph - ul: symbolic bounds tighten it on their own), so a reversed delta
            # range is as much a proof of an empty domain (swapped instead, it would be a wide range
            # that loosens every later layer for nothing).
            tol = EMPTY_REL * (np.abs(lo) + np.abs(hi)) + EMPTY_LSB * node.scale
            empty |= np.any(lo - hi > tol, axis=1)
            out += [np.minimum(lo, hi), np.maximum(lo, hi)]
        pl, ph, ul, uh, dl, dh = out
        return empty, NodeBounds(pl, ph, ul, uh, dl, dh, self.exact)

    def take(self, index) -> NodeBounds:
        """The ranges of some boxes of the batch (index: an integer array or slice)."""
        fields = (self.pl, self.ph, self.ul, self.uh, self.dl, self.dh, self.exact)
        return NodeBounds(*(a[index] for a in fields))

    @staticmethod
    def stack(parts: list[NodeBounds]) -> NodeBounds:
        return NodeBounds(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("pl", "ph", "ul", "uh", "dl", "dh", "exact")))


@dataclass(frozen=True)
class NodeLines:
    """The relaxations of one node over each box, computed once its ranges are final, packed as
    (B, 20, n) (layout: fused.PACKED): ŷ's value where it is exact; lines for y = f(p), ŷ = g(u),
    A = f(p) - f(u) as rows in (p, u) (lower: coef_p, coef_u, const; then upper), and
    B = f(u) - g(u) in u."""

    packed: np.ndarray


def _piece(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which piece of a clamp to [a, b] the range [lo, hi] stays on: 0 below a, 1 between, 2 above
    b, -1 when it may cross a kink."""
    return np.where(hi <= a, 0, np.where((lo >= a) & (hi <= b), 1, np.where(lo >= b, 2, -1)))


def settled(node: Node, nb: NodeBounds) -> np.ndarray:
    """(B, n): neurons whose relaxations are exact whatever their ranges shrink to: p and u on one
    common piece of the float clamp f, and u on one piece of the int8 clamp g (then y, ŷ, A and B
    are linear on the ranges, and their lines are those linear functions)."""
    on_p = _piece(nb.pl, nb.ph, node.f_lo, node.f_hi)
    on_u = _piece(nb.ul, nb.uh, node.f_lo, node.f_hi)
    return (on_p >= 0) & (on_p == on_u) & (_piece(nb.ul, nb.uh, node.q_lo, node.q_hi) >= 0)


def node_lines(node: Node, nb: NodeBounds) -> NodeLines:
    """A is bounded through delta = p - u (f is monotone and 1-Lipschitz: A between min(0, delta)
    and max(0, delta), narrowed where one side stays on one piece of f,
    relax.clamp_difference_lines; exactly delta or 0 where p and u share one piece), or, where
    that is tighter over the box, with each side relaxed on its own."""
    lines_y = relax.clamp_lines(nb.pl, nb.ph, node.f_lo, node.f_hi)
    lines_q = relax.clamp_lines(nb.ul, nb.uh, node.q_lo, node.q_hi)
    lo_all, hi_all = np.minimum(nb.pl, nb.ul), np.maximum(nb.ph, nb.uh)
    ident = (lo_all >= node.f_lo) & (hi_all <= node.f_hi)
    flat = (hi_all <= node.f_lo) | (lo_all >= node.f_hi)
    la = relax.clamp_difference_lines(nb.pl, nb.ph, nb.ul, nb.uh, nb.dl, nb.dh, node.f_lo, node.f_hi)
    al, bl, au, bu = la.alpha_l, la.beta_l, la.alpha_u, la.beta_u
    # Alternative: both sides relaxed on their own, A <= f(p)^ - f(u)_ and A >= f(p)_ - f(u)^,
    # taken where its extreme value over the box is tighter than the delta line's.
    lines_fu = relax.clamp_lines(nb.ul, nb.uh, node.f_lo, node.f_hi)

    def extreme(alpha, beta, lo, hi, fn):
        return fn(alpha * lo, alpha * hi) + beta

    up_delta = extreme(au, bu, nb.dl, nb.dh, np.maximum)
    lo_delta = extreme(al, bl, nb.dl, nb.dh, np.minimum)
    up_sep = (extreme(lines_y.alpha_u, lines_y.beta_u, nb.pl, nb.ph, np.maximum)
              - extreme(lines_fu.alpha_l, lines_fu.beta_l, nb.ul, nb.uh, np.minimum))
    lo_sep = (extreme(lines_y.alpha_l, lines_y.beta_l, nb.pl, nb.ph, np.minimum)
              - extreme(lines_fu.alpha_u, lines_fu.beta_u, nb.ul, nb.uh, np.maximum))
    use_up = (up_sep < up_delta) & ~ident & ~flat
    use_lo = (lo_sep > lo_delta) & ~ident & ~flat
    lines_a = (
        np.where(use_lo, lines_y.alpha_l, al), np.where(use_lo, -lines_fu.alpha_u, -al),
        np.where(use_lo, lines_y.beta_l - lines_fu.beta_u, bl),
        np.where(use_up, lines_y.alpha_u, au), np.where(use_up, -lines_fu.alpha_l, -au),
        np.where(use_up, lines_y.beta_u - lines_fu.beta_l, bu),
    )
    lines_b = relax.difference_of_clamps_lines(nb.ul, nb.uh, node.f_lo, node.f_hi, node.q_lo, node.q_hi)
    value = np.where(nb.exact, relax.clamp(nb.ul, node.q_lo, node.q_hi), 0.0)
    parts = (nb.exact.astype(np.float64), value,
             lines_y.alpha_l, lines_y.beta_l, lines_y.alpha_u, lines_y.beta_u,
             lines_q.alpha_l, lines_q.beta_l, lines_q.alpha_u, lines_q.beta_u, *lines_a,
             lines_b.alpha_l, lines_b.beta_l, lines_b.alpha_u, lines_b.beta_u)
    shape = nb.pl.shape
    return NodeLines(np.ascontiguousarray(np.stack([np.broadcast_to(x, shape) for x in parts], axis=1)))


@dataclass(frozen=True)
class Analysis:
    """One engine pass over a batch of boxes: the certified error bound per box (B, n_out), and
    every node's ranges and relaxations (the differential engine's state, reused by its children,
    the cell enumeration and the MILP)."""

    boxes: BoxBatch
    bound: ErrorBound
    nodes: tuple[NodeBounds, ...]
    lines: tuple[NodeLines | None, ...]
    work: float = 0.0  # multiply-adds the pass took (estimated from path_costs), for work budgets
    split_scores: np.ndarray | None = None  # (B, n_in): each input's share of the worst output row's bound
    # (B, 5) per box: the neuron to branch on (node, neuron, side 0 = p / 1 = u, split point, score;
    # node -1: none), from the worst output row's back-substitution (settings.branching not `input`).
    branch: np.ndarray | None = None
    infeasible: np.ndarray | None = None  # (B,) the box's domain is provably empty (NodeBounds.ordered)
    # per box: the best optimised slopes of its rows, node by node (alpha.py: its children start from them)
    slopes: tuple[BoxSlopes | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index) -> Analysis:
        """The analysis of some boxes of the batch (index: integer array or slice)."""
        idx = np.arange(len(self))[index]
        boxes = BoxBatch(self.boxes.low[idx], self.boxes.high[idx])
        lines = tuple(None if ln is None else NodeLines(ln.packed[idx]) for ln in self.lines)
        scores = None if self.split_scores is None else self.split_scores[idx]
        branch = None if self.branch is None else self.branch[idx]
        infeasible = None if self.infeasible is None else self.infeasible[idx]
        slopes = None if self.slopes is None else tuple(self.slopes[i] for i in idx)
        return Analysis(boxes, ErrorBound(self.bound.low[idx], self.bound.high[idx]),
                        tuple(nb.take(idx) for nb in self.nodes), lines, self.work, scores, branch,
                        infeasible, slopes)

    @staticmethod
    def stack(parts: list[Analysis]) -> Analysis:
        boxes = BoxBatch(np.concatenate([p.boxes.low for p in parts]),
                         np.concatenate([p.boxes.high for p in parts]))
        bound = ErrorBound(np.concatenate([p.bound.low for p in parts]),
                           np.concatenate([p.bound.high for p in parts]))
        nodes = tuple(NodeBounds.stack([p.nodes[t] for p in parts]) for t in range(len(parts[0].nodes)))
        lines = tuple(None if parts[0].lines[t] is None
                      else NodeLines(np.concatenate([p.lines[t].packed for p in parts]))  # type: ignore[union-attr]
                      for t in range(len(parts[0].lines)))
        def cat(name: str) -> np.ndarray | None:
            got = [getattr(p, name) for p in parts]
            return None if any(g is None for g in got) else np.concatenate(got)

        slopes = tuple(x for p in parts for x in (p.slopes or (None,) * len(p)))
        return Analysis(boxes, bound, nodes, lines, sum(p.work for p in parts), cat("split_scores"),
                        cat("branch"), cat("infeasible"), slopes)

    def float_ranges(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per node, the float pre-activation range over the union of the boxes."""
        return [(nb.pl.min(axis=0), nb.ph.max(axis=0)) for nb in self.nodes]


# --- interval ranges ------------------------------------------------------------------------------


def _interval_affine(mats, c: np.ndarray, los, his) -> tuple[np.ndarray, np.ndarray]:
    """Ranges of sum_i A_i z_i + c for z_i in [lo_i, hi_i] (each (B, n_i)): (B, n_out) each."""
    lo = np.broadcast_to(c.astype(np.float64), (los[0].shape[0], c.shape[0])).copy()
    hi = lo.copy()
    for A, low, high in zip(mats, los, his, strict=True):
        center, radius = (low + high) / 2, (high - low) / 2
        mid = matmul_t(center, A)
        absA = abs(A) if sp.issparse(A) else np.abs(A)
        rad = matmul_t(radius, absA)
        lo += mid - rad
        hi += mid + rad
    return lo, hi


def exact_input(net: MergedNet, boxes: BoxBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per box and input (B, n): does the box lie in one rounding cell of the input quantization,
    and the dequantized value the device then sees. Cells are taken with CELL_TOL of margin so that
    float32 rounding of the sensor value and of x / s at a cell's edge cannot move an input to the
    neighbouring cell."""
    s = net.input_scale
    low, high = boxes.low, boxes.high
    if net.input_interface == "int8":  # u_0 = x already holds exactly (noise 0)
        return np.zeros(low.shape, dtype=bool), low
    k = [np.floor(v / s + 0.5 + d) for v in (low, high) for d in (-CELL_TOL, CELL_TOL)]
    exact = (k[0] == k[1]) & (k[1] == k[2]) & (k[2] == k[3]) & (np.abs(low) / s < 2**22)
    value = np.clip(s * k[0], net.nodes[0].q_lo, net.nodes[0].q_hi)
    return exact, value


def interval_node(net: MergedNet, t: int, nodes: list[NodeBounds], boxes: BoxBatch) -> NodeBounds:
    """Forward interval ranges of node t from the ranges of its inputs."""
    node = net.nodes[t]
    if t == 0:
        lo, hi = boxes.low, boxes.high
        exact, value = exact_input(net, boxes)
        ul = np.where(exact, value, lo - node.noise)
        uh = np.where(exact, value, hi + node.noise)
        return NodeBounds(lo, hi, ul, uh, lo - uh, hi - ul, np.zeros(lo.shape, dtype=bool))
    ys = [nodes[i].y(net.nodes[i]) for i in node.inputs]
    yqs = [nodes[i].yq(net.nodes[i]) for i in node.inputs]
    pl, ph = _interval_affine(node.A_f, node.c_f, [a for a, _ in ys], [b for _, b in ys])
    ul, uh = _interval_affine(node.A_q, node.c_q, [a for a, _ in yqs], [b for _, b in yqs])
    ul, uh = ul - node.noise, uh + node.noise
    return NodeBounds(pl, ph, ul, uh, pl - uh, ph - ul, np.zeros(pl.shape, dtype=bool))


def output_difference(node: Node, nb: NodeBounds) -> tuple[np.ndarray, np.ndarray]:
    """Range of d = y - ŷ at a node from its ranges: d = A + B with A = f(p) - f(u) (f monotone and
    1-Lipschitz: between min(0, delta) and max(0, delta); delta itself where p and u share the clamp's
    linear piece, 0 where they share a flat one) and B = f(u) - g(u) (at the ends of u's range and the
    clamps' kinks inside it)."""
    if node.linear_only:
        return nb.dl, nb.dh
    lo_all, hi_all = np.minimum(nb.pl, nb.ul), np.maximum(nb.ph, nb.uh)
    ident = (lo_all >= node.f_lo) & (hi_all <= node.f_hi)
    flat = (hi_all <= node.f_lo) | (lo_all >= node.f_hi)
    a_lo = np.where(ident, nb.dl, np.where(flat, 0.0, np.minimum(0.0, nb.dl)))
    a_hi = np.where(ident, nb.dh, np.where(flat, 0.0, np.maximum(0.0, nb.dh)))
    vertices = [nb.ul, nb.uh] + [np.clip(np.where(np.isfinite(k), k, nb.ul), nb.ul, nb.uh)
                                 for k in (node.f_lo, node.f_hi, node.q_lo, node.q_hi)]
    b = [relax.clamp(v, node.f_lo, node.f_hi) - relax.clamp(v, node.q_lo, node.q_hi) for v in vertices]
    return a_lo + np.min(b, axis=0), a_hi + np.max(b, axis=0)


def forward_node(net: MergedNet, t: int, nodes: list[NodeBounds], boxes: BoxBatch) -> NodeBounds:
    """Forward ranges of node t that follow the difference too: delta = p - u is
    sum_i (A_f - A_q) y_i + A_q (y_i - ŷ_i) + c_f - c_q -/+ noise, with the small matrix A_f - A_q on
    the float values and A_q on the inputs' differences (output_difference), instead of
    [pl - uh, ph - ul]. The differential engine starts from these (interval_node stays the naive
    baseline)."""
    node = net.nodes[t]
    nb = interval_node(net, t, nodes, boxes)
    if t == 0:
        exact, value = exact_input(net, boxes)
        # delta_0 = x - u_0 = -eps_0 (the rounding of the input), or x - value inside one cell.
        dl = np.where(exact, boxes.low - value, -node.noise)
        dh = np.where(exact, boxes.high - value, node.noise)
        return NodeBounds(nb.pl, nb.ph, nb.ul, nb.uh, np.maximum(nb.dl, dl), np.minimum(nb.dh, dh), nb.exact)
    ys = [nodes[i].y(net.nodes[i]) for i in node.inputs]
    ds = [output_difference(net.nodes[i], nodes[i]) for i in node.inputs]
    mats = [Af - Aq for Af, Aq in zip(node.A_f, node.A_q, strict=True)] + list(node.A_q)
    dl, dh = _interval_affine(mats, node.c_f - node.c_q, [a for a, _ in ys] + [a for a, _ in ds],
                              [b for _, b in ys] + [b for _, b in ds])
    dl, dh = dl - node.noise, dh + node.noise
    return NodeBounds(nb.pl, nb.ph, nb.ul, nb.uh, np.maximum(nb.dl, dl), np.minimum(nb.dh, dh), nb.exact)


def interval_analysis(net: MergedNet, boxes: BoxBatch) -> Analysis:
    """The naive merged-network baseline: independent intervals on each side."""
    nodes: list[NodeBounds] = []
    for t in range(len(net.nodes)):
        nodes.append(interval_node(net, t, nodes, boxes))
    lo, hi = output_range(net, nodes)
    return Analysis(boxes, ErrorBound(lo, hi), tuple(nodes), tuple(None for _ in nodes))


def output_range(net: MergedNet,
                 nodes: list[NodeBounds] | tuple[NodeBounds, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Output error range implied by the output node's ranges alone: [y_lo - ŷ_hi, y_hi - ŷ_lo]."""
    node = net.nodes[net.output]
    yl, yh = nodes[net.output].y(node)
    ql, qh = nodes[net.output].yq(node)
    return yl - qh, yh - ql


# --- back-substitution ------------------------------------------------------------------------------
#
# Objectives are *rows*: row r bounds Lf[r]·y_t + Lq[r]·ŷ_t from above over box owner[r], so each
# box brings only the rows it needs (a ragged batch) and pushing every row of every box back
# through a layer is one matrix product. Per node the relaxation replaces the row by
# P·p + U·u + const (fused.relax_rows, one compiled pass): where the row weighs y and ŷ with
# opposite signs it is rewritten as (Lf + Lq)·y - Lq·(y - ŷ) and y - ŷ = A(δ) + B(u) is relaxed
# through δ and u; elsewhere y and ŷ are relaxed on their own; an exact ŷ is a constant.




def _back_substitute(
    net: MergedNet, start: int, Lf: np.ndarray, Lq: np.ndarray, const: np.ndarray, owner: np.ndarray,
    nodes, lines, boxes: BoxBatch, relax_start: bool = True, extra: tuple[dict, dict] | None = None,
    on_node: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Push the rows Lf·y_start + Lq·ŷ_start + const (relax_start) — or, without relax_start, the
    rows Lf·p_start + Lq·u_start + const — back to the input: (G, k) with every row <= G x + k on
    its box, G (R, n_in), k (R,). `extra`: objectives on y, ŷ of earlier nodes, added on the way.
    `on_node(t, Lf_t, Lq_t)` sees the rows' coefficients on y_t, ŷ_t wherever node t's relaxation
    is applied (hidden nodes only): what branch_records scores neurons with."""
    lam_f: dict[int, np.ndarray] = {start: Lf}
    lam_q: dict[int, np.ndarray] = {start: Lq}
    if extra is not None:
        lam_f.update(extra[0])
        lam_q.update(extra[1])
    const = np.array(const, dtype=np.float64)
    for t in range(start, -1, -1):
        if t not in lam_f:
            continue
        node = net.nodes[t]
        Lf_t, Lq_t = lam_f.pop(t), lam_q.pop(t)
        ln = None if t == start and not relax_start else lines[t]
        if ln is None:
            Pt, Ut = Lf_t, Lq_t
            const += Pt @ node.c_f + Ut @ node.c_q + np.abs(Ut) @ node.noise
        else:
            if on_node is not None and t > 0:
                on_node(t, Lf_t, Lq_t)
            Pt, Ut = fused.relax(Lf_t, Lq_t, owner, ln.packed, node.c_f, node.c_q, node.noise, const)
        if t == 0:
            # p_0 = x and u_0 = x + eps_0; where the box lies in one rounding cell of the input
            # quantization, u_0 is that cell's constant instead (its rounding term taken back).
            exact, value = exact_input(net, boxes)
            if exact.any():
                ex = exact[owner]
                Ue = np.where(ex, Ut, 0.0)
                const += (Ue * value[owner]).sum(axis=1) - np.abs(Ue) @ node.noise
                Ut = Ut - Ue
            return Pt + Ut, const
        u_free = not Ut.any()  # float-side rows: nothing flows back through the int8 side
        for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q, strict=True):
            lf = matmul(Pt, Af)
            lam_f[i] = lam_f[i] + lf if i in lam_f else lf
            if not u_free:
                lq = matmul(Ut, Aq)
                lam_q[i] = lam_q[i] + lq if i in lam_q else lq
            elif i not in lam_q:
                lam_q[i] = np.zeros_like(lf)
    raise AssertionError("every path reaches the input node")  # pragma: no cover


def _bound_rows(net: MergedNet, start: int, Lf: np.ndarray, Lq: np.ndarray, const: np.ndarray,
                owner: np.ndarray, nodes, lines, boxes: BoxBatch, relax_start: bool,
                settings: Settings, smear: np.ndarray | None = None) -> np.ndarray:
    """Certified upper bounds (R,) of the rows over their boxes, in blocks of rows that keep the
    arrays within settings.block_entries. With `smear` (R, n_in), also each input's share of each
    row's bound: |G| x the box's half-width (how much splitting that input can take off)."""
    widest = max(n.size for n in net.nodes)
    per = max(1, settings.block_entries // widest)
    out = np.empty(Lf.shape[0])
    for s in range(0, Lf.shape[0], per):
        e = min(Lf.shape[0], s + per)
        G, k = _back_substitute(net, start, Lf[s:e], Lq[s:e], const[s:e], owner[s:e], nodes, lines, boxes,
                                relax_start)
        out[s:e] = fused.concretize(G, k, owner[s:e], boxes.center, boxes.radius)
        if smear is not None:
            smear[s:e] = np.abs(G) * boxes.radius[owner[s:e]]
    return out


def upper_bounds(net: MergedNet, analysis: Analysis, t: int, Lf: np.ndarray, Lq: np.ndarray,
                 settings: Settings = DEFAULT, smear: np.ndarray | None = None) -> np.ndarray:
    """Certified upper bounds (B, R) of the rows Lf·y_t + Lq·ŷ_t ((R, n), the same for every box)
    over each box of the analysis (and, into `smear` (B * R, n_in), each input's share of them)."""
    B, R = len(analysis), Lf.shape[0]
    owner = np.repeat(np.arange(B), R)
    up = _bound_rows(net, t, np.tile(Lf, (B, 1)), np.tile(Lq, (B, 1)), np.zeros(B * R), owner, analysis.nodes,
                     analysis.lines, analysis.boxes, True, settings, smear)
    return up.reshape(B, R)


# Rows bounded per hidden neuron: +p, -p, +u, -u, +delta, -delta, as signs on p and on u.
_SIGN_P = np.array([1.0, -1.0, 0.0, 0.0, 1.0, -1.0])
_SIGN_U = np.array([0.0, 0.0, 1.0, -1.0, -1.0, 1.0])
_BOTH_SIDES = np.arange(6)
_FLOAT_SIDE = np.arange(2)  # +p, -p: what the float side's own relaxations need


def _node_rows(net: MergedNet, t: int, todo: np.ndarray, nodes, lines, boxes: BoxBatch,
               settings: Settings, threads: int = 1, kinds: np.ndarray = _BOTH_SIDES) -> np.ndarray:
    """Symbolic bounds (B, 6, n) of p, -p, u, -u, delta, -delta at node t for the (box, neuron) pairs
    where todo (B, n) is set (inf elsewhere), for the row kinds asked (_FLOAT_SIDE: p and -p only).
    Each row is one neuron's pre-activation, so its first step back is that neuron's row of the
    layer's matrices (no product)."""
    node = net.nodes[t]
    B, n = todo.shape
    out = np.full((B, 6, n), np.inf)
    box_of, neuron = np.nonzero(todo)
    if box_of.size == 0:
        return out
    k = kinds.size
    widest = max(m.size for m in net.nodes)
    per = max(k, settings.block_entries // widest // k * k)
    owner_all = np.repeat(box_of, k)
    j_all = np.repeat(neuron, k)
    sp_all, su_all = np.tile(_SIGN_P[kinds], box_of.size), np.tile(_SIGN_U[kinds], box_of.size)
    kind_all = np.tile(kinds, box_of.size)

    def block(s: int) -> None:
        e = min(owner_all.size, s + per)
        owner, j, sgn_p, sgn_u = owner_all[s:e], j_all[s:e], sp_all[s:e], su_all[s:e]
        const = sgn_p * node.c_f[j] + sgn_u * node.c_q[j] + np.abs(sgn_u) * node.noise[j]
        lam_f: dict[int, np.ndarray] = {}
        lam_q: dict[int, np.ndarray] = {}
        for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q, strict=True):
            lf = sgn_p[:, None] * _rows(Af, j)
            lq = sgn_u[:, None] * _rows(Aq, j)
            lam_f[i] = lam_f[i] + lf if i in lam_f else lf
            lam_q[i] = lam_q[i] + lq if i in lam_q else lq
        # Push the rows on from each input node (in topological order, summing where paths meet).
        G, k = _back_substitute_many(net, lam_f, lam_q, const, owner, nodes, lines, boxes)
        out[owner, kind_all[s:e], j] = fused.concretize(G, k, owner, boxes.center, boxes.radius)

    _each(block, range(0, owner_all.size, per), threads)
    return out


def _each(fn: Callable[[Any], None], items: Iterable[Any], threads: int) -> None:
    """fn(item) for every item, on `threads` threads. Each call writes its own part of the result and
    the compiled kernels release the GIL, so threads share the cores without changing a single bit
    of what is computed (every row is the same sums in the same order, whichever thread runs it).
    BLAS keeps one thread of its own per thread here (toolchain.blas: its spinning threads would
    compete with these)."""
    if threads <= 1:
        for item in items:
            fn(item)
        return
    with blas.limit_threads(1), ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(fn, item) for item in items]:
            done.result()


def _rows(A, j: np.ndarray) -> np.ndarray:
    """Rows j of a dense or sparse matrix, dense."""
    return A[j].toarray() if sp.issparse(A) else A[j]


def _back_substitute_many(net: MergedNet, lam_f: dict, lam_q: dict, const: np.ndarray, owner: np.ndarray,
                          nodes, lines, boxes: BoxBatch) -> tuple[np.ndarray, np.ndarray]:
    """_back_substitute for rows that start as objectives at several nodes at once (a node with several
    inputs): pushed back from the latest node, the others' objectives added where the walk reaches
    them."""
    top = max(lam_f)
    extra_f = {i: v for i, v in lam_f.items() if i != top}
    extra_q = {i: v for i, v in lam_q.items() if i != top}
    return _back_substitute(net, top, lam_f[top], lam_q[top], const, owner, nodes, lines, boxes,
                            extra=(extra_f, extra_q))


def path_costs(net: MergedNet) -> np.ndarray:
    """Per node t: multiply-adds to push one objective row from t back to the input (the nonzeros
    of every layer matrix up to t, both sides)."""
    nnz = [sum(_nonzeros(A) for A in (*node.A_f, *node.A_q)) if t else 0 for t, node in enumerate(net.nodes)]
    return np.cumsum(nnz).astype(np.float64)


def row_costs(net: MergedNet) -> np.ndarray:
    """Per node t: multiply-adds to bound one of its own pre-activations symbolically. Its first step
    back is a row of its own matrices (gathered, not multiplied: _node_rows), then every earlier
    layer's matrices and relaxations (dense rows as wide as the layers they pass)."""
    path = path_costs(net)
    widths = np.cumsum([n.size for n in net.nodes]).astype(np.float64)
    return np.concatenate([[0.0], path[:-1] + widths[:-1]])


def _nonzeros(A) -> int:
    return int(A.nnz) if sp.issparse(A) else int(np.size(A))



# --- symbolic node ranges past the dense budget: supports, windows, partial layers ----------------
#
# A convolution's neuron depends on a few neurons of the layer before, and its pre-activation row,
# pushed back, stays zero outside its receptive field. _node_rows pushes dense rows (every layer's
# whole width, every nonzero of every matrix); past the budget that leaves deep layers of a
# convolutional network with forward ranges only. Here rows are pushed over their *support* (the
# neurons their receptive field reaches at each node, found from the matrices' nonzeros: the same
# products without the structural zeros), a group of neighbouring neurons at a time, and when even
# that costs more than the layer's share of the budget, only back to a *cutoff* node: a node before
# it is not relaxed but concretized with its own certified ranges of y, ŷ and d = y - ŷ (a window of
# DeepPoly with limited depth; sound since those ranges are). Where the shortest window still costs
# too much, the neurons that matter most (crossing a kink, then the widest ranges) get it, the others
# keep their forward ranges. Everything is decided from the structure and the ranges: deterministic.

# Rows pushed per neuron: +p, -p, +delta, -delta; u = p - delta takes its range from theirs (bounding
# u's own rows too costs half as much again, and measured, less than what that work buys elsewhere:
# DS-CNN 161 -> 148, ResNet-8 1.32e6 -> 1.22e6 without them).
_KINDS = np.array([0, 1, 4, 5])
_GROUP = 16  # neighbouring neurons whose rows share one support (one position of a 16-channel conv)


def _patterns(net: MergedNet) -> list[list]:
    """Per node and input: (pattern, A_f, A_q), each a CSR triple (indptr, indices, data) or, for a
    dense matrix, None, the pattern covering the nonzeros of A_f and A_q together (A_f's own
    where both share one structure, as converted pairs do: no copy); derived once per network."""
    return net.derived("symbolic_patterns", lambda: _build_patterns(net))


def _build_patterns(net: MergedNet) -> list[list]:
    pats: list[list] = []
    for node in net.nodes:
        row: list[tuple] = []
        for Af, Aq in zip(node.A_f, node.A_q, strict=True):
            if sp.issparse(Af) and sp.issparse(Aq):
                f, q = _csr(Af), _csr(Aq)
                if not (np.array_equal(f[0], q[0]) and np.array_equal(f[1], q[1])):
                    P = (abs(Af) + abs(Aq)).tocsr()
                    row.append((_csr(P), f, q))
                else:
                    row.append((f, f, q))
            else:
                P = sp.csr_matrix((np.asarray(_dense(Af)) != 0) | (np.asarray(_dense(Aq)) != 0))
                row.append((_csr(P), None, None))
        pats.append(row)
    return pats


def _csr(M) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of a sparse matrix (its own arrays when it is CSR already)."""
    M = M if M.format == "csr" else M.tocsr()
    return M.indptr, M.indices, M.data


def _dense(A):
    return A.toarray() if sp.issparse(A) else A


@njit(cache=True, nogil=True)
def _mark_kernel(rows, indptr, indices, mark):  # pragma: no cover - compiled
    nnz = 0
    for row in rows:
        for k in range(indptr[row], indptr[row + 1]):
            mark[indices[k]] = True
        nnz += indptr[row + 1] - indptr[row]
    return nnz


@njit(cache=True, nogil=True)
def _spmm_kernel(PT, rows, indptr, indices, data, colpos, outT):  # pragma: no cover - compiled
    """outT += (PT.T @ A[rows]).T on the columns colpos maps them to (A as CSR), transposed: each
    nonzero of A adds a multiple of one contiguous row of PT to one of outT (a vector axpy over the
    objective rows, instead of a scattered scalar add per row and nonzero; the same sums in the same
    order). Rows of PT that are all zero (neurons every objective row gives weight 0) are skipped."""
    m, R = PT.shape
    for a in range(m):
        pa = PT[a]
        nonzero = False
        for r in range(R):
            if pa[r] != 0.0:
                nonzero = True
                break
        if not nonzero:
            continue
        row = rows[a]
        for k in range(indptr[row], indptr[row + 1]):
            o = outT[colpos[indices[k]]]
            v = data[k]
            for r in range(R):
                o[r] += v * pa[r]


@njit(cache=True, nogil=True)
def _gather_kernel(rows, indptr, indices, data, colpos, out):  # pragma: no cover - compiled
    """out[a] = A[rows[a]] on the columns colpos maps them to (A as CSR)."""
    for a in range(rows.size):
        row = rows[a]
        for k in range(indptr[row], indptr[row + 1]):
            out[a, colpos[indices[k]]] += data[k]


def _gather(A, csr, rows: np.ndarray, cols: np.ndarray, colpos: np.ndarray) -> np.ndarray:
    """A[rows][:, cols], dense (the columns cols hold every nonzero of those rows)."""
    if csr is None:
        return np.asarray(A)[np.ix_(rows, cols)]
    out = np.zeros((rows.size, cols.size))
    _gather_kernel(rows, csr[0], csr[1], csr[2], colpos, out)
    return out


def _reach(pat, idx: np.ndarray, mark: np.ndarray) -> int:
    """Marks the columns that rows idx of a pattern reach; their nonzeros."""
    return int(_mark_kernel(idx, pat[0], pat[1], mark))


def _push(P: np.ndarray, A, csr, rows: np.ndarray, cols: np.ndarray, colpos: np.ndarray) -> np.ndarray:
    """P @ A[rows][:, cols] (the columns cols hold every nonzero of those rows)."""
    if csr is None:
        return P @ np.asarray(A)[np.ix_(rows, cols)]
    outT = np.zeros((cols.size, P.shape[0]))
    _spmm_kernel(np.ascontiguousarray(P.T), rows, csr[0], csr[1], csr[2], colpos, outT)
    return outT.T


def _supports(net: MergedNet, pats, t: int, js: np.ndarray, cutoff: int) -> dict[int, np.ndarray]:
    """Per node: the neurons that rows of neurons js of node t reach, pushed back through every
    node >= cutoff (nodes before it are where the rows stop)."""
    marks: dict[int, np.ndarray] = {}
    S: dict[int, np.ndarray] = {t: js}
    for s in range(t, 0, -1):
        if s < t:
            if s not in marks:
                continue
            S[s] = np.nonzero(marks.pop(s))[0]
            if s < cutoff:
                continue
        for i, pat in zip(net.nodes[s].inputs, pats[s], strict=True):
            if i not in marks:
                marks[i] = np.zeros(net.nodes[i].size, dtype=np.bool_)
            _reach(pat[0], S[s], marks[i])
    for i, m in marks.items():
        S[i] = np.nonzero(m)[0]
    return S


def _window_costs(net: MergedNet, pats, t: int, groups: list[np.ndarray], cap: float,
                  per_group_rows: np.ndarray) -> tuple[int, np.ndarray]:
    """(cutoff, per-row cost of each group at it): the earliest cutoff c (1 = to the input) at
    which the rows of every group (per_group_rows each) cost at most cap, walking back one node at
    a time and stopping once a cutoff costs more; t - 1 (the shortest window) when none fits."""
    marks: list[dict[int, np.ndarray]] = [{} for _ in groups]
    sizes: list[dict[int, int]] = [{} for _ in groups]
    relaxed = np.zeros(len(groups))
    best_c, best = t - 1, None
    for s in range(t, 0, -1):
        for gi, js in enumerate(groups):
            mk = marks[gi]
            if s == t:
                rows = js
            elif s in mk:
                rows = np.nonzero(mk.pop(s))[0]
                relaxed[gi] += rows.size
                sizes[gi].pop(s, None)
            else:
                continue
            for i, pat in zip(net.nodes[s].inputs, pats[s], strict=True):
                if i not in mk:
                    mk[i] = np.zeros(net.nodes[i].size, dtype=np.bool_)
                nnz = _reach(pat[0], rows, mk[i])
                relaxed[gi] += 2 * nnz if s < t else 0
                sizes[gi][i] = int(np.count_nonzero(mk[i]))
        if s == t:
            continue
        # Cutoff c = s: nodes >= s relaxed, the nodes before s that rows reach concretized.
        cost = relaxed + np.array([sum(sz.values()) for sz in sizes], dtype=np.float64)
        total = float(cost @ per_group_rows)
        if best is None or total <= cap:
            best_c, best = s, cost
        if total > cap:
            break
    if best is None:  # t == 1: the rows are the input's own, concretized on the box
        best_c, best = 1, np.array([float(sum(sz.values())) for sz in sizes])
    return best_c, best


def _window_ranges(net: MergedNet, s: int, nb: NodeBounds) -> tuple[np.ndarray, ...]:
    """(yl, yh, ql, qh, dl, dh) (B, n) at node s: where a window stops, its rows are concretized."""
    node = net.nodes[s]
    yl, yh = nb.y(node)
    ql, qh = nb.yq(node)
    dl, dh = output_difference(node, nb)
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (yl, yh, ql, qh, dl, dh))


@njit(cache=True, nogil=True)
def _up1(c, lo, hi):  # pragma: no cover - compiled
    """Largest c z over z in [lo, hi] (0 where c is 0, whatever the range)."""
    if c > 0.0:
        return c * hi
    if c < 0.0:
        return c * lo
    return 0.0


@njit(cache=True, nogil=True)
def _concretize_kernel(Lf, Lq, owner, idx, yl, yh, ql, qh, dl, dh, out):  # pragma: no cover - compiled
    R, m = Lf.shape
    for r in range(R):
        b = owner[r]
        tot = 0.0
        for jj in range(m):
            lf = Lf[r, jj]
            lq = Lq[r, jj]
            if lf == 0.0 and lq == 0.0:
                continue
            j = idx[jj]
            s = lf + lq
            a = _up1(lf, yl[b, j], yh[b, j]) + _up1(lq, ql[b, j], qh[b, j])
            v = _up1(s, yl[b, j], yh[b, j]) + _up1(-lq, dl[b, j], dh[b, j])
            if v < a:
                a = v
            v = _up1(s, ql[b, j], qh[b, j]) + _up1(lf, dl[b, j], dh[b, j])
            if v < a:
                a = v
            tot += a
        out[r] += tot


def _concretize_at(r: tuple[np.ndarray, ...], idx: np.ndarray, Lf: np.ndarray, Lq: np.ndarray,
                   owner: np.ndarray, out: np.ndarray) -> None:
    """out (R,) += an upper bound of Lf·y + Lq·ŷ over neurons idx, from their ranges of y, ŷ and
    d = y - ŷ (r: (yl, yh, ql, qh, dl, dh), (B, n) each): per neuron the least of lf y + lq ŷ,
    (lf + lq) y - lq d and (lf + lq) ŷ + lf d (all equal the objective; each bounded on its own
    ranges, so the least is sound)."""
    yl, yh, ql, qh, dl, dh = r
    _concretize_kernel(np.ascontiguousarray(Lf, dtype=np.float64), np.ascontiguousarray(Lq, dtype=np.float64),
                       owner, idx, yl, yh, ql, qh, dl, dh, out)


def _group_rows(net: MergedNet, pats, t: int, cutoff: int, box_of: np.ndarray, neuron: np.ndarray,
                nodes, lines, window: dict, boxes: BoxBatch, inputs: tuple[np.ndarray, np.ndarray],
                settings: Settings) -> np.ndarray:
    """Upper bounds (P, 6) of p, -p, u, -u, delta, -delta at node t (those of _KINDS; inf for u)
    for the pairs (box_of, neuron) of one group, pushed over their support back to `cutoff`
    (window: the concretization ranges of the nodes before it; inputs: exact_input's)."""
    node = net.nodes[t]
    js = np.unique(neuron)
    S = _supports(net, pats, t, js, cutoff)
    widest = max(v.size for v in S.values())
    k = _KINDS.size
    per = max(k, settings.block_entries // max(1, widest) // k * k)
    owner_all = np.repeat(box_of, k)
    j_all = np.repeat(neuron, k)
    sp_all, su_all = np.tile(_SIGN_P[_KINDS], box_of.size), np.tile(_SIGN_U[_KINDS], box_of.size)
    colpos = {}
    for i, v in S.items():
        cp = np.full(net.nodes[i].size, -1, dtype=np.int64)
        cp[v] = np.arange(v.size)
        colpos[i] = cp
    subs = [(i, _gather(Af, pat[1], js, S[i], colpos[i]), _gather(Aq, pat[2], js, S[i], colpos[i]))
            for i, Af, Aq, pat in zip(node.inputs, node.A_f, node.A_q, pats[t], strict=True)]
    out = np.empty(owner_all.size)
    for s0 in range(0, owner_all.size, per):
        e = min(owner_all.size, s0 + per)
        owner, sgn_p, sgn_u = owner_all[s0:e], sp_all[s0:e], su_all[s0:e]
        j = j_all[s0:e]
        pos = np.searchsorted(js, j)
        const = sgn_p * node.c_f[j] + sgn_u * node.c_q[j] + np.abs(sgn_u) * node.noise[j]
        lam_f: dict[int, np.ndarray] = {}
        lam_q: dict[int, np.ndarray] = {}
        for i, Sf, Sq in subs:
            lf = sgn_p[:, None] * _dense(Sf[pos])
            lq = sgn_u[:, None] * _dense(Sq[pos])
            lam_f[i] = lam_f[i] + lf if i in lam_f else lf
            lam_q[i] = lam_q[i] + lq if i in lam_q else lq
        total = np.zeros(e - s0)
        for s in range(t - 1, -1, -1):
            if s not in lam_f:
                continue
            Lf_s, Lq_s = lam_f.pop(s), lam_q.pop(s)
            idx = S[s]
            nd = net.nodes[s]
            if 1 <= s < cutoff:
                _concretize_at(window[s], idx, Lf_s, Lq_s, owner, total)
                continue
            ln = lines[s]
            if ln is None:
                Pt, Ut = Lf_s, Lq_s
                const += Pt @ nd.c_f[idx] + Ut @ nd.c_q[idx] + np.abs(Ut) @ nd.noise[idx]
            else:
                Pt, Ut = fused.relax(Lf_s, Lq_s, owner, np.ascontiguousarray(ln.packed[:, :, idx]),
                                     np.ascontiguousarray(nd.c_f[idx]), np.ascontiguousarray(nd.c_q[idx]),
                                     np.ascontiguousarray(nd.noise[idx]), const)
            if s == 0:
                exact, value = inputs
                ex = exact[:, idx][owner]
                if ex.any():
                    Ue = np.where(ex, Ut, 0.0)
                    const += (Ue * value[:, idx][owner]).sum(axis=1) - np.abs(Ue) @ nd.noise[idx]
                    Ut = Ut - Ue
                total += fused.concretize(Pt + Ut, np.zeros(e - s0), owner,
                                          np.ascontiguousarray(boxes.center[:, idx]),
                                          np.ascontiguousarray(boxes.radius[:, idx]))
                continue
            for i, Af, Aq, pat in zip(nd.inputs, nd.A_f, nd.A_q, pats[s], strict=True):
                lf = _push(Pt, Af, pat[1], idx, S[i], colpos[i])
                lq = _push(Ut, Aq, pat[2], idx, S[i], colpos[i])
                if i in lam_f:
                    lam_f[i] = lam_f[i] + lf
                    lam_q[i] = lam_q[i] + lq
                else:
                    lam_f[i], lam_q[i] = lf, lq
        out[s0:e] = total + const
    rows = np.full((box_of.size, 6), np.inf)
    rows[:, _KINDS] = out.reshape(-1, k)
    return rows


def _windowed_rows(net: MergedNet, t: int, todo: np.ndarray, priority: np.ndarray, cap: float, nodes,
                   lines, window: dict, boxes: BoxBatch, settings: Settings,
                   threads: int = 1) -> tuple[np.ndarray, float]:
    """(B, 6, n) symbolic bounds as _node_rows gives them (inf where none, and for u), within about cap
    multiply-adds: over supports, back as far as cap allows for every pair of todo, or else, at the
    shortest window, for the pairs of highest priority (B, n) that fit. Also the work estimated."""
    B, n = todo.shape
    out = np.full((B, 6, n), np.inf)
    pats = _patterns(net)
    neuron, box_of = np.nonzero(todo.T)  # grouped by neuron, boxes in order
    if neuron.size == 0:
        return out, 0.0
    cuts = np.arange(_GROUP, n, _GROUP)
    gid = np.searchsorted(cuts, neuron, side="right")
    group_ids, starts = np.unique(gid, return_index=True)
    bounds = list(starts) + [neuron.size]
    members = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(group_ids))]
    groups = [np.unique(neuron[m]) for m in members]
    rows = np.array([float(_KINDS.size * m.size) for m in members])
    cutoff, per_row = _window_costs(net, pats, t, groups, cap, rows)
    pair_cost = np.empty(neuron.size)
    for m, c in zip(members, per_row, strict=True):
        pair_cost[m] = _KINDS.size * c
    keep = np.ones(neuron.size, dtype=bool)
    if pair_cost.sum() > cap:
        order = np.argsort(-priority[box_of, neuron], kind="stable")
        fits = np.cumsum(pair_cost[order]) <= cap
        keep[:] = False
        keep[order[fits]] = True
    spent = float(pair_cost[keep].sum())
    for s in range(1, cutoff):  # filled before the groups run (they may run in threads)
        if s not in window:
            window[s] = _window_ranges(net, s, nodes[s])
    inputs = exact_input(net, boxes)

    def group(m: np.ndarray) -> None:
        m = m[keep[m]]
        if m.size:
            res = _group_rows(net, pats, t, cutoff, box_of[m], neuron[m], nodes, lines, window, boxes, inputs,
                              settings)
            out[box_of[m], :, neuron[m]] = res

    _each(group, members, threads)
    return out, spent


def _kink_gaps(lo: np.ndarray, hi: np.ndarray, kinks, grid: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(gap, at) (B, n): for a range [lo, hi] that a kink of a clamp crosses, the height of the
    triangle a relaxation leaves there, (at - lo)(hi - at) / (hi - lo), for the kink with the largest
    one, and where to split. On the float side (grid None) at the kink itself: p <= at and p >= at
    each lie on one closed piece. On the int8 side, u is a multiple of the grid step s: the split
    goes between two grid points, at = s (floor(kink / s) + 1/2), so each side's grid values lie on
    one piece and every grid value on one side (none on neither)."""
    gap = np.zeros(lo.shape)
    at = np.zeros(lo.shape)
    width = np.where(hi > lo, hi - lo, 1.0)
    for kink in kinks:
        k = np.broadcast_to(kink, lo.shape)
        finite = np.isfinite(k)
        k = np.where(finite, k, 0.0)
        m = k if grid is None else grid * (np.floor(k / grid + 1e-9) + 0.5)
        inside = finite & (lo < m) & (m < hi)
        g = np.where(inside, (m - lo) * (hi - m) / width, 0.0)
        take = g > gap
        gap, at = np.where(take, g, gap), np.where(take, m, at)
    return gap, at


def _slack(packed: np.ndarray, at: int, lo: np.ndarray, hi: np.ndarray, fn, kinks,
           coef: np.ndarray) -> np.ndarray:
    """(B, n): how far the relaxation line a row uses (packed[:, at:at + 4] = alpha_l, beta_l,
    alpha_u, beta_u; upper where coef >= 0, lower elsewhere) lies from the piecewise-linear function
    fn it bounds, at worst over [lo, hi]: the largest distance at the range's ends and the kinks
    inside (between them both are linear)."""
    al, bl, au, bu = (packed[:, at + i] for i in range(4))
    vertices = [lo, hi] + [np.clip(np.where(np.isfinite(k), k, lo), lo, hi) for k in kinks]
    up = np.max([au * v + bu - fn(v) for v in vertices], axis=0)
    down = np.max([fn(v) - al * v - bl for v in vertices], axis=0)
    return np.maximum(0.0, np.where(coef >= 0, up, down))


BRANCH_NONE = (-1.0, -1.0, 0.0, 0.0, 0.0)  # a branch record without a neuron to branch on


def branch_records(net: MergedNet, nodes, lines, boxes: BoxBatch, worst: np.ndarray) -> np.ndarray:
    """(B, 5): per box, the neuron whose relaxation costs the box's worst output row the most, as
    (node, neuron, side, split point, score); side 0 is the float pre-activation p (a ReLU or clamp
    kink that [pl, ph] straddles), 1 the int8 one u (a clamp of the int8 range, or the float kink,
    that [ul, uh] crosses). `worst` (B,): the row (0..2n: +e_k, then -e_k) with the largest bound.

    The row is pushed back once more, and at every hidden node its coefficients (λ_f on y, λ_q on ŷ)
    are split as fused.relax_rows splits them: where they have opposite signs the row is
    a y + c (y - ŷ) with a = λ_f + λ_q, c = -λ_q, and y - ŷ = A(δ) + B(u); elsewhere a y + b ŷ. Each
    term's relaxation line gives away its slack (_slack: the largest distance between the line the
    row uses, upper or lower by its coefficient's sign, and the function, over the range's ends and
    kinks), and A's line about the triangle of max(0, δ) over [dl, dh] where p or u crosses a float
    kink. A side's score is what its split can take back: p's |a| slack(y) (+ |c| A's), u's
    |b| slack(ŷ) + |c| slack(B) (+ |c| A's); an exact ŷ costs nothing. The largest wins (ties: the
    later node, then the lower neuron)."""
    K = net.output
    n = net.nodes[K].size
    B = len(boxes)
    rows = np.arange(B)
    Lf = np.zeros((B, n))
    Lf[rows, worst % n] = np.where(worst < n, 1.0, -1.0)
    best = np.tile(np.array(BRANCH_NONE), (B, 1))

    def score(t: int, Lf_t: np.ndarray, Lq_t: np.ndarray) -> None:
        node, nb, packed = net.nodes[t], nodes[t], lines[t].packed
        lq = np.where(nb.exact, 0.0, Lq_t)
        opposite = Lf_t * lq < 0
        a = np.where(opposite, Lf_t + lq, Lf_t)
        b = np.where(opposite, 0.0, lq)
        c = np.where(opposite, -lq, 0.0)

        def f(z):
            return relax.clamp(z, node.f_lo, node.f_hi)

        def g(z):
            return relax.clamp(z, node.q_lo, node.q_hi)

        s_y = _slack(packed, 2, nb.pl, nb.ph, f, (node.f_lo, node.f_hi), a)
        s_q = _slack(packed, 6, nb.ul, nb.uh, g, (node.q_lo, node.q_hi), b)
        kinks_u = (node.f_lo, node.f_hi, node.q_lo, node.q_hi)
        s_b = _slack(packed, 16, nb.ul, nb.uh, lambda z: f(z) - g(z), kinks_u, c)
        gp, ap = _kink_gaps(nb.pl, nb.ph, (node.f_lo, node.f_hi), None)
        gu, au = _kink_gaps(nb.ul, nb.uh, (node.q_lo, node.q_hi, node.f_lo, node.f_hi), node.scale)
        gu_f, _ = _kink_gaps(nb.ul, nb.uh, (node.f_lo, node.f_hi), None)
        s_a = np.where(nb.dh > nb.dl, np.maximum(0.0, -nb.dl) * np.maximum(0.0, nb.dh)
                       / np.where(nb.dh > nb.dl, nb.dh - nb.dl, 1.0), 0.0)
        sp = np.where(gp > 0, np.abs(a) * s_y + np.abs(c) * s_a, 0.0)
        su = np.where(gu > 0, np.abs(b) * s_q + np.abs(c) * (s_b + np.where(gu_f > 0, s_a, 0.0)), 0.0)
        on_u = su > sp
        sc = np.where(on_u, su, sp)
        j = np.argmax(sc, axis=1)
        v = sc[rows, j]
        better = v > best[:, 4]
        rec = np.stack([np.full(B, float(t)), j.astype(np.float64), on_u[rows, j].astype(np.float64),
                        np.where(on_u, au, ap)[rows, j], v], axis=1)
        best[better] = rec[better]

    _back_substitute(net, K, Lf, -Lf, np.zeros(B), rows, nodes, lines, boxes, on_node=score)
    return best


def differential_analysis(net: MergedNet, boxes: BoxBatch, parent: Analysis | None = None,
                          settings: Settings = DEFAULT, full: bool = False,
                          work: float | None = None, start: np.ndarray | None = None,
                          threads: int = 1, alpha_work: float = 0.0, sides: str = "both") -> Analysis:
    """Symbolic bounds for every node, then for the output error y_K - ŷ_K, for every box.

    `parent` (an analysis of enclosing boxes, one per box) tightens every range: a child's linear
    bound can be looser than its parent's, so the smaller one is kept. Hidden neurons whose
    relaxations are already exact on their forward ranges (`settled`) keep those ranges unless
    `full` (the MILP and the saturation report want every range tight). Their relaxations do not
    change, but later layers' forward ranges start from theirs, so the bound can come out a
    little looser (0.75% on one 3-layer net in tests) for a fraction of the work deep in a search.

    `work` (default settings.symbolic_work_box) caps the multiply-adds per box spent on symbolic
    ranges of hidden nodes (estimated from path_costs before each node): past it, nodes keep their
    forward ranges (forward_node) and only the output's own rows are pushed back. Networks of
    hundreds of thousands of neurons are bounded that way, in memory and time that grow with the
    network, not with its square.

    `alpha_work` caps the multiply-adds per box spent on optimised slopes for the float ranges
    (alpha.float_rows_bound) of neurons that cross a kink, and of the output, node by node where the
    node's rows fit what is left (0: the fixed slopes only).

    With settings.branching other than `input`, the analysis also names the neuron each box would
    best branch on (branch_records) and which boxes' domains are provably empty (NodeBounds.ordered:
    a neuron-branched box carries its constraint as a tightened range in `parent`). `start` (B,):
    box b's nodes before start[b] get no symbolic ranges of their own (a neuron-branched child of a
    box at node t: its ranges there are its parent's, which the meet takes)."""
    B = len(boxes)
    nodes: list[NodeBounds] = []
    lines: list[NodeLines | None] = []
    budget = B * (settings.symbolic_work_box if work is None else work)
    path = path_costs(net)
    rows_cost = row_costs(net)
    spent = float(B * path[-1])  # the forward ranges: about one pass over every layer per box
    branching = settings.branching != "input"
    empty = np.zeros(B, dtype=bool)
    window: dict[int, tuple[np.ndarray, ...]] = {}  # where windows stop: ranges of y, ŷ, d (_windowed_rows)
    alpha_left = B * alpha_work
    float_side = sides == "float"
    # Each box's slopes: its parent's, node by node, replaced where this analysis optimises a node's rows.
    warm = parent.slopes if parent is not None and parent.slopes is not None else (None,) * B
    slopes: list[BoxSlopes] = [dict(w) if w is not None else {} for w in warm]
    for t, node in enumerate(net.nodes):
        nb = forward_node(net, t, nodes, boxes)
        if parent is not None:
            nb = nb.meet(parent.nodes[t])
        if t > 0 and not node.linear_only:
            # Only neurons a box may still move between pieces get symbolic bounds: where every
            # relaxation is already exact, tighter ranges only reach later layers through their
            # interval ranges.
            if full or t == net.output:
                todo = np.ones((B, node.size), dtype=bool)
            elif float_side:
                todo = _piece(nb.pl, nb.ph, node.f_lo, node.f_hi) < 0
            else:
                todo = ~settled(node, nb)
            if start is not None:
                todo &= (np.asarray(start) <= t)[:, None]
            # (float side only: 2 rows instead of 6, through one side's matrices instead of both)
            cost = (1.0 if float_side else 6.0) * todo.sum() * rows_cost[t]
            # This layer's share of what is left, front-loaded (what is left over L^(1/4), L the
            # non-linear layers from here on): an early layer's ranges feed every later one.
            # Measured at the default root budget, worst of 3 balls (with u's own rows still
            # pushed): DS-CNN 222 with an even split (L^1), 196 (L^(1/2)), 161 (L^(1/4)), 170 (all
            # of it); ResNet-8 2.50e6, 1.31e6, 1.32e6, 1.41e6; shares by each layer's dense cost:
            # 376 and 3.24e6. Without u's rows L^(1/10), L^(1/4), L^(1/2): DS-CNN 148.3 each,
            # ResNet-8 1.28e6, 1.22e6, 1.21e6.
            share = budget / sum(1 for s in range(t, len(net.nodes)) if not net.nodes[s].linear_only) ** 0.25
            up = None
            windowed = False
            # Dense rows where the layer's matrices are dense (fully connected: every row reaches
            # every neuron anyway) and fit the share. A layer with sparse matrices (convolutions)
            # always pushes its rows over their supports: the same products without the structural
            # zeros, costed as they are (dense rows pay every layer's full width in relaxations:
            # MobileNet-0.25's root pass spent 56 of 72 s there). Root pass, 3 balls, 2 threads:
            # MobileNet 45 -> 14 s (same bound), DS-CNN same bound, ResNet-8 4.74e5 -> 4.63e5.
            sparse = any(sp.issparse(A) for A in node.A_f)
            if todo.any() and cost <= share and not sparse:
                up = _node_rows(net, t, todo, nodes, lines, boxes, settings, threads,
                                _FLOAT_SIDE if float_side else _BOTH_SIDES)
            elif todo.any():
                # Sparse, or too dense for its share: rows over their supports, back as far as the
                # share allows, or for the neurons that matter most (crossing a kink, widest ranges).
                width = np.nan_to_num(nb.ph - nb.pl + nb.uh - nb.ul, nan=0.0, posinf=1e300)
                priority = (~settled(node, nb)) * 2.0 + width / (1.0 + width.max())
                up, cost = _windowed_rows(net, t, todo, priority, share, nodes, lines, window, boxes,
                                          settings, threads)
                windowed = True
            if up is not None:
                budget -= cost
                spent += cost
                nb = nb.meet(NodeBounds(-up[:, 1], up[:, 0], -up[:, 3], up[:, 2], -up[:, 5], up[:, 4],
                                        np.zeros(todo.shape, dtype=bool)))
                if windowed:  # u = p - delta (its own rows were not pushed)
                    nb = NodeBounds(nb.pl, nb.ph, np.maximum(nb.ul, nb.pl - nb.dh),
                                    np.minimum(nb.uh, nb.ph - nb.dl), nb.dl, nb.dh, nb.exact)
            if alpha_left > 0:
                nb, cost = _alpha_ranges(net, t, nb, nodes, lines, boxes, settings, alpha_left, slopes)
                alpha_left -= cost
                spent += cost
        if t > 0 and not node.linear_only:
            nb = nb.snapped(node)
        if branching:
            gone, nb = nb.ordered(node)
            empty |= gone
        nodes.append(nb)
        # The input node too: ŷ_0 is the input clamped to the int8 range.
        lines.append(None if node.linear_only else node_lines(node, nb))
    # Output: y_K - ŷ_K, both signs.
    K = net.output
    n = net.nodes[K].size
    eye = np.eye(n)
    state = Analysis(boxes, ErrorBound(np.zeros((B, n)), np.zeros((B, n))), tuple(nodes), tuple(lines))
    smear = np.empty((B * 2 * n, net.n_inputs))
    if float_side:
        # The float output's own bounds (y_K <= up[:n], -y_K <= up[n:]); the error bound is then the
        # ranges' one, which the caller's cell bounds tighten (the int8 side exactly, cell by cell).
        up = upper_bounds(net, state, K, np.vstack([eye, -eye]), np.zeros((2 * n, n)), settings, smear)
        yq_lo, yq_hi = nodes[K].yq(net.nodes[K])
        bound = ErrorBound(-up[:, n:] - yq_hi, up[:, :n] - yq_lo).meet(ErrorBound(*output_range(net, nodes)))
        worst = np.argmax(np.hstack([bound.high, -bound.low]), axis=1)
    else:
        up = upper_bounds(net, state, K, np.vstack([eye, -eye]), np.vstack([-eye, eye]), settings, smear)
        # Where to split each box next: each input's share of the row with the largest bound.
        worst = np.argmax(up, axis=1)
        bound = ErrorBound(-up[:, n:], up[:, :n]).meet(ErrorBound(*output_range(net, nodes)))
    split_scores = smear.reshape(B, 2 * n, -1)[np.arange(B), worst]
    if parent is not None:
        bound = bound.meet(parent.bound)
    spent += 2.0 * B * n * path[K]
    kept = tuple(x or None for x in slopes)
    if not branching:
        return Analysis(boxes, bound, tuple(nodes), tuple(lines), spent, split_scores, slopes=kept)
    branch = branch_records(net, nodes, lines, boxes, worst)
    spent += B * path[K]
    return Analysis(boxes, bound, tuple(nodes), tuple(lines), spent, split_scores, branch, empty, kept)


def _alpha_ranges(net: MergedNet, t: int, nb: NodeBounds, nodes, lines, boxes: BoxBatch, settings: Settings,
                  left: float, slopes: list[BoxSlopes]) -> tuple[NodeBounds, float]:
    """Node t's float ranges tightened by optimised slopes (alpha.float_rows_bound) where they cross a
    kink (every neuron of the output node), if the rows' work fits `left`: (ranges, work spent).
    `slopes` (per box): where every box with rows holds its parent's slopes for node t, the rows start
    from them and take settings.alpha_warm_steps; the rows' best slopes replace them."""
    node = net.nodes[t]
    if t == net.output:
        todo = np.ones(nb.pl.shape, dtype=bool)
    else:
        todo = ((nb.pl < node.f_lo) & (nb.ph > node.f_lo)) | ((nb.pl < node.f_hi) & (nb.ph > node.f_hi))
    box_of, neuron = np.nonzero(todo)
    warm = [slopes[b].get(t) for b in range(len(boxes))]
    steps = settings.alpha_steps
    if box_of.size and all(warm[b] is not None for b in np.unique(box_of)):
        steps = settings.alpha_warm_steps
    # Each step pushes the rows back through the float side and its gradient forward again: about
    # path_costs (both sides' matrices) per row (timed on ACAS Xu like the fixed-slope rows).
    per_row = path_costs(net)[t]
    if box_of.size == 0 or 2.0 * box_of.size * per_row * (steps + 1) > left:
        return nb, 0.0
    R = box_of.size
    C = np.zeros((2 * R, node.size))
    C[np.arange(R), neuron] = 1.0
    C[R + np.arange(R), neuron] = -1.0
    owner = np.concatenate([box_of, box_of])
    up, evaluations, best = float_rows_bound(net, t, C, owner, nodes, lines, boxes, steps, warm)
    for b, ns in enumerate(best):
        if ns is not None:
            slopes[b][t] = ns
    cost = per_row * C.shape[0] * evaluations
    ph, pl = np.full(nb.pl.shape, np.inf), np.full(nb.pl.shape, -np.inf)
    ph[box_of, neuron] = up[:R]
    pl[box_of, neuron] = -up[R:]
    inf = np.full(nb.pl.shape, np.inf)
    return nb.meet(NodeBounds(pl, ph, -inf, inf, -inf, inf, np.zeros(todo.shape, dtype=bool))), cost


def float_linear_bounds(net: MergedNet,
                        analysis: Analysis) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Affine bounds of the float output over each box, from the node ranges of its analysis:
    (G_lo, k_lo, G_hi, k_hi), G (B, n_out, n_in), k (B, n_out), with
    G_lo x + k_lo <= y_K(x) <= G_hi x + k_hi for every x in the box (the float side alone)."""
    K = net.output
    n = net.nodes[K].size
    B = len(analysis)
    eye = np.eye(n)
    Lf = np.tile(np.vstack([eye, -eye]), (B, 1))
    owner = np.repeat(np.arange(B), 2 * n)
    G, k = _back_substitute(net, K, Lf, np.zeros_like(Lf), np.zeros(B * 2 * n), owner, analysis.nodes,
                            analysis.lines, analysis.boxes)
    G, k = G.reshape(B, 2 * n, -1), k.reshape(B, 2 * n)
    return -G[:, n:], -k[:, n:], G[:, :n], k[:, :n]
