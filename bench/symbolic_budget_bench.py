"""The differential engine's single pass (the root analysis `--method differential` reports) on a
config's regions, timed, with the symbolic work settings given on the command line: how the
symbolic work budget is spent on deep networks (DS-CNN, ResNet-8). The merged network is cached
(pickle) in --cache (default bench/out/symbolic_budget) so that repeated runs skip the conversion.

    PYTHONPATH=. python bench/symbolic_budget_bench.py configs/dscnn.yaml [--cache DIR] [k=v ...]

k=v: Settings fields (symbolic_work_root=2**36 ...), or threads=N (the root pass's threads, as
`certify --workers N` gives it; the same bound on any number). Prints per region the bound (with margin),
seconds and the work the pass estimated."""

from __future__ import annotations

import hashlib
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> None:
    from toolchain.certify.region import Box, BoxBatch
    from toolchain.certify.settings import DEFAULT
    from toolchain.certify.symbolic import differential_analysis
    from toolchain.config import load_config
    from toolchain.gate.checks import region_boxes
    from toolchain.margins import with_margin
    from toolchain.targets import load_target

    config = Path(argv[0])
    cache_dir = Path(__file__).resolve().parent / "out" / "symbolic_budget"  # bench/out is git-ignored
    changes = {}
    threads = 1
    rest = argv[1:]
    while rest:
        a = rest.pop(0)
        if a == "--cache":
            cache_dir = Path(rest.pop(0))
            continue
        k, v = a.split("=", 1)
        if k == "threads":
            threads = int(v)
            continue
        changes[k] = type(getattr(DEFAULT, k))(eval(v, {}))  # noqa: S307 - a developer's bench
    settings = DEFAULT.replace(**changes)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Keyed by the config's folder, name and text: the suite writes every case's config as config.yaml.
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
    cache = cache_dir / f"{config.parent.name}-{config.stem}-{digest}.pkl"
    cfg = load_config(config)
    if cache.exists():
        net = pickle.loads(cache.read_bytes())
    else:
        from toolchain.gate.run import make_models

        with tempfile.TemporaryDirectory() as tmp:
            net = make_models(cfg, load_target("cortex-m4"), Path(tmp)).pair.net
        cache.write_bytes(pickle.dumps(net))
    boxes = [Box(low=lo, high=hi) for lo, hi in region_boxes(cfg, net.n_inputs)]
    worst = 0.0
    total = 0.0
    for i, box in enumerate(boxes):
        t0 = time.perf_counter()
        a = differential_analysis(net, BoxBatch.of([box]), settings=settings, full=True,
                                  work=settings.symbolic_work_root, threads=threads,
                                  alpha_work=settings.alpha_work_root)
        s = time.perf_counter() - t0
        b = float(np.max(with_margin(a.bound.upper)))
        worst, total = max(worst, b), total + s
        print(f"region {i + 1}: bound {b:.6g}  {s:.1f} s  work {a.work:.3g}", flush=True)
    print(f"{config.stem}: bound {worst:.6g}  {total:.1f} s  {changes} threads={threads}")


if __name__ == "__main__":
    main(sys.argv[1:])
