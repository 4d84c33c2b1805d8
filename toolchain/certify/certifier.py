"""The certifier: per region, the falsifier (witnessed lower bound), then an engine for the
certified upper bound, a check that no witness exceeds a bound (a soundness violation stops
everything), and the saturating layers. The result is a Certificate (toolchain.certificate).

It works on the merged network and the prepared int8 graph, built once by the caller.
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
from toolchain.certify import symbolic
from toolchain.certify.settings import DEFAULT, Settings
from toolchain.certify.region import Box
from toolchain.errors import QassureError, SoundnessViolation
from toolchain.margins import with_margin
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph

METHODS = ("auto", "interval", "differential", "milp", "split")
# auto stops refining a region once U_k <= TARGET_RATIO * L_k for every output.
TARGET_RATIO = 1.5


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
    decision: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Certificate:
    """Certify the merged network over every box; `target` names the target in the certificate."""
    if method not in METHODS:
        raise QassureError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    time_limit, samples, seed = settings.time_limit, settings.falsify_samples, settings.seed
    input_interface = net.input_interface
    n_out = net.n_outputs
    budgets = _budget_list(budget, n_out)
    for b in boxes:
        if b.low.size != net.n_inputs:
            raise QassureError(f"the region has {b.low.size} inputs but the model takes {net.n_inputs}")
    per_region_time = time_limit / max(1, len(boxes))
    regions = []
    for i, box in enumerate(boxes):
        if input_interface == "int8":
            box = box.snap_to_grid(net.input_scale, net.input_zero_point)
        say(f"region {i + 1}/{len(boxes)}: falsifying")
        regions.append(
            certify_region(net, pg, box, budgets, method, per_region_time, workers, samples, seed + i, say, decision)
        )
    outputs = [
        OutputBound(k, max(r.outputs[k].lower for r in regions), max(r.outputs[k].upper for r in regions))
        for k in range(n_out)
    ]
    worst = max(regions, key=lambda r: r.witness.error)
    region_field: dict | list[dict] = regions[0].region if len(regions) == 1 else [r.region for r in regions]
    notes = list(net.notes)
    if decision == "top1":
        ok = all(r.decision and r.decision["certified"] for r in regions)
        notes.append(f"decision top1 on {net.certified_tensor}: " + ("certified on every region" if ok else
                     "not certified on every region (see regions[].decision)"))
    return Certificate(
        verdict=verdict_for(outputs, budgets),
        bound=max(o.upper for o in outputs),
        outputs=outputs,
        witness=worst.witness,
        region=region_field,
        target=target,
        method=method,
        seconds=round(time.monotonic() - t0, 3),
        budget=budgets,
        certified_tensor=net.certified_tensor,
        regions=regions,
        notes=notes,
    )


def _budget_list(budget, n_out: int) -> list[float]:
    if isinstance(budget, (int, float)):
        return [float(budget)] * n_out
    b = [float(v) for v in budget]
    if len(b) != n_out:
        raise QassureError(f"budget has {len(b)} entries but the certified tensor has {n_out} outputs")
    return b


def certify_region(
    net: MergedNet, pg: PreparedGraph, box: Box, budgets: list[float], method: str, time_limit: float,
    workers: int, samples: int, seed: int, say: Callable[[str], None], decision: str | None = None,
) -> RegionCertificate:
    t0 = time.monotonic()
    found = F.falsify(net, pg, box, samples=samples, seed=seed, time_limit=max(1.0, 0.25 * time_limit))
    say(f"witnessed error {found.lower.max():.6g}; bounding with {method}")
    leaves = 1
    ranges = None
    analysis = symbolic.interval_analysis(net, box) if method == "interval" else symbolic.differential_analysis(net, box)
    upper = analysis.upper
    if method == "milp":
        from toolchain.certify import milp

        res = milp.milp_bounds(net, box, analysis, time_limit=max(1.0, time_limit - (time.monotonic() - t0)),
                               witness=found, pg=pg)
        upper = np.minimum(upper, res.upper)
    elif method in ("split", "auto"):
        remaining = max(0.0, time_limit - (time.monotonic() - t0))
        upper, leaves, ranges, found = _refine_by_splitting(
            net, pg, box, analysis, found, np.asarray(budgets), remaining, workers, say)
    upper = with_margin(upper)
    # A witnessed error above a certified bound is a bug in qassure: stop, emit nothing.
    if np.any(found.lower > upper):
        k = int(np.argmax(found.lower - upper))
        raise SoundnessViolation(
            f"soundness violation: output {k} error {found.lower[k]:.9g} observed at {found.inputs[k].tolist()} "
            f"exceeds the certified bound {upper[k]:.9g} ({method})"
        )
    top1 = None
    if decision == "top1":
        from toolchain.certify.decision import top1 as decide

        top1 = decide(net, pg, box, analysis, seed=seed)
    k_best = int(np.argmax(found.lower))
    witness = Witness(found.inputs[k_best].tolist(), float(found.lower[k_best]), k_best)
    outputs = [OutputBound(k, float(found.lower[k]), float(upper[k])) for k in range(net.n_outputs)]
    return RegionCertificate(
        region=box.to_dict(),
        outputs=outputs,
        witness=witness,
        bound=float(upper.max()),
        lower=float(found.lower.max()),
        method=method,
        seconds=round(time.monotonic() - t0, 3),
        leaves=leaves,
        saturations=saturations(net, ranges or [(b.pl, b.ph) for b in analysis.bounds], found),
        decision=top1,
    )


def _refine_by_splitting(
    net: MergedNet, pg: PreparedGraph, box: Box, analysis, found: F.Found, budgets: np.ndarray,
    time_limit: float, workers: int, say: Callable[[str], None],
) -> tuple[np.ndarray, int, list | None, F.Found]:
    """Branch and bound until the budget is decided or U <= TARGET_RATIO * L; witnesses are also
    sought at the centres of the boxes being refined. Returns (upper, boxes, ranges, found)."""
    from toolchain.certify import split
    from toolchain.certify.milp import MAX_NEURONS

    lower, inputs = found.lower.copy(), found.inputs.copy()

    def probe(xs: np.ndarray) -> None:
        if net.input_interface == "int8":
            xs = F.snap_to_input_grid(net, xs, box)
        e = np.abs(F.errors(net, pg, xs))
        for k in np.nonzero(e.max(axis=0) > lower)[0]:
            j = int(np.argmax(e[:, k]))
            lower[k], inputs[k] = e[j, k], xs[j]

    def done(u: np.ndarray) -> bool:
        # The gate is decided (every output within budget), or the certificate is within
        # TARGET_RATIO of the witness (bound = max over outputs, as reported).
        return bool(np.all(u <= budgets) or u.max() <= TARGET_RATIO * lower.max())

    if done(analysis.upper):
        return analysis.upper, 1, None, found
    # Small networks: boxes about three halvings deep per input get one MILP pass (the exact
    # engine on small leaves), a few seconds each.
    small = sum(n.size for n in net.nodes[1:]) <= MAX_NEURONS
    res = split.split_search(net, box, time_limit=time_limit, target=done, workers=workers, progress=say,
                             root=analysis, probe=probe, milp_depth=3 * net.n_inputs if small else None,
                             milp_seconds=min(3.0, max(0.5, time_limit / 20)), pg=pg)
    return np.minimum(analysis.upper, res.upper), res.leaves, res.float_ranges, F.Found(lower, inputs, found.errors_sampled)


def saturations(
    net: MergedNet, ranges: list[tuple[np.ndarray, np.ndarray]], found: F.Found, limit: int = 20
) -> list[Saturation]:
    """Channels whose certified float range (pre-activation ranges per node, tightest available:
    the union over the final boxes of a split) exceeds what their int8 tensor can represent."""
    out: list[Saturation] = []
    for t, node in enumerate(net.nodes):
        if t == 0 or node.linear_only:
            continue
        pl, ph = ranges[t]
        yl, yh = np.clip(pl, node.f_lo, node.f_hi), np.clip(ph, node.f_lo, node.f_hi)
        excess = np.maximum(yh - node.q_hi, 0) + np.maximum(node.q_lo - yl, 0)
        for ch in np.argsort(-excess)[: limit]:
            if excess[ch] <= 0.5 * node.scale:
                break
            out.append(Saturation(node.name, node.tensor, int(ch), float(yl[ch]), float(yh[ch]),
                                  float(node.q_lo[ch]), float(node.q_hi[ch]), False))
    out.sort(key=lambda s: -max(s.float_high - s.int8_high, s.int8_low - s.float_low))
    out = out[:limit]
    # Mark the ones a real input exceeds (replayed through the float graph at the witnesses).
    if out:
        xs = found.inputs
        ys = net.forward_float(xs)
        names = {n.name: i for i, n in enumerate(net.nodes)}
        marked = []
        for s in out:
            y = ys[names[s.op]][:, s.channel]
            hit = bool(np.any(y > s.int8_high) or np.any(y < s.int8_low))
            marked.append(Saturation(**{**s.__dict__, "witnessed": hit}))
        out = marked
    return out
