"""Falsifier: real inputs with large errors, found by sampling and local search.

Every error here is *measured*: the float graph in real arithmetic against the bit-exact int8
executor on the same input (quantized as the device would). The best error per output is the
certificate's witnessed lower bound. The work done is fixed by the settings (samples, steps,
starts) and the seed, never by the clock, so the witness is the same on every machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from toolchain.certify.region import Box
from toolchain.certify.settings import DEFAULT, Settings
from toolchain.execute import run
from toolchain.merge import MergedNet
from toolchain.ops.quantize import affine_quantize
from toolchain.tflite.prepare import PreparedGraph


@dataclass(frozen=True)
class Found:
    lower: np.ndarray  # per output: best |error| found
    inputs: np.ndarray  # per output: the input reaching it (n_out, n_in)
    errors_sampled: np.ndarray  # max_k |error| of every sampled input (for histograms)
    timed_out: bool = False  # the safety-net deadline stopped the search before its work was done


def quantized_input(net: MergedNet, pg: PreparedGraph, xs: np.ndarray) -> np.ndarray:
    """What the device is fed for float inputs xs (B, n_in)."""
    g = pg.graph
    if g.input.dtype == "float32":  # the graph quantizes itself with a QUANTIZE op
        return xs.astype(np.float32)
    if net.input_interface == "int8":
        q = np.rint(xs / net.input_scale) + net.input_zero_point
        return np.clip(q, -128, 127).astype(np.int8)
    return affine_quantize(xs, net.input_scale, net.input_zero_point)


def errors(net: MergedNet, pg: PreparedGraph, xs: np.ndarray) -> np.ndarray:
    """y_k(x) - ŷ_k(x) for a batch xs (B, n_in): float graph minus dequantized int8 executor."""
    xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
    y = net.forward_float(xs)[net.output]
    r = run(pg, quantized_input(net, pg, xs), until=net.int8_output_tensor)
    q = r.output.reshape(len(xs), -1).astype(np.float64)
    node = net.nodes[net.output]
    return y - node.scale * (q - node.zero_point)


def scaled_plan(net: MergedNet, settings: Settings) -> Settings:
    """The falsifier's settings within settings.falsify_work multiply-adds: on a network whose one
    evaluation costs more than the plan's evaluations allow, samples, steps and starts shrink in
    proportion (never to zero). A function of the network's size, not of the machine."""
    from toolchain.certify.symbolic import path_costs

    per_eval = float(path_costs(net)[-1]) + sum(n.size for n in net.nodes)
    o = settings.falsify_outputs
    evals = (settings.falsify_samples + 1 + o * settings.falsify_steps * 32
             + o * 2 * (settings.edge_starts + 2) * settings.edge_steps * 3)
    f = settings.falsify_work / (evals * per_eval)
    if f >= 1:
        return settings
    return settings.replace(falsify_samples=max(2, int(settings.falsify_samples * f)),
                            falsify_steps=max(1, int(settings.falsify_steps * f)),
                            edge_steps=max(2, int(settings.edge_steps * f)),
                            edge_starts=max(1, int(settings.edge_starts * f)))


def falsify(net: MergedNet, pg: PreparedGraph, box: Box, settings: Settings = DEFAULT,
            seed: int = 0, deadline: float = float("inf")) -> Found:
    """Sample the box (centre, uniform points, vertices: settings.falsify_samples), hill-climb from
    the incumbents of the settings.falsify_outputs outputs with the largest errors
    (settings.falsify_steps steps), then attack the input cells' edges from there; all within
    settings.falsify_work multiply-adds (scaled_plan). `deadline` (time.monotonic) is the safety
    net: past it the remaining searches are skipped and the result says so (timed_out)."""
    settings = scaled_plan(net, settings)
    late = False
    rng = np.random.default_rng(seed)
    samples = settings.falsify_samples
    n_out = net.n_outputs
    # Points per evaluation batch: a few million float64 activations at most.
    batch = int(np.clip(2**22 // max(1, sum(n.size for n in net.nodes)), 1, 512))
    half = max(1, samples // 2)
    pts = np.vstack([box.center[None], box.sample(half, rng), box.corners(half, rng)])
    if net.input_interface == "int8":
        pts = snap_to_input_grid(net, pts, box)
    errs = np.vstack([np.abs(errors(net, pg, pts[i : i + batch])) for i in range(0, len(pts), batch)])
    best_idx = errs.argmax(axis=0)
    lower = errs[best_idx, np.arange(n_out)]
    inputs = pts[best_idx].copy()
    # Local search per output: random steps around the incumbent, radius shrinking on failure.
    searched = np.argsort(-lower, kind="stable")[: settings.falsify_outputs]
    width = box.width
    for k in searched:
        x, best = inputs[k].copy(), lower[k]
        radius = 0.25
        for _ in range(settings.falsify_steps):
            if time.monotonic() > deadline:
                late = True
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
    # Then the cell-edge attack from the incumbents and fresh points (its own random stream).
    attack_rng = np.random.default_rng(seed + 7919)
    for k in searched:
        for sign in (1.0, -1.0):
            if time.monotonic() > deadline:
                late = True
                break
            fresh = box.sample(settings.edge_starts, attack_rng)
            starts = np.vstack([inputs[k][None], box.center[None], fresh])
            e, x = edge_attack(net, pg, box, starts, int(k), sign, attack_rng, steps=settings.edge_steps)
            if e > lower[k]:
                lower[k], inputs[k] = e, x
    return Found(lower, inputs, errs.max(axis=1), late)


def edge_attack(
    net: MergedNet, pg: PreparedGraph, box: Box, starts: np.ndarray, k: int, sign: float,
    rng: np.random.Generator, steps: int = 20,
) -> tuple[float, np.ndarray]:
    """Projected gradient ascent on sign * (y_k - ŷ_k) that exploits the input quantization: the
    device sees only the cell of each input, the float model sees the input itself, so each
    candidate puts every input at the edge of its cell on the side the float gradient points to
    (int8 interfaces: on the grid). Returns the best |error| found and its input."""
    s = net.input_scale
    w = np.zeros((len(starts), net.n_outputs))
    w[:, k] = sign
    x = np.clip(starts, box.low, box.high)
    best, best_x = -np.inf, x[0]
    g = np.sign(net.float_gradient(x, w))
    for step in range(steps):
        if step > 0:  # the first candidates are the starting points' own cell edges
            size = np.maximum(0.1 * 0.8**step * box.width, 0.3 * s)
            x = np.clip(x + g * size * rng.random(x.shape), box.low, box.high)
            g = np.sign(net.float_gradient(x, w))
        if net.input_interface == "int8":
            cand = snap_to_input_grid(net, x, box)
        else:
            cand = np.clip(s * np.round(x / s) + g * s * (0.5 - 1e-3), box.low, box.high)
        e = sign * errors(net, pg, cand)[:, k]
        j = int(np.argmax(e))
        if e[j] > best:
            best, best_x = float(e[j]), cand[j].copy()
    return best, best_x


def snap_to_input_grid(net: MergedNet, pts: np.ndarray, box: Box) -> np.ndarray:
    """Round points to the int8 input grid, staying inside the box."""
    s = net.input_scale
    q = np.rint(pts / s)
    x = s * q
    lo = s * np.ceil(box.low / s - 1e-9)
    hi = s * np.floor(box.high / s + 1e-9)
    return np.clip(x, lo, hi)
