"""The certify engines on converted models (the zoo's CNNs, ACAS Xu): bounds above every sampled
error of the exact executor. The engines' maths on IR-built nets is in test_engines.py; these
need TensorFlow once, to build the zoo."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.certify import falsify, symbolic
from toolchain.certify.certifier import certify
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.settings import DEFAULT
from toolchain.margins import with_margin
from toolchain.merge import build
from toolchain.tflite import prepare, reader

# Zoo models whose ops the certify engines support.
CERTIFIABLE = ("mlp_fused", "mlp_fused_per_tensor", "mlp_saturation", "mlp_positive_input", "mlp_big_multiplier",
               "mlp_softmax", "cnn_depthwise")


def _net(zoo_model, interface="float", rounding="double"):
    fg = reader.read_model(zoo_model.float_tflite)
    pg = prepare.prepare(reader.read_model(zoo_model.int8_tflite), rounding)
    return build(fg, pg, interface), pg


def _sampled_max(net, pg, box, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    xs = np.vstack([box.sample(n // 2, rng), box.corners(n // 2, rng)])
    return np.abs(falsify.errors(net, pg, xs)).max(axis=0)


@pytest.mark.tf
@pytest.mark.parametrize("name", CERTIFIABLE)
def test_engines_bound_sampled_errors(zoo, name):
    net, pg = _net(zoo[name])
    lo = np.full(net.n_inputs, -1.0)
    hi = np.full(net.n_inputs, 1.0)
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(3):
        c = rng.uniform(lo, hi)
        r = rng.uniform(0.01, 0.2) * (hi - lo)
        boxes.append(Box(np.maximum(c - r, lo), np.minimum(c + r, hi)))
    batch = BoxBatch.of(boxes)
    diff = symbolic.differential_analysis(net, batch)
    inter = symbolic.interval_analysis(net, batch)
    for i, box in enumerate(boxes):
        seen = _sampled_max(net, pg, box, n=1000)
        assert np.all(with_margin(diff.bound.upper[i]) >= seen), f"{name} differential: {diff.bound.upper[i]} < {seen}"
        assert np.all(with_margin(inter.bound.upper[i]) >= seen), f"{name} interval: {inter.bound.upper[i]} < {seen}"
        assert diff.bound.upper[i].max() <= inter.bound.upper[i].max() * (1 + 1e-9)


@pytest.mark.slow
@pytest.mark.tf
def test_acasxu_property1_box_is_sound(shared_models, tmp_path):
    from toolchain.quantize import quantize, sample_region

    dom_lo = np.array([-0.328, -0.5, -0.5, -0.5, -0.5])
    dom_hi = np.array([0.68, 0.5, 0.5, 0.5, 0.5])
    res = quantize(shared_models / "acasxu_1_1.h5", sample_region(dom_lo, dom_hi, 300, 0), tmp_path)
    pg = prepare.prepare(reader.read_model(res.int8_tflite))
    net = build(reader.read_model(res.float_tflite), pg, "float")
    box = Box(np.array([0.6, -0.5, -0.5, 0.45, -0.5]), np.array([0.6799, 0.5, 0.5, 0.5, -0.45]))
    # A budget no bound meets: the search spends its box budget, down to boxes bounded by their
    # input cells (two worker processes, as the gate runs it).
    cert = certify(net, pg, [box], budget=1e-6, target="cortex-m4", method="auto",
                   settings=DEFAULT.replace(max_boxes=500, falsify_samples=500), workers=2)
    seen = _sampled_max(net, pg, box, n=4000)
    worst = np.array(cert.witness.input)
    seen = np.maximum(seen, _sampled_max(net, pg, Box(np.maximum(worst - 0.01, box.low),
                                                      np.minimum(worst + 0.01, box.high)), n=4000))
    r = cert.regions[0]
    assert r.work["boxes"] >= 500 and r.work["enumerated"] >= 1
    assert all(o.upper >= s for o, s in zip(cert.outputs, seen, strict=True))
    assert "SOFTMAX" in " ".join(cert.notes)
