"""Reference interpreters the executor is checked against.

The oracle for TFLM / CMSIS-NN targets is the tflite-micro interpreter, never the desktop
TFLite interpreter (which rounds differently, see DESIGN.md). Bytes reach these interpreters
only after toolchain.tflite.reader has validated them: they can abort the process otherwise.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from toolchain.errors import QassureError
from toolchain.tflite import reader


@contextlib.contextmanager
def quiet_fds():
    """Silence C++ chatter written straight to fds 1/2 (interpreters print allocation logs)."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null:
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tflm_runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise QassureError(
            "the tflite-micro oracle is not installed (pip install --pre tflite-micro; `make setup` does it)"
        ) from exc
    return runtime


class TflmOracle:
    """The tflite-micro Python interpreter on one model, preserving every tensor for comparison."""

    def __init__(self, path: Path | str, preserve_all: bool = True):
        path = Path(path)
        reader.read_model(path)  # validate before the C++ side sees the bytes
        runtime = _tflm_runtime()
        configs = runtime.InterpreterConfig
        config = configs.kPreserveAllTensors if preserve_all else configs.kAllocationRecording
        with quiet_fds():
            self._it = runtime.Interpreter.from_bytes(path.read_bytes(), intrepreter_config=config)
        self.preserve_all = preserve_all
        self.n_outputs = len(reader.read_model(path).outputs)

    def run_one(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One inference on one input of the model's input shape (batch 1)."""
        self._it.set_input(np.ascontiguousarray(x), 0)
        with quiet_fds():
            self._it.invoke()
        return tuple(np.array(self._it.get_output(i)) for i in range(self.n_outputs))

    def tensor(self, index: int) -> np.ndarray:
        """A tensor's value after the last inference (needs preserve_all)."""
        t = self._it.GetTensor(index, 0)
        return np.array(t["tensor_data"]).reshape(tuple(t["shape"]))

    def run(self, xs: np.ndarray) -> np.ndarray:
        """First output for each input of a batch (B, *input_shape)."""
        return np.stack([self.run_one(x)[0] for x in xs])
