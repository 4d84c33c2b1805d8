"""The qassure command line through typer's CliRunner: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli.main import app, main
from toolchain.targets import TARGETS_DIR

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in res.output
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def int8_model(zoo: dict) -> Path:
    return zoo["mlp_fused"].int8_tflite


# ---------------------------------------------------------------------------------------- targets / inspect


def test_targets_table() -> None:
    res = run("targets")
    assert res.exit_code == 0
    for name in ("cortex-m4", "cortex-m7", "cortex-m55", "esp32-s3", "cortex-m4-single-rounding"):
        assert name in res.stdout
    data = json.loads(run("targets", "--json").stdout)
    assert {t["name"] for t in data} >= {"cortex-m4", "esp32-s3"}


def test_inspect_table(zoo: dict) -> None:
    res = run("inspect", zoo["cnn_residual"].int8_tflite)
    assert res.exit_code == 0, res.output
    out = res.stdout
    for needle in ("CONV_2D", "ADD", "MEAN", "M=", "sh=", "activation arena", "weights", "[1, 8, 8, 4]"):
        assert needle in out
    info = json.loads(run("inspect", zoo["cnn_residual"].int8_tflite, "--json").stdout)
    assert info["memory"]["arena_bytes"] >= info["memory"]["peak_live_bytes"] > 0
    assert info["ops"][0]["multipliers"]["output"]["M"]


def test_inspect_memory_estimate_on_a_chain(zoo: dict) -> None:
    """mlp_fused is a chain 8 -> 16 -> 16 -> 12 -> 4 (int8): at most two tensors live at once."""
    from toolchain.inspect import memory_estimate
    from toolchain.tflite import reader

    m = memory_estimate(reader.read_model(zoo["mlp_fused"].int8_tflite))
    assert m.peak_live_bytes == 32 and m.arena_bytes == 32
    assert m.weight_bytes > 8 * 16 + 16 * 16


def test_commands_do_not_import_tensorflow_or_dask(int8_model: Path) -> None:
    code = (
        "import sys; from toolchain.cli.main import main\n"
        f"for a in (['targets'], ['inspect', {str(int8_model)!r}]):\n"
        "    try: main(a)\n"
        "    except SystemExit as e: assert e.code == 0, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'distributed' not in sys.modules, 'distributed imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------------------------- check-bitexact


def test_check_bitexact_pass(int8_model: Path) -> None:
    res = run("check-bitexact", int8_model, "--target", "cortex-m4", "--samples", "20", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "bit-exact: 20/20"
    data = json.loads(run("check-bitexact", int8_model, "--samples", "5", "--json").stdout)
    assert data["exact"] == data["samples"] == 5 and data["ok"]


def test_check_bitexact_quiet_prints_only_the_result(int8_model: Path) -> None:
    res = runner.invoke(app, ["-q", "check-bitexact", str(int8_model), "--samples", "4"])
    assert res.exit_code == 0 and res.stdout.strip() == "bit-exact: 4/4"


def test_check_bitexact_mismatch_names_op_and_exits_1(zoo: dict) -> None:
    res = run("check-bitexact", zoo["cnn_conv"].int8_tflite, "--target", "cortex-m4-single-rounding",
              "--samples", "64")
    assert res.exit_code == 1, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("bit-exact: ") and lines[-1] != "bit-exact: 64/64"
    assert any(line.startswith("first differing op: op #") for line in lines)
    assert any("LSB" in line for line in lines)


def test_check_bitexact_against_qemu_without_firmware_tools(int8_model: Path, monkeypatch) -> None:
    from toolchain.emit import firmware

    monkeypatch.setattr(firmware, "missing_tools", lambda: ["qemu-system-arm"])
    res = run("check-bitexact", int8_model, "--against", "qemu", "--samples", "2")
    assert_one_line_error(res, "--against qemu", "qemu-system-arm")


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, int8_model: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    real = int8_model.read_bytes()
    files = {
        "missing": d / "missing.tflite",
        "truncated": d / "truncated.tflite",
        "random": d / "random.tflite",
        "empty": d / "empty.tflite",
        "directory": d,
    }
    files["truncated"].write_bytes(real[: len(real) // 3])
    files["random"].write_bytes(bytes(range(256)) * 8)
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.parametrize("kind", ["missing", "truncated", "random", "empty", "directory"])
@pytest.mark.parametrize("command", ["inspect", "check-bitexact"])
def test_bad_tflite_is_one_line_exit_2(bad_files: dict[str, Path], kind: str, command: str) -> None:
    path = bad_files[kind]
    res = run(command, path)
    assert_one_line_error(res, str(path))


def test_float_model_where_int8_is_needed(zoo: dict) -> None:
    path = zoo["mlp_fused"].float_tflite
    for command in ("check-bitexact", "inspect"):
        assert_one_line_error(run(command, path), str(path), "float model")


def test_wrong_target_name(int8_model: Path) -> None:
    assert_one_line_error(run("check-bitexact", int8_model, "--target", "cortex-m99"),
                          "unknown target 'cortex-m99'")


def test_malformed_target_yaml(tmp_path: Path, int8_model: Path) -> None:
    bad = tmp_path / "board.yaml"
    profile = (TARGETS_DIR / "cortex-m4.yaml").read_text()
    bad.write_text(profile.replace("rounding: double", "rounding: sometimes"))
    assert_one_line_error(run("check-bitexact", int8_model, "--target", bad), str(bad), "key 'rounding'")
    bad.write_text("name: [unclosed\n")
    assert_one_line_error(run("inspect", int8_model, "--target", bad), str(bad), "malformed YAML")


def test_quantize_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: nowhere.h5\nregion: {box: {low: 0, high: 1}}\nbudget: {max_abs_error: 0.1}\n")
    assert_one_line_error(run("quantize", cfg, "--out", tmp_path / "out"), str(cfg), "key 'model'")
    cfg.write_text("region: {box: {low: 0, high: 1}}\nbudget: {max_abs_error: 0.1}\nwat: 1\n")
    assert_one_line_error(run("quantize", cfg, "--out", tmp_path / "out"), "unknown key 'wat'")
    assert_one_line_error(run("quantize", tmp_path / "none.yaml", "--out", tmp_path / "out"),
                          "file not found")


@pytest.mark.tf
def test_quantize_writes_both_models(tmp_path: Path, zoo: dict) -> None:
    """quantize on a tiny Keras model (TensorFlow is imported on this path only)."""
    from toolchain import quantize as qz

    keras = qz._keras()
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inp)))
    model.save(tmp_path / "m.keras")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m.keras\nregion: {box: {low: -1, high: 1}}\nbudget: {max_abs_error: 0.1}\n"
                   "representative_data: 16\n")
    res = run("quantize", cfg, "--target", "cortex-m4", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert (out / "model_int8.tflite").is_file() and (out / "model_float.tflite").is_file()
    res = run("check-bitexact", tmp_path / "out" / "model_int8.tflite", "--samples", "8")
    assert res.exit_code == 0 and res.stdout.strip().endswith("bit-exact: 8/8")


# --------------------------------------------------------------------------------------------- main()


def test_main_turns_errors_into_exit_codes(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path / "x.tflite")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_main_internal_error_is_one_line(capsys, monkeypatch, int8_model: Path) -> None:
    import toolchain.inspect as insp

    def boom(*a, **k):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(insp, "inspect_graph", boom)
    monkeypatch.setattr("toolchain.cli.inspect.inspect_graph", boom)
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(int8_model)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: RuntimeError: kaboom") and err.count("\n") == 1


def test_main_soundness_violation_exits_3(capsys, monkeypatch) -> None:
    from toolchain.errors import SoundnessViolation

    def violated(*a, **k):
        raise SoundnessViolation("witness 0.2 above bound 0.1")

    monkeypatch.setattr("toolchain.cli.targets.list_targets", violated)
    with pytest.raises(SystemExit) as e:
        main(["targets"])
    assert e.value.code == 3
    assert "soundness violation" in capsys.readouterr().err


def test_usage_error_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["check-bitexact"])
    assert e.value.code == 2
