"""The registry of certify engines: one name, one summary, one function each, one result type.

Every engine takes a `RegionTask` (the problem, the box, the differential engine's analysis of it,
the falsifier's witnesses, the budgets) and returns an `EngineResult`. The certifier, the CLI's
`--method` choices and the docs all read this registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from toolchain.certify.result import STOP_DECIDED, STOP_ONE_PASS, EngineResult, ErrorBound

if TYPE_CHECKING:  # the engines import their maths when they run: naming them stays cheap for the CLI
    from toolchain.certify.falsify import Found
    from toolchain.certify.parallel import Problem, Runner
    from toolchain.certify.region import Box
    from toolchain.certify.symbolic import Analysis


@dataclass
class RegionTask:
    """One region to bound. `lower` is the witnessed lower bound per output (the probe raises it)."""

    problem: Problem
    box: Box
    root: Analysis  # the differential engine on the box (every range tight)
    found: Found
    budgets: np.ndarray
    runner: Runner
    probe: Callable[[np.ndarray], None]
    lower: Callable[[], np.ndarray]
    progress: Callable[[str], None]
    deadline: float

    def within_budget(self, bound: ErrorBound) -> bool:
        return bool(np.all(bound.upper <= self.budgets))

    def near_witness(self, bound: ErrorBound) -> bool:
        """The bound is within settings.target_ratio of the witnessed error (max over outputs)."""
        return bool(bound.upper.max() <= self.problem.settings.target_ratio * self.lower().max())

    def refuted(self) -> bool:
        """Some output's witnessed error is above its budget: the verdict no longer depends on the bound."""
        return bool(np.any(self.lower() > self.budgets))


@dataclass(frozen=True)
class Engine:
    name: str
    summary: str  # one line, for --help and the docs
    bound: Callable[[RegionTask], EngineResult]


def _interval(task: RegionTask) -> EngineResult:
    from toolchain.certify.region import BoxBatch
    from toolchain.certify.symbolic import interval_analysis

    a = interval_analysis(task.problem.net, BoxBatch.of([task.box]))
    return EngineResult(a.bound.item(0), STOP_ONE_PASS, {"boxes": 1})


def _differential(task: RegionTask) -> EngineResult:
    return EngineResult(task.root.bound.item(0), STOP_ONE_PASS, {"boxes": 1})


def _milp(task: RegionTask) -> EngineResult:
    from toolchain.certify.milp import milp_bounds

    p = task.problem
    m = milp_bounds(p.net, task.box, task.root, p.settings, witness=task.found, pg=p.pg,
                    seconds=max(1.0, task.deadline - time.monotonic()))
    return EngineResult(task.root.bound.item(0).meet(m.bound), m.stopped, dict(m.work, boxes=1),
                        notes=m.notes, details=m.details)


def _split(task: RegionTask, stop_near_witness: bool) -> EngineResult:
    from toolchain.certify.bnb import branch_and_bound

    def decided(bound: ErrorBound) -> bool:
        # Near the witness is an answer only once the budget is refuted (or there is none, budget 0):
        # while the witness is within the budget, a bound between the two can still come down to it.
        near = stop_near_witness and task.refuted() and task.near_witness(bound)
        return task.within_budget(bound) or near

    if decided(task.root.bound.item(0)):
        return EngineResult(task.root.bound.item(0), STOP_DECIDED, {"boxes": 1})
    return branch_and_bound(task.problem, task.root, task.runner, decided=decided, probe=task.probe,
                            progress=task.progress, deadline=task.deadline,
                            stop_when_stalled=stop_near_witness)


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("auto", "differential, then branch and bound until the budget is decided, the bound is "
               "within target_ratio of a witness that refutes the budget, splitting stalls, or the work "
               "budget is spent",
               lambda t: _split(t, True)),
        Engine("interval", "the naive merged-network baseline: independent intervals on each side",
               _interval),
        Engine("differential", "linear bounds over both sides at once, the difference relaxed directly",
               _differential),
        Engine("milp", "the exact MILP encoding on HiGHS (sound dual bound, node limit)", _milp),
        Engine("split", "branch and bound over the region until the budget is decided or the work budget is "
               "spent", lambda t: _split(t, False)),
    )
}
METHODS = tuple(ENGINES)
