"""One taming run from image sets to a tamed checkpoint and its audit reports.

The single entry point for the command line (`taming tame`) and the worker. Several erasure requests
for the same model can share one run: D_F is their union, each request's images are tracked apart,
and each request gets its own report pointing at the one new checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rules.report_schema import Report
from taming.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from taming.data import DataError, FaceSet, quantize, screen
from taming.evaluate import BaseCache, sample_frechet, warm_base_cache
from taming.features import (
    Embedder,
    FeatureSpace,
    feature_space,
    load_embedder,
    nearest_identities,
    save_embedder,
)
from taming.glow import Glow
from taming.likelihood import image_keys
from taming.measure import probe_samples
from taming.precision import Precision
from taming.report import render_html
from taming.requests import Planned, Rebalance, Request, RequestProblem, request_problem
from taming.run_report import RunContext, Stages, report_for
from taming.stop import StopToken
from taming.tame import StepInfo, TameConfig, TameResult, tame

FEATURES_VERSION = "v2"  # bumped whenever the feature network's recipe changes, so no stale network is reused


@dataclass
class PipelineResult:
    sha256: str  # of the tamed checkpoint written to out_checkpoint
    criterion_met: bool  # the confirmed verdict, for every request's images together
    iterations: int
    reports: dict[str, Report]  # request key -> the report (DESIGN.md section 8; `.as_json()` is what is stored)
    html: dict[str, str]  # request key -> HTML report
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage of the run (bench/job_profile.py)
    stopped: bool = False  # ended early by its StopToken: nothing was written


def _load(checkpoint: Path, remember: FaceSet, device: str, cache_dir: Path | None, stages: Stages,
          phase: Callable[[str], None]) -> tuple[Glow, dict[str, Any], Any]:
    """The base model and the feature network (trained on the whole reference set, cached per model)."""
    phase("loading")
    with stages("loading"):
        base, meta = load_checkpoint(checkpoint)
        base.to(device)
    phase("features")
    with stages("features"):
        space = features_for(remember, cache_dir)
    return base, meta, space


def _prepare(base: Glow, precision: Precision) -> Glow:
    """The model to tame: a copy of the base, both prepared for the run's precision."""
    precision.configure()
    tamed = precision.prepare(copy.deepcopy(base))  # after the copy: a copy of a compiled module is not compiled
    precision.prepare(base)
    return tamed


def _samples(base: Glow, tamed: Glow, space: Any, key: str, remember: FaceSet, erasure: bool,
             cache_dir: Path | None, stages: Stages) -> tuple[Any, Any]:
    """The generation probe (erasures with an identity embedding) and the samples' Fréchet distance."""
    with stages("samples"):
        probe = probe_samples(base, tamed, space, key, cache_dir) if erasure and isinstance(space, Embedder) else None
    with stages("frechet"):
        frechet = sample_frechet(base, tamed, space, remember.images)
    return probe, frechet


def _reports(planned: list[Planned], context: RunContext, rebalance: Rebalance | None, shares: Any,
             phase: Callable[[str], None]) -> tuple[dict[str, Report], dict[str, str]]:
    """Each request's JSON report and HTML page (the shared sets measured once)."""
    reports, figures = {}, {}
    measured: dict[str, tuple[Tensor, Tensor]] = {}
    for plan in planned:
        reports[plan.request.key], figures[plan.request.key] = report_for(plan, context, measured, rebalance,
                                                                          shares)
    gone = [image_keys(quantize(faces.images, context.base.config.n_bits)) for faces in context.gone]
    for cache in (context.base_cache, context.next_cache):
        if cache is not None:
            for keys in gone:
                cache.drop(keys)
            cache.save()
    phase("reporting")
    with context.stages("html"):
        html = {key: render_html(report, figures[key]) for key, report in reports.items()}
    return reports, html


