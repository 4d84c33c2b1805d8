"""The pre-flash gate: config → quantize → bit-exact check → certify → memory check → emit.

`run_gate` is what `qassure run` (and `make certify`) calls. Each step becomes one named `Check`
in the returned `GateResult`; the exit code is shared with `qassure certify`:
0 every check passed (an artifact was written), 1 some check failed (the certificate is refuted or
unknown, the model does not fit, the executor is not bit-exact: nothing deployable is written, only
a report saying why), 2 bad input (raised as QassureError), 3 soundness violation (an observed
error above a bound qassure just certified: a bug in qassure; nothing is emitted but the report).

The float side is the float32 .tflite graph run by the desktop TFLite interpreter (a float graph,
where that interpreter is the reference); the int8 side is the bit-exact numpy executor prepared
with the target's rounding. `PairEvaluator` computes both on a batch of float inputs; verify uses
it to replay witnesses.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import execute
from toolchain.certificate import VERDICT_PASS, Certificate
from toolchain.config import BallsRegion, BoxRegion, Config, check_region, load_config, representative_samples
from toolchain.errors import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_PASS, EXIT_SOUNDNESS, ModelError, QassureError
from toolchain.errors import SoundnessViolation
from toolchain.ops.quantize import affine_quantize
from toolchain.targets import Target, load_target
from toolchain.tflite import ir, prepare, reader

Progress = Callable[[str], None]

BITEXACT_SAMPLES = 256  # inputs of the region run through executor and tflite-micro
FIRMWARE_VECTORS = 64  # of those, run through the emitted C on the target's emulated core
HISTOGRAM_SAMPLES = 1000  # sampled errors shown in the report (and checked against the bound)
FLOAT_TFLITE_NAME = "model_float.tflite"
INT8_TFLITE_NAME = "model_int8.tflite"


def _quiet(_: str) -> None:
    return None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- results


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
    def passed(self) -> bool:
        return self.exit_code == EXIT_PASS

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "pass", EXIT_FAIL: "fail", EXIT_SOUNDNESS: "soundness-violation",
                EXIT_BAD_INPUT: "bad-input"}.get(self.exit_code, "fail")

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

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
            "checks": [{"name": c.name, "status": c.status, "message": c.message, "details": c.details}
                       for c in self.checks],
            "metrics": self.metrics,
            "artifact_dir": None if self.artifact_dir is None else str(self.artifact_dir),
            "report_dir": None if self.report_dir is None else str(self.report_dir),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------- the model pair


class PairEvaluator:
    """f(x) (float graph) and f_q(x) (int8 graph, bit-exact) on the tensor the certificate is about."""

    def __init__(self, float_path: Path, int8_path: Path, rounding: str, certified_tensor: str | None = None):
        self.float_graph = reader.read_model(float_path)
        self.int8_graph = reader.read_model(int8_path)
        self.float_path, self.int8_path = Path(float_path), Path(int8_path)
        self.prepared = prepare.prepare(self.int8_graph, rounding)  # type: ignore[arg-type]
        self.int8_tensor, self.float_tensor = self._locate(certified_tensor)
        self._interp = None

    @property
    def input_size(self) -> int:
        return self.int8_graph.input.size

    @property
    def output_size(self) -> int:
        return self.int8_graph.tensor(self.int8_tensor).size

    def _locate(self, name: str | None) -> tuple[int, int]:
        """Tensor indices (int8 graph, float graph) of the certified tensor."""
        ig, fg = self.int8_graph, self.float_graph
        if not name or name in (ig.output.name, "output"):
            return ig.outputs[0], fg.outputs[0]
        hits = [t.index for t in ig.tensors if t.name == name]
        if not hits:
            raise ModelError(f"certified tensor {name!r} is not in the int8 graph", ig.path)
        t = hits[0]
        last_i, last_f = ig.operators[-1], fg.operators[-1]
        # The bound is on the logits before a final SOFTMAX: the input of the last op in both graphs.
        if last_i.opcode == last_f.opcode and last_i.inputs and t == last_i.inputs[0]:
            return t, last_f.inputs[0]
        same = [u.index for u in fg.tensors if u.name == name and not u.is_const]
        if same:
            return t, same[0]
        raise ModelError(f"cannot find the float counterpart of certified tensor {name!r}", fg.path)

    def quantize_input(self, xs: np.ndarray) -> np.ndarray:
        """Float sensor values → what the int8 graph's input receives (AffineQuantize)."""
        t = self.int8_graph.input
        xs = np.asarray(xs, dtype=np.float64).reshape(len(xs), *t.shape)
        if t.dtype != "int8":
            return xs.astype(np.float32)
        scale, zp = t.quant.scalar()  # type: ignore[union-attr]
        return affine_quantize(xs, scale, zp)

    def snap_to_grid(self, xs: np.ndarray) -> np.ndarray:
        """For `input_interface: int8`: the real values of the int8 codes of `xs`."""
        t = self.int8_graph.input
        if t.dtype != "int8" or t.quant is None:
            return xs
        scale, zp = t.quant.scalar()
        q = self.quantize_input(xs).reshape(len(xs), -1)
        return (np.float64(scale) * (q.astype(np.float64) - zp)).astype(np.float32)

    def int8(self, xs: np.ndarray) -> np.ndarray:
        """f_q on the certified tensor, dequantized, (B, k) float64."""
        q = self.quantize_input(xs)
        keep = self.int8_tensor not in self.int8_graph.outputs
        run = execute.run(self.prepared, q, keep_intermediates=keep)
        raw = run.tensors[self.int8_tensor] if keep else run.outputs[self.int8_graph.outputs.index(self.int8_tensor)]
        t = self.int8_graph.tensor(self.int8_tensor)
        raw = raw.reshape(len(q), -1)
        if t.dtype == "float32" or t.quant is None:
            return raw.astype(np.float64)
        scale, zp = t.quant.scalar()
        return np.float64(scale) * (raw.astype(np.float64) - zp)

    def float(self, xs: np.ndarray) -> np.ndarray:
        """f on the certified tensor, (B, k) float64, by the float32 graph."""
        from ai_edge_litert.interpreter import Interpreter

        from toolchain.oracle import quiet_fds

        if self._interp is None:
            with quiet_fds():
                keep = self.float_tensor not in self.float_graph.outputs  # an inner tensor, e.g. logits
                self._interp = Interpreter(model_path=str(self.float_path), experimental_preserve_all_tensors=keep)
                self._interp.allocate_tensors()
        it = self._interp
        inp = it.get_input_details()[0]
        xs = np.asarray(xs, dtype=np.float32).reshape(len(xs), *inp["shape"][1:])
        out = []
        for x in xs:
            it.set_tensor(inp["index"], x[None])
            it.invoke()
            out.append(np.array(it.get_tensor(self.float_tensor), dtype=np.float64).reshape(-1))
        return np.stack(out) if out else np.zeros((0, self.output_size))

    def errors(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f, f_q, |f − f_q|), each (B, k)."""
        f, fq = self.float(xs), self.int8(xs)
        return f, fq, np.abs(f - fq)


def empirical_metrics(f: np.ndarray, fq: np.ndarray) -> dict[str, float]:
    """The numbers vendor validators print (over every output element of every sample)."""
    f, fq = np.asarray(f, np.float64).reshape(-1), np.asarray(fq, np.float64).reshape(-1)
    d = f - fq
    nf, nq = float(np.linalg.norm(f)), float(np.linalg.norm(fq))
    return {
        "max_abs_error": float(np.max(np.abs(d), initial=0.0)),
        "rmse": float(np.sqrt(np.mean(d * d))) if d.size else 0.0,
        "mae": float(np.mean(np.abs(d))) if d.size else 0.0,
        "l2_relative_error": float(np.linalg.norm(d) / nf) if nf > 0 else 0.0,
        "cosine_similarity": float(f @ fq / (nf * nq)) if nf > 0 and nq > 0 else 1.0,
    }


# --------------------------------------------------------------------------------------------- steps


def region_boxes(config: Config, input_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The region as (low, high) boxes: one box, or one per L-inf ball."""
    region = config.region
    if isinstance(region, BoxRegion):
        return [region.arrays(input_size)]
    assert isinstance(region, BallsRegion)
    return [(c - region.radius, c + region.radius) for c in region.centers()]


