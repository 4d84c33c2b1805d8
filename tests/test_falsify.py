"""The falsifier on IR-built nets (no TensorFlow): every witness is a measured error of the input it
returns, the search is a function of (network, box, settings, seed) only, a ball's witness does not
fall below the witness of a ball it contains, and the search reaches a known share of the exhaustive
maximum over every int8 input of a box."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from tests import netgen
from toolchain.certify import falsify
from toolchain.certify.region import Box
from toolchain.certify.settings import DEFAULT

# A small plan: a few hundred evaluations, well under a second per call on these nets.
SMALL = DEFAULT.replace(falsify_samples=100, falsify_steps=10, falsify_outputs=2, edge_steps=8, edge_starts=4)


def _mlp(seed: int, n_in: int = 3, interface: str = "float"):
    pair = netgen.mlp([n_in, 16, 16, 3], ["relu", "relu", None], seed=seed, calib_scale=0.5)
    return pair.net(interface)


def _ball(net, radius_cells: float, n_in: int) -> Box:
    centre = net.input_scale * np.round(np.linspace(-0.2, 0.2, n_in) / net.input_scale)
    r = radius_cells * net.input_scale
    return Box(centre - r, centre + r)


def _check_measured(net, pg, box, found) -> None:
    """lower[k] is |error_k| re-measured at inputs[k] (to the last bits a batch's float sums may
    change), and inputs[k] lies in the box."""
    again = np.abs(falsify.errors(net, pg, found.inputs))[np.arange(net.n_outputs), np.arange(net.n_outputs)]
    assert np.allclose(again, found.lower, rtol=1e-12, atol=1e-15)
    assert np.all(found.inputs >= box.low) and np.all(found.inputs <= box.high)
    assert found.errors_sampled.max() <= found.lower.max()


@pytest.mark.parametrize("interface", ["float", "int8"])
@pytest.mark.parametrize("seed", [0, 1])
def test_witness_is_a_measured_error_inside_the_box(seed, interface):
    net, pg = _mlp(seed, interface=interface)
    box = _ball(net, 6, net.n_inputs)
    if interface == "int8":
        box = box.snap_to_grid(net.input_scale, net.input_zero_point)
    found = falsify.falsify(net, pg, box, SMALL, seed=seed)
    _check_measured(net, pg, box, found)
    assert not found.timed_out
    if interface == "int8":  # the device can only receive grid values
        q = found.inputs / net.input_scale
        assert np.allclose(q, np.round(q), atol=1e-9)


def test_tiny_nets_witness_is_measured():
    for seed in range(3):
        net, pg = netgen.tiny(seed).net()
        box = Box(np.full(2, -1.0), np.full(2, 1.0))
        found = falsify.falsify(net, pg, box, SMALL, seed=seed)
        _check_measured(net, pg, box, found)


def _run(seed: int) -> tuple[np.ndarray, np.ndarray]:
    net, pg = _mlp(2, n_in=8)
    found = falsify.falsify(net, pg, _ball(net, 4, 8), SMALL, seed=seed)
    return found.lower, found.inputs


def test_same_seed_same_witness_in_another_process():
    here = [_run(5), _run(5)]
    with ProcessPoolExecutor(1) as pool:
        there = pool.submit(_run, 5).result()
    for lower, inputs in here[1:] + [there]:
        assert np.array_equal(lower, here[0][0])
        assert np.array_equal(inputs, here[0][1])


def test_past_the_deadline_the_result_says_so_and_is_still_measured():
    net, pg = _mlp(0)
    box = _ball(net, 6, net.n_inputs)
    found = falsify.falsify(net, pg, box, SMALL, seed=0, deadline=-np.inf)
    assert found.timed_out
    _check_measured(net, pg, box, found)


@pytest.mark.parametrize("n_in", [3, 24])
def test_a_bigger_ball_does_not_do_worse_than_the_ball_inside_it(n_in):
    """Balls of 1, 2 and 4 input cells around one centre, same seed: the search over the bigger ball
    starts from the smaller one and grows (nested sub-boxes), so on average over seeds and nets its
    witness is at least the smaller ball's."""
    small, big = [], []
    for seed in range(4):
        net, pg = _mlp(seed, n_in=n_in)
        w = [falsify.falsify(net, pg, _ball(net, r, n_in), SMALL, seed=seed).lower.max() for r in (1, 2, 4)]
        small += w[:-1]
        big += w[1:]
    assert np.mean(big) >= np.mean(small)


