"""Build emitted C into a bare-metal image for the target's core and measure it.

`build_image` links model.c, the kernel library, the start-up code and the semihosting runner
with `arm-none-eabi-gcc` for the target's core and QEMU board (cached by content hash under
`.cache/firmware/`); `image_size` and `compile_only` report flash and RAM against the target's budget.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import QassureError
from toolchain.targets import Target

RUNTIME_DIR = Path(__file__).resolve().parent / "c_runtime"
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "firmware"
KERNEL_FILES = ("qassure_kernels.h", "qassure_kernels.c")
BOARD_SOURCES = ("startup_m4.c", "semihost.c", "model_runner.c")
BOARD_HEADERS = ("semihost.h",)
LINKER_TEMPLATE = RUNTIME_DIR / "mps2_an386.ld"

CC, SIZE, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"
# -std=c99 and -ffp-contract=off as the kernel tests build; the kernels use no floating point.
COMMON_FLAGS = ("-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-ffp-contract=off",
                "-Wall", "-Wextra", "-Werror")


@dataclass(frozen=True)
class Board:
    """Where a QEMU board has memory for code (the vector table sits at flash_origin) and data."""

    flash_origin: int
    flash_length: int
    ram_origin: int
    ram_length: int


KIB, MIB = 1024, 1024 * 1024
BOARDS: dict[str, Board] = {
    "mps2-an386": Board(0x00000000, 4 * MIB, 0x20000000, 4 * MIB),  # Cortex-M4: SSRAM1 / SSRAM2-3
    "mps2-an500": Board(0x00000000, 4 * MIB, 0x20000000, 4 * MIB),  # Cortex-M7: same MPS2 map
    "mps3-an547": Board(0x00000000, 512 * KIB, 0x21000000, 4 * MIB),  # Cortex-M55: ITCM / SRAM 2
}


@dataclass(frozen=True)
class ImageSize:
    """`arm-none-eabi-size` of a linked image against the target's budget."""

    text: int
    data: int
    bss: int
    flash_budget: int
    ram_budget: int

    @property
    def flash(self) -> int:
        return self.text + self.data  # code + const data + the .data load image

    @property
    def ram(self) -> int:
        return self.data + self.bss  # initialised data + arena + I/O buffers (stack not counted)

    @property
    def fits(self) -> bool:
        return self.flash <= self.flash_budget and self.ram <= self.ram_budget

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flash": self.flash, "ram": self.ram, "fits": self.fits}

    def line(self) -> str:
        return (f"text {self.text:,} B, data {self.data:,} B, bss {self.bss:,} B: flash {self.flash:,} of "
                f"{self.flash_budget:,} B ({100.0 * self.flash / self.flash_budget:.1f}%), "
                f"RAM {self.ram:,} of {self.ram_budget:,} B ({100.0 * self.ram / self.ram_budget:.1f}%)"
                + ("" if self.fits else " -- OVER BUDGET"))


def missing_tools() -> list[str]:
    return [t for t in (CC, SIZE, QEMU) if shutil.which(t) is None]


def arm_core(target: Target) -> bool:
    return target.cpu_core.startswith("cortex-m")


def cpu_flags(target: Target) -> tuple[str, ...]:
    flags = tuple(shlex.split(target.cpu_flags))
    return flags or (f"-mcpu={target.cpu_core}", "-mthumb")


def _defines(rounding: str) -> tuple[str, ...]:
    return ("-DQA_SINGLE_ROUNDING=1",) if rounding == "single" else ()


def board_of(target: Target) -> Board:
    return BOARDS.get(target.qemu_machine or "", BOARDS["mps2-an386"])


def linker_script(board: Board) -> str:
    text = LINKER_TEMPLATE.read_text(encoding="utf-8")
    memory = (f"MEMORY\n{{\n"
              f"  FLASH (rx)  : ORIGIN = 0x{board.flash_origin:08X}, LENGTH = {board.flash_length}\n"
              f"  RAM   (rwx) : ORIGIN = 0x{board.ram_origin:08X}, LENGTH = {board.ram_length}\n}}")
    return re.sub(r"MEMORY\s*\{[^}]*\}", memory, text, count=1)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise QassureError(f"{what} failed: {err[0] if err else 'exit ' + str(r.returncode)}")
    return r


def build_image(src_dir: Path, target: Target, rounding: str, cache: Path = CACHE_DIR) -> Path:
    """Link model.c + the kernels + start-up + runner for the target's core and board; cached by content."""
    flags = (*cpu_flags(target), *COMMON_FLAGS, *_defines(rounding))
    script = linker_script(board_of(target))
    h = hashlib.sha256()
    for f in ("model.h", "model.c", *KERNEL_FILES):
        h.update((src_dir / f).read_bytes())
    for f in (*BOARD_SOURCES, *BOARD_HEADERS):
        h.update((RUNTIME_DIR / f).read_bytes())
    h.update(repr((flags, script)).encode())
    digest = h.hexdigest()[:20]
    out = cache / digest
    elf = out / "model.elf"
    if elf.is_file():
        return elf
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=cache))
    try:
        for f in ("model.h", "model.c", *KERNEL_FILES):
            shutil.copyfile(src_dir / f, staging / f)
        (staging / "board.ld").write_text(script, encoding="utf-8")
        sources = [staging / "model.c", staging / "qassure_kernels.c",
                   *(RUNTIME_DIR / f for f in BOARD_SOURCES)]
        cmd = [CC, *flags, f"-I{staging}", f"-I{RUNTIME_DIR}", *map(str, sources), "--specs=nosys.specs",
               "-nostartfiles", f"-T{staging / 'board.ld'}", "-Wl,--gc-sections",
               "-o", str(staging / "model.elf")]
        _run(cmd, f"{CC} ({target.cpu_core})")
        try:
            os.replace(staging, out)
        except OSError:  # another process built the same image meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return elf


def image_size(elf: Path, target: Target) -> ImageSize:
    r = _run([SIZE, str(elf)], SIZE)
    text, data, bss = (int(v) for v in r.stdout.splitlines()[1].split()[:3])
    return ImageSize(text, data, bss, target.flash_bytes, target.ram_bytes)


def compile_only(src_dir: Path, target: Target, rounding: str) -> ImageSize:
    """Compile model.c + kernels to objects for the target's core (no board); size of the objects."""
    with tempfile.TemporaryDirectory() as d:
        objs = []
        for f in ("model.c", "qassure_kernels.c"):
            obj = Path(d) / (f + ".o")
            _run([CC, *cpu_flags(target), *COMMON_FLAGS, *_defines(rounding), f"-I{src_dir}", "-c",
                  str(src_dir / f), "-o", str(obj)], f"{CC} ({target.cpu_core})")
            objs.append(obj)
        r = _run([SIZE, "--totals", *map(str, objs)], SIZE)
        text, data, bss = (int(v) for v in r.stdout.splitlines()[-1].split()[:3])
    return ImageSize(text, data, bss, target.flash_bytes, target.ram_bytes)