def sample_boxes(boxes: list[tuple[np.ndarray, np.ndarray]], count: int, seed: int) -> np.ndarray:
    """`count` inputs spread over the boxes (corners of the first box included)."""
    rng = np.random.default_rng(seed)
    which = np.arange(count) % len(boxes)
    lows = np.stack([boxes[i][0] for i in which])
    highs = np.stack([boxes[i][1] for i in which])
    xs = lows + rng.uniform(0.0, 1.0, lows.shape) * (highs - lows)
    if count >= 2:
        xs[0], xs[1] = boxes[0][0], boxes[0][1]
    return xs.astype(np.float32)


def _sample_shape(config: Config) -> tuple[int, ...]:
    """The model's input shape without batch, from the data the config points to (or the model)."""
    from toolchain.quantize import load_representative

    if isinstance(config.representative_data, Path):
        try:
            return tuple(load_representative(config.representative_data).shape[1:])
        except QassureError as exc:
            raise QassureError(f"key 'representative_data': {exc}", config.path) from None
    if isinstance(config.region, BallsRegion):
        return tuple(config.region.centers().shape[1:])
    if len(config.region.low) > 1 or len(config.region.high) > 1:
        return (max(len(config.region.low), len(config.region.high)),)
    from toolchain.quantize import load_keras_model

    model = load_keras_model(config.model)  # type: ignore[arg-type]
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise QassureError("the model's input shape has unknown dimensions: give region.box as lists "
                           "or a representative_data file", config.path)
    return shape


