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


def _init_worker(net: MergedNet) -> None:
    global _NET
    _NET = net


def analyse_leaf(job: tuple) -> Analysis:
    """Pure subproblem: certified bounds of the merged network (set by the initializer) on a box;
    with milp_seconds > 0 the MILP engine then tightens them (its dual bound, never worse).

    job = (box, parent analysis, milp_seconds[, goal]): with a goal (an error level that is
    enough), the MILP relaxes the hidden rounding (sound, fast) and only tries to prove the sides
    still above the goal below it (see `milp_bounds`)."""
    box, parent, milp_seconds = job[:3]
    goal = job[3] if len(job) > 3 else None
    assert _NET is not None
    a = differential_analysis(_NET, box, parent) if goal is None or parent is None else parent
    if milp_seconds <= 0:
        return a
    from toolchain.certify.milp import milp_bounds

    if goal is None:
        m = milp_bounds(_NET, box, a, time_limit=milp_seconds)
    else:
        m = milp_bounds(_NET, box, a, time_limit=milp_seconds, exact_rounding="never", goal=goal)
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
    milp_depth: int | None = None, milp_seconds: float = 3.0, worst_milp: bool = True,
    stall: float = 0.9, goal_milp_seconds: float = 1.5, goal_milp_depth: int | None = None,
) -> SplitResult:
    """Refine the worst leaf until `target(upper)` holds, the time runs out, or leaves run out.

    `probe`, if given, is called with the centres of every new pair of boxes: the caller's
    falsifier looks for witnesses exactly where the bound is still high.

    MILP on leaves: with `worst_milp` (and a `milp_depth`, i.e. a network small enough), a worst
    leaf whose split stalled (its bound at least `stall` x its parent's) and that is at least
    `goal_milp_depth` splits deep (default: the number of inputs) gets one short MILP pass
    (`goal_milp_seconds`, relaxed hidden rounding) that only tries to prove its sides below the
    goal, the largest uniform bound `target` accepts. Without `worst_milp`, a worst box at least
    `milp_depth` splits deep gets one full MILP pass of `milp_seconds` before it is split again.

    Jobs run asynchronously (at most 2 x workers in flight); the bound checked against the target
    counts every box in flight at its parent's analysis, so it is always an enclosure."""
    t0 = time.monotonic()
    _init_worker(net)
    if root is None:
        root = differential_analysis(net, box)
    counter = itertools.count()
    if goal_milp_depth is None:
        goal_milp_depth = net.n_inputs
    use_goal = worst_milp and milp_depth is not None
    # heap entries: (-bound, tie-break, box, analysis, depth, milp already run, parent's bound)
    heap: list = [(-float(root.upper.max()), next(counter), box, root, 0, False, np.inf)]
    inflight: dict = {}  # future -> (job, meta, parent heap entry)
    own_pool = None
    if executor is None and workers > 1:
        own_pool = executor = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(net,))
    cap = max(2, 2 * workers)

    def all_entries():
        return heap + [e for (_, _, e) in inflight.values()]

    def push(job, a, meta):
        depth, milp_done, parent_bound = meta
        heapq.heappush(heap, (-float(a.upper.max()), next(counter), job[0], a, depth, milp_done, parent_bound))

    def plan(entry, goal):
        """Jobs for one popped leaf: a MILP pass, its two children, or nothing (unsplittable)."""
        _, _, b, a, depth, milp_done, parent_bound = entry
        bound = float(a.upper.max())
        if not milp_done and use_goal and goal is not None and depth >= goal_milp_depth \
                and bound > goal and bound >= stall * parent_bound:
            return [((b, a, goal_milp_seconds, goal), (depth, True, parent_bound))]
        if not milp_done and not worst_milp and milp_depth is not None and depth >= milp_depth:
            return [((b, a, milp_seconds), (depth, True, parent_bound))]
        dim, at = choose_split(net, b)
        if not b.low[dim] < at < b.high[dim]:  # cannot split further
            return None
        children = _split_at(b, dim, at)
        if net.input_interface == "int8":  # keep only int8-representable inputs
            children = tuple(c.snap_to_grid(net.input_scale, net.input_zero_point) for c in children)
        return [((c, a, 0.0), (depth + 1, False, bound)) for c in children]

    stuck: list = []  # leaves that cannot be split further (kept, never popped again)
    try:
        last_report = t0
        while heap or inflight:
            upper = _combined(all_entries() + stuck)
            if target(upper[0]) or time.monotonic() - t0 > time_limit or len(heap) + len(stuck) >= max_leaves:
                break
            goal = _goal(target, upper[0]) if use_goal else None
            new_jobs = []
            while heap and len(inflight) + len(new_jobs) < cap:
                entry = heapq.heappop(heap)
                if goal is not None and -entry[0] <= goal and new_jobs + list(inflight):
                    heapq.heappush(heap, entry)  # nothing above the goal left to refine now
                    break
                jobs = plan(entry, goal)
                if jobs is None:
                    stuck.append(entry)
                    continue
                if executor is None:
                    for job, meta in jobs:
                        push(job, analyse_leaf(job), meta)
                    new_jobs.append(jobs)
                    break
                for job, meta in jobs:
                    inflight[executor.submit(analyse_leaf, job)] = (job, meta, entry)
                new_jobs.append(jobs)
            if probe is not None and new_jobs:
                probe(np.stack([job[0].center for jobs in new_jobs for job, _ in jobs]))
            if executor is not None and inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for f in finished:
                    job, meta, _ = inflight.pop(f)
                    push(job, f.result(), meta)
            elif not new_jobs:
                break
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                progress(f"split: {len(heap)} boxes, bound {upper[0].max():.6g}")
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    # Boxes still in flight count at their parent's analysis (each parent once).
    seen, entries = set(), heap + stuck
    for (_, _, e) in inflight.values():
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


def _goal(target: Callable[[np.ndarray], bool], upper: np.ndarray) -> float | None:
    """The largest uniform error level c (up to the current bound) with target(c, ..., c): the
    level every leaf must reach. None when no level short of zero is accepted."""
    lo, hi = 0.0, float(upper.max())
    if not target(np.full(upper.shape, lo)):
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        if target(np.full(upper.shape, mid)):
            lo = mid
        else:
            hi = mid
    return lo if lo > 0 else None


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
