"""Falsifier: real inputs with large errors, found by sampling and local search.

The error y_k(x) - ŷ_k(Q(x)) has two halves: the float side moves with x, the device's side only
with the input cell Q(x). The search steps between cells along the error's gradient (the float
gradient minus that of an int8 surrogate: the int8 side's affine model, rounding straight-through)
over nested sub-boxes (a bigger box starts where a smaller one inside it ends), and puts each
candidate at the edge of its cell where the float gradient points.

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
from toolchain.merge import MergedNet, matmul, matmul_t
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
    evals = (settings.falsify_samples + 1 + o * 12 + o * settings.edge_steps * 4
             + o * settings.falsify_steps * 32 + o * 2 * (settings.edge_starts + 2) * settings.edge_steps * 3)
    f = settings.falsify_work / (evals * per_eval)
    if f >= 1:
        return settings
    return settings.replace(falsify_samples=max(2, int(settings.falsify_samples * f)),
                            falsify_steps=max(1, int(settings.falsify_steps * f)),
                            edge_steps=max(2, int(settings.edge_steps * f)),
                            edge_starts=max(1, int(settings.edge_starts * f)))


def falsify(net: MergedNet, pg: PreparedGraph, box: Box, settings: Settings = DEFAULT,
            seed: int = 0, deadline: float = float("inf")) -> Found:
    """Sample the box (centre, uniform points, vertices: settings.falsify_samples); probe every
    (output, sign) pair with one step of the error's gradient from the centre; run gradient ascent
    on the error over nested sub-boxes for the pairs that promise most (2 x falsify_outputs x
    (edge_starts + 2) x edge_steps steps in all); then a pattern search around the incumbents of
    the falsify_outputs best pairs (falsify_outputs x falsify_steps steps of 32 candidates, most for
    the pairs with the largest errors), down to one input cell; last, float interfaces, the
    falsify_outputs largest witnesses pushed further inside their input cell (2 x edge_steps float
    passes each). All within settings.falsify_work multiply-adds (scaled_plan). `deadline`
    (time.monotonic) is the safety net: past it the remaining searches are skipped and the result
    says so (timed_out)."""
    settings = scaled_plan(net, settings)
    rng = np.random.default_rng(seed)
    samples = settings.falsify_samples
    n_out = net.n_outputs
    batch = eval_batch(net)
    half = max(1, samples // 2)
    pts = np.vstack([box.center[None], box.sample(half, rng), box.corners(half, rng)])
    if net.input_interface == "int8":
        pts = snap_to_input_grid(net, pts, box)
    signed = np.vstack([errors(net, pg, pts[i : i + batch]) for i in range(0, len(pts), batch)])
    errs = np.abs(signed)
    best_idx = errs.argmax(axis=0)
    state = _Incumbents(errs[best_idx, np.arange(n_out)], pts[best_idx].copy())
    o = settings.falsify_outputs
    levels = _levels(net, box)
    # Probe: which (output, sign) pairs promise most (best sample, one ascent step from the centre).
    score = _probe(net, pg, box, signed, levels, 2 * o, state)
    pairs = sorted(score, key=lambda p: -score[p])
    # Ascent: rows = pairs x anchors, as many as the row-step budget allows at two steps per level.
    budget = 2 * o * (settings.edge_starts + 2) * settings.edge_steps
    pattern_steps = o * settings.falsify_steps
    s_min = 2 * len(levels) + 2
    n_anchor = int(np.clip(budget // (o * s_min), 1, settings.edge_starts + 2))
    n_pair = int(np.clip(budget // (n_anchor * s_min), 1, min(2 * o, len(pairs))))
    steps = max(2, budget // (n_pair * n_anchor))
    attack_rng = np.random.default_rng(seed + 7919)
    rows_k, rows_sign, anchors = [], [], []
    for k, sign in pairs[:n_pair]:
        top = np.argsort(-sign * signed[:, k], kind="stable")[: n_anchor - 1]
        a = np.vstack([box.center[None], pts[top], box.sample(1, attack_rng)])[:n_anchor]
        rows_k += [k] * len(a)
        rows_sign += [sign] * len(a)
        anchors.append(a)
    ks, signs, anchor_pts = np.array(rows_k), np.array(rows_sign), np.vstack(anchors)
    best, best_x = np.full(len(ks), -np.inf), anchor_pts.copy()
    for i in range(0, len(ks), batch):
        sl = slice(i, i + batch)
        best[sl], best_x[sl] = ascend(net, pg, box, anchor_pts[sl], ks[sl], signs[sl], levels, steps,
                                      attack_rng, deadline)
    late = time.monotonic() > deadline
    starts: dict[tuple[int, float], tuple[float, np.ndarray, np.ndarray]] = {}
    for k, sign in pairs[:n_pair]:
        mine = np.nonzero((ks == k) & (signs == sign))[0]
        mine = mine[np.argsort(-best[mine], kind="stable")]
        for j in mine:
            state.offer(k, float(best[j]), best_x[j])
        top = np.argsort(-sign * signed[:, k], kind="stable")[:n_anchor]
        # restarts for the pattern search: the best ends of the ascent, then the best samples
        starts[(k, sign)] = (float(best[mine[0]]), np.vstack([best_x[mine], pts[top]]),
                             np.concatenate([best[mine], sign * signed[top, k]]))
    # Pattern search from the pairs that reached the largest errors.
    ranked = sorted(starts.items(), key=lambda kv: -kv[1][0])[:o]
    for ((k, sign), (_, xs0, es0)), n_steps in zip(ranked, _share(ranked, pattern_steps),
                                                     strict=True):
        if time.monotonic() > deadline:
            late = True
            break
        e, x = pattern_search(net, pg, box, xs0, es0, k, sign, n_steps, rng, deadline)
        state.offer(k, e, x)
    # Last, inside the input cell of each of the falsify_outputs largest witnesses, the float side
    # pushed further (the device's side cannot move there).
    if net.input_interface != "int8" and not late:
        ks = np.argsort(-state.lower, kind="stable")[:o]
        xs = state.inputs[ks]
        signs = np.where(errors(net, pg, xs)[np.arange(len(ks)), ks] >= 0, 1.0, -1.0)
        for i in range(0, len(ks), batch):
            sl = slice(i, i + batch)
            pe, px = polish(net, pg, box, xs[sl], ks[sl], signs[sl], 2 * settings.edge_steps, rng)
            for kk, ek, xk in zip(ks[sl], pe, px, strict=True):
                state.offer(int(kk), float(ek), xk)
    return Found(state.lower, state.inputs, errs.max(axis=1), late)


PATTERN_WIDTH = 32  # candidates per pattern-search step


def _share(ranked: list, total: int) -> list[int]:
    """Pattern-search steps per ranked pair, `total` in all: a quarter shared equally, the rest in
    proportion to the error each pair reached (at least one each)."""
    if not ranked:
        return []
    e = np.array([max(v[0], 0.0) for _, v in ranked])
    weights = np.full(len(e), 1.0 / len(e)) if e.sum() <= 0 else e / e.sum()
    return [max(1, int(total / 4 / len(e) + 0.75 * total * wi)) for wi in weights]


class _Incumbents:
    """Best |error| per output and its input."""

    def __init__(self, lower: np.ndarray, inputs: np.ndarray):
        self.lower, self.inputs = lower, inputs

    def offer(self, k: int, e: float, x: np.ndarray) -> None:
        if e > self.lower[k]:
            self.lower[k], self.inputs[k] = e, x.copy()


def eval_batch(net: MergedNet) -> int:
    """Points per evaluation batch: a few million float64 activations at most."""
    return int(np.clip(2**22 // max(1, sum(n.size for n in net.nodes)), 1, 512))


def _levels(net: MergedNet, box: Box) -> list[float]:
    """Radius fractions of the nested sub-boxes, about one input cell doubling up to the whole box
    (at most four levels)."""
    half = box.width / 2
    span = float(np.max(half / net.input_scale)) if np.max(half) > 0 else 1.0
    n = int(np.clip(np.ceil(np.log2(max(span, 1.0))) + 1, 1, 4))
    return [2.0 ** (j - n + 1) for j in range(n)]


def _sub_box(box: Box, anchor: np.ndarray, frac: float, s: float) -> tuple[np.ndarray, np.ndarray]:
    if frac >= 1.0:
        return np.broadcast_to(box.low, anchor.shape), np.broadcast_to(box.high, anchor.shape)
    r = frac * box.width / 2 + s
    return np.maximum(box.low, anchor - r), np.minimum(box.high, anchor + r)


def _probe(net: MergedNet, pg: PreparedGraph, box: Box, signed: np.ndarray, levels: list[float],
           shortlist: int, state: _Incumbents) -> dict[tuple[int, float], float]:
    """Score of each (output, sign) pair: the best of its sampled signed errors and of the errors at
    the corners (smallest sub-box and whole box) the error's gradient at the centre points to."""
    n_out = net.n_outputs
    best = np.stack([signed.max(axis=0), -signed.min(axis=0)], axis=1)  # (n_out, 2)
    ks = np.argsort(-best.max(axis=1), kind="stable")[: min(n_out, shortlist)]
    c = np.repeat(box.center[None], len(ks), axis=0)
    w = np.zeros((len(ks), n_out))
    w[np.arange(len(ks)), ks] = 1.0
    gf, gq = error_gradient(net, c, w)
    d = np.sign(gf - gq)
    score = {}
    for j, sign in enumerate((1.0, -1.0)):
        for frac in sorted({levels[0], 1.0}):
            lo, hi = _sub_box(box, c, frac, net.input_scale)
            cand = cell_edge(net, box, np.clip(c + sign * d * (hi - lo), lo, hi), sign * gf)
            e = sign * errors(net, pg, cand)[np.arange(len(ks)), ks]
            for i, k in enumerate(ks):
                state.offer(int(k), float(e[i]), cand[i])
                best[k, j] = max(best[k, j], e[i])
    for k in ks:
        for j, sign in enumerate((1.0, -1.0)):
            score[(int(k), sign)] = float(best[k, j])
    return score


