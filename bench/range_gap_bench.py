"""Where a bound is lost: the differential engine's node ranges against the float network's sampled
ranges, layer by layer, on one region of a config, and how the single-pass bound falls as boxes shrink.

    PYTHONPATH=. python bench/range_gap_bench.py CONFIG [--region K] [--fractions 1,0.25,0.0625]
        [--samples N] [--boxes B]

Per hidden node (one region, the root analysis with `full=True`, as the MILP and the saturation report
get it): the widest float pre-activation range the engine certifies (p), the same on the int8 side (u)
and for their difference (delta), against the widest range `--samples` uniform and corner points reach
(a lower bound of the true width: the ratio is an upper bound of the overestimate), and the share of
neurons the engine must treat as crossing a kink (float ReLU/clamp or int8 clamp). Then the bound with
every rounding term set to zero (not a certificate: it shows how much of the bound the rounding terms
carry). Then, per fraction f, `--boxes` sub-boxes of the region scaled by f in every input at seeded
random places: median and worst single-pass bound (how far input splitting must go before a box's bound
reaches the witness), also with the rounding terms zeroed. Models are converted once and cached
(pickle) in bench/out/range_gap.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.certify.region import Box, BoxBatch  # noqa: E402
from toolchain.certify.settings import DEFAULT  # noqa: E402
from toolchain.certify.symbolic import differential_analysis, settled  # noqa: E402
from toolchain.config import load_config  # noqa: E402
from toolchain.gate.checks import region_boxes  # noqa: E402
from toolchain.merge import MergedNet  # noqa: E402
from toolchain.targets import load_target  # noqa: E402

CACHE = REPO / "bench" / "out" / "range_gap"


def merged_net(config_path: Path) -> MergedNet:
    cache = CACHE / (config_path.parent.name + "-" + config_path.stem + ".pkl")
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    from toolchain.gate.run import make_models

    with tempfile.TemporaryDirectory() as tmp:
        net = make_models(load_config(config_path), load_target("cortex-m4"), Path(tmp)).pair.net
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(net))
    return net


def root(net: MergedNet, box: Box):
    return differential_analysis(net, BoxBatch.of([box]), settings=DEFAULT, full=True,
                                 work=DEFAULT.symbolic_work_root)


def sampled_widths(net: MergedNet, box: Box, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per node, the float pre-activation's sampled range width per neuron (uniform points and vertices)."""
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    for s in range(0, count, 256):
        k = min(256, count - s)
        xs = np.vstack([box.sample(k - k // 2, rng), box.corners(k // 2, rng)])
        ps, _ = net._forward_float(xs)
        for t, p in enumerate(ps):
            if p is None:
                p = xs
            if len(lo) <= t:
                lo.append(p.min(axis=0))
                hi.append(p.max(axis=0))
            else:
                lo[t], hi[t] = np.minimum(lo[t], p.min(axis=0)), np.maximum(hi[t], p.max(axis=0))
    return [h - lw for lw, h in zip(lo, hi, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--region", type=int, default=1, help="which region of the config (1-based)")
    ap.add_argument("--fractions", default="1,0.25,0.0625")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--boxes", type=int, default=16, help="sub-boxes per fraction")
    args = ap.parse_args()
    net = merged_net(args.config)
    lo, hi = region_boxes(load_config(args.config), net.n_inputs)[args.region - 1]
    box = Box(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    rng = np.random.default_rng(0)
    a = root(net, box)
    true_w = sampled_widths(net, box, args.samples, rng)
    print(f"{args.config} region {args.region}: {net.n_inputs} inputs, single-pass bound "
          f"{float(a.bound.upper.max()):.4g}")
    print("| node | neurons | p width (engine) | p width (sampled) | ratio | u width | delta width "
          "| crossing |")
    print("|---|---|---|---|---|---|---|---|")
    for t in range(1, len(net.nodes)):
        node, nb = net.nodes[t], a.nodes[t]
        if node.linear_only:
            continue
        pairs = ((nb.pl, nb.ph), (nb.ul, nb.uh), (nb.dl, nb.dh))
        pw, uw, dw = (float(np.max(h[0] - lw[0])) for lw, h in pairs)
        sw = float(np.max(true_w[t]))
        crossing = float(np.mean(~settled(node, nb)[0]))
        print(f"| {t} | {node.size} | {pw:.4g} | {sw:.4g} | {pw / max(sw, 1e-300):.3g} | {uw:.4g} "
              f"| {dw:.4g} | {crossing:.1%} |")
    quiet = dataclasses.replace(net, nodes=tuple(dataclasses.replace(n, noise=np.zeros_like(n.noise))
                                                 for n in net.nodes))
    print(f"bound with every rounding term zeroed (evidence, not sound): "
          f"{float(root(quiet, box).bound.upper.max()):.4g}")
    print("| fraction | median bound | worst bound | median, rounding terms zeroed (not sound) |")
    print("|---|---|---|---|")
    for f in (float(v) for v in args.fractions.split(",")):
        w = box.width * f
        starts = rng.random((args.boxes if f < 1 else 1, net.n_inputs))
        subs = [Box(box.low + s * (box.width - w), box.low + s * (box.width - w) + w) for s in starts]
        # With the region's symbolic budget per box (a search's boxes get less: symbolic_work_box).
        b, z = (differential_analysis(n, BoxBatch.of(subs), settings=DEFAULT, work=DEFAULT.symbolic_work_root)
                .bound.upper.max(axis=1) for n in (net, quiet))
        print(f"| {f:g} | {np.median(b):.4g} | {np.max(b):.4g} | {np.median(z):.4g} |", flush=True)


if __name__ == "__main__":
    main()
