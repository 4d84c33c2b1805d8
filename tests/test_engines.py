"""The certify engines on nets built as IR (tests/netgen.py, no TensorFlow): every bound above every
error the exact executor can produce (exhaustively over int8 inputs, and densely sampled with
points on the input rounding edges), the batched engine equal to one box at a time, and the
search's answer a function of its settings only — not of the worker count, the runner, or the
clock.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netgen
from toolchain.certify import bnb, falsify, symbolic
from toolchain.certify.certifier import certify
from toolchain.certify.engines import ENGINES, METHODS
from toolchain.certify.parallel import (
    WORKER_BASE_BYTES,
    LocalRunner,
    PoolRunner,
    Problem,
    make_runner,
    peak_memory_bytes,
    problem_bytes,
    workers_within,
)
from toolchain.certify.region import Box, BoxBatch
from toolchain.certify.result import STOP_BUDGET, STOP_TIME, EngineResult, ErrorBound
from toolchain.certify.settings import DEFAULT
from toolchain.errors import QassureError, SoundnessViolation
from toolchain.margins import with_margin

_exhaustive = netgen.exhaustive_max
_sampled_max = partial(netgen.edge_sampled_max, n=4000)

TINY = {seed: netgen.tiny(seed) for seed in (0, 1, 2)}
# A few hundred boxes: enough to exercise every job kind on the tiny nets, seconds each.
SMALL = DEFAULT.replace(max_boxes=200, round_boxes=8, chunk_boxes=8, falsify_samples=300, falsify_steps=10,
                        edge_steps=6, edge_starts=4, milp_nodes=500, milp_leaf_nodes=50)


def _analysis(net, box, **kw):
    return symbolic.differential_analysis(net, BoxBatch.of([box]), **kw)


def test_registry_names_every_method():
    assert set(METHODS) == {"auto", "interval", "differential", "milp", "split"}
    assert all(e.summary and callable(e.bound) for e in ENGINES.values())
    net, pg = TINY[0].net()
    with pytest.raises(QassureError, match="unknown method"):
        certify(net, pg, [Box([-0.1, -0.1], [0.1, 0.1])], budget=1.0, target="t", method="magic")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_every_engine_holds_against_every_int8_input(seed, method):
    net, pg = TINY[seed].net("int8")
    box = Box(np.array([-0.6, -0.4]), np.array([0.5, 0.7])).snap_to_grid(net.input_scale, net.input_zero_point)
    exact = _exhaustive(net, pg, box)
    cert = certify(net, pg, [box], budget=0.0, target="t", method=method, settings=SMALL)
    upper = np.array([o.upper for o in cert.outputs])
    assert np.all(upper >= exact), (method, upper, exact)
    assert np.all(np.array([o.lower for o in cert.outputs]) <= exact + 1e-12)


@settings(max_examples=12, deadline=None)
@given(c0=st.floats(-0.8, 0.8), c1=st.floats(-0.8, 0.8), r=st.floats(0.005, 0.3), seed=st.sampled_from([0, 1, 2]))
def test_single_pass_engines_hold_on_random_float_boxes(c0, c1, r, seed):
    net, pg = TINY[seed].net("float")
    box = Box(np.array([c0 - r, c1 - r]), np.array([c0 + r, c1 + r]))
    seen = _sampled_max(net, pg, box, n=2000, seed=3)
    assert np.all(with_margin(_analysis(net, box).bound.upper) >= seen)
    assert np.all(with_margin(symbolic.interval_analysis(net, BoxBatch.of([box])).bound.upper) >= seen)


def test_boxes_at_input_cell_edges():
    """Boxes hugging an input rounding edge s (k + 1/2): float32 rounding of the sensor value and of
    x / s may put the device on either side; the bound must hold for both."""
    net, pg = TINY[0].net("float")
    s = net.input_scale
    rng = np.random.default_rng(5)
    for k in rng.integers(-40, 40, size=6):
        edge = s * (k + 0.5)
        for lo, hi in ((edge - 1e-7 * s, edge), (edge, edge + 1e-7 * s), (edge - 1e-7 * s, edge + 1e-7 * s)):
            box = Box(np.array([lo, 0.1]), np.array([hi, 0.1 + 1e-3]))
            xs = np.vstack([box.sample(200, rng), box.corners(50, rng), [[np.nextafter(np.float32(edge), 0), 0.1]]])
            seen = np.abs(falsify.errors(net, pg, np.clip(xs, box.low, box.high))).max(axis=0)
            assert np.all(with_margin(_analysis(net, box).bound.upper) >= seen)


def test_batched_analysis_equals_one_box_at_a_time():
    """A batch of boxes gives each box the bound it gets alone (the same arithmetic, grouped
    differently: within a few ulps); with or without the settled neurons' symbolic ranges, every
    bound holds."""
    net, pg = netgen.mlp([5, 20, 20, 20, 4], ["relu", "relu6", "relu", None], seed=4).net()
    rng = np.random.default_rng(0)
    c = rng.uniform(-0.6, 0.6, size=(6, 5))
    r = rng.uniform(0.01, 0.3, size=(6, 1))
    batch = BoxBatch(c - r, c + r)
    together = symbolic.differential_analysis(net, batch)
    full = symbolic.differential_analysis(net, batch, full=True)
    for i in range(len(batch)):
        alone = _analysis(net, batch[i])
        np.testing.assert_allclose(together.bound.low[i], alone.bound.low[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(together.bound.high[i], alone.bound.high[0], rtol=1e-12, atol=1e-12)
        seen = _sampled_max(net, pg, batch[i], n=1000)
        assert np.all(with_margin(together.bound.upper[i]) >= seen)
        assert np.all(with_margin(full.bound.upper[i]) >= seen)


def test_parent_ranges_only_tighten():
    net, pg = netgen.mlp([3, 12, 12, 2], ["relu", "relu", None], seed=7).net()
    parent = _analysis(net, Box(np.full(3, -0.5), np.full(3, 0.5)), full=True)
    child_box = Box(np.array([-0.5, -0.5, -0.5]), np.array([0.0, 0.5, 0.5]))
    alone = _analysis(net, child_box)
    child = symbolic.differential_analysis(net, BoxBatch.of([child_box]), parent)
    assert np.all(child.bound.upper <= alone.bound.upper + 1e-15)
    assert np.all(child.bound.upper <= parent.bound.upper + 1e-15)
    assert np.all(with_margin(child.bound.upper[0]) >= _sampled_max(net, pg, child_box))


def _search(problem, box, runner):
    root = _analysis(problem.net, box, full=True)
    try:
        return bnb.branch_and_bound(problem, root, runner, decided=lambda b: False)
    finally:
        runner.close()


def test_branch_and_bound_sound_budgeted_and_independent_of_workers():
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3, calib_scale=0.7).net()
    box = Box(np.full(3, -0.6), np.full(3, 0.6))
    problem = Problem(net, pg, SMALL.replace(max_boxes=120))
    local = _search(problem, box, LocalRunner(problem))
    pooled = _search(problem, box, PoolRunner(problem, 2))
    assert isinstance(local, EngineResult) and local.stopped == STOP_BUDGET
    # Rounds finish whole: at most one round (2 children per box) past the budget.
    assert 120 <= local.work["boxes"] < 120 + 2 * problem.settings.round_boxes + 1
    np.testing.assert_array_equal(local.bound.low, pooled.bound.low)
    np.testing.assert_array_equal(local.bound.high, pooled.bound.high)
    assert local.work == pooled.work
    assert np.all(with_margin(local.bound.upper) >= _sampled_max(net, pg, box))
    assert np.all(local.bound.upper <= _analysis(net, box).bound.upper[0] + 1e-12)


def test_certificate_is_the_same_with_one_or_two_workers():
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3, calib_scale=0.7).net()
    boxes = [Box(np.full(3, -0.6), np.full(3, 0.6)), Box(np.full(3, 0.1), np.full(3, 0.3))]
    one = certify(net, pg, boxes, budget=1e-4, target="t", method="auto", settings=SMALL, workers=1)
    two = certify(net, pg, boxes, budget=1e-4, target="t", method="auto", settings=SMALL, workers=2)
    assert one == two
    assert one.work_budget["max_boxes"] == SMALL.max_boxes
    assert all(r.work["boxes"] >= 1 and r.stopped for r in one.regions)


def _blas_threads_in_job(problem, job):
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_every_runner_runs_its_jobs_with_one_blas_thread():
    """Workers are the parallelism: OpenBLAS's own threads on top of two pool workers on two cores
    (one per core by default) cost more than half the search's throughput."""
    net, pg = TINY[0].net()
    problem = Problem(net, pg, SMALL)
    for runner in (LocalRunner(problem), PoolRunner(problem, 2)):
        try:
            counts = runner.map(_blas_threads_in_job, [None] * 4)
        finally:
            runner.close()
        assert all(c and all(n == 1 for n in c) for c in counts), (type(runner).__name__, counts)


