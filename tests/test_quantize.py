"""Tests of the quantize stage (toolchain/quantize.py) and of the zoo it builds (tests/zoo.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
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
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path


@pytest.mark.tf
def test_keras_file_conversion_is_deterministic_and_silent(tmp_path: Path,
                                                           capfd: pytest.CaptureFixture) -> None:
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


# --------------------------------------------------------------------------------------------- Keras 2 files


@dataclass(frozen=True)
class _Keras2Case:
    path: Path
    sample_shape: tuple[int, ...]
    reference: np.ndarray  # the tf-keras model's own predictions on `samples`, before saving
    samples: np.ndarray


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Keras2Case]:
    """Tiny models trained one step by tf-keras (Keras 2) with Adam and saved the Keras 2 way.

    `dense*`: Dense layers, trained with the OptimizerV2 Adam of Keras ≤ 2.10 (`optimizers.legacy`), whose
    SavedModel makes TensorFlow's loader call `add_slot`; `conv*`: Conv2D + BatchNorm + a TF op called in
    the functional model (a TFOpLambda layer, which Keras 3 cannot read), trained with the Adam of Keras
    2.11+. `*_sm` are SavedModel directories, `*.h5` HDF5 files; `_noopt` ones are saved without the
    optimizer, the others with its slot variables.
    """
    qz._tf()
    with qz._silenced():
        import tf_keras as k2

        k2.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        dense = k2.Sequential([k2.Input((4,)), k2.layers.Dense(8, activation="relu"), k2.layers.Dense(3)])
        inp = k2.Input((6, 6, 2))
        x = k2.layers.Conv2D(4, 3, padding="same")(inp)
        x = k2.layers.BatchNormalization()(x)
        x = k2.layers.ReLU()(x)
        x = k2.layers.GlobalAveragePooling2D()(x)
        x = x * 0.5  # a TF op on a Keras tensor: saved as a TFOpLambda layer
        conv = k2.Model(inp, k2.layers.Dense(3)(x))
        out_dir = tmp_path_factory.mktemp("keras2")
        cases = {}
        for name, model, shape, optimizer in (("dense", dense, (4,), k2.optimizers.legacy.Adam()),
                                              ("conv", conv, (6, 6, 2), k2.optimizers.Adam())):
            model.compile(optimizer=optimizer, loss="mse")
            data = rng.uniform(-1, 1, (16, *shape)).astype(np.float32)
            target = rng.uniform(-1, 1, (16, 3)).astype(np.float32)
            model.fit(data, target, epochs=1, batch_size=16, verbose=0)
            assert model.optimizer.iterations.numpy() == 1  # the optimizer has state (Adam slots) to save
            samples = qz.sample_region(np.full(shape, -1.0), np.full(shape, 1.0), 16, seed=1)
            reference = model.predict(samples, verbose=0)
            for suffix, kwargs in (("_sm", {}), (".h5", {}), ("_noopt_sm", {"include_optimizer": False}),
                                   ("_noopt.h5", {"include_optimizer": False})):
                path = out_dir / f"{name}{suffix}"
                model.save(path, **kwargs)
                cases[path.name] = _Keras2Case(path, shape, reference, samples)
    return cases


def _run_tflite(path: Path, samples: np.ndarray) -> np.ndarray:
    """Outputs of a .tflite file (dequantized when its output is int8) on each sample, batch 1."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    rows = []
    for sample in samples:
        x = sample[None]
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            x = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])[0]
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = scale * (y.astype(np.float64) - zp)
        rows.append(np.asarray(y, dtype=np.float64))
    return np.stack(rows)


@pytest.mark.tf
@pytest.mark.parametrize("name", ["dense_sm", "dense_noopt_sm", "conv_sm", "dense.h5", "dense_noopt.h5",
                                  "conv.h5", "conv_noopt.h5"])
def test_keras2_files_quantize_to_the_same_function(keras2_files: dict, tmp_path: Path, name: str) -> None:
    """Keras 2 SavedModels (with the optimizer: the `add_slot` failure) and .h5 files convert faithfully.

    Faithful: the float TFLite file computes what the tf-keras model computed before it was saved (not
    only what the reloaded model computes), and the int8 file runs and stays near it.
    """
    case = keras2_files[name]
    result = qz.quantize(case.path, case.samples, tmp_path)
    assert result.input_shape == (1, *case.sample_shape)
    assert result.keras_vs_float_max_abs < 1e-5
    float_out = _run_tflite(result.float_tflite, case.samples)
    np.testing.assert_allclose(float_out, case.reference, rtol=0, atol=1e-5)
    (inp,), (out,) = _io_details(result.int8_tflite)
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    int8_out = _run_tflite(result.int8_tflite, case.samples)
    out_scale = out["quantization"][0]
    # int8 rounding through two or three layers: a few output steps, not a different function
    assert np.max(np.abs(int8_out - case.reference)) < 8 * out_scale


