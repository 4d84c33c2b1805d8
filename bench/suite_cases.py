"""The suite's cases: each becomes a config YAML under bench/out/suite/<case>/ that `qassure certify` runs.

Cases (all on cortex-m4, budget 0 so that no case stops because a user budget is met: the search runs
until the bound is within the target ratio of the witness or the time limit bites):

- acas-<net>-domain / acas-<net>-box: the eleven ACAS Xu networks with their final softmax stripped (the
  bound is on the scores), over the property-1 box, calibrated on the whole normalized domain
  (configs/data/acasxu_domain.npy) or on 512 samples of the box itself; the rest as configs/acasxu.yaml.
- pump: configs/default.yaml (the whole 8-D box).
- ad01: configs/ad01.yaml (L-inf balls r = 0.01 around 3 inputs).
- cnn_depthwise: the zoo model (tests/zoo.py), L-inf balls r = 0.05 around 3 seeded inputs.
- resnet8: MLPerf Tiny ResNet-8 quantized by the product on seeded CIFAR-like images (pixels 0..255:
  the reference int8 file has input scale 1.0, zero point -128), L-inf balls of one input LSB.
- dscnn: configs/dscnn.yaml (the shipped keyword-spotting DS-CNN, L-inf balls of one input LSB).
- mobilenet: keras.applications.MobileNet(alpha=0.25) at 96x96x3 (27,648 inputs, 2 classes), seeded
  weights (not trained: what is measured is whether certify returns, within memory, with a finite
  sound bound), quantized by the product on seeded 96x96 CIFAR-like images, one L-inf ball of one
  input LSB.

Generated data stays small and deterministic; nothing here is committed (bench/out is git-ignored).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TARGET = "cortex-m4"

ACAS_BOX_LOW = (0.6, -0.5, -0.5, 0.45, -0.5)  # property 1, normalized inputs
ACAS_BOX_HIGH = (0.6799, 0.5, 0.5, 0.5, -0.45)
ACAS_BOX_CALIBRATION = 512  # samples drawn uniformly from the box by the product
CNN_RADIUS = 0.05
CNN_CENTER_SPAN = 0.9  # centres uniform in [-0.9, 0.9]: the balls stay inside the calibration box [-1, 1]
BALLS = 3
RESNET_CALIBRATION = 256  # CIFAR-like images for the converter
SEED = 0


@dataclass(frozen=True)
class Case:
    """One benchmark case: `prepare(case_dir, time_limit)` writes its config and returns the config's path."""

    id: str
    group: str  # "acas" for the aims' ACAS Xu cases; else the model's name
    description: str
    prepare: Callable[[Path, float], Path]


def find_models_dir(given: Path | None = None) -> Path:
    """../shared/models (from the main checkout) or ../../shared/models (from a worktree under wt/)."""
    candidates = [given] if given is not None else [REPO.parent / "shared" / "models",
                                                     REPO.parent.parent / "shared" / "models"]
    for c in candidates:
        if c is not None and (c / "acasxu_1_1.h5").is_file():
            return c
    where = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"third-party models not found in {where} (use --models)")


def cases(models: Path) -> list[Case]:
    """Every case of the suite, in table order."""
    out: list[Case] = []
    for h5 in sorted(models.glob("acasxu_*.h5")):
        net = h5.stem.removeprefix("acasxu_")
        for calibration in ("domain", "box"):
            out.append(Case(f"acas-{net}-{calibration}", "acas",
                            f"ACAS Xu {net} scores, property-1 box, calibrated on the {calibration}",
                            _acas_preparer(h5, calibration)))
    out.append(Case("pump", "pump", "pump classifier logits, whole 8-D box (configs/default.yaml)",
                    _shipped_preparer("default.yaml", models)))
    out.append(Case("ad01", "ad01", "MLPerf Tiny AD autoencoder, 3 balls r = 0.01 (configs/ad01.yaml)",
                    _shipped_preparer("ad01.yaml", models)))
    out.append(Case("cnn_depthwise", "cnn_depthwise", f"zoo cnn_depthwise, {BALLS} balls r = {CNN_RADIUS}",
                    _cnn_depthwise))
    out.append(Case("resnet8", "resnet8", f"MLPerf Tiny ResNet-8 logits, {BALLS} balls r = one input LSB",
                    _resnet_preparer(models / "pretrainedResnet.h5")))
    out.append(Case("dscnn", "dscnn", "keyword-spotting DS-CNN, 3 balls r = one LSB (configs/dscnn.yaml)",
                    _shipped_preparer("dscnn.yaml", models)))
    out.append(Case("mobilenet", "mobilenet", "MobileNet-0.25 96x96x3 (seeded), 1 ball r = one input LSB",
                    _mobilenet))
    return out


