"""The executor against tflite-micro, bit for bit: every zoo model and the real int8 models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zoo as zoo_module

from toolchain.bitexact import check_bitexact, random_inputs
from toolchain.targets import load_target
from toolchain.tflite import reader

SAMPLES = 64
ZOO_NAMES = tuple(zoo_module._SPECS)  # collected without building anything
SHARED_INT8 = ("ad01_int8.tflite", "pretrainedResnet_quant.tflite")


@pytest.fixture(scope="module")
def m4():
    return load_target("cortex-m4")


def _check(r) -> None:
    assert r.ok, (r.model, r.exact, r.samples, r.first_difference)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_bitexact_against_tflm(zoo: dict, m4, name: str) -> None:
    """64 random inputs (the first two all -128 and all 127) per model, per-channel and per-tensor."""
    _check(check_bitexact(zoo[name].int8_tflite, m4, samples=SAMPLES, seed=1))


def test_zoo_has_both_quantization_granularities(zoo: dict) -> None:
    assert set(ZOO_NAMES) == set(zoo)
    assert any(m.per_channel for m in zoo.values()) and any(not m.per_channel for m in zoo.values())


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_bitexact_on_calibration_data(zoo: dict, m4, name: str) -> None:
    """Realistic inputs too: the calibration samples, quantized as the model's input says."""
    m = zoo[name]
    graph = reader.read_model(m.int8_tflite)
    assert graph.input.quant is not None
    scale, zp = graph.input.quant.scalar()
    rep = np.load(m.representative)[:32]
    xs = np.clip(np.round(rep / scale) + zp, -128, 127).astype(np.int8).reshape((-1, *graph.input.shape))
    _check(check_bitexact(m.int8_tflite, m4, inputs=xs))


@pytest.mark.parametrize("name", SHARED_INT8)
def test_shared_models_bitexact_against_tflm(shared_models: Path, m4, name: str) -> None:
    path = shared_models / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    samples = SAMPLES if "ad01" in name else 24  # ResNet-8 runs ~25 ms per TFLM inference
    r = check_bitexact(path, m4, samples=samples, seed=2)
    _check(r)


def test_saturating_inputs_are_first(small_int8_model: Path) -> None:
    xs = random_inputs(reader.read_model(small_int8_model), 4, seed=0)
    assert np.all(xs[0] == -128) and np.all(xs[1] == 127)


def test_single_rounding_target_differs_from_tflm_double_rounding(zoo: dict) -> None:
    """TFLM's Python interpreter rounds twice; a single-rounding build of the same model does not.

    The executor models the target: with single rounding it must disagree with TFLM on some
    inputs (by a small number of LSBs at the first requantizing op), and agree on most."""
    single = load_target("cortex-m4-single-rounding")
    totals = [0, 0]
    firsts = set()
    for name in ("mlp_fused", "cnn_conv", "cnn_residual"):
        r = check_bitexact(zoo[name].int8_tflite, single, samples=SAMPLES, seed=3)
        totals[0] += r.exact
        totals[1] += r.samples
        if r.first_difference is not None:
            assert r.first_difference.max_lsb == 1  # one rounding step apart where they first part
            firsts.add(r.first_difference.opcode)
    assert totals[0] < totals[1], "single rounding never differed from TFLM's double rounding"
    assert totals[0] > totals[1] // 4
    assert firsts <= {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "MEAN"}


def test_first_differing_op_is_named(zoo: dict, m4, monkeypatch) -> None:
    """A deliberately wrong executor (one multiplier off) is caught and located."""
    from toolchain.ops.common import Requant
    from toolchain.ops.fully_connected import FullyConnected
    from toolchain.tflite import prepare as P

    real = P.prepare

    def skewed(graph, rounding="double"):
        pg = real(graph, rounding)
        ops = list(pg.ops)
        for i, p in enumerate(ops):
            if isinstance(p, FullyConnected):
                rq = p.requant
                ops[i] = FullyConnected(p.input_offset, p.weights, p.bias,
                                        Requant(rq.multiplier + (1 << 26), rq.shift, rq.output_offset,
                                                rq.act_min, rq.act_max), p.per_channel)
                break
        return P.PreparedGraph(pg.graph, tuple(ops), pg.rounding)

    monkeypatch.setattr(P, "prepare", skewed)
    r = check_bitexact(zoo["mlp_fused"].int8_tflite, m4, samples=16)
    assert not r.ok and r.first_difference is not None
    assert (r.first_difference.op_index, r.first_difference.opcode) == (0, "FULLY_CONNECTED")


@pytest.mark.tf
def test_float_io_model_quantize_and_dequantize_ops_bitexact(tmp_path: Path, m4) -> None:
    """int8 inside, float at the edges: QUANTIZE (AffineQuantize, roundf in float32) first and
    DEQUANTIZE last, as the converter emits without int8 I/O."""
    import keras

    from toolchain.quantize import quantize_keras_model, sample_region

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    res = quantize_keras_model(model, sample_region(np.full(6, -1.0), np.full(6, 1.0), 64, 0), tmp_path,
                               int8_io=False)
    ops = [op.opcode for op in reader.read_model(res.int8_tflite).operators]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    report = check_bitexact(res.int8_tflite, m4, samples=200, seed=4)
    assert report.exact == report.samples == 200


def test_prepared_graph_is_used_as_given(zoo: dict, m4) -> None:
    """check_bitexact(prepared=...) runs the executor on that very prepared graph (the gate
    prepares once): a skewed multiplier in it is caught, the plain file is not."""
    from toolchain.ops.common import Requant
    from toolchain.ops.fully_connected import FullyConnected
    from toolchain.tflite import prepare as P

    path = zoo["mlp_fused"].int8_tflite
    pg = P.prepare(reader.read_model(path), m4.rounding)
    assert check_bitexact(path, m4, samples=8, prepared=pg).ok
    p = pg.ops[0]
    assert isinstance(p, FullyConnected)
    rq = p.requant
    off = Requant(rq.multiplier + (1 << 26), rq.shift, rq.output_offset, rq.act_min, rq.act_max)
    bad = FullyConnected(p.input_offset, p.weights, p.bias, off, p.per_channel)
    skewed = P.PreparedGraph(pg.graph, (bad, *pg.ops[1:]), pg.rounding)
    r = check_bitexact(path, m4, samples=8, prepared=skewed)
    assert not r.ok and r.first_difference is not None and r.first_difference.op_index == 0
