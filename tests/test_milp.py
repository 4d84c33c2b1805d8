"""MILP engine (toolchain/certify/milp.py): sound against exhaustive enumeration, exact within one
output LSB, sound when stopped early or with a loose gap, and closing on a 50-ReLU-pair net.

Only generous solver time limits appear here; timings live in bench/milp_bench.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.certify import falsify, milp, symbolic
from toolchain.certify.region import Box
from toolchain.execute import run as run_executor
from toolchain.merge import build
from toolchain.tflite import prepare, reader


def _convert(tmp_path_factory, name, n_in, hidden, n_out, seed, acts=None, rep_scale=1.0):
    import keras

    from toolchain.quantize import quantize_keras_model

    keras.utils.set_random_seed(seed)
    acts = acts or ["relu"] * len(hidden)
    layers = [keras.Input((n_in,))] + [keras.layers.Dense(h, activation=a) for h, a in zip(hidden, acts)]
    model = keras.Sequential(layers + [keras.layers.Dense(n_out)])
    rep = np.random.default_rng(seed).uniform(-1, 1, size=(300, n_in)).astype(np.float32) * rep_scale
    res = quantize_keras_model(model, rep, tmp_path_factory.mktemp(name))
    return reader.read_model(res.float_tflite), prepare.prepare(reader.read_model(res.int8_tflite))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two-input nets small enough to enumerate every int8 input of a box."""
    return {
        0: _convert(tmp_path_factory, "m_tiny0", 2, [8, 6], 2, 10),
        1: _convert(tmp_path_factory, "m_tiny1", 2, [6, 5], 2, 11, acts=["relu", "relu6"], rep_scale=0.5),
    }


@pytest.fixture(scope="module")
def mlp50(tmp_path_factory):
    return _convert(tmp_path_factory, "m_mlp50", 4, [25, 25], 3, 0)


def _exhaustive(net, pg, box):
    s = net.input_scale
    axes = [np.arange(np.ceil(lo / s - 1e-9), np.floor(hi / s + 1e-9) + 1) for lo, hi in zip(box.low, box.high)]
    grid = np.meshgrid(*axes, indexing="ij")
    xs = np.stack([g.ravel() for g in grid], axis=1) * s
    return np.abs(falsify.errors(net, pg, xs)).max(axis=0)


def _int8_case(tiny, seed):
    """A tiny net with int8 inputs, a fixed box snapped to its grid, the exhaustive maximum error over
    every grid point of it and its differential analysis: (net, pg, box, exact, analysis)."""
    fg, pg = tiny[seed]
    net = build(fg, pg, "int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7])).snap_to_grid(net.input_scale, net.input_zero_point)
    return net, pg, box, _exhaustive(net, pg, box), symbolic.differential_analysis(net, box)


def _margin(net, upper):
    s_K = net.nodes[net.output].scale
    return max(milp.MILP_ABS_MARGIN, milp.MILP_LSB_MARGIN * s_K) + milp.MILP_REL_MARGIN * upper


@pytest.mark.tf
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rounding", ["auto", "never"])
def test_exhaustive_int8_inputs(tiny, seed, rounding):
    net, pg, box, exact, a = _int8_case(tiny, seed)
    m = milp.milp_bounds(net, box, a, time_limit=30.0, exact_rounding=rounding)
    assert np.all(np.isfinite(m.upper))
    assert np.all(m.upper >= exact), (m.upper, exact)
    # Exact up to one output LSB (rounding modelled as "any integer within rho"; relaxed hidden
    # rounding) plus the stated tolerance margin.
    lsb = net.nodes[net.output].scale
    assert np.all(m.upper <= exact + lsb + _margin(net, m.upper)), (m.upper, exact, lsb)
    # The incumbent is a point of the integer model: never above the bound.
    assert np.all(m.incumbent <= m.upper)


@pytest.mark.tf
@pytest.mark.parametrize("seed", [0, 1])
def test_device_ranges_cover_every_execution(tiny, seed):
    """cells.device_ranges: on an int8 box they are the exhaustive min / max of every node's int8
    tensor; on a float box no execution at sampled inputs (half of them on or within 1e-7 LSB of
    a rounding edge) leaves them."""
    from toolchain.certify import cells

    fg, pg = tiny[seed]
    index = {t.name: t.index for t in pg.graph.tensors}
    rng = np.random.default_rng(seed)
    for interface in ("int8", "float"):
        net = build(fg, pg, interface)
        box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7]))
        s = net.input_scale
        if interface == "int8":
            box = box.snap_to_grid(s, net.input_zero_point)
            axes = [np.arange(np.rint(lo / s), np.rint(hi / s) + 1) for lo, hi in zip(box.low, box.high)]
            xs = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1) * s
        else:
            xs = box.sample(2000, rng)
            edges = s * (np.round(xs / s - 0.5) + 0.5) + rng.choice([-1e-7, 0.0, 1e-7], size=xs.shape) * s
            xs = np.clip(np.where(rng.random(xs.shape) < 0.5, edges, xs), box.low, box.high)
        ranges = cells.device_ranges(net, pg, box)
        r = run_executor(pg, falsify.quantized_input(net, pg, xs), keep_intermediates=True)
        checked = 0
        for t, node in enumerate(net.nodes):
            if ranges[t] is None:
                continue
            v = r.tensors[index[node.tensor]].reshape(len(xs), -1).astype(np.int64) - node.zero_point
            lo, hi = ranges[t]
            assert np.all(v >= lo) and np.all(v <= hi), (interface, node.name)
            if interface == "int8":
                np.testing.assert_array_equal(lo, v.min(axis=0))
                np.testing.assert_array_equal(hi, v.max(axis=0))
            checked += 1
        assert checked == len(net.nodes)