# --------------------------------------------------------------------------------------------- configs


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _suite_settings(data: dict[str, Any], name: str, time_limit: float) -> dict[str, Any]:
    """A config as the suite runs it: its own name, budget 0, the suite's time limit."""
    return {**data, "name": name, "budget": {"max_abs_error": 0.0}, "time_limit": float(time_limit)}


def _shipped_preparer(config_name: str, models: Path) -> Callable[[Path, float], Path]:
    def prepare(case_dir: Path, time_limit: float) -> Path:
        data = yaml.safe_load((CONFIGS / config_name).read_text(encoding="utf-8"))
        data = _absolute_paths(data, models)
        return write_config(case_dir / "config.yaml", _suite_settings(data, case_dir.name, time_limit))

    return prepare


def _absolute_paths(data: dict[str, Any], models: Path) -> dict[str, Any]:
    """Paths of a shipped config made absolute (they were relative to configs/); third-party models are
    looked up in `models`, wherever this checkout sits."""

    def resolve(value: str) -> str:
        if "shared/models/" in value:
            return str(models / Path(value).name)
        return str((CONFIGS / value).resolve())

    data = dict(data)
    for key in ("model", "float_tflite", "int8_tflite"):
        if key in data:
            data[key] = resolve(data[key])
    if isinstance(data.get("representative_data"), str):
        data["representative_data"] = resolve(data["representative_data"])
    if "around" in data["region"]:
        around = data["region"]["around"]
        data["region"] = {"around": {**around, "data": resolve(around["data"])}}
    return data


# --------------------------------------------------------------------------------------------- ACAS Xu


def _acas_preparer(h5: Path, calibration: str) -> Callable[[Path, float], Path]:
    def prepare(case_dir: Path, time_limit: float) -> Path:
        scores = acas_scores_model(h5, case_dir.parent / "models")
        template = yaml.safe_load((CONFIGS / "acasxu.yaml").read_text(encoding="utf-8"))
        rep: str | int = (str(CONFIGS / "data" / "acasxu_domain.npy") if calibration == "domain"
                          else ACAS_BOX_CALIBRATION)
        data = {**template, "description": f"ACAS Xu {h5.stem} scores (softmax stripped), calibrated on the "
                f"{calibration}", "model": str(scores), "representative_data": rep,
                "region": {"box": {"low": list(ACAS_BOX_LOW), "high": list(ACAS_BOX_HIGH)}}}
        return write_config(case_dir / "config.yaml", _suite_settings(data, case_dir.name, time_limit))

    return prepare


def acas_scores_model(h5: Path, out_dir: Path) -> Path:
    """`out_dir/<net>_scores.keras`: the network up to the tensor its final softmax reads, checked on
    box samples to be the original's pre-softmax tensor (and to give the original after a softmax)."""
    from toolchain.quantize import _keras, load_keras_model

    keras = _keras()
    path = out_dir / f"{h5.stem}_scores.keras"
    model = load_keras_model(h5)
    scores = strip_softmax(model, keras, n_inputs=len(ACAS_BOX_LOW))
    n = len(ACAS_BOX_LOW)
    x = np.random.default_rng(SEED).uniform(ACAS_BOX_LOW, ACAS_BOX_HIGH, (16, n)).astype(np.float32)
    got = np.asarray(scores(x, training=False))
    want = pre_softmax(model, keras, x[:, None, :]).reshape(len(x), -1)  # the .h5 takes (batch, None, 5)
    probs = np.asarray(model(x[:, None, :], training=False)).reshape(len(x), -1)
    e = np.exp(got - got.max(axis=1, keepdims=True))
    if not (np.allclose(got, want, rtol=1e-5, atol=1e-5)
            and np.allclose(e / e.sum(axis=1, keepdims=True), probs, rtol=1e-4, atol=1e-6)):
        raise RuntimeError(f"{h5.name}: the stripped model does not give the pre-softmax scores")
    out_dir.mkdir(parents=True, exist_ok=True)
    scores.save(path)
    return path


def pre_softmax(model: Any, keras: Any, x: np.ndarray) -> np.ndarray:
    """The original model's pre-softmax tensor on `x`, read from its own graph: the input of a final
    Activation('softmax'), or x W + b of a final Dense whose activation is softmax."""
    last = model.layers[-1]
    inner = np.asarray(keras.Model(model.inputs[0], last.input)(x, training=False), dtype=np.float64)
    if _is_softmax_activation(last, keras):
        return inner
    if not isinstance(last, keras.layers.Dense) or _activation_name(last) != "softmax":
        raise ValueError(f"{model.name}: the last layer {last.name} is not a softmax")
    kernel, bias = last.get_weights()
    return inner @ kernel + bias


