"""Branch and bound over the region (input splitting), in deterministic rounds of batched work.

Each round takes the `round_boxes` worst open boxes (largest certified |error|; ties in the
order the boxes were made) and plans one step for each:
- *enumerate* a box that meets few input rounding cells: the int8 side exactly on every cell
  (cells.py), once per box; its children are then cut on cell edges and bounded from slices of
  the same device outputs;
- a *MILP* pass (exact encoding, node limit) on a small network's box that splitting stopped
  tightening;
- otherwise *split* it in two (the widest side, on an input-cell edge when it spans few cells),
  and bound both children with the differential engine, every child of the round in one batched
  pass (chunks of `chunk_boxes` boxes, fewer on big networks: `batch_neurons`), each child also
  kept within its parent's ranges and bound (past `leaf_ranges_bytes` of stored ranges, the
  least promising boxes keep the region's ranges instead: memory stays bounded on big networks).
Jobs are pure functions of (Problem, job) mapped by a Runner, results taken in job order, and
every stop rule counts work (boxes bounded), never time: the same search on one process, a
pool or a cluster gives the same bound. The wall clock only stops a search as a safety net
(then `stopped` says so).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from toolchain.certify import cells
from toolchain.certify.alpha import BoxSlopes
from toolchain.certify.parallel import Problem, Runner
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.result import (
    STOP_BUDGET,
    STOP_DECIDED,
    STOP_EXHAUSTED,
    STOP_STALLED,
    STOP_TIME,
    EngineResult,
    ErrorBound,
)
from toolchain.certify.symbolic import Analysis, NodeBounds, differential_analysis, node_lines, path_costs
from toolchain.errors import SoundnessViolation
from toolchain.margins import CELL_TOL
from toolchain.merge import MergedNet

# --- compact per-box ranges ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ranges:
    """Every node's ranges over one box, packed: (6, neurons) float64 (pl, ph, ul, uh, dl, dh of all
    nodes, node after node) and (neurons,) exact flags, and the box's optimised slopes (alpha.py), if
    any. What a box hands down to its children."""

    values: np.ndarray
    exact: np.ndarray
    slopes: BoxSlopes | None = None

    @property
    def nbytes(self) -> int:
        held = sum(ns.nbytes for ns in self.slopes.values()) if self.slopes else 0
        return self.values.nbytes + self.exact.nbytes + held

    def constrained(self, net: MergedNet, branch: np.ndarray, below: bool) -> Ranges:
        """These ranges with one neuron's pre-activation constrained to one side of a split point:
        branch = (node, neuron, side, at, score) (side 0: the float p, 1: the int8 u), `below`: the
        value <= at, else >= at. The two constraints of a split share `at`, so together they leave
        out no value (and on the int8 side `at` lies between grid points, so each grid value lies
        on exactly one side). The child's analysis meets its ranges with these: the neuron's
        relaxation lines are rebuilt from the tightened range (an analysis never takes lines from
        its parent, only ranges)."""
        t, j, side, at = int(branch[0]), int(branch[1]), int(branch[2]), float(branch[3])
        col = sum(n.size for n in net.nodes[:t]) + j
        row = 2 * side + (1 if below else 0)  # ph / uh is lowered, or pl / ul raised
        values = self.values.copy()
        values[row, col] = min(values[row, col], at) if below else max(values[row, col], at)
        return Ranges(values, self.exact, self.slopes)

    @staticmethod
    def of(analysis: Analysis, i: int) -> Ranges:
        values = np.concatenate([np.stack([nb.pl[i], nb.ph[i], nb.ul[i], nb.uh[i], nb.dl[i], nb.dh[i]])
                                 for nb in analysis.nodes], axis=1)
        slopes = None if analysis.slopes is None else analysis.slopes[i]
        return Ranges(values, np.concatenate([nb.exact[i] for nb in analysis.nodes]), slopes)


def _parents(net: MergedNet, ranges: list[Ranges], bounds: list[ErrorBound]) -> Analysis:
    """A batch 'analysis' holding the given boxes' ranges and bounds (for children's tightening)."""
    values = np.stack([r.values for r in ranges])  # (B, 6, N)
    exact = np.stack([r.exact for r in ranges])
    nodes, at = [], 0
    for node in net.nodes:
        v = values[:, :, at:at + node.size]
        pl, ph, ul, uh, dl, dh = (v[:, i] for i in range(6))
        nodes.append(NodeBounds(pl, ph, ul, uh, dl, dh, exact[:, at:at + node.size]))
        at += node.size
    bound = ErrorBound(np.stack([b.low for b in bounds]), np.stack([b.high for b in bounds]))
    empty = BoxBatch(np.zeros((len(ranges), 1)), np.zeros((len(ranges), 1)))
    return Analysis(empty, bound, tuple(nodes), tuple(None for _ in nodes),
                    slopes=tuple(r.slopes for r in ranges))


# --- jobs (pure functions of the problem and a job) ----------------------------------------------


@dataclass(frozen=True)
class BoundJob:
    """Boxes to bound together, each with its parent's ranges and bound, and (for children of a
    box bounded by its cells) the device's outputs on its cells."""

    boxes: tuple[Box, ...]
    parent_ranges: tuple[Ranges, ...]
    parent_bounds: tuple[ErrorBound, ...]
    cells: tuple[cells.CellOutputs | None, ...]
    starts: tuple[int, ...] | None = None  # per box: first node with symbolic ranges of its own
    optimised: bool = False  # optimised float slopes (settings.slopes)


