"""Soundness of the certify engines: bounds above every error the exact executor can produce.

Each engine's certified bound is compared with (a) dense sampling of the bit-exact executor
against the float graph, and (b) for tiny 2-input nets with an int8 interface, the exhaustive
maximum over every int8 input in the box (MILP must then be exact up to its stated slack).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.certify import falsify, milp, split, symbolic
from toolchain.certify.certifier import certify as certify_net
from toolchain.certify.settings import DEFAULT
from toolchain.margins import MILP_ABS_MARGIN, with_margin
from toolchain.certify.region import Box
from toolchain.errors import SoundnessViolation
from toolchain.merge import build
from toolchain.tflite import prepare, reader

ENGINES = ("interval", "differential")
# Zoo models whose ops the certify engines support.
CERTIFIABLE = ("mlp_fused", "mlp_fused_per_tensor", "mlp_saturation", "mlp_positive_input", "mlp_big_multiplier",
               "mlp_softmax", "cnn_depthwise")


def _net(zoo_model, interface="float", rounding="double"):
    fg = reader.read_model(zoo_model.float_tflite)
    pg = prepare.prepare(reader.read_model(zoo_model.int8_tflite), rounding)
    return build(fg, pg, interface), pg


def certify(fg, qg, target, boxes, *, budget, method="auto", time_limit=60.0, samples=1000, workers=1,
            decision=None, input_interface="float"):
    """The certifier on a float + int8 graph pair (net and prepared graph built here)."""
    pg = prepare.prepare(qg)
    net = build(fg, pg, input_interface)
    settings = DEFAULT.replace(time_limit=time_limit, falsify_samples=samples)
    return certify_net(net, pg, boxes, budget=budget, target=target, method=method, settings=settings,
                       workers=workers, decision=decision)


def _sampled_max(net, pg, box, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    xs = np.vstack([box.sample(n // 2, rng), box.corners(n // 2, rng)])
    return np.abs(falsify.errors(net, pg, xs)).max(axis=0)


@pytest.mark.tf
@pytest.mark.parametrize("name", CERTIFIABLE)
def test_engines_bound_sampled_errors(zoo, name):
    net, pg = _net(zoo[name])
    lo, hi = zoo[name].calibration_box if hasattr(zoo[name], "calibration_box") else (-1.0, 1.0)
    lo = np.broadcast_to(np.asarray(lo, dtype=float), (net.n_inputs,))
    hi = np.broadcast_to(np.asarray(hi, dtype=float), (net.n_inputs,))
    rng = np.random.default_rng(1)
    for _ in range(3):
        c = rng.uniform(lo, hi)
        r = rng.uniform(0.01, 0.2) * (hi - lo)
        box = Box(np.maximum(c - r, lo), np.minimum(c + r, hi))
        seen = _sampled_max(net, pg, box, n=1000)
        for engine in ENGINES:
            a = symbolic.interval_analysis(net, box) if engine == "interval" else symbolic.differential_analysis(net, box)
            assert np.all(with_margin(a.upper) >= seen), f"{name} {engine}: bound {a.upper} below sampled {seen}"


@pytest.mark.tf
def test_differential_tighter_than_interval(zoo):
    net, _ = _net(zoo["mlp_fused"])
    box = Box(np.full(net.n_inputs, -0.05), np.full(net.n_inputs, 0.05))
    i = symbolic.interval_analysis(net, box).upper.max()
    d = symbolic.differential_analysis(net, box).upper.max()
    assert d <= i


def _exhaustive(net, pg, box):
    s, zp = net.input_scale, net.input_zero_point
    q0 = np.arange(np.ceil(box.low[0] / s - 1e-9), np.floor(box.high[0] / s + 1e-9) + 1)
    q1 = np.arange(np.ceil(box.low[1] / s - 1e-9), np.floor(box.high[1] / s + 1e-9) + 1)
    g0, g1 = np.meshgrid(q0, q1, indexing="ij")
    xs = np.stack([g0.ravel(), g1.ravel()], axis=1) * s
    return np.abs(falsify.errors(net, pg, xs)).max(axis=0)


@pytest.mark.tf
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_int8_inputs(tiny_nets, seed):
    res = tiny_nets[seed]
    fg = reader.read_model(res.float_tflite)
    pg = prepare.prepare(reader.read_model(res.int8_tflite))
    net = build(fg, pg, "int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    analysis = symbolic.differential_analysis(net, box)
    assert np.all(with_margin(symbolic.interval_analysis(net, box).upper) >= exact)
    assert np.all(with_margin(analysis.upper) >= exact)
    sr = split.split_search(net, box, time_limit=5.0, target=lambda u: False, max_leaves=64)
    assert np.all(with_margin(sr.upper) >= exact)
    # The exact engine on small leaves (every box two splits deep gets a MILP pass).
    sm = split.split_search(net, box, time_limit=8.0, target=lambda u: False, max_leaves=16, milp_depth=2,
                            milp_seconds=1.0)
    assert np.all(with_margin(sm.upper) >= exact)
    m = milp.milp_bounds(net, box, analysis, time_limit=30.0)
    assert np.all(m.upper >= exact), (m.upper, exact)
    # Exact up to the stated margins: the solver tolerance margin, plus the slack of modelling
    # rounding as "any integer within rho" (at most one output LSB where ties are ambiguous).
    out_lsb = net.nodes[net.output].scale
    assert np.all(m.upper <= exact + out_lsb + MILP_ABS_MARGIN + 1e-6), (m.upper, exact, out_lsb)


@pytest.mark.tf
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c0=st.floats(-0.8, 0.8), c1=st.floats(-0.8, 0.8), r=st.floats(0.01, 0.3), seed=st.sampled_from([0, 1, 2]))
def test_random_boxes_float_interface(tiny_nets, c0, c1, r, seed):
    res = tiny_nets[seed]
    net, pg = build(reader.read_model(res.float_tflite), prepare.prepare(reader.read_model(res.int8_tflite)),
                    "float"), prepare.prepare(reader.read_model(res.int8_tflite))
    box = Box(np.array([c0 - r, c1 - r]), np.array([c0 + r, c1 + r]))
    seen = _sampled_max(net, pg, box, n=2000, seed=3)
    assert np.all(with_margin(symbolic.differential_analysis(net, box).upper) >= seen)
    assert np.all(with_margin(symbolic.interval_analysis(net, box).upper) >= seen)


@pytest.mark.tf
def test_certify_end_to_end_and_soundness_stop(tiny_nets, monkeypatch):
    res = tiny_nets[0]
    fg, qg = reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)
    box = Box(np.array([-0.3, -0.3]), np.array([0.3, 0.3]))
    cert = certify(fg, qg, "cortex-m4", [box], budget=1.0, method="auto", time_limit=5, samples=300)
    assert cert.verdict == "pass"
    assert all(o.lower <= o.upper for o in cert.outputs)
    assert cert.witness.error == max(o.lower for o in cert.outputs)
    # A bound below what the executor really produces must stop with a soundness violation.
    real = symbolic.differential_analysis

    def broken(net, b, parent=None):
        a = real(net, b, parent)
        return symbolic.Analysis(a.upper * 0, a.err_low * 0, a.err_high * 0, a.bounds)

    monkeypatch.setattr(symbolic, "differential_analysis", broken)
    with pytest.raises(SoundnessViolation):
        certify(fg, qg, "cortex-m4", [box], budget=1.0, method="differential", time_limit=5, samples=300)


@pytest.mark.slow
@pytest.mark.tf
def test_acasxu_property1_box_is_sound(shared_models, tmp_path):
    from toolchain.quantize import quantize, sample_region

    dom_lo = np.array([-0.328, -0.5, -0.5, -0.5, -0.5])
    dom_hi = np.array([0.68, 0.5, 0.5, 0.5, 0.5])
    res = quantize(shared_models / "acasxu_1_1.h5", sample_region(dom_lo, dom_hi, 300, 0), tmp_path)
    fg, qg = reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)
    box = Box(np.array([0.6, -0.5, -0.5, 0.45, -0.5]), np.array([0.6799, 0.5, 0.5, 0.5, -0.45]))
    # A budget no bound meets: splitting runs to its time limit, down to boxes bounded by their
    # input cells (two worker processes, as the gate runs it).
    cert = certify(fg, qg, "cortex-m4", [box], budget=1e-6, method="auto", time_limit=20, samples=500, workers=2)
    net, pg = build(fg, prepare.prepare(qg), "float"), prepare.prepare(qg)
    seen = _sampled_max(net, pg, box, n=4000)
    worst = Box(*(np.array(v) for v in (cert.witness.input, cert.witness.input)))
    seen = np.maximum(seen, _sampled_max(net, pg, Box(np.maximum(worst.low - 0.01, box.low),
                                                      np.minimum(worst.high + 0.01, box.high)), n=4000))
    assert cert.regions[0].leaves > 100
    assert all(o.upper >= s for o, s in zip(cert.outputs, seen))
    assert "SOFTMAX" in " ".join(cert.notes)


@pytest.mark.tf
def test_top1_decision(tiny_nets):
    from toolchain.certify.decision import top1

    res = tiny_nets[0]
    fg, qg = reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)
    pg = prepare.prepare(qg)
    net = build(fg, pg, "float")
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, size=(4000, 2))
    y = net.forward_float(xs)[net.output]
    gap = np.abs(y[:, 0] - y[:, 1])
    # A point far from the decision boundary: a small box around it is certified.
    x = xs[int(np.argmax(gap))]
    box = Box(x - 1e-3, x + 1e-3)
    d = top1(net, pg, box, symbolic.differential_analysis(net, box))
    assert d["certified"] and not d["refuted"] and d["float_margin"] > 0 and d["int8_margin"] > 0
    # A box across the float decision boundary can never be certified, and is refuted by sampling.
    x = xs[int(np.argmin(gap))]
    box = Box(x - 0.2, x + 0.2)
    d = top1(net, pg, box, symbolic.differential_analysis(net, box))
    assert not d["certified"]
    if d["refuted"]:
        ce = np.array(d["counterexample"])
        assert np.argmax(net.forward_float(ce[None])[net.output][0]) == d["float_class"]


@pytest.mark.tf
def test_saturating_layers_are_named(zoo):
    """A model calibrated on [-0.05, 0.05] and certified on [-0.5, 0.5] saturates: the certificate
    names the layers and channels, and marks those a real input drives past the int8 range."""
    z = zoo["mlp_saturation"]
    fg, qg = reader.read_model(z.float_tflite), reader.read_model(z.int8_tflite)
    n = int(np.prod(qg.input.shape))
    box = Box(np.full(n, -0.5), np.full(n, 0.5))
    cert = certify(fg, qg, "cortex-m4", [box], budget=100.0, method="split", time_limit=5, samples=500)
    sats = cert.regions[0].saturations
    assert sats, "no saturating channel reported"
    assert all(s.float_high > s.int8_high or s.float_low < s.int8_low for s in sats)
    assert any(s.witnessed for s in sats)


@pytest.mark.tf
def test_boxes_at_input_cell_edges(tiny_nets):
    """Boxes hugging an input rounding edge s (k + 1/2): float32 rounding of the sensor value and of
    x / s may put the device on either side; the bound must hold for both."""
    res = tiny_nets[0]
    fg, qg = reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)
    pg = prepare.prepare(qg)
    net = build(fg, pg, "float")
    s = net.input_scale
    rng = np.random.default_rng(5)
    for k in rng.integers(-40, 40, size=6):
        edge = s * (k + 0.5)
        for lo, hi in ((edge - 1e-7 * s, edge), (edge, edge + 1e-7 * s), (edge - 1e-7 * s, edge + 1e-7 * s)):
            box = Box(np.array([lo, 0.1]), np.array([hi, 0.1 + 1e-3]))
            xs = np.vstack([box.sample(200, rng), box.corners(50, rng), [[np.nextafter(np.float32(edge), 0), 0.1]]])
            xs = np.clip(xs, box.low, box.high)
            seen = np.abs(falsify.errors(net, pg, xs)).max(axis=0)
            assert np.all(with_margin(symbolic.differential_analysis(net, box).upper) >= seen)


@pytest.mark.tf
def test_float_gradient_matches_finite_differences(zoo):
    net, _ = _net(zoo["cnn_depthwise"])
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.5, 0.5, size=(3, net.n_inputs))
    w = rng.normal(size=(3, net.n_outputs))
    g = net.float_gradient(x, w)
    h = 1e-6
    for i in rng.integers(0, net.n_inputs, size=12):
        e = np.zeros(net.n_inputs)
        e[i] = h
        f = lambda z: (net.forward_float(z)[net.output] * w).sum(axis=1)  # noqa: E731
        fd = (f(x + e) - f(x - e)) / (2 * h)
        np.testing.assert_allclose(g[:, i], fd, rtol=1e-4, atol=1e-6)


@pytest.mark.tf
@pytest.mark.parametrize("interface", ["float", "int8"])
def test_edge_attack_returns_real_errors(zoo, interface):
    net, pg = _net(zoo["cnn_depthwise"], interface)
    box = Box(np.full(net.n_inputs, -0.05), np.full(net.n_inputs, 0.05))
    if interface == "int8":
        box = box.snap_to_grid(net.input_scale, net.input_zero_point)
    rng = np.random.default_rng(0)
    for k, sign in ((0, 1.0), (2, -1.0)):
        e, x = falsify.edge_attack(net, pg, box, box.sample(4, rng), k, sign, rng, steps=6)
        assert np.all((x >= box.low) & (x <= box.high))
        assert e == pytest.approx(sign * falsify.errors(net, pg, x[None])[0, k], abs=1e-12)
        if interface == "int8":
            np.testing.assert_allclose(x / net.input_scale, np.round(x / net.input_scale), atol=1e-6)
