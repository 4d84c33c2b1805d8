"""The suite benchmark every engine change is judged by (`make bench`).

    python bench/suite.py [--cases PATTERN[,PATTERN]] [--time-limit S] [--workers N] [--compare OLD.json]

Each case (bench/suite_cases.py: eleven ACAS Xu networks x two calibrations, pump, ad01, cnn_depthwise,
ResNet-8) is written as a config and certified through the product's command line, as a user runs it,
one child process per case:

    python -m toolchain.cli.main certify CONFIG --target cortex-m4 --json --workers N --time-limit S --out DIR

(plus a large `--max-boxes` when the command accepts it, so that the time limit is what binds). Per case:
bound, witness, ratio bound / witness, certify seconds, the rest of the wall time (conversion, start-up),
boxes, boxes per minute, peak memory; then the median and worst ratio over the cases that returned, and
over the ACAS Xu cases alone. A case still running at 3 x the time limit + `--allowance` is killed and
listed as a timeout. Writes bench/out/suite/{results.md, results.json, ratios.png}.
Judge a change by the median and the worst, never by one case.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from suite_cases import REPO, TARGET, Case, cases, find_models_dir
from suite_proc import run_measured

from toolchain.certify.settings import DEFAULT

OUT = REPO / "bench" / "out" / "suite"
CLI = [sys.executable, "-m", "toolchain.cli.main"]
LARGE_MAX_BOXES = 10**9  # with a work budget this large, the time limit binds
LARGE_MAX_WORK = 1e18  # ... and the multiply-add budget too
HAS_MAX_WORK = [False]  # whether certify has --max-work (set once in main)
TARGET_RATIO = DEFAULT.target_ratio  # certify's `auto` stops once bound <= this x witness (budget refuted)


# -------------------------------------------------------------------------------------------- the certificate


@dataclass(frozen=True)
class Reading:
    """What the suite reads from a certificate; `read_certificate` is the one place that knows its fields."""

    bound: float
    witness: float
    boxes: int
    certify_seconds: float | None  # None: the certificate records no time
    stopped: tuple[str, ...]  # why each region's search stopped, when the certificate says


def read_certificate(cert: dict[str, Any]) -> Reading:
    """Schema qassure.certificate/1: boxes = leaves of the final split, `seconds` of certify.
    Schema /2 (the work-budget engines): boxes = boxes bounded (`regions[i].work.boxes`, every child box
    counts), no seconds, `regions[i].stopped` says why the search ended."""
    regions = cert["regions"]
    if all("work" in r for r in regions):
        boxes = sum(int(r["work"].get("boxes", 1)) for r in regions)
    else:
        boxes = sum(int(r.get("leaves", 1)) for r in regions)
    seconds = cert.get("seconds")
    stopped = tuple(sorted({str(r["stopped"]) for r in regions if r.get("stopped")}))
    return Reading(bound=float(cert["bound"]), witness=float(cert["witness"]["error"]), boxes=boxes,
                   certify_seconds=None if seconds is None else float(seconds), stopped=stopped)


# --------------------------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class CaseResult:
    case: str
    group: str
    status: str  # ok | timeout | error | soundness-violation
    note: str
    wall_seconds: float
    peak_mb: float  # sampled peak of the case's processes' summed Pss
    max_rss_mb: float  # the largest single process (exact)
    returncode: int | None
    bound: float | None = None
    witness: float | None = None
    ratio: float | None = None
    certify_seconds: float | None = None
    boxes: int | None = None

    @property
    def prep_seconds(self) -> float | None:
        """Wall time outside certify: start-up, model conversion, reading and writing files."""
        return None if self.certify_seconds is None else max(0.0, self.wall_seconds - self.certify_seconds)

    @property
    def boxes_per_minute(self) -> float | None:
        """Over the certify seconds, or the whole wall time when the certificate records no time."""
        seconds = self.certify_seconds or self.wall_seconds
        return None if self.boxes is None or not seconds else 60.0 * self.boxes / seconds


def cli_accepts(option: str) -> bool:
    """Whether `certify` has `option` (read from its --help, so the suite follows the CLI as it changes)."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([*CLI, "certify", "--help"], cwd=REPO, capture_output=True, text=True, env=env,
                          check=False, timeout=120)
    return option in done.stdout