@dataclass(frozen=True)
class Bounded:
    bound: ErrorBound
    ranges: Ranges
    candidates: np.ndarray | None  # where a cell bound is reached (witness candidates)
    scores: np.ndarray | None = None  # each input's share of the box's worst bound (where to split)
    branch: np.ndarray | None = None  # the neuron to branch on (symbolic.branch_records), if any
    infeasible: bool = False  # the box's domain is provably empty (a contradicted neuron constraint)


def bound_boxes(problem: Problem, job: BoundJob) -> tuple[list[Bounded], float]:
    """The differential engine on every box of the job at once; boxes with cell outputs are also
    bounded cell by cell. Also returns the work done (multiply-adds, estimated)."""
    net = problem.net
    parents = _parents(net, list(job.parent_ranges), list(job.parent_bounds))
    starts = None if job.starts is None else np.array(job.starts)
    alpha_work = problem.settings.alpha_work_box if job.optimised else 0.0
    # Where every box's device outputs are known cell by cell, the int8 side needs no relaxation: the cell
    # bounds take the float side's affine bounds and the exact outputs (the differential rows of u and
    # delta, 4 of every 6, would be spent on a bound the cells beat; measured on ACAS Xu's worst boxes:
    # 2.6x fewer seconds with fixed slopes, the same bounds within 1%).
    sides = "float" if all(c is not None for c in job.cells) else "both"
    a = differential_analysis(net, BoxBatch.of(list(job.boxes)), parents, problem.settings, start=starts,
                              alpha_work=alpha_work, sides=sides)
    out = []
    work = a.work
    for i, (box, outputs) in enumerate(zip(job.boxes, job.cells, strict=True)):
        bound, candidates = a.bound.item(i), None
        if outputs is not None:
            by_cells, candidates = cells.cell_bounds(net, box, a.take([i]), outputs)
            bound = bound.meet(by_cells)
            work += float(outputs.q.size) * net.n_inputs
        infeasible = a.infeasible is not None and bool(a.infeasible[i])
        out.append(Bounded(bound, Ranges.of(a, i), candidates, _scores(a, i), _branch(a, i), infeasible))
    return out, work


def _scores(a: Analysis, i: int) -> np.ndarray | None:
    return None if a.split_scores is None else a.split_scores[i]


def _branch(a: Analysis, i: int) -> np.ndarray | None:
    """Box i's neuron to branch on, or None (no analysis record, or no crossed kink with a cost)."""
    if a.branch is None or a.branch[i, 0] < 1 or not a.branch[i, 4] > 0:
        return None
    return a.branch[i]


@dataclass(frozen=True)
class LeafJob:
    box: Box
    ranges: Ranges
    bound: ErrorBound
    witness: np.ndarray | None = None  # MILP starting points
    optimised: bool = False  # optimised float slopes (settings.slopes)
    seconds: float | None = None  # MILP: what is left of the search's safety-net time limit
    own_ranges: bool = False  # `ranges` came from an analysis of this very box (not shed to the region's)


def _stored_analysis(net: MergedNet, box: Box, ranges: Ranges, bound: ErrorBound) -> Analysis:
    """What a box's stored ranges stand for: those ranges, the relaxation lines built on them (as
    differential_analysis builds them), and its bound. Sound for any box inside the one the ranges
    were computed for."""
    stored = _parents(net, [ranges], [bound])
    lines = tuple(None if node.linear_only else node_lines(node, nb)
                  for node, nb in zip(net.nodes, stored.nodes, strict=True))
    return Analysis(BoxBatch.of([box]), stored.bound, stored.nodes, lines, slopes=stored.slopes)


