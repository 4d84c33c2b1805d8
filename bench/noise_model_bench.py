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

Per case: interval bound, differential bound, int/diff, witness (a real device error), the
noise-model point N, and interval / N: the most any engine of this model can gain over
`interval` (the differential aim asks for 10x). For nets up to 500 neurons also the MILP's dual
bound of the noise model with the output kept an integer (milp.py, exact_rounding "never"): the
noise model's optimum lies less than one output LSB above it; and the LP barrier (lp_barrier):
the convex relaxation's best bound with every range re-tightened by LP, under which no engine of
single-neuron relaxations without branching can go.

    .venv/bin/python bench/noise_model_bench.py [--steps 300] [--milp-seconds 30] [--only cnn_depthwise,ad01]
        [--radii .01,.05] [--no-lp]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from toolchain.certify import falsify, milp, symbolic  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.merge import MergedNet, _matmul, build  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

CASES = {
    "mlp_fused": (0.01, 0.02, 0.05, 0.1),
    "mlp_fused_per_tensor": (0.01, 0.02, 0.05, 0.1),
    "cnn_depthwise": (0.01, 0.05, 0.1),
    "ad01": (0.01,),  # MLPerf Tiny autoencoder (../shared/models), ball around a calibration sample
}
SHARED = REPO.parent / "shared" / "models"


def noise_forward(net: MergedNet, analysis: symbolic.Analysis, x: np.ndarray, eps: list[np.ndarray]):
    """The noise model at inputs x (B, n_in) with rounding terms eps[t] (B, n_t) in [-1, 1] x rho_t:
    u_t = A_q ŷ + c_q + eps_t, kept inside the differential engine's own (grid-snapped) range of u_t,
    ŷ_t = clamp(u_t). Returns per node (p, y, u, ŷ)."""
    out = []
    for t, node in enumerate(net.nodes):
        b = analysis.bounds[t]
        if t == 0:
            p = x
            v = x
        else:
            p = node.c_f + sum(_matmul(out[i][1], A) for i, A in zip(node.inputs, node.A_f))
            v = node.c_q + sum(_matmul(out[i][3], A) for i, A in zip(node.inputs, node.A_q))
        if node.linear_only:
            out.append((p, p, v, v))
            continue
        u = np.clip(v + eps[t] * node.noise, np.maximum(v - node.noise, b.ul), np.minimum(v + node.noise, b.uh))
        out.append((p, np.clip(p, node.f_lo, node.f_hi), u, np.clip(u, node.q_lo, node.q_hi)))
    return out


def noise_attack(net, analysis, box: Box, starts: np.ndarray, k: int, sign: float, steps: int = 300,
                 seed: int = 0) -> tuple[float, np.ndarray]:
    """Largest sign * (y_k - ŷ_k) found over the noise model: signed-gradient ascent in x (projected
    on the box) with every rounding term set to the side its gradient favours (the best response
    of a linear objective), from each start. Returns (error, input)."""
    rng = np.random.default_rng(seed)
    x = np.clip(starts.astype(np.float64), box.low, box.high)
    B = x.shape[0]
    eps = [rng.uniform(-1, 1, size=(B, n.size)) for n in net.nodes]
    step = 0.05 * box.width
    best, best_x = -np.inf, x[0]
    for it in range(steps):
        fw = noise_forward(net, analysis, x, eps)
        err = sign * (fw[net.output][1][:, k] - fw[net.output][3][:, k])
        j = int(np.argmax(err))
        if err[j] > best:
            best, best_x = float(err[j]), x[j].copy()
        # Backward through both sides: g_f on y, g_q on ŷ.
        g_f = {net.output: np.zeros((B, net.n_outputs))}
        g_q = {net.output: np.zeros((B, net.n_outputs))}
        g_f[net.output][:, k] = sign
        g_q[net.output][:, k] = -sign
        grad_x = np.zeros_like(x)
        for t in range(net.output, -1, -1):
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
            for i, Af, Aq in zip(node.inputs, node.A_f, node.A_q):
                gfi, gqi = _matmul(gf, Af.T), _matmul(gq, Aq.T)
                g_f[i] = g_f[i] + gfi if i in g_f else gfi
                g_q[i] = g_q[i] + gqi if i in g_q else gqi
        x = np.clip(x + step * np.sign(grad_x), box.low, box.high)
        if it % 50 == 49:
            step = step / 2
    return best, best_x


