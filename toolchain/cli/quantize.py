"""`qassure quantize CONFIG --target T --out DIR`: float + int8 TFLite from the config's model."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import emit_json, result, say


def command(
    config: Path = typer.Argument(..., help="A config YAML (see docs/reference.md)."),
    target: str = typer.Option("cortex-m4", "--target", "-t", help="Target profile."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Directory for model_float.tflite and model_int8.tflite."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Convert the config's Keras model to float and full-int8 TFLite (int8 I/O, batch 1)."""
    from toolchain.config import check_region, load_config
    from toolchain.errors import ConfigError
    from toolchain.gate.run import make_models  # TensorFlow is imported lazily, only on this path
    from toolchain.targets import load_target

    tgt = load_target(target)
    cfg = load_config(config)
    if cfg.model is None:
        raise ConfigError("quantize needs key 'model' (this config names .tflite files already)", cfg.path)
    if not json_out:
        say(f"quantizing {cfg.model.name} for {tgt.name}")
    models = make_models(cfg, tgt, out)
    pair = models.pair
    check_region(cfg, pair.int8_graph.input.size, pair.int8_graph.output.size)
    if json_out:
        emit_json({"float_tflite": str(pair.float_path), "int8_tflite": str(pair.int8_path),
                   "input_shape": list(pair.int8_graph.input.shape),
                   "representative_samples": len(models.representative),
                   "keras_vs_float_max_abs": models.keras_vs_float_max_abs, "target": tgt.name})
        return
    say(f"{len(models.representative)} representative samples of shape {models.representative.shape[1:]}", 1)
    say(f"keras vs float TFLite: max |diff| {models.keras_vs_float_max_abs:.3g}", 1)
    result(f"wrote {pair.float_path} and {pair.int8_path}")