def cell_edge(net: MergedNet, box: Box, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x moved to the edge of its input cell where g points (the device sees only the cell, the float
    model the point itself); int8 interfaces: the grid point. Inside the box."""
    if net.input_interface == "int8":
        return snap_to_input_grid(net, x, box)
    s = net.input_scale
    return np.clip(s * np.round(x / s) + np.sign(g) * s * (0.5 - 1e-3), box.low, box.high)


def ascend(
    net: MergedNet, pg: PreparedGraph, box: Box, anchors: np.ndarray, ks: np.ndarray, signs: np.ndarray,
    levels: list[float], steps: int, rng: np.random.Generator, deadline: float = float("inf"),
) -> tuple[np.ndarray, np.ndarray]:
    """Sign-gradient ascent on signs[r] * (y_k - ŷ_k) with k = ks[r], from each anchor (row r) over
    nested sub-boxes around it (radius fractions `levels`: about one input cell doubling up to the
    whole box), each level warm-started from the best point of the one inside it; `steps` steps
    per row shared by the levels. The step follows the error's gradient (float gradient minus the
    int8 surrogate's: which cells to move to); each candidate sits at its cell's edge where the
    float gradient points. Returns each row's best measured error and its input."""
    s = net.input_scale
    x = np.clip(anchors, box.low, box.high)
    n_rows = len(x)
    rows = np.arange(n_rows)
    w = np.zeros((n_rows, net.n_outputs))
    w[rows, ks] = signs
    n_levels = min(len(levels), steps)
    fracs = levels[len(levels) - n_levels :]
    per_level = [steps // n_levels + (1 if j < steps % n_levels else 0) for j in range(n_levels)]
    best = np.full(n_rows, -np.inf)
    best_x = x.copy()
    anchor = x.copy()
    # Float interfaces: every other row steps along the float gradient alone, where the surrogate
    # misleads (on the zoo's depthwise CNN the surrogate's rows found 0.041, these 0.115, mean of 6
    # seeds). int8 interfaces move between grid points only: both sides' gradients on every row.
    float_only = (rows % 2 == 1) & (net.input_interface != "int8")
    for frac, n_steps in zip(fracs, per_level, strict=True):
        lo, hi = _sub_box(box, anchor, frac, s)
        x = np.clip(best_x, lo, hi)
        radius = (hi - lo) / 2
        for t in range(n_steps):
            if time.monotonic() > deadline:
                break
            gf, gq = error_gradient(net, x, w)
            cand = cell_edge(net, box, x, gf)  # w carries the sign
            e = signs * errors(net, pg, cand)[rows, ks]
            better = e > best
            best[better], best_x[better] = e[better], cand[better]
            # first move: to the sub-box's corner the gradient points to; then shorter steps from
            # the row's best point, some coordinates against the gradient (the int8 side is rugged)
            d = np.sign(np.where(float_only[:, None], gf, gf - gq))
            if t == 0:
                x = np.clip(x + 2.0 * radius * d, lo, hi)
                continue
            eta = radius * 0.5 ** (t - 1) * rng.uniform(0.5, 1.0, size=(n_rows, 1))
            flip = rng.random(d.shape) < rng.uniform(0.0, 0.5, size=(n_rows, 1))
            base = np.where(better[:, None], x, np.clip(best_x, lo, hi))
            x = np.clip(base + eta * np.where(flip, -d, d), lo, hi)
    return best, best_x


def polish(
    net: MergedNet, pg: PreparedGraph, box: Box, xs: np.ndarray, ks: np.ndarray, signs: np.ndarray,
    steps: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Float interfaces: inside each row's input cell the device's output is fixed, so only the float
    side moves; from the cell's centre, `steps` times: the cell vertex the float gradient of
    signs[r] * y_k (k = ks[r]) points to, then a random step along that gradient. Float passes
    only; the best vertex of each row is then measured (both models). Returns each row's measured
    error (the start's if no vertex beats it) and its input."""
    rows = np.arange(len(xs))
    start = signs * errors(net, pg, xs)[rows, ks]
    y_dev = net.forward_float(xs)[net.output][rows, ks] - signs * start  # the device's ŷ_k in this cell
    s = net.input_scale
    centre = input_grid_point(net, xs)
    # the cell (a hair inside its edges) within the box, and always holding the start
    lo = np.minimum(np.maximum(box.low, centre - s * (0.5 - 1e-3)), xs)
    hi = np.maximum(np.minimum(box.high, centre + s * (0.5 - 1e-3)), xs)
    w = np.zeros((len(xs), net.n_outputs))
    w[rows, ks] = signs
    x = np.clip(centre, lo, hi)
    best, best_x = start.copy(), xs.copy()
    for t in range(steps):
        g = net.float_gradient(x, w)
        v = np.where(g > 0, hi, np.where(g < 0, lo, x))
        val = signs * (net.forward_float(v)[net.output][rows, ks] - y_dev)
        better = val > best
        best[better], best_x[better] = val[better], v[better]
        x = np.clip(x + np.sign(g) * s * 0.5 * 0.7**t * rng.uniform(0.2, 1.0, size=(len(x), 1)), lo, hi)
    measured = signs * errors(net, pg, best_x)[rows, ks]
    keep = measured >= start
    return np.where(keep, measured, start), np.where(keep[:, None], best_x, xs)


def edge_attack(
    net: MergedNet, pg: PreparedGraph, box: Box, starts: np.ndarray, k: int, sign: float,
    rng: np.random.Generator, steps: int = 20,
) -> tuple[float, np.ndarray]:
    """The ascent (`ascend`) on sign * (y_k - ŷ_k) from every start, each candidate at the edge of its
    input cell (int8 interfaces: on the grid). Returns the best measured error and its input."""
    n = len(starts)
    e, x = ascend(net, pg, box, starts, np.full(n, k), np.full(n, sign), _levels(net, box), steps, rng)
    j = int(np.argmax(e))
    return float(e[j]), x[j].copy()


def pattern_search(
    net: MergedNet, pg: PreparedGraph, box: Box, starts: np.ndarray, start_errors: np.ndarray, k: int,
    sign: float, steps: int, rng: np.random.Generator, deadline: float = float("inf"),
    width: int = PATTERN_WIDTH, patience: int = 2,
) -> tuple[float, np.ndarray]:
    """Coordinate pattern search on sign * (y_k - ŷ_k) from starts[0] (with its measured error
    start_errors[0]): each step tries `width` candidates (single-coordinate moves of +-step along
    the largest error-gradient coordinates, and random block moves), each at its cell's edge; the
    step halves on failure down to one input cell, and after `patience` failures there the search
    restarts from the next start. Returns the best measured error and its input."""
    s = net.input_scale
    n = starts.shape[1]
    w = np.zeros((1, net.n_outputs))
    w[0, k] = sign
    best_all, best_x = float(start_errors[0]), starts[0].copy()
    nxt = 0

    def restart(i: int):
        xi = starts[i].copy()
        gf_i, gq_i = error_gradient(net, xi[None], w)
        return xi, float(start_errors[i]), 0.25 * box.width, 0, gf_i, gq_i

    x, best, step, fails, gf, gq = restart(0)
    scans = 0
    for _ in range(steps):
        if time.monotonic() > deadline:
            break
        if fails >= patience and nxt + 1 < len(starts):
            nxt += 1
            x, best, step, fails, gf, gq = restart(nxt)
        g = (gf - gq)[0]
        n_coord = min(n, width // 4)
        coords = np.argsort(-np.abs(g), kind="stable")[:n_coord]
        moves = np.zeros((2 * n_coord, n))
        moves[np.arange(n_coord), coords] = 1.0
        moves[n_coord + np.arange(n_coord), coords] = -1.0
        cand = np.clip(x[None] + moves * np.maximum(step, s), box.low, box.high)
        if n <= width // 4:  # low dimension: also scan one coordinate over the whole box
            i = scans % n
            scans += 1
            line = np.repeat(x[None], width // 2, axis=0)
            line[:, i] = box.low[i] + box.width[i] * (np.arange(width // 2) + rng.random()) / (width // 2)
            cand = np.vstack([cand, line])
        rest = width - len(cand)
        dens = rng.uniform(0, 1, size=(rest, 1))
        block = (rng.random((rest, n)) < np.maximum(dens, 1.0 / n)) * rng.choice((-1.0, 1.0), size=(rest, n))
        # half the random moves follow the gradient's sign where they move
        block[: rest // 2] = np.abs(block[: rest // 2]) * np.sign(g)
        cand = np.vstack([cand, np.clip(x[None] + block * np.maximum(step, s), box.low, box.high)])
        cand = cell_edge(net, box, cand, sign * gf)
        e = sign * errors(net, pg, cand)[:, k]
        j = int(np.argmax(e))
        if e[j] > best:
            x, best = cand[j].copy(), float(e[j])
            gf, gq = error_gradient(net, x[None], w)
            if best > best_all:
                best_all, best_x = best, x.copy()
        elif np.all(step <= s):
            fails += 1
        else:
            step = np.maximum(step * 0.5, s)
    return best_all, best_x


def snap_to_input_grid(net: MergedNet, pts: np.ndarray, box: Box) -> np.ndarray:
    """Round points to the int8 input grid, staying inside the box."""
    s = net.input_scale
    q = np.rint(pts / s)
    x = s * q
    lo = s * np.ceil(box.low / s - 1e-9)
    hi = s * np.floor(box.high / s + 1e-9)
    return np.clip(x, lo, hi)


def input_grid_point(net: MergedNet, xs: np.ndarray) -> np.ndarray:
    """The dequantized int8 input the device computes with for float inputs xs (B, n_in)."""
    s, zp = net.input_scale, net.input_zero_point
    return s * (affine_quantize(xs, s, zp).astype(np.float64) - zp)


def surrogate_int8(net: MergedNet, xhat: np.ndarray) -> tuple[list[np.ndarray | None], list[np.ndarray]]:
    """The int8 side's affine model without its rounding (u = sum A_q ŷ + c_q, ŷ = clamp(u, q_lo, q_hi))
    from the dequantized input xhat: a differentiable stand-in, only a search direction, never a
    reported error."""
    us: list[np.ndarray | None] = [None]
    ys: list[np.ndarray] = [np.asarray(xhat, dtype=np.float64)]
    for node in net.nodes[1:]:
        u = node.c_q[None, :] + sum(matmul_t(ys[i], A) for i, A in zip(node.inputs, node.A_q, strict=True))
        us.append(u)
        if not node.linear_only:  # the device's rounding to its output grid (a straight-through guess)
            u = node.scale * np.round(u / node.scale)
        ys.append(np.clip(u, node.q_lo, node.q_hi))
    return us, ys


def error_gradient(net: MergedNet, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d w.f(x)/dx, d w.f̃_q(x̂)/dx̂) for a batch x (B, n_in) and output weights w (B, n_out): the
    float gradient (moves inside a cell) and the int8 surrogate's gradient at the cell's grid point
    (what moving to another cell does to the device's side)."""
    gf = net.float_gradient(x, w)
    us, _ = surrogate_int8(net, input_grid_point(net, x))
    grads: dict[int, np.ndarray] = {net.output: np.asarray(w, dtype=np.float64)}
    for t in range(net.output, 0, -1):
        if t not in grads:
            continue
        node = net.nodes[t]
        u = us[t]
        assert u is not None
        g = grads.pop(t) * ((u > node.q_lo) & (u < node.q_hi))
        for i, A in zip(node.inputs, node.A_q, strict=True):
            gi = matmul(g, A)
            grads[i] = grads[i] + gi if i in grads else gi
    return gf, grads.get(0, np.zeros_like(x))
