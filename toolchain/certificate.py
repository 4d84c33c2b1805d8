"""The certificate: what qassure guarantees about one float/int8 model pair over a region.

Per output k: a certified upper bound U_k >= max |f_k(x) - f_q,k(x)| over the region, a witnessed
lower bound L_k (an input that really reaches that error through the exact executor), and the
witness itself. Serialised as JSON with schema "qassure.certificate/2".

A certificate is a function of (config, models, target, qassure version, settings), never of the
machine: it records the work budget that bounded the search and the work done, never seconds (the
gate's timings.json holds those). When the wall-clock safety net stops a search before its work
budget is spent, the verdict is `unknown` and `stopped` says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEMA = "qassure.certificate/2"

VERDICT_PASS = "pass"
VERDICT_REFUTED = "refuted"
VERDICT_UNKNOWN = "unknown"


@dataclass(frozen=True)
class OutputBound:
    index: int
    lower: float  # witnessed: some input in the region reaches this error
    upper: float  # certified: no input in the region exceeds it


@dataclass(frozen=True)
class Witness:
    input: list[float]  # flattened float input (the sensor values)
    error: float  # max_k |f_k - f_q,k| at that input, replayed through both models
    output_index: int


@dataclass(frozen=True)
class Saturation:
    """A tensor whose float values can leave the int8 range the device can represent."""

    op: str  # e.g. "op #3 FULLY_CONNECTED"
    tensor: str
    channel: int  # flat element index within the tensor
    float_low: float  # float pre-activation range over the region (certified bounds)
    float_high: float
    int8_low: float  # representable real range of the int8 output (after fused activation)
    int8_high: float
    witnessed: bool  # True when a sampled input really exceeded the range


@dataclass(frozen=True)
class RegionCertificate:
    """The result on one region (a box, or one L-inf ball of an `around:` region)."""

    region: dict  # {"box": {"low": [...], "high": [...]}}
    outputs: list[OutputBound]
    witness: Witness
    bound: float  # max_k upper
    lower: float  # max_k lower
    method: str
    stopped: str  # why the engine stopped: decided, work budget spent, stalled, time limit, ...
    work: dict[str, int] = field(default_factory=dict)  # boxes bounded, cell enumerations, MILP solves/nodes
    saturations: list[Saturation] = field(default_factory=list)
    decision: dict | None = None  # {"kind": "top1", "certified": bool, ...}


@dataclass(frozen=True)
class Certificate:
    verdict: str
    bound: float
    outputs: list[OutputBound]  # per output: max over regions
    witness: Witness
    region: dict | list[dict]
    target: str
    method: str
    budget: list[float]  # per output
    certified_tensor: str  # which tensor the bound is about (e.g. logits before SOFTMAX)
    regions: list[RegionCertificate]
    work_budget: dict = field(default_factory=dict)  # the settings that bound the search (per region)
    hashes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_for(outputs: list[OutputBound], budget: list[float], timed_out: bool = False) -> str:
    """pass if every U_k <= budget_k; refuted if some witnessed L_k > budget_k; else unknown. A
    search the wall clock stopped is unknown whatever it reached (another machine would have
    reached something else)."""
    if timed_out:
        return VERDICT_UNKNOWN
    if all(o.upper <= b for o, b in zip(outputs, budget, strict=True)):
        return VERDICT_PASS
    if any(o.lower > b for o, b in zip(outputs, budget, strict=True)):
        return VERDICT_REFUTED
    return VERDICT_UNKNOWN
