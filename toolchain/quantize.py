"""Quantize stage: a float Keras model → `model_float.tflite` + `model_int8.tflite` (one converter run each).

Both files come from the same frozen, batch-1 concrete function, so the reconstruct stage sees two graphs
of identical topology (BatchNorm already folded). TensorFlow is imported lazily, inside functions, with
its logging silenced: importing this module never imports TF.

Determinism: conversion and calibration use no randomness (the representative samples are fed in order)
and the same inputs give the same bytes. The converter embeds a `CONVERSION_METADATA` buffer holding
the TensorFlow version and the conversion options, and a `min_runtime_version` string; neither holds a
timestamp, so they are kept as they are (a different TF version may legitimately give different bytes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ModelError

FLOAT_TFLITE_NAME = "model_float.tflite"
INT8_TFLITE_NAME = "model_int8.tflite"
_KERAS_H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class QuantizeResult:
    """The two converted files and what was measured while making them."""

    float_tflite: Path
    int8_tflite: Path
    input_shape: tuple[int, ...]  # concrete input shape of both .tflite files, batch 1 first
    keras_vs_float_max_abs: float  # max |Keras − float TFLite| over the representative samples


# --------------------------------------------------------------------------------------------- silence


@contextlib.contextmanager
def _silenced() -> Iterator[list[str]]:
    """Send fds 1 and 2 (where TF's C++ code and the MLIR converter write) to a temp file.

    Yields a list that, on exit, holds the captured lines, so a failure can quote the useful one.
    Python warnings raised inside are dropped as well.
    """
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.extend(sink.read().decode("utf-8", "replace").splitlines())


def _useful_line(exc: BaseException, captured: list[str], limit: int = 300) -> str:
    """The line of a failure worth showing: the last `error:` line, else the exception's last line."""
    line = _pick_line(exc, captured)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _pick_line(exc: BaseException, captured: list[str]) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() + captured if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    if errors:
        return errors[-1]
    own = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if own:
        return f"{type(exc).__name__}: {own[-1]}"
    return lines[-1] if lines else type(exc).__name__


def _tf() -> Any:
    """Import TensorFlow (once) with its C++ and Python logging turned down."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # oneDNN reorders float sums; off, so Keras outputs do not depend on the CPU's ISA.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        with _silenced():
            import tensorflow as tf  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging  # noqa: PLC0415

        absl_logging.set_verbosity(absl_logging.ERROR)
    return tf


def _keras() -> Any:
    _tf()
    import keras  # noqa: PLC0415

    return keras


_TF_KERAS_INSTALL = "pip install 'tf-keras>=2.18,<2.22'"


def _tf_keras() -> Any | None:
    """The legacy Keras 2 package (tf-keras), or None when it is not installed.

    Imported only when Keras 3 cannot read a file. It is a separate package: importing it changes neither
    `keras` (Keras 3) nor `tf.keras` (chosen by TF_USE_LEGACY_KERAS, which is left alone).
    """
    _tf()
    try:
        with _silenced():
            import tf_keras  # noqa: PLC0415
    except ImportError:
        return None
    return tf_keras


def _keras_of(model: Any) -> Any:
    """The Keras package a model belongs to: tf_keras for models loaded through tf-keras, else Keras 3."""
    if type(model).__module__.split(".")[0] == "tf_keras":
        import tf_keras  # noqa: PLC0415

        return tf_keras
    return _keras()


# --------------------------------------------------------------------------------------------- loading


def load_keras_model(path: Path) -> Any:
    """Load a Keras model from `.keras`, Keras 2 `.h5` or a SavedModel directory (optimizer state ignored).

    Each file is read by Keras 3 first. What Keras 3 cannot read, e.g. Keras 2 layers it dropped
    (TFOpLambda for a TF op called in a functional model), is read by tf-keras, the Keras 2 package.
    Legacy `.h5` files neither reads are rebuilt from their `model_config` JSON with configs reduced
    to the arguments each Keras 3 layer accepts, then weights are set by layer name.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError("model file not found", path)
    if path.is_dir():
        return _load_saved_model(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        import zipfile  # noqa: PLC0415

        if not zipfile.is_zipfile(path):
            raise ModelError("not a .keras archive (expected a zip file)", path)
        keras = _keras()
        try:
            with _silenced() as out:
                return keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            first_line = _useful_line(exc, out, limit=200)
        model, tf_keras_line = _try_tf_keras(path)
        if model is None:
            raise ModelError(f"cannot load Keras model (Keras 3: {first_line}; {tf_keras_line})", path)
        return model
    if suffix in _KERAS_H5_SUFFIXES:
        return _load_h5(path)
    raise ModelError(f"unsupported model format {suffix!r} (expected .keras, .h5 or a SavedModel dir)", path)


def _load_h5(path: Path) -> Any:
    import h5py  # noqa: PLC0415

    if not h5py.is_hdf5(path):
        raise ModelError("not an HDF5 file", path)
    with h5py.File(path, "r") as h5:
        if "model_config" not in h5.attrs:
            raise ModelError("HDF5 file has no 'model_config' (weights-only file?)", path)
    keras = _keras()
    try:
        with _silenced() as out:
            return keras.models.load_model(path, compile=False)
    except Exception as first:
        first_line = _useful_line(first, out, limit=200)
    model, tf_keras_line = _try_tf_keras(path)
    if model is not None:
        return model
    try:
        with _silenced():
            return _rebuild_legacy_h5(path)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load Keras .h5 (Keras 3: {first_line}; {tf_keras_line}); rebuilding from "
                         f"its config also failed: {_useful_line(exc, [], limit=200)}", path) from None


def _try_tf_keras(path: Path) -> tuple[Any | None, str]:
    """(model, "") when tf-keras loads `path`, else (None, why not) for the caller's one-line error.

    Always in tf-keras's safe mode, as Keras 3 reads files: a Lambda layer holding Python bytecode is
    refused, not run. (tf-keras's `load_model` applies `safe_mode` to `.keras` archives only, so for
    `.h5` the safe-mode scope is entered here.)
    """
    tf_keras = _tf_keras()
    if tf_keras is None:
        return None, f"tf-keras, which reads Keras 2 files, is not installed ({_TF_KERAS_INSTALL})"
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope  # noqa: PLC0415
    except ImportError:
        return None, "tf-keras has no safe-mode scope at tf_keras.src.saving.serialization_lib"
    try:
        with _silenced() as out, SafeModeScope(True):
            return tf_keras.models.load_model(str(path), compile=False, safe_mode=True), ""
    except Exception as exc:
        return None, f"tf-keras: {_useful_line(exc, out, limit=200)}"


def _rebuild_legacy_h5(path: Path) -> Any:
    """Rebuild a Keras 2 .h5 model from sanitised layer configs and load its weights by layer name."""
    import h5py  # noqa: PLC0415

    keras = _keras()
    with h5py.File(path, "r") as h5:
        raw = h5.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        clean = _sanitise(config, keras)
        model_cls = keras.Sequential if clean.get("class_name") == "Sequential" else keras.Model
        model = model_cls.from_config(clean["config"])
        group = h5["model_weights"] if "model_weights" in h5 else h5
        by_name = {layer.name: layer for layer in _flat_layers(model)}
        for name in [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("layer_names", [])]:
            names = [n.decode() if isinstance(n, bytes) else n for n in group[name].attrs["weight_names"]]
            if not names:
                continue
            if name not in by_name:
                raise ModelError(f"weights for layer {name!r} but no such layer in the rebuilt model", path)
            by_name[name].set_weights([np.asarray(group[name][w]) for w in names])
    return model


def _flat_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_flat_layers(layer))
    return out


