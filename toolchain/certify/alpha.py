"""Optimised relaxation slopes (alpha-CROWN) for the float side's pre-activation ranges.

A float neuron whose range crosses one kink of its clamp (a ReLU with l < 0 < u) has one side of its
relaxation free: below a ReLU, any line y >= a p with a in [0, 1] holds. The differential engine
picks a = 0 or 1 per neuron by area, the same slope for every objective. Here each objective row (the
upper or lower bound of one neuron of a later node) gets its own slopes, improved by projected
gradient steps (Adam) on the row's own bound. Every slope in [0, 1] gives a sound bound, so the best
bound seen per row over the steps is kept: the optimisation only decides how tight, never whether.

Ranges compound through the layers: a deep network's last ranges come out many times tighter when
every layer's ranges are optimised in turn (ACAS Xu 2_7, a box of 8 input cells a side: float output
range 5.8 wide by fixed slopes, 0.68 with 20 steps; sampled 0.0013). Only the float side is optimised;
its tighter ranges reach the int8 side and the difference through NodeBounds.meet (u within
p - delta) and through every relaxation that is built on them.

The gradient is taken by hand: the bound is const + sum of per-node terms in the rows' coefficients,
pushed back to the input (`_backward`, storing each node's coefficients), and its derivative with
respect to each slope follows in one sweep forward from the input (`_forward`).

Warm starts (as alpha-beta-CROWN's branch and bound inherits its alphas): each box keeps the best slopes
of its rows (`NodeSlopes`), and a child's rows start from its parent's instead of the fixed
relaxation's. A child lies inside its parent, so its crossing neurons are among the parent's and
nearly every row and slope finds its parent's; the slopes of neighbouring boxes differ little, and a
few steps from them reach what many steps from the fixed slopes do (ACAS Xu 4_6 and 2_7, children of the
worst open boxes after 60 s: 20 cold steps 0.549 and 0.116, 5 warm steps 0.572 and 0.115, 8 (the default)
0.555 and 0.113). Only where the optimisation starts changes: the bound is still the best row bound
seen, sound for any slopes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from toolchain.certify.region import BoxBatch
from toolchain.merge import MergedNet, matmul, matmul_t

# y = f(p) lines in the packed relaxation record (fused.PACKED): alpha_l, beta_l, alpha_u, beta_u
_Y = slice(2, 6)

# Adam's step on the slopes (alpha-CROWN's default is of this order; the slopes live in [0, 1]).
_LR = 0.1

# Stored slopes are bytes: k / 255 (a starting point only, so rounding it costs nothing in soundness).
_LEVELS = 255


@dataclass(frozen=True)
class NodeSlopes:
    """One box's best slopes for the rows of one node: rows keyed 2 x neuron + 1 for an upper-bound row
    (+ 0 for a lower-bound one), sorted; per row the slopes of the box's free neurons among the node's
    ancestors, those neurons named by their index over the whole network (`cols`, sorted), in steps of
    1 / 255."""

    keys: np.ndarray  # (R,) int64
    cols: np.ndarray  # (F,) int64
    values: np.ndarray  # (R, F) uint8

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.cols.nbytes + self.values.nbytes


# One box's slopes, node by node (what a box hands down to its children with its ranges).
BoxSlopes = dict[int, NodeSlopes]


@dataclass
class _Slopes:
    """The free slopes of one node: per box (B, n), `side` 1 where the free side is below (a kink at
    f_lo inside the range: y >= a p + (1 - a) f_lo), -1 where above (a kink at f_hi:
    y <= a p + (1 - a) f_hi), 0 where the neuron has no free side, and the kink's value; per row
    (R, n) the current slopes and Adam's moments (unused where side is 0)."""

    side: np.ndarray
    kink: np.ndarray
    a: np.ndarray
    m: np.ndarray
    v: np.ndarray