def _is_softmax_activation(layer: Any, keras: Any) -> bool:
    return isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "softmax"


def _activation_name(layer: Any) -> str | None:
    act = layer.get_config().get("activation")
    return act if isinstance(act, str) or act is None else getattr(act, "__name__", str(act))


def strip_softmax(model: Any, keras: Any, n_inputs: int) -> Any:
    """The same chain of layers (shared weights) on a (batch, n_inputs) input, ending before its softmax:
    a final Activation('softmax') layer is dropped; a final layer with activation='softmax' (e.g. Dense)
    is rebuilt with a linear activation and the same weights."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    last = layers[-1]
    x = inp = keras.Input(shape=(n_inputs,), dtype="float32")
    for layer in layers[:-1]:
        x = layer(x)
    if _is_softmax_activation(last, keras):
        return keras.Model(inp, x, name=f"{model.name}_scores")
    if _activation_name(last) != "softmax":
        raise ValueError(f"{model.name}: the last layer {last.name} is not a softmax")
    linear = type(last).from_config({**last.get_config(), "activation": "linear",
                                     "name": f"{last.name}_linear"})
    y = linear(x)
    linear.set_weights(last.get_weights())
    return keras.Model(inp, y, name=f"{model.name}_scores")


# --------------------------------------------------------------------------------------------- zoo CNN


def _cnn_depthwise(case_dir: Path, time_limit: float) -> Path:
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from zoo import build_zoo

    z = build_zoo(REPO / ".cache" / "zoo")["cnn_depthwise"]
    shape = z.input_shape[1:]
    centers = np.random.default_rng(SEED).uniform(-CNN_CENTER_SPAN, CNN_CENTER_SPAN, (BALLS, *shape))
    case_dir.mkdir(parents=True, exist_ok=True)
    np.save(case_dir / "centers.npy", centers.astype(np.float32))
    around = {"data": str(case_dir / "centers.npy"), "radius": CNN_RADIUS, "count": BALLS}
    data = {"description": z.description, "float_tflite": str(z.float_tflite),
            "int8_tflite": str(z.int8_tflite), "region": {"around": around}, "input_interface": "float",
            "representative_data": str(z.representative)}
    return write_config(case_dir / "config.yaml", _suite_settings(data, case_dir.name, time_limit))


# --------------------------------------------------------------------------------------------- ResNet-8


def cifar_like_images(count: int, seed: int, size: int = 32) -> np.ndarray:
    """(count, size, size, 3) float32 integer pixel values in [0, 255]: the shipped examples' generator
    (configs/make_cifar_like.py: smooth colour fields, a blob, a little noise, a photo-like stretch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_cifar_like", CONFIGS / "make_cifar_like.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cifar_like_images(count, np.random.default_rng(seed), size).astype(np.float32)


def _resnet_preparer(h5: Path, balls: int = BALLS, size: int = 32,
                     unit_range: bool = False) -> Callable[[Path, float], Path]:
    """Balls of one input LSB around CIFAR-like images: pixels 0..255 (ResNet-8), or mapped to [-1, 1]
    (`unit_range`, what keras.applications.MobileNet expects)."""

    def pixels(images: np.ndarray) -> np.ndarray:
        return (images / 127.5 - 1.0).astype(np.float32) if unit_range else images

    low, high = (-1.0, 1.0) if unit_range else (0.0, 255.0)

    def prepare(case_dir: Path, time_limit: float) -> Path:
        case_dir.mkdir(parents=True, exist_ok=True)
        np.save(case_dir / "calibration.npy", pixels(cifar_like_images(RESNET_CALIBRATION, SEED, size)))
        images = pixels(cifar_like_images(balls, SEED + 1, size))
        base = {"description": f"{h5.name}, {balls} CIFAR-like images, L-inf radius one input LSB",
                "model": str(h5), "input_interface": "float",
                "representative_data": str(case_dir / "calibration.npy")}
        lsb = resnet_input_scale(case_dir, base, images)
        # Centres one LSB inside the pixel range, so the balls stay in the range the model was calibrated on.
        np.save(case_dir / "centers.npy", np.clip(images, low + lsb, high - lsb).astype(np.float32))
        around = {"data": str(case_dir / "centers.npy"), "radius": lsb, "count": balls}
        data = {**base, "region": {"around": around}}
        return write_config(case_dir / "config.yaml", _suite_settings(data, case_dir.name, time_limit))

    return prepare


MOBILENET_CLASSES = 2


def _mobilenet(case_dir: Path, time_limit: float) -> Path:
    """A seeded MobileNet-0.25 saved as .keras (TensorFlow seeded, so the same weights on every run), then
    certified as ResNet-8 is: one ball of one input LSB around a 96x96 CIFAR-like image, pixels mapped to
    [-1, 1] as the architecture expects (on 0..255 the seeded network's ReLU6s all saturate and its output
    is a constant)."""
    from toolchain.quantize import _keras

    keras = _keras()
    model_path = case_dir.parent / "models" / "mobilenet_025_96.keras"
    if not model_path.is_file():
        keras.utils.set_random_seed(SEED)
        model = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None,
                                             classes=MOBILENET_CLASSES, classifier_activation=None)
        images = cifar_like_images(32, SEED + 2, 96) / 127.5 - 1.0
        _normalize_batch_norms(model, keras, images.astype(np.float32))
        model_path.parent.mkdir(parents=True, exist_ok=True)
        model.save(model_path)
    return _resnet_preparer(model_path, balls=1, size=96, unit_range=True)(case_dir, time_limit)


