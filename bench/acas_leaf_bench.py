"""ACAS Xu 1_1, property-1 box: `auto` bound vs witness in a fixed time on 2 workers.

    .venv/bin/python bench/acas_leaf_bench.py [strategy ...]   (strategies: see STRATEGIES)

Prints one row per strategy: bound, witness, U/L, boxes, seconds. The models are
../shared/models/acasxu_1_1.h5 converted as configs/acasxu.yaml does (calibrated on
configs/data/acasxu_domain.npy), cached in .cache/acas.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from toolchain.certify import split
from toolchain.certify.certifier import certify
from toolchain.certify.settings import DEFAULT
from toolchain.certify.region import Box
from toolchain.merge import build
from toolchain.tflite import prepare, reader

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


REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "acas"


def models() -> tuple[Path, Path]:
    f, q = CACHE / "model_float.tflite", CACHE / "model_int8.tflite"
    if not (f.exists() and q.exists()):
        from toolchain.quantize import quantize

        rep = np.load(REPO / "configs" / "data" / "acasxu_domain.npy").astype(np.float32)
        res = quantize(REPO.parent / "shared" / "models" / "acasxu_1_1.h5", rep, CACHE)
        f, q = res.float_tflite, res.int8_tflite
    return f, q


def run(name: str, time_limit: float = 60.0, workers: int = 2):
    f, q = models()
    fg = reader.read_model(f)
    qg = reader.read_model(q)
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
        pg = prepare.prepare(qg)
        c = certify(build(fg, pg, "float"), pg, [box], budget=0.01, target="cortex-m4", method="auto",
                    settings=DEFAULT.replace(time_limit=time_limit, falsify_samples=2000), workers=workers)
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
