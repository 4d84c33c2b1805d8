"""How tight can an engine that models rounding as bounded noise be? `differential` vs `interval`
next to the largest error of the differential engine's own model.

The differential engine treats every rounding (input quantization, every requantization, the
output's) as a real term within rho of the noise-free value, |u - v| <= rho, without asking u to
be an integer; it only uses integrality to snap each range's ends to the grid. So it can never
certify less than the largest error of that *noise model*. This bench looks for points of that
model with a large error: the vertex where the engine's own final linear bound is largest (every
input and rounding term at the end its coefficient favours), then signed-gradient ascent in x
with every rounding term set to the side its gradient favours (the best response of a linear
objective), u kept inside the engine's own snapped ranges. Each point is computed forward in
float64 from its x and terms, so the error printed is that of an exact point of the model. The
engine's bound must hold there (checked).

The engine's final linear bound is recomputed here (`bound_vertex`) by the same back-substitution
the engine does (symbolic.py: one `fused.relax` step per node over the analysis' own packed
relaxation lines, then the layer's matrices), written out in this bench so that it can keep what
the engine throws away: the coefficient of every node's rounding term.

Per case: interval bound, differential bound (the certifier's root analysis: every range
tightened), int/diff, witness (a real device error), the noise-model point N, and interval / N:
the most any engine of this model can gain over `interval` (the differential aim asks for 10x).
For nets up to 500 neurons also the MILP's dual bound of the noise model with the output kept an
integer (milp.py, exact_rounding "never", `--milp-nodes` branch-and-bound nodes per solve): the
noise model's optimum lies less than one output LSB above it; and the LP barrier (lp_barrier): the
convex relaxation's best bound with every range re-tightened by LP, under which no engine of
single-neuron relaxations without branching can go.

    .venv/bin/python bench/noise_model_bench.py [--steps 300] [--milp-nodes 2000] [--only cnn_depthwise,ad01]
        [--radii .01,.05] [--no-lp]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from toolchain.certify import falsify, fused, milp  # noqa: E402
from toolchain.certify.falsify import Found  # noqa: E402
from toolchain.certify.region import Box, BoxBatch  # noqa: E402
from toolchain.certify.settings import DEFAULT, Settings  # noqa: E402
from toolchain.certify.symbolic import (  # noqa: E402
    Analysis,
    NodeBounds,
    differential_analysis,
    exact_input,
    interval_analysis,
    upper_bounds,
)
from toolchain.margins import MILP_DUAL_TOL, MILP_PRIMAL_TOL  # noqa: E402
from toolchain.merge import MergedNet, build  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

CASES = {
    "mlp_fused": (0.01, 0.02, 0.05, 0.1),
    "mlp_fused_per_tensor": (0.01, 0.02, 0.05, 0.1),
    "cnn_depthwise": (0.01, 0.05, 0.1),
    "ad01": (0.01,),  # MLPerf Tiny autoencoder (../shared/models), ball around a calibration sample
}
SHARED = REPO.parent / "shared" / "models"
SMALL = 500  # neurons: the MILP bound and the LP barrier only up to this size


def forward(y: np.ndarray, A) -> np.ndarray:
    """y (B, n_in) through A (n_out, n_in), dense or sparse: (B, n_out)."""
    return np.asarray((A @ y.T).T) if sp.issparse(A) else y @ A.T


def backward(g: np.ndarray, A) -> np.ndarray:
    """Row vectors g (R, n_out) pulled back through A (n_out, n_in): g A, (R, n_in)."""
    return np.asarray((A.T @ g.T).T) if sp.issparse(A) else g @ A


def noise_forward(net: MergedNet, analysis: Analysis, x: np.ndarray, eps: list[np.ndarray]):
    """The noise model at inputs x (B, n_in) with rounding terms eps[t] (B, n_t) in [-1, 1] x rho_t:
    u_t = A_q ŷ + c_q + eps_t, kept inside the differential engine's own (grid-snapped) range of u_t
    over the analysis' one box, ŷ_t = clamp(u_t). Returns per node (p, y, u, ŷ)."""
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for t, node in enumerate(net.nodes):
        b = analysis.nodes[t]
        if t == 0:
            p = v = x
        else:
            p = node.c_f + sum(forward(out[i][1], A) for i, A in zip(node.inputs, node.A_f, strict=True))
            v = node.c_q + sum(forward(out[i][3], A) for i, A in zip(node.inputs, node.A_q, strict=True))
        if node.linear_only:
            out.append((p, p, v, v))
            continue
        lo, hi = np.maximum(v - node.noise, b.ul), np.minimum(v + node.noise, b.uh)
        u = np.clip(v + eps[t] * node.noise, lo, hi)
        out.append((p, np.clip(p, node.f_lo, node.f_hi), u, np.clip(u, node.q_lo, node.q_hi)))
    return out


