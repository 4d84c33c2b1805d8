"""Build bare-metal test images with arm-none-eabi-gcc and run them on QEMU mps2-an386.

Test vectors go in through semihosting file I/O: the host writes `in.bin` (records built with
`Payload`), the image reads it, runs kernels, writes `out.bin`; QEMU's exit code is the image's
status. One boot runs any number of records: boots, not kernels, are the slow part.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
C_RUNTIME = REPO / "toolchain" / "emit" / "c_runtime"
RUNNER_C = Path(__file__).resolve().parent / "c" / "kernel_runner.c"

CC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"

# Cortex-M4 with its single-precision FPU (mps2-an386 models one); -std=c99 keeps
# floating-point contraction off, as TFLM's kernels are compiled.
M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
COMMON_FLAGS = ("-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-ffp-contract=off",
                "-Wall", "-Wextra", "-Werror")
RUNTIME_SOURCES = (C_RUNTIME / "startup_m4.c", C_RUNTIME / "semihost.c", C_RUNTIME / "qassure_kernels.c")


class FirmwareError(RuntimeError):
    """Build or run of a firmware image failed."""


def missing_tools() -> list[str]:
    return [t for t in (CC, SIZE, QEMU) if shutil.which(t) is None]


def tool_versions() -> dict[str, str]:
    out = {}
    for t in (CC, QEMU):
        r = subprocess.run([t, "--version"], capture_output=True, text=True, check=False)
        out[t] = r.stdout.splitlines()[0] if r.stdout else "?"
    return out


def build_image(sources, out_dir: Path, name: str = "image", defines=(), extra_flags=()) -> Path:
    """Compile and link `sources` (plus the qassure C runtime) into out_dir/name.elf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / f"{name}.elf"
    cmd = [CC, *M4_FLAGS, *COMMON_FLAGS, *extra_flags, *(f"-D{d}" for d in defines), f"-I{C_RUNTIME}",
           *map(str, RUNTIME_SOURCES), *map(str, sources),
           "--specs=nosys.specs", "-nostartfiles", f"-T{C_RUNTIME / 'mps2_an386.ld'}",
           "-Wl,--gc-sections", "-lm", "-o", str(elf)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise FirmwareError(f"build failed ({' '.join(cmd)}):\n{r.stderr}")
    return elf


def compile_only(source: Path, cpu_flags, defines=()) -> tuple[bool, str]:
    """Compile one file to an object for another core; returns (ok, size-or-stderr)."""
    with tempfile.TemporaryDirectory() as d:
        obj = Path(d) / "k.o"
        cmd = [CC, *cpu_flags, *COMMON_FLAGS, *(f"-D{x}" for x in defines), f"-I{C_RUNTIME}", "-c",
               str(source), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return False, r.stderr
        return True, size_of(obj)


def size_of(path: Path) -> str:
    r = subprocess.run([SIZE, str(path)], capture_output=True, text=True, check=True)
    return r.stdout


@dataclass
class RunResult:
    outputs: list[tuple[int, bytes]]  # (op, raw output bytes) per record, in order
    seconds: float  # wall time of the QEMU run (boot + all records)
    stdout: str


def run_image(elf: Path, input_bytes: bytes, timeout: float = 120.0) -> RunResult:
    """Boot `elf` on QEMU mps2-an386 with in.bin = input_bytes; parse out.bin."""
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "in.bin").write_bytes(input_bytes)
        cmd = [QEMU, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise FirmwareError(f"QEMU timed out after {timeout}s") from e
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            raise FirmwareError(f"image exited with status {r.returncode}: {r.stdout}{r.stderr}")
        raw = (work / "out.bin").read_bytes()
    outputs = []
    pos = 0
    while pos < len(raw):
        op, n = struct.unpack_from("<II", raw, pos)
        pos += 8
        outputs.append((op, raw[pos : pos + n]))
        pos += (n + 3) & ~3
    return RunResult(outputs, seconds, r.stdout)


class Payload:
    """Fields of one test record, 4-byte aligned, in the order kernel_runner.c reads them."""

    def __init__(self, op: int):
        self.op = op
        self.parts: list[bytes] = []

    def i32(self, *values: int) -> Payload:
        self.parts.append(struct.pack(f"<{len(values)}i", *(int(v) for v in values)))
        return self

    def i32s(self, a) -> Payload:
        self.parts.append(np.asarray(a, dtype="<i4").tobytes())
        return self

    def i8s(self, a) -> Payload:
        b = np.asarray(a).astype(np.int8).tobytes()
        self.parts.append(b + b"\0" * (-len(b) % 4))
        return self

    def encode(self) -> bytes:
        body = b"".join(self.parts)
        return struct.pack("<II", self.op, len(body)) + body


def encode_records(payloads) -> bytes:
    return b"".join(p.encode() for p in payloads) + struct.pack("<II", 0, 0)


def image_digest(sources, defines=(), extra_flags=()) -> str:
    h = hashlib.sha256()
    for s in (*RUNTIME_SOURCES, *map(Path, sources), C_RUNTIME / "qassure_kernels.h",
              C_RUNTIME / "semihost.h", C_RUNTIME / "mps2_an386.ld"):
        h.update(Path(s).read_bytes())
    h.update(repr((tuple(defines), tuple(extra_flags), M4_FLAGS, COMMON_FLAGS)).encode())
    return h.hexdigest()[:16]