def enumerate_box(problem: Problem, job: LeafJob) -> tuple[Bounded, cells.CellOutputs, float]:
    """The box bounded by the device's exact output on each of its input cells (and the work done:
    an executor pass per cell). The float side's affine bounds over the box come from the box's own
    stored ranges when it has them (the analysis that bounded it; another pass over the same box
    from them gained nothing measurable and took a quarter of the job), else from a new analysis."""
    net, settings = problem.net, problem.settings
    if job.own_ranges:
        a = _stored_analysis(net, job.box, job.ranges, job.bound)
        work = 2.0 * net.nodes[net.output].size * float(path_costs(net)[net.output])
    else:
        a = differential_analysis(net, BoxBatch.of([job.box]), _parents(net, [job.ranges], [job.bound]),
                                  settings, alpha_work=settings.alpha_work_box if job.optimised else 0.0)
        work = a.work
    outputs = cells.device_outputs(net, problem.pg, job.box, settings.cell_chunk)
    by_cells, candidates = cells.cell_bounds(net, job.box, a, outputs)
    n_cells = outputs.q.size // max(1, net.n_outputs)
    work += n_cells * float(path_costs(net)[-1]) / 2  # the executor on every cell (int8 side)
    bound = a.bound.item(0).meet(by_cells)
    bounded = Bounded(bound, Ranges.of(a, 0), candidates, _scores(a, 0), _branch(a, 0))
    return bounded, outputs, work


def milp_box(problem: Problem, job: LeafJob) -> tuple[Bounded, dict[str, float]]:
    """The box bounded by the exact MILP (settings.milp_leaf_nodes nodes per solve)."""
    from toolchain.certify.milp import milp_bounds

    net, settings = problem.net, problem.settings
    a = differential_analysis(net, BoxBatch.of([job.box]), _parents(net, [job.ranges], [job.bound]), settings,
                              full=True, alpha_work=settings.alpha_work_box if job.optimised else 0.0)
    m = milp_bounds(net, job.box, a, settings, node_limit=settings.milp_leaf_nodes, witness=job.witness,
                    seconds=job.seconds)
    work = dict(m.work, multiply_adds=a.work, milp_timed_out=float(m.stopped == STOP_TIME))
    return Bounded(a.bound.item(0).meet(m.bound), Ranges.of(a, 0), None, _scores(a, 0), _branch(a, 0)), work


def run_job(problem: Problem, job: tuple) -> object:
    """(kind, job) -> kind(problem, job): one map call carries every kind of job of a round."""
    kind, payload = job
    return kind(problem, payload)


# --- the search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    box: Box
    bound: ErrorBound
    ranges: Ranges
    depth: int  # input splits from the region to this box
    parent_key: float
    cells: cells.CellOutputs | None = None  # set once the box is bounded by its cells
    milp_done: bool = False
    scores: np.ndarray | None = None  # each input's share of the worst bound (split the largest first)
    branch: np.ndarray | None = None  # the neuron to branch on (settings.branching), if any

    @property
    def key(self) -> float:
        return float(self.bound.upper.max())


def cell_cuts(net: MergedNet, box: Box) -> list[tuple[int, float]]:
    """(input, edge) cuts for a box bounded by its cells, sides with the most whole cells first:
    each on its cell edge nearest the middle ([] when every side lies within one cell)."""
    s = net.input_scale
    margin = 4 * CELL_TOL * s
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


def cut_at(net: MergedNet, box: Box, dim: int, cell_edge_cells: float) -> float:
    """Where to cut a side: on the input-cell edge nearest its middle when one lies inside and the
    side spans fewer than `cell_edge_cells` cells (or the interface is int8: children then share
    no grid point), else the middle."""
    lo, hi = box.low[dim], box.high[dim]
    mid = (lo + hi) / 2
    s = net.input_scale
    edge = s * (np.floor(mid / s) + 0.5)
    n_cells = (hi - lo) / s
    if (net.input_interface == "int8" or n_cells < cell_edge_cells) and lo < edge < hi:
        return float(edge)
    if net.input_interface == "int8":
        return float(mid) if n_cells >= 1 else float(lo)  # one grid point: nothing to split
    return float(mid)


