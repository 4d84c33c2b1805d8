"""Tests of the quantize stage (toolchain/quantize.py) and of the zoo it builds (tests/zoo.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolchain import quantize as qz
from toolchain.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"
needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"shared models folder {MODELS} is absent")

# name → (sample shape fed to the model, representative box)
REAL_MODELS = {
    "acasxu_1_1.h5": ((5,), (-0.5, 0.5)),
    "ad01.h5": ((640,), (-1.0, 1.0)),
    "pretrainedResnet.h5": ((32, 32, 3), (0.0, 1.0)),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _io_details(path: Path) -> tuple[list[dict], list[dict]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return interp.get_input_details(), interp.get_output_details()


# --------------------------------------------------------------------------------------------- no TF


def test_import_does_not_import_tensorflow() -> None:
    code = "import sys, toolchain.quantize; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_sample_region_is_reproducible_and_inside() -> None:
    low, high = np.array([0.0, -1.0, 5.0]), np.array([1.0, 1.0, 5.0])
    a = qz.sample_region(low, high, 100, seed=3)
    assert a.dtype == np.float32 and a.shape == (100, 3)
    assert np.array_equal(a, qz.sample_region(low, high, 100, seed=3))
    assert np.all(a >= low.astype(np.float32)) and np.all(a <= high.astype(np.float32))
    assert np.all(a[:, 2] == 5.0)


def test_load_representative_npy_and_csv(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "r.npy", data)
    (tmp_path / "r.csv").write_text("\n".join(",".join(str(v) for v in row) for row in data))
    for name in ("r.npy", "r.csv"):
        got = qz.load_representative(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, data)


@pytest.mark.parametrize("content", [b"1,2\n3,abc\n", b"\x93NUMPY garbage"])
def test_load_representative_bad_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / ("bad.csv" if content.startswith(b"1") else "bad.npy")
    path.write_bytes(content)
    with pytest.raises(ModelError, match=str(path)):
        qz.load_representative(path)


def test_load_representative_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        qz.load_representative(tmp_path / "nope.npy")


# --------------------------------------------------------------------------------------------- bad models


@pytest.mark.tf
@pytest.mark.parametrize(
    ("name", "content"),
    [("missing.h5", None), ("random.h5", bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))),
     ("notes.txt", b"this is not a model\n"), ("fake.keras", b"PK not really a zip"),
     ("text.h5", b"hello\n")],
)
def test_bad_model_files_raise_model_error(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        qz.load_keras_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "Traceback" not in message


@pytest.mark.tf
def test_representative_shape_mismatch_is_model_error(tmp_path: Path) -> None:
    """Representative data that does not fit the model is a ModelError, not a converter traceback."""
    keras = qz._keras()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ModelError, match="do not fit"):
        qz.quantize_keras_model(model, np.zeros((4, 5), np.float32), tmp_path)


# --------------------------------------------------------------------------------------------- conversions


def _tiny_model_file(tmp_path: Path) -> Path:
    keras = qz._keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path


@pytest.mark.tf
def test_keras_file_conversion_is_deterministic_and_silent(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = _tiny_model_file(tmp_path)
    rep = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 32, seed=0)
    capfd.readouterr()
    first = qz.quantize(path, rep, tmp_path / "a")
    second = qz.quantize(path, rep, tmp_path / "b")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert _sha(first.int8_tflite) == _sha(second.int8_tflite)
    assert _sha(first.float_tflite) == _sha(second.float_tflite)
    assert first.input_shape == (1, 4)
    assert first.keras_vs_float_max_abs < 1e-5


@pytest.mark.tf
def test_per_tensor_and_float_io(tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    path = _tiny_model_file(tmp_path)
    rep = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 16, seed=1)
    result = qz.quantize(path, rep, tmp_path, int8_io=False, per_channel=False)
    (inp,), (out,) = _io_details(result.int8_tflite)
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    graph = schema.Model.GetRootAs(result.int8_tflite.read_bytes(), 0).Subgraphs(0)
    weight_scales = [graph.Tensors(i).Quantization().ScaleLength() for i in range(graph.TensorsLength())
                     if graph.Tensors(i).Type() == schema.TensorType.INT8 and graph.Tensors(i).Buffer() > 0
                     and len(graph.Tensors(i).ShapeAsNumpy()) == 2]
    assert weight_scales and all(n == 1 for n in weight_scales)


@pytest.mark.tf
def test_saved_model_directory(tmp_path: Path) -> None:
    keras = qz._keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    with qz._silenced():
        model.export(tmp_path / "sm")
    rep = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 16, seed=2)
    result = qz.quantize(tmp_path / "sm", rep, tmp_path / "out")
    assert result.input_shape == (1, 4) and result.keras_vs_float_max_abs < 1e-5


@pytest.mark.tf
@needs_models
def test_h5_fallback_rebuild_drops_unknown_config_keys(tmp_path: Path) -> None:
    """A legacy .h5 whose layer config Keras 3 rejects is rebuilt from its sanitised config + weights."""
    import h5py

    path = tmp_path / "acas_extra_key.h5"
    shutil.copy(MODELS / "acasxu_1_1.h5", path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        config["config"]["layers"][0]["config"]["unknown_legacy_key"] = 1
        h5.attrs["model_config"] = json.dumps(config)
    rebuilt = qz.load_keras_model(path)
    reference = qz.load_keras_model(MODELS / "acasxu_1_1.h5")
    x = qz.sample_region(np.full(5, -0.5), np.full(5, 0.5), 8, seed=0)
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(reference(x[:, None, :]))[:, 0])


@pytest.mark.tf
@pytest.mark.slow
@needs_models
@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_real_models_convert_to_int8_batch1(tmp_path: Path, name: str) -> None:
    shape, (low, high) = REAL_MODELS[name]
    rep = qz.sample_region(np.full(shape, low), np.full(shape, high), 16, seed=0)
    first = qz.quantize(MODELS / name, rep, tmp_path / "a")
    assert first.input_shape == (1, *shape)
    (inp,), (out,) = _io_details(first.int8_tflite)
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert tuple(inp["shape"]) == first.input_shape and out["shape"][0] == 1
    assert first.keras_vs_float_max_abs < 1e-3
    second = qz.quantize(MODELS / name, rep, tmp_path / "b")
    assert _sha(first.int8_tflite) == _sha(second.int8_tflite)
    assert _sha(first.float_tflite) == _sha(second.float_tflite)


# --------------------------------------------------------------------------------------------- zoo


@pytest.fixture(scope="module")
def zoo() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from zoo import build_zoo

    return build_zoo(REPO / ".cache" / "zoo")


@pytest.mark.tf
def test_zoo_covers_every_op(zoo: dict) -> None:
    from zoo import ZOO_OPS, coverage_table

    covered = {op for model in zoo.values() for op in model.ops}
    assert ZOO_OPS <= covered, f"missing {sorted(ZOO_OPS - covered)}\n{coverage_table(zoo)}"


@pytest.mark.tf
def test_zoo_models_are_int8_batch1_and_annotated(zoo: dict) -> None:
    for model in zoo.values():
        (inp,), (out,) = _io_details(model.int8_tflite)
        assert inp["dtype"] == np.int8 and out["dtype"] == np.int8, model.name
        assert tuple(inp["shape"]) == model.input_shape and model.input_shape[0] == 1
        rep = np.load(model.representative)
        assert rep.shape[1:] == model.input_shape[1:]
    assert _io_details(zoo["mlp_positive_input"].int8_tflite)[0][0]["quantization"][1] == -128
    assert {m.per_channel for m in zoo.values()} == {True, False}


@pytest.mark.tf
def test_zoo_multiplier_shifts_have_both_signs(zoo: dict) -> None:
    """frexp exponents of s_in·s_w/s_out over FC layers: > 0 in mlp_big_multiplier, ≤ −20 in the tiny one."""
    from ai_edge_litert import schema_py_generated as schema

    def exponents(path: Path) -> np.ndarray:
        graph = schema.Model.GetRootAs(path.read_bytes(), 0).Subgraphs(0)
        out = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            scale = [graph.Tensors(t).Quantization().ScaleAsNumpy() for t in (op.Inputs(0), op.Inputs(1))]
            s_out = graph.Tensors(op.Outputs(0)).Quantization().ScaleAsNumpy()
            out.append(np.frexp(scale[0][0] * scale[1] / s_out[0])[1])
        return np.concatenate(out)

    assert exponents(zoo["mlp_big_multiplier"].int8_tflite).max() > 0
    assert exponents(zoo["mlp_tiny_multiplier"].int8_tflite).min() <= -20


@pytest.mark.tf
def test_pump_classifier_converts_and_samples_lie_in_box(tmp_path: Path) -> None:
    samples = qz.load_representative(REPO / "configs" / "data" / "pump_samples.npy")
    assert samples.shape[1:] == (8,) and samples.min() >= -1.0 and samples.max() <= 1.0
    result = qz.quantize(REPO / "configs" / "models" / "pump_classifier.keras", samples, tmp_path)
    assert result.input_shape == (1, 8) and result.keras_vs_float_max_abs < 1e-4