@dataclass(frozen=True)
class Models:
    float_tflite: Path
    int8_tflite: Path
    representative: np.ndarray  # float32 (N, *input_shape)
    keras_vs_float_max_abs: float | None


def make_models(config: Config, target: Target, work: Path) -> Models:
    """Quantize the Keras model into `work`, or copy the two given .tflite files there."""
    work.mkdir(parents=True, exist_ok=True)
    fpath, ipath = work / FLOAT_TFLITE_NAME, work / INT8_TFLITE_NAME
    if config.model is None:
        shutil.copyfile(config.float_tflite, fpath)  # type: ignore[arg-type]
        shutil.copyfile(config.int8_tflite, ipath)  # type: ignore[arg-type]
        g = reader.read_model(ipath)
        rep = representative_samples(config, g.input.shape[1:])
        return Models(fpath, ipath, rep, None)
    from toolchain.quantize import quantize

    shape = _sample_shape(config)
    rep = representative_samples(config, shape)
    res = quantize(config.model, rep, work, int8_io=True, per_channel=target.per_channel)
    return Models(res.float_tflite, res.int8_tflite, rep, res.keras_vs_float_max_abs)


def certify_models(config: Config, target: Target, models: Models, *, method: str = "auto",
                   time_limit: float | None = None, workers: int = 1, progress: Progress = _quiet) -> Certificate:
    """Run the certify engines on the two graphs over the config's region; hashes of the inputs filled in."""
    from toolchain.certify.certifier import certify
    from toolchain.certify.region import Box
    from toolchain.certify.settings import DEFAULT
    from toolchain.merge import build

    fg, ig = reader.read_model(models.float_tflite), reader.read_model(models.int8_tflite)
    check_region(config, ig.input.size, ig.output.size)
    boxes = [Box(low=lo, high=hi) for lo, hi in region_boxes(config, ig.input.size)]
    pg = prepare.prepare(ig, target.rounding)
    net = build(fg, pg, config.input_interface)
    settings = DEFAULT.replace(time_limit=config.time_limit if time_limit is None else time_limit,
                               falsify_samples=config.samples)
    cert = certify(net, pg, boxes, budget=config.budget(ig.output.size).tolist(), target=target.name, method=method,
                   settings=settings, workers=workers, decision=config.decision, progress=progress)
    hashes = {FLOAT_TFLITE_NAME: sha256_file(models.float_tflite), INT8_TFLITE_NAME: sha256_file(models.int8_tflite),
              "config": sha256_file(config.path)}
    if config.model is not None and Path(config.model).is_file():
        hashes["model"] = sha256_file(config.model)
    from dataclasses import replace

    return replace(cert, hashes=hashes)


