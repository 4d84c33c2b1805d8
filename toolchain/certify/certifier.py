"""The certifier: per region, the falsifier (witnessed lower bound), then an engine of the registry
for the certified upper bound, a check that no witness exceeds a bound (a soundness violation stops
everything), and the saturating layers. The result is a Certificate (toolchain.certificate).

It works on the merged network and the prepared int8 graph, built once by the caller. Every search
is bounded by the settings' work budget; `settings.time_limit` is a safety net shared by all
regions (each gets an equal share of what is left of it when it starts), and a region it stops makes
the verdict `unknown`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from toolchain.certificate import (
    Certificate,
    OutputBound,
    RegionCertificate,
    Saturation,
    Witness,
    verdict_for,
)
from toolchain.certify import falsify as F
from toolchain.certify.engines import ENGINES, METHODS, RegionTask
from toolchain.certify.parallel import Problem, Runner, available_cpus, make_runner
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.result import STOP_TIME, ErrorBound
from toolchain.certify.settings import DEFAULT, Settings
from toolchain.certify.symbolic import differential_analysis
from toolchain.errors import QassureError, SoundnessViolation
from toolchain.margins import with_margin
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph

__all__ = ["METHODS", "certify"]


def certify(
    net: MergedNet,
    pg: PreparedGraph,
    boxes: list[Box],
    *,
    budget: list[float] | float,
    target: str,
    method: str = "auto",
    settings: Settings = DEFAULT,
    workers: int = 1,
    scheduler: str | None = None,
    decision: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Certificate:
    """Certify the merged network over every box; `target` names the target in the certificate.
    The work runs in this process (workers = 1), a process pool, or on the Dask cluster at
    `scheduler`: the certificate is the same."""
    if method not in ENGINES:
        raise QassureError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    say = progress or (lambda _msg: None)
    n_out = net.n_outputs
    budgets = _budget_list(budget, n_out)
    for b in boxes:
        if b.low.size != net.n_inputs:
            raise QassureError(f"the region has {b.low.size} inputs but the model takes {net.n_inputs}")
    deadline = time.monotonic() + settings.time_limit
    problem = Problem(net, pg, settings)
    runner = make_runner(problem, workers, scheduler, say)
    threads = min(workers, available_cpus())  # for each region's own analysis (certify_region)
    regions = []
    try:
        for i, box in enumerate(boxes):
            if net.input_interface == "int8":
                box = box.snap_to_grid(net.input_scale, net.input_zero_point)
            say(f"region {i + 1}/{len(boxes)}: falsifying")
            share = region_deadline(deadline, time.monotonic(), len(boxes) - i)
            regions.append(certify_region(problem, box, np.asarray(budgets), method, runner,
                                          settings.seed + i, share, say, decision, threads))
    finally:
        runner.close()
    outputs = [
        OutputBound(k, max(r.outputs[k].lower for r in regions), max(r.outputs[k].upper for r in regions))
        for k in range(n_out)
    ]
    worst = max(regions, key=lambda r: r.witness.error)
    region_field: dict | list[dict] = regions[0].region if len(regions) == 1 else [r.region for r in regions]
    notes = list(net.notes)
    timed_out = [i for i, r in enumerate(regions) if r.stopped == STOP_TIME]
    if timed_out:
        where = ", ".join(str(i + 1) for i in timed_out)
        shared = ", shared among the regions" if len(regions) > 1 else ""
        notes.append(f"the time limit ({settings.time_limit:g} s, a safety net{shared}) stopped the search "
                     f"on region(s) {where} before its work budget was spent: the verdict is unknown (raise "
                     "time_limit, or lower max_boxes / max_work for a bound that comes back sooner)")
    if decision == "top1":
        ok = all(r.decision and r.decision["certified"] for r in regions)
        notes.append(f"decision top1 on {net.certified_tensor}: " + ("certified on every region" if ok else
                     "not certified on every region (see regions[].decision)"))
    return Certificate(
        verdict=verdict_for(outputs, budgets, timed_out=bool(timed_out)),
        bound=max(o.upper for o in outputs),
        outputs=outputs,
        witness=worst.witness,
        region=region_field,
        target=target,
        method=method,
        budget=budgets,
        certified_tensor=net.certified_tensor,
        regions=regions,
        work_budget=settings.work_budget,
        notes=notes,
    )


def region_deadline(deadline: float, now: float, regions_left: int) -> float:
    """When the next region's safety net bites: an equal share of what is left of the call's time
    limit. The certificate's bound is the largest over the regions, so a first region that took the
    whole limit would leave the others their root bound (the suite's three-ball cases did: AD01's
    second ball kept 42.3 while the first, searched for 60 s, got to 10.9). A region that stops
    early (decided, stalled, budget spent) leaves its time to those after it."""
    return now + max(0.0, deadline - now) / max(1, regions_left)


def _budget_list(budget, n_out: int) -> list[float]:
    if isinstance(budget, (int, float)):
        return [float(budget)] * n_out
    b = [float(v) for v in budget]
    if len(b) != n_out:
        raise QassureError(f"budget has {len(b)} entries but the certified tensor has {n_out} outputs")
    return b


def certify_region(
    problem: Problem, box: Box, budgets: np.ndarray, method: str, runner: Runner, seed: int, deadline: float,
    say: Callable[[str], None], decision: str | None = None, threads: int = 1,
) -> RegionCertificate:
    """Falsify, then bound one region. `threads`: the cores the user gave (--workers) for the region's
    own analysis, which runs here while the pool waits (its memory is this process's, so a pool that
    memory_bytes made smaller still leaves them; the result is the same on any number)."""
    net, pg, settings = problem.net, problem.pg, problem.settings
    found = F.falsify(net, pg, box, settings, seed=seed, deadline=deadline)
    lower, inputs = found.lower.copy(), found.inputs.copy()

    def probe(xs: np.ndarray) -> None:
        """Witnesses sought where the engine works: raise the lower bound where a point beats it."""
        if net.input_interface == "int8":
            xs = F.snap_to_input_grid(net, xs, box)
        e = np.abs(F.errors(net, pg, xs))
        for k in np.nonzero(e.max(axis=0) > lower)[0]:
            j = int(np.argmax(e[:, k]))
            lower[k], inputs[k] = e[j, k], xs[j]

    say(f"witnessed error {found.lower.max():.6g}; bounding with {method}")
    root = differential_analysis(net, BoxBatch.of([box]), settings=settings, full=True,
                                 work=settings.symbolic_work_root, threads=threads,
                                 alpha_work=settings.alpha_work_root)
    task = RegionTask(problem, box, root, found, budgets, runner, probe, lambda: lower, say, deadline)
    result = ENGINES[method].bound(task)
    stopped = STOP_TIME if found.timed_out else result.stopped
    bound = result.bound
    margin = with_margin(bound.upper) - bound.upper
    bound = ErrorBound(bound.low - margin, bound.high + margin)
    upper = bound.upper
    # A witnessed error above a certified bound is a bug in qassure: stop, emit nothing.
    if np.any(lower > upper):
        k = int(np.argmax(lower - upper))
        raise SoundnessViolation(
            f"soundness violation: output {k} error {lower[k]:.9g} observed at {inputs[k].tolist()} "
            f"exceeds the certified bound {upper[k]:.9g} ({method})"
        )
    top1 = None
    if decision == "top1":
        from toolchain.certify.decision import top1 as decide

        top1 = decide(net, pg, box, root, seed=seed)
    k_best = int(np.argmax(lower))
    witness = Witness(inputs[k_best].tolist(), float(lower[k_best]), k_best)
    outputs = [OutputBound(k, float(lower[k]), float(upper[k])) for k in range(net.n_outputs)]
    return RegionCertificate(
        region=box.to_dict(),
        outputs=outputs,
        witness=witness,
        bound=float(upper.max()),
        lower=float(lower.max()),
        method=method,
        stopped=stopped,
        work={k: int(v) for k, v in result.work.items()},
        saturations=saturations(net, result.float_ranges or root.float_ranges(), inputs),
        decision=top1,
    )


def saturations(
    net: MergedNet, ranges: list[tuple[np.ndarray, np.ndarray]], witnesses: np.ndarray, limit: int = 20
) -> list[Saturation]:
    """Channels whose certified float range (pre-activation ranges per node over the region)
    exceeds what their int8 tensor can represent; marked `witnessed` where a witness input's float
    value really exceeds it."""
    out: list[Saturation] = []
    for t, node in enumerate(net.nodes):
        if t == 0 or node.linear_only or not node.tensor:  # auxiliary nodes hold no tensor
            continue
        pl, ph = ranges[t]
        yl, yh = np.clip(pl, node.f_lo, node.f_hi), np.clip(ph, node.f_lo, node.f_hi)
        excess = np.maximum(yh - node.q_hi, 0) + np.maximum(node.q_lo - yl, 0)
        for ch in np.argsort(-excess, kind="stable")[: limit]:
            if excess[ch] <= 0.5 * node.scale:
                break
            out.append(Saturation(node.name, node.tensor, int(ch), float(yl[ch]), float(yh[ch]),
                                  float(node.q_lo[ch]), float(node.q_hi[ch]), False))
    out.sort(key=lambda s: -max(s.float_high - s.int8_high, s.int8_low - s.float_low))
    out = out[:limit]
    if out:
        ys = net.forward_float(witnesses)
        names = {n.name: i for i, n in enumerate(net.nodes)}
        marked = []
        for s in out:
            y = ys[names[s.op]][:, s.channel]
            hit = bool(np.any(y > s.int8_high) or np.any(y < s.int8_low))
            marked.append(Saturation(**{**s.__dict__, "witnessed": hit}))
        out = marked
    return out
