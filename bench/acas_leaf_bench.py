"""Branch-and-bound strategies on the ACAS Xu property-1 box, each with the same work budget.

    .venv/bin/python bench/acas_leaf_bench.py [--max-boxes 2000] [--nets 1_1,2_1] [--method split]
        [strategy ...]

A strategy is a set of `Settings` knobs (STRATEGIES) passed to `certify`; every strategy gets the same
`--max-boxes` boxes (every child box counts), so the rows compare what each gets out of the same
work, not out of the machine's speed. With `--method split` (default) and a budget of 0 the search
always spends the whole budget; `--method auto` stops once the bound is within 1.5x of the witness,
and then the boxes column is the work each strategy needed. Prints one row per net and strategy:
bound, witness, U/L, boxes, cell enumerations, MILP solves, why the search stopped, seconds (the
time limit is only a safety net). The models are ../shared/models/acasxu_<net>.h5 converted as
configs/acasxu.yaml does (softmax kept: the bound is on the logits before it; calibrated on
configs/data/acasxu_domain.npy), cached in .cache/acas. `bench/suite.py --cases 'acas-*'` runs the
eleven networks through the command line with the default settings only; this bench is where the
knobs are compared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.certify.certifier import certify  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.certify.settings import DEFAULT  # noqa: E402
from toolchain.merge import build  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

# Settings overrides per strategy ({} = the committed defaults).
STRATEGIES: dict[str, dict[str, Any]] = {
    "default": {},
    # Settings must be positive: a box of one cell (nothing left to enumerate) is all this still enumerates.
    "no-cell-enumeration": {"enum_cells": 1},
    "enumerate-below-2^15-cells": {"enum_cells": 2**15},
    # ... with room for the device outputs of 2^19 cells x 5 outputs (enum_bytes caps the cells too).
    "enumerate-below-2^19-cells": {"enum_cells": 2**19, "enum_bytes": 2**19 * 8},
    "best-of-5-sides": {"split_trials": 5},
    "no-leaf-milp": {"milp_max_neurons": 1},  # every network is larger: none gets a MILP
    "leaf-milp-from-depth-1-per-input": {"milp_depth_per_input": 1},
    "cell-edges-at-any-width": {"cell_edge_cells": float("inf")},
    "rounds-of-8-boxes": {"round_boxes": 8},
    "rounds-of-128-boxes": {"round_boxes": 128},
}

CACHE = REPO / ".cache" / "acas"
SHARED = REPO.parent / "shared" / "models"
BOX = Box(np.array([0.6, -0.5, -0.5, 0.45, -0.5]), np.array([0.6799, 0.5, 0.5, 0.5, -0.45]))


def models(net: str) -> tuple[Path, Path]:
    d = CACHE if net == "1_1" else CACHE / net  # 1_1 where earlier versions of this bench cached it
    f, q = d / "model_float.tflite", d / "model_int8.tflite"
    if not (f.exists() and q.exists()):
        from toolchain.quantize import quantize

        rep = np.load(REPO / "configs" / "data" / "acasxu_domain.npy").astype(np.float32)
        res = quantize(SHARED / f"acasxu_{net}.h5", rep, d)
        f, q = res.float_tflite, res.int8_tflite
    return f, q


def run(net_name: str, strategy: str, max_boxes: int, method: str, time_limit: float, workers: int) -> None:
    f, q = models(net_name)
    t0 = time.monotonic()
    pg = prepare.prepare(reader.read_model(q))
    net = build(reader.read_model(f), pg, "float")
    settings = DEFAULT.replace(max_boxes=max_boxes, time_limit=time_limit, falsify_samples=2000,
                               **STRATEGIES[strategy])
    c = certify(net, pg, [BOX], budget=0.0, target="cortex-m4", method=method, settings=settings,
                workers=workers)
    dt = time.monotonic() - t0
    work, u, lo = c.regions[0].work, c.bound, c.witness.error
    print(f"| {net_name} | {strategy} | {u:.4f} | {lo:.4f} | {u / lo:.2f} | {work.get('boxes', 1)} | "
          f"{work.get('enumerated', 0)} | {work.get('milp_solves', 0)} | {c.regions[0].stopped} | {dt:.0f} |",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("strategies", nargs="*", help=f"default: all of {', '.join(STRATEGIES)}")
    ap.add_argument("--max-boxes", type=int, default=2000, help="work budget per strategy")
    ap.add_argument("--nets", default="1_1", help="ACAS Xu networks, e.g. 1_1,2_1 (../shared/models)")
    ap.add_argument("--method", default="split", choices=("split", "auto"))
    ap.add_argument("--time-limit", type=float, default=3600.0, help="safety net per certify call")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategy {', '.join(unknown)} (choose from {', '.join(STRATEGIES)})")
    print("| net | strategy | bound | witness | U/L | boxes | enumerated | MILP solves | stopped | seconds |",
          "|---|---|---|---|---|---|---|---|---|---|", sep="\n", flush=True)
    for net_name in args.nets.split(","):
        for strategy in args.strategies or STRATEGIES:
            run(net_name, strategy, args.max_boxes, args.method, args.time_limit, args.workers)


if __name__ == "__main__":
    main()
