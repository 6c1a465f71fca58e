"""One taming run from image sets to a tamed checkpoint and its audit reports.

The single entry point for the command line (`taming tame`) and the worker. Several erasure requests
for the same model can share one run: D_F is their union, each request's images are tracked apart,
and each request gets its own report pointing at the one new checkpoint.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taming.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from taming.data import DataError, FaceSet, quantize, screen
from taming.evaluate import discrete_likelihood, evaluate_sets, quantiles, sample_frechet
from taming.features import (
    Embedder,
    FeatureSpace,
    feature_space,
    load_embedder,
    nearest_identities,
    save_embedder,
)
from taming.glow import Glow
from taming.likelihood import mean_bpd
from taming.measure import SampleProbe, certificate, generation, negatives_for, probe_samples, strip_latents
from taming.report import build_report, make_figures, render_html
from taming.tame import StepInfo, TameConfig, TameResult, tame


@dataclass
class Request:
    """One erasure request inside a run: its forget images, optional held-out images, report metadata."""

    key: str  # the job id; keys the per-request reports
    forget: FaceSet
    holdout: FaceSet | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the report's "job" section


@dataclass
class Rebalance:
    """An attribute to rebalance: images with it (positive) and without (negative)."""

    positive: FaceSet
    negative: FaceSet
    target_share: float
    direction: str = "decrease"  # or "increase"


@dataclass
class PipelineResult:
    sha256: str  # of the tamed checkpoint written to out_checkpoint
    criterion_met: bool  # the confirmed verdict, for every request's images together
    iterations: int
    reports: dict[str, dict[str, Any]]  # request key -> JSON report (DESIGN.md section 8)
    html: dict[str, str]  # request key -> HTML report


@dataclass
class _Planned:
    """A request's forget images after screening, and where they sit in the run's D_F."""

    request: Request
    reasons: list[str | None]
    rows: slice  # this request's included images within D_F


def run_requests(
    base_checkpoint: Path,
    remember: FaceSet,
    requests: list[Request],
    config: TameConfig,
    out_checkpoint: Path,
    *,
    rebalance: Rebalance | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    device: str = "cpu",
    model_meta: dict[str, Any] | None = None,
    remember_holdout: FaceSet | None = None,
    unseen: FaceSet | None = None,
    cache_dir: Path | None = None,
) -> PipelineResult:
    """Tame the base checkpoint for `requests`, write the tamed checkpoint and one report per request.

    remember: the model's reference remember set; images of anyone being forgotten are left out of it.
    remember_holdout / unseen: optional held-out images of remembered people / of people never trained on
    (for the report; the forgotten people are left out of them the same way).
    Raises DataError when no forget image carries an identity.
    """
    started = time.perf_counter()
    base, meta = load_checkpoint(base_checkpoint)
    base.to(device)
    # on the model's whole reference set, so that one cached network serves every request for this model
    space = features_for(remember, cache_dir)
    space_key = remember.data_hash()  # the feature network's key: the whole reference set, people included
    if rebalance is not None:
        requests, remember, config = _rebalance_sets(requests, rebalance, config)
    else:
        remember = without_forgotten_people(remember, requests)
        if len(remember) < 2:
            raise DataError("the remember set has fewer than 2 images once the forgotten people are left out")
        # other people's photos are the yardstick of the report: the person must not be among them
        remember_holdout, unseen = (without_forgotten_people(s, requests) if s is not None else None
                                    for s in (remember_holdout, unseen))
    planned, forget_u8 = _plan(requests)
    share_fn, classifier = _share_fn(rebalance, base.config.in_channel) if rebalance else (None, None)
    near = _near_images(space, planned, remember) if rebalance is None and config.near_fraction > 0 else None
    n_bits = base.config.n_bits
    result = tame(copy.deepcopy(base), base, quantize(forget_u8, n_bits), quantize(remember.images, n_bits),
                  config, on_step=on_step, resume=resume_state, share_fn=share_fn, near=near)
    parent_sha = file_sha256(base_checkpoint)
    sha = save_checkpoint(result.model, out_checkpoint, data_hash=meta.get("data_hash", ""), parent=parent_sha)
    probe = None
    if rebalance is None and isinstance(space, Embedder):
        probe = probe_samples(base, result.model, space, f"{parent_sha[:16]}-{space_key[:16]}", cache_dir)
    common = _Common(base, result, config, remember, remember_holdout, unseen, space, sha,
                     {"parent_sha256": parent_sha, **(model_meta or {})},
                     device, started, sample_frechet(base, result.model, space, remember.images), probe)
    reports, html = {}, {}
    measured: dict[str, tuple[Tensor, Tensor]] = {}
    for plan in planned:
        report, figures = _report(plan, common, measured, rebalance, classifier)
        reports[plan.request.key] = report
        html[plan.request.key] = render_html(report, figures)
    return PipelineResult(sha, result.criterion_met, result.iterations, reports, html)


def _plan(requests: list[Request]) -> tuple[list[_Planned], Tensor]:
    """Screen every request's images (DESIGN.md section 4, step 9) and stack the included ones as D_F."""
    planned, chunks, start = [], [], 0
    for request in requests:
        reasons = screen(request.forget.images)
        keep = torch.tensor([r is None for r in reasons], dtype=torch.bool)
        chunks.append(request.forget.images[keep])
        planned.append(_Planned(request, reasons, slice(start, start + int(keep.sum()))))
        start += int(keep.sum())
    if start == 0:
        raise DataError("none of the forget images carries an identity (all nearly black or uniform)")
    return planned, torch.cat(chunks)


