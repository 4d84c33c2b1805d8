"""Errors the user can act on, and the exit codes shared by every command."""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_SOUNDNESS = 3


class QassureError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, path: object | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class ModelError(QassureError):
    """A .tflite / Keras file that cannot be read or is not supported."""


class UnsupportedOpError(ModelError):
    """An operator or tensor type the executor does not implement."""


class ConfigError(QassureError):
    """A config or target YAML that fails its schema."""


class SoundnessViolation(Exception):
    """An observed error above a certified bound: a bug in qassure, never the user's."""

    exit_code = EXIT_SOUNDNESS
