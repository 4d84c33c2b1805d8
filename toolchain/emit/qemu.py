"""Run the emitted C of a model on the target's emulated board: the device-side oracle.

`QemuOracle` builds the model's C (toolchain.emit.c_codegen) into a bare-metal image for the
target's core (toolchain.emit.firmware), boots it ONCE per batch on the target's QEMU board, and
feeds the vectors through semihosting files. `verify_on_qemu` is the gate's firmware record.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import execute
from toolchain.emit import firmware
from toolchain.emit.c_codegen import emit_c
from toolchain.errors import QassureError
from toolchain.targets import Target
from toolchain.tflite import prepare, reader


class QemuOracle:
    """The emitted C of one model on the target's emulated board: one QEMU boot per batch."""

    def __init__(self, path: Path | str, target: Target, *, rounding: str | None = None,
                 cache: Path = firmware.CACHE_DIR):
        self.path = Path(path)
        self.target = target
        self.rounding = rounding or target.rounding
        machine = target.qemu_machine
        if machine is None or not firmware.arm_core(target):
            raise QassureError(f"target {target.name} has no emulated board (qemu_machine: {machine}); "
                               "use --against tflm")
        if machine not in firmware.BOARDS:
            raise QassureError(f"target {target.name}: no memory map for QEMU board {machine} "
                               f"(known: {', '.join(firmware.BOARDS)})")
        missing = firmware.missing_tools()
        if missing:
            raise QassureError(f"--against qemu needs {', '.join(missing)} on PATH "
                               "(run `make setup-firmware` or scripts/setup-firmware.sh)")
        self.machine = machine
        self.graph = reader.read_model(self.path)
        with tempfile.TemporaryDirectory() as d:
            emitted = emit_c(self.path, Path(d), _with_rounding(target, self.rounding), build=False)
            self.elf = firmware.build_image(Path(d), target, self.rounding, cache)
        self.emitted = emitted
        self.size = firmware.image_size(self.elf, target)
        self.last_seconds = 0.0
        self.boots = 0

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [self.graph.tensor(t).shape for t in self.graph.outputs]

    def run(self, xs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output for each input of a batch: a tuple of (B, *output_shape) int8 arrays."""
        shape = self.graph.input.shape
        xs = np.asarray(xs)
        xs = xs.reshape((-1, *shape)) if xs.size else np.zeros((0, *shape), np.int8)
        if not np.all((xs >= -128) & (xs <= 127)):
            raise QassureError("QEMU oracle inputs must be int8 values")
        n = len(xs)
        n_in = int(np.prod(shape))
        n_out = self.emitted.output_size
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            (work / "in.bin").write_bytes(struct.pack("<II", n, n_in) + xs.astype(np.int8).tobytes())
            cmd = [firmware.QEMU, "-M", self.machine, "-nographic", "-monitor", "none", "-serial", "none",
                   "-semihosting-config", "enable=on,target=native", "-kernel", str(self.elf)]
            timeout = 60.0 + 2.0 * n
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout,
                                   check=False)
            except subprocess.TimeoutExpired:
                raise QassureError(f"QEMU {self.machine} did not finish {n} inferences in "
                                   f"{timeout:.0f} s") from None
            self.last_seconds = time.perf_counter() - t0
            self.boots += 1
            if r.returncode != 0:
                msg = (r.stdout + r.stderr).strip().splitlines()
                raise QassureError(f"the model image exited with status {r.returncode} on {self.machine}"
                                   + (f": {msg[-1]}" if msg else ""))
            raw = (work / "out.bin").read_bytes()
        count, size = struct.unpack_from("<II", raw, 0)
        if count != n or size != n_out or len(raw) != 8 + n * n_out:
            raise QassureError(f"the model image returned {len(raw)} bytes, expected {8 + n * n_out}")
        flat = np.frombuffer(raw, dtype=np.int8, offset=8).reshape(n, n_out)
        outs, pos = [], 0
        for s in self.output_shapes:
            k = int(np.prod(s))
            outs.append(flat[:, pos:pos + k].reshape((n, *s)).copy())
            pos += k
        return tuple(outs)

    def describe(self) -> str:
        """One line: which core and board ran how many vectors in how long, and the image size."""
        return (f"emitted C on QEMU {self.machine} ({self.target.cpu_core}, {self.rounding} rounding): "
                f"last boot {self.last_seconds:.2f} s; image {self.size.line()}")

    def run_one(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One inference (one boot); prefer run() for batches."""
        return tuple(o[0] for o in self.run(np.asarray(x)[None]))


def _with_rounding(target: Target, rounding: str) -> Target:
    return target if rounding == target.rounding else replace(target, rounding=rounding)  # type: ignore[arg-type]


def verify_on_qemu(int8_tflite: Path, target: Target, inputs: np.ndarray,
                   prepared: prepare.PreparedGraph | None = None) -> dict[str, Any]:
    """The gate's firmware record: the executor (on `prepared` when given) vs the emitted C on the
    target's emulated core."""
    oracle = QemuOracle(int8_tflite, target)
    pg = prepare.prepare(oracle.graph, target.rounding) if prepared is None else prepared
    xs = np.asarray(inputs).reshape((-1, *oracle.graph.input.shape))
    ours = execute.run(pg, xs).outputs
    theirs = oracle.run(xs)
    same = np.ones(len(xs), dtype=bool)
    for a, b in zip(ours, theirs, strict=True):
        same &= (a.reshape(len(xs), -1) == b.reshape(len(xs), -1)).all(axis=1)
    return {"core": target.cpu_core, "machine": oracle.machine,
            "cpu_flags": " ".join(firmware.cpu_flags(target)),
            "rounding": target.rounding, "vectors": int(len(xs)), "matched": int(same.sum()),
            "image": oracle.size.as_dict()}
