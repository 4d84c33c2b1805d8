"""`qassure quantize CONFIG --target T --out DIR`: float + int8 TFLite from the config's model."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import emit_json, result, say


def command(
    config: Path = typer.Argument(..., help="A config YAML (see docs/reference.md)."),
    target: str = typer.Option("cortex-m4", "--target", "-t", help="Target profile."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for model_float.tflite and model_int8.tflite."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Convert the config's Keras model to float and full-int8 TFLite (int8 I/O, batch 1)."""
    from toolchain.config import check_region, load_config, representative_samples
    from toolchain.errors import ConfigError
    from toolchain.targets import load_target

    tgt = load_target(target)
    cfg = load_config(config)
    if cfg.model is None:
        raise ConfigError("quantize needs key 'model' (this config names .tflite files already)", cfg.path)
    from toolchain import quantize as qz  # imports TensorFlow lazily, only on this path
    from toolchain.tflite import reader

    model = qz.load_keras_model(cfg.model)
    shape = tuple(d if d is not None else 1 for d in model.inputs[0].shape[1:])
    if isinstance(cfg.representative_data, Path):
        rep = qz.load_representative(cfg.representative_data)
        shape = tuple(rep.shape[1:])
    elif shape.count(1) and len(shape) > 1 and any(d is None for d in model.inputs[0].shape[1:]):
        shape = tuple(d for d in model.inputs[0].shape[1:] if d is not None)
    rep = representative_samples(cfg, shape)
    say(f"quantizing {cfg.model.name} with {len(rep)} representative samples for {tgt.name}")
    res = qz.quantize_keras_model(model, rep, out, per_channel=tgt.per_channel, source=cfg.model)
    graph = reader.read_model(res.int8_tflite)
    check_region(cfg, graph.input.size, graph.output.size)
    if json_out:
        emit_json({"float_tflite": str(res.float_tflite), "int8_tflite": str(res.int8_tflite),
                   "input_shape": list(res.input_shape), "keras_vs_float_max_abs": res.keras_vs_float_max_abs,
                   "target": tgt.name})
        return
    say(f"keras vs float TFLite: max |diff| {res.keras_vs_float_max_abs:.3g}", 1)
    result(f"wrote {res.float_tflite} and {res.int8_tflite}")
