"""report.md + report.html (+ two PNG plots) from a certificate document and the sampled errors.

The report is a pure function of certificate.json's content (without its hashes) and the sampled
errors, so it is byte-reproducible: no dates, no absolute paths, matplotlib's Agg backend with fixed
metadata. Sections: verdict and bound; per-output [lower, upper] against the budget (plot + table);
the witness; the gate's checks; empirical metrics on the representative data (the numbers vendor
validators print, for comparison: they are measurements, not guarantees); histogram of sampled
errors; the saturating layers; versions.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

BOUNDS_PNG = "bounds.png"
ERRORS_PNG = "errors.png"
METRIC_NAMES = (("max_abs_error", "max abs error"), ("rmse", "RMSE"), ("mae", "MAE"),
                ("l2_relative_error", "L2 relative error"), ("cosine_similarity", "cosine similarity"))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _plots(directory: Path, doc: dict[str, Any], errors: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": "qassure"}
    written = []
    outputs = doc.get("outputs") or []
    budget = doc.get("budget") or []
    if outputs:
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
        idx = np.array([o["index"] for o in outputs])
        lo = np.array([o["lower"] for o in outputs], dtype=float)
        up = np.array([o["upper"] for o in outputs], dtype=float)
        ax.bar(idx, up - lo, bottom=lo, width=0.5, color="#4a7ab5",
               label="[witnessed lower, certified upper]")
        ax.scatter(idx, lo, marker="_", s=300, color="#c0392b", zorder=3, label="witnessed lower")
        if budget:
            ax.step(np.r_[idx - 0.5, idx[-1] + 0.5], np.r_[budget, budget[-1]], where="post", color="#2c3e50",
                    linestyle="--", label="budget")
        ax.set_xticks(idx)
        ax.set_xlabel("output")
        ax.set_ylabel("|float − int8|")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title("certified error interval per output")
        fig.tight_layout()
        fig.savefig(directory / BOUNDS_PNG, metadata=meta)
        plt.close(fig)
        written.append(BOUNDS_PNG)
    if errors.size:
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
        per_sample = errors.reshape(len(errors), -1).max(axis=1)
        ax.hist(per_sample, bins=40, color="#7f8c8d")
        if doc.get("bound") is not None:
            ax.axvline(doc["bound"], color="#4a7ab5", label=f"certified bound {doc['bound']:.4g}")
        if budget:
            ax.axvline(max(budget), color="#2c3e50", linestyle="--", label=f"budget {max(budget):.4g}")
        ax.set_xlabel("max over outputs of |float − int8| at a sampled input")
        ax.set_ylabel("inputs")
        ax.set_title(f"sampled errors in the region ({len(errors)} inputs)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(directory / ERRORS_PNG, metadata=meta)
        plt.close(fig)
        written.append(ERRORS_PNG)
    return written


def _saturations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(doc.get("regions") or []):
        for s in r.get("saturations") or []:
            rows.append({"region": i, **s})
    return rows


def sections(doc: dict[str, Any], errors: np.ndarray) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, paragraphs, table rows with a header row first) — shared by the Markdown and HTML forms."""
    gate = doc.get("gate") or {}
    out: list[tuple[str, list[str], list[list[str]]]] = []
    deploy = ("deployable artifact" if gate.get("deployable")
              else "NOT deployable: nothing to flash was written")
    cfg = (doc.get("config") or {}).get("name", "?")
    head = [f"Gate verdict: **{str(gate.get('verdict', '?')).upper()}** ({deploy}).",
            f"Config `{cfg}`, target `{doc.get('target')}`, method `{doc.get('method')}`, "
            f"certified tensor `{doc.get('certified_tensor')}`.",
            f"Certificate verdict: **{doc.get('verdict')}**; guaranteed bound on |float − int8| over the "
            f"region: **{_fmt(doc.get('bound'))}** (budget {_fmt(max(doc.get('budget') or [0.0]))})."]
    failed = [c for c in gate.get("checks", []) if c["status"] == "fail"]
    if failed:
        head.append("Why the gate failed: " + "; ".join(f"{c['name']}: {c['message']}" for c in failed))
    out.append(("Summary", head, []))
    rows = [["output", "witnessed lower", "certified upper", "budget", "within budget"]]
    for o, b in zip(doc.get("outputs") or [], doc.get("budget") or [], strict=False):
        rows.append([str(o["index"]), _fmt(o["lower"]), _fmt(o["upper"]), _fmt(b),
                     "yes" if o["upper"] <= b else ("NO (refuted)" if o["lower"] > b else "not proven")])
    out.append(("Per-output bounds", [f"![bounds]({BOUNDS_PNG})"] if len(rows) > 1 else [], rows))
    w = doc.get("witness")
    if w:
        xs = ", ".join(f"{v:.6g}" for v in w["input"][:16]) + (" …" if len(w["input"]) > 16 else "")
        out.append(("Witness", [f"An input in the region reaching error {_fmt(w['error'])} on output "
                                f"{w.get('output_index')}: the lower bound is real, not estimated.",
                                f"input = [{xs}]"], []))
    regions = doc.get("regions") or []
    if regions:
        budget = doc.get("work_budget") or {}
        rows = [["region", "bound", "witnessed", "stopped", "boxes", "cell enumerations", "MILP solves"]]
        for i, r in enumerate(regions):
            work = r.get("work") or {}
            rows.append([str(i), _fmt(r.get("bound")), _fmt(r.get("lower")), str(r.get("stopped", "?")),
                         str(work.get("boxes", "—")), str(work.get("enumerated", 0)),
                         str(work.get("milp_solves", 0))])
        out.append(("How the bound was found",
                    [f"Engine `{doc.get('method')}`, bounded by a deterministic work budget "
                     f"(max_boxes {budget.get('max_boxes', '?')}, max_work {_fmt(budget.get('max_work'))} "
                     "multiply-adds per region): the same config, models and qassure version give this "
                     "certificate on any machine. `stopped` says why each region's search ended."], rows))
    rows = [["check", "status", "message"]]
    rows += [[c["name"], c["status"], c["message"]] for c in gate.get("checks", [])]
    out.append(("Gate checks", [], rows))
    m = gate.get("metrics") or {}
    if m:
        rows = [["metric", "value"]] + [[label, _fmt(m.get(k))] for k, label in METRIC_NAMES if k in m]
        out.append(("Empirical metrics on the representative data",
                    ["Measured on the representative data (the float reference, the float32 graph in "
                     "float64 arithmetic, vs the bit-exact int8 executor), for comparison with vendor "
                     "validators. These are observations, not guarantees: the certified bound above is."],
                    rows))
    if errors.size:
        per = errors.reshape(len(errors), -1).max(axis=1)
        out.append(("Sampled errors in the region",
                    [f"{len(errors)} random inputs of the region: max {per.max():.6g}, "
                     f"mean {per.mean():.6g}, "
                     f"99th percentile {np.percentile(per, 99):.6g}.", f"![errors]({ERRORS_PNG})"], []))
    sats = _saturations(doc)
    rows = [["region", "op", "tensor", "channel", "float range", "int8 range", "witnessed"]]
    for s in sats:
        rows.append([str(s["region"]), s["op"], s["tensor"], str(s["channel"]),
                     f"[{s['float_low']:.4g}, {s['float_high']:.4g}]",
                     f"[{s['int8_low']:.4g}, {s['int8_high']:.4g}]",
                     "yes" if s["witnessed"] else "no"])
    out.append(("Saturating layers",
                ["Channels whose float values can leave the int8 range the device represents inside the "
                 "region (the main source of quantization error: widen the calibration data or the region it "
                 "covers)."
                 if sats else "No channel can leave its int8 range inside the region."],
                rows if sats else []))
    notes = doc.get("notes") or []
    if notes:
        out.append(("Notes", list(notes), []))
    vers = doc.get("versions") or {}
    out.append(("Versions", [", ".join(f"{k} {v}" for k, v in sorted(vers.items()))], []))
    return out


