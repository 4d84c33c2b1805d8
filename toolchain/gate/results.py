"""What the gate returns: one `Check` per step and the `GateResult` (exit code, certificate, where it wrote).

Exit codes are shared with `qassure certify`: 0 every check passed (an artifact was written), 1 some
check failed (nothing deployable is written, only a report saying why), 2 bad input (raised as
QassureError, never returned here), 3 soundness violation (an observed error above a bound qassure
just certified: a bug in qassure; nothing is emitted but the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.certificate import Certificate
from toolchain.errors import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_PASS, EXIT_SOUNDNESS


@dataclass(frozen=True)
class Check:
    """One step of the gate: its verdict and the numbers behind it."""

    name: str  # "quantize", "bitexact", "certify", "decision", "sampled-errors", "memory-flash", ...
    passed: bool | None  # None: skipped (does not fail the gate)
    message: str  # one line for a person
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "skipped" if self.passed is None else ("pass" if self.passed else "fail")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "details": self.details}


@dataclass
class GateResult:
    config_name: str
    target: str
    exit_code: int
    checks: list[Check]
    certificate: Certificate | None
    artifact_dir: Path | None  # build/<config>/<target>/ when the gate passed
    report_dir: Path | None  # the directory holding the report (artifact or <target>.failed)
    metrics: dict[str, float] = field(default_factory=dict)  # empirical, on the representative data
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (kept out of hashed files)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "pass", EXIT_FAIL: "fail", EXIT_SOUNDNESS: "soundness-violation",
                EXIT_BAD_INPUT: "bad-input"}.get(self.exit_code, "fail")

    def to_dict(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "config": self.config_name,
            "target": self.target,
            "bound": None if cert is None else cert.bound,
            "lower": None if cert is None else max((o.lower for o in cert.outputs), default=0.0),
            "certificate_verdict": None if cert is None else cert.verdict,
            "budget": None if cert is None else cert.budget,
            "checks": [c.as_dict() for c in self.checks],
            "metrics": self.metrics,
            "artifact_dir": None if self.artifact_dir is None else str(self.artifact_dir),
            "report_dir": None if self.report_dir is None else str(self.report_dir),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
