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
               "mlp_softmax", "cnn_depthwise", "cnn_conv", "mlp_leaky", "cnn1d_max", "mlp_sigmoid_out", "cnn_prelu",
               "mlp_normalized", "mlp_residual", "cnn1d_permuted", "cnn_cropped", "cnn_decoder")


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


@pytest.mark.tf
@pytest.mark.parametrize("name", CERTIFIABLE)
def test_every_lowering_holds_the_device_within_its_rounding_term(zoo, name):
    """Node by node, the int8 side of the merged network fed the device's own input tensors gives the
    device's output tensor within the node's rounding term (auxiliary nodes: exactly), and the float side
    gives the float32 runtime's certified tensor: what every engine assumes of each op's lowering."""
    from toolchain.execute import run
    from toolchain.merge import matmul_t
    from toolchain.pair import float32_runtime_gap, load_pair

    pair = load_pair(zoo[name].float_tflite, zoo[name].int8_tflite, "double", "float")
    net, pg = pair.net, pair.prepared
    xs = np.random.default_rng(7).uniform(-1, 1, (100, net.n_inputs))
    assert float32_runtime_gap(pair, xs) < 1e-4
    index = {t.name: t.index for t in pg.graph.tensors}
    r = run(pg, falsify.quantized_input(net, pg, xs), keep_intermediates=True)

    def device(node):
        q = r.tensors[index[node.tensor]].reshape(len(xs), -1).astype(np.float64)
        return node.scale * (q - node.zero_point)

    yq = {0: device(net.nodes[0])}
    for t, node in enumerate(net.nodes[1:], 1):
        u = node.c_q + sum(matmul_t(yq[i], A) for i, A in zip(node.inputs, node.A_q, strict=True))
        model = np.clip(u, node.q_lo, node.q_hi)
        if not node.tensor:
            yq[t] = model
            continue
        yq[t] = device(node)
        gap = np.abs(model - yq[t]) - node.noise
        assert gap.max() <= 1e-9 * max(1.0, float(np.abs(u).max())), (node.name, gap.max())


@pytest.mark.tf
def test_max_pool_is_lowered_to_pairwise_maxes(zoo):
    """MAX_POOL_2D (2x2 windows, stride 1) becomes two auxiliary ReLU levels, max(a, b) = a + relu(b - a),
    and an exact node: the merged float side is the float graph's max pool (the float32 runtime within
    float32 rounding) and the int8 side adds no rounding term."""
    from toolchain.pair import float32_runtime_gap, load_pair

    m = zoo["cnn_conv"]
    net, _ = _net(m)
    pool = [n for n in net.nodes if "MAX_POOL_2D" in n.name]
    assert [n.tensor == "" for n in pool] == [True, True, False]
    assert [n.size for n in pool] == [2 * pool[2].size, pool[2].size, pool[2].size]
    assert all(np.all(n.noise == 0) for n in pool) and pool[2].linear_only
    pair = load_pair(m.float_tflite, m.int8_tflite, "double", "float")
    xs = np.random.default_rng(0).uniform(-1, 1, (20, net.n_inputs))
    assert float32_runtime_gap(pair, xs) < 1e-5
    # The int8 side: the nodes' maps on the device's pool input give the device's pool output exactly.
    from toolchain.execute import run
    from toolchain.merge import matmul_t

    pg = pair.prepared
    index = {t.name: t.index for t in pg.graph.tensors}
    r = run(pg, falsify.quantized_input(net, pg, xs), keep_intermediates=True)
    first = net.nodes.index(pool[0])
    source = net.nodes[pool[0].inputs[0]]
    yq = {pool[0].inputs[0]: source.scale * (r.tensors[index[source.tensor]].reshape(len(xs), -1) - source.zero_point)}
    for t, node in enumerate(pool, first):
        u = sum(matmul_t(yq[i], A) for i, A in zip(node.inputs, node.A_q, strict=True))
        yq[t] = np.clip(u, node.q_lo, node.q_hi)
    device = r.tensors[index[pool[2].tensor]].reshape(len(xs), -1)
    assert np.array_equal(yq[first + 2], pool[2].scale * (device - pool[2].zero_point))


@pytest.mark.tf
@pytest.mark.parametrize("name, vary", [("cnn_conv", 4), ("mlp_leaky", 3), ("cnn1d_max", 4),
                                        ("cnn_prelu", 4), ("mlp_normalized", 4), ("cnn_decoder", 4)])
@pytest.mark.parametrize("method", ["interval", "differential", "split", "auto", "milp"])
def test_lowered_ops_hold_against_every_int8_input(zoo, name, vary, method):
    """Every engine on the models whose ops lower to several nodes (MAX_POOL_2D, LEAKY_RELU, REDUCE_MAX,
    PRELU), over a box
    where `vary` inputs take five int8 values each and the rest are held on one grid value (int8
    interface): above the error at every input."""
    import itertools

    net, pg = _net(zoo[name], "int8")
    s = net.input_scale
    rng = np.random.default_rng(3)
    center = s * np.round(rng.uniform(-0.8, 0.8, net.n_inputs) / s)
    dims = rng.choice(net.n_inputs, vary, replace=False)
    points = np.tile(center, (5 ** vary, 1))
    points[:, dims] += np.array(list(itertools.product(s * np.arange(-2, 3), repeat=vary)))
    exact = np.abs(falsify.errors(net, pg, points)).max(axis=0)
    low, high = center.copy(), center.copy()
    low[dims] -= 2 * s
    high[dims] += 2 * s
    small = DEFAULT.replace(max_boxes=100, round_boxes=8, chunk_boxes=8, falsify_samples=200, falsify_steps=5,
                            edge_steps=4, edge_starts=2, milp_nodes=200, milp_leaf_nodes=50)
    cert = certify(net, pg, [Box(low, high)], budget=0.0, target="t", method=method, settings=small)
    assert np.all(np.array([o.upper for o in cert.outputs]) >= exact)
    assert np.all(np.array([o.lower for o in cert.outputs]) <= exact + 1e-12)


