"""Exact MILP encoding of the merged network on HiGHS (scipy.optimize.milp).

Variables per node element: float pre-activation p and output y = clamp(p); the quantized
noise-free pre-activation v, an *integer* k with |s k - v| <= noise (the rounded int8 value, in
LSBs), and ŷ = clamp(s k). Clamps that can switch inside the box get binaries with big-M taken
from the differential engine's ranges. The input's quantization is an integer too.

The bound reported is the solver's **dual bound** (valid even when the time limit stops the
search), widened by an explicit margin for the solver's feasibility tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from toolchain.certify.region import Box
from toolchain.certify.symbolic import Analysis
from toolchain.errors import QassureError
from toolchain.merge import MergedNet

# HiGHS primal feasibility tolerance is 1e-7 and its MIP feasibility tolerance 1e-6: a dual
# bound can be off by about that much times the objective's scale; this margin covers it.
MILP_ABS_MARGIN = 1e-5
MILP_REL_MARGIN = 1e-6
MAX_NEURONS = 2000


@dataclass(frozen=True)
class MilpResult:
    upper: np.ndarray  # per output: certified max |error| (dual bound + margin)
    incumbent: np.ndarray  # per output: best feasible |error| found by the solver (not a guarantee)
    gap: np.ndarray
    status: list[str]


class _Model:
    def __init__(self):
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def var(self, n: int, lb, ub, integer: bool = False) -> np.ndarray:
        start = len(self.lb)
        self.lb += list(np.broadcast_to(np.asarray(lb, dtype=float), (n,)))
        self.ub += list(np.broadcast_to(np.asarray(ub, dtype=float), (n,)))
        self.integer += [1 if integer else 0] * n
        return np.arange(start, start + n)

    def row(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))

    def affine_rows(self, out: np.ndarray, mats, ins: list[np.ndarray], c: np.ndarray, slack: np.ndarray | None = None):
        """out - sum A_i in_i (- slack) = c, or within [c - slack, c + slack] when slack is given."""
        dense = [A.toarray() if sp.issparse(A) else np.asarray(A) for A in mats]
        for j in range(out.size):
            coefs: dict[int, float] = {int(out[j]): 1.0}
            for A, iv in zip(dense, ins):
                nz = np.nonzero(A[j])[0]
                for col in nz:
                    coefs[int(iv[col])] = coefs.get(int(iv[col]), 0.0) - float(A[j, col])
            s = 0.0 if slack is None else float(slack[j])
            self.row(coefs, float(c[j]) - s, float(c[j]) + s)

    def clamp(self, z: np.ndarray, w: np.ndarray, wl, wh, a, b) -> None:
        """z = clamp(w, a, b) elementwise, w in [wl, wh] (a, b may be infinite)."""
        for j in range(z.size):
            zj, wj = int(z[j]), int(w[j])
            lo, hi, A, B = float(wl[j]), float(wh[j]), float(a[j]), float(b[j])
            if hi <= A:
                self.row({zj: 1.0}, A, A)
            elif lo >= B:
                self.row({zj: 1.0}, B, B)
            elif lo >= A and hi <= B:
                self.row({zj: 1.0, wj: -1.0}, 0.0, 0.0)
            elif lo < A and hi <= B:  # z = max(w, A)
                self._max(zj, wj, lo, hi, A)
            elif lo >= A and hi > B:  # z = min(w, B)
                self._min(zj, wj, lo, hi, B)
            else:  # both kinks inside: m = min(w, B), z = max(m, A)
                m = int(self.var(1, lo, B)[0])
                self._min(m, wj, lo, hi, B)
                self._max(zj, m, lo, B, A)

    def _max(self, z: int, w: int, lo: float, hi: float, A: float) -> None:
        d = int(self.var(1, 0, 1, integer=True)[0])
        self.row({z: 1.0, w: -1.0}, 0.0, np.inf)  # z >= w
        self.row({z: 1.0}, A, np.inf)  # z >= A
        self.row({z: 1.0, w: -1.0, d: -(A - lo)}, -np.inf, 0.0)  # z <= w + (A - lo) d
        self.row({z: 1.0, d: (hi - A)}, -np.inf, hi)  # z <= A + (hi - A)(1 - d)

    def _min(self, z: int, w: int, lo: float, hi: float, B: float) -> None:
        d = int(self.var(1, 0, 1, integer=True)[0])
        self.row({z: 1.0, w: -1.0}, -np.inf, 0.0)  # z <= w
        self.row({z: 1.0}, -np.inf, B)  # z <= B
        self.row({z: 1.0, w: -1.0, d: (hi - B)}, 0.0, np.inf)  # z >= w - (hi - B) d
        self.row({z: 1.0, d: -(B - lo)}, lo, np.inf)  # z >= B - (B - lo)(1 - d)

    def matrix(self) -> sp.csr_matrix:
        data, ri, ci = [], [], []
        for r, (coefs, _, _) in enumerate(self.rows):
            for k, v in coefs.items():
                ri.append(r)
                ci.append(k)
                data.append(v)
        return sp.csr_matrix((data, (ri, ci)), shape=(len(self.rows), len(self.lb)))


def encode(net: MergedNet, box: Box, analysis: Analysis) -> tuple[_Model, np.ndarray, np.ndarray]:
    """Build the MILP; returns (model, y_K variables, ŷ_K variables)."""
    if sum(n.size for n in net.nodes[1:]) > MAX_NEURONS:
        raise QassureError(f"the MILP engine handles up to {MAX_NEURONS} neurons; use split or differential")
    m = _Model()
    y_vars: list[np.ndarray] = []
    q_vars: list[np.ndarray] = []
    for t, node in enumerate(net.nodes):
        b = analysis.bounds[t]
        n = node.size
        if t == 0:
            x = m.var(n, box.low, box.high)
            y_vars.append(x)
            if net.input_interface == "int8":
                q_vars.append(x)
                continue
            s = node.scale
            k = m.var(n, np.floor((box.low - node.noise) / s) - 1, np.ceil((box.high + node.noise) / s) + 1, integer=True)
            for j in range(n):  # |s k - x| <= noise
                m.row({int(k[j]): s, int(x[j]): -1.0}, -node.noise[j], node.noise[j])
            sk = m.var(n, s * (np.floor((box.low - node.noise) / s) - 1), s * (np.ceil((box.high + node.noise) / s) + 1))
            for j in range(n):
                m.row({int(sk[j]): 1.0, int(k[j]): -s}, 0.0, 0.0)
            yq = m.var(n, node.q_lo, node.q_hi)
            m.clamp(yq, sk, b.ul, b.uh, node.q_lo, node.q_hi)
            q_vars.append(yq)
            continue
        ins_f = [y_vars[i] for i in node.inputs]
        ins_q = [q_vars[i] for i in node.inputs]
        p = m.var(n, b.pl, b.ph)
        m.affine_rows(p, node.A_f, ins_f, node.c_f)
        y = m.var(n, np.maximum(np.minimum(b.pl, node.f_hi), node.f_lo), np.minimum(np.maximum(b.ph, node.f_lo), node.f_hi))
        m.clamp(y, p, b.pl, b.ph, node.f_lo, node.f_hi)
        y_vars.append(y)
        if node.linear_only:
            v = m.var(n, b.ul, b.uh)
            m.affine_rows(v, node.A_q, ins_q, node.c_q)
            q_vars.append(v)
            continue
        s = node.scale
        u_lo, u_hi = b.ul, b.uh
        k = m.var(n, np.floor(u_lo / s) - 1, np.ceil(u_hi / s) + 1, integer=True)
        sk = m.var(n, s * (np.floor(u_lo / s) - 1), s * (np.ceil(u_hi / s) + 1))
        for j in range(n):
            m.row({int(sk[j]): 1.0, int(k[j]): -s}, 0.0, 0.0)
        # |s k - (A_q ŷ_in + c_q)| <= noise
        m.affine_rows(sk, node.A_q, ins_q, node.c_q, slack=node.noise)
        yq = m.var(n, np.maximum(np.minimum(u_lo, node.q_hi), node.q_lo), np.minimum(np.maximum(u_hi, node.q_lo), node.q_hi))
        m.clamp(yq, sk, u_lo, u_hi, node.q_lo, node.q_hi)
        q_vars.append(yq)
    return m, y_vars[net.output], q_vars[net.output]


def milp_bounds(net: MergedNet, box: Box, analysis: Analysis, time_limit: float = 60.0) -> MilpResult:
    """max and min of y_k - ŷ_k for every output k; sound bounds from the dual bound."""
    model, yk, qk = encode(net, box, analysis)
    A = model.matrix()
    lo = np.array([r[1] for r in model.rows])
    hi = np.array([r[2] for r in model.rows])
    bounds = Bounds(np.array(model.lb), np.array(model.ub))
    integrality = np.array(model.integer)
    n_out = net.n_outputs
    per_solve = time_limit / max(1, 2 * n_out)
    upper = np.zeros(n_out)
    incumbent = np.zeros(n_out)
    gap = np.zeros(n_out)
    status = []
    for k in range(n_out):
        worst = 0.0
        best_found = 0.0
        for sign in (1.0, -1.0):
            c = np.zeros(len(model.lb))
            # minimise -sign * (y_k - ŷ_k)  <=>  maximise sign * (y_k - ŷ_k)
            c[yk[k]] -= sign
            c[qk[k]] += sign
            res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality, bounds=bounds,
                       options={"time_limit": max(1.0, per_solve), "disp": False, "mip_rel_gap": 1e-4})
            dual = getattr(res, "mip_dual_bound", None)
            if dual is None or not np.isfinite(dual):
                if res.status == 2:  # infeasible: the box admits no input (cannot happen for a non-empty box)
                    dual = 0.0
                else:
                    dual = -np.inf
            ub = -float(dual)
            ub = ub + MILP_ABS_MARGIN + MILP_REL_MARGIN * abs(ub)
            worst = max(worst, ub)
            if res.x is not None:
                best_found = max(best_found, -float(res.fun))
            status.append(str(res.message))
        upper[k] = worst
        incumbent[k] = best_found
        gap[k] = (worst - best_found) / max(worst, 1e-300)
    return MilpResult(upper, incumbent, gap, status)