def noise_attack(net: MergedNet, analysis: Analysis, box: Box, starts: np.ndarray, k: int, sign: float,
                 steps: int = 300, seed: int = 0) -> tuple[float, np.ndarray]:
    """Largest sign * (y_k - ŷ_k) found over the noise model: signed-gradient ascent in x (projected
    on the box) with every rounding term set to the side its gradient favours (the best response
    of a linear objective), from each start. Returns (error, input)."""
    rng = np.random.default_rng(seed)
    x = np.clip(starts.astype(np.float64), box.low, box.high)
    B = x.shape[0]
    eps = [rng.uniform(-1, 1, size=(B, n.size)) for n in net.nodes]
    step = 0.05 * box.width
    best, best_x = -np.inf, x[0]
    K = net.output
    for it in range(steps):
        fw = noise_forward(net, analysis, x, eps)
        err = sign * (fw[K][1][:, k] - fw[K][3][:, k])
        j = int(np.argmax(err))
        if err[j] > best:
            best, best_x = float(err[j]), x[j].copy()
        # Backward through both sides: g_f on y, g_q on ŷ.
        g_f = {K: np.zeros((B, net.n_outputs))}
        g_q = {K: np.zeros((B, net.n_outputs))}
        g_f[K][:, k] = sign
        g_q[K][:, k] = -sign
        grad_x = np.zeros_like(x)
        for t in range(K, -1, -1):
            if t not in g_f:
                continue
            node = net.nodes[t]
            p, _, u, _ = fw[t]
            gf, gq = g_f.pop(t), g_q.pop(t)
            if not node.linear_only:
                gf = gf * ((p > node.f_lo) & (p < node.f_hi))
                gq = gq * ((u > node.q_lo) & (u < node.q_hi))
                # Best response of the rounding term: push u the way the objective gains.
                eps[t] = np.where(gq > 0, 1.0, np.where(gq < 0, -1.0, eps[t]))
            if t == 0:
                grad_x = gf + gq
                break
            for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q, strict=True):
                gfi, gqi = backward(gf, Af), backward(gq, Aq)
                g_f[i] = g_f[i] + gfi if i in g_f else gfi
                g_q[i] = g_q[i] + gqi if i in g_q else gqi
        x = np.clip(x + step * np.sign(grad_x), box.low, box.high)
        if it % 50 == 49:
            step = step / 2
    return best, best_x


