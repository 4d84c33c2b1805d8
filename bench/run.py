"""Benchmarks: tightness and speed of every engine next to the interval baseline, and executor speed.

Prints, per case and engine: certified upper U (max over outputs), witnessed lower L, U/L, seconds.
Numbers belong here and in issue notes, never in tests. Run with `make bench` (about 5 minutes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from toolchain.certify import falsify, milp, split, symbolic  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.execute import run  # noqa: E402
from toolchain.merge import build  # noqa: E402
from toolchain.oracle import TflmOracle  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

SHARED = REPO.parent / "shared" / "models"


def row(case: str, engine: str, upper: float, lower: float, seconds: float) -> None:
    ratio = upper / lower if lower > 0 else float("inf")
    print(f"{case:34s} {engine:13s} U={upper:12.6g}  L={lower:10.6g}  U/L={ratio:10.3g}  {seconds:7.2f}s", flush=True)


def bench_case(case: str, float_path: Path, int8_path: Path, boxes: list[Box], engines, time_limit=60.0, workers=2):
    fg, qg = reader.read_model(float_path), reader.read_model(int8_path)
    pg = prepare.prepare(qg)
    net = build(fg, pg, "float")
    for box in boxes:
        t = time.monotonic()
        found = falsify.falsify(net, pg, box, samples=2000)
        lower = float(found.lower.max())
        row(case, "falsifier", lower, lower, time.monotonic() - t)
        for engine in engines:
            t = time.monotonic()
            if engine == "interval":
                up = symbolic.interval_analysis(net, box).upper
            elif engine == "differential":
                up = symbolic.differential_analysis(net, box).upper
            elif engine == "milp":
                a = symbolic.differential_analysis(net, box)
                up = np.minimum(a.upper, milp.milp_bounds(net, box, a, time_limit=time_limit).upper)
            else:  # split: until U <= 1.5 L per output or the time limit
                target = 1.5 * np.maximum(found.lower, 1e-300)
                up = split.split_search(net, box, time_limit=time_limit, target=lambda u: bool(np.all(u <= target)),
                                        workers=workers, pg=pg).upper
            row(case, engine, float(up.max()), lower, time.monotonic() - t)


def bench_auto(case: str, float_path: Path, int8_path: Path, box: Box, time_limit: float, workers: int = 2) -> None:
    """The product's own path: `certify --method auto` (falsifier, differential, split with witness
    probes and leaf MILP), as the gate runs it."""
    from toolchain.certify.certifier import certify
    from toolchain.certify.settings import DEFAULT

    t = time.monotonic()
    pg = prepare.prepare(reader.read_model(int8_path))
    net = build(reader.read_model(float_path), pg, "float")
    cert = certify(net, pg, [box], budget=0.0, target="cortex-m4", method="auto",
                   settings=DEFAULT.replace(time_limit=time_limit), workers=workers)
    row(case, "auto", cert.bound, cert.witness.error, time.monotonic() - t)


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
    print(f"executor speed {label or path.name:32s} batch {batch}: numpy {ours:.4f}s, tflite-micro {tflm:.4f}s, "
          f"ratio tflm/numpy = {ratio:6.1f}x{'' if same else '  OUTPUTS DIFFER'}", flush=True)
    return ratio


def main() -> None:
    from toolchain.quantize import quantize, sample_region
    from zoo import build_zoo

    zoo = build_zoo(REPO / ".cache" / "zoo")
    print("== executor speed vs tflite-micro (batch 256; ratio > 1: the numpy executor is faster) ==")
    ratios = [executor_speed(zoo[name].int8_tflite, label=name) for name in sorted(zoo)]
    for f in ("ad01_int8.tflite", "pretrainedResnet_quant.tflite"):
        if (SHARED / f).exists():
            ratios.append(executor_speed(SHARED / f))
    print(f"executor speed: slowest ratio tflm/numpy = {min(ratios):.1f}x over {len(ratios)} models", flush=True)

    print("== generated models (boxes of radius 0.05 around the centre of the calibration box) ==")
    for name in ("mlp_fused", "mlp_fused_per_tensor", "mlp_saturation", "mlp_big_multiplier", "cnn_depthwise"):
        z = zoo[name]
        n = int(np.prod(reader.read_model(z.int8_tflite).input.shape))
        box = Box(np.full(n, -0.05), np.full(n, 0.05))
        engines = ("interval", "differential", "split") + (("milp",) if n <= 16 else ())
        bench_case(name, z.float_tflite, z.int8_tflite, [box], engines, time_limit=20)

    if (SHARED / "acasxu_1_1.h5").exists():
        print("== ACAS Xu 1_1, property-1 box (logits before SOFTMAX) ==")
        with tempfile.TemporaryDirectory() as d:
            dom_lo = np.array([-0.328, -0.5, -0.5, -0.5, -0.5])
            dom_hi = np.array([0.68, 0.5, 0.5, 0.5, 0.5])
            res = quantize(SHARED / "acasxu_1_1.h5", sample_region(dom_lo, dom_hi, 500, 0), Path(d))
            box = Box([0.6, -0.5, -0.5, 0.45, -0.5], [0.6799, 0.5, 0.5, 0.5, -0.45])
            bench_case("acasxu_1_1 property-1", res.float_tflite, res.int8_tflite, [box],
                       ("interval", "differential", "split"), time_limit=60)
            bench_auto("acasxu_1_1 property-1", res.float_tflite, res.int8_tflite, box, time_limit=60)

    if (SHARED / "ad01.h5").exists():
        print("== MLPerf Tiny autoencoder, L-inf balls radius 0.01 ==")
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            rep = rng.normal(0, 1, size=(200, 640)).astype(np.float32)
            res = quantize(SHARED / "ad01.h5", rep, Path(d))
            centres = rep[:2]
            boxes = [Box(c - 0.01, c + 0.01) for c in centres]
            bench_case("ad01 ball r=0.01", res.float_tflite, res.int8_tflite, boxes,
                       ("interval", "differential"), time_limit=60)


if __name__ == "__main__":
    main()
