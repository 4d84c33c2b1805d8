"""MILP engine benchmark: generated Dense/ReLU MLPs with 50, 100 and 200 ReLU pairs.

Each net is a Keras Sequential with seeded weights (Glorot init, no training), calibrated on
uniform samples of [-1, 1]^n, converted to float + int8 TFLite, merged with a float input
interface, and certified over boxes of a few widths around a seeded centre. Per case it prints:
the certified MILP upper bound (dual bound + margin, max over outputs), the best incumbent, the
falsifier's witnessed lower bound, the worst per-output relative gap, the differential bound it
starts from, and seconds. Each case is followed by the exact route that does not go through one
big MILP: split with input-cell enumeration (2 workers) until U <= 1.01 L or the time limit.
Numbers belong here and in issue notes, never in tests.

    .venv/bin/python bench/milp_bench.py [--time-limit 60] [--only 50,100] [--widths 0.02,0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.certify import falsify, milp, split, symbolic  # noqa: E402
from toolchain.certify.region import Box  # noqa: E402
from toolchain.merge import build  # noqa: E402
from toolchain.tflite import prepare, reader  # noqa: E402

CACHE = REPO / ".cache" / "milp_bench"
# name: (inputs, hidden widths, outputs, seed); ReLU pairs = sum of hidden widths.
NETS = {
    "50": (4, [25, 25], 3, 0),
    "100": (4, [25, 25, 25, 25], 3, 1),
    "200": (2, [50, 50, 50, 50], 2, 2),
}
WIDTHS = (0.02, 0.1, 0.3)  # half-widths of the boxes (inputs calibrated on [-1, 1])


def convert(name: str):
    """Float and int8 TFLite of one generated net (cached)."""
    n_in, hidden, n_out, seed = NETS[name]
    d = CACHE / f"mlp{name}_{n_in}_{'x'.join(map(str, hidden))}_{n_out}_s{seed}"
    f, q = d / "model_float.tflite", d / "model_int8.tflite"
    if not (f.exists() and q.exists()):
        import keras

        from toolchain.quantize import quantize_keras_model

        keras.utils.set_random_seed(seed)
        layers = [keras.Input((n_in,))] + [keras.layers.Dense(h, activation="relu") for h in hidden]
        model = keras.Sequential(layers + [keras.layers.Dense(n_out)])
        rep = np.random.default_rng(seed).uniform(-1, 1, size=(500, n_in)).astype(np.float32)
        res = quantize_keras_model(model, rep, d)
        f, q = res.float_tflite, res.int8_tflite
    return f, q


def case_boxes(n_in: int, seed: int, widths) -> list[tuple[float, Box]]:
    c = np.random.default_rng(100 + seed).uniform(-0.5, 0.5, size=n_in)
    return [(w, Box(c - w, c + w)) for w in widths]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--only", default=",".join(NETS))
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    print(f"{'pairs':>5s} {'box r':>6s} {'differential':>12s} {'bound':>10s} {'incumbent':>10s} {'witness':>10s} "
          f"{'U/L':>6s} {'gap':>7s} {'seconds':>8s}  status", flush=True)
    for name in args.only.split(","):
        n_in, hidden, n_out, seed = NETS[name]
        fpath, qpath = convert(name)
        pg = prepare.prepare(reader.read_model(qpath))
        net = build(reader.read_model(fpath), pg, "float")
        for w, box in case_boxes(n_in, seed, widths):
            found = falsify.falsify(net, pg, box, samples=args.samples)
            t = time.monotonic()
            a = symbolic.differential_analysis(net, box)
            kw = {"witness": found} if "witness" in milp.milp_bounds.__code__.co_varnames else {}
            res = milp.milp_bounds(net, box, a, time_limit=args.time_limit, pg=pg, **kw)
            sec = time.monotonic() - t
            up = float(np.max(res.upper))
            inc = float(np.max(res.incumbent))
            lo = float(found.lower.max())
            gap = float(np.max(res.gap))
            counts: dict[str, int] = {}
            for s in res.status:
                phase = "int" if "integer" in s else "rel" if "relaxed" in s else "diff"
                what = "opt" if "Optimal" in s else "cut" if "cutoff" in s else "time" if "Time" in s else \
                    "diff" if "differential" in s else "other"
                counts[f"{phase}:{what}"] = counts.get(f"{phase}:{what}", 0) + 1
            st = [f"{k}x{v}" for k, v in sorted(counts.items())] + [f"lsb={net.nodes[net.output].scale:.3g}"]
            print(f"{sum(hidden):5d} {w:6.2f} {float(a.upper.max()):12.5g} {up:10.5g} {inc:10.5g} {lo:10.5g} "
                  f"{up / lo if lo > 0 else float('inf'):6.2f} {gap:7.2%} {sec:8.1f}  {' '.join(st)}", flush=True)
            assert np.all(res.upper >= found.lower), "soundness violation: witness above the MILP bound"
            lower = found.lower.copy()

            def probe(xs, lower=lower):
                np.maximum(lower, np.abs(falsify.errors(net, pg, xs)).max(axis=0), out=lower)

            t = time.monotonic()
            sr = split.split_search(net, box, time_limit=args.time_limit, workers=2, pg=pg, probe=probe, root=a,
                                    target=lambda u, lower=lower: u.max() <= 1.01 * lower.max())
            up, lo = float(sr.upper.max()), float(lower.max())
            print(f"{'':5s} {'':6s} {'split+cells':>12s} {up:10.5g} {'':10s} {lo:10.5g} {up / lo:6.2f} "
                  f"{(up - lo) / up:7.2%} {time.monotonic() - t:8.1f}  boxes={sr.leaves} "
                  f"enumerated={sr.enumerated}", flush=True)
            assert np.all(sr.upper >= lower), "soundness violation: witness above the split bound"


if __name__ == "__main__":
    main()
