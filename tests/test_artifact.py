"""The artifact directory: contents, C array, sealed certificate.json, JUnit, report, reproducibility."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from toolchain.certify import certifier
from toolchain.emit import artifact, report
from toolchain.gate.run import gate_summary_lines, run_gate

pytestmark = pytest.mark.tf


def _gate(tmp: Path, out: Path):
    from test_gate import fake_engine, write_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(certifier, "certify", fake_engine())
        return run_gate(write_config(tmp), "cortex-m4", out_root=out)


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("art")
    res = _gate(tmp, tmp / "build")
    assert res.exit_code == 0, gate_summary_lines(res)
    return res.artifact_dir


def test_same_inputs_same_bytes(art, tmp_path):
    again = _gate(tmp_path, tmp_path / "build").artifact_dir
    files = sorted(p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    differ = [f for f in files if (art / f).read_bytes() != (again / f).read_bytes()]
    assert differ in ([], ["timings.json"])  # timings.json is the only unhashed, time-dependent file


def test_certificate_json_is_sealed_and_complete(art):
    text = (art / "certificate.json").read_text()
    assert artifact.check_seal(text) is None
    doc = json.loads(text)
    assert doc["schema"] == "qassure.certificate/2" and doc["verdict"] == "pass"
    assert "seconds" not in doc and all("seconds" not in r for r in doc["regions"])
    hashed = set(doc["hashes"])
    on_disk = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()} - {"certificate.json",
                                                                                       "timings.json"}
    assert hashed == on_disk
    assert doc["config"]["name"] == "pump" and doc["config"]["contents"]["budget"]["max_abs_error"] == 50.0
    assert doc["target_profile"]["rounding"] == "double" and "path" not in doc["target_profile"]
    assert {"qassure", "numpy", "python"} <= set(doc["versions"])
    assert doc["gate"]["deployable"] is True
    assert str(art.parent.parent) not in text  # no absolute paths in hashed content
    assert artifact.check_seal(text.replace('"pass"', '"PASS"', 1)) is not None


def test_c_array_holds_the_model_bytes(art):
    model = (art / "model_int8.tflite").read_bytes()
    src = (art / "model_data.c").read_text()
    hdr = (art / "model_data.h").read_text()
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", src.split("= {", 1)[1]))
    assert data == model
    assert "aligned(16)" in src and f"_len = {len(model)}u" in src
    assert "extern const unsigned char qassure_model_data[];" in hdr and artifact.sha256_bytes(model) in hdr


def test_junit_lists_every_check(art):
    root = ET.parse(art / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert {c.get("name") for c in cases} >= {"quantize", "bitexact", "certify", "memory-flash", "memory-ram"}
    assert root.get("failures") == "0"


def test_report_has_plots_metrics_and_saturations(art):
    md = (art / "report.md").read_text()
    for needle in ("Per-output bounds", "bounds.png", "errors.png", "RMSE", "cosine similarity",
                   "L2 relative error", "MAE", "Saturating layers", "op #0 FULLY_CONNECTED"):
        assert needle in md, needle
    html = (art / "report.html").read_text()
    assert '<img src="bounds.png"' in html and "<table>" in html
    assert (art / "bounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_from_a_minimal_document(tmp_path):
    doc = {"verdict": "unknown", "bound": 0.3, "outputs": [{"index": 0, "lower": 0.1, "upper": 0.3}],
           "budget": [0.2], "target": "cortex-m4", "gate": {"verdict": "fail", "checks": [
               {"name": "certify", "status": "fail", "message": "unknown"}]}}
    files = report.write(tmp_path, doc, np.array([[0.05], [0.1]]))
    assert set(files) == {"bounds.png", "errors.png", "report.md", "report.html"}
    md = (tmp_path / "report.md").read_text()
    assert "not proven" in md and "NOT deployable" in md


def test_failed_write_leaves_no_temp_dir(tmp_path, monkeypatch):
    from toolchain.emit import artifact as A

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write", boom)
    with pytest.raises(RuntimeError):
        _gate(tmp_path, tmp_path / "build")
    assert not [p for p in (tmp_path / "build" / "pump").iterdir()]
    assert A.destination(tmp_path, "c", "t", False).name == "t.failed"
