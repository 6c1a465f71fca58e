"""The reports of one taming run: for each request, the paper's evaluation, the certificate, the discrete-likelihood
check, the generation evidence and the figures (DESIGN.md section 8). `taming.pipeline.run_requests` builds a
`RunContext` once per run and calls `report_for` for each request.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rules.report_schema import ForgetItem, Inputs, Report, Stopping, Timing
from taming.data import FaceSet, quantize
from taming.evaluate import BaseCache, discrete_likelihood, evaluate_sets, quantiles
from taming.features import Embedder, FeatureSpace, nearest_identities
from taming.glow import Glow
from taming.likelihood import mean_bpd
from taming.measure import SampleProbe, certificate, generation, negatives_for, strip_latents
from taming.report import build_report, make_figures
from taming.requests import Planned, Rebalance
from taming.tame import TameConfig, TameResult


class Stages:
    """Seconds spent in each stage of a run (the report's `timing.stages`), summed over repeated entries."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


@dataclass
class RunContext:
    """What every request's report in one run shares."""

    base: Glow
    result: TameResult
    config: TameConfig
    remember: FaceSet
    remember_holdout: FaceSet | None
    unseen: FaceSet | None
    space: FeatureSpace
    sha256: str
    model_meta: dict[str, Any]
    device: str
    started: float
    stages: Stages
    frechet: dict[str, Any] = field(default_factory=dict)  # the same two models for every request
    probe: SampleProbe | None = None  # both models' sample embeddings, for the generation evidence
    base_cache: BaseCache | None = None  # the base model's figures of images measured for this version before
    precision: str = "fp32"  # taming.precision.Precision.describe()
    next_cache: BaseCache | None = None  # receives the tamed model's: the base figures of the version it becomes
    gone: list[FaceSet] = field(default_factory=list)  # the forgotten people's images: their cached figures go


def report_for(plan: Planned, c: RunContext, measured: dict[str, tuple[Tensor, Tensor]], rebalance: Rebalance | None,
               classifier: Any) -> tuple[Report, dict[str, bytes]]:
    """One request's JSON report and its figures. `measured` carries the shared sets' bpd between requests."""
    request, included = plan.request, plan.included()
    nearest = _nearest(c, included) if rebalance is None else []
    quantized = _sets(c, plan, included, nearest)
    with c.stages("evaluation"):
        evaluation = evaluate_sets(c.base, c.result.model, quantized, c.base.config.n_bits, sigma_r=c.result.sigma_r,
                                   measured=measured, base_cache=c.base_cache,
                                   tamed_cache=c.next_cache)
    measured.update({k: v for k, v in evaluation["bpd"].items()
                     if k not in ("forget", "forget_holdout", "remember_nearest")})
    metrics = _metrics(c, plan, evaluation, quantized, nearest, rebalance, classifier)
    forget_items = _forget_items(plan, c, evaluation)
    report = build_report(
        job=request.meta,
        model={**c.model_meta, "new_sha256": c.sha256},
        parameters=_parameters(c.config),
        inputs=Inputs(forget=forget_items,
                      holdout=[{"sha256": h} for h in (request.holdout.sha256 if request.holdout else [])]),
        stopping=Stopping(criterion_met=c.result.criterion_met, iterations=c.result.iterations,
                          max_abs_d=max((abs(i.d) for i in forget_items if i.d is not None), default=0.0),
                          reason=c.result.reason, epsilon=c.config.eps, estimator=c.config.estimator,
                          draws=c.config.confirm_draws),
        metrics=metrics,
        history=c.result.history,
        timing=_timing(c),
    )
    with c.stages("figures"):
        figures = _figures(c, evaluation, metrics.get("generation"))
        if rebalance is not None and metrics["attribute_share"]["trace"]:
            from taming.rebalance_report import share_figure

            share = metrics["attribute_share"]
            figures["share"] = share_figure(share["trace"], share["target"], share["before"])
    return report, figures


def _sets(c: RunContext, plan: Planned, included: FaceSet, nearest: list[int]) -> dict[str, Tensor]:
    """The request's image sets by report name (DESIGN.md section 8), quantized."""
    request = plan.request
    sets = {"forget": included.images, "remember": c.remember.images}
    if request.holdout is not None and len(request.holdout):
        sets["forget_holdout"] = request.holdout.images
    for key, faces in (("remember_holdout", c.remember_holdout), ("remember_unseen", c.unseen)):
        if faces is not None and len(faces):
            sets[key] = faces.images
    if nearest:
        sets["remember_nearest"] = c.remember.select(nearest).images
    return {k: quantize(v, c.base.config.n_bits) for k, v in sets.items()}


def _metrics(c: RunContext, plan: Planned, evaluation: dict[str, Any], quantized: dict[str, Tensor],
             nearest: list[int], rebalance: Rebalance | None, classifier: Any) -> dict[str, Any]:
    """`metrics` of the report: the evaluation's, then the checks beyond the paper's."""
    metrics = evaluation["metrics"]
    # which reference set gave each set its quantiles, and its mu, sigma (the verify service reuses them)
    metrics["quantile_reference"] = evaluation["reference_of"]
    metrics["reference_stats"] = evaluation["reference"]
    with c.stages("discrete_check"):
        metrics["discrete_likelihood"] = discrete_likelihood(c.base, c.result.model, quantized, c.base.config.n_bits,
                                                             sigma_r=c.result.sigma_r)
    metrics["frechet_distance"] = c.frechet
    metrics["nearest_identities"] = nearest
    metrics["certificate"] = certificate(c.result, c.config, plan.rows)
    included = plan.included()
    if c.probe is not None and isinstance(c.space, Embedder) and len(included):
        with c.stages("generation"):
            negatives = negatives_for(c.remember_holdout, c.unseen, c.remember)
            metrics["generation"] = generation(c.probe, c.space, included, plan.request.holdout, c.remember,
                                               negatives).to_dict()
    if rebalance is not None:
        metrics["attribute_share"] = _shares(c, classifier, rebalance)
        per = evaluation["per_image"]["forget"]
        metrics["bpd_forget"] = {"before": float(per["bpd_before"].mean()), "after": float(per["bpd_after"].mean())}
    return metrics


def _nearest(c: RunContext, included: FaceSet) -> list[int]:
    if (c.remember.identity < 0).all() or not isinstance(c.space, Embedder):
        return []  # nearest *identities* need identities and a face embedding, not pixel PCA
    return nearest_identities(c.space, included.images, c.remember.images, c.remember.identity, k=5)


def _forget_items(plan: Planned, c: RunContext, evaluation: dict[str, Any]) -> list[ForgetItem]:
    """One item per uploaded forget image: bpd and quantile before/after, final d, exclusion reason."""
    n_bits = c.base.config.n_bits
    per = evaluation["per_image"]["forget"]
    ref = evaluation["reference"]["remember"]
    d = c.result.d[plan.rows]
    items, j = [], 0
    for i, reason in enumerate(plan.reasons):
        named: dict[str, Any] = {"sha256": plan.request.forget.sha256[i], "name": plan.request.forget.names[i],
                                 "excluded": reason is not None, "reason": reason}
        if reason is None:
            items.append(ForgetItem(**named, bpd_before=float(per["bpd_before"][j]),
                                    bpd_after=float(per["bpd_after"][j]),
                                    quantile_before=float(per["quantile_before"][j]),
                                    quantile_after=float(per["quantile_after"][j]), d=float(d[j])))
            j += 1
            continue
        x = quantize(plan.request.forget.images[i : i + 1], n_bits)
        before, after = mean_bpd(c.base, x, n_bits), mean_bpd(c.result.model, x, n_bits)
        items.append(ForgetItem(**named, bpd_before=float(before[0]), bpd_after=float(after[0]),
                                quantile_before=float(quantiles(before, ref["base"]["mu"], ref["base"]["sigma"])[0]),
                                quantile_after=float(quantiles(after, ref["tamed"]["mu"], ref["tamed"]["sigma"])[0]),
                                d=None))
    return items


def _shares(c: RunContext, shares: Any, rebalance: Rebalance) -> dict[str, Any]:
    """The corrected shares before and after with their intervals (taming.rebalance.ShareRun.section)."""
    return dict(shares.section(c.base, c.result.model, c.space))


def _parameters(config: TameConfig) -> dict[str, Any]:
    """Every knob of the run, the method's name first (DESIGN.md section 8 `parameters`)."""
    return {"method": config.method, **config.to_dict()}


def _timing(c: RunContext) -> Timing:
    wall = time.perf_counter() - c.started
    tame_s = c.result.wall_seconds
    return Timing(wall_seconds=wall, tame_seconds=tame_s, confirm_seconds=c.result.confirm_seconds,
                  confirmations=c.result.confirmations, screened=c.result.screened,
                  stages=dict(c.stages.seconds),
                  iterations_per_second=c.result.iterations / tame_s if tame_s > 0 else None,
                  device=c.device if c.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
                  precision=c.precision)


def _figures(c: RunContext, evaluation: dict[str, Any], gen: dict[str, Any] | None) -> dict[str, bytes]:
    per = evaluation["per_image"]
    latents = c.base.latents(16, 0.7, seed=0)
    history = [{**h, "epsilon": c.config.eps} for h in c.result.history]
    return make_figures(
        samples_before=c.base.sample(16, z=latents).cpu(),
        samples_after=c.result.model.sample(16, z=latents).cpu(),
        remember_bpd_before=per["remember"]["bpd_before"], remember_bpd_after=per["remember"]["bpd_after"],
        forget_bpd_before=per["forget"]["bpd_before"], forget_bpd_after=per["forget"]["bpd_after"],
        threshold=c.result.mu_r + c.config.delta * c.result.sigma_r,
        history=history,
        strip=_strip(c, gen) if gen is not None else None,
    )


def _strip(c: RunContext, gen: dict[str, Any]) -> list[Tensor]:
    """Rows of the generation strip: the base model's samples most like the person, the tamed model's samples
    from the same latents, and the tamed model's samples most like the person."""
    assert c.probe is not None
    before = strip_latents(c.base, c.probe, gen["nearest_before"])
    after = strip_latents(c.base, c.probe, gen["nearest_after"])
    return [c.base.sample(len(before[0]), z=before).cpu(), c.result.model.sample(len(before[0]), z=before).cpu(),
            c.result.model.sample(len(after[0]), z=after).cpu()]
