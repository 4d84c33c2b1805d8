"""Certification configs (`configs/NAME.yaml`): model, input region, budget, data.

The YAML is checked against CONFIG_SCHEMA (a JSON schema; unknown keys rejected), then turned
into a frozen `Config` with paths resolved relative to the config file. Every problem is one
ConfigError naming the file and the key. What needs the model (region size, budget length) is
checked by `check_region` once the model's input/output sizes are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from toolchain.certify.settings import DEFAULT as DEFAULT_SETTINGS
from toolchain.errors import ConfigError

# A Dask scheduler address: tcp:// or tls://, a host name, IPv4 or [IPv6] address, a port.
SCHEDULER_PATTERN = r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"
SCHEDULER_FORM = "a Dask scheduler address tcp://HOST:PORT or tls://HOST:PORT"
LOCAL_SCHEDULER = "local"  # --scheduler local: this machine, whatever the config's scheduler key says

_NUMBER_OR_LIST = {
    "oneOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 1}]
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["region", "budget"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "description": {"type": "string"},
        "model": {"type": "string"},
        "float_tflite": {"type": "string"},
        "int8_tflite": {"type": "string"},
        "region": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "box": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["low", "high"],
                    "properties": {"low": _NUMBER_OR_LIST, "high": _NUMBER_OR_LIST},
                },
                "around": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["data", "radius"],
                    "properties": {
                        "data": {"type": "string"},
                        "radius": {"type": "number", "exclusiveMinimum": 0},
                        "count": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
        "input_interface": {"enum": ["float", "int8"]},
        "budget": {
            "type": "object",
            "additionalProperties": False,
            "required": ["max_abs_error"],
            "properties": {
                "max_abs_error": {
                    "oneOf": [
                        {"type": "number", "minimum": 0},
                        {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1},
                    ]
                }
            },
        },
        "decision": {"enum": ["top1"]},
        "representative_data": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
        "samples": {"type": "integer", "minimum": 1},
        "time_limit": {"type": "number", "exclusiveMinimum": 0},
        "max_boxes": {"type": "integer", "minimum": 1},
        "max_work": {"type": "number", "exclusiveMinimum": 0},
        "branching": {"enum": ["input", "neuron", "auto"]},
        "scheduler": {"type": "string", "pattern": SCHEDULER_PATTERN},
    },
}

DEFAULT_REPRESENTATIVE_COUNT = 256
DEFAULT_SAMPLES = 1000
DEFAULT_TIME_LIMIT = 60.0  # seconds: a safety net, the work budget (max_boxes, max_work) drives the search


# --------------------------------------------------------------------------------------------- YAML + schema


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) if path else "(top level)"


def _describe(error: Any) -> str:
    """One line for a jsonschema ValidationError, naming the key."""
    where = list(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        names = ", ".join(f"'{_key([*where, k])}'" for k in extra)
        return f"unknown key {names} (allowed: {', '.join(sorted(allowed))})"
    if v == "required":
        missing = error.validator_value
        absent = [k for k in missing if k not in error.instance]
        return f"missing key '{_key([*where, absent[0] if absent else missing[0]])}'"
    if v in ("minProperties", "maxProperties") and where and where[-1] == "region":
        return "key 'region': give exactly one of 'box' or 'around'"
    if v == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return f"key '{_key(where)}': {error.instance!r} is not one of {choices}"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"key '{_key(where)}': expected {want}, got {type(error.instance).__name__} {error.instance!r}"
    if v == "pattern" and where == ["scheduler"]:
        return f"key 'scheduler': expected {SCHEDULER_FORM}, got {error.instance!r}"
    if v == "oneOf":
        return f"key '{_key(where)}': {error.instance!r} has the wrong type or value"
    return f"key '{_key(where)}': {error.message}"


def read_yaml(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse a YAML mapping and validate it; ConfigError naming the file and the key otherwise."""
    import jsonschema
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found" if not path.exists() else "not a file", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not a text file", path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML{at}: {problem}", path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys, got {type(data).__name__}", path)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(data),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        raise ConfigError(_describe(errors[0]), path)
    return data


# --------------------------------------------------------------------------------------------- typed config


@dataclass(frozen=True)
class BoxRegion:
    """Axis-aligned box of float inputs; a one-element tuple broadcasts to every input."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def arrays(self, input_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) as float64 arrays of the flattened input size."""
        return (np.broadcast_to(np.asarray(self.low, dtype=np.float64), (input_size,)).copy(),
                np.broadcast_to(np.asarray(self.high, dtype=np.float64), (input_size,)).copy())


@dataclass(frozen=True)
class BallsRegion:
    """L-infinity balls of `radius` around the first `count` samples of `data` (one certificate each)."""

    data: Path
    radius: float
    count: int | None  # None: every sample in the file

    def centers(self) -> np.ndarray:
        """(count, n) float64 centres, flattened per sample."""
        from toolchain.quantize import load_representative

        data = load_representative(self.data)
        n = len(data) if self.count is None else self.count
        return data[:n].reshape(min(n, len(data)), -1).astype(np.float64)


