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
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from toolchain.certify.region import Box
from toolchain.certify.symbolic import Analysis, differential_analysis
from toolchain.merge import MergedNet

_NET: MergedNet | None = None
# Networks with at most this many inputs split the side whose halving helps most (every side
# tried); wider inputs split the longest side. Measured: ACAS Xu (5 inputs) 15x -> 5x the witness
# in 60 s; the 8-input pump classifier reached its budget in 34 s instead of 12 s with trials.
MAX_TRIAL_INPUTS = 5
# Cut on the input-cell edge nearest the middle when a side spans fewer cells than this (at any
# width: ACAS 4.7x instead of 5.1x, but the pump classifier took 21 s instead of 9 s).
CELL_EDGE_CELLS = 8.0


def _init_worker(net: MergedNet) -> None:
    global _NET
    _NET = net


def analyse_leaf(job: tuple) -> Analysis:
    """Pure subproblem: certified bounds of the merged network (set by the initializer) on a box;
    with milp_seconds > 0 the MILP engine then tightens them (its dual bound, never worse).

    job = (box, parent analysis, milp_seconds)."""
    box, parent, milp_seconds = job
    assert _NET is not None
    a = differential_analysis(_NET, box, parent)
    if milp_seconds <= 0:
        return a
    from toolchain.certify.milp import milp_bounds

    m = milp_bounds(_NET, box, a, time_limit=milp_seconds)
    hi, lo = np.minimum(a.err_high, m.upper), np.maximum(a.err_low, -m.upper)
    return Analysis(np.maximum(np.abs(lo), np.abs(hi)), lo, hi, a.bounds)


def split_leaf(job: tuple[Box, Analysis, int]) -> list[tuple[Box, Analysis]]:
    """Pure subproblem: split a box in two along the best of its `trials` widest sides (each cut
    as `choose_split` would cut it), the one whose worse child has the smallest bound (then the
    smaller sum). Returns the two children with their analyses ([] when no side can be cut)."""
    box, parent, trials = job
    assert _NET is not None
    best, best_key = [], None
    for dim in np.argsort(-box.width, kind="stable")[: max(1, trials)]:
        at = _cut(_NET, box, int(dim))
        if not box.low[dim] < at < box.high[dim]:
            continue
        children = _split_at(box, int(dim), at)
        if _NET.input_interface == "int8":  # keep only int8-representable inputs
            children = tuple(c.snap_to_grid(_NET.input_scale, _NET.input_zero_point) for c in children)
        an = [differential_analysis(_NET, c, parent) for c in children]
        u = sorted((float(a.upper.max()) for a in an), reverse=True)
        if best_key is None or u < best_key:
            best, best_key = list(zip(children, an)), u
    return best


def choose_split(net: MergedNet, box: Box) -> tuple[int, float]:
    """The longest side (absolute), cut as `_cut` cuts it (the rule for wide inputs; narrow ones
    try every side, see `split_leaf`)."""
    dim = int(np.argmax(box.width))
    return dim, _cut(net, box, dim)