def _near_images(space: FeatureSpace, planned: list[_Planned], remember: FaceSet, k: int = 5) -> Tensor | None:
    """Indices into `remember` of the images of the k identities nearest to each request's person."""
    if (remember.identity < 0).all() or not isinstance(space, Embedder):
        return None
    people: set[int] = set()
    for plan in planned:
        included = plan.request.forget.subset(np.array([r is None for r in plan.reasons], dtype=bool))
        if len(included):
            people.update(nearest_identities(space, included.images, remember.images, remember.identity, k=k))
    return torch.from_numpy(np.flatnonzero(np.isin(remember.identity, sorted(people))))


def without_forgotten_people(faces: FaceSet, requests: list[Request]) -> FaceSet:
    """`faces` without anyone being forgotten (DESIGN.md section 4, step 8: D_R never holds them)."""
    return faces.subset(~forgotten_rows(faces, requests))


def forgotten_rows(faces: FaceSet, requests: list[Request]) -> np.ndarray:
    """Which images of `faces` belong to someone being forgotten (bool [N]).

    An image identical (after resizing) to an uploaded forget or held-out image marks its identity
    within `faces` as that person's: all of that identity's images leave, not just the matching ones.
    The worker's remember-set revisions (worker/remember_sets.py) leave out exactly these rows.
    """
    uploaded = [r.forget.images for r in requests] + [r.holdout.images for r in requests if r.holdout]
    keys = {img.numpy().tobytes() for batch in uploaded for img in batch}
    hit = np.array([img.numpy().tobytes() in keys for img in faces.images], dtype=bool)
    people = set(faces.identity[hit].tolist()) - {-1}
    return np.asarray(hit | np.isin(faces.identity, list(people)), dtype=bool)


def _rebalance_sets(requests: list[Request], rebalance: Rebalance,
                    config: TameConfig) -> tuple[list[Request], FaceSet, TameConfig]:
    """D_F is the side whose share must fall, D_R the other side (DESIGN.md section 4, rebalancing)."""
    if rebalance.direction not in ("decrease", "increase"):
        raise DataError(f"direction must be 'decrease' or 'increase', not {rebalance.direction!r}")
    lower, keep = ((rebalance.positive, rebalance.negative) if rebalance.direction == "decrease"
                   else (rebalance.negative, rebalance.positive))
    requests = [replace(r, forget=lower) for r in requests]
    return requests, keep, replace(config, target_share=rebalance.target_share, direction=rebalance.direction)


def features_for(remember: FaceSet, cache_dir: Path | None) -> FeatureSpace:
    """The project's own feature space for this remember set, trained once and cached by data hash."""
    path = cache_dir / f"features-{remember.data_hash()[:16]}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        return load_embedder(path)
    space = feature_space(remember.images, remember.identity)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_embedder(space, path)
    return space


def _share_fn(rebalance: Rebalance, channels: int) -> tuple[Callable[[Glow], float], Any]:
    """The attribute's share among 256 samples at temperature 0.7, from fixed latents."""
    from taming.features import train_attribute_classifier

    classifier = train_attribute_classifier(rebalance.positive.images, rebalance.negative.images)

    def share(model: Glow) -> float:
        return classifier.share(model.sample(256, temperature=0.7, seed=12345).cpu())

    return share, classifier


@dataclass
class _Common:
    """What every request's report shares."""

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
    frechet: dict[str, Any] = field(default_factory=dict)  # the same two models for every request
    probe: SampleProbe | None = None  # both models' sample embeddings, for the generation evidence