def markdown(doc: dict[str, Any], errors: np.ndarray) -> str:
    cfg = (doc.get("config") or {}).get("name", "?")
    lines = [f"# qassure report: {cfg} on {doc.get('target')}", ""]
    for title, paras, rows in sections(doc, errors):
        lines += [f"## {title}", ""]
        for p in paras:
            lines += [p, ""]
        if rows:
            lines.append("| " + " | ".join(rows[0]) + " |")
            lines.append("|" + "---|" * len(rows[0]))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
            lines.append("")
    return "\n".join(lines)


def _inline_md(s: str) -> str:
    import re

    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def html_page(doc: dict[str, Any], errors: np.ndarray) -> str:
    cfg = (doc.get("config") or {}).get("name", "?")
    title = f"qassure report: {cfg} on {doc.get('target')}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;}"
             "table{border-collapse:collapse;}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;}code{background:#f4f4f4;}</style>",
             "</head><body>", f"<h1>{html.escape(title)}</h1>"]
    for sec_title, paras, rows in sections(doc, errors):
        parts.append(f"<h2>{html.escape(sec_title)}</h2>")
        for p in paras:
            if p.startswith("![") and p.endswith(")"):
                src = p[p.index("(") + 1:-1]
                parts.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(src)}"></p>')
            else:
                parts.append(f"<p>{_inline_md(p)}</p>")
        if rows:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
            parts.append("</table>")
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def write(directory: Path, doc: dict[str, Any], errors: np.ndarray) -> list[str]:
    """Write report.md, report.html and the plots into `directory`; return the file names."""
    directory = Path(directory)
    files = _plots(directory, doc, errors)
    (directory / "report.md").write_text(markdown(doc, errors), encoding="utf-8")
    (directory / "report.html").write_text(html_page(doc, errors), encoding="utf-8")
    return [*files, "report.md", "report.html"]
