"""Input-cell enumeration: the quantized side exactly, cell by cell, on boxes with few cells.

The device sees a float input only through its int8 quantization, so f_q is constant on each
rounding cell of the input grid: on a box covering N cells, f_q takes at most N values, and the
executor computes every one of them exactly. The float side is bounded per cell by affine bounds
of f over the whole box (from an analysis of the box), maximised over each cell's part of the
box. The bound on a cell is then max over the cell of f minus one exact number: no rounding term,
no relaxation of the int8 graph. Where the box spans a few cells per input, this is far tighter
than any relaxation of the rounding (ACAS Xu near its worst input: 2 cells per input bound 3.4x
the witness by back-substitution).

Soundness of the cover: the device computes round(x / s) in float32; cell k is taken as
x / s in [k - 1/2 - tol, k + 1/2 + tol] (tol as for `symbolic.exact_input`), so every input lies
in the cell of the integer the device picks, whatever its rounding of ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from toolchain.certify import falsify as F
from toolchain.certify.region import Box
from toolchain.certify.result import ErrorBound
from toolchain.certify.settings import DEFAULT
from toolchain.certify.symbolic import Analysis, float_linear_bounds
from toolchain.execute import run
from toolchain.margins import CELL_TOL
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph


def cells_per_input(net: MergedNet, box: Box) -> np.ndarray | None:
    """Number of input cells the box meets along each input (None: the grid is too fine to be
    counted in float64, |x| / s >= 2^22)."""
    s = net.input_scale
    if np.any(np.maximum(np.abs(box.low), np.abs(box.high)) / s >= 2**22):
        return None
    k_lo, k_hi = cell_range(box, s)
    return (k_hi - k_lo + 1).astype(np.int64)


# A box's cells are held in arrays with one axis per input (CellOutputs.q: one more for the outputs), and
# numpy arrays have at most 64 axes: boxes of networks with more inputs are never enumerated (such boxes
# meet astronomically many cells anyway, unless nearly every input is held fixed).
MAX_GRID_INPUTS = 63


def cell_count(net: MergedNet, box: Box) -> float:
    """Cells the box meets (inf when they cannot be counted, or not held in one grid array)."""
    per = cells_per_input(net, box)
    if per is None or per.size > MAX_GRID_INPUTS:
        return float("inf")
    with np.errstate(over="ignore"):  # hundreds of inputs: the count overflows to inf, as it should
        return float(np.prod(per.astype(np.float64)))


def cell_range(box: Box, s: float) -> tuple[np.ndarray, np.ndarray]:
    """First and last cell index per input that a box meets (grid step s; the cover's tolerance)."""
    k_lo = np.floor(box.low / s + 0.5 - CELL_TOL)
    k_hi = np.floor(box.high / s + 0.5 + CELL_TOL)
    return k_lo, k_hi


def _cell_grid(box: Box, s: float) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """The cells a box meets: first index per input, count per input, and every cell's index
    vector (cells, D) in C order of that grid."""
    k_lo, k_hi = cell_range(box, s)
    ks = [np.arange(a, b + 1) for a, b in zip(k_lo, k_hi, strict=True)]
    grids = np.meshgrid(*ks, indexing="ij")
    return k_lo, tuple(k.size for k in ks), np.stack([g.ravel() for g in grids], axis=1)


@dataclass(frozen=True)
class CellOutputs:
    """The device's certified tensor on every input cell a box meets: cell indices k_lo[d] + i
    along input d, q[i_0, ..., i_{D-1}] the int8 output there."""

    k_lo: np.ndarray  # (D,) first cell index per input (cell k: grid value s k)
    q: np.ndarray  # int8 (n_0, ..., n_{D-1}, n_out)

    def sub(self, net: MergedNet, box: Box) -> CellOutputs:
        """The cells of a sub-box (a box inside the one these outputs were computed for)."""
        k_lo, k_hi = cell_range(box, net.input_scale)
        first = (k_lo - self.k_lo).astype(np.int64)
        stop = (k_hi - self.k_lo).astype(np.int64) + 1
        if np.any(first < 0) or np.any(stop > np.array(self.q.shape[:-1])):
            raise ValueError("box is not inside the enumerated box")
        return CellOutputs(k_lo, self.q[tuple(slice(a, b) for a, b in zip(first, stop, strict=True))])


def device_outputs(net: MergedNet, pg: PreparedGraph, box: Box,
                   chunk: int = DEFAULT.cell_chunk) -> CellOutputs:
    """Run the exact executor once per input cell of the box, at the cell's grid value s k (whose
    quantization is k, clamped to int8 as on the device), `chunk` cells per executor call."""
    k_lo, shape, flat = _cell_grid(box, net.input_scale)
    q = np.empty((flat.shape[0], net.n_outputs), dtype=np.int8)
    for at, r in _runs_on_cells(net, pg, flat, False, chunk):
        q[at] = r.output.reshape(at.stop - at.start, -1)
    return CellOutputs(k_lo, q.reshape(shape + (net.n_outputs,)))


def _runs_on_cells(net: MergedNet, pg: PreparedGraph, flat: np.ndarray, keep_intermediates: bool, chunk: int):
    """The executor on cells (their index vectors `flat`, (cells, D)) at their grid values s k, in
    chunks of `chunk` up to the certified tensor: yields (slice of `flat`, Run)."""
    s = net.input_scale
    for start in range(0, flat.shape[0], chunk):
        at = slice(start, min(start + chunk, flat.shape[0]))
        x = s * flat[at]
        yield at, run(pg, F.quantized_input(net, pg, x), keep_intermediates=keep_intermediates,
                      until=net.int8_output_tensor)


def device_ranges(net: MergedNet, pg: PreparedGraph, box: Box,
                  chunk: int = DEFAULT.cell_chunk) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per merged node, the smallest and largest int8 value (zero point removed, LSB units) the
    device's tensor takes on any input cell of the box: exact ranges of the quantized side, from
    the executor run on every cell (at most a few hundred thousand of them, see cell_count).
    None for nodes whose tensor the int8 graph does not hold."""
    return device_ranges_and_outputs(net, pg, box, False, chunk)[0]


def device_ranges_and_outputs(
    net: MergedNet, pg: PreparedGraph, box: Box, with_outputs: bool, chunk: int = DEFAULT.cell_chunk,
) -> tuple[list[tuple[np.ndarray, np.ndarray] | None], CellOutputs | None]:
    """device_ranges and, with `with_outputs`, device_outputs of the same box from one run of the
    executor on its cells."""
    k_lo, shape, flat = _cell_grid(box, net.input_scale)
    index = {t.name: t.index for t in pg.graph.tensors}
    wanted = [index.get(node.tensor) for node in net.nodes]
    lo: list = [None] * len(net.nodes)
    hi: list = [None] * len(net.nodes)
    q = np.empty((flat.shape[0], net.n_outputs), dtype=np.int8) if with_outputs else None
    for at, r in _runs_on_cells(net, pg, flat, True, chunk):
        if q is not None:
            q[at] = r.output.reshape(at.stop - at.start, -1)
        for t, ti in enumerate(wanted):
            if ti is None or ti not in r.tensors or r.tensors[ti].dtype != np.int8:
                continue
            v = r.tensors[ti].reshape(at.stop - at.start, -1).astype(np.int64) - net.nodes[t].zero_point
            lo[t] = v.min(axis=0) if lo[t] is None else np.minimum(lo[t], v.min(axis=0))
            hi[t] = v.max(axis=0) if hi[t] is None else np.maximum(hi[t], v.max(axis=0))
    ranges = [None if a is None else (a, b) for a, b in zip(lo, hi, strict=True)]
    return ranges, None if q is None else CellOutputs(k_lo, q.reshape(shape + (net.n_outputs,)))


def cell_bounds(net: MergedNet, box: Box, analysis: Analysis,
                outputs: CellOutputs) -> tuple[ErrorBound, np.ndarray]:
    """Certified range of y_K - ŷ_K over the box from the device's output on each of its cells, and
    the inputs where it is reached (witness candidates, inside the box).

    `analysis` is the differential analysis of this box alone (a batch of one), or of a box
    enclosing it: its affine bounds of the float output hold on this box too."""
    s = net.input_scale
    shape = outputs.q.shape[:-1]
    ks = [outputs.k_lo[d] + np.arange(n) for d, n in enumerate(shape)]
    # Each cell's part of the box, per input (int8 interfaces: the grid value itself, the only
    # input of the cell the float model is given).
    if net.input_interface == "int8":
        lows = [np.clip(s * k, box.low[d], box.high[d]) for d, k in enumerate(ks)]
        highs = lows
    else:
        lows = [np.maximum(box.low[d], s * (k - 0.5 - CELL_TOL)) for d, k in enumerate(ks)]
        highs = [np.minimum(box.high[d], s * (k + 0.5 + CELL_TOL)) for d, k in enumerate(ks)]
    g_lo, c_lo, g_hi, c_hi = (a[0] for a in float_linear_bounds(net, analysis))
    node = net.nodes[net.output]
    y_min, y_max = (a[0] for a in analysis.nodes[net.output].y(node))
    # max / min of an affine function over a product of intervals is a sum of per-input terms:
    # tabulated per input and cell index along it, (cells along d, n_out) each, stacked.
    dims = range(len(shape))
    tab_hi = np.vstack([np.maximum(np.outer(lows[d], g_hi[:, d]), np.outer(highs[d], g_hi[:, d]))
                        for d in dims])
    tab_lo = np.vstack([np.minimum(np.outer(lows[d], g_lo[:, d]), np.outer(highs[d], g_lo[:, d]))
                        for d in dims])
    first = np.concatenate([[0], np.cumsum(shape)[:-1]]).astype(np.int64)
    e_lo, j_lo, e_hi, j_hi = _cell_extremes(outputs.q.reshape(-1, net.n_outputs), tab_hi, tab_lo, first,
                                            np.array(shape, dtype=np.int64), c_hi, c_lo, y_min, y_max,
                                            float(node.scale), float(node.zero_point))
    candidates = []
    for cells_k, g, toward in ((j_hi, g_hi, 1), (j_lo, g_lo, -1)):
        for k, cell in enumerate(cells_k):
            i = np.unravel_index(cell, shape)
            k_cell = np.array([ks[d][i[d]] for d in range(len(shape))], dtype=np.float64)
            # The vertex where the affine bound is reached, kept strictly inside the cell.
            inner_lo = np.maximum(box.low, s * (k_cell - 0.5 + 2 * CELL_TOL))
            inner_hi = np.minimum(box.high, s * (k_cell + 0.5 - 2 * CELL_TOL))
            inner_hi = np.maximum(inner_hi, inner_lo)
            candidates.append(np.where(toward * g[k] >= 0, inner_hi, inner_lo))
            candidates.append(np.clip(s * k_cell, inner_lo, inner_hi))
    bound = ErrorBound(e_lo, e_hi)
    return bound, np.clip(np.array(candidates), box.low, box.high)


@njit(cache=True, nogil=True)
def _cell_extremes(q, tab_hi, tab_lo, first, shape, c_hi, c_lo, y_min, y_max, scale,
                   zero_point):  # pragma: no cover - compiled
    """Over every cell (q: (cells, n_out) in C order of the grid `shape`), per output: the largest
    min(affine upper bound, y_max) - ŷ and the smallest max(affine lower bound, y_min) - ŷ, and the
    first cell reaching each (numpy's argmax / argmin). The affine bound on a cell is c + the sum over
    inputs d of tab[first[d] + i_d] (in that order), ŷ = scale (q - zero_point): one pass, no
    (cells, n_out) temporaries."""
    cells, n_out = q.shape
    D = shape.size
    at = np.zeros(D, dtype=np.int64)
    e_hi = np.full(n_out, -np.inf)
    e_lo = np.full(n_out, np.inf)
    j_hi = np.zeros(n_out, dtype=np.int64)
    j_lo = np.zeros(n_out, dtype=np.int64)
    for cell in range(cells):
        for o in range(n_out):
            up = 0.0
            lo = 0.0
            for d in range(D):
                up += tab_hi[first[d] + at[d], o]
                lo += tab_lo[first[d] + at[d], o]
            yq = scale * (np.float64(q[cell, o]) - zero_point)
            hi_e = min(c_hi[o] + up, y_max[o]) - yq
            lo_e = max(c_lo[o] + lo, y_min[o]) - yq
            if hi_e > e_hi[o]:
                e_hi[o] = hi_e
                j_hi[o] = cell
            if lo_e < e_lo[o]:
                e_lo[o] = lo_e
                j_lo[o] = cell
        d = D - 1
        while d >= 0:
            at[d] += 1
            if at[d] < shape[d]:
                break
            at[d] = 0
            d -= 1
    return e_lo, j_lo, e_hi, j_hi