def bitexact_check(models: Models, target: Target, inputs: np.ndarray, pair: PairEvaluator) -> Check:
    """Executor vs tflite-micro on in-region inputs (skipped when the oracle cannot model the target)."""
    if target.rounding != "double":
        return Check("bitexact", None, f"skipped: tflite-micro's interpreter uses double rounding, target "
                     f"{target.name} uses {target.rounding} rounding (checked on QEMU by firmware tests)")
    try:
        from toolchain.bitexact import check_bitexact

        rep = check_bitexact(models.int8_tflite, target, inputs=pair.quantize_input(inputs))
    except QassureError as exc:
        return Check("bitexact", None, f"skipped: {exc}")
    details = rep.as_dict()
    if rep.ok:
        return Check("bitexact", True, f"executor bit-exact with tflite-micro on {rep.samples}/{rep.samples} "
                     "in-region inputs", details)
    first = rep.first_difference
    where = f", first at op #{first.op_index} {first.opcode}" if first else ""
    return Check("bitexact", False, f"executor differs from tflite-micro on {rep.samples - rep.exact}/"
                 f"{rep.samples} inputs (up to {rep.max_output_lsb} LSB{where}): the certificate would not "
                 "describe the device", details)


def memory_checks(int8_tflite: Path, target: Target) -> list[Check]:
    """Model bytes in flash and the activation arena (greedy plan over tensor lifetimes) in RAM."""
    from toolchain.inspect import memory_estimate

    graph = reader.read_model(int8_tflite)
    size = int8_tflite.stat().st_size
    mem = memory_estimate(graph, size)
    flash = Check("memory-flash", size <= target.flash_bytes,
                  f"model {size:,} B in flash (weights {mem.weight_bytes:,} B) of {target.flash_bytes:,} B "
                  f"({100.0 * size / target.flash_bytes:.2f}%)",
                  {"model_bytes": size, "weight_bytes": mem.weight_bytes, "flash_bytes": target.flash_bytes})
    ram = Check("memory-ram", mem.arena_bytes <= target.ram_bytes,
                f"activation arena ~{mem.arena_bytes:,} B (peak live {mem.peak_live_bytes:,} B) of "
                f"{target.ram_bytes:,} B RAM ({100.0 * mem.arena_bytes / target.ram_bytes:.2f}%)",
                {"arena_bytes": mem.arena_bytes, "peak_live_bytes": mem.peak_live_bytes,
                 "ram_bytes": target.ram_bytes})
    return [flash, ram]


def firmware_check(models: Models, target: Target, inputs: np.ndarray, pair: PairEvaluator) -> Check:
    """The emitted C on the target's emulated core vs the executor: {core, machine, vectors, matched, image}."""
    name = "firmware-qemu"
    if not target.emit_c or target.qemu_machine is None:
        why = "the target does not emit C" if not target.emit_c else f"no emulated board for {target.cpu_core}"
        return Check(name, None, f"skipped: {why}")
    from toolchain.emit import firmware, qemu

    missing = firmware.missing_tools()
    if missing:
        return Check(name, None, f"skipped: {', '.join(missing)} not installed (make setup-firmware)")
    try:
        rec = qemu.verify_on_qemu(models.int8_tflite, target, pair.quantize_input(inputs))
    except ModelError as exc:  # e.g. a float-input graph: no C is emitted for it
        return Check(name, None, f"skipped: {exc}")
    except QassureError as exc:
        return Check(name, False, f"the emitted C did not run on QEMU {target.qemu_machine}: {exc}")
    image = rec["image"]
    ok = rec["matched"] == rec["vectors"] and image["fits"]
    return Check(name, ok, f"emitted C on QEMU {rec['machine']} ({rec['core']}): {rec['matched']}/{rec['vectors']} "
                 f"in-region inputs bit-exact with the executor; image flash {image['flash']:,} of "
                 f"{image['flash_budget']:,} B, RAM {image['ram']:,} of {image['ram_budget']:,} B", rec)