@pytest.mark.tf
def test_tf_keras_reads_what_keras3_cannot_and_keras3_loading_is_unchanged(keras2_files: dict,
                                                                           tmp_path: Path) -> None:
    """A TFOpLambda .h5 needs tf-keras; afterwards Keras 3 still reads .keras and .h5 files itself."""
    keras = qz._keras()
    legacy = keras2_files["conv.h5"].path
    with pytest.raises(ValueError, match="TFOpLambda"), qz._silenced():
        keras.models.load_model(legacy, compile=False)
    assert type(qz.load_keras_model(legacy)).__module__.startswith("tf_keras.")

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(2)])
    x = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 8, seed=0)
    want = np.asarray(model(x))
    model.save(tmp_path / "k3.keras")
    with qz._silenced():
        model.save(tmp_path / "k3.h5")
    for path in (tmp_path / "k3.keras", tmp_path / "k3.h5"):
        loaded = qz.load_keras_model(path)
        assert type(loaded).__module__.startswith("keras."), path
        np.testing.assert_array_equal(np.asarray(loaded(x)), want)
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert qz._tf().keras.Model is keras.Model  # tf.keras is still Keras 3


@pytest.mark.tf
def test_keras2_saved_model_without_serving_signature_is_revived_by_tf_keras(tmp_path: Path) -> None:
    """A Keras 2 SavedModel exported with only a custom-named signature: its Keras metadata rebuilds it."""
    tf = qz._tf()
    with qz._silenced():
        import tf_keras as k2

        k2.utils.set_random_seed(0)
        model = k2.Sequential([k2.Input((4,)), k2.layers.Dense(3, activation="relu")])
        predict = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        model.save(tmp_path / "sm", signatures={"predict": predict.get_concrete_function()})
    x = qz.sample_region(np.full(4, -1.0), np.full(4, 1.0), 8, seed=0)
    loaded = qz.load_keras_model(tmp_path / "sm")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=0, atol=1e-6)
    (tmp_path / "sm" / "keras_metadata.pb").unlink()  # a plain TF SavedModel: nothing to rebuild from
    with pytest.raises(ModelError, match="no 'serving_default' signature \\(signatures: predict\\)"):
        qz.load_keras_model(tmp_path / "sm")


@pytest.mark.tf
def test_tf_keras_is_imported_only_for_files_keras3_cannot_read(tmp_path: Path) -> None:
    path = _tiny_model_file(tmp_path)
    code = ("import sys; from toolchain import quantize as qz; qz.load_keras_model(sys.argv[1]); "
            "assert 'tf_keras' not in sys.modules, 'tf_keras imported'")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO, capture_output=True)


@pytest.mark.tf
def test_saved_model_with_optimizer_without_tf_keras_names_the_package(keras2_files: dict) -> None:
    """Without tf-keras, the `add_slot` failure becomes one line that says what to install."""
    path = keras2_files["dense_sm"].path
    code = ("import sys; sys.modules['tf_keras'] = None\n"  # as if tf-keras were not installed
            "from toolchain import quantize as qz\n"
            "from toolchain.errors import ModelError\n"
            "try:\n    qz.load_keras_model(sys.argv[1])\n"
            "except ModelError as exc:\n    print(exc)\nelse:\n    print('loaded')\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO, capture_output=True,
                          text=True)
    message = done.stdout.strip()
    assert message.startswith(f"{path}: cannot load SavedModel") and "\n" not in message
    assert "tf-keras" in message and "pip install" in message


@pytest.mark.tf
def test_unreadable_keras2_files_give_one_line(keras2_files: dict, tmp_path: Path) -> None:
    """An .h5 with a Python lambda (refused, not run, by both Keras packages) and a corrupt SavedModel."""
    qz._tf()
    with qz._silenced():
        import tf_keras as k2

        inp = k2.Input((3,))
        model = k2.Model(inp, k2.layers.Lambda(lambda t: t * 2.0)(k2.layers.Dense(2)(inp)))
        model.save(tmp_path / "lambda.h5")
    broken = tmp_path / "broken_sm"
    shutil.copytree(keras2_files["dense_sm"].path, broken)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    for path, why in ((tmp_path / "lambda.h5", "lambda"), (broken, "SavedModel")):
        with pytest.raises(ModelError) as info:
            qz.load_keras_model(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and why.lower() in message.lower()


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


@pytest.mark.tf
def test_recurrent_layers_are_refused_before_the_converter(tmp_path: Path) -> None:
    """TF's int8 conversion of a GRU dies with a segmentation fault (exit 139, no message): a recurrent
    layer is one line naming it, before the converter runs."""
    from toolchain.errors import ModelError

    keras = qz._keras()
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4), keras.layers.Dense(2)])
    rep = np.zeros((4, 5, 3), dtype=np.float32)
    with pytest.raises(ModelError, match=r"layer 'gru.*' \(GRU\): recurrent layers are not supported"):
        qz.quantize_keras_model(model, rep, tmp_path, source=tmp_path / "m.keras")
