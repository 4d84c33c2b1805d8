"""The model pair: loaded once per command, evaluated by the certify engines' own exact functions, and the
one representative-shape inference for `quantize`, `certify` and `run`."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from toolchain.certify import certifier, falsify
from toolchain.cli.main import app
from toolchain.errors import ModelError
from toolchain.pair import float32_runtime_gap, load_pair
from toolchain.tflite import prepare, reader

ORACLES = frozenset({"TflmOracle", "QemuOracle"})  # they load the file bytes themselves: they are the oracles


def _in_oracle() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if type(frame.f_locals.get("self")).__name__ in ORACLES:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@pytest.fixture
def loads(monkeypatch) -> dict[str, list[str]]:
    """Every read_model / parse_model / prepare outside the oracles, by file name."""
    seen: dict[str, list[str]] = {"read": [], "parse": [], "prepare": []}
    read, parse, prep = reader.read_model, reader.parse_model, prepare.prepare

    def counted_read(path, *a, **k):
        if not _in_oracle():
            seen["read"].append(Path(path).name)
        return read(path, *a, **k)

    def counted_parse(buf, path=None, *a, **k):
        if not _in_oracle():
            seen["parse"].append(Path(path).name if path is not None else "<bytes>")
        return parse(buf, path, *a, **k)

    def counted_prepare(graph, *a, **k):
        if not _in_oracle():
            seen["prepare"].append(graph.name)
        return prep(graph, *a, **k)

    monkeypatch.setattr(reader, "read_model", counted_read)
    monkeypatch.setattr(reader, "parse_model", counted_parse)
    monkeypatch.setattr(prepare, "prepare", counted_prepare)
    return seen


def _fake(monkeypatch) -> None:
    from test_gate import fake_engine

    monkeypatch.setattr(certifier, "certify", fake_engine())


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- load once


@pytest.mark.tf
def test_one_run_reads_each_tflite_once_and_prepares_once(tmp_path, monkeypatch, loads):
    from test_gate import write_config

    _fake(monkeypatch)
    res = CliRunner().invoke(app, ["run", str(write_config(tmp_path)), "--target", "cortex-m4", "--out",
                                   str(tmp_path / "build"), "--json"])
    assert res.exit_code == 0, res.output
    checks = {c["name"]: c["status"] for c in json.loads(res.stdout)["checks"]}
    assert checks["bitexact"] == "pass"  # the tflite-micro oracle really ran
    assert sorted(loads["read"]) == ["model_float.tflite", "model_int8.tflite"]
    assert sorted(loads["parse"]) == ["model_float.tflite", "model_int8.tflite"]
    assert loads["prepare"] == ["model_int8.tflite"]


def test_certify_on_given_tflite_files_reads_each_once(tmp_path, monkeypatch, zoo, loads):
    m = zoo["mlp_fused"]
    cfg = _write(tmp_path / "pair.yaml", {"float_tflite": str(m.float_tflite),
                                          "int8_tflite": str(m.int8_tflite),
                                          "region": {"box": {"low": -1.0, "high": 1.0}},
                                          "budget": {"max_abs_error": 100.0}, "representative_data": 16})
    _fake(monkeypatch)
    res = CliRunner().invoke(app, ["certify", str(cfg), "--target", "cortex-m4", "--out",
                                   str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    names = sorted([m.float_tflite.name, m.int8_tflite.name])
    assert sorted(loads["read"]) == names and sorted(loads["parse"]) == names
    assert loads["prepare"] == [m.int8_tflite.name]


# --------------------------------------------------------------------------------------------- the pair


def test_pair_evaluates_with_the_engines_functions(zoo):
    m = zoo["mlp_softmax"]
    pair = load_pair(m.float_tflite, m.int8_tflite, "double")
    assert pair.net is pair.net  # merged once
    assert pair.net.certified_tensor != pair.int8_graph.output.name  # the logits before SOFTMAX
    xs = np.random.default_rng(0).uniform(-1, 1, (2000, pair.net.n_inputs))
    e = pair.errors(xs)
    assert e.shape == (2000, pair.net.n_outputs)
    assert np.array_equal(e, falsify.errors(pair.net, pair.prepared, xs))
    f, fq = pair.evaluate(xs)
    assert np.array_equal(f, pair.net.forward_float(xs)[pair.net.output])
    assert np.allclose(f - fq, e, rtol=0, atol=1e-12)
    q = pair.device_input(xs[:3])
    assert q.dtype == np.int8 and q.shape == (3, *pair.int8_graph.input.shape)
    assert pair.int8_sha256 == hashlib.sha256(m.int8_tflite.read_bytes()).hexdigest()


def test_float32_runtime_is_measured_against_the_reference(zoo):
    m = zoo["mlp_softmax"]
    pair = load_pair(m.float_tflite, m.int8_tflite, "double")
    xs = np.random.default_rng(1).uniform(-1, 1, (16, pair.net.n_inputs))
    gap = float32_runtime_gap(pair, xs)
    assert 0.0 < gap < 1e-4  # float32 rounding on the logits: small, and not zero


def test_int8_interface_samples_sit_on_the_input_grid(zoo):
    m = zoo["mlp_fused"]
    pair = load_pair(m.float_tflite, m.int8_tflite, "double", input_interface="int8")
    lo, hi = np.full(pair.net.n_inputs, -0.3), np.full(pair.net.n_inputs, 0.4)
    xs = pair.on_input_grid(np.random.default_rng(2).uniform(lo, hi, (50, lo.size)), lo, hi)
    steps = xs / pair.net.input_scale
    assert np.allclose(steps, np.rint(steps), atol=1e-9) and np.all(xs >= lo) and np.all(xs <= hi)
    off_grid = xs + 1e-3
    float_interface = load_pair(m.float_tflite, m.int8_tflite, "double")
    assert np.array_equal(float_interface.on_input_grid(off_grid, lo, hi), off_grid)


def test_a_bad_file_names_itself(tmp_path, zoo):
    bad = tmp_path / "model_int8.tflite"
    bad.write_bytes(zoo["mlp_fused"].int8_tflite.read_bytes()[:100])
    with pytest.raises(ModelError, match=str(bad)):
        load_pair(zoo["mlp_fused"].float_tflite, bad, "double")


# --------------------------------------------------------------------------------------------- sample shape


@pytest.fixture(scope="module")
def image_config(tmp_path_factory) -> Path:
    """A small conv model of input (8, 8, 3), an `around` region of two balls, `representative_data: 32`."""
    from toolchain import quantize as qz

    keras = qz._keras()
    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("image")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    model.save(d / "conv.keras")
    np.save(d / "centers.npy", np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32))
    around = {"data": "centers.npy", "radius": 0.05, "count": 2}
    return _write(d / "image.yaml", {"model": "conv.keras", "budget": {"max_abs_error": 100.0},
                                     "region": {"around": around}, "representative_data": 32, "samples": 100})


@pytest.mark.tf
def test_quantize_draws_image_shaped_samples_from_an_around_region(image_config, tmp_path):
    res = CliRunner().invoke(app, ["quantize", str(image_config), "--out", str(tmp_path / "q"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["input_shape"] == [1, 8, 8, 3] and doc["representative_samples"] == 32


@pytest.mark.tf
@pytest.mark.parametrize("command", ["certify", "run"])
def test_certify_and_run_take_the_same_shape_as_quantize(image_config, tmp_path, monkeypatch, command):
    _fake(monkeypatch)
    res = CliRunner().invoke(app, [command, str(image_config), "--target", "cortex-m4", "--out",
                                   str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, (res.output, res.stderr)
    doc = json.loads(res.stdout)
    regions = doc["regions"] if command == "certify" else None
    if command == "run":
        assert doc["verdict"] == "pass"
        regions = json.loads((Path(doc["artifact_dir"]) / "certificate.json").read_text())["regions"]
    assert regions is not None and len(regions) == 2 and len(regions[0]["witness"]["input"]) == 8 * 8 * 3


def test_tflite_configs_take_the_int8_graph_input_shape(tmp_path, zoo):
    from toolchain.config import load_config, representative_samples, sample_shape

    m = zoo["cnn_conv"]
    cfg = load_config(_write(tmp_path / "c.yaml", {
        "float_tflite": str(m.float_tflite), "int8_tflite": str(m.int8_tflite), "representative_data": 8,
        "region": {"box": {"low": -1.0, "high": 1.0}}, "budget": {"max_abs_error": 1.0}}))
    shape = sample_shape(cfg, reader.read_model(m.int8_tflite).input.shape)
    assert shape == (12, 12, 3) and representative_samples(cfg, shape).shape == (8, 12, 12, 3)