@pytest.mark.parametrize("seed", range(4))
def test_reaches_a_share_of_the_exhaustive_maximum(seed):
    """int8 interface: the exhaustive maximum over every grid point of the box (~227,000 of them)
    is the true maximum; the small plan evaluates about 1,000 of them."""
    net, pg = _mlp(seed, interface="int8")
    box = Box(np.full(3, -0.12), np.full(3, 0.12)).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = netgen.exhaustive_max(net, pg, box)
    found = falsify.falsify(net, pg, box, SMALL, seed=0)
    assert np.all(found.lower <= exact + 1e-12)  # measured errors: never above the true maximum
    assert found.lower.max() >= 0.5 * exact.max()


def test_float_interface_beats_every_grid_point():
    """Float interface: the device's input cell and the float model's input differ, so the witness
    (pushed to the cells' edges) exceeds the largest error at the grid points themselves."""
    for seed in (0, 2, 3):
        net, pg = _mlp(seed)
        box = Box(np.full(3, -0.12), np.full(3, 0.12))
        grid = netgen.exhaustive_max(net, pg, box).max()
        assert falsify.falsify(net, pg, box, SMALL, seed=0).lower.max() > grid


def test_scaled_plan_shrinks_with_the_network_never_to_zero():
    net, _ = _mlp(0)
    assert falsify.scaled_plan(net, DEFAULT) == DEFAULT
    tight = falsify.scaled_plan(net, DEFAULT.replace(falsify_work=1.0))
    assert (tight.falsify_samples, tight.falsify_steps, tight.edge_steps, tight.edge_starts) == (2, 1, 2, 1)


def test_error_gradient_matches_finite_differences_inside_a_cell():
    """The float half of error_gradient is the float graph's gradient; the surrogate half is the int8
    affine model's (its rounding is straight-through), zero outside its clamps."""
    net, pg = _mlp(1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 0.2, size=(4, net.n_inputs))
    w = rng.normal(size=(4, net.n_outputs))
    gf, gq = falsify.error_gradient(net, x, w)
    h = 1e-6
    for i in range(net.n_inputs):
        d = np.zeros_like(x)
        d[:, i] = h
        y = net.forward_float(x + d)[net.output] - net.forward_float(x - d)[net.output]
        fd = (y * w).sum(1) / (2 * h)
        assert np.allclose(gf[:, i], fd, rtol=1e-4, atol=1e-6)
    assert gq.shape == x.shape and np.all(np.isfinite(gq))
    # the surrogate's gradient is close to the float one (same weights up to int8 rounding)
    assert np.abs(gf - gq).sum() < 0.5 * np.abs(gf).sum()


def test_witnesses_stay_in_boxes_off_the_grid():
    """Boxes whose faces sit anywhere in an input cell, down to a hair from a cell's edge (not on the
    grid): every returned input is still inside the box, its error measured."""
    net, pg = _mlp(0, n_in=6)
    rng = np.random.default_rng(4)
    s = net.input_scale
    for offset in (0.4999, -0.4999, 0.3, None):
        grid = s * np.round(rng.uniform(-0.2, 0.2, size=6) / s)
        low = grid + s * (rng.uniform(-0.5, 0.5, size=6) if offset is None else offset)
        box = Box(low, low + s * rng.uniform(0.5, 4.0))
        found = falsify.falsify(net, pg, box, SMALL, seed=1)
        _check_measured(net, pg, box, found)


def test_polish_stays_in_the_box_and_in_the_cell():
    """The in-cell polish from points on a box face that lies a hair inside a cell's edge: every
    vertex it returns is in the box and in the start's input cell, its error measured."""
    net, pg = _mlp(0, n_in=6)
    s = net.input_scale
    rng = np.random.default_rng(0)
    grid = s * np.round(rng.uniform(-0.2, 0.2, size=6) / s)
    box = Box(grid + 0.4999 * s, grid + 2.4999 * s)
    xs = np.repeat(box.sample(8, rng), 6, axis=0)
    xs[:, :3] = box.low[:3]  # half the coordinates on the lower face
    ks = np.tile(np.repeat(np.arange(3), 2), 8)
    signs = np.tile([1.0, -1.0], 24)
    e, x = falsify.polish(net, pg, box, xs, ks, signs, 6, rng)
    assert np.all(x >= box.low) and np.all(x <= box.high)
    assert np.array_equal(falsify.input_grid_point(net, x), falsify.input_grid_point(net, xs))
    rows = np.arange(len(xs))
    assert np.allclose(e, signs * falsify.errors(net, pg, x)[rows, ks], rtol=1e-12, atol=1e-15)
    assert np.all(e >= signs * falsify.errors(net, pg, xs)[rows, ks] - 1e-15)