def certify_argv(config: Path, out: Path, time_limit: float, workers: int,
                 max_boxes: int | None) -> list[str]:
    argv = [*CLI, "certify", str(config), "--target", TARGET, "--json", "--workers", str(workers),
            "--time-limit", str(time_limit), "--out", str(out)]
    argv += ["--max-boxes", str(max_boxes)] if max_boxes is not None else []
    return argv + (["--max-work", str(LARGE_MAX_WORK)] if max_boxes is not None and HAS_MAX_WORK[0] else [])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _parse_certificate(stdout: str, path: Path) -> dict[str, Any] | None:
    """The JSON certify printed (`--json`), or the certificate.json it wrote."""
    for text in (stdout, path.read_text(encoding="utf-8") if path.is_file() else ""):
        start = text.find("{")
        if start < 0:
            continue
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            continue
    return None


def run_case(case: Case, config: Path, args: argparse.Namespace, max_boxes: int | None) -> CaseResult:
    case_dir = config.parent
    out = case_dir / "certify"
    cert_path = out / "certificate.json"
    cert_path.unlink(missing_ok=True)
    kill_after = 3.0 * args.time_limit + args.allowance
    run = run_measured(certify_argv(config, out, args.time_limit, args.workers, max_boxes), cwd=REPO,
                       kill_after=kill_after, stdout_path=case_dir / "stdout.txt",
                       stderr_path=case_dir / "stderr.txt")
    base = CaseResult(case=case.id, group=case.group, status="error", note="", wall_seconds=run.wall_seconds,
                      peak_mb=run.peak_mb, max_rss_mb=run.max_rss_mb, returncode=run.returncode)
    if run.timed_out:
        return replace(base, status="timeout", note=f"killed after {run.wall_seconds:.0f} s")
    cert = _parse_certificate(run.stdout, cert_path) if run.returncode in (0, 1) else None
    if cert is None:
        return replace(base, status="soundness-violation" if run.returncode == 3 else "error",
                       note=f"exit {run.returncode}: {_last_line(run.stderr)}")
    r = read_certificate(cert)
    ratio = r.bound / r.witness if r.witness > 0 else math.inf
    # Budget 0: the verdict says nothing; what ended the search does.
    stop = f"stopped at the {TARGET_RATIO}x target" if ratio <= TARGET_RATIO else "time or work limit"
    stop = f"stopped: {', '.join(r.stopped)}" if r.stopped else stop
    return replace(base, status="ok", bound=r.bound, witness=r.witness, ratio=ratio,
                   certify_seconds=r.certify_seconds, boxes=r.boxes, note=stop)


def prepare_all(chosen: list[Case], time_limit: float, models: Path) -> dict[str, dict[str, str]]:
    """Every chosen case's config, written by bench/suite_cases.py in one child process (conversions for the
    ResNet-8 LSB and the softmax stripping load TensorFlow there, never in this process)."""
    manifest = OUT / "prepared.json"
    manifest.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).with_name("suite_cases.py")), "--out", str(OUT),
            "--time-limit", str(time_limit), "--models", str(models), "--manifest", str(manifest),
            *[c.id for c in chosen]]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    if not manifest.is_file():
        why = f"preparing the cases failed (exit {done.returncode}): {_last_line(done.stderr)}"
        return {c.id: {"error": why} for c in chosen}
    return json.loads(manifest.read_text(encoding="utf-8"))


def prepare_error(case: Case, message: str) -> CaseResult:
    return CaseResult(case=case.id, group=case.group, status="error", wall_seconds=0.0, peak_mb=0.0,
                      max_rss_mb=0.0, returncode=None, note=f"preparing the case failed: {message}")


# --------------------------------------------------------------------------------------------- summary


def ratio_summary(results: list[CaseResult]) -> dict[str, Any]:
    """Median and worst ratio over the cases that returned (all, and ACAS Xu alone); the rest counted."""

    def stats(rs: list[CaseResult]) -> dict[str, Any]:
        ratios = [r.ratio for r in rs if r.status == "ok" and r.ratio is not None]
        return {"cases": len(ratios), "median": statistics.median(ratios) if ratios else None,
                "worst": max(ratios) if ratios else None}

    return {"all": stats(results), "acas": stats([r for r in results if r.group == "acas"]),
            "timeouts": [r.case for r in results if r.status == "timeout"],
            "errors": [r.case for r in results if r.status not in ("ok", "timeout")]}


def _num(v: float | None, fmt: str = ".4g") -> str:
    if v is None:
        return "—"
    return "inf" if math.isinf(v) else format(v, fmt)