def _free_side(net: MergedNet, t: int, pl: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """(B, n): 1 / -1 where the float range crosses exactly the lower / upper kink of the clamp, else 0."""
    node = net.nodes[t]
    cross_lo = (pl < node.f_lo) & (ph > node.f_lo) & (ph <= node.f_hi)
    cross_hi = (ph > node.f_hi) & (pl < node.f_hi) & (pl >= node.f_lo)
    return cross_lo.astype(np.int8) - cross_hi.astype(np.int8)


def float_rows_bound(net: MergedNet, t: int, C: np.ndarray, owner: np.ndarray, nodes, lines,
                     boxes: BoxBatch, steps: int, warm: list[NodeSlopes | None] | None = None,
                     ) -> tuple[np.ndarray, int, list[NodeSlopes | None]]:
    """For rows C (R, n_t) of boxes `owner` (each row one neuron's upper or lower bound: +/- a unit
    vector): an upper bound of C p_t over each row's box, the best of `steps` + 1 evaluations with
    slopes optimised per row (the first: the starting slopes; none more where no ancestor has a free
    slope), the number of evaluations made, and per box the slopes of its rows' best evaluations.
    The rows start from `warm` (per box of the batch: its parent's slopes for node t, or None) where a
    row finds its parent's, else from the engine's own lines. Each row's answer depends on that row
    alone (up to the last bits of BLAS sums), not on the others of its batch.

    `nodes` / `lines`: the differential analysis's ranges and relaxations of every node before t (the
    y lines at their packed place); the float side only is pushed back (p_t = c_f + sum A_f y_i)."""
    rows = _Rows.of(net, t, C, owner, nodes, lines, boxes)
    keys = 2 * np.argmax(np.abs(C), axis=1).astype(np.int64) + (C.max(axis=1) > 0)
    if warm is not None:
        rows.start_from(warm, keys)
    best = np.full(C.shape[0], np.inf)
    kept = {i: sl.a.copy() for i, sl in rows.slopes.items()}
    evaluations = 0
    for step in range(steps + 1):
        bound, stored = rows.backward()
        evaluations += 1
        better = bound < best
        best = np.minimum(best, bound)
        for i, sl in rows.slopes.items():
            kept[i][better] = sl.a[better]
        if step == steps or not rows.slopes:
            break
        for i, g in rows.gradients(stored).items():
            sl = rows.slopes[i]
            _adam_kernel(sl.a, sl.m, sl.v, g, sl.side, owner, step + 1, _LR)
    return best, evaluations, rows.pack(keys, kept)


@dataclass
class _Rows:
    """Objective rows on node t's float pre-activation, with every ancestor's y lines (B, 4, n) and free
    slopes: what one evaluation of the rows' bound and of its gradient needs."""

    net: MergedNet
    t: int
    C: np.ndarray
    owner: np.ndarray
    node_ids: list[int]
    base: dict[int, np.ndarray]
    slopes: dict[int, _Slopes]
    center: np.ndarray
    radius: np.ndarray
    n_boxes: int

    @staticmethod
    def of(net: MergedNet, t: int, C: np.ndarray, owner: np.ndarray, nodes, lines, boxes: BoxBatch) -> _Rows:
        node_ids = _ancestors(net, t)
        base: dict[int, np.ndarray] = {}
        slopes: dict[int, _Slopes] = {}
        for i in node_ids:
            if lines[i] is None:  # linear node: y = p
                continue
            base[i] = np.ascontiguousarray(lines[i].packed[:, _Y])  # (B, 4, n)
            if i == 0:
                continue
            side = _free_side(net, i, nodes[i].pl, nodes[i].ph)
            if side.any():
                node = net.nodes[i]
                kink = np.where(side > 0, node.f_lo, np.where(side < 0, node.f_hi, 0.0))
                kink = np.ascontiguousarray(np.nan_to_num(kink, posinf=0.0, neginf=0.0))
                # start from the engine's own slope on the free side
                a = np.ascontiguousarray(np.where(side > 0, base[i][:, 0], base[i][:, 2])[owner])
                slopes[i] = _Slopes(side, kink, a, np.zeros_like(a), np.zeros_like(a))
        return _Rows(net, t, C, owner, node_ids, base, slopes, boxes.center[owner], boxes.radius[owner],
                     len(boxes))

    def _layout(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The ancestors with free slopes (ascending), where each one's neurons start in a row of all
        their slopes side by side, and that position for every neuron of the network (-1: none)."""
        order = sorted(self.slopes)
        sizes = [self.net.nodes[i].size for i in order]
        start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        offset = _offsets(self.net)
        local = np.full(int(offset[-1]), -1, dtype=np.int64)
        for i, at in zip(order, start[:-1], strict=True):
            local[offset[i]:offset[i + 1]] = at + np.arange(self.net.nodes[i].size)
        return order, start, local

    def start_from(self, warm: list[NodeSlopes | None], keys: np.ndarray) -> None:
        """Every row's slopes from its box's parent's row of the same key, where there is one (the
        slopes of free neurons the parent's row did not have keep the engine's own)."""
        if not self.slopes:
            return
        order, start, local = self._layout()
        dense = np.full((self.C.shape[0], int(start[-1])), np.nan)
        for b, ns in enumerate(warm):
            if ns is None or ns.keys.size == 0:
                continue
            mine = np.nonzero(self.owner == b)[0]
            at = np.minimum(np.searchsorted(ns.keys, keys[mine]), ns.keys.size - 1)
            found = ns.keys[at] == keys[mine]
            cols = local[ns.cols]
            has = cols >= 0
            dense[np.ix_(mine[found], cols[has])] = ns.values[np.ix_(at[found], np.nonzero(has)[0])] / _LEVELS
        for i, lo, hi in zip(order, start[:-1], start[1:], strict=True):
            sl = self.slopes[i]
            given = dense[:, lo:hi]
            sl.a[...] = np.where(np.isnan(given) | (sl.side[self.owner] == 0), sl.a, given)

    def pack(self, keys: np.ndarray, kept: dict[int, np.ndarray]) -> list[NodeSlopes | None]:
        """Per box of the batch, its rows' slopes `kept` (R, n_i) per ancestor i, free neurons only."""
        if not self.slopes:
            return [None] * self.n_boxes
        order, _, _ = self._layout()
        offset = _offsets(self.net)
        ids = np.concatenate([offset[i] + np.arange(self.net.nodes[i].size) for i in order])
        values = np.rint(np.hstack([kept[i] for i in order]) * _LEVELS).astype(np.uint8)
        free = np.hstack([self.slopes[i].side != 0 for i in order])  # (B, W)
        out: list[NodeSlopes | None] = []
        for b in range(self.n_boxes):
            mine = np.nonzero(self.owner == b)[0]
            if mine.size == 0:
                out.append(None)
                continue
            mine = mine[np.argsort(keys[mine], kind="stable")]
            cols = np.nonzero(free[b])[0]
            out.append(NodeSlopes(keys[mine], ids[cols], values[np.ix_(mine, cols)]))
        return out

    def backward(self) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        return _backward(self.net, self.t, self.C, self.owner, self.node_ids, self.base, self.slopes,
                         self.center, self.radius)

    def gradients(self, stored: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """d bound / d slope (R, n) for every node with free slopes (0 where a row has no free slope)."""
        return _forward(self.net, self.owner, self.node_ids, stored, self.base, self.slopes, self.center,
                        self.radius)


def _offsets(net: MergedNet) -> np.ndarray:
    """Where each node's neurons start in the network-wide numbering (NodeSlopes.cols)."""
    return np.concatenate([[0], np.cumsum([node.size for node in net.nodes])]).astype(np.int64)


def _ancestors(net: MergedNet, t: int) -> list[int]:
    """Every node that reaches node t, t excluded, in decreasing order (the order of a push back)."""
    seen, todo = set(), list(net.nodes[t].inputs)
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(net.nodes[i].inputs)
    return sorted(seen, reverse=True)


_NO_SIDE = np.zeros((1, 1), dtype=np.int8)
_NO_VALUE = np.zeros((1, 1))


def _slope_args(slopes: dict[int, _Slopes], i: int) -> tuple:
    s = slopes.get(i)
    return (False, _NO_SIDE, _NO_VALUE, _NO_VALUE) if s is None else (True, s.side, s.kink, s.a)


def _backward(net: MergedNet, t: int, C: np.ndarray, owner: np.ndarray, node_ids: list[int], base, slopes,
              center: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The rows' bound and each node's coefficients on its y (what the gradient sweep needs)."""
    node = net.nodes[t]
    const = C @ node.c_f
    lam: dict[int, np.ndarray] = {}
    for i, A in zip(node.inputs, node.A_f, strict=True):
        lam[i] = lam[i] + matmul(C, A) if i in lam else matmul(C, A)
    stored: dict[int, np.ndarray] = {}
    for i in node_ids:
        L = np.ascontiguousarray(lam.pop(i))
        stored[i] = L
        if i in base:
            Lp = np.empty_like(L)
            has, side, kink, a = _slope_args(slopes, i)
            _relax_kernel(L, owner, base[i], has, side, kink, a, Lp, const)
        else:
            Lp = L
        if i == 0:
            return const + (Lp * center).sum(axis=1) + (np.abs(Lp) * radius).sum(axis=1), stored
        src = net.nodes[i]
        const = const + Lp @ src.c_f
        for j, A in zip(src.inputs, src.A_f, strict=True):
            lam[j] = lam[j] + matmul(Lp, A) if j in lam else matmul(Lp, A)
    raise AssertionError("every path reaches the input node")  # pragma: no cover


def _forward(net: MergedNet, owner: np.ndarray, node_ids: list[int], stored, base, slopes,
             center: np.ndarray, radius: np.ndarray) -> dict[int, np.ndarray]:
    """The gradient swept from the input up: with Lp_i the coefficients on p_i, d bound / d Lp_i =
    c_f + sum over i's inputs j of (d bound / d lam_j) A_j^T, and d bound / d lam_i follows through
    the lines (upper where lam_i > 0, lower where < 0)."""
    d_lam: dict[int, np.ndarray] = {}
    grads: dict[int, np.ndarray] = {}
    for i in reversed(node_ids):
        L = stored[i]
        if i == 0:
            Lp = L
            if 0 in base:
                Lp = np.empty_like(L)
                _relax_kernel(L, owner, base[0], False, _NO_SIDE, _NO_VALUE, _NO_VALUE, Lp,
                              np.zeros(L.shape[0]))
            d_lp = center + np.sign(Lp) * radius
        else:
            src = net.nodes[i]
            d_lp = np.broadcast_to(src.c_f, L.shape).copy()
            for j, A in zip(src.inputs, src.A_f, strict=True):
                d_lp += matmul_t(d_lam[j], A)
        if i in base:
            out = np.empty_like(L)
            s = slopes.get(i)
            if s is None:
                _gradient_kernel(L, owner, base[i], False, _NO_SIDE, _NO_VALUE, _NO_VALUE, d_lp, out,
                                 _NO_VALUE)
            else:
                grads[i] = np.zeros_like(L)
                _gradient_kernel(L, owner, base[i], True, s.side, s.kink, s.a, d_lp, out, grads[i])
            d_lam[i] = out
        else:
            d_lam[i] = d_lp
    return grads


@njit(cache=True, nogil=True)
def _relax_kernel(L, owner, lines, has_slopes, side, kink, a, Lp, const):  # pragma: no cover - compiled
    """Lp[r] = L[r] through node lines (upper where L > 0, lower where < 0), free slopes a where the
    box's neuron has a free side; const[r] += the lines' offsets, summed over j in order.

    Branch-free per element: every operand is loaded and the piece's slope and offset picked by
    selects (each term is c * slope and c * x * y, the lines' offset times y = 1.0, exact), so that
    the compiler vectorises the row; the offsets are summed after, in the order a loop adding them one
    by one would."""
    R, n = L.shape
    terms = np.empty(n)
    for r in range(R):
        b = owner[r]
        if has_slopes:
            for j in range(n):
                c = L[r, j]
                aj, sj, kj = a[r, j], side[b, j], kink[b, j]
                up = c > 0.0
                free = (sj < 0) if up else (sj > 0)
                line_slope = lines[b, 2, j] if up else lines[b, 0, j]
                line_offset = lines[b, 3, j] if up else lines[b, 1, j]
                slope = aj if free else line_slope
                x = (1.0 - aj) if free else line_offset
                y = kj if free else 1.0
                Lp[r, j] = c * slope if c != 0.0 else 0.0
                terms[j] = c * x * y if c != 0.0 else 0.0
        else:
            for j in range(n):
                c = L[r, j]
                up = c > 0.0
                slope = lines[b, 2, j] if up else lines[b, 0, j]
                offset = lines[b, 3, j] if up else lines[b, 1, j]
                Lp[r, j] = c * slope if c != 0.0 else 0.0
                terms[j] = c * offset if c != 0.0 else 0.0
        k = 0.0
        for j in range(n):
            k += terms[j]
        const[r] += k


@njit(cache=True, nogil=True)
def _gradient_kernel(L, owner, lines, has_slopes, side, kink, a, d_lp, d_lam, grad):  # pragma: no cover
    """d_lam[r] = d bound / d L[r] through the lines and (has_slopes) grad[r] = d bound / d a[r] on the
    free side: there Lp gains a L and the offset (1 - a) L kink, so d bound / d a = L (d_lp - kink).
    Branch-free per element (operands loaded, pieces picked by selects), as _relax_kernel."""
    R, n = L.shape
    for r in range(R):
        b = owner[r]
        if has_slopes:
            for j in range(n):
                c = L[r, j]
                aj, sj, kj, dj = a[r, j], side[b, j], kink[b, j], d_lp[r, j]
                up = c > 0.0
                free = (sj < 0) if up else ((sj > 0) and c < 0.0)
                line = lines[b, 2, j] * dj + lines[b, 3, j] if up else lines[b, 0, j] * dj + lines[b, 1, j]
                through = aj * dj + (1.0 - aj) * kj if free else line
                d_lam[r, j] = through if c != 0.0 else 0.0
                grad[r, j] = c * (dj - kj) if free else 0.0
        else:
            for j in range(n):
                c = L[r, j]
                dj = d_lp[r, j]
                up = c > 0.0
                line = lines[b, 2, j] * dj + lines[b, 3, j] if up else lines[b, 0, j] * dj + lines[b, 1, j]
                d_lam[r, j] = line if c != 0.0 else 0.0


@njit(cache=True, nogil=True)
def _adam_kernel(a, m, v, grad, side, owner, step, lr):  # pragma: no cover - compiled
    """One projected Adam step (moments 0.9, 0.999) on every free slope, kept within [0, 1]."""
    R, n = a.shape
    c1 = 1.0 - 0.9 ** step
    c2 = 1.0 - 0.999 ** step
    for r in range(R):
        b = owner[r]
        for j in range(n):
            if side[b, j] == 0:
                continue
            g = grad[r, j]
            m[r, j] = 0.9 * m[r, j] + 0.1 * g
            v[r, j] = 0.999 * v[r, j] + 0.001 * g * g
            x = a[r, j] - lr * (m[r, j] / c1) / (np.sqrt(v[r, j] / c2) + 1e-8)
            a[r, j] = min(1.0, max(0.0, x))