Region = BoxRegion | BallsRegion


@dataclass(frozen=True)
class Config:
    path: Path
    name: str  # defaults to the file stem
    description: str
    model: Path | None  # Keras .keras/.h5 or SavedModel directory
    float_tflite: Path | None  # both set when certifying existing .tflite files
    int8_tflite: Path | None
    region: Region
    input_interface: Literal["float", "int8"]
    max_abs_error: tuple[float, ...]  # one value (all outputs) or one per output
    decision: Literal["top1"] | None
    representative_data: Path | int  # a .npy/.csv file, or a number of samples drawn from the region
    samples: int  # falsifier / bit-exact sample count
    time_limit: float  # seconds: the certify engines' safety net (when it bites, the verdict is unknown)
    max_boxes: int  # work budget: boxes bounded per region by branch and bound (deterministic)
    max_work: float  # work budget: multiply-adds per region of branch and bound (deterministic)
    branching: str = DEFAULT_SETTINGS.branching  # what branch and bound splits: input | neuron | auto
    scheduler: str | None = None  # Dask scheduler the certify engines' jobs run on (None: this machine)

    def budget(self, output_size: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.max_abs_error, dtype=np.float64), (output_size,)).copy()


def _file(base: Path, value: str, key: str, cfg: Path, directory_ok: bool = False) -> Path:
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists() or (p.is_dir() and not directory_ok):
        what = "file not found" if not p.exists() else "is a directory, expected a file"
        raise ConfigError(f"key '{key}': {what}: {p}", cfg)
    return p


def _vector(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)


def load_config(path: str | Path) -> Config:
    """Read and check a config file; paths inside it are relative to the file."""
    path = Path(path)
    data = read_yaml(path, CONFIG_SCHEMA)
    base = path.resolve().parent
    has_model = "model" in data
    has_tflite = "float_tflite" in data or "int8_tflite" in data
    if has_model and has_tflite:
        raise ConfigError("give either 'model' or 'float_tflite' + 'int8_tflite', not both", path)
    if not has_model and not has_tflite:
        raise ConfigError("missing key 'model' (or 'float_tflite' + 'int8_tflite')", path)
    if has_tflite:
        for key in ("float_tflite", "int8_tflite"):
            if key not in data:
                raise ConfigError(f"missing key '{key}' (both .tflite files are needed)", path)

    region_data = data["region"]
    region: Region
    if "box" in region_data:
        low, high = _vector(region_data["box"]["low"]), _vector(region_data["box"]["high"])
        if len(low) != len(high) and 1 not in (len(low), len(high)):
            raise ConfigError(f"key 'region.box': low has {len(low)} values, high has {len(high)}", path)
        lo, hi = np.broadcast_arrays(np.asarray(low), np.asarray(high))
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ConfigError("key 'region.box': bounds must be finite", path)
        if np.any(lo > hi):
            i = int(np.argmax(lo > hi))
            raise ConfigError(f"key 'region.box': low[{i}] = {lo[i]} is above high[{i}] = {hi[i]}", path)
        region = BoxRegion(low, high)
    else:
        around = region_data["around"]
        region = BallsRegion(_file(base, around["data"], "region.around.data", path),
                             float(around["radius"]), around.get("count"))

    rep = data.get("representative_data", DEFAULT_REPRESENTATIVE_COUNT)
    if isinstance(rep, str):
        rep = _file(base, rep, "representative_data", path)
        if rep.suffix.lower() not in (".npy", ".csv"):
            raise ConfigError(f"key 'representative_data': expected a .npy or .csv file, got {rep.name}",
                              path)

    budget = _vector(data["budget"]["max_abs_error"])
    scheduler = data.get("scheduler")
    if scheduler is not None and not is_scheduler_address(scheduler):
        raise ConfigError(f"key 'scheduler': expected {SCHEDULER_FORM} with a port in 1..65535, got "
                          f"{scheduler!r}", path)
    return Config(
        path=path,
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        model=_file(base, data["model"], "model", path, directory_ok=True) if has_model else None,
        float_tflite=_file(base, data["float_tflite"], "float_tflite", path) if has_tflite else None,
        int8_tflite=_file(base, data["int8_tflite"], "int8_tflite", path) if has_tflite else None,
        region=region,
        input_interface=data.get("input_interface", "float"),
        max_abs_error=budget,
        decision=data.get("decision"),
        representative_data=rep,
        samples=int(data.get("samples", DEFAULT_SAMPLES)),
        time_limit=float(data.get("time_limit", DEFAULT_TIME_LIMIT)),
        max_boxes=int(data.get("max_boxes", DEFAULT_SETTINGS.max_boxes)),
        max_work=float(data.get("max_work", DEFAULT_SETTINGS.max_work)),
        branching=str(data.get("branching", DEFAULT_SETTINGS.branching)),
        scheduler=scheduler,
    )