def run_requests(
    base_checkpoint: Path, remember: FaceSet, requests: list[Request], config: TameConfig, out_checkpoint: Path,
    *,
    rebalance: Rebalance | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    device: str = "cpu",
    model_meta: dict[str, Any] | None = None,
    remember_holdout: FaceSet | None = None,
    unseen: FaceSet | None = None,
    cache_dir: Path | None = None,
    on_phase: Callable[[str], None] | None = None,
    precision: Precision | None = None,
    stop: StopToken | None = None,
) -> PipelineResult:
    """Tame the base checkpoint for `requests`, write the tamed checkpoint and one report per request.

    remember: the reference remember set; remember_holdout / unseen: optional held-out photos of remembered people /
    photos of people never trained on, for the report (anyone being forgotten leaves all three). on_phase(name)
    hears each phase as it starts: loading, features, taming, confirming (and back to taming when a stop is not
    confirmed), evaluating, reporting. precision: taming.precision; None: strict fp32. Raises RequestProblem (a
    DataError naming the request) when one request's images carry no identity. `stop` (taming.stop) ends the run
    early: the result is marked `stopped`, with no checkpoint and no report."""
    started, stages, phase = time.perf_counter(), Stages(), on_phase or (lambda _name: None)
    base, meta, space = _load(base_checkpoint, remember, device, cache_dir, stages, phase)
    space_key = remember.data_hash()  # the feature network's key: the whole reference set, people included
    if rebalance is not None:
        requests, remember, config = _rebalance_sets(requests, rebalance, config)
    else:  # everyone being forgotten leaves the report's other sets
        reference = remember
        remember, remember_holdout, unseen = _others(remember, remember_holdout, unseen, requests)
    planned, forget_u8 = _plan(requests)
    shares = _share_run(rebalance, base, config.share_rule) if rebalance else None
    near = _near_images(space, planned, remember) if rebalance is None and config.near_fraction > 0 else None
    tamed = _prepare(base, precision := precision or Precision())
    result = _loop(tamed, base, forget_u8, remember, config, shares, near, stages, phase,
                   on_step=_with_shares(on_step, shares), resume=resume_state, stop=stop)
    if result.stopped:
        return PipelineResult("", False, result.iterations, {}, {}, stages.seconds, stopped=True)
    phase("evaluating")
    sha, parent_sha = _save(result.model, base_checkpoint, out_checkpoint, meta)
    probe, frechet = _samples(base, result.model, space, f"{parent_sha[:16]}-{space_key[:16]}", remember,
                              rebalance is None, cache_dir, stages)
    context = RunContext(base, result, config, remember, remember_holdout, unseen, space, sha,
                         {"parent_sha256": parent_sha, **(model_meta or {})}, device, started, stages, frechet,
                         probe, _base_cache(cache_dir, parent_sha), precision.describe(), _base_cache(cache_dir, sha),
                         gone=_gone(reference, remember, requests) if rebalance is None else [])
    reports, html = _reports(planned, context, rebalance, shares, phase)
    return PipelineResult(sha, result.criterion_met, result.iterations, reports, html, stages.seconds)


def _gone(reference: FaceSet, remember: FaceSet, requests: list[Request]) -> list[FaceSet]:
    """The images of the people being forgotten: the requests' photos and the reference set's images of them."""
    left = set(remember.sha256)
    removed = reference.subset(np.array([h not in left for h in reference.sha256], dtype=bool))
    return [removed, *(r.forget for r in requests), *(r.holdout for r in requests if r.holdout is not None)]


def _base_cache(cache_dir: Path | None, sha256: str) -> BaseCache | None:
    """The figures of the checkpoint with this hash as a base model (taming.evaluate.BaseCache), kept on disk."""
    return BaseCache(cache_dir / f"base-bpd-{sha256[:16]}.npz") if cache_dir else None


def _loop(tamed: Glow, base: Glow, forget_u8: Tensor, remember: FaceSet, config: TameConfig, shares: Any,
          near: Tensor | None, stages: Stages, phase: Callable[[str], None], *,
          on_step: Callable[[StepInfo], None] | None,
          resume: dict[str, Any] | None, stop: StopToken | None) -> TameResult:
    """The taming loop on the run's sets, quantized to the model's bits."""
    phase("taming")
    n_bits = base.config.n_bits
    with stages("taming"):
        return tame(tamed, base, quantize(forget_u8, n_bits), quantize(remember.images, n_bits), config,
                    share_fn=shares.share_fn if shares else None, near=near, on_phase=phase,
                    share_stop=shares.stop if shares else None, on_step=on_step, resume=resume, stop=stop)


def _save(tamed: Glow, base_checkpoint: Path, out_checkpoint: Path, meta: dict[str, Any]) -> tuple[str, str]:
    """The tamed checkpoint written with its parent's hash: (its SHA-256, the parent's)."""
    parent_sha = file_sha256(base_checkpoint)
    return save_checkpoint(tamed, out_checkpoint, data_hash=meta.get("data_hash", ""), parent=parent_sha), parent_sha