def certificate_checks(cert: Certificate, config: Config) -> list[Check]:
    upper = max((o.upper for o in cert.outputs), default=0.0)
    lower = max((o.lower for o in cert.outputs), default=0.0)
    budget = max(cert.budget, default=0.0)
    worst = [o.index for o, b in zip(cert.outputs, cert.budget) if o.upper > b]
    msg = (f"{cert.verdict}: |float − int8| ≤ {upper:.6g} certified ({cert.method}), witnessed {lower:.6g}, "
           f"budget {budget:.6g}")
    if worst:
        shown = ", ".join(str(k) for k in worst[:8]) + (", …" if len(worst) > 8 else "")
        msg += f"; {len(worst)} of {len(cert.outputs)} outputs over budget ({shown})"
    checks = [Check("certify", cert.verdict == VERDICT_PASS, msg,
                    {"bound": cert.bound, "lower": lower, "verdict": cert.verdict, "method": cert.method,
                     "certified_tensor": cert.certified_tensor})]
    if config.decision == "top1":
        decisions = [r.decision or {} for r in cert.regions]
        ok = bool(decisions) and all(d.get("certified") for d in decisions)
        checks.append(Check("decision-top1", ok, "int8 argmax = float argmax certified over the region" if ok
                            else "top-1 decision not certified on every region", {"regions": decisions}))
    return checks


def sampled_error_check(cert: Certificate, errors: np.ndarray, pair: PairEvaluator) -> Check:
    """Dense-sample sanity check: an error above a bound just certified is a soundness violation."""
    upper = np.array([o.upper for o in cert.outputs], dtype=np.float64)
    worst = errors.max(axis=0) if len(errors) else np.zeros_like(upper)
    tol = 1e-6 + 1e-6 * np.abs(upper)
    if worst.shape == upper.shape and np.any(worst > upper + tol):
        k = int(np.argmax(worst - upper))
        raise SoundnessViolation(f"sampled error {worst[k]:.9g} on output {k} exceeds the certified bound "
                                 f"{upper[k]:.9g}")
    return Check("sampled-errors", True, f"{len(errors)} sampled inputs: max error {float(worst.max(initial=0)):.6g}"
                 f" ≤ certified bound", {"samples": len(errors), "max": float(worst.max(initial=0))})


# --------------------------------------------------------------------------------------------- the gate


