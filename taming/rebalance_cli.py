"""`taming classifier train` and `taming rebalance`: an attribute classifier measured by person, and taming for a
share (taming/attribute.py, taming/share.py, taming/rebalance.py).

Exit status: 0 done; 1 the rebalance's target was not reached by the cap; 2 bad input, or a classifier whose
by-person accuracy is below 75% (its share means too little to steer by).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from taming.attribute import MIN_ACCURACY


def _model_shape(model_path: str) -> tuple[int, int]:
    from taming.checkpoint import CheckpointError, read_metadata
    from taming.cli_common import fail

    try:
        config = json.loads(read_metadata(model_path)["config"])
    except (CheckpointError, KeyError, OSError) as exc:
        fail(str(exc))
    return int(config["img_size"]), int(config["in_channel"])


def _sides(positive: str | None, negative: str | None, data: str | None, size: int, channels: int) -> Any:
    """(positive, negative) FaceSets from --positive/--negative, or from --data (folders or an npz label array)."""
    from taming.attribute import load_labelled
    from taming.cli_common import fail, load_set
    from taming.data import DataError

    if data:
        try:
            return load_labelled(data, size, channels)
        except DataError as exc:
            fail(str(exc))
    if not positive or not negative:
        fail("give --positive and --negative (or --data with positive/ and negative/ or a label array)")
    assert positive is not None and negative is not None
    return load_set(positive, size, channels), load_set(negative, size, channels)


def _refuse_unusable(accuracy: float | None) -> None:
    if accuracy is None or accuracy < MIN_ACCURACY:
        shown = "unmeasured" if accuracy is None else f"{accuracy:.1%}"
        click.echo(f"error: the classifier's by-person accuracy is {shown}, below the {MIN_ACCURACY:.0%} a share "
                   "needs: it cannot tell the classes apart on unseen people", err=True)
        sys.exit(2)


@click.group("classifier")
def classifier_group() -> None:
    """Attribute classifiers for rebalancing."""


@classifier_group.command("train")
@click.option("--positive", help="images with the attribute (folder or .npz)")
@click.option("--negative", help="images without the attribute (folder or .npz)")
@click.option("--data", help="instead: a folder with positive/ and negative/, or an .npz with a 'label' array")
@click.option("--model", "model_path", required=True, help="the base model (gives the image size and channels)")
@click.option("--out", required=True, help="classifier to write (.safetensors)")
@click.option("--members", default=3, show_default=True, help="networks in the ensemble")
@click.option("--steps", default=1000, show_default=True, help="training steps per network")
@click.option("--folds", default=5, show_default=True, help="grouped cross-validation folds (people never split)")
@click.option("--rows", help="look only at these rows of the 32x32 input, e.g. 5:23 (the eye band of a face)")
@click.option("--net", default="fine", show_default=True, type=click.Choice(["fine", "small"]))
@click.option("--seed", default=0, show_default=True)
def train_classifier_command(positive: str | None, negative: str | None, data: str | None, model_path: str, out: str,
                             members: int, steps: int, folds: int, rows: str | None, net: str, seed: int) -> None:
    """Train an attribute classifier and measure its accuracy by person; exit 2 when below 75%."""
    from taming.attribute import Recipe, fit_classifier, save_classifier
    from taming.cli_common import fail

    band = None
    if rows:
        try:
            lo, hi = (int(v) for v in rows.split(":"))
        except ValueError:
            fail(f"--rows must be FIRST:LAST, e.g. 5:23, not {rows!r}")
        band = (lo, hi)

    size, channels = _model_shape(model_path)
    pos, neg = _sides(positive, negative, data, size, channels)
    click.echo(f"{len(pos)} images with the attribute, {len(neg)} without; {folds}-fold cross-validation by person",
               err=True)
    model = fit_classifier(pos, neg, Recipe(members=members, steps=steps, folds=folds, seed=seed, rows=band, net=net))
    acc = model.accuracy
    assert acc is not None
    click.echo(f"by-person accuracy {acc.accuracy:.3f} (balanced {acc.balanced_accuracy:.3f}; sensitivity "
               f"{acc.sensitivity:.3f}, specificity {acc.specificity:.3f}; {acc.people} people grouped by "
               f"{acc.grouping}, {acc.folds} folds)")
    _refuse_unusable(acc.accuracy)
    save_classifier(model, out)
    click.echo(f"wrote {out}")


@click.command("rebalance")
@click.option("--model", "model_path", required=True, help="base checkpoint (.safetensors)")
@click.option("--classifier", "classifier_path", required=True, help="from `taming classifier train`")
@click.option("--positive", help="images with the attribute (folder or .npz)")
@click.option("--negative", help="images without the attribute (folder or .npz)")
@click.option("--data", help="instead: a folder with positive/ and negative/, or an .npz with a 'label' array")
@click.option("--remember", help="other images to keep (e.g. the model's reference set); images of D_F leave it")
@click.option("--direction", required=True, type=click.Choice(["decrease", "increase"]))
@click.option("--target-share", required=True, type=click.FloatRange(0, 1))
@click.option("--strategy", default="push_negatives", show_default=True,
              type=click.Choice(["push_negatives", "pull_positives"]), help="how an increase works")
@click.option("--delta", default=4.0, show_default=True, help="|δ|; its sign follows the direction and strategy")
@click.option("--method", default="specific", show_default=True, help="the taming method's knobs (rules/method.py)")
@click.option("--max-iterations", default=400, show_default=True)
@click.option("--samples", default=1000, show_default=True, help="samples behind the share before and after")
@click.option("--monitor-samples", type=int, help="samples behind the share every 10 iterations [default: --samples]")
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--share-rule", default="point", show_default=True, type=click.Choice(["point", "interval"]),
              help="stop when the share reaches the target, or once the target lies inside its 95% interval")
@click.option("--out", required=True, help="rebalanced checkpoint to write")
@click.option("--report", "report_path", required=True, help="JSON report to write (the HTML goes beside it)")
def rebalance_command(model_path: str, classifier_path: str, positive: str | None, negative: str | None,
                      data: str | None, remember: str | None, direction: str, target_share: float, strategy: str,
                      delta: float, method: str, max_iterations: int, samples: int, monitor_samples: int | None,
                      temperature: float, seed: int, share_rule: str, out: str, report_path: str) -> None:
    """Tame the model until the attribute's corrected share reaches TARGET; exit 1 if not reached by the cap."""
    from taming.cli_common import fail, load_set

    size, channels = _model_shape(model_path)
    classifier = _load_classifier(classifier_path)
    _refuse_unusable(classifier.accuracy.accuracy if classifier.accuracy else None)
    pos, neg = _sides(positive, negative, data, size, channels)
    others = load_set(remember, size, channels) if remember else None
    try:
        from taming.tame import method_config

        config = method_config(method, delta=delta, max_iterations=max_iterations, seed=seed, share_rule=share_rule)
    except ValueError as exc:
        fail(str(exc))
    report, pngs, reached = _run(model_path, classifier, classifier_path, (pos, neg, others), config,
                                 {"direction": direction, "target": target_share, "strategy": strategy,
                                  "samples": samples, "monitor": monitor_samples or samples,
                                  "temperature": temperature}, out)
    _write(report, pngs, report_path)
    if not reached:
        sys.exit(1)


