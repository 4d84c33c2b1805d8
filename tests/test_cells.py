"""Input-cell enumeration (certify/cells.py): the int8 side exactly per input cell.

The cell bound must hold against (a) the exhaustive maximum over every int8 input of a box, (b) dense
sampling with points on and around the input rounding edges, for float interfaces; and splitting
with enumeration must stay sound while it tightens the bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netgen
from toolchain.certify import bnb, cells, falsify, symbolic
from toolchain.certify.parallel import LocalRunner, PoolRunner, Problem
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.settings import DEFAULT
from toolchain.margins import with_margin

_exhaustive = netgen.exhaustive_max


@pytest.fixture(scope="module")
def tiny_nets():
    return {seed: netgen.tiny(seed) for seed in (0, 1, 2)}


def _net(pair, interface):
    return pair.net(interface)


def _analysis(net, box):
    return symbolic.differential_analysis(net, BoxBatch.of([box]))


def _cell_upper(net, pg, box, analysis=None):
    a = analysis or _analysis(net, box)
    bound, candidates = cells.cell_bounds(net, box, a, cells.device_outputs(net, pg, box))
    assert np.all(bound.low <= bound.high + 1e-12)
    return bound.upper, candidates


def _edge_points(net, box, rng, n=400):
    """Points on, just below and just above the input rounding edges s (k + 1/2) inside the box."""
    s = net.input_scale
    xs = box.sample(n, rng)
    edges = s * (np.round(xs / s - 0.5) + 0.5)
    jitter = rng.choice([-1e-7, 0.0, 1e-7], size=xs.shape) * s
    on_edge = rng.random(xs.shape) < 0.5
    xs = np.where(on_edge, edges + jitter, xs)
    return np.clip(np.vstack([xs, box.corners(50, rng)]), box.low, box.high)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_bound_on_int8_grid_holds(tiny_nets, seed):
    net, pg = _net(tiny_nets[seed], "int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    upper, candidates = _cell_upper(net, pg, box)
    assert np.all(with_margin(upper) >= exact), (upper, exact)
    # Candidates are real inputs of the box, and the best of them is a real error.
    assert np.all((candidates >= box.low) & (candidates <= box.high))
    assert np.abs(falsify.errors(net, pg, candidates)).max() <= exact.max() + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_cell_box_is_exact_on_int8_grid(tiny_nets, seed):
    """A box of one int8 input: everything is known, the bound is the error there."""
    net, pg = _net(tiny_nets[seed], "int8")
    s = net.input_scale
    rng = np.random.default_rng(seed)
    for k in rng.integers(-60, 60, size=(5, 2)):
        x = s * k.astype(float)
        box = Box(x, x)
        upper, _ = _cell_upper(net, pg, box)
        err = np.abs(falsify.errors(net, pg, x[None]))[0]
        assert np.allclose(upper, err, atol=1e-9), (upper, err)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c0=st.floats(-0.8, 0.8), c1=st.floats(-0.8, 0.8), r=st.floats(0.002, 0.2), seed=st.sampled_from([0, 1, 2]))
def test_cell_bound_float_interface_holds_at_rounding_edges(tiny_nets, c0, c1, r, seed):
    net, pg = _net(tiny_nets[seed], "float")
    box = Box(np.array([c0 - r, c1 - r]), np.array([c0 + r, c1 + r]))
    rng = np.random.default_rng(7)
    seen = np.abs(falsify.errors(net, pg, _edge_points(net, box, rng))).max(axis=0)
    upper, _ = _cell_upper(net, pg, box)
    assert np.all(with_margin(upper) >= seen), (upper, seen)


def test_sub_box_outputs_are_the_enumerated_ones(tiny_nets):
    net, pg = _net(tiny_nets[1], "float")
    box = Box(np.array([-0.2, 0.05]), np.array([0.1, 0.3]))
    outputs = cells.device_outputs(net, pg, box)
    assert outputs.q.shape[:-1] == tuple(cells.cells_per_input(net, box))
    for dim, at in bnb.cell_cuts(net, box)[:2]:
        for child in box.cut(dim, at):
            sub = outputs.sub(net, child)
            np.testing.assert_array_equal(sub.q, cells.device_outputs(net, pg, child).q)
    with pytest.raises(ValueError):
        outputs.sub(net, Box(box.low - 0.1, box.high))


@pytest.mark.parametrize("interface", ["float", "int8"])
def test_split_with_enumeration_is_sound_and_deterministic(tiny_nets, interface):
    net, pg = _net(tiny_nets[0], interface)
    box = Box(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))
    if interface == "int8":
        box = box.snap_to_grid(net.input_scale, net.input_zero_point)
        seen = _exhaustive(net, pg, box)
    else:
        seen = np.abs(falsify.errors(net, pg, _edge_points(net, box, np.random.default_rng(3), 4000))).max(axis=0)
    settings = DEFAULT.replace(max_boxes=48, round_boxes=4, enum_cells=10**9)
    problem = Problem(net, pg, settings)
    root = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True)

    def search(runner, enumerate_cells=True):
        try:
            return bnb.branch_and_bound(problem, root, runner, decided=lambda b: False,
                                        enumerate_cells=enumerate_cells)
        finally:
            runner.close()

    plain = search(LocalRunner(problem), enumerate_cells=False)
    enum = search(LocalRunner(problem))
    assert enum.work["enumerated"] >= 1 and plain.work["enumerated"] == 0
    assert np.all(with_margin(enum.bound.upper) >= seen) and np.all(with_margin(plain.bound.upper) >= seen)
    # Enumeration never loosens what the differential engine certified on the same box.
    assert np.all(enum.bound.upper <= root.bound.upper[0] + 1e-12)
    # Two workers: the same search over a process pool (device outputs cross process boundaries),
    # the same answer bit for bit.
    pooled = search(PoolRunner(problem, 2))
    np.testing.assert_array_equal(pooled.bound.high, enum.bound.high)
    np.testing.assert_array_equal(pooled.bound.low, enum.bound.low)
    assert pooled.work == enum.work


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_enumeration_from_stored_ranges_holds(tiny_nets, seed):
    """enumerate_box without a new analysis (the float side's affine bounds rebuilt from ranges a
    search stored): sound against the exhaustive maximum with the box's own ranges and with those of
    a box enclosing it, and never looser than the bound those ranges came with."""
    net, pg = _net(tiny_nets[seed], "int8")
    problem = Problem(net, pg, DEFAULT)
    outer = Box(np.array([-0.6, -0.5]), np.array([0.5, 0.6])).snap_to_grid(net.input_scale, net.input_zero_point)
    box = Box(np.array([-0.3, -0.2]), np.array([0.2, 0.3])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    for source in (box, outer):
        a = symbolic.differential_analysis(net, BoxBatch.of([source]))
        job = bnb.LeafJob(box, bnb.Ranges.of(a, 0), a.bound.item(0), own_ranges=True)
        bounded, outputs, _ = bnb.enumerate_box(problem, job)
        assert np.all(with_margin(bounded.bound.upper) >= exact), (source, bounded.bound.upper, exact)
        assert np.all(bounded.bound.upper <= a.bound.upper[0] + 1e-12)
        np.testing.assert_array_equal(outputs.q, cells.device_outputs(net, pg, box).q)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float_side_analysis_of_cell_boxes_holds(tiny_nets, seed):
    """Boxes whose device outputs are known cell by cell are bounded with the float side's rows only
    (sides="float"): that analysis's own bound and the cell bounds bound_boxes takes from it hold
    against the exhaustive maximum, for less work than both sides' rows."""
    net, pg = _net(tiny_nets[seed], "int8")
    problem = Problem(net, pg, DEFAULT)
    grid = (net.input_scale, net.input_zero_point)
    parent = Box(np.array([-0.6, -0.5]), np.array([0.5, 0.6])).snap_to_grid(*grid)
    kids = [Box(np.array([-0.6, -0.5]), np.array([0.0, 0.6])).snap_to_grid(*grid),
            Box(np.array([0.0, -0.5]), np.array([0.5, 0.6])).snap_to_grid(*grid)]
    a = symbolic.differential_analysis(net, BoxBatch.of([parent]))
    outputs = cells.device_outputs(net, pg, parent)
    both = symbolic.differential_analysis(net, BoxBatch.of(kids))
    alone = symbolic.differential_analysis(net, BoxBatch.of(kids), sides="float")
    assert alone.work < both.work
    job = bnb.BoundJob(tuple(kids), (bnb.Ranges.of(a, 0),) * 2, (a.bound.item(0),) * 2,
                       tuple(outputs.sub(net, k) for k in kids))
    bounded, _ = bnb.bound_boxes(problem, job)
    for i, (box, b) in enumerate(zip(kids, bounded, strict=True)):
        exact = _exhaustive(net, pg, box)
        assert np.all(with_margin(alone.bound.upper[i]) >= exact)
        assert np.all(with_margin(b.bound.upper) >= exact), (b.bound.upper, exact)
        xs = box.sample(500, np.random.default_rng(seed))
        y = net.forward_float(xs)[net.output]
        nb = alone.nodes[net.output]
        assert np.all(nb.pl[i] <= y.min(axis=0) + 1e-12) and np.all(y.max(axis=0) <= nb.ph[i] + 1e-12)
    # Boxes of one to three cells per input, where the float side's bound is nearly the exact one.
    rng = np.random.default_rng(seed)
    s = net.input_scale
    for _ in range(30):
        k = rng.integers(-60, 58, size=2)
        box = Box(s * k.astype(float), s * (k + rng.integers(0, 3, size=2)).astype(float))
        small = symbolic.differential_analysis(net, BoxBatch.of([box]), sides="float")
        assert np.all(with_margin(small.bound.upper[0]) >= _exhaustive(net, pg, box)), box


