"""The pre-flash gate (`qassure run`): checks, exit codes, what is (not) emitted.

The certify engines are replaced by `fake_engine` (a stand-in that samples the exact executor and
scales the worst error up), so these tests exercise the gate's orchestration and stay fast; the
engines have their own soundness tests. Quantizing the pump classifier needs TensorFlow (~4 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from toolchain.certificate import (
    Certificate,
    OutputBound,
    RegionCertificate,
    Saturation,
    Witness,
    verdict_for,
)
from toolchain.certify import certifier, falsify
from toolchain.cli.main import app
from toolchain.gate.checks import sample_boxes

REPO = Path(__file__).resolve().parents[1]
PUMP_MODEL = REPO / "configs" / "models" / "pump_classifier.keras"


def fake_engine(margin: float = 2.0, extra: float = 0.2):
    """A stand-in for toolchain.certify.certifier.certify: every U_k = margin · (sampled max over outputs)
    + extra."""

    def certify(net, pg, boxes, *, budget, target, method="auto", settings=None, workers=1, scheduler=None,
                decision=None, progress=None):
        regions = []
        for b in boxes:
            xs = sample_boxes([(b.low, b.high)], 400, seed=0)
            e = np.abs(falsify.errors(net, pg, xs))
            j = int(np.argmax(e.max(axis=1)))
            lower = e.max(axis=0)
            upper = float(lower.max() * margin + extra)
            outs = [OutputBound(k, float(lower[k]), upper) for k in range(e.shape[1])]
            w = Witness([float(v) for v in xs[j]], float(e[j].max()), int(np.argmax(e[j])))
            sat = Saturation("op #0 FULLY_CONNECTED", "dense", 3, -2.0, 9.0, -5.0, 5.0, True)
            box = {"box": {"low": b.low.tolist(), "high": b.high.tolist()}}
            regions.append(RegionCertificate(box, outs, w, max(o.upper for o in outs),
                                             max(o.lower for o in outs), "fake", "single pass", {"boxes": 1},
                                             saturations=[sat]))
        k = len(regions[0].outputs)
        outs = [OutputBound(i, max(r.outputs[i].lower for r in regions),
                            max(r.outputs[i].upper for r in regions)) for i in range(k)]
        best = max(regions, key=lambda r: r.witness.error)
        region = regions[0].region if len(regions) == 1 else [r.region for r in regions]
        return Certificate(verdict_for(outs, budget), max(o.upper for o in outs), outs, best.witness, region,
                           target, "fake", list(budget), net.certified_tensor, regions)

    return certify


def write_config(tmp: Path, name: str = "pump", budget: float = 50.0, **extra) -> Path:
    doc = {"name": name, "model": str(PUMP_MODEL), "region": {"box": {"low": -1.0, "high": 1.0}},
           "budget": {"max_abs_error": budget}, "representative_data": 200, "samples": 300, "time_limit": 5}
    doc.update(extra)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(certifier, "certify", fake_engine())


def run_cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr if hasattr(res, "stderr") else ""


@pytest.mark.tf
def test_gate_passes_and_writes_the_artifact(tmp_path, fake):
    cfg = write_config(tmp_path)
    code, out, _ = run_cli("run", str(cfg), "--target", "cortex-m4", "--out", str(tmp_path / "build"),
                           "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["verdict"] == "pass" and doc["exit_code"] == 0
    names = [c["name"] for c in doc["checks"]]
    assert names[:3] == ["quantize", "bitexact", "certify"]
    assert "memory-flash" in names and "memory-ram" in names
    assert all(c["status"] == "pass" for c in doc["checks"])
    art = tmp_path / "build" / "pump" / "cortex-m4"
    assert Path(doc["artifact_dir"]) == art
    for f in ("model_int8.tflite", "model_float.tflite", "model_data.h", "model_data.c", "certificate.json",
              "report.md", "report.html", "bounds.png", "errors.png", "junit.xml", "timings.json"):
        assert (art / f).is_file(), f
    assert set(doc["metrics"]) == {"max_abs_error", "rmse", "mae", "l2_relative_error", "cosine_similarity"}
    assert not (tmp_path / "build" / "pump" / "cortex-m4.failed").exists()
    leftovers = [p for p in (tmp_path / "build" / "pump").iterdir() if p.name.startswith(".")]
    assert not leftovers  # no temp dirs left


@pytest.mark.tf
def test_gate_over_budget_fails_without_deployable_files(tmp_path, fake):
    build = tmp_path / "build"
    assert run_cli("run", str(write_config(tmp_path)), "--target", "cortex-m4", "--out", str(build))[0] == 0
    cfg = write_config(tmp_path, budget=1e-4)  # same name: the earlier passing artifact must disappear
    code, out, _ = run_cli("run", str(cfg), "--target", "cortex-m4", "--out", str(build))
    assert code == 1
    assert "gate FAIL" in out and "certify" in out
    assert not (build / "pump" / "cortex-m4").exists()
    failed = build / "pump" / "cortex-m4.failed"
    assert not list(failed.glob("*.tflite")) and not (failed / "model_data.c").exists()
    report = (failed / "report.md").read_text()
    assert "NOT deployable" in report and "Why the gate failed" in report and "## Witness" in report
    junit = (failed / "junit.xml").read_text()
    assert '<testcase classname="qassure.gate.pump.cortex-m4" name="certify">' in junit
    assert "<failure" in junit


@pytest.mark.tf
def test_memory_over_budget_fails_with_numbers(tmp_path, fake):
    tiny = yaml.safe_load((REPO / "targets" / "cortex-m4.yaml").read_text())
    tiny.update(name="tiny-mcu", flash_bytes=1000, ram_bytes=16)
    tpath = tmp_path / "tiny-mcu.yaml"
    tpath.write_text(yaml.safe_dump(tiny))
    code, out, _ = run_cli("run", str(write_config(tmp_path)), "--target", str(tpath), "--out",
                           str(tmp_path / "b"), "--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["memory-flash"]["status"] == "fail" and "of 1,000 B" in checks["memory-flash"]["message"]
    assert checks["memory-ram"]["status"] == "fail" and "of 16 B RAM" in checks["memory-ram"]["message"]


@pytest.mark.tf
def test_soundness_violation_exits_3_and_emits_nothing_deployable(tmp_path, monkeypatch):
    monkeypatch.setattr(certifier, "certify", fake_engine(margin=0.1, extra=0.0))
    build = tmp_path / "build"
    code, out, _ = run_cli("run", str(write_config(tmp_path)), "--target", "cortex-m4", "--out", str(build))
    assert code == 3
    assert "SOUNDNESS VIOLATION" in out
    assert not (build / "pump" / "cortex-m4").exists()


def test_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: nowhere.keras\nregion: {box: {low: 0, high: 1}}\nbudget: {max_abs_error: 1}\n"
                   "foo: 1\n")
    res = CliRunner().invoke(app, ["run", str(bad), "--target", "cortex-m4"])
    assert res.exit_code == 2
    assert "foo" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["run", str(REPO / "configs" / "default.yaml"), "--target", "no-such-mcu"])
    assert res.exit_code == 2 and "unknown target" in res.stderr


@pytest.mark.tf
def test_unsupported_op_after_conversion_names_the_keras_model(tmp_path):
    """A Keras model whose conversion holds an op the reader does not know: one line naming the user's
    .keras file (not the converter's work directory) and the op."""
    from toolchain.quantize import _keras

    keras = _keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="hard_silu"),
                              keras.layers.Dense(2)])
    model.save(tmp_path / "swish.keras")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).uniform(-1, 1, (32, 4)).astype(np.float32))
    cfg = tmp_path / "swish.yaml"
    cfg.write_text("model: swish.keras\nregion: {box: {low: -1, high: 1}}\nbudget: {max_abs_error: 1}\n"
                   "representative_data: cal.npy\n")
    res = CliRunner().invoke(app, ["certify", str(cfg), "--target", "cortex-m4"])
    assert res.exit_code == 2
    line = res.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "swish.keras") in line and "HARD_SWISH" in line and "qassure-" not in line


