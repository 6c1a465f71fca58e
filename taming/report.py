"""The audit report: JSON with a versioned schema (DESIGN.md section 8), its HTML page and its figures."""

from __future__ import annotations

import base64
import io
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from rules.report_schema import Inputs, Report, Stopping, Timing

SET_LABELS = {
    "forget": "D_F: forgotten images",
    "forget_holdout": "D'_F: held-out images of the person",
    "remember": "D_R: remembered images",
    "remember_unseen": "D_R^id: identities never trained on",
    "remember_nearest": "D_R^NN: the nearest identities",
    "remember_holdout": "held-out images of remembered people",
}
FIGURE_CAPTIONS = {
    "samples": "Samples from the same latents before (left) and after (right) taming.",
    "nll_histogram": "NLL (bpd) of the remember set before and after; the forget images and the threshold.",
    "max_abs_d": "Largest |d| over the forget images at each iteration; the band is the tolerance epsilon.",
    "share": "Share of samples carrying the attribute at each measurement.",
    "generation": "The person in samples: top, the base model's samples most like the person; middle, the tamed "
                  "model's samples from the same latents; bottom, the tamed model's samples most like the person.",
}


def build_report(
    *,
    job: dict[str, Any],
    model: dict[str, Any],
    parameters: dict[str, Any],
    inputs: Inputs,
    stopping: Stopping,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    timing: Timing,
) -> Report:
    """The report of DESIGN.md section 8 (rules/report_schema.py), with the software that wrote it."""
    import sys

    import torch

    from taming import __version__

    software = {"name": "taming-service", "version": __version__, "torch": torch.__version__,
                "python": platform.python_version() or sys.version.split()[0]}
    return Report(job=job, model=model, parameters=parameters, inputs=inputs, stopping=stopping, metrics=metrics,
                  history=history, timing=timing, software=software)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number for people: scientific when tiny, '—' when absent."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The banner: was the confirmed criterion met, and where the forget images' quantiles ended."""
    stopping, metrics = report.get("stopping", {}), report.get("metrics", {})
    delta = report.get("parameters", {}).get("delta")
    target = 0.5 * math.erfc(delta / math.sqrt(2)) if isinstance(delta, int | float) else None
    forget_q = metrics.get("mean_quantile", {}).get("forget", {})
    certified = metrics.get("certificate", {}).get("mean_quantile_after")
    # the certificate's quantile (its own estimator and statistics) is what the verdict rests on
    q_b, q_t = forget_q.get("before"), certified if certified is not None else forget_q.get("after")
    # QD can never exceed q_B, so the share of q_B removed is the fair measure of forgetting
    removed = (q_b - q_t) / q_b if isinstance(q_b, float) and isinstance(q_t, float) and q_b > 0 else None
    return {
        "removed": removed,
        "met": bool(stopping.get("criterion_met")),
        "iterations": stopping.get("iterations"),
        "reason": stopping.get("reason"),
        "q_after": q_t,
        "q_before": q_b,
        "target": target,
        "delta": delta,
        "estimator": metrics.get("certificate", {}).get("estimator", "mean"),
    }


def _set_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    shifts = metrics.get("bpd_shift_sigma", {})
    for key, label in SET_LABELS.items():
        mq = metrics.get("mean_quantile", {}).get(key)
        if mq is None and key not in shifts:
            continue
        rows.append(
            {
                "label": label,
                "before": _fmt((mq or {}).get("before")),
                "after": _fmt((mq or {}).get("after")),
                "drop": _fmt(metrics.get("quantile_drop", {}).get(key)),
                "shift": _fmt(shifts.get(key), 2),
            }
        )
    return rows


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(typed: Report, figures: dict[str, bytes]) -> str:
    """A self-contained HTML page for the report: verdict, metrics, forget images, figures (PNG data URIs).

    Every text value is escaped by Jinja2's autoescape, so a subject_ref or file name cannot inject markup.
    """
    import jinja2

    report = typed.as_json()  # the page shows what the stored JSON holds

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["fmt"] = _fmt
    metrics = report.get("metrics", {})
    images = [
        {"name": name, "caption": FIGURE_CAPTIONS.get(name, name), "uri": _data_uri(png)}
        for name, png in figures.items()
    ]
    return env.get_template("report.html").render(
        r=report,
        verdict=_verdict(report),
        set_rows=_set_rows(metrics),
        metrics=metrics,
        forget=report.get("inputs", {}).get("forget", []),
        figures=images,
    )


# ---- figures -------------------------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _grid(images: Any) -> np.ndarray:
    """Model-space images [N, C, H, W] in [-0.5, 0.5] -> one uint8 mosaic [rows*H, cols*W(, C)]."""
    x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float64)
    x = np.clip(np.round((x + 0.5) * 255), 0, 255).astype(np.uint8)
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = x[i].transpose(1, 2, 0)
    return canvas[..., 0] if c == 1 else canvas