_ALWAYS_KEPT = {"name", "trainable", "dtype", "input_shape"}
_RECURRENT = {"GRU", "LSTM", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}


def _sanitise(node: Any, keras: Any) -> Any:
    """Rewrite a Keras 2 config tree into one Keras 3 accepts (only for the fallback loader)."""
    import inspect  # noqa: PLC0415

    if isinstance(node, list):
        return [_sanitise(x, keras) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _sanitise(v, keras) for k, v in node.items()}
    cls_name, cfg = node.get("class_name"), node.get("config")
    if cls_name == "Sequential" and isinstance(cfg, list):  # Keras ≤ 2.2: config is the layer list
        node["config"] = cfg = {"name": "sequential", "layers": cfg}
    if not (isinstance(cls_name, str) and isinstance(cfg, dict)):
        return node
    if cls_name in ("Policy", "DTypePolicy", "DTypePolicyV2"):  # old mixed-precision policy objects
        return cfg.get("name", "float32")
    if isinstance(cfg.get("dtype"), dict):
        cfg["dtype"] = cfg["dtype"].get("config", {}).get("name", "float32")
    if cls_name == "InputLayer":
        if "batch_input_shape" in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")
        node["config"] = {k: v for k, v in cfg.items() if k in ("batch_shape", "dtype", "sparse", "name")}
        return node
    if "batch_input_shape" in cfg:  # first layer of a Sequential: Keras 3 takes input_shape only
        cfg["input_shape"] = cfg.pop("batch_input_shape")[1:]
    cls = getattr(keras.layers, cls_name, None)
    if isinstance(cls, type):  # the constructor is the first __init__ along the MRO (`object` has one)
        init = next(c.__dict__["__init__"] for c in cls.__mro__ if "__init__" in c.__dict__)
        allowed = set(inspect.signature(init).parameters) | _ALWAYS_KEPT
        node["config"] = {k: v for k, v in cfg.items() if k in allowed}
    return node