def test_certify_command_rejects_unknown_method():
    res = CliRunner().invoke(app, ["certify", str(REPO / "configs" / "default.yaml"), "--target", "cortex-m4",
                                   "--method", "magic"])
    assert res.exit_code == 2 and "--method" in res.stderr


@pytest.mark.tf
def test_certify_command_writes_its_three_files(tmp_path, fake):
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["certify", str(write_config(tmp_path)), "--target", "cortex-m4", "--out",
                                   str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "qassure.certificate/2" and doc["verdict"] == "pass"
    assert {"bound", "outputs", "witness", "region", "target", "method", "hashes"} <= set(doc)
    assert sorted(p.name for p in out.iterdir()) == ["certificate.json", "model_float.tflite",
                                                     "model_int8.tflite"]
    assert json.loads((out / "certificate.json").read_text())["hashes"]["model_int8.tflite"] == doc["hashes"][
        "model_int8.tflite"]


@pytest.mark.parametrize("command", ["certify", "run"])
def test_work_budget_and_safety_net_reach_the_engines(tmp_path, monkeypatch, zoo, command):
    """max_boxes (config, or --max-boxes) -> Settings.max_boxes; branching (config, or --branching) ->
    Settings.branching; time_limit -> the safety net; samples -> the falsifier's samples."""
    seen = []
    engine = fake_engine()

    def recording(net, pg, boxes, *, settings, **kw):
        seen.append(settings)
        return engine(net, pg, boxes, settings=settings, **kw)

    monkeypatch.setattr(certifier, "certify", recording)
    m = zoo["mlp_fused"]
    cfg = tmp_path / "budget.yaml"
    cfg.write_text(yaml.safe_dump({"float_tflite": str(m.float_tflite), "int8_tflite": str(m.int8_tflite),
                                   "region": {"box": {"low": -1.0, "high": 1.0}},
                                   "budget": {"max_abs_error": 100.0}, "representative_data": 8,
                                   "samples": 123, "time_limit": 7, "max_boxes": 11, "branching": "neuron"}))
    base = [command, str(cfg), "--target", "cortex-m4", "--out", str(tmp_path / "o")]
    assert run_cli(*base)[0] == 0
    assert run_cli(*base, "--max-boxes", "3", "--time-limit", "2.5", "--branching", "auto")[0] == 0
    assert [(s.max_boxes, s.time_limit, s.falsify_samples, s.branching) for s in seen] == [
        (11, 7.0, 123, "neuron"), (3, 2.5, 123, "auto")]
    res = CliRunner().invoke(app, [*base, "--max-boxes", "0"])
    assert res.exit_code == 2 and "--max-boxes" in res.stderr
    res = CliRunner().invoke(app, [*base, "--branching", "phases"])
    assert res.exit_code == 2 and "--branching 'phases': expected one of input, neuron, auto" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    cfg.write_text(cfg.read_text().replace("branching: neuron", "branching: phases"))
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "branching" in res.stderr and len(res.stderr.strip().splitlines()) == 1


SHIPPED_CONFIGS = ("default", "acasxu", "ad01", "resnet8", "resnet8_4lsb", "dscnn")


def test_shipped_configs_load():
    from toolchain.config import load_config

    # Every shipped config is listed (a new one must be added here, and so is covered).
    assert sorted(p.stem for p in (REPO / "configs").glob("*.yaml")) == sorted(SHIPPED_CONFIGS)
    shared = (REPO.parent / "shared" / "models").is_dir()
    for name in SHIPPED_CONFIGS:
        path = REPO / "configs" / f"{name}.yaml"
        if not shared and "shared/models" in path.read_text(encoding="utf-8"):
            continue  # these configs point into ../shared/models, absent outside CI and dev machines
        cfg = load_config(path)
        # The work budget decides the search; the time limit is a safety net above it, kept to minutes.
        assert cfg.max_boxes >= 1 and 0 < cfg.time_limit <= 300


@pytest.mark.slow
@pytest.mark.tf
def test_default_config_end_to_end_with_the_real_engines(tmp_path):
    """`make certify TARGET=cortex-m4`: passes on its work budget (the search decides the budget before
    it spends max_boxes; the time limit never bites), and the artifact verifies."""
    # The safety net pushed out of reach: on a loaded CI machine the verdict is the work budget's alone.
    code, out, _ = run_cli("run", str(REPO / "configs" / "default.yaml"), "--target", "cortex-m4", "--out",
                           str(tmp_path), "--json", "--time-limit", "1e9")
    doc = json.loads(out)
    assert code == 0, doc["checks"]
    assert doc["lower"] <= doc["bound"] <= doc["budget"][0]
    cert = json.loads((Path(doc["artifact_dir"]) / "certificate.json").read_text())
    assert all(r["stopped"] == "decided" for r in cert["regions"])
    res = CliRunner().invoke(app, ["verify-certificate", doc["artifact_dir"]])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
@pytest.mark.tf
def test_dscnn_config_end_to_end_with_the_real_engines(tmp_path):
    """The shipped DS-CNN example (no third-party model needed): the gate passes on its work budget, every
    ball is decided (the time limit never bites), the bound is at least the witnessed error, and the
    artifact verifies."""
    # The safety net pushed out of reach: on a loaded CI machine the verdict is the work budget's alone.
    code, out, _ = run_cli("run", str(REPO / "configs" / "dscnn.yaml"), "--target", "cortex-m4", "--out",
                           str(tmp_path), "--json", "--time-limit", "1e9")
    doc = json.loads(out)
    assert code == 0, doc["checks"]
    assert doc["lower"] <= doc["bound"] <= doc["budget"][0]
    cert = json.loads((Path(doc["artifact_dir"]) / "certificate.json").read_text())
    assert len(cert["regions"]) == 3 and all(r["stopped"] == "decided" for r in cert["regions"])
    res = CliRunner().invoke(app, ["verify-certificate", doc["artifact_dir"]])
    assert res.exit_code == 0, res.output
