"""Falsifier: real inputs with large errors, found by sampling and local search.

Every error here is *measured*: the float graph in real arithmetic against the bit-exact int8
executor on the same input (quantized as the device would). The best error per output is the
certificate's witnessed lower bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from toolchain.certify.region import Box
from toolchain.execute import kernels, run
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph


@dataclass(frozen=True)
class Found:
    lower: np.ndarray  # per output: best |error| found
    inputs: np.ndarray  # per output: the input reaching it (n_out, n_in)
    errors_sampled: np.ndarray  # max_k |error| of every sampled input (for histograms)


def quantized_input(net: MergedNet, pg: PreparedGraph, xs: np.ndarray) -> np.ndarray:
    """What the device is fed for float inputs xs (B, n_in)."""
    g = pg.graph
    if g.input.dtype == "float32":  # the graph quantizes itself with a QUANTIZE op
        return xs.astype(np.float32)
    if net.input_interface == "int8":
        q = np.rint(xs / net.input_scale) + net.input_zero_point
        return np.clip(q, -128, 127).astype(np.int8)
    return kernels.affine_quantize(xs, net.input_scale, net.input_zero_point)


def errors(net: MergedNet, pg: PreparedGraph, xs: np.ndarray) -> np.ndarray:
    """y_k(x) - ŷ_k(x) for a batch xs (B, n_in): float graph minus dequantized int8 executor."""
    xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
    y = net.forward_float(xs)[net.output]
    r = run(pg, quantized_input(net, pg, xs), until=net.int8_output_tensor)
    q = r.output.reshape(len(xs), -1).astype(np.float64)
    node = net.nodes[net.output]
    return y - node.scale * (q - node.zero_point)


def falsify(
    net: MergedNet, pg: PreparedGraph, box: Box, samples: int = 2000, seed: int = 0, search_steps: int = 40,
    batch: int = 512, time_limit: float = 30.0, searched_outputs: int = 8,
) -> Found:
    """Sample the box (centre, uniform points, vertices), then hill-climb from the incumbents of
    the `searched_outputs` outputs with the largest errors, within `time_limit` seconds."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    n_out = net.n_outputs
    pts = np.vstack([box.center[None], box.sample(max(1, samples // 2), rng), box.corners(max(1, samples // 2), rng)])
    if net.input_interface == "int8":
        pts = snap_to_input_grid(net, pts, box)
    chunks = []
    for i in range(0, len(pts), batch):
        chunks.append(np.abs(errors(net, pg, pts[i : i + batch])))
        if time.monotonic() - t0 > time_limit / 2:
            break
    errs = np.vstack(chunks)
    pts = pts[: len(errs)]
    best_idx = errs.argmax(axis=0)
    lower = errs[best_idx, np.arange(n_out)]
    inputs = pts[best_idx].copy()
    # Local search per output: random steps around the incumbent, radius shrinking on failure.
    width = box.width
    for k in np.argsort(-lower)[:searched_outputs]:
        x, best = inputs[k].copy(), lower[k]
        radius = 0.25
        for _ in range(search_steps):
            if time.monotonic() - t0 > time_limit:
                break
            cand = x[None] + rng.uniform(-1, 1, size=(32, x.size)) * width * radius
            cand = np.clip(cand, box.low, box.high)
            if net.input_interface == "int8":
                cand = snap_to_input_grid(net, cand, box)
            e = np.abs(errors(net, pg, cand)[:, k])
            j = int(e.argmax())
            if e[j] > best:
                x, best = cand[j], e[j]
            else:
                radius *= 0.7
        lower[k], inputs[k] = best, x
    return Found(lower, inputs, errs.max(axis=1))


def snap_to_input_grid(net: MergedNet, pts: np.ndarray, box: Box) -> np.ndarray:
    """Round points to the int8 input grid, staying inside the box."""
    s = net.input_scale
    q = np.rint(pts / s)
    x = s * q
    lo = s * np.ceil(box.low / s - 1e-9)
    hi = s * np.floor(box.high / s + 1e-9)
    return np.clip(x, lo, hi)
