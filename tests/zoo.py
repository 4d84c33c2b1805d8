"""A deterministic zoo of small Keras models and their float + int8 TFLite conversions, for bit-exact tests.

Every model has fixed random weights (numpy seed per model, no training) scaled so activations are
neither dead nor saturated, except where a model exists to provoke something: `mlp_saturation` is
calibrated on a narrow box, `mlp_positive_input` on [0, 6] (input zero point ≈ −128),
`mlp_big_multiplier` has output channels whose effective multiplier is > 1 (positive shift), and
`mlp_tiny_multiplier` has channel weights down to ~1e−11 (very negative shifts; the converter
floors tiny weight scales, so with TF 2.21 frexp exponents reach about −28, not the M = 0 case).
`ZOO_OPS` lists the TFLite builtins the zoo must cover; `build_zoo` records what each file really holds.

Files are cached under `cache_dir/<hash>` where the hash covers this file, the quantize stage and the
TensorFlow version, so repeated test runs reuse them and any change rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import quantize as qz

ZOO_OPS = frozenset({
    "FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "MUL",
    "RESHAPE", "PAD", "CONCATENATION", "MEAN", "SOFTMAX", "LOGISTIC", "TANH", "LEAKY_RELU",
    "REDUCE_MAX", "PRELU", "SUB", "TRANSPOSE", "STRIDED_SLICE", "TRANSPOSE_CONV", "RELU",
})
N_CALIBRATION = 64


@dataclass(frozen=True)
class ZooModel:
    """One converted zoo model; `representative` is the exact calibration data used by the converter."""

    name: str
    int8_tflite: Path
    float_tflite: Path
    input_shape: tuple[int, ...]  # batch 1 first
    representative: Path  # .npy, float32, (N, *input_shape[1:])
    calib_low: float  # box the calibration data was drawn from (before any model-specific shaping)
    calib_high: float
    per_channel: bool
    ops: tuple[str, ...]  # TFLite builtin ops in the int8 file, sorted
    description: str


@dataclass(frozen=True)
class _Spec:
    build: Callable[[Any], Any]  # keras module → model (weights set separately)
    input_shape: tuple[int, ...]  # without batch
    description: str
    low: float = -1.0
    high: float = 1.0
    per_channel: bool = True
    weight_scale: float = 1.0
    calibration: Callable[[np.ndarray], np.ndarray] | None = None  # reshapes box samples if needed
    weights: Callable[[Any, np.random.Generator], None] | None = None  # overrides the default init


# --------------------------------------------------------------------------------------------- models


def _mlp_fused(k: Any) -> Any:
    x = inp = k.Input((8,))
    x = k.layers.Dense(16, activation="relu")(x)
    x = k.layers.Dense(16, activation="relu6")(x)
    x = k.layers.Dense(12)(x)
    return k.Model(inp, k.layers.Dense(4)(x))


def _mlp_softmax(k: Any) -> Any:
    x = inp = k.Input((6,))
    x = k.layers.Dense(12, activation="relu")(x)
    return k.Model(inp, k.layers.Dense(5, activation="softmax")(x))


def _mlp_tanh_sigmoid(k: Any) -> Any:
    x = inp = k.Input((6,))
    x = k.layers.Dense(10, activation="tanh")(x)
    return k.Model(inp, k.layers.Dense(4, activation="sigmoid")(x))


def _cnn_conv(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((12, 12, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(6, 3, strides=2, padding="valid", activation="relu6")(x)  # 5×5
    x = L.Conv2D(6, 3, padding="same", dilation_rate=2)(x)
    x = L.MaxPooling2D(2, strides=1)(x)  # 4×4
    x = L.AveragePooling2D(2)(x)  # 2×2
    x = L.Flatten()(x)
    return k.Model(inp, L.Dense(4)(x))


def _cnn_depthwise(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((10, 10, 3))
    x = L.DepthwiseConv2D(3, depth_multiplier=1, padding="same", activation="relu6")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="valid", activation="relu")(x)
    x = L.AveragePooling2D(2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    return k.Model(inp, L.Dense(3)(x))


def _cnn_residual(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((8, 8, 4))
    a = L.ZeroPadding2D(1)(x)
    a = L.Conv2D(4, 3, padding="valid", activation="relu")(a)
    r = L.Add()([x, a])
    g = L.ZeroPadding2D(1)(L.Conv2D(4, 1, activation="sigmoid")(x))  # PAD the converter cannot fold
    m = L.Multiply()([r, L.MaxPooling2D(3, strides=1)(g)])
    c = L.Concatenate()([r, m])
    c = L.Conv2D(6, 3, strides=2, padding="same", activation="tanh")(c)
    c = L.GlobalAveragePooling2D()(c)
    return k.Model(inp, L.Dense(4)(c))


def _mlp_small(k: Any) -> Any:
    x = inp = k.Input((4,))
    x = k.layers.Dense(8, activation="relu")(x)
    return k.Model(inp, k.layers.Dense(3)(x))


def _mlp_leaky(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((3,))
    x = L.LeakyReLU(negative_slope=0.2)(L.Dense(10)(x))
    x = L.LeakyReLU(negative_slope=0.05)(L.Dense(6)(x))
    return k.Model(inp, L.Dense(3)(x))


def _cnn1d_max(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((16, 2))
    x = L.Conv1D(4, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling1D(3, strides=2, padding="same")(x)  # windows of 2 and 3 elements
    x = L.Conv1D(5, 3, activation="relu6")(x)
    x = L.GlobalMaxPooling1D()(x)
    return k.Model(inp, L.Dense(3)(x))


def _mlp_sigmoid_out(k: Any) -> Any:
    x = inp = k.Input((5,))
    x = k.layers.Dense(8, activation="relu")(x)
    return k.Model(inp, k.layers.Dense(2, activation="sigmoid")(x))


def _cnn_prelu(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((6, 6, 2))
    x = L.PReLU(shared_axes=[1, 2])(L.Conv2D(3, 3)(x))  # one alpha per channel
    x = L.Flatten()(x)
    x = L.PReLU()(L.Dense(6)(x))  # one alpha per element
    return k.Model(inp, L.Dense(2)(x))


def _mlp_normalized(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((4,))
    x = L.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[2.0, 0.5, 1.0, 4.0])(x)  # SUB, MUL constants
    a = L.Dense(6, activation="relu")(x)
    x = L.Subtract()([a, L.Dense(6)(x)])  # SUB of two activations
    return k.Model(inp, L.Dense(2)(x))


def _mlp_residual(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((5,))
    h = L.Dense(6, activation="relu")(x)
    h = L.Add()([h, L.Dense(6)(h)])  # the converter reshapes one operand to (6,): ADD of (1, 6) and (6,)
    return k.Model(inp, L.Dense(2)(h))


def _cnn1d_permuted(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((5, 8))  # (channels, time), as some feature pipelines deliver it
    x = L.Permute((2, 1))(x)  # TRANSPOSE to (time, channels)
    x = L.Conv1D(4, 3, activation="relu")(x)
    return k.Model(inp, L.Dense(2)(L.Flatten()(x)))


def _cnn_cropped(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((7, 8, 2))
    x = L.Conv2D(3, 3, activation="relu")(x)
    x = L.Cropping2D(((1, 0), (2, 1)))(x)  # STRIDED_SLICE over rows and columns
    h = L.Dense(8, activation="relu")(L.Flatten()(x))
    return k.Model(inp, L.Dense(2)(h[:, 1:7:2]))  # STRIDED_SLICE with a stride


def _cnn_decoder(k: Any) -> Any:
    L = k.layers
    x = inp = k.Input((4, 4, 2))  # a convolutional autoencoder's decoder half
    x = L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Conv2DTranspose(2, 2, padding="valid")(x)
    x = L.ReLU()(L.Flatten()(x))  # after a RESHAPE, where no fused activation can take it: RELU
    return k.Model(inp, L.Dense(2)(x))


def _mlp_pairs(k: Any) -> Any:
    x = inp = k.Input((4,))
    x = k.layers.Dense(4)(x)
    return k.Model(inp, k.layers.Dense(2)(x))


def _mlp_wide(k: Any) -> Any:
    x = inp = k.Input((4,))
    x = k.layers.Dense(8)(x)
    return k.Model(inp, k.layers.Dense(3)(x))


def _big_multiplier_weights(model: Any, rng: np.random.Generator) -> None:
    """Layer 1 takes differences of near-equal input pairs with weights ±50: outputs have a tiny range,
    so s_in · s_w / s_out ≫ 1 (positive shift); layer 2 is ordinary."""
    d1, d2 = model.layers[1], model.layers[2]
    w = np.zeros((4, 4), np.float32)
    w[0, 0], w[1, 0] = 50.0, -50.0
    w[2, 1], w[3, 1] = 40.0, -40.0
    w[0, 2], w[1, 2] = 30.0, -30.0
    w[2, 3], w[3, 3] = 60.0, -60.0
    d1.set_weights([w, np.zeros(4, np.float32)])
    d2.set_weights([rng.normal(0, 0.5, (4, 2)).astype(np.float32), np.zeros(2, np.float32)])


def _pairs_calibration(box: np.ndarray) -> np.ndarray:
    """(a, a + ε, b, b + ε) with ε ~ 1e−3: the inputs `mlp_big_multiplier` is meant for."""
    out = box.copy()
    out[:, 1] = out[:, 0] + 1e-3 * box[:, 1]
    out[:, 3] = out[:, 2] + 1e-3 * box[:, 3]
    return out


def _tiny_multiplier_weights(model: Any, rng: np.random.Generator) -> None:
    """Output channels of layer 1 scaled from 1 down to 1e−11: one per-tensor output scale against
    per-channel weight scales gives multipliers from ~1e−2 down to ~2^−29 (see the module docstring)."""
    d1, d2 = model.layers[1], model.layers[2]
    scales = np.array([1.0, 1e-3, 1e-6, 1e-9, 1e-11, 1e-1, 1.0, 1e-4], np.float32)
    w = rng.normal(0, 0.5, (4, 8)).astype(np.float32) * scales
    d1.set_weights([w, np.zeros(8, np.float32)])
    d2.set_weights([rng.normal(0, 0.5, (8, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)])


_SPECS: dict[str, _Spec] = {
    "mlp_fused": _Spec(_mlp_fused, (8,), "FC with fused RELU, RELU6 and none"),
    "mlp_fused_per_tensor": _Spec(_mlp_fused, (8,), "mlp_fused with per-tensor weights", per_channel=False),
    "mlp_softmax": _Spec(_mlp_softmax, (6,), "FC + SOFTMAX"),
    "mlp_tanh_sigmoid": _Spec(_mlp_tanh_sigmoid, (6,), "FC + TANH, FC + LOGISTIC"),
    "cnn_conv": _Spec(_cnn_conv, (12, 12, 3), "CONV_2D same/valid/stride 2/dilation 2, MAX/AVG pool, RESHAPE"),
    "cnn_conv_per_tensor": _Spec(_cnn_conv, (12, 12, 3), "cnn_conv with per-tensor weights", per_channel=False),
    "cnn_depthwise": _Spec(_cnn_depthwise, (10, 10, 3), "DEPTHWISE_CONV_2D multiplier 1 and 2, MEAN"),
    "cnn_depthwise_per_tensor": _Spec(_cnn_depthwise, (10, 10, 3), "cnn_depthwise, per-tensor weights",
                                      per_channel=False),
    "cnn_residual": _Spec(_cnn_residual, (8, 8, 4), "PAD, ADD residual, MUL, CONCATENATION, LOGISTIC, TANH"),
    "mlp_saturation": _Spec(_mlp_small, (4,), "calibrated on [-0.05, 0.05]: wider inputs saturate",
                            low=-0.05, high=0.05),
    "mlp_positive_input": _Spec(_mlp_small, (4,), "inputs in [0, 6]: input zero point near -128",
                                low=0.0, high=6.0),
    "mlp_big_multiplier": _Spec(_mlp_pairs, (4,), "multipliers > 1 (positive shifts)",
                                calibration=_pairs_calibration, weights=_big_multiplier_weights),
    "mlp_tiny_multiplier": _Spec(_mlp_wide, (4,), "multipliers from 1e-2 down to ~2^-29 (very negative shifts)",
                                 weights=_tiny_multiplier_weights),
    "mlp_leaky": _Spec(_mlp_leaky, (3,), "FC + LEAKY_RELU (alpha 0.2 and 0.05)"),
    "cnn1d_max": _Spec(_cnn1d_max, (16, 2), "Conv1D, MAX_POOL_2D same padding 3/2, REDUCE_MAX (global max)"),
    "mlp_sigmoid_out": _Spec(_mlp_sigmoid_out, (5,), "FC + final LOGISTIC (a sigmoid output layer)"),
    "cnn_prelu": _Spec(_cnn_prelu, (6, 6, 2), "PRELU per channel (conv) and per element (FC)"),
    "mlp_normalized": _Spec(_mlp_normalized, (4,), "Normalization (SUB, MUL by constants), SUB of two layers"),
    "mlp_residual": _Spec(_mlp_residual, (5,), "ADD of two layers of shapes (1, 6) and (6,)"),
    "cnn1d_permuted": _Spec(_cnn1d_permuted, (5, 8), "TRANSPOSE (Keras Permute) before a Conv1D"),
    "cnn_cropped": _Spec(_cnn_cropped, (7, 8, 2), "STRIDED_SLICE: Keras Cropping2D and a strided slice"),
    "cnn_decoder": _Spec(_cnn_decoder, (4, 4, 2), "TRANSPOSE_CONV stride 2 same and stride 1 valid, RELU"),
}


# --------------------------------------------------------------------------------------------- build


def _default_weights(model: Any, rng: np.random.Generator) -> None:
    """He-like normal kernels (fan-in from all but the last axis; depthwise: the spatial axes) and small
    biases, so ReLU layers keep about half their units alive."""
    for layer in model.layers:
        new = []
        for w in layer.get_weights():
            if w.ndim == 1:
                new.append(rng.normal(0.0, 0.1, w.shape).astype(np.float32))
                continue
            is_depthwise = type(layer).__name__ == "DepthwiseConv2D"
            fan_in = int(np.prod(w.shape[:2] if is_depthwise else w.shape[:-1]))
            new.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(np.float32))
        if new:
            layer.set_weights(new)


def _zoo_hash() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(Path(qz.__file__).read_bytes())
    tf = qz._tf()
    h.update(tf.__version__.encode())
    return h.hexdigest()[:16]


def tflite_ops(path: Path) -> tuple[str, ...]:
    """Sorted names of the builtin operators a .tflite file uses (max of the two opcode fields)."""
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    codes = (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))
    return tuple(sorted({names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in codes}))


def _build_one(name: str, spec: _Spec, out_dir: Path, seed: int) -> dict[str, Any]:
    keras = qz._keras()
    keras.utils.set_random_seed(seed)
    model = spec.build(keras)
    rng = np.random.default_rng(seed)
    (spec.weights or _default_weights)(model, rng)
    rep = qz.sample_region(np.full(spec.input_shape, spec.low), np.full(spec.input_shape, spec.high),
                           N_CALIBRATION, seed)
    if spec.calibration is not None:
        rep = spec.calibration(rep).astype(np.float32)
    result = qz.quantize_keras_model(model, rep, out_dir, per_channel=spec.per_channel)
    np.save(out_dir / "representative.npy", rep)
    return {
        "name": name, "input_shape": list(result.input_shape), "calib_low": spec.low, "calib_high": spec.high,
        "per_channel": spec.per_channel, "ops": list(tflite_ops(result.int8_tflite)),
        "description": spec.description, "keras_vs_float_max_abs": result.keras_vs_float_max_abs,
        "params": int(model.count_params()),
    }


def build_zoo(cache_dir: Path) -> dict[str, ZooModel]:
    """Build (or reuse from `cache_dir`) every zoo model; returns them by name."""
    root = Path(cache_dir) / _zoo_hash()
    manifest = root / "manifest.json"
    if not manifest.exists():
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="zoo-", dir=cache_dir))
        try:
            entries = [_build_one(name, spec, tmp / name, seed)
                       for seed, (name, spec) in enumerate(_SPECS.items())]
            (tmp / "manifest.json").write_text(json.dumps(entries, indent=1))
            try:
                os.rename(tmp, root)  # atomic: a concurrent builder that wins leaves ours to delete
            except OSError:
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    entries = json.loads(manifest.read_text())
    return {
        e["name"]: ZooModel(
            name=e["name"], int8_tflite=root / e["name"] / qz.INT8_TFLITE_NAME,
            float_tflite=root / e["name"] / qz.FLOAT_TFLITE_NAME, input_shape=tuple(e["input_shape"]),
            representative=root / e["name"] / "representative.npy", calib_low=e["calib_low"],
            calib_high=e["calib_high"], per_channel=e["per_channel"], ops=tuple(e["ops"]),
            description=e["description"],
        )
        for e in entries
    }


def coverage_table(zoo: dict[str, ZooModel]) -> str:
    """A text table: which zoo models contain which of ZOO_OPS."""
    ops = sorted(ZOO_OPS | {op for m in zoo.values() for op in m.ops})
    width = max(len(n) for n in zoo)
    lines = [" " * width + "  " + " ".join(op[:4] for op in ops)]
    for name, m in zoo.items():
        lines.append(name.ljust(width) + "  " + " ".join(("x" if op in m.ops else ".").center(4) for op in ops))
    lines.append("ops: " + ", ".join(f"{op[:4]}={op}" for op in ops))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    import time

    start = time.perf_counter()
    built = build_zoo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/zoo"))
    sys.stdout.write(coverage_table(built) + f"\n{len(built)} models in {time.perf_counter() - start:.1f} s\n")