def _load_classifier(path: str) -> Any:
    from taming.attribute import load_classifier
    from taming.cli_common import fail

    try:
        return load_classifier(path)
    except (ValueError, OSError) as exc:
        fail(str(exc))


def _run(model_path: str, classifier: Any, classifier_path: str, sets: tuple[Any, Any, Any], config: Any,
         ask: dict[str, Any], out: str) -> tuple[dict[str, Any], dict[str, bytes], bool]:
    from tqdm import tqdm

    from taming import rebalance_report
    from taming.checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from taming.features import feature_space
    from taming.rebalance import rebalance, sides
    from taming.share import ShareMeter

    started = time.perf_counter()
    base, meta = load_checkpoint(model_path)
    pos, neg, others = sets
    chosen = sides(pos, neg, ask["direction"], ask["strategy"], others)
    rates = classifier.accuracy.error_rates()
    meter = ShareMeter.for_model(base, classifier.predict, rates, ask["monitor"], ask["temperature"])
    final = meter if ask["monitor"] == ask["samples"] else ShareMeter.for_model(base, classifier.predict, rates,
                                                                                ask["samples"], ask["temperature"])
    faces = others if others is not None else chosen.remember
    space = feature_space(torch_cat(pos.images, neg.images, faces.images),
                          _identities(pos, neg, faces))
    bar = tqdm(total=config.max_iterations, desc=f"rebalance ({ask['direction']})", unit="it")

    def on_step(info: Any) -> None:
        bar.update(info.iteration - bar.n)

    def on_share(iteration: int, est: Any) -> None:
        bar.set_postfix(share=f"{est.share:.3f} [{est.low:.3f}, {est.high:.3f}]")

    result = rebalance(base, chosen, config, ask["target"], ask["direction"], meter, final_meter=final, space=space,
                       on_step=on_step, on_share=on_share)
    bar.close()
    sha = save_checkpoint(result.model, out, data_hash=meta.get("data_hash", ""), parent=file_sha256(model_path))
    acc = classifier.accuracy
    report = rebalance_report.build(
        result, classifier={"path": classifier_path, "sha256": file_sha256(classifier_path),
                            "accuracy": acc.accuracy, "sensitivity": acc.sensitivity, "specificity": acc.specificity,
                            "balanced_accuracy": acc.balanced_accuracy, "people": acc.people},
        parameters={**(result.config or config).to_dict(), "samples": ask["samples"],
                    "monitor_samples": ask["monitor"], "temperature": ask["temperature"],
                    "strategy": result.strategy},
        job={"id": "cli"}, model={"parent_sha256": file_sha256(model_path), "new_sha256": sha},
        wall_seconds=time.perf_counter() - started)
    _summary(result, out)
    return report.as_json(), rebalance_report.figures(result), result.reached