def bound_vertex(net: MergedNet, analysis: symbolic.Analysis, box: Box, k: int, sign: float):
    """The input and rounding terms at which the differential engine's final linear bound of
    sign * (y_k - ŷ_k) is largest: the same back-substitution, keeping the coefficient of every
    rounding term; each term then sits at the end its coefficient favours and each input at the
    end of the box its coefficient favours. Returns (x (1, n_in), eps)."""
    K = net.output
    n = net.nodes[K].size
    Lf, Lq = np.zeros((1, n)), np.zeros((1, n))
    Lf[0, k], Lq[0, k] = sign, -sign
    P, U, c = symbolic._relax_node(net.nodes[K], analysis.bounds[K], Lf, Lq)
    terms: dict[int, np.ndarray] = {}
    G, _ = symbolic._back_substitute(net, K, P, U, c, analysis.bounds, box, linear=True, rounding_terms=terms)
    eps = [np.sign(terms[t]) if t in terms else np.zeros((1, node.size)) for t, node in enumerate(net.nodes)]
    return np.where(G > 0, box.high, box.low), eps


def noise_model_point(net, box, analysis, found, steps: int) -> float:
    """The largest |y_k - ŷ_k| found in the noise model for the output with the largest
    differential bound, both signs: the engine's own bound vertex (bound_vertex), then the attack
    from it, the falsifier's witnesses, the centre and random points."""
    k = int(np.argmax(analysis.upper))
    rng = np.random.default_rng(1)
    best = -np.inf
    for sign in (1.0, -1.0):
        x, eps = bound_vertex(net, analysis, box, k, sign)
        fw = noise_forward(net, analysis, x, eps)
        best = max(best, float(sign * (fw[net.output][1][0, k] - fw[net.output][3][0, k])))
        starts = np.vstack([x, found.inputs, box.center[None], box.sample(60, rng)])
        best = max(best, noise_attack(net, analysis, box, starts, k, sign, steps)[0])
    return best


def milp_dual(net, box, analysis, seconds: float) -> float:
    """HiGHS's dual bound of the noise model (hidden rounding continuous; milp.py encoding) for the
    output with the largest differential bound: no noise-model engine can need more than this."""
    res = milp.milp_bounds(net, box, analysis, time_limit=seconds, exact_rounding="never", rel_gap=1e-3)
    return float(res.upper[int(np.argmax(analysis.upper))])


def lp_barrier(net: MergedNet, box: Box, analysis: symbolic.Analysis) -> float:
    """The best bound of the convex relaxation the engines use, with its ranges at their best.

    LP over the MILP encoding (milp.encode) with every integer relaxed: triangle relaxations of
    each clamp on both sides, rounding as |k - v| <= rho, the difference rows. Before each hidden
    node is encoded for the next, its ranges of p, k and p - k are re-tightened by LP over the
    layers below (one LP per neuron and end). Bounds that fix ranges from one relaxation pass and
    then optimise slopes (CROWN, alpha-CROWN) cannot go below this LP (the "convex barrier" of
    Salman et al., 2019); getting under it needs branching. Its value is the simplex optimum,
    without a margin: an evidence number, not a certificate. Max over outputs and signs."""
    import copy

    import highspy

    bounds = [copy.deepcopy(b) for b in analysis.bounds]

    def relaxed_lp():
        ranges = symbolic.Analysis(analysis.upper, analysis.err_low, analysis.err_high, bounds)
        enc = milp.encode(net, box, ranges)
        h = milp._highs(enc, None, False)  # HiGHS keeps its first thread count per process
        n = enc.builder.n_col
        cols = np.arange(n, dtype=np.int32)
        h.changeColsIntegrality(n, cols, np.array([highspy.HighsVarType.kContinuous] * n))

        def minimise(idx, coef) -> float:
            h.changeColsCost(n, cols, np.zeros(n))
            h.changeColsCost(len(idx), np.array(idx, dtype=np.int32), np.array(coef, dtype=np.float64))
            h.run()
            return float(h.getInfo().objective_function_value)

        return enc, minimise

    for t in range(2, len(net.nodes)):  # node 1's ranges are exact already (affine in x)
        enc, minimise = relaxed_lp()
        nv, s, b = enc.nodes[t], enc.scales[t], bounds[t]
        for j in range(net.nodes[t].size):
            p, k = int(nv.p[j]), int(nv.k[j])
            b.pl[j] = max(b.pl[j], s * minimise([p], [1.0]))
            b.ph[j] = min(b.ph[j], -s * minimise([p], [-1.0]))
            b.ul[j] = max(b.ul[j], s * minimise([k], [1.0]))
            b.uh[j] = min(b.uh[j], -s * minimise([k], [-1.0]))
            b.dl[j] = max(b.dl[j], s * minimise([p, k], [1.0, -1.0]))
            b.dh[j] = min(b.dh[j], -s * minimise([p, k], [-1.0, 1.0]))
        if not net.nodes[t].linear_only:
            b.snap_to_grid(net.nodes[t])
        b._lines = None
    enc, minimise = relaxed_lp()
    K = net.output
    yk, rk = enc.nodes[K].y, enc.nodes[K].r
    return max(-enc.scales[K] * minimise([int(yk[k]), int(rk[k])], [-sign, sign])
               for k in range(net.n_outputs) for sign in (1.0, -1.0))