def run_gate(config_path: Path | str, target_name: str, *, out_root: Path | str = "build", method: str = "auto",
             time_limit: float | None = None, workers: int = 1, progress: Progress = _quiet,
             emit: bool = True) -> GateResult:
    """Run the whole gate; QassureError (exit 2) propagates for bad input."""
    from toolchain.emit import artifact

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str):
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]

    config = load_config(config_path)
    target = load_target(target_name)
    checks: list[Check] = []
    cert: Certificate | None = None
    metrics: dict[str, float] = {}
    sampled = np.zeros((0, 0))
    exit_code = EXIT_PASS
    with tempfile.TemporaryDirectory(prefix="qassure-gate-") as tmp:
        work = Path(tmp)
        progress(f"quantizing {config.name} ({'given .tflite files' if config.model is None else config.model.name})")
        step("quantize")
        models = make_models(config, target, work)
        done("quantize")
        gap = models.keras_vs_float_max_abs
        checks.append(Check("quantize", True, "float + int8 TFLite from one converter run" +
                            (f"; |Keras − float TFLite| ≤ {gap:.3g} on representative data" if gap is not None else
                             "; given .tflite files"), {} if gap is None else {"keras_vs_float_max_abs": gap}))
        ig = reader.read_model(models.int8_tflite)
        check_region(config, ig.input.size, ig.output.size)
        boxes = region_boxes(config, ig.input.size)

        step("bitexact")
        pair0 = PairEvaluator(models.float_tflite, models.int8_tflite, target.rounding)
        progress(f"bit-exact check: executor vs tflite-micro on {BITEXACT_SAMPLES} inputs")
        bx_inputs = sample_boxes(boxes, BITEXACT_SAMPLES, seed=1)
        checks.append(bitexact_check(models, target, bx_inputs, pair0))
        done("bitexact")

        step("certify")
        progress(f"certifying over {len(boxes)} region(s), method {method}")
        try:
            cert = certify_models(config, target, models, method=method, time_limit=time_limit, workers=workers,
                                  progress=progress)
            done("certify")
            checks += certificate_checks(cert, config)
            step("sampling")
            pair = PairEvaluator(models.float_tflite, models.int8_tflite, target.rounding, cert.certified_tensor)
            n = min(config.samples, HISTOGRAM_SAMPLES)
            xs = sample_boxes(boxes, n, seed=2)
            if config.input_interface == "int8":
                xs = pair.snap_to_grid(xs)
            _, _, sampled = pair.errors(xs)
            checks.append(sampled_error_check(cert, sampled, pair))
            progress("empirical metrics on the representative data")
            rep = models.representative.reshape(len(models.representative), -1)
            f, fq, _ = pair.errors(rep)
            metrics = empirical_metrics(f, fq)
            done("sampling")
        except SoundnessViolation as exc:
            timings.setdefault("certify", 0.0)
            checks.append(Check("soundness", False, f"SOUNDNESS VIOLATION (a qassure bug): {exc}"))
            exit_code = EXIT_SOUNDNESS

        step("memory")
        checks += memory_checks(models.int8_tflite, target)
        done("memory")

        step("firmware")
        progress(f"emitted C on the emulated {target.cpu_core}: {FIRMWARE_VECTORS} in-region inputs")
        checks.append(firmware_check(models, target, bx_inputs[:FIRMWARE_VECTORS], pair0))
        done("firmware")

        if exit_code == EXIT_PASS and any(c.passed is False for c in checks):
            exit_code = EXIT_FAIL
        result = GateResult(config.name, target.name, exit_code, checks, cert, None, None, metrics, timings)
        if emit:
            step("emit")
            progress("writing the artifact" if exit_code == EXIT_PASS else "writing the failure report")
            out = artifact.write(result, config, target, models, sampled, Path(out_root))
            done("emit")
            result.report_dir = out
            result.artifact_dir = out if exit_code == EXIT_PASS else None
    result.seconds = time.perf_counter() - t_start
    result.timings = {k: v for k, v in timings.items()}
    if emit and result.report_dir is not None:
        artifact.write_timings(result.report_dir, result)
    return result


def gate_summary_lines(result: GateResult) -> list[str]:
    """Human summary (the last line is the verdict)."""
    lines = [f"[{c.status:>7}] {c.name}: {c.message}" for c in result.checks]
    cert = result.certificate
    if cert is not None:
        sats = [s for r in cert.regions for s in r.saturations]
        if sats:
            lines.append(f"saturating layers ({len(sats)} channels can leave their int8 range):")
            for s in sats[:8]:
                lines.append(f"    {s.op} {s.tensor}[{s.channel}]: float [{s.float_low:.4g}, {s.float_high:.4g}] vs "
                             f"int8 range [{s.int8_low:.4g}, {s.int8_high:.4g}]{' (witnessed)' if s.witnessed else ''}")
            if len(sats) > 8:
                lines.append(f"    ... {len(sats) - 8} more in the report")
    if result.metrics:
        m = result.metrics
        lines.append(f"representative data: max abs {m['max_abs_error']:.4g}, RMSE {m['rmse']:.4g}, "
                     f"cosine {m['cosine_similarity']:.6f}")
    where = result.artifact_dir or result.report_dir
    if where is not None:
        lines.append(f"{'artifact' if result.artifact_dir else 'report (nothing deployable)'}: {where}")
    bound = f", bound {cert.bound:.6g}" if cert is not None else ""
    lines.append(f"gate {result.verdict.upper()} for {result.config_name} on {result.target}{bound} "
                 f"in {result.seconds:.1f} s")
    return lines


__all__ = ["Check", "GateResult", "PairEvaluator", "run_gate", "empirical_metrics", "asdict"]
