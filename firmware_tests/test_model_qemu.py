"""Whole models as emitted C (`qassure emit-c`) on emulated Cortex-M cores, bit for bit.

Every zoo model and the int8 files in ../shared/models are emitted, built for the Cortex-M4
(`mps2-an386`) and run in ONE QEMU boot per model on random int8 inputs plus all −128 and all 127;
the outputs must equal the numpy executor's and the tflite-micro interpreter's. A single-rounding
build is compared with the executor in single-rounding mode; Cortex-M7 (`mps2-an500`) and Cortex-M55
(`mps3-an547`) images boot and match too. Images are cached by content under .cache/firmware/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests import zoo as zoo_module
from toolchain import execute
from toolchain.arith import Rounding
from toolchain.bitexact import random_inputs
from toolchain.cli.main import app
from toolchain.emit import c_codegen, firmware, qemu
from toolchain.errors import ModelError
from toolchain.oracle import TflmOracle
from toolchain.targets import load_target
from toolchain.tflite import prepare

pytestmark = pytest.mark.firmware

ZOO_NAMES = tuple(zoo_module._SPECS)
SHARED_INT8 = ("ad01_int8.tflite", "pretrainedResnet_quant.tflite")
VECTORS = 34  # all -128, all 127, then 32 random


def _model_path(name: str, zoo: dict, shared: Path | None) -> Path:
    if name in SHARED_INT8:
        path = (shared or Path("/nonexistent")) / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        return path
    return zoo[name].int8_tflite


@pytest.fixture(scope="module")
def shared_dir(request) -> Path | None:
    try:
        return request.getfixturevalue("shared_models")
    except pytest.skip.Exception:
        return None


def _exact(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], n: int) -> np.ndarray:
    """Per vector: every output equal bit for bit."""
    same = np.ones(n, dtype=bool)
    for x, y in zip(a, b, strict=True):
        same &= (np.asarray(x).reshape(n, -1) == np.asarray(y).reshape(n, -1)).all(axis=1)
    return same


def _run_case(path: Path, target_name: str, n: int, seed: int, rounding: Rounding | None = None):
    target = load_target(target_name)
    oracle = qemu.QemuOracle(path, target, rounding=rounding)
    xs = random_inputs(oracle.graph, n, seed)
    device = oracle.run(xs)
    ours = execute.run(prepare.prepare(oracle.graph, rounding or target.rounding), xs).outputs
    return oracle, xs, device, ours


@pytest.mark.parametrize("name", ZOO_NAMES + SHARED_INT8)
def test_model_on_m4_matches_executor_and_tflm(firmware_toolchain, zoo, shared_dir, name: str) -> None:
    path = _model_path(name, zoo, shared_dir)
    n = VECTORS  # ResNet-8: ~0.1 s per inference on QEMU, ~25 ms in tflite-micro
    oracle, xs, device, ours = _run_case(path, "cortex-m4", n, seed=7)
    tflm = TflmOracle(path, preserve_all=False)
    theirs = [tflm.run_one(x) for x in xs]
    tflm_outs = tuple(np.stack([t[i] for t in theirs]) for i in range(len(device)))
    vs_exec, vs_tflm = _exact(device, ours, n), _exact(device, tflm_outs, n)
    print(f"\n{name}: QEMU {oracle.machine} vs executor {int(vs_exec.sum())}/{n}, vs tflite-micro "
          f"{int(vs_tflm.sum())}/{n}; boot+run {oracle.last_seconds:.2f} s; {oracle.size.line()}")
    assert vs_exec.all(), f"{name}: {n - int(vs_exec.sum())}/{n} vectors differ from the executor"
    assert vs_tflm.all(), f"{name}: {n - int(vs_tflm.sum())}/{n} vectors differ from tflite-micro"
    assert oracle.size.fits
    assert oracle.boots == 1  # the whole batch in one boot


def test_single_rounding_build_matches_executor(firmware_toolchain, zoo) -> None:
    """-DQA_SINGLE_ROUNDING=1 images vs the executor prepared for single rounding (cnn_residual has MEAN, ADD,
    MUL, PAD, CONCATENATION, tables; mlp_softmax SOFTMAX), and they do differ from double rounding
    somewhere."""
    n, differs_from_double = 64, 0
    for name in ("mlp_fused", "cnn_residual", "mlp_softmax"):
        oracle, xs, device, ours = _run_case(zoo[name].int8_tflite, "cortex-m4-single-rounding", n, seed=11)
        same = _exact(device, ours, n)
        double = execute.run(prepare.prepare(oracle.graph, "double"), xs).outputs
        differs_from_double += n - int(_exact(device, double, n).sum())
        print(f"\n{name} single rounding: {int(same.sum())}/{n} bit-exact, {oracle.last_seconds:.2f} s")
        assert same.all(), name
    assert differs_from_double > 0, "the single-rounding image computes exactly what double rounding does"


@pytest.mark.parametrize("target_name", ("cortex-m7", "cortex-m55"))
@pytest.mark.parametrize("name", ("cnn_residual", "mlp_softmax", "ad01_int8.tflite"))
def test_other_cores_boot_and_match(firmware_toolchain, zoo, shared_dir, target_name: str, name: str) -> None:
    """Built with the target's own -mcpu flags, run on its QEMU board (mps2-an500, mps3-an547)."""
    path = _model_path(name, zoo, shared_dir)
    oracle, _, device, ours = _run_case(path, target_name, VECTORS, seed=5)
    same = _exact(device, ours, VECTORS)
    print(f"\n{name} on {target_name} ({oracle.machine}): {int(same.sum())}/{VECTORS} bit-exact, "
          f"{oracle.last_seconds:.2f} s; {oracle.size.line()}")
    assert same.all()