def _load_saved_model(path: Path) -> Any:
    """Wrap a TF SavedModel's `serving_default` signature as a single-input Keras model.

    The signature is the graph the training script exported, so nothing is re-implemented. A Keras 2
    SavedModel saved with its optimizer needs tf-keras: TensorFlow's loader imports it by itself to
    revive the optimizer's slot variables (without it: "'_UserObject' object has no attribute 'add_slot'").
    """
    if not (path / "saved_model.pb").exists():
        raise ModelError("directory is not a SavedModel (no saved_model.pb)", path)
    keras = _keras()
    tf = _tf()
    try:
        with _silenced() as out:
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot load SavedModel: {_saved_model_failure(exc, out)}", path) from None
    signatures = dict(loaded.signatures)
    if "serving_default" not in signatures:
        if (path / "keras_metadata.pb").exists():  # a Keras 2 model saved without a serving signature
            model, why = _try_tf_keras(path)
            if model is not None:
                return model
            raise ModelError(f"SavedModel has no 'serving_default' signature and {why}", path)
        raise ModelError(f"SavedModel has no 'serving_default' signature (signatures: "
                         f"{', '.join(sorted(signatures)) or 'none'})", path)
    try:
        with _silenced() as out:
            _, kwargs = signatures["serving_default"].structured_input_signature
            if len(kwargs) != 1:
                raise ModelError(f"SavedModel signature has {len(kwargs)} inputs; one is supported", path)
            (spec,) = kwargs.values()
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
            inp = keras.Input(shape=tuple(spec.shape[1:]), dtype="float32")
            outputs = layer(inp)
            if isinstance(outputs, dict):
                if len(outputs) != 1:
                    raise ModelError(f"SavedModel signature has {len(outputs)} outputs; one is supported",
                                     path)
                (outputs,) = outputs.values()
            return keras.Model(inp, outputs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load SavedModel: {_useful_line(exc, out)}", path) from None


def _saved_model_failure(exc: BaseException, captured: list[str]) -> str:
    """Why tf.saved_model.load failed, naming the missing package when it is a Keras 2 optimizer."""
    import importlib.util  # noqa: PLC0415

    line = _useful_line(exc, captured, limit=200)
    if ("add_slot" in line or "optimizer" in line.lower()) and importlib.util.find_spec("tf_keras") is None:
        return (f"it holds a Keras 2 optimizer, which only tf-keras can revive; install it "
                f"({_TF_KERAS_INSTALL}) [{line}]")
    return line


# ------------------------------------------------------------------------------------- representative data


def sample_region(low: Any, high: Any, count: int, seed: int) -> np.ndarray:
    """`count` float32 samples uniform in the box [low, high] (shapes broadcast), reproducible by `seed`."""
    low_a, high_a = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if np.any(high_a < low_a):
        raise ValueError("sample_region: high < low")
    shape = np.broadcast_shapes(low_a.shape, high_a.shape)
    rng = np.random.default_rng(seed)
    samples = rng.uniform(0.0, 1.0, size=(int(count), *shape))
    return np.clip(low_a + samples * (high_a - low_a), low_a, high_a).astype(np.float32)


def load_representative(path: Path) -> np.ndarray:
    """Representative samples from a `.npy` array or a `.csv` (one flat sample per row) as float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("representative data file not found", path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            data = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, comments="#")
        else:
            raise ModelError(f"unsupported representative data format {suffix!r} (expected .npy or .csv)",
                             path)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read representative data: {str(exc).splitlines()[0]}", path) from None
    if not np.issubdtype(data.dtype, np.number) or data.ndim < 2 or data.shape[0] == 0:
        raise ModelError(f"representative data must be a non-empty numeric array (N, ...), got {data.shape}",
                         path)
    if not np.all(np.isfinite(data)):
        raise ModelError("representative data contains NaN or infinity", path)
    return data.astype(np.float32)


# --------------------------------------------------------------------------------------------- conversion


def quantize(model_path: Path, representative: np.ndarray, out_dir: Path, *, int8_io: bool = True,
             per_channel: bool = True) -> QuantizeResult:
    """Load a Keras model and write its float and full-integer int8 TFLite conversions into `out_dir`."""
    model = load_keras_model(Path(model_path))
    return quantize_keras_model(model, representative, out_dir, int8_io=int8_io, per_channel=per_channel,
                                source=Path(model_path))


def quantize_keras_model(model: Any, representative: np.ndarray, out_dir: Path, *, int8_io: bool = True,
                         per_channel: bool = True, source: Path | None = None) -> QuantizeResult:
    """Convert an in-memory Keras model (float + int8, batch 1); see `quantize`.

    `per_channel=False` asks the converter for per-tensor weight scales (an experimental switch).
    `source` only names the model in error messages.
    """
    label = source if source is not None else getattr(model, "name", "model")
    for layer in _flat_layers(model) if hasattr(model, "layers") else []:
        if type(layer).__name__ in _RECURRENT:
            # Refused before the converter: TF 2.21's int8 conversion of a GRU dies with a segmentation
            # fault (no message, exit 139), and the ops a recurrent layer becomes are not executed here.
            raise ModelError(f"layer '{layer.name}' ({type(layer).__name__}): recurrent layers are not "
                             "supported", label)
    rep = np.asarray(representative, dtype=np.float32)
    if rep.ndim < 2 or rep.shape[0] == 0:
        raise ModelError(f"representative data must have shape (N, ...) with N ≥ 1, got {rep.shape}", label)
    if not np.all(np.isfinite(rep)):
        raise ModelError("representative data contains NaN or infinity", label)
    tf = _tf()
    tf.random.set_seed(0)
    model = _fit_input(model, rep.shape[1:], label)
    input_shape = (1, *rep.shape[1:])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    frozen = _frozen_function(model, input_shape)
    float_bytes = _convert(frozen, None, label, int8_io=int8_io, per_channel=per_channel)
    int8_bytes = _convert(frozen, rep, label, int8_io=int8_io, per_channel=per_channel)
    float_path, int8_path = out_dir / FLOAT_TFLITE_NAME, out_dir / INT8_TFLITE_NAME
    float_path.write_bytes(float_bytes)
    int8_path.write_bytes(int8_bytes)
    gap = _keras_vs_float(model, float_path, rep)
    return QuantizeResult(float_tflite=float_path, int8_tflite=int8_path, input_shape=input_shape,
                          keras_vs_float_max_abs=gap)


def _fit_input(model: Any, sample_shape: tuple[int, ...], label: object) -> Any:
    """Return a model that accepts (batch, *sample_shape).

    Unknown (None) dimensions take the representative data's sizes. A model declared with extra unknown
    dimensions, e.g. ACAS Xu's (None, None, 5) fed (N, 5) samples, is rebuilt as the same chain of layers
    on the lower-rank input, so the graph has no RESHAPE noise; only plain layer chains can be rebuilt.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"only single-input single-output models are supported, got {len(model.inputs)} "
                         f"inputs and {len(model.outputs)} outputs", label)
    declared = tuple(model.inputs[0].shape[1:])
    if len(declared) == len(sample_shape):
        if all(d is None or d == s for d, s in zip(declared, sample_shape, strict=True)):
            return model
    elif tuple(d for d in declared if d is not None) == tuple(sample_shape):
        keras = _keras_of(model)
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        if _is_chain(model, layers):
            with _silenced():
                x = inp = keras.Input(shape=tuple(sample_shape), dtype="float32")
                for layer in layers:
                    x = layer(x)
                return keras.Model(inp, x, name=model.name)
    raise ModelError(f"representative samples of shape {tuple(sample_shape)} do not fit the model input "
                     f"{(None, *declared)}", label)