def markdown(results: list[CaseResult], summary: dict[str, Any], meta: dict[str, Any]) -> str:
    head = ("| case | bound | witness | ratio | certify s | other s | boxes | boxes/min | peak MB "
            "| max RSS MB | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = [f"| {r.case} | {_num(r.bound)} | {_num(r.witness)} | {_num(r.ratio, '.3g')} | "
            f"{_num(r.certify_seconds, '.1f')} | {_num(r.prep_seconds, '.1f')} | {_num(r.boxes, 'd')} | "
            f"{_num(r.boxes_per_minute, '.0f')} | {r.peak_mb:.0f} | {r.max_rss_mb:.0f} | "
            f"{r.status}: {r.note} |"
            for r in results]
    a, acas = summary["all"], summary["acas"]
    lines = [
        f"Suite on {meta['target']}, {meta['workers']} workers, time limit {meta['time_limit']:g} s per case "
        f"({meta['commit']}, {meta['date']}).",
        "",
        head, *rows, "",
        f"**median ratio {_num(a['median'], '.3g')}, worst {_num(a['worst'], '.3g')}** over the "
        f"{a['cases']} cases that returned; ACAS Xu alone ({acas['cases']}): "
        f"median {_num(acas['median'], '.3g')}, worst {_num(acas['worst'], '.3g')}.",
        f"Timeouts: {len(summary['timeouts'])} ({', '.join(summary['timeouts']) or 'none'}); "
        f"errors: {len(summary['errors'])} ({', '.join(summary['errors']) or 'none'}).",
        "",
        "ratio = bound / witness; certify s from the certificate (— when it records none: boxes/min is then "
        "over the wall time); other s = the rest of the wall time (start-up, conversion); boxes = leaves of "
        "the final split (certificate/1) or boxes bounded (certificate/2), summed over regions; peak MB = "
        "the largest sum of the case's processes' Pss (sampled); max RSS MB = the largest single process.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[CaseResult], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.case for r in results]
    finite = [r.ratio for r in results if r.ratio is not None and math.isfinite(r.ratio)]
    top = max([*finite, 10.0]) * 2.0
    fig, ax = plt.subplots(figsize=(max(8.0, 0.38 * len(results) + 2.0), 4.8))
    for i, r in enumerate(results):
        if r.status == "ok" and r.ratio is not None:
            ax.bar(i, min(r.ratio, top), color="tab:blue" if r.group == "acas" else "tab:green")
        else:
            ax.scatter([i], [top / 1.5], marker="x", color="tab:red")
            ax.annotate(r.status, (i, top / 1.5), rotation=90, fontsize=7, ha="center", va="top",
                        xytext=(0, -6), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_ylim(1.0, top)
    ax.axhline(TARGET_RATIO, color="black", linestyle="--", linewidth=1, label=f"{TARGET_RATIO}x")
    median = summary["all"]["median"]
    if median is not None and math.isfinite(median):
        ax.axhline(median, color="tab:orange", linewidth=1.2, label=f"median {median:.3g}x")
    ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7, ha="right")
    ax.set_ylabel("bound / witness (log)")
    ax.set_title("qassure suite: certified bound over witnessed error (blue: ACAS Xu)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(old_path: Path, results: list[CaseResult], summary: dict[str, Any]) -> str:
    """Per-case ratio change against an older results.json, and the change of the median and the worst
    (over the cases that returned in both runs, so that a subset or a new timeout does not move them)."""
    old = json.loads(old_path.read_text(encoding="utf-8"))
    before = {c["case"]: c for c in old["cases"]}
    lines = [f"Compared with {old_path}:", "| case | old ratio | new ratio | new / old | old s | new s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        o = before.get(r.case)
        if o is None:
            continue
        o_ratio, o_status = o.get("ratio"), o.get("status")
        change = (r.ratio / o_ratio if r.ratio is not None and o_ratio and math.isfinite(o_ratio) else None)
        old_txt = _num(o_ratio, ".3g") if o_status == "ok" else o_status
        new_txt = _num(r.ratio, ".3g") if r.status == "ok" else r.status
        lines.append(f"| {r.case} | {old_txt} | {new_txt} | {_num(change, '.3f')} | "
                     f"{_num(o.get('certify_seconds'), '.1f')} | {_num(r.certify_seconds, '.1f')} |")
    both = [r for r in results if r.status == "ok" and before.get(r.case, {}).get("status") == "ok"]
    for scope, rs in (("all", both), ("ACAS Xu", [r for r in both if r.group == "acas"])):
        if not rs:
            continue
        new_r = [math.inf if r.ratio is None else r.ratio for r in rs]  # JSON null: an infinite ratio
        old_r = [math.inf if before[r.case]["ratio"] is None else before[r.case]["ratio"] for r in rs]
        lines.append(f"{scope}, {len(rs)} cases returned in both runs: median "
                     f"{_num(statistics.median(old_r), '.3g')} -> {_num(statistics.median(new_r), '.3g')}, "
                     f"worst {_num(max(old_r), '.3g')} -> {_num(max(new_r), '.3g')}")
    lines.append(f"timeouts: {len(old['summary']['timeouts'])} -> {len(summary['timeouts'])}; "
                 f"errors: {len(old['summary']['errors'])} -> {len(summary['errors'])}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def select(all_cases: list[Case], patterns: str | None) -> list[Case]:
    """Cases matching any comma-separated glob (a pattern without wildcards matches as a substring)."""
    if not patterns:
        return all_cases
    pats = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in patterns.split(",") if p]
    return [c for c in all_cases if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown commit"


def _finite(v: Any) -> Any:
    """JSON has no infinity (a witness of 0 gives an infinite ratio): written as null."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_results(results: list[CaseResult], meta: dict[str, Any], compare_with: Path | None = None) -> str:
    """results.md and results.json under bench/out/suite; returns the markdown."""
    summary = ratio_summary(results)
    text = markdown(results, summary, meta)
    if compare_with is not None:
        text += "\n" + compare(compare_with, results, summary)
    (OUT / "results.md").write_text(text, encoding="utf-8")
    rows = [{**asdict(r), "prep_seconds": r.prep_seconds, "boxes_per_minute": r.boxes_per_minute}
            for r in results]
    doc = _finite({"meta": meta, "cases": rows, "summary": summary})
    (OUT / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated globs of case ids (e.g. 'acas-1_1-*,pump'); default all")
    ap.add_argument("--time-limit", type=float, default=60.0, help="certify seconds per case (default 60)")
    ap.add_argument("--workers", type=int, default=2, help="certify worker processes (default 2)")
    ap.add_argument("--allowance", type=float, default=120.0,
                    help="seconds for start-up and conversion: a case is killed at 3 x time limit + this")
    ap.add_argument("--compare", type=Path, help="an older results.json: print the per-case ratio change")
    ap.add_argument("--models", type=Path, help="the third-party models (default ../shared/models)")
    ap.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = ap.parse_args(argv)

    models = find_models_dir(args.models)
    chosen = select(cases(models), args.cases)
    if args.list or not chosen:
        print("\n".join(f"{c.id:22s} {c.description}" for c in chosen) or f"no case matches {args.cases!r}")
        return 0 if chosen else 2
    max_boxes = LARGE_MAX_BOXES if cli_accepts("--max-boxes") else None
    HAS_MAX_WORK[0] = cli_accepts("--max-work")
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"target": TARGET, "workers": args.workers, "time_limit": args.time_limit,
            "allowance": args.allowance, "max_boxes": max_boxes, "commit": _commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    # SIGTERM as Ctrl-C: the running case (in its own session, out of reach of both) is ended with the suite.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))
    print(f"preparing {len(chosen)} case(s) ...", file=sys.stderr, flush=True)
    prepared = prepare_all(chosen, args.time_limit, models)
    results: list[CaseResult] = []
    for case in chosen:
        entry = prepared.get(case.id, {"error": "not prepared"})
        if "config" in entry:
            results.append(run_case(case, Path(entry["config"]), args, max_boxes))
        else:
            results.append(prepare_error(case, entry["error"]))
        r = results[-1]
        print(f"[{len(results)}/{len(chosen)}] {r.case}: {r.status}, ratio {_num(r.ratio, '.3g')}, "
              f"{r.wall_seconds:.0f} s, peak {r.peak_mb:.0f} MB {r.note}", file=sys.stderr, flush=True)
        write_results(results, meta)  # after every case: a long run can be watched, or cut short

    text = write_results(results, meta, args.compare)
    print(text)
    plot(results, ratio_summary(results), OUT / "ratios.png")
    print(f"wrote {OUT / 'results.md'}, results.json, ratios.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