@pytest.mark.parametrize("target_name", ("cortex-m7", "cortex-m55"))
def test_compile_only_for_other_cores(firmware_toolchain, zoo, tmp_path, target_name: str) -> None:
    """model.c + kernels compile warning-free (-Werror) to objects for the core, without a board."""
    target = load_target(target_name)
    res = c_codegen.emit_c(zoo["cnn_residual"].int8_tflite, tmp_path, target, build=False)
    size = firmware.compile_only(res.out_dir, target, target.rounding)
    print(f"\n{target_name} objects: {size.line()}")
    assert size.text > 0 and size.fits


def test_emitted_c_is_standalone(zoo, tmp_path) -> None:
    res = c_codegen.emit_c(zoo["cnn_residual"].int8_tflite, tmp_path, load_target("cortex-m4"), build=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(res.files)
    src = (tmp_path / "model.c").read_text()
    header = (tmp_path / "model.h").read_text()
    assert "malloc" not in src and not re.search(r"\b(float|double)\b(?! rounding)", src)  # integer only
    assert "int model_invoke(const int8_t *in, int8_t *out);" in header
    assert "#define QA_MODEL_INPUT_SIZE 256" in header and "#define QA_MODEL_SINGLE_ROUNDING 0" in header
    # the same bytes every time (the artifact hashes them)
    again = c_codegen.emit_c(zoo["cnn_residual"].int8_tflite, tmp_path / "again", load_target("cortex-m4"),
                           build=False)
    assert (again.out_dir / "model.c").read_bytes() == src.encode()


def test_rounding_mismatch_does_not_build(firmware_toolchain, zoo, tmp_path) -> None:
    """A double-rounding model.c linked with single-rounding kernels fails (compile #error / link guard)."""
    c_codegen.emit_c(zoo["mlp_fused"].int8_tflite, tmp_path, load_target("cortex-m4"), build=False)
    flags = [*firmware.cpu_flags(load_target("cortex-m4")), *firmware.COMMON_FLAGS]
    wrong = subprocess.run([firmware.CC, *flags, "-DQA_SINGLE_ROUNDING=1", f"-I{tmp_path}", "-c",
                            str(tmp_path / "model.c"), "-o", str(tmp_path / "m.o")],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "QA_SINGLE_ROUNDING=0" in wrong.stderr
    objs = []
    for f, d in (("model.c", "0"), ("qassure_kernels.c", "1")):
        obj = tmp_path / f"{f}.o"
        subprocess.run([firmware.CC, *flags, f"-DQA_SINGLE_ROUNDING={d}", f"-I{tmp_path}", "-c",
                        str(tmp_path / f), "-o", str(obj)], check=True)
        objs.append(str(obj))
    (tmp_path / "board.ld").write_text(firmware.linker_script(firmware.BOARDS["mps2-an386"]))
    runtime = [str(firmware.RUNTIME_DIR / f) for f in firmware.BOARD_SOURCES]
    link = subprocess.run([firmware.CC, *flags, f"-I{tmp_path}", f"-I{firmware.RUNTIME_DIR}", *objs, *runtime,
                           "--specs=nosys.specs", "-nostartfiles", f"-T{tmp_path / 'board.ld'}",
                           "-o", str(tmp_path / "bad.elf")], capture_output=True, text=True)
    assert link.returncode != 0 and "qa_kernels_double_rounding" in link.stderr


def test_float_input_graph_is_refused(zoo, tmp_path) -> None:
    with pytest.raises(ModelError, match="int8 input"):
        c_codegen.emit_c(zoo["mlp_fused"].float_tflite, tmp_path, load_target("cortex-m4"))


def test_cli_emit_c_and_check_bitexact_against_qemu(firmware_toolchain, zoo, tmp_path) -> None:
    path = str(zoo["cnn_depthwise"].int8_tflite)
    res = CliRunner().invoke(app, ["emit-c", path, "--target", "cortex-m4", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "image (cortex-m4" in res.stdout and "of 2,097,152 B" in res.stdout
    assert (tmp_path / "c" / "model.c").is_file()
    res = CliRunner().invoke(app, ["check-bitexact", path, "--target", "cortex-m4", "--against", "qemu",
                                   "--samples", "16"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "bit-exact: 16/16"
    assert "mps2-an386" in res.stdout


def test_esp32_has_no_board(zoo) -> None:
    from toolchain.errors import QassureError

    with pytest.raises(QassureError, match="no emulated board"):
        qemu.QemuOracle(zoo["mlp_fused"].int8_tflite, load_target("esp32-s3"))