def _cut(net: MergedNet, box: Box, dim: int) -> float:
    """Where to cut a side: on the input-cell edge nearest its middle when one lies inside (the
    children's quantized inputs then share fewer cells; exact once a side spans one cell; on
    ACAS Xu cutting on edges at every width measured slightly better than below 8 cells only),
    else the middle."""
    lo, hi = box.low[dim], box.high[dim]
    mid = (lo + hi) / 2
    s = net.input_scale
    edge = s * (np.floor(mid / s) + 0.5)
    cells = (hi - lo) / s
    if (net.input_interface == "int8" or cells < CELL_EDGE_CELLS) and lo < edge < hi:
        return float(edge)
    if net.input_interface == "int8":
        return float(mid) if cells >= 1 else float(lo)  # one grid point: nothing to split
    return float(mid)


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
    split_trials: int | None = None, milp_stall: float | None = 0.99,
) -> SplitResult:
    """Refine the worst leaf until `target(upper)` holds, the time runs out, or leaves run out.

    `probe`, if given, is called with the centres of every new pair of boxes: the caller's
    falsifier looks for witnesses exactly where the bound is still high.

    Splitting: with at most MAX_TRIAL_INPUTS inputs (or `split_trials` > 1), a leaf is cut along
    each of its `split_trials` widest sides and the cut whose worse child is lowest is kept (on ACAS
    Xu the useful side is often not the longest: cutting on input-cell edges of the right input
    removes most of the quantized side's slack). Otherwise the longest side is halved.

    MILP on leaves: with `milp_depth`, a worst box at least that many splits deep whose last split
    stalled (its bound at least `milp_stall` x its parent's; None: always) gets one MILP pass of
    `milp_seconds` before it is split again.

    Jobs run asynchronously (at most 2 x workers in flight); the bound checked against the target
    counts every box in flight at its parent's analysis, so it is always an enclosure."""
    t0 = time.monotonic()
    _init_worker(net)
    if root is None:
        root = differential_analysis(net, box)
    counter = itertools.count()
    if split_trials is None:
        split_trials = net.n_inputs if net.n_inputs <= MAX_TRIAL_INPUTS else 1
    # heap entries: (-bound, tie-break, box, analysis, depth, milp already run, parent's bound)
    heap: list = [(-float(root.upper.max()), next(counter), box, root, 0, False, np.inf)]
    inflight: dict = {}  # future -> (job, meta, parent heap entry)
    own_pool = None
    if executor is None and workers > 1:
        own_pool = executor = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(net,))
    cap = max(2, 2 * workers)

    def all_entries():
        return heap + [e for (_, _, _, e) in inflight.values()]

    def push(fn, job, result, meta):
        depth, milp_done, parent_bound = meta
        pairs = [(job[0], result)] if fn is analyse_leaf else result
        if fn is split_leaf and not pairs:  # cannot split further
            stuck.append((-float(job[1].upper.max()), next(counter), job[0], job[1], depth - 1, milp_done, parent_bound))
        for b, a in pairs:
            fresh.append(b.center)
            heapq.heappush(heap, (-float(a.upper.max()), next(counter), b, a, depth, milp_done, parent_bound))

    def plan(entry):
        """Jobs for one popped leaf: a MILP pass, its two children, or nothing (unsplittable)."""
        _, _, b, a, depth, milp_done, parent_bound = entry
        bound = float(a.upper.max())
        if not milp_done and milp_depth is not None and depth >= milp_depth \
                and (milp_stall is None or bound >= milp_stall * parent_bound):
            return [(analyse_leaf, (b, a, milp_seconds), (depth, True, parent_bound))]
        if split_trials > 1:
            return [(split_leaf, (b, a, split_trials), (depth + 1, False, bound))]
        dim, at = choose_split(net, b)
        if not b.low[dim] < at < b.high[dim]:  # cannot split further
            return None
        children = _split_at(b, dim, at)
        if net.input_interface == "int8":  # keep only int8-representable inputs
            children = tuple(c.snap_to_grid(net.input_scale, net.input_zero_point) for c in children)
        return [(analyse_leaf, (c, a, 0.0), (depth + 1, False, bound)) for c in children]

    fresh: list = []  # centres of new boxes, for the probe
    stuck: list = []  # leaves that cannot be split further (kept, never popped again)
    try:
        last_report = t0
        while heap or inflight:
            upper = _combined(all_entries() + stuck)
            if target(upper[0]) or time.monotonic() - t0 > time_limit or len(heap) + len(stuck) >= max_leaves:
                break
            new_jobs = []
            while heap and len(inflight) < cap:
                entry = heapq.heappop(heap)
                jobs = plan(entry)
                if jobs is None:
                    stuck.append(entry)
                    continue
                if executor is None:
                    for fn, job, meta in jobs:
                        push(fn, job, fn(job), meta)
                    new_jobs.append(jobs)
                    break
                for fn, job, meta in jobs:
                    inflight[executor.submit(fn, job)] = (fn, job, meta, entry)
                new_jobs.append(jobs)
            if executor is not None and inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for f in finished:
                    fn, job, meta, _ = inflight.pop(f)
                    push(fn, job, f.result(), meta)
            if probe is not None and fresh:
                probe(np.stack(fresh))
                fresh.clear()
            if not new_jobs and not inflight:  # every remaining box is unsplittable
                break
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                progress(f"split: {len(heap)} boxes, bound {upper[0].max():.6g}")
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    # Boxes still in flight count at their parent's analysis (each parent once).
    seen, entries = set(), heap + stuck
    for (_, _, _, e) in inflight.values():
        if id(e) not in seen:
            seen.add(id(e))
            entries.append(e)
    up, lo, hi = _combined(entries)
    worst = min(entries, key=lambda e: e[0])[2]
    analyses = [entry[3] for entry in entries]
    ranges = [
        (np.min([a.bounds[t].pl for a in analyses], axis=0), np.max([a.bounds[t].ph for a in analyses], axis=0))
        for t in range(len(net.nodes))
    ]
    return SplitResult(up, lo, hi, len(entries), worst, time.monotonic() - t0, ranges)


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
