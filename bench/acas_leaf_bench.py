"""ACAS Xu 1_1, property-1 box: `auto` bound vs witness in a fixed time on 2 workers.

    .venv/bin/python bench/acas_leaf_bench.py [strategy ...]   (strategies: see STRATEGIES)

Prints one row per strategy: bound, witness, U/L, boxes, seconds. Models: /tmp/acas/model_*.tflite
(convert ../shared/models/acasxu_1_1.h5 with toolchain.quantize.quantize if missing).
"""

from __future__ import annotations

import functools
import sys
import time

from toolchain.certify import certify, split
from toolchain.certify.region import Box
from toolchain.tflite import reader

# Keyword overrides of split.split_search per strategy ({} = the committed defaults).
STRATEGIES = {
    "default": {},
    "no-cell-enumeration": {"enum_cells": 0},
    "enumerate-below-2^15-cells": {"enum_cells": 2**15},
    "enumerate-below-2^19-cells": {"enum_cells": 2**19},
    "best-of-5-sides": {"split_trials": 5},
    "no-leaf-milp": {"milp_depth": None},
    "cell-edges-at-any-width": {"cell_edge_cells": float("inf")},
}


def run(name: str, time_limit: float = 60.0, workers: int = 2):
    fg = reader.read_model("/tmp/acas/model_float.tflite")
    qg = reader.read_model("/tmp/acas/model_int8.tflite")
    box = Box([0.6, -0.5, -0.5, 0.45, -0.5], [0.6799, 0.5, 0.5, 0.5, -0.45])
    orig = split.split_search
    over = dict(STRATEGIES[name])
    edge_cells = split.CELL_EDGE_CELLS
    split.CELL_EDGE_CELLS = over.pop("cell_edge_cells", edge_cells)
    leaves = {}

    def patched(*a, **kw):
        kw.update(over)
        r = orig(*a, **kw)
        leaves["n"] = r.leaves
        return r

    split.split_search = patched
    try:
        t0 = time.monotonic()
        c = certify(fg, qg, "cortex-m4", [box], budget=0.01, method="auto", time_limit=time_limit,
                    workers=workers, samples=2000)
        dt = time.monotonic() - t0
    finally:
        split.split_search = orig
        split.CELL_EDGE_CELLS = edge_cells
    u, l = c.bound, c.witness.error
    print(f"| {name} | {u:.4f} | {l:.4f} | {u / l:.2f} | {leaves.get('n', '-')} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    names = sys.argv[1:] or list(STRATEGIES)
    print("| strategy | bound | witness | U/L | boxes | seconds |\n|---|---|---|---|---|---|", flush=True)
    for n in names:
        run(n)
