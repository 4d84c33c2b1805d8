"""Optimised slopes for the float ranges (toolchain/certify/alpha.py): the hand-written gradient is
the bound's derivative, every range and bound they give holds against the executor (every int8
input of a box, and dense float samples), they tighten a deep network's ranges, and a search that
uses them (`slopes` optimised or auto) stays sound and deterministic."""

from __future__ import annotations

import netgen
import numpy as np
import pytest

from toolchain.certify import alpha, bnb, symbolic
from toolchain.certify.certifier import certify
from toolchain.certify.parallel import LocalRunner, PoolRunner, Problem
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.settings import DEFAULT
from toolchain.errors import QassureError
from toolchain.margins import with_margin

DEEP = {seed: netgen.mlp([2, 10, 12, 10, 12, 3],
                         ["relu", ["relu6", None, "relu"][seed], "relu", "relu", None],
                         seed=seed, calib_scale=0.5 if seed == 1 else 1.0) for seed in (0, 1, 2)}
SMALL = DEFAULT.replace(max_boxes=160, round_boxes=8, chunk_boxes=8, falsify_samples=300, falsify_steps=10,
                        edge_steps=6, edge_starts=4, milp_nodes=500, milp_leaf_nodes=50, branching_explore=2)
WIDE = Box(np.array([-0.9, -0.7]), np.array([0.8, 0.9]))