def test_memory_bytes_caps_the_pool_and_not_the_answer():
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3, calib_scale=0.7).net()
    problem = Problem(net, pg, SMALL)
    per_worker = problem_bytes(problem)
    assert per_worker > WORKER_BASE_BYTES + 4 * 8 * SMALL.block_entries
    assert workers_within(10 * per_worker, per_worker, 4) == 4
    assert workers_within(3 * per_worker, per_worker, 4) == 2  # the main process counts as one
    assert workers_within(per_worker / 2, per_worker, 4) == 1  # never fewer than one
    said: list[str] = []
    tight = Problem(net, pg, SMALL.replace(memory_bytes=2.5 * per_worker))
    runner = make_runner(tight, 2, say=said.append)
    try:
        assert isinstance(runner, LocalRunner) and "1 worker(s) instead of 2" in said[0]
    finally:
        runner.close()
    box = Box(np.full(3, -0.6), np.full(3, 0.6))
    capped = certify(net, pg, [box], budget=1e-4, target="t", settings=tight.settings, workers=2)
    free = certify(net, pg, [box], budget=1e-4, target="t", settings=SMALL, workers=2)
    assert capped.regions == free.regions
    assert peak_memory_bytes() > 0


def test_big_nets_get_fewer_boxes_per_batch_and_the_same_bound():
    """batch_neurons shrinks the jobs of a round (memory): the search is the same, the bounds equal up to
    the last bits of the float sums (BLAS orders a product's sums by its shape)."""
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3, calib_scale=0.7).net()
    box = Box(np.full(3, -0.6), np.full(3, 0.6))
    split = SMALL.replace(max_boxes=120)
    one = certify(net, pg, [box], budget=1e-6, target="t", method="split", settings=split.replace(batch_neurons=1))
    many = certify(net, pg, [box], budget=1e-6, target="t", method="split", settings=split)
    assert one.regions[0].work == many.regions[0].work and one.work_budget["batch_neurons"] == 1
    for a, b in zip(one.outputs, many.outputs, strict=True):
        assert a.lower == b.lower and a.upper == pytest.approx(b.upper, rel=1e-12, abs=0)


