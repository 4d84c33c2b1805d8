"""Exact MILP encoding of the merged network on HiGHS (highspy).

Every node is encoded in units of its own int8 scale s_t ("LSB units"), so that the float and
the quantized side of one layer share a scale and every coefficient is O(1): the quantized
pre-activation is an *integer* k (the rounded int8 value, zero point removed) with
|k - v/s_t| <= noise/s_t (v the noise-free pre-rounding value), ŷ/s_t = r = clamp(k, Lo, Hi) with
integer Lo, Hi; the float side is p/s_t and y/s_t = clamp(p/s_t). Clamps that the differential
ranges prove stable get no binary (identity clamps alias their input, constant ones are fixed);
the others get one binary each (two for a clamp whose both kinks are reachable), with big-M
taken from those ranges and tightened to the integer grid. Every layer also gets the rows
dl <= p - u <= dh (the differential engine's bound on the pre-activation difference), which tie
the two sides together in the LP relaxation. With an int8 input interface the input is one
integer variable shared by both sides; with a float input it is a continuous x and an integer
k_0 with |k_0 - x/s_0| <= noise_0/s_0 (fixed where the box lies in one rounding cell).

One HiGHS model is built per call; for every output k it solves max and min of y_k - ŷ_k by
changing only the objective. Feasible points of the model at the falsifier's witness and at a
few sampled inputs are given to HiGHS as starting solutions, and the sign that the best of them
favours is solved first; the other sign is solved with HiGHS's `objective_bound` set to the
first incumbent, so that the search only has to prove it cannot do better.

Soundness: the bound reported is the solver's **dual bound**, never the incumbent. A run
stopped by the time limit keeps its (looser) dual bound; a run without a finite dual bound
falls back to the differential bound for that sign. A run that proves no point beats the
objective bound reports that bound. HiGHS accepts a point or prunes a node with tolerances
(primal/dual feasibility 1e-7, MIP feasibility 1e-6 on rows scaled to O(1), objective in output
LSB units); the margin added to every bound is max(MILP_ABS_MARGIN, MILP_LSB_MARGIN * s_K)
+ MILP_REL_MARGIN * |bound|, i.e. at least 100x the MIP feasibility tolerance in output LSBs
(covering the "node bound within feastol of the incumbent" pruning and LP tolerance effects on
an objective of O(1..100) LSBs), and never below 1e-5 in real units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from toolchain.certify import relax
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.result import STOP_ONE_PASS, STOP_TIME, EngineResult, ErrorBound
from toolchain.certify.settings import DEFAULT, Settings
from toolchain.certify.symbolic import Analysis, exact_input
from toolchain.errors import QassureError
from toolchain.margins import MILP_DUAL_TOL as DUAL_TOL
from toolchain.margins import MILP_FEAS_TOL as MIP_FEAS_TOL
from toolchain.margins import MILP_GRID_TOL as _GRID_TOL
from toolchain.margins import MILP_PRIMAL_TOL as PRIMAL_TOL
from toolchain.margins import milp_margin
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph

MAX_NEURONS = 2000
# Boxes meeting at most this many input cells get the device's exact int8 ranges (milp_bounds).
ENUM_CELLS = 2**19
# ... and, from the same executor run, their cells' bound (for starting points) when cells x
# outputs also stays below this: the bound keeps a few float64 arrays of that many entries.
CELL_POINT_ENTRIES = 2**21


# --- model building ---------------------------------------------------------------------------


class _Builder:
    """Columns with bounds and integrality; rows as COO triplets with [lo, hi]."""

    def __init__(self):
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.n_col = 0
        self.ri: list[np.ndarray] = []
        self.ci: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.rlo: list[np.ndarray] = []
        self.rhi: list[np.ndarray] = []
        self.n_row = 0
        self.n_binary = 0

    def var(self, n: int, lb, ub, integer: bool = False) -> np.ndarray:
        lb = np.broadcast_to(np.asarray(lb, dtype=float), (n,)).copy()
        ub = np.broadcast_to(np.asarray(ub, dtype=float), (n,)).copy()
        ub = np.maximum(ub, lb)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(np.full(n, 1 if integer else 0, dtype=np.int32))
        idx = np.arange(self.n_col, self.n_col + n)
        self.n_col += n
        return idx

    def binary(self, n: int) -> np.ndarray:
        self.n_binary += n
        return self.var(n, 0.0, 1.0, integer=True)

    def rows(self, n: int, lo, hi, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """n rows lo <= sum of terms <= hi; each term (row offsets in [0, n), columns, values)."""
        if n == 0:
            return
        for r, c, v in terms:
            self.ri.append(np.asarray(r) + self.n_row)
            self.ci.append(np.asarray(c))
            self.vals.append(np.asarray(v, dtype=float))
        self.rlo.append(np.broadcast_to(np.asarray(lo, dtype=float), (n,)).copy())
        self.rhi.append(np.broadcast_to(np.asarray(hi, dtype=float), (n,)).copy())
        self.n_row += n

    def affine(self, out: np.ndarray, mats, ins: list[np.ndarray], c: np.ndarray, slack=None) -> None:
        """out - sum_i A_i in_i within [c - slack, c + slack] (slack 0: equality)."""
        n = out.size
        terms = [(np.arange(n), out, np.ones(n))]
        for A, iv in zip(mats, ins, strict=True):
            A = sp.coo_matrix(A)
            keep = A.data != 0
            terms.append((A.row[keep], iv[A.col[keep]], -A.data[keep]))
        s = 0.0 if slack is None else slack
        self.rows(n, c - s, c + s, terms)

    def clamp(self, w: np.ndarray, wl: np.ndarray, wh: np.ndarray, A: np.ndarray, B: np.ndarray):
        """Variables z = clamp(w, A, B) elementwise, w in [wl, wh]; returns (z, aux records, wmin)
        with wmin the column holding min(w, B) where the model has one (else -1)."""
        n = w.size
        z = np.empty(n, dtype=np.int64)
        wmin = np.full(n, -1, dtype=np.int64)
        aux: list = []
        const_lo = wh <= A
        const_hi = (wl >= B) & ~const_lo
        ident = (wl >= A) & (wh <= B) & ~const_lo & ~const_hi
        lower = (wl < A) & (wh > A) & (wh <= B)
        upper = (wl >= A) & (wl < B) & (wh > B)
        both = (wl < A) & (wh > B)
        z[ident] = w[ident]
        wmin[ident | lower] = w[ident | lower]
        for mask, val in ((const_lo, A), (const_hi, B)):
            if mask.any():
                z[mask] = self.var(int(mask.sum()), val[mask], val[mask])
        if lower.any():
            j = np.nonzero(lower)[0]
            z[j] = self._max(w[j], wl[j], wh[j], A[j], aux)
        if upper.any():
            j = np.nonzero(upper)[0]
            z[j] = wmin[j] = self._min(w[j], wl[j], wh[j], B[j], aux)
        if both.any():
            j = np.nonzero(both)[0]
            wmin[j] = self._min(w[j], wl[j], wh[j], B[j], aux)
            z[j] = self._max(wmin[j], wl[j], B[j], A[j], aux)
        return z, aux, wmin

    def _max(self, w, lo, hi, A, aux) -> np.ndarray:
        """z = max(w, A) with w in [lo, hi], lo < A < hi; d = 1 iff w >= A."""
        n = w.size
        z = self.var(n, A, hi)
        d = self.binary(n)
        r = np.arange(n)
        one = np.ones(n)
        self.rows(n, 0.0, np.inf, [(r, z, one), (r, w, -one)])  # z >= w
        self.rows(n, -np.inf, A - lo, [(r, z, one), (r, w, -one), (r, d, A - lo)])  # z <= w + (A-lo)(1-d)
        self.rows(n, -np.inf, A, [(r, z, one), (r, d, -(hi - A))])  # z <= A + (hi-A) d
        aux.append(("max", d, z, w, A))
        return z

    def _min(self, w, lo, hi, B, aux) -> np.ndarray:
        """z = min(w, B) with w in [lo, hi], lo < B < hi; d = 1 iff w >= B."""
        n = w.size
        z = self.var(n, lo, B)
        d = self.binary(n)
        r = np.arange(n)
        one = np.ones(n)
        self.rows(n, -np.inf, 0.0, [(r, z, one), (r, w, -one)])  # z <= w
        self.rows(n, 0.0, np.inf, [(r, z, one), (r, w, -one), (r, d, hi - B)])  # z >= w - (hi-B) d
        self.rows(n, lo, np.inf, [(r, z, one), (r, d, -(B - lo))])  # z >= B - (B-lo)(1-d)
        aux.append(("min", d, z, w, B))
        return z

    def csc(self) -> sp.csc_matrix:
        if not self.ri:
            return sp.csc_matrix((self.n_row, self.n_col))
        return sp.csc_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.ri), np.concatenate(self.ci))),
            shape=(self.n_row, self.n_col),
        )


@dataclass
class _NodeVars:
    y: np.ndarray  # float output (LSB units of the node)
    r: np.ndarray  # quantized output, integer-valued (LSB units)
    p: np.ndarray | None = None  # float pre-activation
    k: np.ndarray | None = None  # quantized pre-activation (integer) or linear value
    x: np.ndarray | None = None  # input node, float interface: x / s_0


@dataclass
class Encoding:
    builder: _Builder
    nodes: list[_NodeVars]
    aux: list
    scales: np.ndarray  # s_t per node (LSB unit)
    int_lo: list[np.ndarray]  # per node: integer clamp range of the quantized side
    int_hi: list[np.ndarray]
    fixed_k0: np.ndarray | None  # input node: k_0 where the box is one rounding cell, else nan


def _scale(node) -> float:
    s = float(node.scale)
    if not np.isfinite(s) or s <= 0:
        raise QassureError(f"{node.name}: int8 scale {s} is not positive")
    return s


def encode(net: MergedNet, box: Box, analysis: Analysis, device_ranges: list | None = None) -> Encoding:
    """Build the MILP in LSB units (see the module docstring).

    device_ranges (cells.device_ranges: per node, the device's int8 values over every input cell
    of the box, LSB units) narrow the rounded values' integer ranges: where the device's value
    never reaches a clamp end, its pre-clamp integer k lies within the values seen. The model
    then still holds every behaviour of the device."""
    if sum(n.size for n in net.nodes[1:]) > MAX_NEURONS:
        raise QassureError(f"the MILP engine handles up to {MAX_NEURONS} neurons; use split or differential")
    m = _Builder()
    nv: list[_NodeVars] = []
    aux: list = []
    scales = np.array([_scale(n) for n in net.nodes])
    int_lo, int_hi = [], []
    fixed_k0 = None
    for t, node in enumerate(net.nodes):
        b = analysis.nodes[t].take(0)  # the one box of the analysis: (n,) ranges
        n = node.size
        s = scales[t]
        Lo = np.rint(node.q_lo / s) if not node.linear_only else np.full(n, -np.inf)
        Hi = np.rint(node.q_hi / s) if not node.linear_only else np.full(n, np.inf)
        int_lo.append(Lo)
        int_hi.append(Hi)
        if t == 0:
            if net.input_interface == "int8":
                lo = np.maximum(np.ceil(box.low / s - 1e-9), Lo)
                hi = np.minimum(np.floor(box.high / s + 1e-9), Hi)
                r0 = m.var(n, lo, hi, integer=True)
                nv.append(_NodeVars(y=r0, r=r0))
                continue
            x = m.var(n, box.low / s, box.high / s)
            exact, value = (a[0] for a in exact_input(net, BoxBatch.of([box])))
            fixed_k0 = np.where(exact, np.rint(value / s), np.nan)
            nz = node.noise / s
            klo = np.where(exact, fixed_k0, np.ceil(box.low / s - nz - _GRID_TOL))
            khi = np.where(exact, fixed_k0, np.floor(box.high / s + nz + _GRID_TOL))
            k0 = m.var(n, klo, khi, integer=True)
            j = np.nonzero(~exact)[0]
            r = np.arange(j.size)
            m.rows(j.size, -nz[j], nz[j], [(r, k0[j], np.ones(j.size)), (r, x[j], -np.ones(j.size))])
            r0, a, _ = m.clamp(k0, klo, khi, Lo, Hi)
            aux += a
            nv.append(_NodeVars(y=x, r=r0, k=k0, x=x))
            continue
        ins_f = [nv[i].y for i in node.inputs]
        ins_q = [nv[i].r for i in node.inputs]
        A_f = [A * (scales[i] / s) for A, i in zip(node.A_f, node.inputs, strict=True)]
        A_q = [A * (scales[i] / s) for A, i in zip(node.A_q, node.inputs, strict=True)]
        pl, ph = b.pl / s, b.ph / s
        p = m.var(n, pl, ph)
        m.affine(p, A_f, ins_f, node.c_f / s)
        if node.linear_only:
            u = m.var(n, b.ul / s, b.uh / s)
            m.affine(u, A_q, ins_q, node.c_q / s)
            nv.append(_NodeVars(y=p, r=u, p=p, k=u))
            continue
        y, a, _ = m.clamp(p, pl, ph, node.f_lo / s, node.f_hi / s)
        aux += a
        klo = np.ceil(b.ul / s - _GRID_TOL)
        khi = np.floor(b.uh / s + _GRID_TOL)
        dl, dh = b.dl / s, b.dh / s
        if device_ranges is not None and device_ranges[t] is not None:
            seen_lo, seen_hi = device_ranges[t]
            klo = np.where(seen_lo > Lo, np.maximum(klo, seen_lo), klo)
            khi = np.where(seen_hi < Hi, np.minimum(khi, seen_hi), khi)
            khi = np.maximum(khi, klo)
            dl, dh = np.maximum(dl, pl - khi), np.minimum(dh, ph - klo)
        k = m.var(n, klo, khi, integer=True)
        # |k - (A_q r_in + c_q) / s| <= noise / s
        m.affine(k, A_q, ins_q, node.c_q / s, slack=node.noise / s)
        # The differential engine's range of p - u (u = s k, rounding included).
        ok = np.isfinite(dl) | np.isfinite(dh)
        j = np.nonzero(ok)[0]
        rr = np.arange(j.size)
        m.rows(j.size, dl[j], dh[j], [(rr, p[j], np.ones(j.size)), (rr, k[j], -np.ones(j.size))])
        r, a, kmin = m.clamp(k, klo, khi, Lo, Hi)
        aux += a
        _difference_rows(m, node, s, p, y, k, r, kmin, pl, ph, klo, khi, dl, dh, Lo, Hi)
        nv.append(_NodeVars(y=y, r=r, p=p, k=k))
    return Encoding(m, nv, aux, scales, int_lo, int_hi, fixed_k0)


def _difference_rows(m: _Builder, node, s, p, y, k, r, kmin, pl, ph, klo, khi, dl, dh, Lo, Hi) -> None:
    """Rows bounding y - r through the pre-activation difference delta = p - k (all in LSBs).

    Where the float clamp is g(w) = max(w, Lo) over both sides' ranges (same lower kink as the
    int8 clamp, float ceiling out of reach: ReLU layers), y - r = [g(p) - g(k)] + (k - min(k, Hi)),
    and g(p) - g(k) lies between min(0, delta) and max(0, delta) (g is monotone, 1-Lipschitz),
    narrowed where p or k stays on one piece of g: the lines of relax.clamp_difference_lines
    (the differential engine's own) are valid rows. They tie the two sides' ReLU phases
    together in the LP relaxation, which the per-side big-M rows alone do not."""
    F_lo, F_hi = node.f_lo / s, node.f_hi / s
    ok = (np.isfinite(Lo) & np.isfinite(F_lo) & (np.abs(F_lo - Lo) <= 1e-9 * np.maximum(1.0, np.abs(Lo)))
          & (F_hi >= np.maximum(ph, khi)) & np.isfinite(dl) & np.isfinite(dh) & (Hi > Lo))
    # t = k - min(k, Hi): zero if k <= Hi always, k - Hi if always above, else k - kmin column.
    ok &= (khi <= Hi) | (klo >= Hi) | (kmin >= 0)
    j = np.nonzero(ok)[0]
    if j.size == 0:
        return
    F_lo, F_hi = np.broadcast_to(F_lo, pl.shape), np.broadcast_to(F_hi, pl.shape)
    lines = relax.clamp_difference_lines(pl[j], ph[j], klo[j], khi[j], dl[j], dh[j], F_lo[j], F_hi[j])
    a_u, b_u, a_l, b_l = lines.alpha_u, lines.beta_u, lines.alpha_l, lines.beta_l
    n = j.size
    rr = np.arange(n)
    one = np.ones(n)
    terms = [(rr, y[j], one), (rr, r[j], -one), (rr, p[j], -a_u), (rr, k[j], a_u)]
    never, always = khi[j] <= Hi[j], klo[j] >= Hi[j]
    # - t: 0 (never), -(k - Hi) (always), -(k - kmin) (else)
    mid = ~never & ~always
    rhs_t = np.where(always, Hi[j], 0.0)  # -(k - Hi) = -k + Hi: Hi moves to the rhs
    tk = np.where(never, 0.0, -1.0)
    terms.append((rr, k[j], tk))
    terms.append((rr[mid], kmin[j][mid], np.ones(int(mid.sum()))))
    m.rows(n, -np.inf, b_u - rhs_t, terms)
    terms_l = [(rr, y[j], one), (rr, r[j], -one), (rr, p[j], -a_l), (rr, k[j], a_l), (rr, k[j], tk),
               (rr[mid], kmin[j][mid], np.ones(int(mid.sum())))]
    m.rows(n, b_l - rhs_t, np.inf, terms_l)


def assignment(net: MergedNet, enc: Encoding, xs: np.ndarray) -> np.ndarray:
    """A point of the model for each float input in xs (B, n_in): every column's value (B, n_col).
    Rounding picks the nearest integer (always within the model's |k - v| <= noise)."""
    xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
    B = xs.shape[0]
    m = enc.builder
    lb, ub = np.concatenate(m.lb), np.concatenate(m.ub)
    sol = np.zeros((B, m.n_col))
    ys, rs = [], []
    for t, node in enumerate(net.nodes):
        s = enc.scales[t]
        v = enc.nodes[t]
        Lo, Hi = enc.int_lo[t], enc.int_hi[t]
        if t == 0:
            if net.input_interface == "int8":
                r0 = np.clip(np.rint(xs / s), lb[v.r], ub[v.r])
                sol[:, v.r] = r0
                ys.append(r0)
                rs.append(r0)
                continue
            x = np.clip(xs / s, lb[v.x], ub[v.x])
            assert enc.fixed_k0 is not None  # set for every float-interface encoding
            k0 = np.where(np.isnan(enc.fixed_k0), np.floor(x + 0.5), enc.fixed_k0)
            sol[:, v.x] = x
            sol[:, v.k] = k0
            r0 = np.clip(k0, Lo, Hi)
            sol[:, v.r] = r0
            ys.append(x)
            rs.append(r0)
            continue
        pairs_f = zip(node.inputs, node.A_f, strict=True)
        pairs_q = zip(node.inputs, node.A_q, strict=True)
        p = node.c_f / s + sum(_mm(ys[i] * (enc.scales[i] / s), A) for i, A in pairs_f)
        u = node.c_q / s + sum(_mm(rs[i] * (enc.scales[i] / s), A) for i, A in pairs_q)
        sol[:, v.p] = p
        if node.linear_only:
            sol[:, v.k] = u
            ys.append(p)
            rs.append(u)
            continue
        y = np.clip(p, node.f_lo / s, node.f_hi / s)
        k = np.clip(np.floor(u + 0.5), lb[v.k], ub[v.k])
        r = np.clip(k, Lo, Hi)
        sol[:, v.y] = y
        sol[:, v.k] = k
        sol[:, v.r] = r
        ys.append(y)
        rs.append(r)
    for kind, d, z, w, T in enc.aux:
        wv = sol[:, w]
        sol[:, d] = (wv >= T).astype(float)
        sol[:, z] = np.maximum(wv, T) if kind == "max" else np.minimum(wv, T)
    return sol


def _mm(x: np.ndarray, A) -> np.ndarray:
    if sp.issparse(A):
        return np.asarray((A @ x.T).T)
    return x @ np.asarray(A).T


# --- solving ----------------------------------------------------------------------------------


def _highs(enc: Encoding, verbose: bool):
    import highspy

    m = enc.builder
    A = m.csc()
    A.sum_duplicates()
    A.eliminate_zeros()
    from toolchain.oracle import quiet_fds

    with quiet_fds():  # HiGHS prints a banner on fd 1 when constructed, whatever its options
        h = highspy.Highs()
    h.setOptionValue("output_flag", bool(verbose))
    lp = highspy.HighsLp()
    lp.num_col_ = m.n_col
    lp.num_row_ = m.n_row
    lp.col_cost_ = np.zeros(m.n_col)
    lp.col_lower_ = np.concatenate(m.lb)
    lp.col_upper_ = np.concatenate(m.ub)
    lp.row_lower_ = np.concatenate(m.rlo) if m.rlo else np.zeros(0)
    lp.row_upper_ = np.concatenate(m.rhi) if m.rhi else np.zeros(0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                       for i in np.concatenate(m.integer)]
    h.passModel(lp)
    # One thread and a fixed seed: HiGHS then takes the same path on every machine, so a node
    # limit gives the same bound everywhere.
    for key, val in (("presolve", "on"), ("primal_feasibility_tolerance", PRIMAL_TOL),
                     ("dual_feasibility_tolerance", DUAL_TOL), ("mip_feasibility_tolerance", MIP_FEAS_TOL),
                     ("random_seed", 0), ("threads", 1)):
        h.setOptionValue(key, val)
    return h


def _fallback_inputs(box: Box, witness, extra: np.ndarray | None = None, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = [box.center[None], box.sample(n, rng), box.corners(n, rng)]
    if extra is not None:
        pts.append(np.atleast_2d(extra))
    if witness is not None:
        w = getattr(witness, "inputs", witness)
        pts.append(np.atleast_2d(np.asarray(w, dtype=np.float64)))
    return np.clip(np.vstack(pts), box.low, box.high)


def _margin(bound: float, s_K: float) -> float:
    """The margin added to a bound (real units) for HiGHS's tolerances (toolchain.margins)."""
    return milp_margin(bound, s_K)


def _solver_gap(rel_gap: float, expected: float, s_K: float) -> float:
    """HiGHS's mip_rel_gap for a wanted gap between the certified bound and the incumbent.

    HiGHS stops once (dual - inc) / inc <= g (inc: its incumbent); the certified bound is dual + m
    (m the margin), and (dual + m - inc) / (dual + m) <= rel_gap holds once
    g <= rel_gap - (1 - rel_gap) m / inc. `expected` (LSB units) is the best start point's
    objective, which the incumbent never falls below; at least a quarter of rel_gap is kept."""
    if expected <= 0:
        return rel_gap / 2
    m = _margin(expected * s_K, s_K) / s_K
    return float(max(rel_gap / 4, rel_gap - (1 - rel_gap) * m / expected))


def _solve_side(h, highspy, n_col, yk, rk, sign, start, start_val, cutoff, seconds):
    """One run: maximise sign * (y_k - r_k). Returns (bound or None, incumbent, message, solution, nodes)."""
    kInf = highspy.kHighsInf
    h.changeColsCost(n_col, np.arange(n_col, dtype=np.int32), np.zeros(n_col))
    h.changeColsCost(2, np.array([yk, rk], dtype=np.int32), np.array([-sign, sign]))
    sol = highspy.HighsSolution()
    sol.col_value = list(start)
    sol.value_valid = True
    h.setSolution(sol)
    h.setOptionValue("objective_bound", -cutoff if cutoff is not None else kInf)
    h.setOptionValue("time_limit", max(0.2, seconds))
    h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    msg = h.modelStatusToString(ms)
    nodes = int(max(0, info.mip_node_count))
    dual = float(info.mip_dual_bound)
    prim = float(info.objective_function_value)
    has_sol = int(info.primal_solution_status) == 2 and np.isfinite(prim) and abs(prim) < kInf
    inc = max(start_val, -prim if has_sol else -np.inf)
    x = np.asarray(h.getSolution().col_value) if has_sol else None
    if ms == highspy.HighsModelStatus.kInfeasible and cutoff is not None:
        return max(cutoff, inc), inc, "no point beats the cutoff", x, nodes
    if np.isfinite(dual) and abs(dual) < kInf:
        return max(-dual, inc), inc, msg, x, nodes
    return None, inc, msg + " (no finite dual bound)", x, nodes


def milp_bounds(
    net: MergedNet,
    box: Box,
    analysis: Analysis,
    settings: Settings = DEFAULT,
    *,
    node_limit: int | None = None,
    witness=None,
    exact_rounding: str = "auto",
    verbose: bool = False,
    pg: PreparedGraph | None = None,
    seconds: float | None = None,
) -> EngineResult:
    """max and min of y_k - ŷ_k for every output k; sound bounds from the dual bound.

    `analysis`: the differential analysis of this box alone (all ranges tight: full=True); its
    bound is kept where a solve gives nothing better. Every solve stops after `node_limit`
    branch-and-bound nodes (default settings.milp_nodes) or once its certified bound is within
    settings.milp_rel_gap of its incumbent; HiGHS runs on one thread with a fixed seed, so the
    result is the same on every machine. `seconds` is only a safety net for the whole call
    (default settings.time_limit): each solve gets what is left of it, and the solves it leaves
    no time for keep the differential bound (the result then says it was stopped by the clock).

    pg: the prepared int8 graph; when given and the box meets at most settings.milp_enum_cells
    input cells, the executor runs on every cell first and the rounded values' integer ranges are
    cut to the values the device takes (encode's device_ranges); where cells x outputs also stays
    within settings.milp_cell_point_entries, the inputs where the cells' bound is reached
    (cells.cell_bounds) join the starting points.

    witness: the falsifier's `Found` (or an array of inputs) to start the solver from.
    exact_rounding: "never" relaxes the hidden layers' rounded values to continuous values in
    [v - noise, v + noise] (a superset of the device's behaviour: sound, slightly looser, much
    faster); "always" keeps them integer; "auto" first solves the relaxed model, then the integer
    one, and keeps the smaller dual bound. The output layer's rounded value stays integer in every
    mode."""
    import highspy

    if exact_rounding not in ("auto", "never", "always"):
        raise QassureError(f"exact_rounding must be auto, never or always, not {exact_rounding!r}")
    node_limit = settings.milp_nodes if node_limit is None else node_limit
    deadline = time.monotonic() + (settings.time_limit if seconds is None else seconds)
    ranges = None
    cell_points = None
    if pg is not None:
        from toolchain.certify import cells

        n_cells = cells.cell_count(net, box)
        if n_cells <= settings.milp_enum_cells:
            ranges, outputs = cells.device_ranges_and_outputs(
                net, pg, box, n_cells * net.n_outputs <= settings.milp_cell_point_entries,
                settings.cell_chunk)
            if outputs is not None:
                # The inputs where the cells' own bound is reached start the solver near the
                # optimum: with a good incumbent each solve only has to prove its dual bound.
                cell_points = cells.cell_bounds(net, box, analysis, outputs)[1]
    enc = encode(net, box, analysis, ranges)
    h = _highs(enc, verbose)
    h.setOptionValue("mip_max_nodes", int(node_limit))
    K = net.output
    s_K = enc.scales[K]
    yk, rk = enc.nodes[K].y, enc.nodes[K].r
    n_out = net.n_outputs
    n_col = enc.builder.n_col
    # Hidden rounded values (the integer k of every node but the output).
    hidden: list[np.ndarray] = []
    for t in range(len(net.nodes)):
        col = enc.nodes[t].k
        if t != K and not net.nodes[t].linear_only and col is not None:
            hidden.append(col)
    hidden_k = np.concatenate(hidden).astype(np.int32) if hidden else np.zeros(0, dtype=np.int32)
    integer_cols = np.concatenate(enc.builder.integer).astype(bool)
    hidden_k = hidden_k[integer_cols[hidden_k]]

    def set_hidden(integer: bool) -> None:
        if hidden_k.size:
            t = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
            h.changeColsIntegrality(hidden_k.size, hidden_k, np.array([t] * hidden_k.size))

    in_cols = enc.nodes[0].x if enc.nodes[0].x is not None else enc.nodes[0].y
    # Starting points: the model at the witness and at sampled inputs.
    starts = assignment(net, enc, _fallback_inputs(box, witness, cell_points))
    d_start = starts[:, yk] - starts[:, rk]  # (B, n_out), LSB units
    phases = {"never": [False], "always": [True], "auto": [False, True]}[exact_rounding]
    if not hidden_k.size:
        phases = [True]
    bound: dict = {}  # (k, sign) -> best sound bound so far (LSB units)
    inc: dict = {}
    status: list[str] = []
    solves = nodes_total = 0
    timed_out = False
    for integer in phases:
        set_hidden(integer)
        for k in range(n_out):
            first = 1.0 if d_start[:, k].max() >= -d_start[:, k].min() else -1.0
            for sign in (first, -first):
                vals = sign * d_start[:, k]
                best = int(np.argmax(vals))
                other = inc.get((k, -sign))
                cutoff = None if other is None else max(other, float(vals[best]))
                if cutoff is not None and (k, sign) in bound and bound[(k, sign)] <= cutoff:
                    continue  # already proven below the other sign's incumbent
                label = (f"out {k} {'max' if sign > 0 else 'min'} "
                         f"({'integer' if integer else 'relaxed'} rounding)")
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    status.append(f"{label}: not solved, no time left")
                    continue
                h.setOptionValue("mip_rel_gap", _solver_gap(settings.milp_rel_gap, float(vals[best]), s_K))
                b, i, msg, x, nodes = _solve_side(h, highspy, n_col, int(yk[k]), int(rk[k]), sign,
                                                  starts[best], float(vals[best]), cutoff, left)
                solves += 1
                nodes_total += nodes
                timed_out |= msg.startswith("Time limit")
                if integer:
                    inc[(k, sign)] = max(inc.get((k, sign), -np.inf), i)
                if x is not None:
                    # The solver's input, replayed through the integer model: a point of the model
                    # whatever the phase (a relaxed phase's own optimum need not be one).
                    pt = assignment(net, enc, (x[in_cols] * enc.scales[0])[None])
                    starts = np.vstack([starts, pt])
                    d_start = starts[:, yk] - starts[:, rk]
                for kk in range(n_out):
                    for sg in (1.0, -1.0):
                        inc[(kk, sg)] = max(inc.get((kk, sg), -np.inf), float((sg * d_start[:, kk]).max()))
                if b is not None:
                    bound[(k, sign)] = min(bound.get((k, sign), np.inf), b)
                status.append(f"{label}: {msg}")
    high = np.zeros(n_out)
    low = np.zeros(n_out)
    incumbent = np.zeros(n_out)
    for k in range(n_out):
        for sign in (1.0, -1.0):
            b = bound.get((k, sign), np.inf)
            # The differential engine's bound for this sign is sound too: keep the smaller (it is
            # all there is when no run produced a finite dual bound).
            diff = (analysis.bound.high[0, k] if sign > 0 else -analysis.bound.low[0, k]) / s_K
            if diff < b:
                b = diff
                status.append(f"out {k} {'max' if sign > 0 else 'min'}: differential bound used")
            b_real = b * s_K
            b_real += _margin(abs(b_real), s_K)
            if sign > 0:
                high[k] = b_real
            else:
                low[k] = -b_real
        incumbent[k] = max(0.0, inc.get((k, 1.0), 0.0), inc.get((k, -1.0), 0.0)) * s_K
    err = ErrorBound(low, high)
    details = {"columns": n_col, "rows": enc.builder.n_row, "binaries": enc.builder.n_binary,
               "integers": int(integer_cols.sum()) - enc.builder.n_binary, "incumbent": incumbent,
               "gap": (err.upper - incumbent) / np.maximum(err.upper, 1e-300)}
    work: dict[str, float] = {"milp_solves": solves, "milp_nodes": nodes_total}
    # The time limit is only a safety net: a solve it stopped makes the answer machine-dependent.
    stopped = STOP_TIME if timed_out else STOP_ONE_PASS
    return EngineResult(err, stopped, work, notes=tuple(status), details=details)
