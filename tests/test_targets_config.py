"""Target profiles and config files: schema, defaults, and one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolchain.certify.settings import Settings
from toolchain.config import (
    BallsRegion,
    BoxRegion,
    check_region,
    load_config,
    representative_samples,
    sample_shape,
)
from toolchain.errors import ConfigError
from toolchain.targets import TARGETS_DIR, list_targets, load_target

SHIPPED = {"cortex-m4", "cortex-m7", "cortex-m55", "esp32-s3", "cortex-m4-single-rounding"}


def test_shipped_targets_load() -> None:
    targets = {t.name: t for t in list_targets()}
    assert SHIPPED <= set(targets)
    m4 = targets["cortex-m4"]
    assert (m4.kernel_library, m4.rounding, m4.flash_bytes, m4.ram_bytes) == (
        "cmsis-nn", "double", 2 << 20, 640 << 10)
    assert "-mcpu=cortex-m4" in m4.cpu_flags and m4.qemu_machine == "mps2-an386"
    assert targets["cortex-m4-single-rounding"].rounding == "single"
    assert targets["esp32-s3"].kernel_library == "esp-nn"
    assert all(t.name == t.path.stem for t in targets.values())


def test_target_by_path_and_frozen(tmp_path: Path) -> None:
    src = (TARGETS_DIR / "cortex-m4.yaml").read_text()
    p = tmp_path / "my-board.yaml"
    p.write_text(src.replace("name: cortex-m4", "name: my-board"))
    t = load_target(p)
    assert t.name == "my-board" and t.path == p
    with pytest.raises(AttributeError):
        t.rounding = "single"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s + "turbo: true\n", "unknown key 'turbo'"),
        (lambda s: s.replace("rounding: double", "rounding: triple"), "key 'rounding'"),
        (lambda s: s.replace("flash_bytes: 2097152", "flash_bytes: lots"), "key 'flash_bytes'"),
        (lambda s: s.replace("kernel_library: cmsis-nn\n", ""), "missing key 'kernel_library'"),
        (lambda s: s.replace("  core: cortex-m4\n", "  core: cortex-m4\n  fpu: yes\n"),
         "unknown key 'cpu.fpu'"),
        (lambda s: s + "  bad: [\n", "malformed YAML"),
        (lambda s: "- just\n- a list\n", "expected a mapping"),
    ],
)
def test_malformed_target_names_file_and_key(tmp_path: Path, edit, needle: str) -> None:
    p = tmp_path / "board.yaml"
    p.write_text(edit((TARGETS_DIR / "cortex-m4.yaml").read_text()))
    with pytest.raises(ConfigError) as e:
        load_target(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_unknown_target_lists_known() -> None:
    with pytest.raises(ConfigError, match="unknown target 'cortex-m99'.*cortex-m4"):
        load_target("cortex-m99")
    with pytest.raises(ConfigError, match="not found"):
        load_target("/nonexistent/board.yaml")


# --------------------------------------------------------------------------------------------- configs


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    (tmp_path / "model.h5").write_bytes(b"x")
    (tmp_path / "f.tflite").write_bytes(b"x")
    (tmp_path / "q.tflite").write_bytes(b"x")
    np.save(tmp_path / "centers.npy", np.zeros((4, 3), dtype=np.float32))
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = "model: model.h5\nregion:\n  box: {low: -1, high: [1, 2, 3]}\nbudget: {max_abs_error: 0.1}\n"


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.model == tmp_path / "model.h5"
    assert cfg.name == "c" and cfg.input_interface == "float" and cfg.decision is None
    assert isinstance(cfg.region, BoxRegion)
    low, high = cfg.region.arrays(3)
    assert low.tolist() == [-1, -1, -1] and high.tolist() == [1, 2, 3]
    assert cfg.max_abs_error == (0.1,) and cfg.budget(3).tolist() == [0.1] * 3
    assert cfg.representative_data == 256 and cfg.samples >= 1 and cfg.time_limit > 0
    assert cfg.max_boxes == Settings().max_boxes
    check_region(cfg, 3, 5)
    rep = representative_samples(cfg, (3,))
    assert rep.shape == (256, 3) and np.all(rep >= low) and np.all(rep <= high)


def test_config_tflite_pair_balls_and_options(tmp_path: Path) -> None:
    text = ("name: pump\nfloat_tflite: f.tflite\nint8_tflite: q.tflite\n"
            "region:\n  around: {data: centers.npy, radius: 0.05, count: 2}\n"
            "input_interface: int8\nbudget: {max_abs_error: [0.1, 0.2]}\ndecision: top1\n"
            "representative_data: 32\nsamples: 500\ntime_limit: 10\nmax_boxes: 64\n")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.model is None and cfg.int8_tflite == tmp_path / "q.tflite"
    assert isinstance(cfg.region, BallsRegion) and cfg.region.count == 2
    assert cfg.region.centers().shape == (2, 3)
    assert (cfg.input_interface, cfg.decision, cfg.samples, cfg.time_limit, cfg.max_boxes) == (
        "int8", "top1", 500, 10.0, 64)
    check_region(cfg, 3, 2)
    with pytest.raises(ConfigError, match="budget.max_abs_error.*2 values.*5 outputs"):
        check_region(cfg, 3, 5)
    with pytest.raises(ConfigError, match="region.around.data.*3 values.*640 inputs"):
        check_region(cfg, 640)
    one = load_config(_write(tmp_path, text.replace("[0.1, 0.2]", "0.1")))
    with pytest.raises(ConfigError, match="decision.*top1 compares classes.*one output"):
        check_region(one, 3, 1)  # a sigmoid score: top1 would hold trivially
    rep = representative_samples(cfg, (3,))
    assert rep.shape == (32, 3) and np.all(np.abs(rep) <= 0.05 + 1e-6)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE + "colour: red\n", "unknown key 'colour'"),
        (BASE.replace("max_abs_error: 0.1", "max_abs_error: small"), "key 'budget.max_abs_error'"),
        (BASE.replace("budget: {max_abs_error: 0.1}\n", ""), "missing key 'budget'"),
        (BASE.replace("budget: {max_abs_error: 0.1}", "budget: {}"), "missing key 'budget.max_abs_error'"),
        (BASE.replace("model.h5", "missing.h5"), "key 'model': file not found"),
        (BASE + "input_interface: uint8\n", "key 'input_interface'"),
        (BASE + "samples: many\n", "key 'samples'"),
        (BASE + "max_boxes: 0\n", "key 'max_boxes'"),
        (BASE + "max_boxes: 2.5\n", "key 'max_boxes'"),
        (BASE.replace("box: {low: -1, high: [1, 2, 3]}", "box: {low: 2, high: 1}"), "low[0] = 2.0 is above"),
        (BASE.replace("box:", "ball:"), "unknown key 'region.ball'"),
        (BASE + "float_tflite: f.tflite\nint8_tflite: q.tflite\n", "not both"),
        ("region:\n  box: {low: 0, high: 1}\nbudget: {max_abs_error: 1}\n", "missing key 'model'"),
        (BASE.replace("model: model.h5", "float_tflite: f.tflite"), "missing key 'int8_tflite'"),
        (BASE + "representative_data: centers.txt\n", "key 'representative_data': file not found"),
        ("[1, 2\n", "malformed YAML"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg, msg
    assert str(p) in msg and "\n" not in msg


def test_sample_shape_is_the_model_input_shape(tmp_path: Path) -> None:
    """Never the flat region size: a 3-value box still gives image-shaped samples for an image model."""
    text = BASE.replace("high: [1, 2, 3]", "high: 1") + "representative_data: 5\n"
    cfg = load_config(_write(tmp_path, text))
    assert sample_shape(cfg, (None, 4, 4, 3)) == (4, 4, 3)  # Keras: batch None
    assert sample_shape(cfg, (1, 4, 4, 3)) == (4, 4, 3)  # int8 graph: batch 1
    assert representative_samples(cfg, (4, 4, 3)).shape == (5, 4, 4, 3)
    assert sample_shape(cfg, (None, None, 5)) == (5,)  # ACAS Xu: the quantizer drops the unknown dimension
    with pytest.raises(ConfigError, match="no known dimension"):
        sample_shape(cfg, (None, None))


def test_sample_shape_takes_unknown_dimensions_from_the_data_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE + "representative_data: centers.npy\n"))  # (4, 3) samples
    assert sample_shape(cfg, (None, None, 3)) == (3,)
    assert sample_shape(cfg, (None, None)) == (3,)
    with pytest.raises(ConfigError,
                       match=r"representative_data.*\(3,\) do not fit the model input \(None, None, 7\)"):
        sample_shape(cfg, (None, None, 7))


def test_region_size_must_match_model(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE))
    with pytest.raises(ConfigError, match=r"region.box.high': 3 values, but the model has 5 inputs"):
        check_region(cfg, 5)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    if not configs:
        pytest.skip("no configs/*.yaml yet")
    shared = Path(__file__).resolve().parents[2] / "shared" / "models"
    for p in configs:
        if not shared.is_dir() and "shared/models" in p.read_text():
            continue  # points into ../shared/models, absent here
        load_config(p)