def torch_cat(*images: Any) -> Any:
    import torch

    return torch.cat(images)


def _identities(*sets: Any) -> Any:
    """One identity array over the sets (npz identities and folder names alike), -1 where unknown."""
    import numpy as np

    from taming.attribute import person_keys

    keys = [k for s in sets for k in person_keys(s)]
    known = sorted({k for k in keys if k is not None})
    index = {k: i for i, k in enumerate(known)}
    return np.array([index[k] if k is not None else -1 for k in keys], dtype=np.int64)


def _summary(result: Any, out: str) -> None:
    b, a = result.before, result.after
    click.echo(f"share {b.share:.3f} [{b.low:.3f}, {b.high:.3f}] -> {a.share:.3f} [{a.low:.3f}, {a.high:.3f}] "
               f"(target {result.target:.3f}, {a.samples} samples at T={a.temperature}); {result.reason}")
    r, kept = result.bpd["remember"], result.identity_kept
    click.echo(f"  bpd of the remember side {r['before']:.4f} -> {r['after']:.4f} ({100 * r['change']:+.2f} %); "
               f"identity kept {'—' if kept is None else f'{kept:.1%}'}")
    click.echo(f"wrote {out}")


def _write(report: dict[str, Any], pngs: dict[str, bytes], report_path: str) -> None:
    from taming import rebalance_report

    Path(report_path).write_text(json.dumps(report, indent=2))
    html_path = Path(report_path).with_suffix(".html")
    html_path.write_text(rebalance_report.render(report, pngs))
    click.echo(f"wrote {report_path}, {html_path}")


commands: list[click.Command] = [classifier_group, rebalance_command]