def _samples_figure(before: Any, after: Any) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.3))
    for ax, images, title in zip(fig.subplots(1, 2), (before, after), ("before", "after"), strict=True):
        grid = _grid(images)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{title} taming")
        ax.axis("off")
    return _png(fig)


def _histogram_figure(r_before: Any, r_after: Any, f_before: Any, f_after: Any, threshold: float) -> bytes:
    from matplotlib.figure import Figure

    r_before, r_after = np.asarray(r_before, dtype=float), np.asarray(r_after, dtype=float)
    f_before, f_after = np.asarray(f_before, dtype=float), np.asarray(f_after, dtype=float)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    values = np.concatenate([r_before, r_after, f_before, f_after, [threshold]])
    low, high = float(values.min()), float(values.max())
    pad = 0.5 if high - low < 1e-9 else 0.0  # all values equal: give the bins a width
    bins = np.linspace(low - pad, high + pad, 40).tolist()
    ax.hist(r_before, bins=bins, alpha=0.5, density=True, color="tab:blue", label="D_R before")
    ax.hist(r_after, bins=bins, alpha=0.5, density=True, color="tab:orange", label="D_R after")
    top = ax.get_ylim()[1]
    ax.scatter(
        f_before,
        np.full(len(f_before), 0.08 * top),
        marker="o",
        facecolors="none",
        edgecolors="tab:blue",
        label="D_F before",
        zorder=3,
    )
    ax.scatter(f_after, np.full(len(f_after), 0.16 * top), marker="x", color="tab:red", label="D_F after", zorder=3)
    ax.axvline(threshold, color="black", linestyle="--", label="threshold μ_R + δσ_R")
    ax.set_xlabel("NLL (bits per dimension)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _curve_figure(history: list[dict[str, Any]], key: str, ylabel: str, band_key: str) -> bytes | None:
    from matplotlib.figure import Figure

    points = [(h.get("iteration", i), h[key]) for i, h in enumerate(history) if h.get(key) is not None]
    if not points:
        return None
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    its, vals = zip(*points, strict=True)
    ax.plot(its, vals, color="tab:red", lw=1.5)
    band = next((h[band_key] for h in reversed(history) if h.get(band_key) is not None), None)
    if band is not None:
        if key == "max_abs_d":  # the stop rule's tolerance: every |d| inside the band
            ax.axhspan(0.0, band, color="tab:green", alpha=0.2)
        ax.axhline(band, color="tab:green", lw=1, linestyle="--", label=f"{band_key} = {band:.3g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _png(fig)


def make_figures(
    *,
    samples_before: Any,
    samples_after: Any,
    remember_bpd_before: Any,
    remember_bpd_after: Any,
    forget_bpd_before: Any,
    forget_bpd_after: Any,
    threshold: float,
    history: list[dict[str, Any]],
    strip: list[Any] | None = None,
) -> dict[str, bytes]:
    """PNG figures of a run, by name.

    samples_before/after: model-space images [N, C, H, W] in [-0.5, 0.5] drawn from the same latents.
    remember_bpd_*: bpd [N] of D_R; forget_bpd_*: bpd [K] of D_F; threshold: t = μ_R + δσ_R in bpd (tamed).
    history: per-iteration dicts; `max_abs_d` (and `epsilon`) give "max_abs_d", `share` (and `target_share`)
    give "share". Returns {"samples", "nll_histogram", "max_abs_d"?, "share"?} -> PNG bytes.
    """
    figures = {
        "samples": _samples_figure(samples_before, samples_after),
        "nll_histogram": _histogram_figure(
            remember_bpd_before, remember_bpd_after, forget_bpd_before, forget_bpd_after, float(threshold)
        ),
    }
    curves = {
        "max_abs_d": _curve_figure(history, "max_abs_d", "max |d| over D_F", "epsilon"),
        "share": _curve_figure(history, "share", "attribute share", "target_share"),
    }
    figures.update({k: v for k, v in curves.items() if v is not None})
    if strip:
        figures["generation"] = _strip_figure(strip)
    return figures


def _strip_figure(rows: list[Any]) -> bytes:
    """Rows of model-space images [n, C, H, W], one image strip per row."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.1 * len(rows) + 0.3))
    for ax, images, title in zip(fig.subplots(len(rows), 1, squeeze=False)[:, 0], rows,
                                 ("base: most like the person", "tamed: same latents", "tamed: most like the person"),
                                 strict=False):
        x = np.clip(np.round((np.asarray(images, dtype=np.float64) + 0.5) * 255), 0, 255).astype(np.uint8)
        strip = np.concatenate(list(x.transpose(0, 2, 3, 1)), axis=1)  # [H, n*W, C]
        ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    return _png(fig)