def _is_chain(model: Any, layers: list[Any]) -> bool:
    """True if every layer has exactly one inbound call from the previous one (a Sequential-like model)."""
    if type(model).__name__ == "Sequential":
        return True
    try:
        return all(len(layer._inbound_nodes) == 1 for layer in layers) and all(
            layer.input is prev.output for prev, layer in zip(layers, layers[1:], strict=False)
        )
    except Exception:
        return False


def _frozen_function(model: Any, input_shape: tuple[int, ...]) -> Any:
    """A batch-1 concrete function of the model in inference mode, variables frozen to constants."""
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import (  # noqa: PLC0415
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec(input_shape, tf.float32, name="input")])
    with _silenced():
        return convert_variables_to_constants_v2(fn.get_concrete_function())


def _convert(frozen: Any, rep: np.ndarray | None, label: object, *, int8_io: bool,
             per_channel: bool) -> bytes:
    """One TFLiteConverter run: float32 when `rep` is None, else full-integer int8 calibrated on `rep`."""
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if rep is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None]] for sample in rep)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if not per_channel:
            converter._experimental_disable_per_channel = True
    kind = "float" if rep is None else "int8"
    try:
        with _silenced() as out:
            return bytes(converter.convert())
    except Exception as exc:
        raise ModelError(f"{kind} TFLite conversion failed: {_useful_line(exc, out)}", label) from None


def _keras_vs_float(model: Any, float_path: Path, rep: np.ndarray) -> float:
    """max |Keras − float TFLite| over `rep`; TFLite on reference-path builtin kernels (no XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    with _silenced():
        keras_out = np.concatenate(
            [np.asarray(model(rep[i:i + 256], training=False)) for i in range(0, len(rep), 256)]
        )
        interp = Interpreter(model_path=str(float_path), num_threads=1,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        (inp,), (outp,) = interp.get_input_details(), interp.get_output_details()
        worst = 0.0
        for i, sample in enumerate(rep):
            interp.set_tensor(inp["index"], sample[None])
            interp.invoke()
            got = interp.get_tensor(outp["index"]).reshape(-1).astype(np.float64)
            want = keras_out[i].reshape(-1).astype(np.float64)
            worst = max(worst, float(np.max(np.abs(got - want))))
    return worst
