"""MILP engine benchmark: generated Dense/ReLU MLPs with 50, 100 and 200 ReLU pairs.

Each net is a seeded Dense chain built as float + int8 IR by tests/netgen.py (weights N(0, 1/n_in),
no training; every activation calibrated on 500 uniform samples of [-1, 1]^n, per-channel int8
weights, as a post-training converter does), merged with a float input interface, and certified
over boxes of a few half-widths around a seeded centre. (The bench used to convert seeded Keras
models with TensorFlow; the IR pairs are the same kind of net in seconds, with no converter in the
loop.) Per case it prints: the differential bound it starts from, the certified MILP upper bound
(dual bound + margin, max over outputs), the best incumbent, the falsifier's witnessed lower bound,
U/L, the worst per-output relative gap, the HiGHS nodes used and the seconds next to each other
(every solve stops at `--nodes` branch-and-bound nodes: the nodes are the work, the seconds only
what they cost on this machine), and the solves' final statuses. Each case is followed by the exact
route that does not go through one big MILP: branch and bound (bnb.py: input splitting, cell
enumeration, leaf MILPs) on 2 workers until U <= 1.01 L or `--max-boxes` boxes are bounded.
Numbers belong here and in issue notes, never in tests.

    .venv/bin/python bench/milp_bench.py [--nodes 2000] [--max-boxes 4096] [--only 50,100] [--widths 0.02,0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from netgen import mlp  # noqa: E402

from toolchain.certify import falsify, milp  # noqa: E402
from toolchain.certify.bnb import branch_and_bound  # noqa: E402
from toolchain.certify.parallel import Problem, make_runner  # noqa: E402
from toolchain.certify.region import Box, BoxBatch  # noqa: E402
from toolchain.certify.result import ErrorBound  # noqa: E402
from toolchain.certify.settings import DEFAULT, Settings  # noqa: E402
from toolchain.certify.symbolic import differential_analysis  # noqa: E402
from toolchain.margins import with_margin  # noqa: E402

# name: (inputs, hidden widths, outputs, seed); ReLU pairs = sum of hidden widths.
NETS = {
    "50": (4, [25, 25], 3, 0),
    "100": (4, [25, 25, 25, 25], 3, 1),
    "200": (2, [50, 50, 50, 50], 2, 2),
}
WIDTHS = (0.02, 0.1, 0.3)  # half-widths of the boxes (inputs calibrated on [-1, 1])


def case_boxes(n_in: int, seed: int, widths) -> list[tuple[float, Box]]:
    c = np.random.default_rng(100 + seed).uniform(-0.5, 0.5, size=n_in)
    return [(w, Box(c - w, c + w)) for w in widths]


def status_counts(notes: tuple[str, ...]) -> list[str]:
    """The MILP solves' final statuses, counted: phase (relaxed or integer hidden rounding) x outcome
    (opt: optimal, cut: nothing beats the other sign's incumbent, nodes: node limit, time: the safety
    net, diff: the differential bound kept)."""
    counts: dict[str, int] = {}
    for s in notes:
        phase = "int" if "integer" in s else "rel" if "relaxed" in s else "diff"
        what = ("opt" if "Optimal" in s else "cut" if "cutoff" in s else "nodes" if "Solution limit" in s
                else "time" if "Time" in s else "diff" if "differential" in s else "other")
        counts[f"{phase}:{what}"] = counts.get(f"{phase}:{what}", 0) + 1
    return [f"{k}x{v}" for k, v in sorted(counts.items())]


def exact_route(net, pg, root, found, settings: Settings,
                workers: int) -> tuple[ErrorBound, dict, str, np.ndarray]:
    """Branch and bound from the differential analysis `root` until U <= 1.01 L (L raised by probing
    the new boxes, as the certifier does) or the work budget is spent. Returns the bound (with the
    certifier's float64 margin), the work, why it stopped, and L per output."""
    lower = found.lower.copy()

    def probe(xs: np.ndarray) -> None:
        np.maximum(lower, np.abs(falsify.errors(net, pg, xs)).max(axis=0), out=lower)

    def decided(bound: ErrorBound) -> bool:
        return bool(bound.upper.max() <= 1.01 * lower.max())

    problem = Problem(net, pg, settings)
    runner = make_runner(problem, workers)
    try:
        res = branch_and_bound(problem, root, runner, decided=decided, probe=probe,
                               deadline=time.monotonic() + settings.time_limit)
    finally:
        runner.close()
    margin = with_margin(res.bound.upper) - res.bound.upper
    return ErrorBound(res.bound.low - margin, res.bound.high + margin), res.work, res.stopped, lower


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=DEFAULT.milp_nodes, help="HiGHS nodes per MILP solve")
    ap.add_argument("--max-boxes", type=int, default=DEFAULT.max_boxes, help="work budget of the exact route")
    ap.add_argument("--time-limit", type=float, default=600.0, help="safety net per MILP solve / search")
    ap.add_argument("--only", default=",".join(NETS))
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--samples", type=int, default=2000, help="falsifier samples")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    settings = DEFAULT.replace(falsify_samples=args.samples, milp_nodes=args.nodes, max_boxes=args.max_boxes,
                               time_limit=args.time_limit)
    print(f"{'pairs':>5s} {'box r':>6s} {'differential':>12s} {'bound':>10s} {'incumbent':>10s} "
          f"{'witness':>10s} {'U/L':>6s} {'gap':>7s} {'nodes':>7s} {'seconds':>8s}  status", flush=True)
    for name in args.only.split(","):
        n_in, hidden, n_out, seed = NETS[name]
        net, pg = mlp([n_in, *hidden, n_out], ["relu"] * len(hidden) + [None], seed=seed, n_calib=500).net()
        for w, box in case_boxes(n_in, seed, widths):
            found = falsify.falsify(net, pg, box, settings)
            t = time.monotonic()
            a = differential_analysis(net, BoxBatch.of([box]), settings=settings, full=True)
            res = milp.milp_bounds(net, box, a, settings, witness=found, pg=pg, seconds=args.time_limit)
            sec = time.monotonic() - t
            up, lo = float(res.bound.upper.max()), float(found.lower.max())
            inc, gap = float(res.details["incumbent"].max()), float(res.details["gap"].max())
            st = status_counts(res.notes) + [f"solves={res.work['milp_solves']}",
                                             f"lsb={net.nodes[net.output].scale:.3g}"]
            print(f"{sum(hidden):5d} {w:6.2f} {float(a.bound.upper.max()):12.5g} {up:10.5g} "
                  f"{inc:10.5g} {lo:10.5g} {up / lo if lo > 0 else np.inf:6.2f} {gap:7.2%} "
                  f"{res.work['milp_nodes']:7d} {sec:8.1f}  {' '.join(st)}", flush=True)
            assert np.all(res.bound.upper >= found.lower), "soundness violation: witness above the MILP bound"

            t = time.monotonic()
            bound, work, stopped, lower = exact_route(net, pg, a, found, settings, args.workers)
            up, lo = float(bound.upper.max()), float(lower.max())
            print(f"{'':5s} {'':6s} {'branch+bound':>12s} {up:10.5g} {'':10s} {lo:10.5g} {up / lo:6.2f} "
                  f"{(up - lo) / up:7.2%} {work['milp_nodes']:7d} {time.monotonic() - t:8.1f}  "
                  f"boxes={work['boxes']} enumerated={work['enumerated']} milp_solves={work['milp_solves']} "
                  f"stopped: {stopped}", flush=True)
            assert np.all(bound.upper >= lower), "soundness violation: witness above the branch and bound"


if __name__ == "__main__":
    main()
