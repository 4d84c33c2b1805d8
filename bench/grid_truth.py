"""Which side of a suite case is loose: the error on every input cell of its region, next to the
certified bound and the witness.

    .venv/bin/python bench/grid_truth.py CASE [CASE ...] [--workers 2] [--max-cells 3e8]

For a case of the last `make bench` (bench/out/suite/CASE: its config and its certify output), the
device's int8 graph and the float graph are run on the grid value s k of every input cell k the
region meets (ACAS Xu's property-1 box: 1.2e8 cells, about 7 minutes on 2 cores). The largest
|y - ŷ| found is a lower bound of the true maximum (an error the device does make; inside a cell the
float side can still move by up to its slope times half a cell) and, unlike the falsifier's
witness, it does not depend on a search. Per case: cells, seconds, that grid maximum per output,
the certificate's bound and witness, bound / grid maximum (the looseness of the bound alone) and
witness / grid maximum (how much the falsifier missed). A bound below the grid maximum is a
soundness failure: it is printed as such and the exit code is 1. Cases whose regions meet more
than --max-cells cells are skipped (exit 2 when none is left). Results: bench/out/grid_truth/CASE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per worker process

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from toolchain.certify import cells  # noqa: E402
from toolchain.certify import falsify as F  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.merge import MergedNet, build  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402
from toolchain.tflite.prepare import PreparedGraph  # noqa: E402

SUITE = REPO / "bench" / "out" / "suite"
OUT = REPO / "bench" / "out" / "grid_truth"


def load(case: str) -> tuple[MergedNet, PreparedGraph, Box, dict]:
    """The case's merged network (float interface), prepared int8 graph, region box, certificate."""
    d = SUITE / case
    config = yaml.safe_load((d / "config.yaml").read_text())
    pg = prepare.prepare(reader.read_model(d / "certify" / "model_int8.tflite"))
    interface = config.get("input_interface", "float")
    net = build(reader.read_model(d / "certify" / "model_float.tflite"), pg, interface)
    box_cfg = config["region"]["box"]
    n = net.n_inputs
    box = Box(np.broadcast_to(np.asarray(box_cfg["low"], dtype=np.float64), (n,)).copy(),
              np.broadcast_to(np.asarray(box_cfg["high"], dtype=np.float64), (n,)).copy())
    certificate = json.loads((d / "certify" / "certificate.json").read_text())
    return net, pg, box, certificate


def cell_axes(net: MergedNet, box: Box) -> list[np.ndarray]:
    """Per input, the grid values of the cells the box meets (cells.cell_range), clipped into the box."""
    s = net.input_scale
    k_lo, k_hi = cells.cell_range(box, s)
    return [np.clip(s * np.arange(a, b + 1), lo, hi)
            for a, b, lo, hi in zip(k_lo, k_hi, box.low, box.high, strict=True)]


_CASE: tuple = ()  # (net, pg, axes) of the case a worker process enumerates, loaded once per process


def _load_worker(case: str) -> None:
    global _CASE
    net, pg, box, _ = load(case)
    _CASE = (net, pg, cell_axes(net, box))


def slab(first_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest |y - ŷ| per output, and where, over the cells whose first input is one of
    `first_values` (the rest of the grid in full, one second-input value at a time)."""
    net, pg, axes = _CASE
    best = np.zeros(net.n_outputs)
    where = np.zeros((net.n_outputs, net.n_inputs))
    rest = np.stack([g.ravel() for g in np.meshgrid(*axes[2:], indexing="ij")], axis=1) if len(axes) > 2 \
        else np.zeros((1, 0))
    for v0 in first_values:
        for v1 in (axes[1] if len(axes) > 1 else [None]):
            head = [v0] if v1 is None else [v0, v1]
            x = np.hstack([np.tile(head, (rest.shape[0], 1)), rest])
            e = np.abs(F.errors(net, pg, x))
            j = e.argmax(axis=0)
            top = e[j, np.arange(net.n_outputs)]
            better = top > best
            best[better] = top[better]
            where[better] = x[j[better]]
    return best, where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-cells", type=float, default=3e8)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    unsound = ran = 0
    for case in args.cases:
        if not (SUITE / case / "certify" / "certificate.json").exists():
            print(f"{case}: no suite output in {SUITE / case} (run make bench first)")
            continue
        net, _, box, certificate = load(case)
        n_cells = cells.cell_count(net, box)
        if not n_cells <= args.max_cells:
            print(f"{case}: {n_cells:.3g} cells, more than --max-cells; skipped")
            continue
        ran += 1
        axes = cell_axes(net, box)
        parts = [axes[0][i :: args.workers * 4] for i in range(args.workers * 4)]
        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers, initializer=_load_worker, initargs=(case,)) as pool:
            done = list(pool.map(slab, parts))
        seconds = time.perf_counter() - start
        best = np.max([b for b, _ in done], axis=0)
        k = int(best.argmax())
        where = max(done, key=lambda d: d[0][k])[1][k]
        bound = float(certificate["bound"])
        witness = float(certificate["witness"]["error"]) if certificate.get("witness") else float("nan")
        truth = float(best.max())
        row = {"case": case, "cells": n_cells, "seconds": seconds, "grid_max": truth,
               "grid_max_per_output": best.tolist(), "grid_max_input": where.tolist(), "bound": bound,
               "witness": witness, "bound_over_grid_max": bound / truth if truth > 0 else float("inf"),
               "witness_over_grid_max": witness / truth if truth > 0 else float("nan")}
        (OUT / f"{case}.json").write_text(json.dumps(row, indent=2))
        verdict = "UNSOUND: bound below an error the device makes" if bound < truth else "sound"
        unsound += bound < truth
        print(f"{case}: {n_cells:.3g} cells in {seconds:.0f} s; grid max {truth:.6g}, witness {witness:.6g} "
              f"({row['witness_over_grid_max']:.3f} of it), bound {bound:.6g} "
              f"({row['bound_over_grid_max']:.2f}x it): {verdict}")
    if ran == 0:
        return 2
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
