"""The gate's checks, each on the loaded `ModelPair`: one `Check` (or two) per step.

quantize (how far Keras and the float32 runtime lie from the float reference), bit-exactness
(executor vs tflite-micro), certificate (bound vs budget, top-1 decision), sampled errors (no
sampled error above a bound just certified), memory (flash, RAM), firmware (the emitted C on the
target's emulated core), and the empirical metrics vendor validators print.
"""

from __future__ import annotations

import numpy as np

from toolchain.certificate import VERDICT_PASS, Certificate
from toolchain.config import BallsRegion, BoxRegion, Config
from toolchain.errors import ModelError, QassureError, SoundnessViolation
from toolchain.gate.results import Check
from toolchain.pair import ModelPair, float32_runtime_gap
from toolchain.targets import Target

Boxes = list[tuple[np.ndarray, np.ndarray]]


def region_boxes(config: Config, input_size: int) -> Boxes:
    """The region as flat (low, high) boxes: one box, or one per L-inf ball."""
    region = config.region
    if isinstance(region, BoxRegion):
        return [region.arrays(input_size)]
    assert isinstance(region, BallsRegion)
    return [(c - region.radius, c + region.radius) for c in region.centers()]


def sample_boxes(boxes: Boxes, count: int, seed: int, pair: ModelPair | None = None) -> np.ndarray:
    """`count` inputs spread over the boxes (corners of the first box included), (count, n) float64.

    With a `pair` whose input interface is int8, each is moved onto the int8 input grid of its box
    (the device can receive nothing else)."""
    rng = np.random.default_rng(seed)
    which = np.arange(count) % len(boxes)
    lows = np.stack([boxes[i][0] for i in which])
    highs = np.stack([boxes[i][1] for i in which])
    xs = lows + rng.uniform(0.0, 1.0, lows.shape) * (highs - lows)
    if count >= 2:
        xs[0], xs[1] = boxes[0][0], boxes[0][1]
    if pair is not None:
        for i, (lo, hi) in enumerate(boxes):
            xs[which == i] = pair.on_input_grid(xs[which == i], lo, hi)
    return xs


def quantize_check(pair: ModelPair, representative: np.ndarray, keras_gap: float | None) -> Check:
    """The two .tflite files; how far Keras and the float32 runtime lie from the reference (measured)."""
    source = "float + int8 TFLite from one converter run" if keras_gap is not None else "given .tflite files"
    details: dict[str, float | str] = {}
    message = source
    if keras_gap is not None:
        details["keras_vs_float_max_abs"] = keras_gap
        message += f"; |Keras − float TFLite| ≤ {keras_gap:.3g}"
    try:
        runtime_gap = float32_runtime_gap(pair, representative.reshape(len(representative), -1))
    except (RuntimeError, ValueError) as exc:  # LiteRT cannot run this graph: a measurement, not a check
        details["float32_runtime_not_measured"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message += "; float32 runtime not measured (LiteRT could not run the float graph)"
    else:
        details["float32_runtime_vs_reference_max_abs"] = runtime_gap
        message += f"; |float32 runtime − float reference| ≤ {runtime_gap:.3g}"
    return Check("quantize", True, f"{message} on representative data", details)


def bitexact_check(pair: ModelPair, target: Target, inputs: np.ndarray) -> Check:
    """Executor vs tflite-micro on in-region inputs (skipped when the oracle cannot model the target)."""
    if target.rounding != "double":
        return Check("bitexact", None, f"skipped: tflite-micro's interpreter uses double rounding, target "
                     f"{target.name} uses {target.rounding} rounding (checked on QEMU by firmware tests)")
    from toolchain.bitexact import check_bitexact

    device_inputs = pair.device_input(inputs)
    try:
        rep = check_bitexact(pair.int8_path, target, inputs=device_inputs, prepared=pair.prepared)
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


def memory_checks(pair: ModelPair, target: Target) -> list[Check]:
    """Model bytes in flash and the activation arena (greedy plan over tensor lifetimes) in RAM."""
    from toolchain.inspect import memory_estimate

    size = len(pair.int8_bytes)
    mem = memory_estimate(pair.int8_graph, size)
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


def firmware_check(pair: ModelPair, target: Target, inputs: np.ndarray) -> Check:
    """The emitted C on the target's emulated core vs the executor.

    Details: {core, machine, cpu_flags, rounding, vectors, matched, image}."""
    name = "firmware-qemu"
    if not target.emit_c or target.qemu_machine is None:
        why = ("the target does not emit C" if not target.emit_c
               else f"no emulated board for {target.cpu_core}")
        return Check(name, None, f"skipped: {why}")
    from toolchain.emit import firmware, qemu

    missing = firmware.missing_tools()
    if missing:
        return Check(name, None, f"skipped: {', '.join(missing)} not installed (make setup-firmware)")
    device_inputs = pair.device_input(inputs)
    try:
        rec = qemu.verify_on_qemu(pair.int8_path, target, device_inputs, prepared=pair.prepared)
    except ModelError as exc:  # e.g. a float-input graph: no C is emitted for it
        return Check(name, None, f"skipped: {exc}")
    except QassureError as exc:
        return Check(name, False, f"the emitted C did not run on QEMU {target.qemu_machine}: {exc}")
    image = rec["image"]
    ok = rec["matched"] == rec["vectors"] and image["fits"]
    return Check(name, ok, f"emitted C on QEMU {rec['machine']} ({rec['core']}): "
                 f"{rec['matched']}/{rec['vectors']} in-region inputs bit-exact with the executor; "
                 f"image flash {image['flash']:,} of "
                 f"{image['flash_budget']:,} B, RAM {image['ram']:,} of {image['ram_budget']:,} B", rec)


def certificate_checks(cert: Certificate, config: Config) -> list[Check]:
    """The certified bound against the budget, and the top-1 decision when the config asks for it."""
    upper = max((o.upper for o in cert.outputs), default=0.0)
    lower = max((o.lower for o in cert.outputs), default=0.0)
    budget = max(cert.budget, default=0.0)
    worst = [o.index for o, b in zip(cert.outputs, cert.budget, strict=True) if o.upper > b]
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


def sampled_error_check(cert: Certificate, errors: np.ndarray) -> Check:
    """Dense-sample sanity check on |f − f_q| (B, k): an error above a bound just certified is a
    soundness violation (raised)."""
    upper = np.array([o.upper for o in cert.outputs], dtype=np.float64)
    worst = errors.max(axis=0) if len(errors) else np.zeros_like(upper)
    tol = 1e-6 + 1e-6 * np.abs(upper)
    if worst.shape == upper.shape and np.any(worst > upper + tol):
        k = int(np.argmax(worst - upper))
        raise SoundnessViolation(f"sampled error {worst[k]:.9g} on output {k} exceeds the certified bound "
                                 f"{upper[k]:.9g}")
    most = float(worst.max(initial=0))
    return Check("sampled-errors", True,
                 f"{len(errors)} sampled inputs: max error {most:.6g} ≤ certified bound",
                 {"samples": len(errors), "max": most})


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