def test_cell_count(tiny_nets):
    net, _ = _net(tiny_nets[0], "float")
    s = net.input_scale
    # Strictly inside one cell: one cell per input; on an edge: both neighbours are possible.
    assert cells.cell_count(net, Box(np.array([0.1 * s, 0.1 * s]), np.array([0.2 * s, 0.3 * s]))) == 1
    assert cells.cell_count(net, Box(np.array([0.5 * s, 0.1 * s]), np.array([0.5 * s, 0.3 * s]))) == 2
    assert cells.cell_count(net, Box(np.array([0.0, 0.0]), np.array([1e9, 1.0]))) == float("inf")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cells_cut_exactly_on_rounding_edges(tiny_nets, seed):
    """Boxes starting or ending on a rounding edge s (k + 1/2): inputs there may go to either
    cell, and each cell's part of the box must reach that edge (small boxes: the affine bounds are
    nearly exact, so a cell part short of its edge by 1% of a cell shows)."""
    net, pg = _net(tiny_nets[seed], "float")
    s = net.input_scale
    rng = np.random.default_rng(seed)
    for k in rng.integers(-40, 40, size=8):
        edge = s * (k + 0.5)
        y = rng.uniform(-0.5, 0.5)
        for lo, hi in ((edge, edge + 0.3 * s), (edge - 0.3 * s, edge)):
            box = Box(np.array([lo, y]), np.array([hi, y + 0.2 * s]))
            xs = np.vstack([box.sample(200, rng), box.corners(64, rng),
                            [[np.nextafter(edge, -1.0), y], [np.nextafter(edge, 1.0), y], [edge, y]]])
            xs = np.clip(xs, box.low, box.high)
            seen = np.abs(falsify.errors(net, pg, xs)).max(axis=0)
            upper, _ = _cell_upper(net, pg, box)
            assert np.all(with_margin(upper) >= seen), (k, lo, hi, upper, seen)
