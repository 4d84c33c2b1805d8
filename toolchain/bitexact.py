"""Is the numpy executor bit-exact with the device's kernels? Compare on random int8 inputs.

The reference is the tflite-micro interpreter (`--against tflm`: TFLM's reference kernels, which
CMSIS-NN and ESP-NN reproduce bit for bit in their default double-rounding builds), or the
emitted C kernels on an emulated board (`--against qemu`, toolchain.emit.qemu).
On a mismatch the first differing op is found by comparing every intermediate tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from toolchain import execute
from toolchain.emit.qemu import QemuOracle
from toolchain.errors import ModelError, QassureError
from toolchain.oracle import TflmOracle
from toolchain.targets import Target
from toolchain.tflite import ir, prepare, reader

Against = Literal["tflm", "qemu"]


@dataclass(frozen=True)
class FirstDifference:
    sample: int  # index into the generated inputs
    op_index: int
    opcode: str
    tensor: int  # output tensor index of that op
    max_lsb: int  # largest |executor - reference| on that tensor, in output LSBs


@dataclass(frozen=True)
class BitexactReport:
    model: str
    target: str
    rounding: str
    against: str
    samples: int
    exact: int  # samples whose every output matches bit for bit
    max_output_lsb: int  # largest |executor - reference| over every output element
    first_difference: FirstDifference | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.exact == self.samples

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def require_int8(graph: ir.Graph) -> None:
    """check-bitexact and the certify engines need a fully integer graph."""
    if not graph.is_integer or not any(t.dtype == "int8" for t in graph.tensors if not t.is_const):
        raise ModelError("is a float model; this needs a full-int8 model (e.g. model_int8.tflite "
                         "from `qassure quantize`)", graph.path)


def random_inputs(graph: ir.Graph, samples: int, seed: int) -> np.ndarray:
    """`samples` inputs: all -128 and all 127 first (saturation), then uniform random ones.

    Float-input graphs (int8 inside, QUANTIZE first) get floats spanning the int8 range of
    the input's quantization, with a margin so that clamping is exercised."""
    rng = np.random.default_rng(seed)
    t = graph.input
    shape = (samples, *t.shape)
    lo: float
    hi: float
    x: np.ndarray
    if t.dtype == "int8":
        x = rng.integers(-128, 128, size=shape, dtype=np.int64)
        lo, hi = -128, 127
    else:
        q = graph.tensor(graph.operators[0].outputs[0]).quant if graph.operators else None
        scale, zp = q.scalar() if q is not None else (1.0 / 128, 0)
        lo, hi = scale * (-128 - zp) * 1.05, scale * (127 - zp) * 1.05
        x = rng.uniform(lo, hi, size=shape)
    if samples >= 1:
        x[0] = lo
    if samples >= 2:
        x[1] = hi
    return x.astype(t.dtype)


def _reference(path: Path, against: Against, target: Target) -> TflmOracle | QemuOracle:
    if against == "tflm":
        return TflmOracle(path)
    return QemuOracle(path, target)


def _lsb(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        return -1
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)), initial=0))


def check_bitexact(path: Path | str, target: Target, samples: int = 100, seed: int = 0,
                   against: Against = "tflm", inputs: np.ndarray | None = None,
                   prepared: prepare.PreparedGraph | None = None) -> BitexactReport:
    """Run `samples` random inputs (or the given `inputs`) through the executor and the reference.
    `prepared`: the graph of `path` already prepared for `target.rounding` (then not read again)."""
    path = Path(path)
    graph = reader.read_model(path) if prepared is None else prepared.graph
    require_int8(graph)
    if samples < 1 and inputs is None:
        raise QassureError("--samples must be at least 1")
    pg = prepare.prepare(graph, target.rounding) if prepared is None else prepared
    xs = (random_inputs(graph, samples, seed) if inputs is None
          else np.asarray(inputs, dtype=graph.input.dtype))
    try:
        run = execute.run(pg, xs, keep_intermediates=True)
    except ArithmeticError as exc:  # e.g. an input on which TFLM itself would abort: never hand it over
        raise ModelError(f"the device kernels abort on this model: {exc}", path) from None
    ref = _reference(path, against, target)
    notes = []
    if target.rounding == "single" and against == "tflm":
        notes.append("target uses single rounding; tflite-micro's Python interpreter uses double "
                     "rounding, so 1-LSB differences are expected")
    exact, worst, first = 0, 0, None
    batched = ref.run(xs) if against == "qemu" else None  # the emulated board: one boot for the whole batch
    if batched is not None and hasattr(ref, "describe"):
        notes.append(ref.describe())
    for i, x in enumerate(xs):
        got = ref.run_one(x) if batched is None else tuple(o[i] for o in batched)
        diffs = [_lsb(ours[i], theirs) for ours, theirs in zip(run.outputs, got, strict=True)]
        if all(d == 0 for d in diffs):
            exact += 1
            continue
        worst = max(worst, *[d for d in diffs if d >= 0]) if any(d >= 0 for d in diffs) else worst
        if first is None and run.tensors is not None and hasattr(ref, "tensor"):
            first = _first_difference(graph, run.tensors, ref, i)
    return BitexactReport(graph.name, target.name, target.rounding, against, len(xs), exact, worst, first,
                          tuple(notes))


def _first_difference(graph: ir.Graph, values: dict[int, np.ndarray], ref,
                      sample: int) -> FirstDifference | None:
    """The first op (in execution order) whose output differs on `sample` (the reference just ran it)."""
    for op in graph.operators:
        t = op.outputs[0]
        theirs = ref.tensor(t)
        ours = values[t][sample]
        if ours.size != theirs.size:
            continue
        d = _lsb(ours.reshape(-1), theirs.reshape(-1))
        if d != 0:
            return FirstDifference(sample, op.index, op.opcode, t, d)
    return None


def format_report(r: BitexactReport) -> list[str]:
    """Human lines; the last one is always `bit-exact: K/N`."""
    lines = [f"model {r.model}, target {r.target} ({r.rounding} rounding), reference {r.against}, "
             f"{r.samples} inputs"]
    lines += [f"note: {n}" for n in r.notes]
    if not r.ok:
        lines.append(f"max output difference: {r.max_output_lsb} LSB")
        f = r.first_difference
        if f is not None:
            lines.append(f"first differing op: op #{f.op_index} {f.opcode} (tensor {f.tensor}, "
                         f"input #{f.sample}, {f.max_lsb} LSB)")
    lines.append(f"bit-exact: {r.exact}/{r.samples}")
    return lines