def rounding_coefficients(net: MergedNet, analysis: Analysis, Lf: np.ndarray,
                          Lq: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The differential engine's linear upper bound of the rows Lf·y_K + Lq·ŷ_K ((R, n_K)) over the
    analysis' one box, as the engine builds it: at each node one `fused.relax` step over the node's
    packed relaxation lines replaces the rows by P·p + U·u (+ constant), then P and U go back
    through the layer's float and int8 matrices. Since u = A_q ŷ + c_q + eps, U is the coefficient
    of the node's rounding term eps (which the engine bounds by |U|·noise). Returns the final
    bound G x + c (G (R, n_in), c (R,), rounding terms at their worst inside c) and U per node."""
    R = Lf.shape[0]
    owner = np.zeros(R, dtype=np.int64)
    const = np.zeros(R)  # raised by every step (fused.relax adds c_f, c_q and |U|·noise)
    lam_f: dict[int, np.ndarray] = {net.output: Lf}
    lam_q: dict[int, np.ndarray] = {net.output: Lq}
    terms: dict[int, np.ndarray] = {}
    for t in range(net.output, -1, -1):
        if t not in lam_f:
            continue
        node = net.nodes[t]
        lf, lq = lam_f.pop(t), lam_q.pop(t)
        lines = analysis.lines[t]
        if lines is None:  # a linear node: p and u are its y and ŷ
            P, U = lf, lq
            const += P @ node.c_f + U @ node.c_q + np.abs(U) @ node.noise
        else:
            P, U = fused.relax(lf, lq, owner, lines.packed, node.c_f, node.c_q, node.noise, const)
        terms[t] = U
        if t == 0:
            # An input whose box lies in one rounding cell is a constant on the int8 side.
            exact, value = (a[0] for a in exact_input(net, analysis.boxes))
            Ue = np.where(exact[None, :], U, 0.0)
            const += Ue @ value - np.abs(Ue) @ node.noise
            return P + U - Ue, const, terms
        for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q, strict=True):
            bf, bq = backward(P, Af), backward(U, Aq)
            lam_f[i] = lam_f[i] + bf if i in lam_f else bf
            lam_q[i] = lam_q[i] + bq if i in lam_q else bq
    raise AssertionError("every path reaches the input node")


def bound_vertex(net: MergedNet, analysis: Analysis, box: Box, k: int, sign: float):
    """The input and rounding terms at which the differential engine's final linear bound of
    sign * (y_k - ŷ_k) is largest: each rounding term at the end its coefficient favours, each
    input at the end of the box its coefficient favours. Returns (x (1, n_in), eps)."""
    n = net.nodes[net.output].size
    Lf, Lq = np.zeros((1, n)), np.zeros((1, n))
    Lf[0, k], Lq[0, k] = sign, -sign
    G, c, terms = rounding_coefficients(net, analysis, Lf, Lq)
    # This is the engine's own bound (before it meets the output layer's interval range).
    mine = float(c[0] + G[0] @ box.center + np.abs(G[0]) @ (box.width / 2))
    engine = float(upper_bounds(net, analysis, net.output, Lf, Lq)[0, 0])
    assert abs(mine - engine) <= 1e-9 * max(1.0, abs(engine)), f"back-substitution {mine} != engine {engine}"
    eps = [np.sign(terms[t]) if t in terms else np.zeros((1, node.size)) for t, node in enumerate(net.nodes)]
    return np.where(G > 0, box.high, box.low), eps


def noise_model_point(net: MergedNet, box: Box, analysis: Analysis, found: Found, steps: int) -> float:
    """The largest |y_k - ŷ_k| found in the noise model for the output with the largest
    differential bound, both signs: the engine's own bound vertex (bound_vertex), then the attack
    from it, the falsifier's witnesses, the centre and random points."""
    k = int(np.argmax(analysis.bound.upper[0]))
    rng = np.random.default_rng(1)
    best = -np.inf
    K = net.output
    for sign in (1.0, -1.0):
        x, eps = bound_vertex(net, analysis, box, k, sign)
        fw = noise_forward(net, analysis, x, eps)
        best = max(best, float(sign * (fw[K][1][0, k] - fw[K][3][0, k])))
        starts = np.vstack([x, found.inputs, box.center[None], box.sample(60, rng)])
        best = max(best, noise_attack(net, analysis, box, starts, k, sign, steps)[0])
    return best


def milp_dual(net: MergedNet, box: Box, analysis: Analysis, settings: Settings,
              nodes: int) -> tuple[float, int]:
    """HiGHS's dual bound of the noise model (hidden rounding continuous; milp.py encoding; no device
    ranges, which would be more than the noise model knows) for the output with the largest
    differential bound: no noise-model engine can need more than this. Returns (bound, nodes used)."""
    res = milp.milp_bounds(net, box, analysis, settings.replace(milp_rel_gap=1e-3), node_limit=nodes,
                           exact_rounding="never")
    return float(res.bound.upper[int(np.argmax(analysis.bound.upper[0]))]), int(res.work["milp_nodes"])


def relaxed_lp(enc: milp.Encoding):
    """The encoding's LP relaxation (every integer continuous) on HiGHS, one thread, the MILP
    engine's tolerances; returns minimise(columns, coefficients) -> optimum (-inf unless optimal)."""
    import highspy

    from toolchain.oracle import quiet_fds

    m = enc.builder
    A = m.csc()
    A.sum_duplicates()
    A.eliminate_zeros()
    with quiet_fds():  # HiGHS prints a banner on fd 1 when constructed
        h = highspy.Highs()
    for key, val in (("output_flag", False), ("threads", 1), ("random_seed", 0),
                     ("primal_feasibility_tolerance", MILP_PRIMAL_TOL),
                     ("dual_feasibility_tolerance", MILP_DUAL_TOL)):
        h.setOptionValue(key, val)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = m.n_col, m.n_row
    lp.col_cost_ = np.zeros(m.n_col)
    lp.col_lower_, lp.col_upper_ = np.concatenate(m.lb), np.concatenate(m.ub)
    lp.row_lower_ = np.concatenate(m.rlo) if m.rlo else np.zeros(0)
    lp.row_upper_ = np.concatenate(m.rhi) if m.rhi else np.zeros(0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    h.passModel(lp)
    n = m.n_col
    cols = np.arange(n, dtype=np.int32)

    def minimise(idx: list[int], coef: list[float]) -> float:
        h.changeColsCost(n, cols, np.zeros(n))
        h.changeColsCost(len(idx), np.array(idx, dtype=np.int32), np.array(coef, dtype=np.float64))
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return -np.inf
        return float(h.getInfo().objective_function_value)

    return minimise


def lp_barrier(net: MergedNet, box: Box, analysis: Analysis) -> float:
    """The best bound of the convex relaxation the engines use, with its ranges at their best.

    LP over the MILP encoding (milp.encode) with every integer relaxed: triangle relaxations of
    each clamp on both sides, rounding as |k - v| <= rho, the difference rows. Before each hidden
    node is encoded for the next, its ranges of p, k and p - k are re-tightened by LP over the
    layers below (one LP per neuron and end) and snapped to the grid again: new NodeBounds (they
    are frozen) in a copy of the analysis. Bounds that fix ranges from one relaxation pass and
    then optimise slopes (CROWN, alpha-CROWN) cannot go below this LP (the "convex barrier" of
    Salman et al., 2019); getting under it needs branching. Its value is the simplex optimum,
    without a margin: an evidence number, not a certificate. Max over outputs and signs."""
    ranges = analysis
    for t in range(2, len(net.nodes)):  # node 1's ranges are exact already (affine in x)
        enc = milp.encode(net, box, ranges)
        minimise = relaxed_lp(enc)
        nv, s, b, node = enc.nodes[t], enc.scales[t], ranges.nodes[t], net.nodes[t]
        assert nv.p is not None and nv.k is not None
        pl, ph, ul, uh, dl, dh = (v.copy() for v in (b.pl, b.ph, b.ul, b.uh, b.dl, b.dh))
        for j in range(node.size):
            p, k = int(nv.p[j]), int(nv.k[j])
            pl[0, j] = max(pl[0, j], s * minimise([p], [1.0]))
            ph[0, j] = min(ph[0, j], -s * minimise([p], [-1.0]))
            ul[0, j] = max(ul[0, j], s * minimise([k], [1.0]))
            uh[0, j] = min(uh[0, j], -s * minimise([k], [-1.0]))
            dl[0, j] = max(dl[0, j], s * minimise([p, k], [1.0, -1.0]))
            dh[0, j] = min(dh[0, j], -s * minimise([p, k], [-1.0, 1.0]))
        tight = NodeBounds(pl, ph, ul, uh, dl, dh, b.exact)
        if not node.linear_only:
            tight = tight.snapped(node)
        ranges = dataclasses.replace(ranges, nodes=ranges.nodes[:t] + (tight,) + ranges.nodes[t + 1:])
    enc = milp.encode(net, box, ranges)
    minimise = relaxed_lp(enc)
    K = net.output
    yk, rk = enc.nodes[K].y, enc.nodes[K].r
    return max(-enc.scales[K] * minimise([int(yk[k]), int(rk[k])], [-sign, sign])
               for k in range(net.n_outputs) for sign in (1.0, -1.0))


def models(only: list[str]) -> dict[str, tuple[Path, Path]]:
    """Float and int8 TFLite files per case: the test zoo (tests/zoo.py) and ad01 converted from
    ../shared/models/ad01.h5 (cached in .cache/ad01)."""
    from zoo import build_zoo

    out = {name: (z.float_tflite, z.int8_tflite) for name, z in build_zoo(REPO / ".cache" / "zoo").items()}
    ad01 = REPO / ".cache" / "ad01"
    if "ad01" in only and (SHARED / "ad01.h5").exists():
        if not (ad01 / "model_int8.tflite").exists():
            from toolchain.quantize import quantize

            rep = np.random.default_rng(0).normal(0, 1, size=(200, 640)).astype(np.float32)
            quantize(SHARED / "ad01.h5", rep, ad01)
        out["ad01"] = (ad01 / "model_float.tflite", ad01 / "model_int8.tflite")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="attack steps per sign")
    ap.add_argument("--milp-nodes", type=int, default=DEFAULT.milp_nodes,
                    help="HiGHS nodes per MILP solve; 0: no MILP bound (never above 500 neurons)")
    ap.add_argument("--no-lp", dest="lp", action="store_false", help="skip the LP barrier (lp_barrier)")
    ap.add_argument("--samples", type=int, default=2000, help="falsifier samples")
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--radii", default=None)
    args = ap.parse_args()
    only = args.only.split(",")
    settings = DEFAULT.replace(falsify_samples=args.samples)
    files = models(only)
    print("| model | r | interval | differential | int/diff | witness | noise-model point N "
          "| noise-model bound | MILP nodes | LP barrier | interval / LP | interval / N | s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in only:
        if name not in files:
            print(f"| {name} | model not found |", flush=True)
            continue
        f, q = files[name]
        pg = prepare.prepare(reader.read_model(q))
        net = build(reader.read_model(f), pg, "float")
        radii = [float(r) for r in args.radii.split(",")] if args.radii else CASES[name]
        small = sum(n.size for n in net.nodes[1:]) <= SMALL
        for r in radii:
            t0 = time.monotonic()
            centre = np.zeros(net.n_inputs)
            if name == "ad01":  # balls around the first calibration sample
                centre = np.random.default_rng(0).normal(0, 1, size=(200, 640))[0].astype(np.float32)
            box = Box(centre - r, centre + r)
            boxes = BoxBatch.of([box])
            ia = interval_analysis(net, boxes)
            da = differential_analysis(net, boxes, settings=settings, full=True)
            found = falsify.falsify(net, pg, box, settings)
            point = noise_model_point(net, box, da, found, args.steps)
            dual, nodes = float("nan"), 0
            if args.milp_nodes > 0 and small:
                dual, nodes = milp_dual(net, box, da, settings, args.milp_nodes)
            lp = lp_barrier(net, box, da) if args.lp and small else float("nan")
            i, d = float(ia.bound.upper.max()), float(da.bound.upper.max())
            k = int(np.argmax(da.bound.upper[0]))
            # A point of the differential engine's own model: its bound must hold there.
            assert point <= da.bound.upper[0, k] * (1 + 1e-9) + 1e-12, "noise-model point above the bound"
            print(f"| {name} | {r} | {i:.4g} | {d:.4g} | {i / d:.1f} | {found.lower.max():.4g} | {point:.4g} "
                  f"| {dual:.4g} | {nodes} | {lp:.4g} | {i / lp:.1f} | {i / point:.1f} "
                  f"| {time.monotonic() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
