"""Target profiles: how a device computes (kernels, rounding) and what it holds (flash, RAM).

Profiles live in `targets/NAME.yaml` at the repository root, one file per target, each checked
against TARGET_SCHEMA (unknown keys are rejected). `load_target` accepts a profile name or a
path to a YAML file of the same schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from toolchain.config import read_yaml
from toolchain.errors import ConfigError

TARGETS_DIR = Path(__file__).resolve().parents[1] / "targets"

KERNEL_LIBRARIES = ("cmsis-nn", "tflm-reference", "esp-nn")
ROUNDINGS = ("double", "single")

TARGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "name", "cpu", "kernel_library", "rounding", "per_channel", "flash_bytes", "ram_bytes",
    ],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
        "description": {"type": "string"},
        "cpu": {
            "type": "object",
            "additionalProperties": False,
            "required": ["core"],
            "properties": {"core": {"type": "string"}, "flags": {"type": "string"}},
        },
        "kernel_library": {"enum": list(KERNEL_LIBRARIES)},
        "rounding": {"enum": list(ROUNDINGS)},
        "per_channel": {"type": "boolean"},
        "flash_bytes": {"type": "integer", "minimum": 1},
        "ram_bytes": {"type": "integer", "minimum": 1},
        "emit_c": {"type": "boolean"},
        "qemu_machine": {"type": ["string", "null"]},
    },
}


@dataclass(frozen=True)
class Target:
    """One device profile; every field is documented in docs/reference.md."""

    name: str
    description: str
    cpu_core: str
    cpu_flags: str
    kernel_library: Literal["cmsis-nn", "tflm-reference", "esp-nn"]
    rounding: Literal["double", "single"]  # MultiplyByQuantizedMultiplier flavour
    per_channel: bool  # the kernels accept per-channel weight scales
    flash_bytes: int
    ram_bytes: int
    emit_c: bool  # a C array of the model is part of the artifact
    qemu_machine: str | None  # qemu-system-arm -machine value, None when no emulator exists
    path: Path

    def as_dict(self) -> dict[str, Any]:
        """The profile as it appears in certificates and --json output (no path)."""
        d = asdict(self)
        d.pop("path")
        return d


def _target_files() -> list[Path]:
    return sorted(TARGETS_DIR.glob("*.yaml")) if TARGETS_DIR.is_dir() else []


def target_names() -> list[str]:
    return [p.stem for p in _target_files()]


def load_target(name_or_path: str | Path) -> Target:
    """A target by profile name (`cortex-m4`) or by path to a YAML file; ConfigError otherwise."""
    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        path = candidate
        if not path.is_file():
            raise ConfigError("target file not found", path)
    else:
        path = TARGETS_DIR / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(target_names()) or "none"
            raise ConfigError(f"unknown target '{text}' (known targets: {known})")
    data = read_yaml(path, TARGET_SCHEMA)
    if path.parent == TARGETS_DIR and data["name"] != path.stem:
        raise ConfigError(f"key 'name': '{data['name']}' differs from the file name '{path.stem}'", path)
    cpu = data["cpu"]
    return Target(
        name=data["name"],
        description=data.get("description", ""),
        cpu_core=cpu["core"],
        cpu_flags=cpu.get("flags", ""),
        kernel_library=data["kernel_library"],
        rounding=data["rounding"],
        per_channel=data["per_channel"],
        flash_bytes=data["flash_bytes"],
        ram_bytes=data["ram_bytes"],
        emit_c=data.get("emit_c", True),
        qemu_machine=data.get("qemu_machine"),
        path=path,
    )


def list_targets() -> list[Target]:
    """Every shipped profile, sorted by name (a malformed profile raises its ConfigError)."""
    return [load_target(p) for p in _target_files()]