@pytest.mark.parametrize("branching", ["input", "neuron", "auto"])
def test_stored_ranges_past_their_budget_stay_sound(branching):
    """With almost no room for open boxes' ranges, children start from the region's ranges (a
    neuron-branched box then also loses its constraint: its children cover more, never less): the
    search is as deterministic, its bound still above every int8 input's error and below the root's."""
    net, pg = TINY[1].net()
    box = Box(np.array([-0.4, -0.4]), np.array([0.4, 0.4]))
    tight = SMALL.replace(max_boxes=150, leaf_ranges_bytes=1.0, branching=branching)
    runs = [certify(net, pg, [box], budget=1e-6, target="t", method="split", settings=tight) for _ in range(2)]
    assert runs[0].regions == runs[1].regions and runs[0].work_budget["leaf_ranges_bytes"] == 1.0
    root = certify(net, pg, [box], budget=1e-6, target="t", method="differential", settings=tight)
    bound = np.array([o.upper for o in runs[0].outputs])
    assert np.all(with_margin(bound) >= _exhaustive(net, pg, box))
    assert np.all(bound <= np.array([o.upper for o in root.outputs]) + 1e-12)
    assert runs[0].regions[0].work["boxes"] > 1


def test_time_limit_is_a_safety_net_that_says_so():
    net, pg = netgen.mlp([3, 10, 10, 2], ["relu", "relu", None], seed=3).net()
    box = Box(np.full(3, -0.6), np.full(3, 0.6))
    cert = certify(net, pg, [box], budget=1e-6, target="t", method="split",
                   settings=SMALL.replace(max_boxes=10**6, time_limit=1e-9))
    assert cert.regions[0].stopped == STOP_TIME
    assert cert.verdict == "unknown" and any("time limit" in n for n in cert.notes)
    assert np.all(with_margin(np.array([o.upper for o in cert.outputs])) >= _sampled_max(net, pg, box))


