"""`verify-certificate DIR`: does an artifact directory still prove what it claims?

Three independent checks, all of which must hold:
  1. integrity: certificate.json's own digest matches its content and bytes; every file listed in its
     `hashes` exists with that sha256; no other file is present (timings.json excepted: not hashed);
  2. witness replay: each region's witness input, run through the float reference and the bit-exact
     executor (with the target's rounding; `toolchain.pair`: the functions the certificate is about),
     reaches the recorded error, and that error is within the region's certified bound;
  3. sampling: a quick random sample of each region shows no error above the certified upper bound
     of any output (an error above it is a soundness violation, exit 3).
Exit 0 only when all hold and the certificate's gate verdict was pass; 1 otherwise.
The certificate is read as the JSON document it is (no Certificate object is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.emit.artifact import (
    CERTIFICATE_NAME,
    FLOAT_TFLITE_NAME,
    INT8_TFLITE_NAME,
    TIMINGS_NAME,
    check_seal,
)
from toolchain.errors import EXIT_FAIL, EXIT_PASS, EXIT_SOUNDNESS, QassureError
from toolchain.pair import load_pair

VERIFY_SAMPLES = 200  # per region


@dataclass
class VerifyResult:
    directory: Path
    problems: list[str] = field(default_factory=list)  # each names the file or the check
    soundness: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what held

    @property
    def exit_code(self) -> int:
        if self.soundness:
            return EXIT_SOUNDNESS
        return EXIT_FAIL if self.problems else EXIT_PASS

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "ok": self.exit_code == EXIT_PASS,
                "exit_code": self.exit_code, "problems": self.problems,
                "soundness_violations": self.soundness, "checked": self.checked}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(directory: Path, res: VerifyResult) -> dict[str, Any] | None:
    cert_path = directory / CERTIFICATE_NAME
    if not cert_path.is_file():
        res.problems.append(f"{CERTIFICATE_NAME}: missing")
        return None
    text = cert_path.read_text(encoding="utf-8", errors="replace")
    bad = check_seal(text)
    if bad is not None:
        res.problems.append(f"{CERTIFICATE_NAME}: {bad}")
        try:
            return json.loads(text)
        except ValueError:
            return None
    doc = json.loads(text)
    hashes: dict[str, str] = doc.get("hashes") or {}
    before = len(res.problems)
    for name, want in sorted(hashes.items()):
        p = directory / name
        if not p.is_file():
            res.problems.append(f"{name}: missing")
        elif _sha(p) != want:
            res.problems.append(f"{name}: sha256 differs from certificate.json (the file was changed)")
    listed = set(hashes) | {CERTIFICATE_NAME, TIMINGS_NAME}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in listed:
            res.problems.append(f"{rel}: not listed in certificate.json")
    if len(res.problems) == before:
        res.checked.append(f"integrity: certificate.json sealed, {len(hashes)} file hashes match")
    return doc


def _box(region: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    box = region.get("box", region)
    return np.asarray(box["low"], dtype=np.float64), np.asarray(box["high"], dtype=np.float64)


def verify(directory: Path | str, samples: int = VERIFY_SAMPLES, seed: int = 12345) -> VerifyResult:
    """Run the three checks on an artifact directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QassureError("not a directory", directory)
    res = VerifyResult(directory)
    doc = _integrity(directory, res)
    if doc is None:
        return res
    gate = doc.get("gate") or {}
    if gate and gate.get("verdict") != "pass":
        res.problems.append(f"{CERTIFICATE_NAME}: the gate did not pass ({gate.get('verdict')}): "
                            "not deployable")
    if doc.get("verdict") != "pass":
        res.problems.append(f"{CERTIFICATE_NAME}: certificate verdict is {doc.get('verdict')!r}, not 'pass'")
    fpath, ipath = directory / FLOAT_TFLITE_NAME, directory / INT8_TFLITE_NAME
    if not (fpath.is_file() and ipath.is_file()):
        res.problems.append(f"{FLOAT_TFLITE_NAME} / {INT8_TFLITE_NAME}: needed to replay the witness, "
                            "missing")
        return res
    rounding = (doc.get("target_profile") or {}).get("rounding")
    if rounding is None:
        from toolchain.targets import load_target

        rounding = load_target(doc["target"]).rounding
    interface = ((doc.get("config") or {}).get("contents") or {}).get("input_interface", "float")
    try:
        pair = load_pair(fpath, ipath, rounding, interface)
        certified = pair.net.certified_tensor
    except QassureError as exc:
        res.problems.append(f"model files: {exc}")
        return res
    if doc.get("certified_tensor") not in (None, certified):
        res.problems.append(f"{CERTIFICATE_NAME}: certified tensor {doc['certified_tensor']!r} is not the "
                            f"one the model pair bounds ({certified!r})")
        return res
    regions = doc.get("regions") or []

    # 2. witness replay
    for i, r in enumerate(regions):
        w = r["witness"]
        got = float(np.abs(pair.errors(np.asarray(w["input"], dtype=np.float64)[None])).max())
        tol = 1e-5 + 1e-4 * abs(float(w["error"]))
        if abs(got - float(w["error"])) > tol:
            res.problems.append(f"witness of region {i}: replayed error {got:.9g} differs from the recorded "
                                f"{w['error']:.9g}")
        elif got > float(r["bound"]) + 1e-6 * (1 + abs(float(r["bound"]))):
            res.soundness.append(f"witness of region {i}: error {got:.9g} above the certified bound "
                                 f"{r['bound']:.9g}")
        else:
            res.checked.append(f"witness of region {i}: replayed error {got:.6g} (recorded {w['error']:.6g})")

    # 3. sampling
    rng = np.random.default_rng(seed)
    worst = 0.0
    for i, r in enumerate(regions):
        lo, hi = _box(r["region"])
        xs = pair.on_input_grid(lo + rng.uniform(0.0, 1.0, (max(1, samples), lo.size)) * (hi - lo), lo, hi)
        err = np.abs(pair.errors(xs))
        upper = np.array([o["upper"] for o in r["outputs"]], dtype=np.float64)
        over = err - (upper + 1e-6 * (1 + np.abs(upper)))
        if np.any(over > 0):
            j, k = np.unravel_index(int(np.argmax(over)), over.shape)
            res.soundness.append(f"sampling region {i}: error {err[j, k]:.9g} on output {k} above the "
                                 f"certified upper bound {upper[k]:.9g}")
        worst = max(worst, float(err.max(initial=0.0)))
    if regions and not res.soundness:
        res.checked.append(f"sampling: {samples} inputs per region, max error {worst:.6g} within every bound")
    return res
