"""Input vs neuron vs auto branching (settings.branching) at equal work budgets.

    PYTHONPATH=. .venv/bin/python bench/branching_bench.py [--cases acas-1_1,ad01,cnn_depthwise]
        [--modes input,neuron,auto] [--max-boxes N] [--regions K] [--workers 2] [--prepare-only]

Cases are built as bench/suite_cases.py builds them (ACAS Xu 1_1 scores over the property-1 box,
calibrated on the domain; AD01 r = 0.01; zoo cnn_depthwise r = 0.05), quantized once into
bench/out/branching/<case>/ and reused. Every mode runs `--method split` with budget 0 (the search
spends the whole `max_boxes` of every region), so the rows compare what each kind of branching gets out
of the same work. Prints per case and mode: bound, witness, boxes, input and neuron splits, seconds
(time is only measured here, never a stop rule: the time limit is a safety net).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from suite_cases import cases, find_models_dir  # noqa: E402

from toolchain.certify.certifier import certify  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.certify.settings import DEFAULT  # noqa: E402
from toolchain.config import load_config  # noqa: E402
from toolchain.gate.checks import region_boxes  # noqa: E402
from toolchain.pair import load_pair  # noqa: E402
from toolchain.targets import load_target  # noqa: E402

OUT = REPO / "bench" / "out" / "branching"
CASES = {"acas-1_1": "acas-1_1-domain", "ad01": "ad01", "cnn_depthwise": "cnn_depthwise"}


def prepared(name: str):
    """(pair, boxes) of a case: its config written and its models quantized once (cached)."""
    case = {c.id: c for c in cases(find_models_dir())}[CASES.get(name, name)]  # or any suite case id
    d = OUT / name
    config_path = d / "config.yaml"
    if not config_path.exists():
        case.prepare(d, 120.0)
    config = load_config(config_path)
    target = load_target("cortex-m4")
    if config.model is None:
        f, q = config.float_tflite, config.int8_tflite
    else:
        f, q = d / "model_float.tflite", d / "model_int8.tflite"
        if not (f.exists() and q.exists()):
            from toolchain.gate.run import make_models

            models = make_models(config, target, d / "quantized")
            src = models.pair
            f.write_bytes(src.float_bytes)
            q.write_bytes(src.int8_bytes)
    pair = load_pair(f, q, target.rounding, config.input_interface)
    n = pair.int8_graph.input.size
    boxes = [Box(lo, hi) for lo, hi in region_boxes(config, n)]
    return pair, boxes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES), help="short names above or suite case ids")
    ap.add_argument("--modes", default="input,neuron,auto")
    ap.add_argument("--max-boxes", type=int, default=2000)
    ap.add_argument("--regions", type=int, default=1, help="regions of the case certified (the first K)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=600.0)
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args()
    print("| case | branching | bound | witness | U/L | boxes | input splits | neuron splits | dropped "
          "| enumerated | MILP solves | stopped | seconds |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|", sep="\n", flush=True)
    for name in args.cases.split(","):
        pair, boxes = prepared(name)
        if args.prepare_only:
            continue
        for mode in args.modes.split(","):
            settings = DEFAULT.replace(max_boxes=args.max_boxes, time_limit=args.time_limit, branching=mode)
            t0 = time.monotonic()
            c = certify(pair.net, pair.prepared, boxes[: args.regions], budget=0.0, target="cortex-m4",
                        method="split", settings=settings, workers=args.workers)
            dt = time.monotonic() - t0
            w = [r.work for r in c.regions]

            def total(key: str, w=w) -> int:
                return sum(int(x.get(key, 0)) for x in w)

            stopped = ",".join(sorted({r.stopped for r in c.regions}))
            ratio = c.bound / c.witness.error
            print(f"| {name} | {mode} | {c.bound:.6g} | {c.witness.error:.6g} | {ratio:.2f} | "
                  f"{total('boxes')} | {total('input_splits')} | {total('neuron_splits')} | "
                  f"{total('infeasible')} | {total('enumerated')} | {total('milp_solves')} | {stopped} "
                  f"| {dt:.1f} |", flush=True)


if __name__ == "__main__":
    main()
