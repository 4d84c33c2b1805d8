"""Input splitting: branch and bound over the region with the differential engine on each box,
input-cell enumeration on boxes with few cells, and the exact MILP on small boxes that splitting
alone does not tighten.

Each leaf is analysed by a pure function of its job (box, parent analysis, ...), mapped over a
`concurrent.futures` executor: a process pool here, any executor with `submit` later (a cluster).
The merged network and the prepared int8 graph reach the workers once, through the pool's
initializer.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from toolchain.certify import cells
from toolchain.certify.region import Box
from toolchain.certify.symbolic import Analysis, differential_analysis
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph

_NET: MergedNet | None = None
_PG: PreparedGraph | None = None
# Cut on the input-cell edge nearest the middle when a side spans fewer cells than this (at any
# width, ACAS Xu took longer to reach 1.5x the witness: bench/acas_leaf_bench.py).
CELL_EDGE_CELLS = 8.0
# A worst box meeting at most this many input cells is bounded by enumerating them (cells.py):
# about 0.3 s for 2^17 cells on ACAS Xu, where one differential analysis takes 0.02 s. On ACAS
# Xu's property-1 box 2^17 reached 1.5x the witness fastest (2^15: 58 s, 2^16: 53 s, 2^17: 42 s,
# 2^18: 45 s, 2^19: 53 s). Device outputs kept per box stay below ENUM_BYTES (int8 per output).
ENUM_CELLS = 2**17
ENUM_BYTES = 2**20
# Seconds between checks of the combined bound against the target.
CHECK_SECONDS = 0.1


def available_cpus() -> int:
    """CPUs this process may run on (the default number of split workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(net: MergedNet, pg: PreparedGraph | None = None) -> None:
    global _NET, _PG
    _NET, _PG = net, pg


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


def enumerate_leaf(job: tuple[Box, Analysis]) -> tuple[Analysis, np.ndarray, cells.CellOutputs]:
    """Pure subproblem: the box's analysis tightened by enumerating its input cells (the int8
    side exactly, cells.py); also the inputs where that bound is reached (witness candidates) and
    the device's outputs per cell (for the box's children)."""
    box, a = job
    assert _NET is not None and _PG is not None
    outputs = cells.device_outputs(_NET, _PG, box)
    return (*_with_cells(box, a, outputs), outputs)


def _with_cells(box: Box, a: Analysis, outputs: cells.CellOutputs) -> tuple[Analysis, np.ndarray]:
    assert _NET is not None
    cb = cells.cell_bounds(_NET, box, a.bounds, outputs)
    hi, lo = np.minimum(a.err_high, cb.err_high), np.maximum(a.err_low, cb.err_low)
    return Analysis(np.maximum(np.abs(lo), np.abs(hi)), lo, hi, a.bounds), cb.candidates


def split_leaf(job: tuple) -> tuple[list[tuple[Box, Analysis, cells.CellOutputs | None]], list[np.ndarray]]:
    """Pure subproblem: split a box in two along the best of `trials` sides, the one whose worse
    child has the smallest bound (then the smaller sum). Returns the children (box, analysis, cell
    outputs or None) ([] when no side can be cut) and witness candidates.

    job = (box, analysis, trials, cell outputs or None). Without cell outputs the widest sides
    are tried, each cut as `_cut` cuts it. With them (the box was bounded by its cells), the sides
    spanning the most cells are tried, each cut on its cell edge nearest the middle (the children
    share only the cell slivers along that edge; a box within one cell per input is halved on its
    widest side), and each child is bounded by its own cells (no executor run: the parent's
    outputs are sliced)."""
    box, parent, trials, outputs = job
    assert _NET is not None
    if outputs is not None:
        # Within one cell per input the int8 side is one number: halving the widest side then
        # still tightens the float side's affine bounds.
        widest = int(np.argmax(box.width))
        options = cell_cuts(_NET, box)[: max(1, trials)] or [(widest, float(box.center[widest]))]
    else:
        widest_first = np.argsort(-box.width, kind="stable")[: max(1, trials)]
        options = [(int(d), _cut(_NET, box, int(d))) for d in widest_first]
    best, best_key, best_candidates = [], None, []
    for dim, at in options:
        if not box.low[dim] < at < box.high[dim]:
            continue
        children = _split_at(box, dim, at)
        if _NET.input_interface == "int8":  # keep only int8-representable inputs
            children = tuple(c.snap_to_grid(_NET.input_scale, _NET.input_zero_point) for c in children)
        an = [differential_analysis(_NET, c, parent) for c in children]
        child_outputs: list = [None, None]
        candidates: list = []
        if outputs is not None:
            child_outputs = [outputs.sub(_NET, c) for c in children]
            for i, c in enumerate(children):
                an[i], cand = _with_cells(c, an[i], child_outputs[i])
                candidates.extend(cand)
        u = sorted((float(a.upper.max()) for a in an), reverse=True)
        if best_key is None or u < best_key:
            best, best_key, best_candidates = list(zip(children, an, child_outputs)), u, candidates
    return best, best_candidates


def cell_cuts(net: MergedNet, box: Box) -> list[tuple[int, float]]:
    """(input, edge) cuts for a box bounded by its cells, sides with the most whole cells first:
    each on its cell edge nearest the middle ([] when every side lies within one cell)."""
    s = net.input_scale
    margin = 4 * cells.CELL_TOL * s
    first = np.ceil((box.low + margin) / s - 0.5)  # interior edge indices j: edge = s (j + 1/2)
    last = np.floor((box.high - margin) / s - 0.5)
    inner = last - first + 1
    out = []
    for dim in np.argsort(-inner, kind="stable"):
        if inner[dim] < 1:
            break
        j = np.clip(np.round(box.center[dim] / s - 0.5), first[dim], last[dim])
        out.append((int(dim), float(s * (j + 0.5))))
    return out


def _cut(net: MergedNet, box: Box, dim: int) -> float:
    """Where to cut a side: on the input-cell edge nearest its middle when one lies inside (the
    children's quantized inputs then share fewer cells; exact once a side spans one cell) for
    sides under CELL_EDGE_CELLS cells and int8 interfaces, else the middle."""
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
    enumerated: int = 0  # boxes bounded by enumerating their input cells


@dataclass(frozen=True)
class _Leaf:
    box: Box
    analysis: Analysis
    depth: int
    parent_bound: float
    milp_done: bool = False
    cell_outputs: cells.CellOutputs | None = None  # set once the box is bounded by its cells

    @property
    def enumerated(self) -> bool:
        return self.cell_outputs is not None

    @property
    def bound(self) -> float:
        return float(self.analysis.upper.max())


def split_search(
    net: MergedNet, box: Box, *, time_limit: float, target: Callable[[np.ndarray], bool], workers: int = 1,
    executor: Executor | None = None, max_leaves: int = 200_000, progress: Callable[[str], None] | None = None,
    root: Analysis | None = None, probe: Callable[[np.ndarray], None] | None = None,
    milp_depth: int | None = None, milp_seconds: float = 3.0,
    split_trials: int = 1, milp_stall: float | None = 0.99,
    pg: PreparedGraph | None = None, enum_cells: float = ENUM_CELLS,
) -> SplitResult:
    """Refine the worst leaf until `target(upper)` holds, the time runs out, or leaves run out.

    `probe`, if given, is called with the centres of every new pair of boxes (and the inputs where
    cell bounds are reached): the caller's falsifier looks for witnesses where the bound is high.

    Enumeration: with the prepared int8 graph `pg`, a worst box meeting at most `enum_cells` input
    cells (and ENUM_BYTES / outputs) is bounded by enumerating them (the int8 side exactly, once: its children are cut on
    cell edges and bounded from the same device outputs).

    Splitting: the longest side is cut (`_cut`; boxes bounded by their cells: the side spanning the
    most cells, on a cell edge). With `split_trials` > 1, that many sides are tried and the cut
    whose worse child is lowest is kept; before cell enumeration this helped ACAS Xu (15x -> 5x the
    witness in 60 s), with it trials cost more than they gain (bench/acas_leaf_bench.py).

    MILP on leaves: with `milp_depth`, a worst box at least that many splits deep whose last split
    stalled (its bound at least `milp_stall` x its parent's; None: always) gets one MILP pass of
    `milp_seconds` before it is split again (not on boxes bounded by their cells).

    Jobs run asynchronously (at most 2 x workers in flight); the bound checked against the target
    counts every box in flight at its parent's analysis, so it is always an enclosure."""
    t0 = time.monotonic()
    _init_worker(net, pg)
    if root is None:
        root = differential_analysis(net, box)
    counter = itertools.count()
    heap: list = [(-float(root.upper.max()), next(counter), _Leaf(box, root, 0, np.inf))]
    inflight: dict = {}  # future -> (fn, job, leaf popped for it)
    own_pool = None
    if executor is None and workers > 1:
        own_pool = executor = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(net, pg))
    cap = max(2, 2 * workers)
    fresh: list = []  # centres of new boxes and cell-bound inputs, for the probe
    stuck: list = []  # leaves that cannot be split further (kept, never popped again)
    enumerated = 0

    def leaves_now() -> list[_Leaf]:
        return [e[2] for e in heap] + stuck + [leaf for (_, _, leaf) in inflight.values()]

    def add(leaf: _Leaf) -> None:
        heapq.heappush(heap, (-leaf.bound, next(counter), leaf))

    def push(fn, job, result, leaf: _Leaf) -> None:
        nonlocal enumerated
        if fn is enumerate_leaf:
            a, candidates, outputs = result
            enumerated += 1
            fresh.extend(candidates)
            add(_Leaf(leaf.box, a, leaf.depth, leaf.parent_bound, leaf.milp_done, outputs))
        elif fn is analyse_leaf:
            add(_Leaf(job[0], result, leaf.depth, leaf.parent_bound, True, leaf.cell_outputs))
        elif not result[0]:  # cannot split further
            stuck.append(leaf)
        else:
            children, candidates = result
            fresh.extend(candidates)
            for b, a, outputs in children:
                fresh.append(b.center)
                add(_Leaf(b, a, leaf.depth + 1, leaf.bound, False, outputs))

    def plan(leaf: _Leaf):
        """The job for one popped leaf: enumerate its cells, a MILP pass, or split it."""
        if pg is not None and not leaf.enumerated \
                and cells.cell_count(net, leaf.box) <= min(enum_cells, ENUM_BYTES / net.n_outputs):
            return enumerate_leaf, (leaf.box, leaf.analysis)
        if not leaf.milp_done and not leaf.enumerated and milp_depth is not None and leaf.depth >= milp_depth \
                and (milp_stall is None or leaf.bound >= milp_stall * leaf.parent_bound):
            return analyse_leaf, (leaf.box, leaf.analysis, milp_seconds)
        return split_leaf, (leaf.box, leaf.analysis, split_trials, leaf.cell_outputs)

    try:
        last_report = last_check = t0
        upper = _combined(leaves_now())
        while heap or inflight:
            # Combining every leaf costs O(leaves): with thousands of leaves, doing it after every
            # job kept the workers waiting on this loop half the time; a few times a second suffices.
            now = time.monotonic()
            if now - last_check >= CHECK_SECONDS or len(heap) + len(inflight) <= 2:
                upper, last_check = _combined(leaves_now()), now
                if target(upper[0]):
                    break
            if now - t0 > time_limit or len(heap) + len(stuck) >= max_leaves:
                break
            submitted = False
            while heap and len(inflight) < cap:
                leaf = heapq.heappop(heap)[2]
                fn, job = plan(leaf)
                submitted = True
                if executor is None:
                    push(fn, job, fn(job), leaf)
                    break
                inflight[executor.submit(fn, job)] = (fn, job, leaf)
            if executor is not None and inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for f in finished:
                    fn, job, leaf = inflight.pop(f)
                    push(fn, job, f.result(), leaf)
            if probe is not None and fresh:
                probe(np.stack(fresh))
                fresh.clear()
            if not submitted and not inflight:  # every remaining box is unsplittable
                break
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                by_cells = f" ({enumerated} bounded cell by cell)" if enumerated else ""
                progress(f"split: {len(heap)} boxes{by_cells}, bound {upper[0].max():.6g}")
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    # Boxes still in flight count at their popped leaf's analysis.
    entries = leaves_now()
    up, lo, hi = _combined(entries)
    worst = max(entries, key=lambda leaf: leaf.bound).box
    analyses = [leaf.analysis for leaf in entries]
    ranges = [
        (np.min([a.bounds[t].pl for a in analyses], axis=0), np.max([a.bounds[t].ph for a in analyses], axis=0))
        for t in range(len(net.nodes))
    ]
    return SplitResult(up, lo, hi, len(entries), worst, time.monotonic() - t0, ranges, enumerated)


def _split_at(box: Box, dim: int, at: float) -> tuple[Box, Box]:
    hi1 = box.high.copy()
    hi1[dim] = at
    lo2 = box.low.copy()
    lo2[dim] = at
    return Box(box.low, hi1), Box(lo2, box.high)


def _combined(leaves: list[_Leaf]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lows = np.min([leaf.analysis.err_low for leaf in leaves], axis=0)
    highs = np.max([leaf.analysis.err_high for leaf in leaves], axis=0)
    return np.maximum(np.abs(lows), np.abs(highs)), lows, highs
