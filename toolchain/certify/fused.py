"""The differential engine's inner loop, compiled (numba): one pass per objective row that replaces
Lf·y + Lq·ŷ at a node by P·p + U·u + const, with every relaxation line of the node at hand.

The numpy formulation of the same step (kept in symbolic.py's docstring) makes about thirty passes
over (rows x neurons) arrays; this makes one, reading each neuron's lines from a packed (boxes, 20,
neurons) array (`PACKED`). The arithmetic is the same as symbolic.py describes; only the order of
the additions in the constant differs (a few ulps, covered by toolchain.margins.with_margin).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Layout of the packed per-box, per-neuron relaxation record (axis 1 of a (B, 20, n) array).
PACKED = (
    "exact", "value",  # ŷ is the constant `value` where exact == 1
    "y_alpha_l", "y_beta_l", "y_alpha_u", "y_beta_u",  # y = f(p)
    "q_alpha_l", "q_beta_l", "q_alpha_u", "q_beta_u",  # ŷ = g(u)
    "a_lower_p", "a_lower_u", "a_lower_c", "a_upper_p", "a_upper_u", "a_upper_c",  # A = f(p) - f(u) in (p, u)
    "b_alpha_l", "b_beta_l", "b_alpha_u", "b_beta_u",  # B = f(u) - g(u)
)


@njit(cache=True, nogil=True)
def relax_rows(Lf, Lq, owner, prm, cf, cq, noise, P, U, const):  # pragma: no cover - compiled
    """For every row r (objective Lf[r]·y + Lq[r]·ŷ over box owner[r]): P[r], U[r] and const[r] += k
    such that the objective <= P[r]·p + U[r]·u + k + (the node's own c_f, c_q and rounding term,
    added here too: P·c_f + U·c_q + |U|·noise)."""
    R, n = Lf.shape
    for r in range(R):
        b = owner[r]
        k = 0.0
        for j in range(n):
            lf = Lf[r, j]
            lq = Lq[r, j]
            if prm[b, 0, j] != 0.0:  # ŷ known exactly: a number, nothing flows back
                k += lq * prm[b, 1, j]
                lq = 0.0
            if lf * lq < 0.0:
                # Opposite signs: a·y + bq·ŷ = (lf + lq)·y - lq·(y - ŷ), d = y - ŷ = A(δ) + B(u).
                a = lf + lq
                bq = 0.0
                c = -lq
            else:
                a = lf
                bq = lq
                c = 0.0
            if a >= 0.0:
                cp = a * prm[b, 4, j]
                k += a * prm[b, 5, j]
            else:
                cp = a * prm[b, 2, j]
                k += a * prm[b, 3, j]
            if bq >= 0.0:
                cu = bq * prm[b, 8, j]
                k += bq * prm[b, 9, j]
            else:
                cu = bq * prm[b, 6, j]
                k += bq * prm[b, 7, j]
            if c > 0.0:
                cp += c * prm[b, 13, j]
                cu += c * prm[b, 14, j] + c * prm[b, 18, j]
                k += c * prm[b, 15, j] + c * prm[b, 19, j]
            elif c < 0.0:
                cp += c * prm[b, 10, j]
                cu += c * prm[b, 11, j] + c * prm[b, 16, j]
                k += c * prm[b, 12, j] + c * prm[b, 17, j]
            k += cp * cf[j] + cu * cq[j] + abs(cu) * noise[j]
            P[r, j] = cp
            U[r, j] = cu
        const[r] += k


@njit(cache=True, nogil=True)
def concretize_rows(G, k, owner, center, radius, out):  # pragma: no cover - compiled
    """out[r] = k[r] + max over box owner[r] of G[r]·x = k + G·center + |G|·radius."""
    R, n = G.shape
    for r in range(R):
        b = owner[r]
        s = k[r]
        for j in range(n):
            g = G[r, j]
            s += g * center[b, j] + abs(g) * radius[b, j]
        out[r] = s


def relax(Lf: np.ndarray, Lq: np.ndarray, owner: np.ndarray, packed: np.ndarray, cf: np.ndarray,
          cq: np.ndarray, noise: np.ndarray, const: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, U) for objective rows (R, n) of boxes `owner`; const (R,) is raised in place."""
    P = np.empty(Lf.shape)
    U = np.empty(Lf.shape)
    relax_rows(np.ascontiguousarray(Lf, dtype=np.float64), np.ascontiguousarray(Lq, dtype=np.float64), owner,
               packed, cf, cq, noise, P, U, const)
    return P, U


def concretize(G: np.ndarray, k: np.ndarray, owner: np.ndarray, center: np.ndarray,
               radius: np.ndarray) -> np.ndarray:
    """k + max over each row's box of G x, (R,)."""
    out = np.empty(G.shape[0])
    concretize_rows(np.ascontiguousarray(G), np.ascontiguousarray(k), owner, center, radius, out)
    return out