def _rows(net, box, t):
    """Both signs of every neuron of node t, over one box, with the fixed-slope analysis's ranges."""
    a = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True)
    n = net.nodes[t].size
    C = np.vstack([np.eye(n), -np.eye(n)])
    return a, C, np.zeros(2 * n, dtype=np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_is_the_bounds_derivative(seed):
    net, _ = DEEP[seed].net("float")
    t = net.output
    a, C, owner = _rows(net, WIDE, t)
    rows = alpha._Rows.of(net, t, C, owner, list(a.nodes), list(a.lines), a.boxes)
    assert rows.slopes, "the wide box crosses kinks: there are free slopes"
    rng = np.random.default_rng(seed)
    for s in rows.slopes.values():  # away from 0 and 1, where the bound is smooth in each slope
        s.a[:] = rng.uniform(0.2, 0.8, size=s.a.shape)
    bound, stored = rows.backward()
    grads = rows.gradients(stored)
    checked = 0
    h = 1e-6
    for i, g in grads.items():
        for r, j in zip(*np.nonzero(g), strict=True):
            s = rows.slopes[i]
            keep = s.a[r, j]
            s.a[r, j] = keep + h
            up = rows.backward()[0][r]
            s.a[r, j] = keep - h
            down = rows.backward()[0][r]
            s.a[r, j] = keep
            assert (up - down) / (2 * h) == pytest.approx(g[r, j], rel=1e-4, abs=1e-7), (i, r, j)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimised_rows_hold_on_float_samples_and_start_from_the_fixed_ones(seed):
    net, _ = DEEP[seed].net("float")
    xs = WIDE.sample(20000, np.random.default_rng(seed))
    ps, _ = net._forward_float(xs)
    a = symbolic.differential_analysis(net, BoxBatch.of([WIDE]), full=True)
    for t in range(1, len(net.nodes)):
        _, C, owner = _rows(net, WIDE, t)
        fixed, one, _ = alpha.float_rows_bound(net, t, C, owner, list(a.nodes), list(a.lines), a.boxes, 0)
        best, done, _ = alpha.float_rows_bound(net, t, C, owner, list(a.nodes), list(a.lines), a.boxes, 20)
        assert one == 1 and done in (1, 21)
        n = net.nodes[t].size
        assert np.all(best <= fixed)
        assert np.all(with_margin(best[:n]) >= ps[t].max(axis=0))
        assert np.all(with_margin(best[n:]) >= -ps[t].min(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_start_from_their_parents_slopes_and_still_hold(seed):
    """Warm start: rows given their own best slopes back start where they ended (within the slopes'
    1/255 steps), well below the fixed slopes' bound; a child box's rows started from its parent's
    hold on dense samples of the child."""
    net, _ = DEEP[seed].net("float")
    t = net.output
    a, C, owner = _rows(net, WIDE, t)
    args = (net, t, C, owner, list(a.nodes), list(a.lines), a.boxes)
    fixed, _, _ = alpha.float_rows_bound(*args, 0)
    best, _, kept = alpha.float_rows_bound(*args, 20)
    assert kept[0] is not None and kept[0].values.dtype == np.uint8
    again, evaluations, _ = alpha.float_rows_bound(*args, 0, warm=kept)
    assert evaluations == 1
    gain = fixed - best
    assert np.all(again <= best + 0.05 * gain + 1e-9), (again, best, fixed)
    assert np.sum(again) < np.sum(fixed) - 0.5 * np.sum(gain)
    # A child: the left half of the box, its analysis kept within the parent's ranges.
    child = Box(WIDE.low, np.array([(WIDE.low[0] + WIDE.high[0]) / 2, WIDE.high[1]]))
    c = symbolic.differential_analysis(net, BoxBatch.of([child]), a, full=True)
    warm, _, _ = alpha.float_rows_bound(net, t, C, owner, list(c.nodes), list(c.lines), c.boxes, 0, warm=kept)
    ps, _ = net._forward_float(child.sample(20000, np.random.default_rng(seed)))
    n = net.nodes[t].size
    assert np.all(with_margin(warm[:n]) >= ps[t].max(axis=0))
    assert np.all(with_margin(warm[n:]) >= -ps[t].min(axis=0))


def test_analysis_hands_its_slopes_to_its_children():
    net, _ = DEEP[0].net("float")
    a = symbolic.differential_analysis(net, BoxBatch.of([WIDE]), full=True, alpha_work=2.0**30)
    assert a.slopes is not None and a.slopes[0], "every crossing node's rows keep their slopes"
    assert net.output in a.slopes[0]
    kids = WIDE.cut(0, 0.0)
    c = symbolic.differential_analysis(net, BoxBatch.of(list(kids)), a.take([0, 0]), full=True)
    assert c.slopes is not None and all(s == a.slopes[0] for s in c.slopes), "fixed slopes pass them on"
    ranges = bnb.Ranges.of(a, 0)
    assert ranges.slopes is a.slopes[0] and ranges.nbytes > ranges.values.nbytes + ranges.exact.nbytes


def test_optimised_slopes_tighten_a_deep_network():
    tighter = []
    for seed in (0, 1, 2):
        net, _ = DEEP[seed].net("float")
        widths = []
        for work in (0.0, 2.0**30):
            a = symbolic.differential_analysis(net, BoxBatch.of([WIDE]), full=True, alpha_work=work)
            K = net.output
            widths.append(float(np.sum(a.nodes[K].ph - a.nodes[K].pl)))
        assert widths[1] <= widths[0] * (1 + 1e-12)
        tighter.append(widths[1] / widths[0])
    assert min(tighter) < 0.9, tighter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analysis_with_optimised_slopes_holds_against_every_int8_input(seed):
    net, pg = DEEP[seed].net("int8")
    box = Box(np.array([-0.5, -0.3]), np.array([0.4, 0.6]))
    box = box.snap_to_grid(net.input_scale, net.input_zero_point)
    exact = netgen.exhaustive_max(net, pg, box)
    for work in (1e5, 2.0**30):  # a budget that stops part way, and every node
        a = symbolic.differential_analysis(net, BoxBatch.of([box]), full=True, alpha_work=work)
        assert np.all(with_margin(a.bound.upper[0]) >= exact), (work, a.bound.upper, exact)


@pytest.mark.parametrize("slopes", ["optimised", "auto"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_with_optimised_slopes_holds_against_every_int8_input(seed, slopes):
    net, pg = netgen.tiny(seed).net("int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7]))
    box = box.snap_to_grid(net.input_scale, net.input_zero_point)
    exact = netgen.exhaustive_max(net, pg, box)
    cert = certify(net, pg, [box], budget=0.0, target="t", method="split",
                   settings=SMALL.replace(slopes=slopes))
    upper = np.array([o.upper for o in cert.outputs])
    assert np.all(upper >= exact), (slopes, upper, exact)
    assert cert.work_budget["slopes"] == slopes
    if slopes == "optimised":
        assert sum(r.work.get("optimised_boxes", 0) for r in cert.regions) > 0


def _search(problem, box, runner):
    root = symbolic.differential_analysis(problem.net, BoxBatch.of([box]), settings=problem.settings,
                                          full=True)
    try:
        return bnb.branch_and_bound(problem, root, runner, decided=lambda b: False)
    finally:
        runner.close()


def test_auto_measures_both_slopes_and_is_the_same_on_a_pool(monkeypatch):
    net, pg = DEEP[0].net("float")
    problem = Problem(net, pg, SMALL.replace(slopes="auto", max_boxes=120, enum_cells=1))
    decisions: list[bool] = []
    pays = bnb._optimise_pays

    def spy(gains):
        decisions.append(pays(gains))
        return decisions[-1]

    monkeypatch.setattr(bnb, "_optimise_pays", spy)
    local = _search(problem, WIDE, LocalRunner(problem))
    pooled = _search(problem, WIDE, PoolRunner(problem, 2))
    assert decisions, "exploration rounds bound some boxes both ways"
    assert local.work["optimised_boxes"] > 0
    assert local.bound.high.tobytes() == pooled.bound.high.tobytes()
    assert local.work == pooled.work
    assert np.all(with_margin(local.bound.upper) >= netgen.edge_sampled_max(net, pg, WIDE, 3000))


def test_optimise_pays_weighs_the_gain_against_the_splits_its_work_buys():
    # Fixed splits keep half the bound per level; optimised slopes cost 4x (two levels: a quarter).
    assert bnb._optimise_pays([np.log(0.5), np.log(0.2), 1, 1.0, 4.0])
    assert not bnb._optimise_pays([np.log(0.5), np.log(0.3), 1, 1.0, 4.0])
    # Splits that move nothing: any clear gain pays.
    assert bnb._optimise_pays([0.0, np.log(0.9), 1, 1.0, 4.0])
    assert not bnb._optimise_pays([0.0, np.log(0.995), 1, 1.0, 4.0])


def test_slopes_setting_is_validated_and_recorded():
    assert DEFAULT.slopes == "auto"
    for mode in ("fixed", "optimised", "auto"):
        assert DEFAULT.replace(slopes=mode).work_budget["slopes"] == mode
    with pytest.raises(QassureError, match="slopes"):
        DEFAULT.replace(slopes="sometimes")
