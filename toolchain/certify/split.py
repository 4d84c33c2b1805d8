"""Input splitting: branch and bound over the region with the differential engine on each box,
and the exact MILP on small boxes that splitting alone does not tighten.

Each leaf is analysed by a pure function of (box, parent analysis, MILP seconds), mapped over a
`concurrent.futures` executor: a process pool here, any executor with `map` later (a cluster).
The merged network reaches the workers once, through the pool's initializer.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from toolchain.certify.region import Box
from toolchain.certify.symbolic import Analysis, differential_analysis
from toolchain.merge import MergedNet

_NET: MergedNet | None = None


def _init_worker(net: MergedNet) -> None:
    global _NET
    _NET = net


def analyse_leaf(job: tuple[Box, Analysis | None, float]) -> Analysis:
    """Pure subproblem: certified bounds of the merged network (set by the initializer) on a box;
    with milp_seconds > 0 the MILP engine then tightens them (its dual bound, never worse)."""
    box, parent, milp_seconds = job
    assert _NET is not None
    a = differential_analysis(_NET, box, parent)
    if milp_seconds <= 0:
        return a
    from toolchain.certify.milp import milp_bounds

    m = milp_bounds(_NET, box, a, time_limit=milp_seconds)
    hi, lo = np.minimum(a.err_high, m.upper), np.maximum(a.err_low, -m.upper)
    return Analysis(np.maximum(np.abs(lo), np.abs(hi)), lo, hi, a.bounds)


def choose_split(net: MergedNet, box: Box) -> tuple[int, float]:
    """Split the longest side (absolute; bound-sensitivity choices measured no better on ACAS
    Xu); when it spans few int8 input cells, cut on a cell edge so that the children's quantized
    inputs become exact."""
    dim = int(np.argmax(box.width))
    lo, hi = box.low[dim], box.high[dim]
    mid = (lo + hi) / 2
    s = net.input_scale
    edge = s * (np.floor(mid / s) + 0.5)
    cells = (hi - lo) / s
    if (net.input_interface == "int8" or cells < 8) and lo < edge < hi:
        return dim, float(edge)
    if net.input_interface == "int8":
        return dim, float(mid) if cells >= 1 else float(lo)  # one grid point: nothing to split
    return dim, float(mid)


@dataclass(frozen=True)
class SplitResult:
    upper: np.ndarray  # per output
    err_low: np.ndarray
    err_high: np.ndarray
    leaves: int
    worst_box: Box
    seconds: float
    float_ranges: list[tuple[np.ndarray, np.ndarray]]  # per node: union over leaves of [p_lo, p_hi]


def split_search(
    net: MergedNet, box: Box, *, time_limit: float, target: Callable[[np.ndarray], bool], workers: int = 1,
    executor: Executor | None = None, max_leaves: int = 200_000, progress: Callable[[str], None] | None = None,
    root: Analysis | None = None, probe: Callable[[np.ndarray], None] | None = None,
    milp_depth: int | None = None, milp_seconds: float = 3.0,
) -> SplitResult:
    """Refine the worst leaf until `target(upper)` holds, the time runs out, or leaves run out.

    `probe`, if given, is called with the centres of every new pair of boxes: the caller's
    falsifier looks for witnesses exactly where the bound is still high. With `milp_depth`, a
    worst box at least that many splits deep gets one MILP pass before it is split again."""
    t0 = time.monotonic()
    _init_worker(net)
    if root is None:
        root = differential_analysis(net, box)
    counter = itertools.count()
    # heap entries: (-bound, tie-break, box, analysis, depth, milp already run)
    heap: list = [(-float(root.upper.max()), next(counter), box, root, 0, False)]
    own_pool = None
    if executor is None and workers > 1:
        own_pool = executor = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(net,))
    try:
        last_report = t0
        while heap:
            upper = _combined(heap)
            if target(upper[0]) or time.monotonic() - t0 > time_limit or len(heap) >= max_leaves:
                break
            batch = [heapq.heappop(heap) for _ in range(min(len(heap), max(1, 2 * workers)))]
            jobs, meta = [], []
            for _, _, b, a, depth, milp_done in batch:
                if milp_depth is not None and depth >= milp_depth and not milp_done:
                    jobs.append((b, a, milp_seconds))
                    meta.append((depth, True))
                    continue
                dim, at = choose_split(net, b)
                if not b.low[dim] < at < b.high[dim]:  # cannot split further
                    heapq.heappush(heap, (-float(a.upper.max()), next(counter), b, a, depth, milp_done))
                    continue
                children = _split_at(b, dim, at)
                if net.input_interface == "int8":  # keep only int8-representable inputs
                    children = tuple(c.snap_to_grid(net.input_scale, net.input_zero_point) for c in children)
                jobs += [(c, a, 0.0) for c in children]
                meta += [(depth + 1, False)] * len(children)
            if not jobs:
                break
            results = list(executor.map(analyse_leaf, jobs)) if executor is not None else [analyse_leaf(j) for j in jobs]
            for (b, _, _), a, (depth, milp_done) in zip(jobs, results, meta):
                heapq.heappush(heap, (-float(a.upper.max()), next(counter), b, a, depth, milp_done))
            if probe is not None:
                probe(np.stack([b.center for b, _, _ in jobs]))
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                progress(f"split: {len(heap)} boxes, bound {upper[0].max():.6g}")
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    up, lo, hi = _combined(heap)
    worst = min(heap)[2]
    analyses = [entry[3] for entry in heap]
    ranges = [
        (np.min([a.bounds[t].pl for a in analyses], axis=0), np.max([a.bounds[t].ph for a in analyses], axis=0))
        for t in range(len(net.nodes))
    ]
    return SplitResult(up, lo, hi, len(heap), worst, time.monotonic() - t0, ranges)


def _split_at(box: Box, dim: int, at: float) -> tuple[Box, Box]:
    hi1 = box.high.copy()
    hi1[dim] = at
    lo2 = box.low.copy()
    lo2[dim] = at
    return Box(box.low, hi1), Box(lo2, box.high)


def _combined(heap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lows = np.min([entry[3].err_low for entry in heap], axis=0)
    highs = np.max([entry[3].err_high for entry in heap], axis=0)
    return np.maximum(np.abs(lows), np.abs(highs)), lows, highs