def _options(net: MergedNet, leaf: Leaf, trials: int, cell_edge_cells: float,
             split_order: str = "width") -> list[tuple[Box, ...]]:
    """The candidate splits of a leaf (each a pair of children), best first: the widest sides first,
    or (split_order "influence") the inputs with the largest share of the box's worst bound
    (|G| x half-width of the row that bound comes from: the part splitting can take off)."""
    box = leaf.box
    if leaf.cells is not None:
        # Within one cell per input the int8 side is one number: halving the widest side then
        # still tightens the float side's affine bounds.
        widest = int(np.argmax(box.width))
        cuts = cell_cuts(net, box)[: max(1, trials)] or [(widest, float(box.center[widest]))]
    else:
        key = leaf.scores if split_order == "influence" and leaf.scores is not None else box.width
        order = np.argsort(-key, kind="stable")[: max(1, trials)]
        cuts = [(int(d), cut_at(net, box, int(d), cell_edge_cells)) for d in order]
    out = []
    for dim, at in cuts:
        if not box.low[dim] < at < box.high[dim]:
            continue
        children: tuple[Box, ...] = box.cut(dim, at)
        if net.input_interface == "int8":  # keep only int8-representable inputs
            children = tuple(c.snap_to_grid(net.input_scale, net.input_zero_point) for c in children)
        out.append(children)
    return out


def _kinds(branching: str, leaf: Leaf, explore: bool, prefer: str, stall: float) -> list[str]:
    """How a leaf is split this round: on an input (every leaf can be), on a neuron (a leaf not
    bounded cell by cell whose analysis named a crossed kink with a cost), or (auto, in an
    exploration round) both, keeping the better; otherwise auto takes the kind that took more off
    per box bounded the last time both were tried, except on a leaf whose last split left its bound
    where it was (>= stall x its parent's): that one is split on an input (chains of neuron splits
    that fix one kink after another without moving a box's worst output would otherwise hold the
    search on one box)."""
    neuron = leaf.branch is not None and leaf.cells is None
    if branching == "auto" and not explore and prefer == "neuron" and leaf.key >= stall * leaf.parent_key:
        return ["input"]
    if branching == "neuron" or (branching == "auto" and not explore and prefer == "neuron"):
        return ["neuron"] if neuron else ["input"]
    if branching == "auto" and explore and neuron:
        return ["input", "neuron"]
    return ["input"]


class _Store:
    """The open leaves' error bounds as arrays (slot per leaf), for the combined bound each round."""

    def __init__(self, n_out: int) -> None:
        self.low = np.zeros((64, n_out))
        self.high = np.zeros((64, n_out))
        self.alive = np.zeros(64, dtype=bool)
        self.free: list[int] = []
        self.used = 0

    def add(self, bound: ErrorBound) -> int:
        if self.free:
            slot = self.free.pop()
        else:
            if self.used == len(self.alive):
                grow = len(self.alive)
                self.low = np.vstack([self.low, np.zeros_like(self.low[:grow])])
                self.high = np.vstack([self.high, np.zeros_like(self.high[:grow])])
                self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
            slot, self.used = self.used, self.used + 1
        self.low[slot], self.high[slot], self.alive[slot] = bound.low, bound.high, True
        return slot

    def remove(self, slot: int) -> None:
        self.alive[slot] = False
        self.free.append(slot)

    def combined(self) -> ErrorBound:
        if not self.alive.any():
            raise SoundnessViolation("branch and bound proved every part of the region empty: the region is "
                                     "not, so a range of the differential engine is wrong")
        return ErrorBound(self.low[self.alive].min(axis=0), self.high[self.alive].max(axis=0))


