"""The differential engine past its dense symbolic budget (symbolic._windowed_rows): rows pushed
over their supports give the dense rows' bounds; windows that stop at a cutoff node, and layers of
which only the neurons that matter most get symbolic ranges, stay above every error the exact
executor can produce; the result is a function of the settings only."""

from __future__ import annotations

from functools import partial

import pickle

import numpy as np
import pytest

import netgen
from toolchain.certify import symbolic
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.settings import DEFAULT
from toolchain.margins import with_margin

_exhaustive = netgen.exhaustive_max
_sampled_max = partial(netgen.edge_sampled_max, n=3000)

# From no symbolic work at all, through partial layers and short windows, to every layer in full.
WORKS = (1.0, 3e2, 3e3, 1e4, 3e4, 1e5, 2.0**32)
DEEP = {seed: netgen.mlp([2, 10, 12, 10, 12, 3],
                         ["relu", ["relu6", None, "relu"][seed], "relu", "relu", None],
                         seed=seed, calib_scale=0.5 if seed == 1 else 1.0) for seed in (0, 1, 2)}


@pytest.fixture
def spy(monkeypatch):
    """What the windowed path did: (node, cutoff) per group pushed, and per call the pairs asked
    for and the pairs that got rows."""
    seen: dict[str, list] = {"cutoffs": [], "calls": []}
    group_rows, windowed_rows = symbolic._group_rows, symbolic._windowed_rows

    def g(net, pats, t, cutoff, *args, **kw):
        seen["cutoffs"].append((t, cutoff))
        return group_rows(net, pats, t, cutoff, *args, **kw)

    def w(net, t, todo, *args, **kw):
        out, cost = windowed_rows(net, t, todo, *args, **kw)
        seen["calls"].append((t, int(todo.sum()), int(np.isfinite(out[:, 0]).sum())))
        return out, cost

    monkeypatch.setattr(symbolic, "_group_rows", g)
    monkeypatch.setattr(symbolic, "_windowed_rows", w)
    return seen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_and_partial_layers_hold_against_every_int8_input(seed, spy):
    net, pg = DEEP[seed].net("int8")
    box = Box(np.array([-0.5, -0.3]), np.array([0.4, 0.6]))
    box = box.snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    for work in WORKS:
        for full in (True, False):
            a = symbolic.differential_analysis(net, BoxBatch.of([box]), full=full, work=work)
            assert np.all(with_margin(a.bound.upper[0]) >= exact), (work, full, a.bound.upper, exact)
    # Every path was taken: windows to the input and shorter ones, and partial layers.
    assert any(c == 1 for _, c in spy["cutoffs"])
    assert any(c > 1 for _, c in spy["cutoffs"])
    assert any(0 < got < asked for _, asked, got in spy["calls"])


@pytest.mark.parametrize("seed", [0, 2])
def test_windows_hold_on_float_boxes(seed):
    net, pg = DEEP[seed].net("float")
    rng = np.random.default_rng(seed)
    for _ in range(4):
        c = rng.uniform(-0.7, 0.7, size=2)
        r = rng.uniform(0.01, 0.3)
        box = Box(c - r, c + r)
        seen = _sampled_max(net, pg, box)
        for work in WORKS:
            a = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True, work=work)
            assert np.all(with_margin(a.bound.upper[0]) >= seen), (work, a.bound.upper, seen)


