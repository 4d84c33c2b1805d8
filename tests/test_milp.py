"""MILP engine (toolchain/certify/milp.py): sound against exhaustive enumeration, exact within one
output LSB, sound when stopped early or with a loose gap, and closing on a 50-ReLU-pair net.

Solves are bounded by HiGHS node limits (deterministic), never by time; the nets are built as IR
(tests/netgen.py), without TensorFlow. Timings live in bench/milp_bench.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import netgen
from toolchain.certify import falsify, milp, symbolic
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.result import STOP_TIME
from toolchain.certify.settings import DEFAULT
from toolchain.execute import run as run_executor
from toolchain.margins import milp_margin

_exhaustive = netgen.exhaustive_max


@pytest.fixture(scope="module")
def tiny():
    """Two-input nets small enough to enumerate every int8 input of a box."""
    return {0: netgen.mlp([2, 8, 6, 2], ["relu", "relu", None], seed=10),
            1: netgen.mlp([2, 6, 5, 2], ["relu", "relu6", None], seed=11, calib_scale=0.5)}


@pytest.fixture(scope="module")
def mlp50():
    return netgen.mlp([4, 25, 25, 3], ["relu", "relu", None], seed=0)


def _analysis(net, box):
    return symbolic.differential_analysis(net, BoxBatch.of([box]), full=True)


def _int8_case(tiny, seed):
    """A tiny net with int8 inputs, a fixed box snapped to its grid, the exhaustive maximum error over
    every grid point of it and its differential analysis: (net, pg, box, exact, analysis)."""
    net, pg = tiny[seed].net("int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7])).snap_to_grid(net.input_scale, net.input_zero_point)
    return net, pg, box, _exhaustive(net, pg, box), _analysis(net, box)


def _margin(net, upper):
    return milp_margin(upper, net.nodes[net.output].scale)


# Node limits large enough for these nets to close (the same on every machine).
CLOSE = DEFAULT.replace(milp_nodes=20000)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rounding", ["auto", "never"])
def test_exhaustive_int8_inputs(tiny, seed, rounding):
    net, pg, box, exact, a = _int8_case(tiny, seed)
    m = milp.milp_bounds(net, box, a, CLOSE, exact_rounding=rounding)
    upper = m.bound.upper
    assert np.all(np.isfinite(upper))
    assert np.all(upper >= exact), (upper, exact)
    # Exact up to one output LSB (rounding modelled as "any integer within rho"; relaxed hidden
    # rounding) plus the stated tolerance margin.
    lsb = net.nodes[net.output].scale
    assert np.all(upper <= exact + lsb + _margin(net, upper)), (upper, exact, lsb)
    # The incumbent is a point of the integer model: never above the bound.
    assert np.all(m.details["incumbent"] <= upper)


@pytest.mark.parametrize("seed", [0, 1])
def test_device_ranges_cover_every_execution(tiny, seed):
    """cells.device_ranges: on an int8 box they are the exhaustive min / max of every node's int8
    tensor; on a float box no execution at sampled inputs (half of them on or within 1e-7 LSB of
    a rounding edge) leaves them."""
    from toolchain.certify import cells

    rng = np.random.default_rng(seed)
    for interface in ("int8", "float"):
        net, pg = tiny[seed].net(interface)
        index = {t.name: t.index for t in pg.graph.tensors}
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


@pytest.mark.parametrize("seed", [0, 1])
def test_device_ranges_keep_milp_sound_and_exact(tiny, seed):
    """With the device's int8 ranges cutting the rounded values' integer ranges, the MILP bound
    still holds against every int8 input of the box (and against edge-sampled float inputs), and
    stays exact within one output LSB."""
    net, pg, box, exact, a = _int8_case(tiny, seed)
    m = milp.milp_bounds(net, box, a, CLOSE, pg=pg)
    upper = m.bound.upper
    assert np.all(upper >= exact), (upper, exact)
    assert np.all(upper <= exact + net.nodes[net.output].scale + _margin(net, upper))
    net, pg = tiny[seed].net("float")
    box = Box(np.array([-0.2, -0.1]), np.array([0.15, 0.2]))
    rng = np.random.default_rng(seed)
    s = net.input_scale
    xs = box.sample(4000, rng)
    xs = np.clip(np.where(rng.random(xs.shape) < 0.5, s * (np.round(xs / s - 0.5) + 0.5), xs), box.low, box.high)
    m = milp.milp_bounds(net, box, _analysis(net, box), CLOSE, pg=pg, exact_rounding="never")
    assert np.all(m.bound.upper >= np.abs(falsify.errors(net, pg, xs)).max(axis=0))


def test_loose_gap_and_tiny_node_limit_stay_sound(tiny):
    """A large mip_rel_gap (nodes pruned against the incumbent) and a node limit too small to
    prove anything still give bounds above the exhaustive maximum, finite, never below it."""
    net, pg = tiny[0].net("int8")
    box = Box(np.array([-0.8, -0.8]), np.array([0.8, 0.8])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    a = _analysis(net, box)
    loose = milp.milp_bounds(net, box, a, DEFAULT.replace(milp_rel_gap=0.5), exact_rounding="always")
    assert np.all(loose.bound.upper >= exact), (loose.bound.upper, exact)
    quick = milp.milp_bounds(net, box, a, node_limit=1)
    assert np.all(np.isfinite(quick.bound.upper)) and np.all(quick.bound.upper >= exact)
    assert np.all(quick.bound.upper <= a.bound.upper[0] * (1 + 1e-9) + _margin(net, quick.bound.upper))


def test_safety_net_bounds_the_whole_call(tiny):
    """`seconds` is one safety net for every solve of the call, not one per solve: with none of it
    left no solve starts, the differential bound (sound) is what comes back, and the result says
    the clock stopped it. (No verdict here depends on how fast the machine is: the net is spent
    before the first solve whatever the speed.)"""
    net, pg = tiny[0].net("int8")
    box = Box(np.array([-0.8, -0.8]), np.array([0.8, 0.8])).snap_to_grid(net.input_scale, net.input_zero_point)
    a = _analysis(net, box)
    m = milp.milp_bounds(net, box, a, seconds=1e-12)
    assert m.stopped == STOP_TIME and m.work["milp_solves"] == 0
    assert all("no time left" in n or "differential bound used" in n for n in m.notes)
    assert np.all(m.bound.upper >= _exhaustive(net, pg, box))
    np.testing.assert_allclose(m.bound.upper, a.bound.upper[0] + _margin(net, a.bound.upper[0]), rtol=1e-12)


def test_node_limit_gives_the_same_bound_twice(tiny):
    """HiGHS on one thread with a fixed seed: a node-limited solve is reproducible."""
    net, pg = tiny[0].net("float")
    box = Box(np.array([-0.7, -0.6]), np.array([0.6, 0.7]))
    a = _analysis(net, box)
    runs = [milp.milp_bounds(net, box, a, node_limit=3, exact_rounding="always") for _ in range(2)]
    np.testing.assert_array_equal(runs[0].bound.low, runs[1].bound.low)
    np.testing.assert_array_equal(runs[0].bound.high, runs[1].bound.high)


def test_model_point_matches_executor_within_rounding(tiny):
    """The model's forward point (nearest rounding) is feasible and its output error is within a
    couple of LSBs of the device's: a sanity check of the encoding's units and wiring."""
    for interface in ("int8", "float"):
        net, pg = tiny[0].net(interface)
        box = Box(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))
        if interface == "int8":
            box = box.snap_to_grid(net.input_scale, net.input_zero_point)
        enc = milp.encode(net, box, _analysis(net, box))
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
def test_fifty_relu_pairs_close(mlp50):
    """4 -> 25 -> 25 -> 3 (50 ReLU pairs), float input, small box: every relaxed-rounding solve
    closes (HiGHS optimal at mip_rel_gap 1%) within a generous node limit, the bound stays within
    a few output LSBs of a point of the integer model, and no sampled error exceeds it."""
    net, pg = mlp50.net("float")
    c = np.random.default_rng(100).uniform(-0.5, 0.5, size=4)
    box = Box(c - 0.02, c + 0.02)
    found = falsify.falsify(net, pg, box)
    a = _analysis(net, box)
    m = milp.milp_bounds(net, box, a, CLOSE.replace(milp_nodes=200000), witness=found, exact_rounding="never")
    upper, incumbent = m.bound.upper, m.details["incumbent"]
    assert np.all(upper >= found.lower)
    assert all(("Optimal" in s) or ("cutoff" in s) or ("differential" in s) for s in m.notes if "relaxed" in s), \
        m.notes
    lsb = net.nodes[net.output].scale
    # Relaxing the 50 hidden roundings to [v - rho, v + rho] costs a little over one output LSB
    # against the best point of the integer model here; three LSBs is the generous allowance.
    assert np.all(upper <= incumbent + 3 * lsb + _margin(net, upper)), (upper, incumbent, lsb)
    seen = np.abs(falsify.errors(net, pg, np.vstack([box.sample(2000, np.random.default_rng(1)),
                                                      box.corners(500, np.random.default_rng(2))]))).max(axis=0)
    assert np.all(upper >= seen)
