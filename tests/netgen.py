"""Float + int8 graph pairs built directly as IR, without TensorFlow, for the engines' maths tests.

`mlp()` does what a post-training int8 converter does to a chain of Dense layers: it calibrates
every activation tensor on sample inputs (min/max, widened to hold 0), picks asymmetric int8
activations and symmetric int8 weights (per channel or per tensor), int32 biases at scale
s_in * s_w, and fuses the activation into each FULLY_CONNECTED. The two graphs are what the
reader would produce from a float32 file and its int8 sibling; prepare, execute and merge run on
them as on converted files. Seconds instead of a TensorFlow conversion, and every parameter under
the test's control (`calib_scale` < 1 calibrates on a narrower box than the one certified, so
activations saturate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.merge import MergedNet, build
from toolchain.tflite import ir, prepare


@dataclass(frozen=True)
class Pair:
    float_graph: ir.Graph
    int8_graph: ir.Graph

    def net(self, interface: str = "float", rounding: str = "double") -> tuple[MergedNet, prepare.PreparedGraph]:
        pg = prepare.prepare(self.int8_graph, rounding)  # type: ignore[arg-type]
        return build(self.float_graph, pg, interface), pg


_ACT = {"relu": ir.ACT_RELU, "relu6": ir.ACT_RELU6, None: ir.ACT_NONE, "none": ir.ACT_NONE}


def _activation_range(values: np.ndarray) -> tuple[float, int]:
    """(scale, zero_point) of an asymmetric int8 tensor holding [min, max] of the values and 0."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    scale = np.float32((hi - lo) / 255.0)
    zp = int(np.clip(np.round(-128 - lo / float(scale)), -128, 127))
    return float(scale), zp


def _apply(act: str | None, z: np.ndarray) -> np.ndarray:
    if act == "relu":
        return np.maximum(z, 0)
    if act == "relu6":
        return np.clip(z, 0, 6)
    return z


def mlp(sizes: list[int], acts: list[str | None], seed: int = 0, *, low: float = -1.0, high: float = 1.0,
        calib_scale: float = 1.0, per_channel: bool = True, weight_scale: float = 1.0, n_calib: int = 256) -> Pair:
    """A Dense chain sizes[0] -> sizes[1] -> ... with activations acts (one per layer; the last is
    usually None), weights seeded, int8 parameters calibrated on uniform samples of
    [low, high]^n scaled by calib_scale around the box centre."""
    rng = np.random.default_rng(seed)
    Ws, bs = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        Ws.append((rng.normal(size=(n_out, n_in)) * weight_scale / np.sqrt(n_in)).astype(np.float32))
        bs.append((rng.normal(size=n_out) * 0.1).astype(np.float32))
    centre, half = (low + high) / 2, (high - low) / 2 * calib_scale
    x = rng.uniform(centre - half, centre + half, size=(n_calib, sizes[0])).astype(np.float64)
    outs = [x]
    for W, b, act in zip(Ws, bs, acts, strict=True):
        outs.append(_apply(act, outs[-1] @ W.astype(np.float64).T + b))
    qparams = [_activation_range(v) for v in outs]

    f_tensors: list[ir.Tensor] = []
    q_tensors: list[ir.Tensor] = []
    f_ops: list[ir.Operator] = []
    q_ops: list[ir.Operator] = []

    def tensor(pool: list[ir.Tensor], name: str, shape, dtype, quant=None, data=None) -> int:
        pool.append(ir.Tensor(len(pool), name, tuple(shape), dtype, quant, data))
        return len(pool) - 1

    def quant(scale, zp, axis=0) -> ir.Quantization:
        return ir.Quantization(np.atleast_1d(np.asarray(scale, dtype=np.float32)),
                               np.atleast_1d(np.asarray(zp, dtype=np.int64)), axis)

    s0, z0 = qparams[0]
    f_prev = tensor(f_tensors, "input", (1, sizes[0]), "float32")
    q_prev = tensor(q_tensors, "input", (1, sizes[0]), "int8", quant(s0, z0))
    f_in, q_in = f_prev, q_prev
    for k, (W, b, act) in enumerate(zip(Ws, bs, acts, strict=True)):
        n_out = W.shape[0]
        s_in = qparams[k][0]
        s_out, z_out = qparams[k + 1]
        amax = np.abs(W).max(axis=1) if per_channel else np.full(n_out, np.abs(W).max())
        s_w = np.maximum(amax, 1e-9).astype(np.float32) / np.float32(127.0)
        wq = np.clip(np.round(W / s_w[:, None]), -127, 127).astype(np.int8)
        s_b = (np.float64(s_in) * s_w.astype(np.float64)).astype(np.float32)
        bq = np.round(b / s_b).astype(np.int32)
        opts = ir.FullyConnectedOptions(_ACT[act])
        fw = tensor(f_tensors, f"dense_{k}/w", W.shape, "float32", data=W)
        fb = tensor(f_tensors, f"dense_{k}/b", b.shape, "float32", data=b)
        fo = tensor(f_tensors, f"dense_{k}", (1, n_out), "float32")
        f_ops.append(ir.Operator(k, "FULLY_CONNECTED", (f_prev, fw, fb), (fo,), opts))
        w_quant = quant(s_w, np.zeros(n_out)) if per_channel else quant(s_w[:1], [0])
        b_quant = quant(s_b, np.zeros(n_out)) if per_channel else quant(s_b[:1], [0])
        qw = tensor(q_tensors, f"dense_{k}/w", W.shape, "int8", w_quant, wq)
        qb = tensor(q_tensors, f"dense_{k}/b", b.shape, "int32", b_quant, bq)
        qo = tensor(q_tensors, f"dense_{k}", (1, n_out), "int8", quant(s_out, z_out))
        q_ops.append(ir.Operator(k, "FULLY_CONNECTED", (q_prev, qw, qb), (qo,), opts))
        f_prev, q_prev = fo, qo
    fg = ir.Graph(None, tuple(f_tensors), tuple(f_ops), (f_in,), (f_prev,))
    qg = ir.Graph(None, tuple(q_tensors), tuple(q_ops), (q_in,), (q_prev,))
    return Pair(fg, qg)


