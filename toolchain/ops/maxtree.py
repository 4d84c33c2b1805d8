"""Maxima of int8 values as merged-network nodes: a tree of max(a, b) = a + relu(b - a).

Shared by MAX_POOL_2D and REDUCE_MAX, whose kernels return one of their int8 inputs (no rounding).
Per level of the tree, one auxiliary node holds relu(b - a) of every pair of every window, and each
window's terms become a + r (linear in the input node and the auxiliary nodes so far); the op's own
node is the sum left at the top, then the op's clamp. Both sides compute the exact maximum: the float
side the real one, the int8 side that of its dequantized inputs (b - a is a multiple of the input
scale, at most 255 LSBs: no rounding term).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from toolchain.errors import QassureError
from toolchain.ops import common as C
from toolchain.ops.base import LowerContext, Lowered


def max_tree(ctx: LowerContext, windows: Sequence[np.ndarray], n_in: int, act_min: int,
             act_max: int) -> Lowered:
    """The op's node (and its auxiliary nodes) for output o = max over input elements windows[o] of the
    node ctx.inputs[0], clamped to [act_min, act_max]. A window shorter than the longest repeats its first
    element (max(a, a) = a)."""
    s, n = ctx.scale, ctx.size
    if not np.isclose(ctx.input_scales[0], s, rtol=0, atol=0):
        raise QassureError(f"{ctx.name}: a maximum with rescaling is not supported")
    counts = np.array([w.size for w in windows])
    m = int(counts.max())
    j = np.arange(m)[None, :]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = np.concatenate(list(windows))
    cols = flat[starts[:, None] + np.where(j < counts[:, None], j, 0)]
    # terms[node]: each window's m terms (row o * m + i) as a matrix on that node's values.
    picks = sp.csr_matrix((np.ones(n * m), (np.arange(n * m), cols.ravel())), shape=(n * m, n_in))
    terms = {ctx.inputs[0]: picks}
    aux: list[Lowered] = []
    while m > 1:
        half, nxt = m // 2, (m + 1) // 2
        first = (np.arange(n)[:, None] * m + 2 * np.arange(half)[None, :]).ravel()  # a of each pair
        size = first.size
        diff = tuple((T[first + 1] - T[first]).tocsr() for T in terms.values())
        for D in diff:
            D.eliminate_zeros()
        zeros = np.zeros(size)
        aux.append(Lowered(diff, zeros, zeros, np.full(size, np.inf), diff, zeros, zeros, zeros,
                           np.full(size, 255.0 * s), inputs=tuple(terms)))
        # next level: pair i -> a + r (row o * nxt + i); an odd last term is carried as it is
        to_pair = (np.arange(n)[:, None] * nxt + np.arange(half)[None, :]).ravel()
        rows, picked = [to_pair], [first]
        if m % 2:
            rows.append(np.arange(n) * nxt + half)
            picked.append(np.arange(n) * m + m - 1)
        r, c = np.concatenate(rows), np.concatenate(picked)
        select = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n * nxt, n * m))
        terms = {k: (select @ T).tocsr() for k, T in terms.items()}
        terms[ctx.next_node + len(aux) - 1] = sp.csr_matrix((np.ones(size), (to_pair, np.arange(size))),
                                                            shape=(n * nxt, size))
        m = nxt
    A = tuple(terms.values())
    q_lo, q_hi = C.clamp_range(act_min, act_max, s, ctx.zero_point, n)
    # No fused activation: the sum is the maximum itself on both sides (no clamp to relax).
    unclamped = bool(np.isinf(ctx.f_lo).all() and np.isinf(ctx.f_hi).all())
    exact = unclamped and act_min == -128 and act_max == 127
    return Lowered(A, np.zeros(n), ctx.f_lo, ctx.f_hi, A, np.zeros(n), np.zeros(n), q_lo, q_hi,
                   linear_only=exact, inputs=tuple(terms), aux=tuple(aux))