def branch_and_bound(
    problem: Problem, root: Analysis, runner: Runner, *, decided: Callable[[ErrorBound], bool],
    probe: Callable[[np.ndarray], None] | None = None, progress: Callable[[str], None] | None = None,
    deadline: float = float("inf"), enumerate_cells: bool = True, stop_when_stalled: bool = False,
) -> EngineResult:
    """Refine the region of `root` (an analysis of one box) until `decided(combined bound)`, the
    work budget is spent (settings.max_boxes boxes bounded, or settings.max_work multiply-adds), or
    no box can be split further; with `stop_when_stalled`, also once the last three quarters of the
    work spent so far tightened the bound by less than 1% (checked after 1/16 of max_work:
    splitting does not pay on this region, e.g. with many inputs).

    `probe`, if given, is called after each round with the centres of the new boxes and the inputs
    where cell bounds are reached: the caller's falsifier looks for witnesses where the bound is high."""
    net, settings = problem.net, problem.settings
    counter = itertools.count()
    store = _Store(net.n_outputs)
    heap: list = []
    stuck: list[Leaf] = []
    slots: dict[int, int] = {}  # id(leaf) -> slot
    work = {"boxes": 1, "rounds": 0, "enumerated": 0, "milp_solves": 0, "milp_nodes": 0,
            "multiply_adds": root.work, "input_splits": 0, "neuron_splits": 0, "infeasible": 0,
            "optimised_boxes": 0}
    prefer = "input"  # branching auto: the kind that took more off per box when both were last tried
    optimise = settings.slopes == "optimised"  # slopes auto: whether optimised slopes took more off per work
    slope_gains = [0.0] * 5  # slopes auto: _measure_slopes since the last decision
    history: list[tuple[float, float]] = []  # (work spent, combined bound) after each round
    milp_late = False  # a leaf MILP stopped by its safety-net time limit (the answer is then the clock's)
    small = sum(n.size for n in net.nodes[1:]) <= settings.milp_max_neurons
    milp_depth = settings.milp_depth_per_input * net.n_inputs

    root_leaf = Leaf(root.boxes[0], root.bound.item(0), Ranges.of(root, 0), 0, np.inf,
                     scores=_scores(root, 0), branch=_branch(root, 0))
    region_ranges = root_leaf.ranges
    held = 0  # bytes of the open boxes' own ranges (kept within leaf_ranges_bytes by _shed_ranges)

    def own(leaf: Leaf) -> bool:  # holds ranges of its own (not shed to the region's)
        return leaf.ranges is not region_ranges

    def own_bytes(leaf: Leaf) -> int:
        return leaf.ranges.nbytes if own(leaf) else 0

    def add(leaf: Leaf) -> None:
        nonlocal held
        slots[id(leaf)] = store.add(leaf.bound)
        heapq.heappush(heap, (-leaf.key, next(counter), leaf))
        held += own_bytes(leaf)

    def drop(leaf: Leaf) -> None:
        store.remove(slots.pop(id(leaf)))

    add(root_leaf)
    cap = min(settings.enum_cells, settings.enum_bytes / max(1, net.n_outputs))
    # Memory of a batched pass grows with boxes x neurons: big networks get fewer boxes per job (a function
    # of the network and the settings; a batch's shape changes at most the last bits of its float sums).
    chunk = max(1, min(settings.chunk_boxes, settings.batch_neurons // sum(n.size for n in net.nodes)))
    last_report = time.monotonic()
    stopped = STOP_EXHAUSTED
    while heap:
        combined = store.combined()
        if decided(combined):
            stopped = STOP_DECIDED
            break
        if work["boxes"] >= settings.max_boxes or work["multiply_adds"] >= settings.max_work:
            stopped = STOP_BUDGET
            break
        history.append((work["multiply_adds"], float(combined.upper.max())))
        if stop_when_stalled and _stalled(history, settings.max_work / 16):
            stopped = STOP_STALLED
            break
        if time.monotonic() > deadline:
            stopped = STOP_TIME
            break
        popped = [heapq.heappop(heap)[2] for _ in range(min(settings.round_boxes, len(heap)))]
        held -= sum(own_bytes(leaf) for leaf in popped)
        to_enumerate, to_milp, to_split = [], [], []
        for leaf in popped:
            if enumerate_cells and problem.pg is not None and leaf.cells is None \
                    and cells.cell_count(net, leaf.box) <= cap:
                to_enumerate.append(leaf)
            elif small and not leaf.milp_done and leaf.cells is None and leaf.depth >= milp_depth \
                    and leaf.key >= settings.milp_stall * leaf.parent_key:
                to_milp.append(leaf)
            else:
                to_split.append(leaf)
        fresh: list[np.ndarray] = []
        # Splits: every candidate child of the round, bounded in fixed-size chunks. A child is a box
        # with its parent's ranges (input split), or the parent's box with its ranges constrained on
        # one side of a neuron's kink (neuron split: both sides together cover the parent).
        explore = settings.branching == "auto" and (work["rounds"] < 2
                                                    or work["rounds"] % settings.branching_explore == 0)
        children: list[tuple] = []  # (leaf, option, kind, box, cells, ranges, first symbolic node, optimised)
        trial = max(1, settings.round_boxes // 8)  # leaves both kinds are tried on in an exploration round
        # slopes auto: in the same rounds, a few leaves' input splits are bounded both ways.
        explore_slopes = settings.slopes == "auto" and (work["rounds"] < 2
                                                         or work["rounds"] % settings.branching_explore == 0)
        for li, leaf in enumerate(to_split):
            oi = 0
            for kind in _kinds(settings.branching, leaf, explore and li < trial, prefer, settings.milp_stall):
                if kind == "neuron":
                    assert leaf.branch is not None
                    for below in (True, False):
                        ranges = leaf.ranges.constrained(net, leaf.branch, below)
                        first = int(leaf.branch[0]) + 1
                        children.append((li, oi, kind, leaf.box, None, ranges, first, optimise))
                    oi += 1
                    continue
                flags = (False, True) if explore_slopes and li < trial else (optimise,)
                for pair in _options(net, leaf, settings.split_trials, settings.cell_edge_cells,
                                     settings.split_order):
                    for flag in flags:
                        for child in pair:
                            sub = leaf.cells.sub(net, child) if leaf.cells is not None else None
                            children.append((li, oi, kind, child, sub, leaf.ranges, 0, flag))
                        oi += 1
        # Jobs of one kind of slopes each (a job is one batched pass), in fixed-size chunks.
        # Boxes bounded cell by cell get jobs of their own: such a job bounds the float side only.
        jobs, job_children = [], []
        for flag, cellwise in itertools.product((False, True), (False, True)):
            mine = [c for c in range(len(children))
                    if children[c][7] == flag and (children[c][4] is not None) == cellwise]
            for at in range(0, len(mine), chunk):
                part = [children[c] for c in mine[at:at + chunk]]
                starts = tuple(c[6] for c in part)
                jobs.append(BoundJob(tuple(c[3] for c in part), tuple(c[5] for c in part),
                                     tuple(to_split[c[0]].bound for c in part), tuple(c[4] for c in part),
                                     starts if any(starts) else None, flag))
                job_children.append(mine[at:at + chunk])
        # A leaf MILP's safety net is what is left of the search's own (none: settings.time_limit).
        left = max(1.0, deadline - time.monotonic()) if deadline < float("inf") else None
        leaf_jobs = [LeafJob(leaf.box, leaf.ranges, leaf.bound, optimised=optimise, seconds=left,
                             own_ranges=own(leaf) or leaf.box is root_leaf.box)
                     for leaf in to_enumerate + to_milp]
        # One map for the whole round (no barrier between kinds of job: the pool balances them).
        kinds = [bound_boxes] * len(jobs) + [enumerate_box] * len(to_enumerate) + [milp_box] * len(to_milp)
        done = runner.map(run_job, list(zip(kinds, [*jobs, *leaf_jobs], strict=True)))
        results = done[:len(jobs)]
        enum_results = done[len(jobs):len(jobs) + len(to_enumerate)]
        milp_results = done[len(jobs) + len(to_enumerate):]
        bounded: list = [None] * len(children)
        child_work = [0.0] * len(children)  # a job's work shared among its boxes (slopes auto's measure)
        for idx, (part, w) in zip(job_children, results, strict=True):
            for c, b in zip(idx, part, strict=True):
                bounded[c], child_work[c] = b, w / len(part)
        work["boxes"] += len(bounded) + len(enum_results) + len(milp_results)
        work["optimised_boxes"] += sum(1 for c in children if c[7]) + optimise * len(leaf_jobs)
        work["multiply_adds"] += sum(w for _, w in results) + sum(w for _, _, w in enum_results) \
            + sum(w.get("multiply_adds", 0.0) for _, w in milp_results)
        work["rounds"] += 1
        # Each split leaf keeps the option whose worse child is lowest (then the smaller sum). A child
        # whose domain is provably empty is dropped: it holds no input. When every child of an option
        # is, so is the leaf they cover (a neuron-branched leaf whose constraint the smaller boxes
        # contradict): it is dropped too.
        by_leaf: dict[int, dict[int, list]] = {}
        for c, ((li, oi, kind, child, sub, _, _, flag), b) in enumerate(zip(children, bounded, strict=True)):
            by_leaf.setdefault(li, {}).setdefault(oi, []).append((kind, child, sub, b, flag, child_work[c]))
        # Per kind: bound taken off the leaf (its worst output: the worse child's), then per child (the
        # worst output, then the sum over outputs; a child that holds no input takes off all of it), and
        # boxes bounded. The per-child measures decide where no split moved the leaf's worst output (many
        # outputs): a neuron split often leaves one child where it was and tightens the other a lot.
        gains = {"input": [0.0, 0.0, 0.0, 0], "neuron": [0.0, 0.0, 0.0, 0]}
        for li, leaf in enumerate(to_split):
            drop(leaf)
            valid = []
            options = by_leaf.get(li, {})
            both = len({kids[0][0] for kids in options.values()}) == 2
            _measure_slopes(leaf, options.values(), slope_gains)
            if any(all(k[3].infeasible for k in kids) for kids in options.values()):
                work["infeasible"] += 1
                continue
            for kids in options.values():
                alive = [k for k in kids if not k[3].infeasible]
                if alive:
                    valid.append((kids, alive))
                # measured on leaves that tried both kinds only (input splits: the slopes in use)
                if alive and both and (kids[0][0] == "neuron" or kids[0][4] == optimise):
                    gain = gains[kids[0][0]]
                    gain[0] += max(0.0, leaf.key - max(float(k[3].bound.upper.max()) for k in alive))
                    for k in kids:
                        up = 0.0 * leaf.bound.upper if k[3].infeasible else k[3].bound.upper
                        gain[1] += max(0.0, leaf.key - float(up.max()))
                        gain[2] += max(0.0, float(leaf.bound.upper.sum() - up.sum()))
                    gain[3] += len(kids)
            if not valid:
                stuck.append(leaf)  # cannot be split further: its bound stays as it is
                slots[id(leaf)] = store.add(leaf.bound)
                continue
            # (Exact ties, e.g. both kinds leaving a leaf's worst output where it was: the smaller sum
            # of the children's bounds over every output.)
            kids, alive = min(valid, key=lambda v: (sorted((float(k[3].bound.upper.max()) for k in v[1]),
                                                           reverse=True),
                                                    sum(float(k[3].bound.upper.sum()) for k in v[1])))
            work[f"{kids[0][0]}_splits"] += 1
            work["infeasible"] += len(kids) - len(alive)
            for kind, child, sub, b, _, _ in alive:
                # depth counts input splits (the MILP pass comes after milp_depth_per_input per input).
                depth = leaf.depth + (kind == "input")
                add(Leaf(child, b.bound, b.ranges, depth, leaf.key, sub, scores=b.scores, branch=b.branch))
                if kind == "input":
                    fresh.append(child.center[None])
                if b.candidates is not None:
                    fresh.append(b.candidates)
        if explore_slopes and slope_gains[2] > 0 and slope_gains[3] > 0:
            optimise = _optimise_pays(slope_gains)
            slope_gains = [0.0] * 5
        if explore and gains["neuron"][3] and gains["input"][3]:
            # Which kind took more off the bound per box bounded, on the same boxes this round (the
            # worst output first; where neither moved it, e.g. with many outputs, the sum).
            rate = {k: (g[0] / g[3], g[1] / g[3], g[2] / g[3]) for k, g in gains.items()}
            prefer = "neuron" if rate["neuron"] > rate["input"] else "input"
        for leaf, (b, outputs, _) in zip(to_enumerate, enum_results, strict=True):
            drop(leaf)
            work["enumerated"] += 1
            kept = b.scores is None  # bounded from its stored ranges: the box's choice of split stands
            add(Leaf(leaf.box, b.bound, b.ranges, leaf.depth, leaf.parent_key, outputs, leaf.milp_done,
                     leaf.scores if kept else b.scores, leaf.branch if kept else b.branch))
            fresh.append(b.candidates)
        for leaf, (b, milp_work) in zip(to_milp, milp_results, strict=True):
            drop(leaf)
            work["milp_solves"] += milp_work.get("milp_solves", 0)
            work["milp_nodes"] += milp_work.get("milp_nodes", 0)
            milp_late = milp_late or bool(milp_work.get("milp_timed_out"))
            add(Leaf(leaf.box, b.bound, b.ranges, leaf.depth, leaf.parent_key, leaf.cells, True, b.scores,
                     b.branch))
        if held > settings.leaf_ranges_bytes:
            held = _shed_ranges(heap, slots, region_ranges, settings.leaf_ranges_bytes)
        if probe is not None and fresh:
            probe(np.vstack(fresh))
        if progress is not None and time.monotonic() - last_report > 2.0:
            last_report = time.monotonic()
            by_cells = f" ({work['enumerated']} bounded cell by cell)" if work["enumerated"] else ""
            progress(f"split: {work['boxes']} boxes{by_cells}, bound {store.combined().upper.max():.6g}")
    final = store.combined()
    if stopped == STOP_EXHAUSTED and decided(final):
        stopped = STOP_DECIDED
    if milp_late:
        stopped = STOP_TIME
    # Per node, the float pre-activation range over the union of the open boxes (for the report).
    leaves = [e[2] for e in heap] + stuck
    lo_all = np.min([leaf.ranges.values[0] for leaf in leaves], axis=0)
    hi_all = np.max([leaf.ranges.values[1] for leaf in leaves], axis=0)
    offsets = np.cumsum([0] + [n.size for n in net.nodes])
    ranges = [(lo_all[a:b], hi_all[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return EngineResult(final, stopped, dict(work, open_boxes=len(leaves)), float_ranges=ranges)


def _measure_slopes(leaf: Leaf, options, gains: list[float]) -> None:
    """slopes auto: where a leaf's input split was bounded both with fixed and with optimised slopes,
    add (log of what the fixed split kept of the leaf's worst output, log of what the optimised one
    kept of the fixed one's, 1, work of the fixed children, work of the optimised ones) to `gains`."""
    by_flag = {kids[0][4]: kids for kids in options if kids[0][0] == "input"}
    if len(by_flag) < 2 or not leaf.key > 0:
        return
    worst = {}
    for flag, kids in by_flag.items():
        alive = [k for k in kids if not k[3].infeasible] or kids
        worst[flag] = max(float(k[3].bound.upper.max()) for k in alive)
    tiny = 1e-300
    gains[0] += np.log(max(worst[False], tiny) / leaf.key)
    gains[1] += np.log(max(worst[True], tiny) / max(worst[False], tiny))
    gains[2] += 1
    gains[3] += sum(k[5] for k in by_flag[False])
    gains[4] += sum(k[5] for k in by_flag[True])


def _optimise_pays(gains: list[float]) -> bool:
    """Whether optimised slopes take more off than the splits their extra work would buy: with c the
    work of an optimised box over a fixed one, c boxes are log2(c) more levels of splitting, each
    keeping (on average, measured) s of the bound; the optimised slopes keep g of the fixed ones'.
    They pay where g < s^log2(c), and by more than OPTIMISE_MARGIN (one exploration measures a few
    boxes; optimised slopes are kept only for a clear gain)."""
    log_s, log_g, n, w_fixed, w_opt = gains
    c = max(1.0, w_opt / w_fixed)
    return log_g / n < np.log2(c) * log_s / n + np.log(OPTIMISE_MARGIN)


OPTIMISE_MARGIN = 0.98


def _shed_ranges(heap: list, slots: dict[int, int], region: Ranges, budget: float) -> int:
    """Keep the open boxes' own node ranges within `budget` bytes: past it, the boxes least likely to be
    refined (lowest bound first) hold the region's ranges instead, which are sound for every box of the
    region (only looser: their children are bounded as if from the region). Deterministic: it depends on
    the network's size, the search's order and the budget, never on the machine. Returns the bytes the
    open boxes' own ranges hold after. A pass over the whole heap: the search calls it only once its
    running count is past the budget (counted every round, this pass took a quarter of a 60-s search on
    the pump classifier, 20,000 open boxes)."""
    own = [i for i, e in enumerate(heap) if e[2].ranges is not region]
    total = sum(heap[i][2].ranges.nbytes for i in own)
    if total <= budget:
        return total
    for i in sorted(own, key=lambda i: (-heap[i][0], heap[i][1])):  # lowest key first, then oldest
        key, count, leaf = heap[i]
        total -= leaf.ranges.nbytes
        shed = replace(leaf, ranges=region)
        slots[id(shed)] = slots.pop(id(leaf))
        heap[i] = (key, count, shed)  # same key and counter: the heap's order is unchanged
        if total <= budget:
            break
    return total


def _stalled(history: list[tuple[float, float]], after: float) -> bool:
    """The bound now is within 1% of what it was when a quarter of the work spent so far was done
    (a search tightens in jumps, e.g. when a box is enumerated: three quarters of the work without
    1% is not a jump)."""
    spent, now = history[-1]
    if spent < after:
        return False
    then = [b for w, b in history if w <= spent / 4]  # the bound when a quarter of the work was done
    return bool(then) and now > 0.99 * then[-1]