def test_supported_rows_equal_dense_rows():
    """Pushed over their supports with no cutoff, a node's rows bound what the dense rows bound (the
    same products without their structural zeros: equal within float64 rounding)."""
    net, _ = DEEP[0].net()
    boxes = BoxBatch(np.array([[-0.5, -0.2], [0.1, 0.0]]), np.array([[0.3, 0.4], [0.2, 0.5]]))
    ref = symbolic.differential_analysis(net, boxes, full=True)
    nodes, lines = list(ref.nodes), list(ref.lines)
    for t in range(2, net.output + 1):
        todo = np.ones((2, net.nodes[t].size), dtype=bool)
        todo[0, ::3] = False
        dense = symbolic._node_rows(net, t, todo, nodes, lines, boxes, DEFAULT)
        got, _ = symbolic._windowed_rows(net, t, todo, np.zeros(todo.shape), np.inf, nodes, lines, {}, boxes,
                                         DEFAULT)
        kinds = symbolic._KINDS
        assert np.all(np.isinf(np.delete(got, kinds, axis=1)))  # u's range follows from p - delta
        got, dense = got[:, kinds], dense[:, kinds]
        assert np.array_equal(np.isfinite(got), np.isfinite(dense))
        fin = np.isfinite(dense)
        np.testing.assert_allclose(got[fin], dense[fin], rtol=1e-12, atol=1e-12)


def test_same_settings_same_bytes():
    net, _ = DEEP[1].net()
    boxes = BoxBatch(np.array([[-0.5, -0.2], [0.1, 0.0]]), np.array([[0.3, 0.4], [0.2, 0.5]]))
    for work in (3e3, 3e4):
        runs = []
        for threads in (1, 1, 2):  # on two threads as well (certify's root pass): the same bytes
            net.__dict__.pop("_derived", None)  # the sparsity patterns derived again
            a = symbolic.differential_analysis(net, boxes, full=True, work=work, threads=threads)
            runs.append((a.bound.low.tobytes(), a.bound.high.tobytes(), a.work,
                         [nb.pl.tobytes() + nb.uh.tobytes() + nb.dh.tobytes() for nb in a.nodes]))
        assert runs[0] == runs[1] == runs[2]
    assert "_derived" in net.__dict__ and "_derived" not in pickle.loads(pickle.dumps(net)).__dict__


@pytest.mark.tf
def test_conv_net_windows_hold_and_supports_match(zoo):
    """A convolutional net (sparse matrices: supports smaller than the layers) with budgets that
    force partial layers and windows: above every sampled error; supports equal dense rows."""
    from toolchain.merge import build
    from toolchain.tflite import prepare, reader

    m = zoo["cnn_depthwise"]
    pg = prepare.prepare(reader.read_model(m.int8_tflite), "double")
    net = build(reader.read_model(m.float_tflite), pg, "float")
    rng = np.random.default_rng(3)
    c = rng.uniform(-0.8, 0.8, size=net.n_inputs)
    box = Box(c - 0.02, c + 0.02)
    seen = _sampled_max(net, pg, box, n=1500)
    base = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True, work=2.0**40)
    assert np.all(with_margin(base.bound.upper[0]) >= seen)
    for work in (1e4, 1e6, 1e7):
        a = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True, work=work)
        assert np.all(with_margin(a.bound.upper[0]) >= seen), (work, a.bound.upper, seen)
        # On two threads (certify's root pass), the very same bytes: every row is the same sums.
        a2 = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True, work=work, threads=2)
        assert a2.bound.high.tobytes() == a.bound.high.tobytes() and a2.work == a.work
        assert all(n1.pl.tobytes() + n1.dh.tobytes() == n2.pl.tobytes() + n2.dh.tobytes()
                   for n1, n2 in zip(a.nodes, a2.nodes, strict=True))
    nodes, lines = list(base.nodes), list(base.lines)
    boxes = BoxBatch.of([box])
    t = next(t for t in range(2, len(net.nodes)) if not net.nodes[t].linear_only)
    todo = np.ones((1, net.nodes[t].size), dtype=bool)
    dense = symbolic._node_rows(net, t, todo, nodes, lines, boxes, DEFAULT)
    got, _ = symbolic._windowed_rows(net, t, todo, np.zeros(todo.shape), np.inf, nodes, lines, {}, boxes,
                                     DEFAULT)
    kinds = symbolic._KINDS
    np.testing.assert_allclose(got[:, kinds], dense[:, kinds], rtol=1e-10, atol=1e-10)