@pytest.mark.tf
@pytest.mark.parametrize("name, op", [("mlp_leaky", "LEAKY_RELU"), ("cnn_prelu", "PRELU")])
def test_leaky_relus_are_lowered_to_a_relu_and_two_slopes(zoo, name, op):
    """LEAKY_RELU and PRELU: an auxiliary ReLU node on the input's grid, then alpha x + (1 - alpha) relu(x)
    on the float side (the float32 runtime within float32 rounding) and the two multipliers on the int8
    side, within the node's rounding term of the device's output on sampled inputs."""
    from toolchain.execute import run
    from toolchain.merge import matmul_t
    from toolchain.pair import float32_runtime_gap, load_pair

    m = zoo[name]
    net, _ = _net(m)
    leaky = [t for t, n in enumerate(net.nodes) if op in n.name]
    assert len(leaky) == 4 and [net.nodes[t].tensor == "" for t in leaky] == [True, False, True, False]
    pair = load_pair(m.float_tflite, m.int8_tflite, "double", "float")
    xs = np.random.default_rng(0).uniform(-1, 1, (200, net.n_inputs))
    assert float32_runtime_gap(pair, xs) < 1e-5
    pg = pair.prepared
    index = {t.name: t.index for t in pg.graph.tensors}
    r = run(pg, falsify.quantized_input(net, pg, xs), keep_intermediates=True)
    for aux in leaky[::2]:
        relu, out = net.nodes[aux], net.nodes[aux + 1]
        src = net.nodes[relu.inputs[0]]
        assert relu.scale == src.scale and np.all(relu.noise == 0)
        x = src.scale * (r.tensors[index[src.tensor]].reshape(len(xs), -1).astype(np.float64) - src.zero_point)
        yq = {relu.inputs[0]: x, aux: np.clip(x, relu.q_lo, relu.q_hi)}
        u = sum(matmul_t(yq[i], A) for i, A in zip(out.inputs, out.A_q, strict=True))
        device = out.scale * (r.tensors[index[out.tensor]].reshape(len(xs), -1).astype(np.float64) - out.zero_point)
        assert np.all(np.abs(np.clip(u, out.q_lo, out.q_hi) - device) <= out.noise + 1e-12)


@pytest.mark.tf
def test_final_logistic_is_skipped_like_softmax_and_inner_tanh_is_refused(zoo):
    """A sigmoid output layer: the certificate bounds its input (the logits) on both graphs, and says so;
    a TANH inside the network stays one line naming the op."""
    from toolchain.errors import QassureError
    from toolchain.pair import float32_runtime_gap, load_pair

    m = zoo["mlp_sigmoid_out"]
    pair = load_pair(m.float_tflite, m.int8_tflite, "double", "float")
    assert "LOGISTIC" in " ".join(pair.net.notes) and pair.net.n_outputs == 2
    xs = np.random.default_rng(0).uniform(-1, 1, (50, pair.net.n_inputs))
    assert float32_runtime_gap(pair, xs) < 1e-5  # the float side is paired with the float logits
    cert = certify(pair.net, pair.prepared, [Box(np.full(5, -0.2), np.full(5, 0.2))], budget=0.0, target="t",
                   method="differential")
    assert "LOGISTIC" in " ".join(cert.notes)
    with pytest.raises(QassureError, match=r"TANH inside the network is not supported by the certify engines"):
        _net(zoo["mlp_tanh_sigmoid"])


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
    # A budget no bound meets: the search goes on down to boxes bounded by their input cells (two
    # worker processes, as the gate runs it).
    cert = certify(net, pg, [box], budget=1e-6, target="cortex-m4", method="auto",
                   settings=DEFAULT.replace(max_boxes=500, falsify_samples=500), workers=2)
    seen = _sampled_max(net, pg, box, n=4000)
    worst = np.array(cert.witness.input)
    seen = np.maximum(seen, _sampled_max(net, pg, Box(np.maximum(worst - 0.01, box.low),
                                                      np.minimum(worst + 0.01, box.high)), n=4000))
    r = cert.regions[0]
    # The box budget is spent, or `auto` saw splitting stall (the bound within 1% over the last three
    # quarters of the work) first: at 500 boxes this wide box is far from done, and both happen.
    assert (r.work["boxes"] >= 500 or (r.stopped == "stalled" and r.work["boxes"] >= 400))
    assert r.work["enumerated"] >= 1
    assert all(o.upper >= s for o, s in zip(cert.outputs, seen, strict=True))
    assert "SOFTMAX" in " ".join(cert.notes)