def test_each_region_gets_a_share_of_the_time_limit(monkeypatch):
    """A region that spends every second it is given leaves the next ones their equal share of what
    is left (a first region that took the whole limit left the others their root bound)."""
    import toolchain.certify.certifier as C

    net, pg = TINY[0].net()
    boxes = [Box(np.array([-0.3, -0.3]), np.array([0.3, 0.3])) for _ in range(3)]
    clock = [1000.0]
    given = []
    real = C.certify_region

    def greedy(problem, box, budgets, method, runner, seed, deadline, *rest):
        given.append(deadline - clock[0])
        result = real(problem, box, budgets, method, runner, seed, float("inf"), *rest)
        clock[0] = deadline  # spent its whole share
        return result

    monkeypatch.setattr(C.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(C, "certify_region", greedy)
    certify(net, pg, boxes, budget=1.0, target="t", method="differential", settings=SMALL.replace(time_limit=90.0))
    assert given == pytest.approx([30.0, 30.0, 30.0])
    assert C.region_deadline(100.0, 40.0, 2) == 70.0 and C.region_deadline(100.0, 120.0, 2) == 120.0


def test_auto_stops_near_the_witness_and_budget_decides():
    net, pg = TINY[0].net()
    box = Box(np.array([-0.3, -0.3]), np.array([0.3, 0.3]))
    cert = certify(net, pg, [box], budget=1.0, target="t", method="auto", settings=SMALL)
    assert cert.verdict == "pass" and cert.regions[0].stopped == "decided"
    assert cert.witness.error == max(o.lower for o in cert.outputs)
    tight = certify(net, pg, [box], budget=1e-6, target="t", method="auto",
                    settings=SMALL.replace(max_boxes=5000, target_ratio=1.5))
    r = tight.regions[0]
    assert tight.verdict == "refuted"  # the witness is above a budget of 1e-6
    assert r.stopped == "decided" and r.bound <= 1.5 * r.lower + 1e-12 or r.stopped == STOP_BUDGET


def test_auto_keeps_searching_near_the_witness_while_the_budget_can_still_be_proven():
    """A bound within target_ratio of the witness but above a budget the witness is below is not an
    answer: the search goes on until it proves the budget (it used to stop at the root and fail)."""
    net, pg = TINY[0].net()
    box = Box(np.array([-0.3, -0.3]), np.array([0.3, 0.3]))
    root = certify(net, pg, [box], budget=1e9, target="t", method="differential", settings=SMALL)
    budget = (root.witness.error + root.bound) / 2
    lax = SMALL.replace(target_ratio=1e6)  # the root bound is "near" any witness
    cert = certify(net, pg, [box], budget=budget, target="t", method="auto", settings=lax)
    assert cert.verdict == "pass" and cert.bound <= budget < root.bound
    refuted = certify(net, pg, [box], budget=root.witness.error / 2, target="t", method="auto", settings=lax)
    assert refuted.verdict == "refuted" and refuted.bound == root.bound  # refuted: near the witness stops


def test_a_bound_below_a_witness_stops_everything(monkeypatch):
    net, pg = TINY[0].net()
    box = Box(np.array([-0.3, -0.3]), np.array([0.3, 0.3]))

    def broken(task):
        return EngineResult(ErrorBound(np.zeros(net.n_outputs), np.zeros(net.n_outputs)), "single pass")

    monkeypatch.setitem(ENGINES, "differential", ENGINES["differential"].__class__("differential", "x", broken))
    with pytest.raises(SoundnessViolation):
        certify(net, pg, [box], budget=1.0, target="t", method="differential", settings=SMALL)


def test_falsifier_is_deterministic_and_real():
    net, pg = TINY[1].net()
    box = Box(np.array([-0.7, -0.2]), np.array([0.1, 0.6]))
    a = falsify.falsify(net, pg, box, SMALL, seed=3)
    b = falsify.falsify(net, pg, box, SMALL, seed=3)
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert np.all((a.inputs >= box.low) & (a.inputs <= box.high))
    replay = np.abs(falsify.errors(net, pg, a.inputs))
    np.testing.assert_allclose(a.lower, replay[np.arange(net.n_outputs), np.arange(net.n_outputs)], atol=1e-12)


@pytest.mark.parametrize("interface", ["float", "int8"])
def test_edge_attack_returns_real_errors(interface):
    net, pg = netgen.mlp([6, 12, 3], ["relu", None], seed=2).net(interface)
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


def test_float_gradient_matches_finite_differences():
    net, _ = netgen.mlp([6, 12, 12, 3], ["relu", "relu6", None], seed=5).net()
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.5, 0.5, size=(3, net.n_inputs))
    w = rng.normal(size=(3, net.n_outputs))
    g = net.float_gradient(x, w)
    h = 1e-6
    for i in range(net.n_inputs):
        e = np.zeros(net.n_inputs)
        e[i] = h
        f = lambda z: (net.forward_float(z)[net.output] * w).sum(axis=1)  # noqa: E731
        np.testing.assert_allclose(g[:, i], (f(x + e) - f(x - e)) / (2 * h), rtol=1e-4, atol=1e-6)