def _report(plan: _Planned, c: _Common, measured: dict[str, tuple[Tensor, Tensor]], rebalance: Rebalance | None,
            classifier: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    n_bits = c.base.config.n_bits
    request = plan.request
    included = request.forget.subset(np.array([r is None for r in plan.reasons], dtype=bool))
    sets = {"forget": included.images, "remember": c.remember.images}
    if request.holdout is not None and len(request.holdout):
        sets["forget_holdout"] = request.holdout.images
    for key, faces in (("remember_holdout", c.remember_holdout), ("remember_unseen", c.unseen)):
        if faces is not None and len(faces):
            sets[key] = faces.images
    nearest = _nearest(c, included) if rebalance is None else []
    if nearest:
        sets["remember_nearest"] = c.remember.select(nearest).images
    quantized = {k: quantize(v, n_bits) for k, v in sets.items()}
    evaluation = evaluate_sets(c.base, c.result.model, quantized, n_bits, sigma_r=c.result.sigma_r, measured=measured)
    measured.update({k: v for k, v in evaluation["bpd"].items() if k not in ("forget", "forget_holdout",
                                                                              "remember_nearest")})
    metrics = evaluation["metrics"]
    metrics["discrete_likelihood"] = discrete_likelihood(c.base, c.result.model, quantized, n_bits,
                                                         sigma_r=c.result.sigma_r)
    metrics["frechet_distance"] = c.frechet
    metrics["nearest_identities"] = nearest
    metrics["certificate"] = certificate(c.result, c.config, plan.rows)
    if c.probe is not None and isinstance(c.space, Embedder) and len(included):
        negatives = negatives_for(c.remember_holdout, c.unseen, c.remember)
        metrics["generation"] = generation(c.probe, c.space, included, request.holdout, c.remember,
                                           negatives).to_dict()
    if rebalance is not None:
        metrics["attribute_share"] = _shares(c, classifier, rebalance)
    forget_items = _forget_items(plan, c, evaluation)
    report = build_report(
        job=request.meta,
        model={**c.model_meta, "new_sha256": c.sha256},
        parameters=_parameters(c.config),
        inputs={"forget": forget_items,
                "holdout": [{"sha256": h} for h in (request.holdout.sha256 if request.holdout else [])]},
        stopping={"criterion_met": c.result.criterion_met, "iterations": c.result.iterations,
                  "max_abs_d": max((abs(i["d"]) for i in forget_items if not i["excluded"]), default=0.0),
                  "reason": c.result.reason, "epsilon": c.config.eps, "estimator": c.config.estimator,
                  "draws": c.config.confirm_draws},
        metrics=metrics,
        history=c.result.history,
        timing=_timing(c),
    )
    return report, _figures(c, evaluation, metrics.get("generation"))


def _nearest(c: _Common, included: FaceSet) -> list[int]:
    if (c.remember.identity < 0).all() or not isinstance(c.space, Embedder):
        return []  # nearest *identities* need identities and a face embedding, not pixel PCA
    return nearest_identities(c.space, included.images, c.remember.images, c.remember.identity, k=5)


def _forget_items(plan: _Planned, c: _Common, evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """One item per uploaded forget image: bpd and quantile before/after, final d, exclusion reason."""
    n_bits = c.base.config.n_bits
    per = evaluation["per_image"]["forget"]
    ref = evaluation["reference"]["remember"]
    d = c.result.d[plan.rows]
    items, j = [], 0
    for i, reason in enumerate(plan.reasons):
        item: dict[str, Any] = {"sha256": plan.request.forget.sha256[i], "name": plan.request.forget.names[i],
                                "excluded": reason is not None, "reason": reason}
        if reason is None:
            item.update(bpd_before=float(per["bpd_before"][j]), bpd_after=float(per["bpd_after"][j]),
                        quantile_before=float(per["quantile_before"][j]),
                        quantile_after=float(per["quantile_after"][j]), d=float(d[j]))
            j += 1
        else:
            x = quantize(plan.request.forget.images[i : i + 1], n_bits)
            before, after = mean_bpd(c.base, x, n_bits), mean_bpd(c.result.model, x, n_bits)
            item.update(bpd_before=float(before[0]), bpd_after=float(after[0]),
                        quantile_before=float(quantiles(before, ref["base"]["mu"], ref["base"]["sigma"])[0]),
                        quantile_after=float(quantiles(after, ref["tamed"]["mu"], ref["tamed"]["sigma"])[0]),
                        d=None)
        items.append(item)
    return items


def _shares(c: _Common, classifier: Any, rebalance: Rebalance) -> dict[str, float]:
    before = classifier.share(c.base.sample(256, temperature=0.7, seed=12345).cpu())
    after = classifier.share(c.result.model.sample(256, temperature=0.7, seed=12345).cpu())
    return {"before": before, "after": after, "target": rebalance.target_share}


def _parameters(config: TameConfig) -> dict[str, Any]:
    """Every knob of the run, the method's name first (DESIGN.md section 8 `parameters`)."""
    return {"method": config.method, **config.to_dict()}


def _timing(c: _Common) -> dict[str, Any]:
    wall = time.perf_counter() - c.started
    tame_s = c.result.wall_seconds
    return {"wall_seconds": wall, "tame_seconds": tame_s,
            "iterations_per_second": c.result.iterations / tame_s if tame_s > 0 else None,
            "device": c.device if c.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})"}


def _figures(c: _Common, evaluation: dict[str, Any], gen: dict[str, Any] | None) -> dict[str, bytes]:
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


def _strip(c: _Common, gen: dict[str, Any]) -> list[Tensor]:
    """Rows of the generation strip: the base model's samples most like the person, the tamed model's samples
    from the same latents, and the tamed model's samples most like the person."""
    assert c.probe is not None
    before = strip_latents(c.base, c.probe, gen["nearest_before"])
    after = strip_latents(c.base, c.probe, gen["nearest_after"])
    return [c.base.sample(len(before[0]), z=before).cpu(), c.result.model.sample(len(before[0]), z=before).cpu(),
            c.result.model.sample(len(after[0]), z=after).cpu()]
