"""Older benchmark script: executor speed against tflite-micro, and each engine next to the interval baseline.

Executor speed: one batch of 256 random int8 inputs through the numpy executor and through the
tflite-micro interpreter, per zoo model and the MLPerf Tiny reference files (outputs must agree).

Engines: per case and box, the falsifier's witnessed lower bound L, then per engine the certified
upper bound U (max over outputs), U/L and seconds: `interval` and `differential` bound every box of a
case in one batched pass (BoxBatch; their seconds are the batch's, divided by its boxes), `milp` each
box on a node limit (settings.milp_nodes per solve, nets of at most 16 inputs), and `auto` is
`certify --method auto` (falsifier, differential, branch and bound with witness probes until
U <= 1.5 L or `--max-boxes` boxes, leaf MILPs), as the gate runs it. Cases: generated zoo models
(tests/zoo.py), ACAS Xu 1_1 on the property-1 box and the MLPerf Tiny autoencoder ad01
(../shared/models, when present). `make bench` runs the suite (bench/suite.py), not this script;
run it as `.venv/bin/python bench/run.py [--sections speed,engines] [--max-boxes 2000]`.
Numbers belong here and in issue notes, never in tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from toolchain.certify import falsify  # noqa: E402
from toolchain.certify.certifier import certify  # noqa: E402
from toolchain.certify.milp import milp_bounds  # noqa: E402
from toolchain.certify.region import Box, BoxBatch  # noqa: E402
from toolchain.certify.settings import DEFAULT, Settings  # noqa: E402
from toolchain.certify.symbolic import differential_analysis, interval_analysis  # noqa: E402
from toolchain.execute import run  # noqa: E402
from toolchain.merge import build  # noqa: E402
from toolchain.oracle import TflmOracle  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

SHARED = REPO.parent / "shared" / "models"
MILP_MAX_INPUTS = 16


def row(case: str, engine: str, upper: float, lower: float, seconds: float, note: str = "") -> None:
    ratio = upper / lower if lower > 0 else float("inf")
    print(f"{case:34s} {engine:13s} U={upper:12.6g}  L={lower:10.6g}  U/L={ratio:10.3g}  {seconds:7.2f}s  "
          f"{note}", flush=True)


def bench_case(case: str, float_path: Path, int8_path: Path, boxes: list[Box], engines: tuple[str, ...],
               settings: Settings, workers: int = 2) -> None:
    pg = prepare.prepare(reader.read_model(int8_path))
    net = build(reader.read_model(float_path), pg, "float")
    lower = []
    for i, box in enumerate(boxes):
        t = time.monotonic()
        found = falsify.falsify(net, pg, box, settings)
        lower.append(found)
        witnessed = float(found.lower.max())
        row(f"{case} #{i}", "falsifier", witnessed, witnessed, time.monotonic() - t)
    batch = BoxBatch.of(boxes)
    for engine in engines:
        t = time.monotonic()
        if engine == "interval":
            ups = interval_analysis(net, batch).bound.upper.max(axis=1)
            each = (time.monotonic() - t) / len(boxes)
            for i, up in enumerate(ups):
                row(f"{case} #{i}", engine, float(up), float(lower[i].lower.max()), each, "batched")
        elif engine == "differential":
            ups = differential_analysis(net, batch, settings=settings, full=True).bound.upper.max(axis=1)
            each = (time.monotonic() - t) / len(boxes)
            for i, up in enumerate(ups):
                row(f"{case} #{i}", engine, float(up), float(lower[i].lower.max()), each, "batched")
        elif engine == "milp":
            for i, box in enumerate(boxes):
                t = time.monotonic()
                a = differential_analysis(net, BoxBatch.of([box]), settings=settings, full=True)
                m = milp_bounds(net, box, a, settings, witness=lower[i], pg=pg)
                up = float(a.bound.item(0).meet(m.bound).upper.max())
                row(f"{case} #{i}", engine, up, float(lower[i].lower.max()), time.monotonic() - t,
                    f"nodes={m.work['milp_nodes']} solves={m.work['milp_solves']}")
        elif engine == "auto":
            for i, box in enumerate(boxes):
                t = time.monotonic()
                c = certify(net, pg, [box], budget=0.0, target="cortex-m4", method="auto", settings=settings,
                            workers=workers)
                work = c.regions[0].work
                row(f"{case} #{i}", engine, c.bound, c.witness.error, time.monotonic() - t,
                    f"boxes={work.get('boxes', 1)} enumerated={work.get('enumerated', 0)} "
                    f"milp_solves={work.get('milp_solves', 0)} stopped: {c.regions[0].stopped}")
        else:
            raise ValueError(f"unknown engine {engine}")


def executor_speed(path: Path, batch: int = 256, label: str | None = None, repeats: int = 5) -> float:
    """Seconds for one batch through the numpy executor and through the tflite-micro interpreter
    (one Invoke per input), each the best of `repeats` interleaved runs (the machine may be shared;
    the executor's first run also builds its per-op constants, as TFLM's Prepare does before
    Invoke); prints the ratio. Outputs must agree: a fast wrong executor is no use."""
    from toolchain.bitexact import random_inputs

    g = reader.read_model(path)
    pg = prepare.prepare(g)
    xs = random_inputs(g, batch, seed=0)
    oracle = TflmOracle(path, preserve_all=False)
    ours = tflm = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mine = run(pg, xs).output
        ours = min(ours, time.perf_counter() - t)
        t = time.perf_counter()
        theirs = oracle.run(xs)
        tflm = min(tflm, time.perf_counter() - t)
    same = np.array_equal(np.asarray(mine).reshape(theirs.shape), theirs)
    ratio = tflm / ours
    print(f"executor speed {label or path.name:32s} batch {batch}: numpy {ours:.4f}s, "
          f"tflite-micro {tflm:.4f}s, ratio tflm/numpy = {ratio:6.1f}x{'' if same else '  OUTPUTS DIFFER'}",
          flush=True)
    return ratio


def main() -> None:
    from zoo import build_zoo

    from toolchain.quantize import quantize, sample_region

    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="speed,engines", help="speed, engines or both")
    ap.add_argument("--max-boxes", type=int, default=2000, help="work budget of `auto` per box")
    ap.add_argument("--milp-nodes", type=int, default=DEFAULT.milp_nodes, help="HiGHS nodes per MILP solve")
    ap.add_argument("--samples", type=int, default=2000, help="falsifier samples")
    ap.add_argument("--time-limit", type=float, default=600.0, help="safety net per certify call")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    settings = DEFAULT.replace(max_boxes=args.max_boxes, milp_nodes=args.milp_nodes,
                               falsify_samples=args.samples, time_limit=args.time_limit)

    zoo = build_zoo(REPO / ".cache" / "zoo")
    if "speed" in sections:
        print("== executor speed vs tflite-micro (batch 256; ratio > 1: the numpy executor is faster) ==")
        ratios = [executor_speed(zoo[name].int8_tflite, label=name) for name in sorted(zoo)]
        for f in ("ad01_int8.tflite", "pretrainedResnet_quant.tflite"):
            if (SHARED / f).exists():
                ratios.append(executor_speed(SHARED / f))
        print(f"executor speed: slowest ratio tflm/numpy = {min(ratios):.1f}x over {len(ratios)} models",
              flush=True)
    if "engines" not in sections:
        return

    print("== generated models (boxes of radius 0.05 around the centre of the calibration box) ==")
    generated = ("mlp_fused", "mlp_fused_per_tensor", "mlp_saturation", "mlp_big_multiplier", "cnn_depthwise")
    for name in generated:
        z = zoo[name]
        n = int(np.prod(reader.read_model(z.int8_tflite).input.shape))
        box = Box(np.full(n, -0.05), np.full(n, 0.05))
        engines = ("interval", "differential", "auto") + (("milp",) if n <= MILP_MAX_INPUTS else ())
        bench_case(name, z.float_tflite, z.int8_tflite, [box], engines, settings, args.workers)

    if (SHARED / "acasxu_1_1.h5").exists():
        print("== ACAS Xu 1_1, property-1 box (logits before SOFTMAX) ==")
        with tempfile.TemporaryDirectory() as d:
            dom_lo = np.array([-0.328, -0.5, -0.5, -0.5, -0.5])
            dom_hi = np.array([0.68, 0.5, 0.5, 0.5, 0.5])
            res = quantize(SHARED / "acasxu_1_1.h5", sample_region(dom_lo, dom_hi, 500, 0), Path(d))
            box = Box(np.array([0.6, -0.5, -0.5, 0.45, -0.5]), np.array([0.6799, 0.5, 0.5, 0.5, -0.45]))
            bench_case("acasxu_1_1 property-1", res.float_tflite, res.int8_tflite, [box],
                       ("interval", "differential", "auto"), settings, args.workers)

    if (SHARED / "ad01.h5").exists():
        print("== MLPerf Tiny autoencoder, L-inf balls radius 0.01 ==")
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            rep = rng.normal(0, 1, size=(200, 640)).astype(np.float32)
            res = quantize(SHARED / "ad01.h5", rep, Path(d))
            boxes = [Box(c - 0.01, c + 0.01) for c in rep[:2]]
            bench_case("ad01 ball r=0.01", res.float_tflite, res.int8_tflite, boxes,
                       ("interval", "differential"), settings, args.workers)


if __name__ == "__main__":
    main()