def _others(remember: FaceSet, remember_holdout: FaceSet | None, unseen: FaceSet | None,
            requests: list[Request]) -> tuple[FaceSet, FaceSet | None, FaceSet | None]:
    """D_R and the report's sets of other people, without anyone being forgotten (DESIGN.md section 4, step 8):
    other people's photos are the yardstick of the report, so the person must not be among them either."""
    remember = without_forgotten_people(remember, requests)
    if len(remember) < 2:
        raise DataError("the remember set has fewer than 2 images once the forgotten people are left out")
    holdout, never = (without_forgotten_people(s, requests) if s is not None else None
                      for s in (remember_holdout, unseen))
    return remember, holdout, never


def _plan(requests: list[Request]) -> tuple[list[Planned], Tensor]:
    """Screen every request's images (DESIGN.md section 4, step 9) and stack the included ones as D_F.

    A request none of whose images carries an identity raises RequestProblem naming it, before any step:
    it must fail alone, not leave a request with no rows in D_F for its report to trip over."""
    planned, chunks, start = [], [], 0
    for request in requests:
        problem = request_problem(request)
        if problem is not None:
            raise RequestProblem(request.key, problem)
        reasons = screen(request.forget.images)
        keep = torch.tensor([r is None for r in reasons], dtype=torch.bool)
        chunks.append(request.forget.images[keep])
        planned.append(Planned(request, reasons, slice(start, start + int(keep.sum()))))
        start += int(keep.sum())
    if start == 0:
        raise DataError("none of the forget images carries an identity (all nearly black or uniform)")
    return planned, torch.cat(chunks)


def _near_images(space: FeatureSpace, planned: list[Planned], remember: FaceSet, k: int = 5) -> Tensor | None:
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
    """D_F is the side pushed (taming.rebalance.sides), D_R the other side (DESIGN.md section 4, rebalancing)."""
    from taming.rebalance import run_config, sides

    try:
        chosen = sides(rebalance.positive, rebalance.negative, rebalance.direction, rebalance.strategy)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    requests = [replace(r, forget=chosen.forget) for r in requests]
    return requests, chosen.remember, run_config(config, chosen, rebalance.target_share, rebalance.direction)


def prepare_version(checkpoint: Path, remember: FaceSet, cache_dir: Path, *others: FaceSet | None) -> None:
    """What every job on this version would otherwise measure first, measured once into `cache_dir`: the feature
    network (once per model) and the base model's figures of the reference sets (remember and `others`, e.g. the
    remember holdout and unseen people)."""
    features_for(remember, cache_dir)
    base, _ = load_checkpoint(checkpoint)
    n_bits = base.config.n_bits
    sets = {str(i): quantize(faces.images, n_bits) for i, faces in enumerate((remember, *others)) if faces is not None}
    cache = _base_cache(cache_dir, file_sha256(checkpoint))
    assert cache is not None
    warm_base_cache(base, sets, n_bits, cache)
    cache.save()


def features_for(remember: FaceSet, cache_dir: Path | None) -> FeatureSpace:
    """The project's own feature space for this remember set, trained once and cached by data hash."""
    path = cache_dir / f"features-{FEATURES_VERSION}-{remember.data_hash()[:16]}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        return load_embedder(path)
    space = feature_space(remember.images, remember.identity)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_embedder(space, path)
    return space


def _share_run(rebalance: Rebalance, base: Glow, rule: str) -> Any:
    """The run's share meter: the stored classifier (or one trained and measured by person here), refused before
    any taming when its by-person accuracy is below 75%."""
    from taming.attribute import MIN_ACCURACY, fit_classifier, load_classifier
    from taming.rebalance import ShareRun
    from taming.share import ShareMeter

    if rebalance.classifier_path is not None:
        try:
            classifier = load_classifier(rebalance.classifier_path)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    else:
        classifier = fit_classifier(rebalance.positive, rebalance.negative)
    acc = classifier.accuracy
    if acc is None or not classifier.usable():
        shown = "unmeasured" if acc is None else f"{acc.accuracy:.1%} (grouped by {acc.grouping})"
        raise DataError(f"the attribute classifier's by-person accuracy is {shown}, below {MIN_ACCURACY:.0%}: "
                        "it cannot tell the classes apart on unseen people")
    meter = ShareMeter.for_model(base, classifier.predict, acc.error_rates(), rebalance.samples,
                                 rebalance.temperature)
    shares = ShareRun(meter, rebalance.target_share, rebalance.direction, rule=rule)
    shares.classifier = classifier
    return shares


def _with_shares(on_step: Callable[[StepInfo], None] | None, shares: Any) -> Callable[[StepInfo], None] | None:
    """on_step that also tells the share run the loop's iteration."""
    if shares is None:
        return on_step

    def step(info: StepInfo) -> None:
        shares.step(info)
        if on_step is not None:
            on_step(info)

    return step