def test_top1_decision():
    from toolchain.certify.decision import top1

    net, pg = TINY[0].net()
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, size=(4000, 2))
    y = net.forward_float(xs)[net.output]
    gap = np.abs(y[:, 0] - y[:, 1])
    # A point far from the decision boundary: a small box around it is certified.
    x = xs[int(np.argmax(gap))]
    box = Box(x - 1e-3, x + 1e-3)
    d = top1(net, pg, box, _analysis(net, box))
    assert d["certified"] and not d["refuted"] and d["float_margin"] > 0 and d["int8_margin"] > 0
    # A box across the float decision boundary can never be certified, and is refuted by sampling.
    x = xs[int(np.argmin(gap))]
    box = Box(x - 0.2, x + 0.2)
    d = top1(net, pg, box, _analysis(net, box))
    assert not d["certified"]
    if d["refuted"]:
        ce = np.array(d["counterexample"])
        assert np.argmax(net.forward_float(ce[None])[net.output][0]) == d["float_class"]


def test_saturating_layers_are_named():
    """Calibrated on a tenth of the box it is certified on, the net saturates: the certificate
    names the layers and channels, and marks those a real input drives past the int8 range."""
    net, pg = netgen.mlp([4, 8, 8, 2], ["relu", "relu", None], seed=6, calib_scale=0.1).net()
    box = Box(np.full(4, -1.0), np.full(4, 1.0))
    cert = certify(net, pg, [box], budget=100.0, target="t", method="split", settings=SMALL)
    sats = cert.regions[0].saturations
    assert sats, "no saturating channel reported"
    assert all(s.float_high > s.int8_high or s.float_low < s.int8_low for s in sats)
    assert any(s.witnessed for s in sats)


def test_docs_name_every_engine_and_every_setting():
    """docs/engines.md is where a user looks up a method or a knob: it must name each one."""
    from dataclasses import fields
    from pathlib import Path

    from toolchain.certify.settings import Settings

    text = (Path(__file__).resolve().parents[1] / "docs" / "engines.md").read_text(encoding="utf-8")
    assert all(f"| `{m}` |" in text for m in METHODS), [m for m in METHODS if f"| `{m}` |" not in text]
    missing = [f.name for f in fields(Settings) if f"| `{f.name}` |" not in text]
    assert not missing, f"settings not documented in docs/engines.md: {missing}"
