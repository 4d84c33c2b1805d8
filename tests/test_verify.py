"""verify-certificate: integrity of every file, witness replay, sampling check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli.main import app
from toolchain.emit import artifact

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    from test_artifact import _gate

    tmp = tmp_path_factory.mktemp("ver")
    res = _gate(tmp, tmp / "build")
    assert res.exit_code == 0
    return res.artifact_dir


def _copy(art: Path, tmp: Path) -> Path:
    dst = tmp / "a"
    shutil.copytree(art, dst)
    return dst


def test_intact_artifact_verifies(art):
    res = CliRunner().invoke(app, ["verify-certificate", str(art), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] and not doc["problems"]
    assert any("witness" in c for c in doc["checked"]) and any("sampling" in c for c in doc["checked"])


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_float.tflite", "model_data.c", "model_data.h",
                                  "report.md", "report.html", "junit.xml", "bounds.png", "sampled_errors.npy",
                                  "certificate.json"])
def test_one_changed_byte_fails_naming_the_file(art, tmp_path, name):
    d = _copy(art, tmp_path)
    data = bytearray((d / name).read_bytes())
    i = len(data) // 2
    data[i] = (data[i] + 1) % 256 if name != "certificate.json" else data[i]
    if name == "certificate.json":  # change one digit of the bound: still valid JSON
        text = data.decode()
        k = text.index('"bound": ') + len('"bound": ')
        digit = next(j for j in range(k, len(text)) if text[j].isdigit() and text[j] != "0")
        data = bytearray((text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:]).encode())
    (d / name).write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["verify-certificate", str(d)])
    assert res.exit_code == 1
    assert f"FAIL  {name}" in res.stdout


def test_missing_and_extra_files_fail(art, tmp_path):
    d = _copy(art, tmp_path)
    (d / "report.html").unlink()
    (d / "notes.txt").write_text("hi")
    res = CliRunner().invoke(app, ["verify-certificate", str(d)])
    assert res.exit_code == 1
    assert "report.html: missing" in res.stdout and "notes.txt: not listed" in res.stdout


def test_timings_are_not_hashed(art, tmp_path):
    d = _copy(art, tmp_path)
    (d / "timings.json").write_text("{}\n")
    assert CliRunner().invoke(app, ["verify-certificate", str(d)]).exit_code == 0


def test_resealed_lie_about_the_witness_is_caught(art, tmp_path):
    """Someone edits the witness error and re-seals: hashes hold, but the replay does not."""
    d = _copy(art, tmp_path)
    doc = json.loads((d / "certificate.json").read_text())
    doc["regions"][0]["witness"]["error"] *= 0.5
    (d / "certificate.json").write_text(artifact.seal(doc))
    res = CliRunner().invoke(app, ["verify-certificate", str(d)])
    assert res.exit_code == 1 and "witness of region 0" in res.stdout


def test_resealed_too_small_bound_is_a_soundness_violation(art, tmp_path):
    d = _copy(art, tmp_path)
    doc = json.loads((d / "certificate.json").read_text())
    for o in doc["regions"][0]["outputs"]:
        o["upper"] = 1e-9
    (d / "certificate.json").write_text(artifact.seal(doc))
    assert CliRunner().invoke(app, ["verify-certificate", str(d)]).exit_code == 3


def test_not_a_directory_is_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["verify-certificate", str(tmp_path / "nope")])
    assert res.exit_code == 2
