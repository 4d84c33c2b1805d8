"""Tests of model-pair validation (toolchain/tflite/pair_check.py): one model as float + int8, or refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from toolchain import quantize as qz
from toolchain.errors import ModelError
from toolchain.tflite import ir, reader
from toolchain.tflite.pair_check import check_float_graph, constant_deviations, deviation, validate_pair

# --------------------------------------------------------------------------------------------- pure criterion


@pytest.mark.parametrize("seed", range(20))
def test_round_to_nearest_is_within_half_a_scale_and_one_step_more_is_not(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, rng.uniform(0.01, 3.0), size=(6, 9)) * rng.uniform(0.1, 1.0, size=(6, 1))
    s = np.abs(w).max(axis=1, keepdims=True) / 127.0  # symmetric per-channel int8 scales, as converters do
    q = np.round(w / s)
    half, allowed = deviation(w, s * q, s)
    assert half <= 1.0 and allowed <= 1.0
    residual = w / s - q
    i = np.unravel_index(np.argmax(np.abs(residual)), w.shape)
    q_off = q.copy()
    q_off[i] -= np.sign(residual[i]) or 1.0  # one step away from w: at least a whole scale off
    half, allowed = deviation(w, s * q_off, s)
    assert half >= 2.0 and allowed > 1.0


def test_bias_finer_than_float32_is_judged_at_float32_precision() -> None:
    """A bias with |b| / s_b ≈ 2^30 is not resolvable by float32: an ulp of b is ~90 bias steps."""
    b = np.array([0.18, -0.05], dtype=np.float32)
    s_b = np.array([1.7e-10, 1.7e-10])
    folded_elsewhere = b.astype(np.float64) + np.spacing(b).astype(np.float64)  # one float32 ulp away
    q = np.round(folded_elsewhere / s_b)
    half, allowed = deviation(b, q * s_b, s_b)
    assert half > 10 and allowed <= 1.0
    half, allowed = deviation(b, np.round(b * (1 + 1e-4) / s_b) * s_b, s_b)  # another training's bias
    assert allowed > 1.0


def test_zero_scale_channel_must_match_exactly() -> None:
    zeros = np.zeros((2, 3))
    assert deviation(zeros, zeros, np.zeros((2, 1))) == (0.0, 0.0)
    assert deviation(np.full((2, 3), 1e-3), zeros, np.zeros((2, 1)))[0] == np.inf


# --------------------------------------------------------------------------------------------- helpers


def _pair(model, rep: np.ndarray, out_dir: Path) -> tuple[ir.Graph, ir.Graph]:
    res = qz.quantize_keras_model(model, rep, out_dir)
    return reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)


def _zoo_pair(zoo: dict, name: str) -> tuple[ir.Graph, ir.Graph]:
    return reader.read_model(zoo[name].float_tflite), reader.read_model(zoo[name].int8_tflite)


def _refused(float_graph: ir.Graph, int8_graph: ir.Graph) -> str:
    with pytest.raises(ModelError) as info:
        validate_pair(float_graph, int8_graph)
    message = str(info.value)
    assert "\n" not in message
    return message


def _mlp(keras, seed: int, hidden: int = 8, activation: str = "relu"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(hidden, activation=activation),
                             keras.layers.Dense(3)])


def _replace_tensor(graph: ir.Graph, index: int, data: np.ndarray) -> ir.Graph:
    tensors = list(graph.tensors)
    tensors[index] = dataclasses.replace(tensors[index], data=data)
    return dataclasses.replace(graph, tensors=tuple(tensors))


_REP4 = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 64, seed=0)


# --------------------------------------------------------------------------------------------- good pairs


@pytest.mark.tf
def test_zoo_pairs_pass_with_weights_within_half_a_scale(zoo: dict) -> None:
    for name in zoo:
        fg, qg = _zoo_pair(zoo, name)
        validate_pair(fg, qg)
        weights = [d.half_scales for d in constant_deviations(fg, qg) if d.role == "weights"]
        assert weights and max(weights) <= 1.0 + 1e-4, name


@pytest.mark.tf
def test_one_int8_weight_one_step_off_or_a_changed_bias_is_refused(zoo: dict) -> None:
    fg, qg = _zoo_pair(zoo, "cnn_conv")
    conv_f = next(op for op in fg.operators if op.opcode == "CONV_2D")
    conv_q = next(op for op in qg.operators if op.opcode == "CONV_2D")
    w_f, w_q = fg.tensor(conv_f.inputs[1]), qg.tensor(conv_q.inputs[1])
    assert w_f.data is not None and w_q.data is not None and w_q.quant is not None
    s = w_q.quant.scale.reshape(-1, *[1] * (w_q.data.ndim - 1)).astype(np.float64)
    residual = w_f.data / s - w_q.data
    i = np.unravel_index(np.argmax(np.abs(residual)), residual.shape)
    moved = w_q.data.copy()
    moved[i] -= np.int8(np.sign(residual[i]) or 1)
    message = _refused(fg, _replace_tensor(qg, conv_q.inputs[1], moved))
    assert "CONV_2D weights differ" in message and "half-scales" in message

    b_q = qg.tensor(conv_q.inputs[2])
    assert b_q.data is not None
    message = _refused(fg, _replace_tensor(qg, conv_q.inputs[2], b_q.data + np.int32(1000)))
    assert "CONV_2D bias differ" in message


# --------------------------------------------------------------------------------------------- wrong kinds


@pytest.mark.tf
def test_int8_file_as_float_and_float_file_as_int8_are_refused(zoo: dict) -> None:
    fg, qg = _zoo_pair(zoo, "mlp_fused")
    message = _refused(qg, qg)
    assert message.startswith(f"{qg.path}: ") and "full-integer quantized model" in message
    assert "not a float model" in message
    message = _refused(fg, fg)
    assert message.startswith(f"{fg.path}: ") and "is a float model" in message
    assert "not a full-int8 model" in message


@pytest.mark.tf
def test_weight_only_quantized_float_file_is_refused(tmp_path: Path) -> None:
    """`*_float32.tflite` made with Optimize.DEFAULT and no representative data holds int8 weights."""
    keras = qz._keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4)])  # 2048 weights: above the converter's 1024 minimum
    rep = qz.sample_region(np.full(32, -1.0), np.full(32, 1.0), 32, seed=0)
    fg, qg = _pair(model, rep, tmp_path)
    tf = qz._tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([qz._frozen_function(model, (1, 32))])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with qz._silenced():
        (tmp_path / "model_float32.tflite").write_bytes(converter.convert())
    dynamic = reader.read_model(tmp_path / "model_float32.tflite")
    assert any(t.dtype == "int8" and t.is_const for t in dynamic.tensors)  # the converter did quantize
    message = _refused(dynamic, qg)
    assert message == (f"{dynamic.path}: is a dynamic-range quantized model (int8 weights, float "
                       "activations), not a float model")
    message = _refused(fg, dynamic)
    assert "dynamic-range quantized model" in message and "not a full-int8 model" in message
    with pytest.raises(ModelError, match="dynamic-range"):
        check_float_graph(dynamic)

    converter.target_spec.supported_types = [tf.float16]  # float16 weights, DEQUANTIZE'd at run time
    with qz._silenced():
        (tmp_path / "model_fp16.tflite").write_bytes(converter.convert())
    half = reader.read_model(tmp_path / "model_fp16.tflite")
    assert "float16-quantized model (float16 weights), not a float32 model" in _refused(half, qg)


# --------------------------------------------------------------------------------------------- other models


@pytest.mark.tf
def test_different_op_sequences_are_refused(zoo: dict) -> None:
    fg, _ = _zoo_pair(zoo, "mlp_fused")
    _, qg = _zoo_pair(zoo, "cnn_conv")
    message = _refused(fg, qg)
    assert "not an int8 conversion of" in message
    assert "op sequences differ" in message or "ops in" in message


@pytest.mark.tf
def test_different_shapes_or_activations_are_refused(tmp_path: Path, tiny_nets: dict) -> None:
    keras = qz._keras()
    fg, _ = _pair(_mlp(keras, 0, hidden=8), _REP4, tmp_path / "h8")
    _, qg = _pair(_mlp(keras, 0, hidden=6), _REP4, tmp_path / "h6")
    assert "shapes differ" in _refused(fg, qg)

    fg = reader.read_model(tiny_nets[0].float_tflite)  # second layer relu6
    qg = reader.read_model(tiny_nets[2].int8_tflite)  # second layer relu
    assert "fused activation" in _refused(fg, qg)



@pytest.mark.tf
def test_different_wiring_is_refused(zoo: dict) -> None:
    """cnn_residual with the two inputs of its CONCATENATION swapped in the int8 graph: same ops, shapes."""
    fg, qg = _zoo_pair(zoo, "cnn_residual")
    concat = next(op for op in qg.operators if op.opcode == "CONCATENATION")
    swapped = dataclasses.replace(concat, inputs=concat.inputs[::-1])
    operators = tuple(swapped if op is concat else op for op in qg.operators)
    message = _refused(fg, dataclasses.replace(qg, operators=operators))
    assert f"{concat.describe()} input 0 comes from different ops (wired differently)" in message


@pytest.mark.tf
def test_two_trainings_of_one_architecture_are_refused(tmp_path: Path) -> None:
    keras = qz._keras()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (256, 4)).astype(np.float32)
    y = np.stack([x[:, 0] * x[:, 1], np.abs(x[:, 2]), x[:, 3] - x[:, 0]], axis=1).astype(np.float32)
    graphs = []
    for seed in (1, 2):
        model = _mlp(keras, seed)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, epochs=5, batch_size=32, verbose=0)
        graphs.append(_pair(model, _REP4, tmp_path / f"seed{seed}"))
    (fa, qa), (fb, qb) = graphs
    validate_pair(fa, qa)
    validate_pair(fb, qb)
    message = _refused(fa, qb)
    assert "half-scales" in message and "another training" in message
    # the two trainings are far apart, not near the threshold: tens of half-scales at least
    worst = max(d.half_scales for d in constant_deviations(fa, qb) if d.role == "weights")
    assert worst > 20


# --------------------------------------------------------------------------------------------- real models


@pytest.mark.tf
@pytest.mark.slow
def test_mlperf_tiny_models_and_their_reference_int8_files(shared_models: Path, tmp_path: Path) -> None:
    """ResNet-8 and the anomaly-detection autoencoder: our conversions pair; the reference int8 files do not.

    pretrainedResnet_quant.tflite is the same training (its weights are within half a scale of ours) but
    an older converter put a RESHAPE before the last FULLY_CONNECTED, so the op sequences differ.
    ad01_int8.tflite has ad01.h5's weights but not its biases (the h5 was saved in another state).
    """
    cases = {"pretrainedResnet": ((32, 32, 3), 0.0, 1.0), "ad01": ((640,), -1.0, 1.0)}
    graphs = {}
    for name, (shape, low, high) in cases.items():
        rep = qz.sample_region(np.full(shape, low), np.full(shape, high), 16, seed=0)
        res = qz.quantize(shared_models / f"{name}.h5", rep, tmp_path / name)
        graphs[name] = reader.read_model(res.float_tflite), reader.read_model(res.int8_tflite)
        validate_pair(*graphs[name])
    resnet_ref = reader.read_model(shared_models / "pretrainedResnet_quant.tflite")
    message = _refused(graphs["pretrainedResnet"][0], resnet_ref)
    assert "op sequences differ" in message and "RESHAPE" in message
    ad01_ref = reader.read_model(shared_models / "ad01_int8.tflite")
    message = _refused(graphs["ad01"][0], ad01_ref)
    assert "FULLY_CONNECTED bias differ" in message
    deviations = constant_deviations(graphs["ad01"][0], ad01_ref)
    assert max(d.allowed_fraction for d in deviations if d.role == "weights") <= 1.0
