"""The report of a rebalance: the share before, after and every 10 iterations with its 95% interval, a figure of
the share over iterations, a before/after grid of the same latents, and the BPD of both sides.

The JSON keeps the names scripts rely on (DESIGN.md section 8): `stopping.criterion_met` (the share's interval
reached the target), `stopping.iterations`, `metrics.attribute_share.{before, after, target}` (the corrected
shares), `metrics.bpd_remember.{before, after}`, `history`, `timing.wall_seconds`.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from rules.report_schema import Report, Stopping, Timing
from taming.rebalance import RebalanceResult
from taming.report import _data_uri, _png, _samples_figure


def share_section(result: RebalanceResult) -> dict[str, Any]:
    """metrics.attribute_share: corrected point shares, their intervals, and the measurement behind them."""
    return {"before": result.before.share, "after": result.after.share, "target": result.target,
            "before_interval": [result.before.low, result.before.high],
            "after_interval": [result.after.low, result.after.high],
            "observed_before": result.before.observed, "observed_after": result.after.observed,
            "samples": result.after.samples, "temperature": result.after.temperature, "seed": result.after.seed,
            "estimator": "Rogan-Gladen, 95% delta-method interval (samples and the classifier's error rates)",
            "direction": result.direction, "strategy": result.strategy, "reached": result.reached,
            "trace": result.trace}


def build(result: RebalanceResult, *, classifier: dict[str, Any], parameters: dict[str, Any],
          job: dict[str, Any], model: dict[str, Any], wall_seconds: float) -> Report:
    """The report of one rebalance run (rules/report_schema.py, with the classifier that measured the share)."""
    import platform

    import torch

    from taming import __version__

    bpd = result.bpd
    return Report(
        job={"kind": "rebalance_attribute", **job}, model=model, parameters=parameters, classifier=classifier,
        stopping=Stopping(criterion_met=result.reached, iterations=result.iterations, reason=result.reason),
        metrics={"attribute_share": share_section(result), "bpd_remember": bpd.get("remember", {}),
                 "bpd_forget": bpd.get("forget", {}), "identity_kept": result.identity_kept},
        history=result.tame.history,
        timing=Timing(wall_seconds=wall_seconds, tame_seconds=result.tame.wall_seconds,
                      iterations_per_second=result.iterations / max(1e-9, result.tame.wall_seconds)),
        software={"name": "taming-service", "version": __version__, "torch": torch.__version__,
                  "python": platform.python_version()},
    )


def share_figure(trace: list[dict[str, Any]], target: float, before: float | None = None) -> bytes:
    """The corrected share at each measurement with its 95% band, and the target."""
    from matplotlib.figure import Figure

    its = np.array([t["iteration"] for t in trace], dtype=float)
    share = np.array([t["share"] for t in trace], dtype=float)
    low, high = np.array([t["low"] for t in trace]), np.array([t["high"] for t in trace])
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.fill_between(its, low, high, color="#9ab7e0", alpha=0.5, label="95% interval")
    ax.plot(its, share, "o-", color="#1f4e99", label="corrected share")
    ax.axhline(target, color="#b3261e", ls="--", label=f"target {target:.3f}")
    if before is not None:
        ax.axhline(before, color="#5b6475", ls=":", label=f"before {before:.3f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("share with the attribute")
    ax.set_ylim(0, max(1e-3, float(np.nanmax(np.r_[high, target])) * 1.1))
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def figures(result: RebalanceResult, n: int = 16) -> dict[str, bytes]:
    """{"share": the share over iterations, "samples": the same latents before and after}."""
    out = {"share": share_figure(result.trace, result.target, result.before.share)}
    if result.samples_before is not None and result.samples_after is not None:
        out["samples"] = _samples_figure(result.samples_before[:n], result.samples_after[:n])
    return out


def _row(name: str, *cells: str) -> str:
    return "<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def render(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """A self-contained HTML page of the report."""
    m, stop = report["metrics"], report["stopping"]
    share, acc = m["attribute_share"], report.get("classifier", {})

    def interval(key: str) -> str:
        lo, hi = share[f"{key}_interval"]
        return f"{share[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [_row("attribute share (corrected, 95% interval)", interval("before"), interval("after")),
            _row("observed share (uncorrected)", f"{share['observed_before']:.3f}", f"{share['observed_after']:.3f}")]
    for side in ("remember", "forget"):
        b = m.get(f"bpd_{side}") or {}
        if b:
            rows.append(_row(f"BPD of the {side} side", f"{b['before']:.4f}", f"{b['after']:.4f} "
                                                                           f"({100 * b['change']:+.2f} %)"))
    if m.get("identity_kept") is not None:
        rows.append(_row("samples keeping their identity", "", f"{100 * m['identity_kept']:.1f} %"))
    trace = "".join(_row(str(int(t["iteration"])), f"{t['share']:.3f}", f"[{t['low']:.3f}, {t['high']:.3f}]")
                    for t in share["trace"])
    figs = "".join(f'<figure><img src="{_data_uri(png)}" alt="{k}"><figcaption>{html.escape(CAPTIONS[k])}'
                   f"</figcaption></figure>" for k, png in pngs.items())
    verdict = "reached" if stop["criterion_met"] else "NOT reached"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Rebalance report</title>"
            f"<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:auto;padding:20px}}"
            f"td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style></head><body>"
            f"<h1>Rebalance: {html.escape(share['direction'])} ({html.escape(share['strategy'])})</h1>"
            f"<p><b>Target {share['target']:.3f} {verdict}</b>: {html.escape(stop['reason'])}.</p>"
            f"<p>Classifier: by-person accuracy {acc.get('accuracy', float('nan')):.3f}, sensitivity "
            f"{acc.get('sensitivity', float('nan')):.3f}, specificity {acc.get('specificity', float('nan')):.3f}. "
            f"Shares among {share['samples']} samples at temperature {share['temperature']} from fixed latents "
            f"(seed {share['seed']}); {html.escape(share['estimator'])}.</p>"
            f"<table><tr><th></th><th>before</th><th>after</th></tr>{''.join(rows)}</table>"
            f"{figs}<h2>Share every {report['parameters'].get('share_every', 10)} iterations</h2>"
            f"<table><tr><th>iteration</th><th>share</th><th>95% interval</th></tr>{trace}</table></body></html>")


CAPTIONS = {"share": "Corrected share of samples with the attribute at each measurement, its 95% interval, "
                     "the target and the share before.",
            "samples": "The same latents before (left) and after (right) the rebalance."}