def main() -> None:
    from zoo import build_zoo

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="attack steps per sign")
    ap.add_argument("--milp-seconds", type=float, default=30.0, help="0: no MILP bound (never above 500 neurons)")
    ap.add_argument("--no-lp", dest="lp", action="store_false", help="skip the LP barrier (lp_barrier)")
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--radii", default=None)
    args = ap.parse_args()
    zoo = {name: (z.float_tflite, z.int8_tflite) for name, z in build_zoo(REPO / ".cache" / "zoo").items()}
    ad01 = REPO / ".cache" / "ad01"
    if "ad01" in args.only and (SHARED / "ad01.h5").exists():
        if not (ad01 / "model_int8.tflite").exists():  # as bench/run.py converts it
            from toolchain.quantize import quantize

            rep = np.random.default_rng(0).normal(0, 1, size=(200, 640)).astype(np.float32)
            quantize(SHARED / "ad01.h5", rep, ad01)
        zoo["ad01"] = (ad01 / "model_float.tflite", ad01 / "model_int8.tflite")
    print("| model | r | interval | differential | int/diff | witness | noise-model point N | noise-model bound "
          "| LP barrier | interval / LP | interval / N | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
          flush=True)
    for name in args.only.split(","):
        f, q = zoo[name]
        pg = prepare.prepare(reader.read_model(q))
        net = build(reader.read_model(f), pg, "float")
        radii = [float(r) for r in args.radii.split(",")] if args.radii else CASES[name]
        for r in radii:
            t0 = time.monotonic()
            centre = np.zeros(net.n_inputs)
            if name == "ad01":  # balls around the first calibration sample, as bench/run.py
                centre = np.random.default_rng(0).normal(0, 1, size=(200, 640))[0].astype(np.float32)
            box = Box(centre - r, centre + r)
            ia = symbolic.interval_analysis(net, box)
            da = symbolic.differential_analysis(net, box)
            found = falsify.falsify(net, pg, box, samples=2000)
            point = noise_model_point(net, box, da, found, args.steps)
            small = sum(n.size for n in net.nodes[1:]) <= 500
            dual = milp_dual(net, box, da, args.milp_seconds) if args.milp_seconds > 0 and small else float("nan")
            lp = lp_barrier(net, box, da) if args.lp and small else float("nan")
            i, d = float(ia.upper.max()), float(da.upper.max())
            k = int(np.argmax(da.upper))
            # A point of the differential engine's own model: its bound must hold there.
            assert point <= da.upper[k] * (1 + 1e-9) + 1e-12, "noise-model point above the differential bound"
            print(f"| {name} | {r} | {i:.4g} | {d:.4g} | {i / d:.1f} | {found.lower.max():.4g} | {point:.4g} | "
                  f"{dual:.4g} | {lp:.4g} | {i / lp:.1f} | {i / point:.1f} | {time.monotonic() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