def tiny(seed: int) -> Pair:
    """Two-input nets small enough to enumerate every int8 input of a box: ReLU then ReLU6, None or
    ReLU, calibrated on [-1, 1]^2 (seed 1: on half of it, so activations saturate)."""
    second = ["relu6", None, "relu"][seed % 3]
    return mlp([2, 6, 5, 2], ["relu", second, None], seed=seed, calib_scale=0.5 if seed == 1 else 1.0)


# --------------------------------------------------------------------------------------------- ground truth


def grid_points(net: MergedNet, box) -> np.ndarray:
    """Every point of the int8 input grid (multiples of the input scale) inside a box, (N, n_in)."""
    s = net.input_scale
    axes = [np.arange(np.ceil(lo / s - 1e-9), np.floor(hi / s + 1e-9) + 1)
            for lo, hi in zip(box.low, box.high, strict=True)]
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1) * s


def exhaustive_max(net: MergedNet, pg, box) -> np.ndarray:
    """max |f - f_q| per output over every int8 input of the box: what no bound may be below."""
    from toolchain.certify import falsify

    return np.abs(falsify.errors(net, pg, grid_points(net, box))).max(axis=0)


def edge_sampled_max(net: MergedNet, pg, box, n: int, seed: int = 0) -> np.ndarray:
    """max |f - f_q| per output over uniform points, vertices, and points on / next to the input
    rounding edges (where the device's input cell changes under the float model)."""
    from toolchain.certify import falsify

    rng = np.random.default_rng(seed)
    s = net.input_scale
    xs = box.sample(n, rng)
    edges = s * (np.round(xs / s - 0.5) + 0.5) + rng.choice([-1e-7, 0.0, 1e-7], size=xs.shape) * s
    xs = np.where(rng.random(xs.shape) < 0.5, edges, xs)
    xs = np.clip(np.vstack([xs, box.corners(n // 4, rng)]), box.low, box.high)
    return np.abs(falsify.errors(net, pg, xs)).max(axis=0)
