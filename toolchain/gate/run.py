"""The pre-flash gate: config → quantize → load the model pair once → bit-exact → certify → memory → emit.

`run_gate` is what `qassure run` (and `make certify`) calls; `make_models` and `certify_models` are
shared with `qassure certify`. The two .tflite files are read, the int8 graph prepared for the
target's rounding and merged with the float graph once (`toolchain.pair.ModelPair`); every check,
the certify engines, the artifact and the report get that pair. Each step becomes one named
`Check` in the returned `GateResult` (exit codes: `toolchain.gate.results`).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from toolchain.certificate import Certificate
from toolchain.config import (
    LOCAL_SCHEDULER,
    Config,
    check_region,
    load_config,
    representative_samples,
    sample_shape,
)
from toolchain.emit import artifact
from toolchain.errors import EXIT_FAIL, EXIT_PASS, EXIT_SOUNDNESS, ModelError, SoundnessViolation
from toolchain.gate.checks import (
    bitexact_check,
    certificate_checks,
    empirical_metrics,
    firmware_check,
    memory_checks,
    quantize_check,
    region_boxes,
    sample_boxes,
    sampled_error_check,
)
from toolchain.gate.results import Check, GateResult
from toolchain.pair import ModelPair, load_pair
from toolchain.targets import Target, load_target

Progress = Callable[[str], None]

BITEXACT_SAMPLES = 256  # inputs of the region run through executor and tflite-micro
FIRMWARE_VECTORS = 64  # of those, run through the emitted C on the target's emulated core
HISTOGRAM_SAMPLES = 1000  # sampled errors shown in the report (and checked against the bound)


def _quiet(_: str) -> None:
    return None


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Models:
    pair: ModelPair
    representative: np.ndarray  # float32 (N, *input_shape)
    keras_vs_float_max_abs: float | None  # None for a config naming .tflite files


def make_models(config: Config, target: Target, work: Path) -> Models:
    """Quantize the Keras model into `work` (or take the config's .tflite files); load the pair once."""
    if config.model is None:
        assert config.float_tflite is not None and config.int8_tflite is not None
        pair = load_pair(config.float_tflite, config.int8_tflite, target.rounding, config.input_interface)
        rep = representative_samples(config, sample_shape(config, pair.int8_graph.input.shape))
        return Models(pair, rep, None)
    from toolchain.quantize import load_keras_model, quantize_keras_model

    model = load_keras_model(config.model)
    rep = representative_samples(config, sample_shape(config, tuple(model.inputs[0].shape)))
    res = quantize_keras_model(model, rep, work, int8_io=True, per_channel=target.per_channel,
                               source=config.model)
    try:
        pair = load_pair(res.float_tflite, res.int8_tflite, target.rounding, config.input_interface)
    except ModelError as exc:
        # The converted files sit in a work directory the user never named: name the model they gave.
        raise type(exc)(f"its TFLite conversion: {exc.message}", config.model) from None
    return Models(pair, rep, res.keras_vs_float_max_abs)


def scheduler_for(config: Config, override: str | None = None) -> str | None:
    """The Dask scheduler the certify engines use: `override` (--scheduler; `local` for this machine)
    over the config's `scheduler` key; None for this machine."""
    address = config.scheduler if override is None else override
    return None if address in (None, LOCAL_SCHEDULER) else address


def check_scheduler_answers(config: Config, override: str | None = None) -> None:
    """Before any slow step: the scheduler (if any) answers and `distributed` is installed (ClusterError
    naming the config otherwise)."""
    from toolchain.certify.parallel import ClusterError, probe_scheduler

    address = scheduler_for(config, override)
    if address is not None:
        try:
            probe_scheduler(address)
        except ClusterError as exc:
            raise ClusterError(str(exc), config.path) from None


def certify_models(config: Config, target: Target, pair: ModelPair, *, method: str = "auto",
                   time_limit: float | None = None, max_boxes: int | None = None,
                   max_work: float | None = None, branching: str | None = None, workers: int = 1,
                   scheduler: str | None = None, progress: Progress = _quiet) -> Certificate:
    """Run the certify engines on the pair over the config's region; hashes of the inputs filled in.

    `time_limit`, `max_boxes`, `max_work` and `branching` override the config's (the safety net, the
    work budget, what branch and bound splits);
    `scheduler` the config's Dask scheduler (`local`: this machine, `workers` processes). On a cluster
    `workers` is ignored; the certificate is the same either way."""
    from toolchain.certify import certifier
    from toolchain.certify.parallel import ClusterError
    from toolchain.certify.region import Box
    from toolchain.certify.settings import DEFAULT

    ig = pair.int8_graph
    check_region(config, ig.input.size, ig.output.size)
    boxes = [Box(low=lo, high=hi) for lo, hi in region_boxes(config, ig.input.size)]
    settings = DEFAULT.replace(time_limit=config.time_limit if time_limit is None else time_limit,
                               max_boxes=config.max_boxes if max_boxes is None else max_boxes,
                               max_work=config.max_work if max_work is None else max_work,
                               branching=config.branching if branching is None else branching,
                               falsify_samples=config.samples)
    budget = config.budget(ig.output.size).tolist()
    address = scheduler_for(config, scheduler)
    if address is not None:
        progress(f"connecting to the Dask scheduler at {address}")
    try:
        cert = certifier.certify(pair.net, pair.prepared, boxes, budget=budget, target=target.name,
                                 method=method, settings=settings, workers=workers, scheduler=address,
                                 decision=config.decision, progress=progress)
    except ClusterError as exc:
        raise ClusterError(str(exc), config.path) from None
    hashes = {artifact.FLOAT_TFLITE_NAME: pair.float_sha256, artifact.INT8_TFLITE_NAME: pair.int8_sha256,
              "config": _sha256_file(config.path)}
    if config.model is not None and Path(config.model).is_file():
        hashes["model"] = _sha256_file(config.model)
    return replace(cert, hashes=hashes)


def run_gate(config_path: Path | str, target_name: str, *, out_root: Path | str = "build",
             method: str = "auto", time_limit: float | None = None, max_boxes: int | None = None,
             max_work: float | None = None, branching: str | None = None, workers: int = 1,
             scheduler: str | None = None, progress: Progress = _quiet, emit: bool = True) -> GateResult:
    """Run the whole gate; QassureError (exit 2) propagates for bad input. `scheduler`: see
    certify_models."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]

    config = load_config(config_path)
    target = load_target(target_name)
    check_scheduler_answers(config, scheduler)
    checks: list[Check] = []
    cert: Certificate | None = None
    metrics: dict[str, float] = {}
    sampled = np.zeros((0, 0))
    exit_code = EXIT_PASS
    with tempfile.TemporaryDirectory(prefix="qassure-gate-") as tmp:
        source = "given .tflite files" if config.model is None else config.model.name
        progress(f"quantizing {config.name} ({source})")
        step("quantize")
        models = make_models(config, target, Path(tmp))
        pair = models.pair
        ig = pair.int8_graph
        check_region(config, ig.input.size, ig.output.size)
        boxes = region_boxes(config, ig.input.size)
        checks.append(quantize_check(pair, models.representative, models.keras_vs_float_max_abs))
        done("quantize")

        step("bitexact")
        progress(f"bit-exact check: executor vs tflite-micro on {BITEXACT_SAMPLES} inputs")
        bx_inputs = sample_boxes(boxes, BITEXACT_SAMPLES, seed=1)
        checks.append(bitexact_check(pair, target, bx_inputs))
        done("bitexact")

        step("certify")
        progress(f"certifying over {len(boxes)} region(s), method {method}")
        try:
            cert = certify_models(config, target, pair, method=method, time_limit=time_limit,
                                  max_boxes=max_boxes, max_work=max_work, branching=branching,
                                  workers=workers, scheduler=scheduler, progress=progress)
            done("certify")
            checks += certificate_checks(cert, config)
            step("sampling")
            xs = sample_boxes(boxes, min(config.samples, HISTOGRAM_SAMPLES), seed=2, pair=pair)
            sampled = np.abs(pair.errors(xs))
            checks.append(sampled_error_check(cert, sampled))
            progress("empirical metrics on the representative data")
            f, fq = pair.evaluate(models.representative.reshape(len(models.representative), -1))
            metrics = empirical_metrics(f, fq)
            done("sampling")
        except SoundnessViolation as exc:
            timings.setdefault("certify", 0.0)
            checks.append(Check("soundness", False, f"SOUNDNESS VIOLATION (a qassure bug): {exc}"))
            exit_code = EXIT_SOUNDNESS

        step("memory")
        checks += memory_checks(pair, target)
        done("memory")

        step("firmware")
        progress(f"emitted C on the emulated {target.cpu_core}: {FIRMWARE_VECTORS} in-region inputs")
        checks.append(firmware_check(pair, target, bx_inputs[:FIRMWARE_VECTORS]))
        done("firmware")

        if exit_code == EXIT_PASS and any(c.passed is False for c in checks):
            exit_code = EXIT_FAIL
        result = GateResult(config.name, target.name, exit_code, checks, cert, None, None, metrics, timings)
        if emit:
            step("emit")
            progress("writing the artifact" if exit_code == EXIT_PASS else "writing the failure report")
            out = artifact.write(result, config, target, pair, sampled, Path(out_root))
            done("emit")
            result.report_dir = out
            result.artifact_dir = out if exit_code == EXIT_PASS else None
    result.seconds = time.perf_counter() - t_start
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
                seen = " (witnessed)" if s.witnessed else ""
                lines.append(f"    {s.op} {s.tensor}[{s.channel}]: float [{s.float_low:.4g}, "
                             f"{s.float_high:.4g}] vs int8 range [{s.int8_low:.4g}, {s.int8_high:.4g}]{seen}")
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
    from toolchain.certify.parallel import peak_memory_bytes

    lines.append(f"gate {result.verdict.upper()} for {result.config_name} on {result.target}{bound} "
                 f"in {result.seconds:.1f} s (peak memory {peak_memory_bytes() / 2**20:.0f} MB)")
    return lines