def is_scheduler_address(value: str) -> bool:
    """tcp://HOST:PORT or tls://HOST:PORT with a port in 1..65535 (whether it answers is checked when
    the certify engines connect)."""
    import re

    return re.fullmatch(SCHEDULER_PATTERN, value) is not None and 1 <= int(value.rpartition(":")[2]) <= 65535


def check_region(config: Config, input_size: int, output_size: int | None = None) -> None:
    """Once the model is known: the region (and the per-output budget) must fit its sizes."""
    region = config.region
    if isinstance(region, BoxRegion):
        for key, vec in (("low", region.low), ("high", region.high)):
            if len(vec) not in (1, input_size):
                raise ConfigError(
                    f"key 'region.box.{key}': {len(vec)} values, but the model has {input_size} inputs",
                    config.path)
    else:
        try:
            centers = region.centers()
        except ConfigError:
            raise
        except Exception as exc:  # ModelError from the loader: re-label it as this key
            raise ConfigError(f"key 'region.around.data': {exc}", config.path) from None
        if centers.shape[1] != input_size:
            raise ConfigError(
                f"key 'region.around.data': samples have {centers.shape[1]} values, "
                f"but the model has {input_size} inputs", config.path)
        if region.count is not None and region.count > len(centers):
            raise ConfigError(f"key 'region.around.count': {region.count} balls asked, the file holds "
                              f"{len(centers)} samples", config.path)
    if output_size is not None and len(config.max_abs_error) not in (1, output_size):
        raise ConfigError(f"key 'budget.max_abs_error': {len(config.max_abs_error)} values, but the model "
                          f"has {output_size} outputs", config.path)
    if output_size is not None and config.decision == "top1" and output_size < 2:
        # One output (a sigmoid score): there is no other class to compare, and its decision is a threshold.
        raise ConfigError("key 'decision': top1 compares classes, but the model has one output", config.path)


def _representative_file(config: Config, path: Path) -> np.ndarray:
    from toolchain.quantize import load_representative

    try:
        return load_representative(path)
    except ConfigError:
        raise
    except Exception as exc:  # ModelError from the loader: re-label it as this key
        raise ConfigError(f"key 'representative_data': {exc}", config.path) from None


def sample_shape(config: Config, model_input_shape: Sequence[int | None]) -> tuple[int, ...]:
    """The shape of one input sample: the model's input shape without its batch dimension.

    `model_input_shape` is the Keras model's declared input shape (batch None first) or, for a config
    naming .tflite files, the int8 graph's input shape (batch 1 first). Representative data drawn from
    a flat region box or ball is reshaped to it (`representative_samples`): the flat region size never
    decides the shape. Unknown (None) dimensions come from a `representative_data` file whose samples
    fit the known ones; without a file they are dropped (the quantizer rebuilds a plain chain of layers
    on the lower-rank input: ACAS Xu's (None, None, 5) takes samples of shape (5,)).
    """
    dims = tuple(model_input_shape)[1:]
    known = tuple(int(d) for d in dims if d is not None)
    if len(known) == len(dims):
        return known
    declared = (None, *dims)
    if isinstance(config.representative_data, Path):
        shape = tuple(int(d) for d in _representative_file(config, config.representative_data).shape[1:])
        same_rank = len(shape) == len(dims) and all(
            d is None or d == s for d, s in zip(dims, shape, strict=True))
        if same_rank or shape == known:
            return shape
        raise ConfigError(f"key 'representative_data': samples of shape {shape} do not fit the model input "
                          f"{declared}", config.path)
    if not known:
        raise ConfigError(f"the model input {declared} has no known dimension: give a representative_data "
                          "file", config.path)
    return known


def representative_samples(config: Config, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Representative data for the converter, (N, *shape) float32: the configured file, or samples drawn
    from the region (flat, then reshaped to the model's sample `shape`, see `sample_shape`)."""
    from toolchain.quantize import sample_region

    size = int(np.prod(shape))
    check_region(config, size)
    if isinstance(config.representative_data, Path):
        data = _representative_file(config, config.representative_data)
        values = int(np.prod(data.shape[1:]))
        if values != size:
            raise ConfigError(f"key 'representative_data': samples have {values} values, but the model has "
                              f"{size} inputs", config.path)
        return data.reshape((len(data), *shape)).astype(np.float32)
    count = config.representative_data
    if isinstance(config.region, BoxRegion):
        low, high = config.region.arrays(size)
        flat = sample_region(low, high, count, seed)
    else:
        centers = config.region.centers()
        r = config.region.radius
        rng = np.random.default_rng(seed)
        pick = centers[rng.integers(0, len(centers), count)]
        flat = pick + rng.uniform(-r, r, pick.shape)
    return flat.reshape((count, *shape)).astype(np.float32)