@pytest.mark.tf
@pytest.mark.parametrize("seed", [0, 1])
def test_device_ranges_keep_milp_sound_and_exact(tiny, seed):
    """With the device's int8 ranges cutting the rounded values' integer ranges, the MILP bound
    still holds against every int8 input of the box (and against edge-sampled float inputs), and
    stays exact within one output LSB."""
    net, pg, box, exact, a = _int8_case(tiny, seed)
    m = milp.milp_bounds(net, box, a, time_limit=8.0, pg=pg)
    assert np.all(m.upper >= exact), (m.upper, exact)
    assert np.all(m.upper <= exact + net.nodes[net.output].scale + _margin(net, m.upper))
    net = build(tiny[seed][0], pg, "float")
    box = Box(np.array([-0.2, -0.1]), np.array([0.15, 0.2]))
    rng = np.random.default_rng(seed)
    s = net.input_scale
    xs = box.sample(4000, rng)
    xs = np.clip(np.where(rng.random(xs.shape) < 0.5, s * (np.round(xs / s - 0.5) + 0.5), xs), box.low, box.high)
    m = milp.milp_bounds(net, box, symbolic.differential_analysis(net, box), time_limit=30.0, pg=pg,
                         exact_rounding="never")
    assert np.all(m.upper >= np.abs(falsify.errors(net, pg, xs)).max(axis=0))


@pytest.mark.tf
def test_loose_gap_and_tiny_time_limit_stay_sound(tiny):
    """A large mip_rel_gap (nodes pruned against the incumbent) and a time limit too short to
    prove anything still give bounds above the exhaustive maximum, finite, never below it."""
    fg, pg = tiny[0]
    net = build(fg, pg, "int8")
    box = Box(np.array([-0.8, -0.8]), np.array([0.8, 0.8])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    a = symbolic.differential_analysis(net, box)
    loose = milp.milp_bounds(net, box, a, time_limit=30.0, rel_gap=0.5, exact_rounding="always")
    assert np.all(loose.upper >= exact), (loose.upper, exact)
    quick = milp.milp_bounds(net, box, a, time_limit=0.01)
    assert np.all(np.isfinite(quick.upper)) and np.all(quick.upper >= exact)
    assert np.all(quick.upper <= a.upper * (1 + 1e-9) + _margin(net, quick.upper))


@pytest.mark.tf
def test_model_point_matches_executor_within_rounding(tiny):
    """The model's forward point (nearest rounding) is feasible and its output error is within a
    couple of LSBs of the device's: a sanity check of the encoding's units and wiring."""
    fg, pg = tiny[0]
    for interface in ("int8", "float"):
        net = build(fg, pg, interface)
        box = Box(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))
        if interface == "int8":
            box = box.snap_to_grid(net.input_scale, net.input_zero_point)
        enc = milp.encode(net, box, symbolic.differential_analysis(net, box))
        xs = box.sample(200, np.random.default_rng(0))
        if interface == "int8":  # the grid points of the (snapped) box
            s = net.input_scale
            xs = np.clip(s * np.rint(xs / s), box.low, box.high)
        sol = milp.assignment(net, enc, xs)
        b = enc.builder
        A = b.csc()
        act = (A @ sol.T).T
        assert np.all(act >= np.concatenate(b.rlo) - 1e-7) and np.all(act <= np.concatenate(b.rhi) + 1e-7)
        assert np.all(sol >= np.concatenate(b.lb) - 1e-9) and np.all(sol <= np.concatenate(b.ub) + 1e-9)
        K = net.output
        d = (sol[:, enc.nodes[K].y] - sol[:, enc.nodes[K].r]) * enc.scales[K]
        real = falsify.errors(net, pg, xs)
        assert np.abs(d - real).max() <= 4 * net.nodes[K].scale


@pytest.mark.slow
@pytest.mark.tf
def test_fifty_relu_pairs_close(mlp50):
    """4 -> 25 -> 25 -> 3 (50 ReLU pairs), float input, small box: every relaxed-rounding solve
    closes (HiGHS optimal at mip_rel_gap 1%) within the generous limit, the bound stays within a
    few output LSBs of a point of the integer model, and no sampled error exceeds it."""
    fg, pg = mlp50
    net = build(fg, pg, "float")
    c = np.random.default_rng(100).uniform(-0.5, 0.5, size=4)
    box = Box(c - 0.02, c + 0.02)
    found = falsify.falsify(net, pg, box, samples=1000)
    a = symbolic.differential_analysis(net, box)
    m = milp.milp_bounds(net, box, a, time_limit=60.0, witness=found, exact_rounding="never")
    assert np.all(m.upper >= found.lower)
    assert all(("Optimal" in s) or ("cutoff" in s) for s in m.status if "relaxed" in s), m.status
    lsb = net.nodes[net.output].scale
    # Relaxing the 50 hidden roundings to [v - rho, v + rho] costs a little over one output LSB
    # against the best point of the integer model here; three LSBs is the generous allowance.
    assert np.all(m.upper <= m.incumbent + 3 * lsb + _margin(net, m.upper)), (m.upper, m.incumbent, lsb)
    seen = np.abs(falsify.errors(net, pg, np.vstack([box.sample(2000, np.random.default_rng(1)),
                                                      box.corners(500, np.random.default_rng(2))]))).max(axis=0)
    assert np.all(m.upper >= seen)