def _normalize_batch_norms(model: Any, keras: Any, images: np.ndarray) -> None:
    """Each BatchNormalization's moving statistics set, in network order, to its input's mean and variance
    on `images`: with seeded (untrained) weights the activations otherwise shrink layer after layer (ReLU
    halves their variance) until the output is a constant, and there is no error to bound."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            x = np.asarray(keras.Model(model.inputs, layer.input)(images, training=False), dtype=np.float64)
            axes = tuple(range(x.ndim - 1))
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, x.mean(axis=axes), x.var(axis=axes) + 1e-6])


def resnet_input_scale(case_dir: Path, base: dict[str, Any], images: np.ndarray) -> float:
    """The int8 input scale of the product's conversion of this config (cached by the hash of the model,
    the calibration data and the quantize stage; the converter is deterministic)."""
    import toolchain.quantize as qz

    tf = qz._tf()  # the product's import (its environment switches are set before TensorFlow loads)

    h = hashlib.sha256()
    for p in (Path(base["model"]), Path(base["representative_data"]), Path(qz.__file__)):
        h.update(p.read_bytes())
    h.update(tf.__version__.encode())
    key = h.hexdigest()[:16]
    cache = case_dir / "input_scale.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return float(stored["scale"])
    from toolchain.config import load_config
    from toolchain.gate.run import make_models
    from toolchain.targets import load_target

    probe_dir = Path(tempfile.mkdtemp(prefix="lsb-", dir=case_dir))
    try:
        np.save(probe_dir / "centers.npy", images)
        probe = {**base, "region": {"around": {"data": str(probe_dir / "centers.npy"), "radius": 1.0,
                                               "count": len(images)}}}
        cfg = load_config(write_config(probe_dir / "config.yaml", _suite_settings(probe, "lsb-probe", 1.0)))
        models = make_models(cfg, load_target(TARGET), probe_dir / "models")
        quant = models.pair.int8_graph.input.quant
        assert quant is not None
        scale, zero_point = quant.scalar()
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    cache.write_text(json.dumps({"key": key, "scale": scale, "zero_point": zero_point}))
    return float(scale)


# --------------------------------------------------------------------------------------------- entry point


def prepare_cases(out: Path, ids: list[str], time_limit: float, models: Path) -> dict[str, dict[str, str]]:
    """Write the configs of the cases `ids`: {id: {"config": path}} or {id: {"error": one line}}."""
    by_id = {c.id: c for c in cases(models)}
    done: dict[str, dict[str, str]] = {}
    for case_id in ids:
        try:
            done[case_id] = {"config": str(by_id[case_id].prepare(out / case_id, time_limit))}
        except Exception as exc:  # a broken case is reported; the others are still prepared
            done[case_id] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]}
    return done


def main(argv: list[str] | None = None) -> int:
    """Run by bench/suite.py in a child process, so the suite's own process never loads TensorFlow (a forked
    child's peak RSS starts at its parent's size)."""
    import argparse
    import sys

    sys.path.insert(0, str(REPO))  # this checkout's toolchain, not an installed one
    ap = argparse.ArgumentParser(description="write the suite's case configs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--time-limit", type=float, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True, help="where to write {case: config or error}")
    ap.add_argument("ids", nargs="+")
    args = ap.parse_args(argv)
    done = prepare_cases(args.out, args.ids, args.time_limit, args.models)
    args.manifest.write_text(json.dumps(done, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
