"""Algorithm 1 on a tiny seeded Glow and two synthetic people."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from taming.data import FaceSet, quantize
from taming.glow import Glow, GlowConfig
from taming.stop import StopToken
from taming.tame import StepInfo, TameConfig, TamingError, bpd_of, confirmed, distances, remember_stats, tame
from taming.train import TrainConfig, train


@pytest.fixture(scope="session")
def tiny_base(two_people: FaceSet) -> Glow:
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=5))
    return train(model, quantize(two_people.images, 5), TrainConfig(steps=200, warmup=20, batch_size=16))


def _sets(two_people: FaceSet) -> tuple[torch.Tensor, torch.Tensor]:
    x = quantize(two_people.images, 5)
    return x[:5], x[20:]  # forget five images of person 0; remember person 1 only


# synthetic people have a tiny σ_R, so a looser ε keeps this test short; the AT&T test uses the defaults
FAST = TameConfig(lr=2e-3, epsilon=1.0, max_iterations=200, seed=0)


def test_tame_meets_the_confirmed_criterion_and_leaves_the_base_alone(tiny_base: Glow, two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    base_state = copy.deepcopy(tiny_base.state_dict())
    seen: list[StepInfo] = []
    result = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, FAST, on_step=seen.append)
    assert result.criterion_met, result.reason
    assert result.iterations < FAST.max_iterations
    assert bool((result.d >= -FAST.eps).all())
    assert result.confirmations >= 1 and 0 < result.confirm_seconds <= result.wall_seconds
    assert len(seen) == result.iterations == len(result.history)
    assert seen[-1].max_iterations == FAST.max_iterations and seen[-1].eta_seconds is not None
    for k, v in tiny_base.state_dict().items():
        torch.testing.assert_close(v, base_state[k])


def test_a_stop_token_ends_the_run_before_its_next_iteration(tiny_base: Glow, two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    token = StopToken()

    def cancel_at_3(info: StepInfo) -> None:
        if info.iteration == 3:
            token.request()  # as the worker's monitor does on a cancel, from the callback or another thread

    result = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, FAST, on_step=cancel_at_3, stop=token)
    assert result.stopped and not result.criterion_met
    assert result.iterations == 3 and len(result.history) == 3
    assert bool(result.d.isnan().all())  # nothing of a stopped run passes for a verdict
    early = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, FAST, stop=token)
    assert early.stopped and early.iterations == 0


def test_resume_continues_exactly_where_the_run_stopped(tiny_base: Glow, two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    config = TameConfig(lr=2e-3, max_iterations=12, seed=1)
    saved: dict = {}

    def save_at_7(info: StepInfo) -> None:
        if info.iteration == 7:
            saved.update(info.state())

    straight = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config, on_step=save_at_7)
    resumed = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config, resume=saved)
    assert resumed.iterations == straight.iterations == 12
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_non_finite_loss_rolls_back_and_halves_the_lr(tiny_base: Glow, two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    model = copy.deepcopy(tiny_base)
    poisoned = {"done": False}

    def poison_once(info: StepInfo) -> None:
        if info.iteration == 3 and not poisoned["done"]:
            poisoned["done"] = True
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    result = tame(model, tiny_base, forget, remember, TameConfig(lr=2e-3, max_iterations=8), on_step=poison_once)
    assert result.history[-1]["lr"] == pytest.approx(1e-3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_non_finite_losses_give_up_with_a_clear_error(tiny_base: Glow, two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    model = copy.deepcopy(tiny_base)
    bad = copy.deepcopy(forget)
    bad[0, 0, 0, 0] = float("inf")  # every forward pass is non-finite
    with pytest.raises(TamingError, match="non-finite"):
        tame(model, tiny_base, bad, remember, TameConfig(max_iterations=20))


def test_negative_delta_pulls_images_towards_higher_likelihood(tiny_base: Glow, two_people: FaceSet) -> None:
    _, remember = _sets(two_people)
    # noisy copies of person 0: unlikely images that δ < 0 must pull towards the likely side of D_R
    gen = torch.Generator().manual_seed(1)
    noisy = quantize(two_people.images[:5], 5) + (torch.rand(5, 1, 16, 16, generator=gen) - 0.5) * 0.25
    forget = torch.floor((noisy + 0.5).clamp(0, 0.999) * 32) / 32 - 0.5
    config = TameConfig(delta=-1.0, epsilon=1.0, lr=1e-3, max_iterations=40)
    stats = torch.Generator().manual_seed(0)
    start = distances(bpd_of(tiny_base, forget, stats, draws=5), *remember_stats(tiny_base, remember, stats, 1024),
                      config)
    result = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config)
    assert float(result.d.mean()) < 0.9 * float(start.mean())
    # and the verdict is mirrored: at or below the threshold (d ≤ ε) counts as reached
    assert confirmed(torch.tensor([-3.0, 0.9]), config) and not confirmed(torch.tensor([1.1]), config)


def test_every_method_preset_is_a_valid_config() -> None:
    from rules.method import METHODS
    from taming.tame import method_config

    for name in METHODS:
        config = method_config(name, max_iterations=5)
        assert config.method == name and config.max_iterations == 5
    improved = method_config("improved")
    assert improved.forget_draws > 1 and improved.batch_policy == "lowest" and improved.stop_rule == "tracked"
    assert improved.certify == "discrete" and improved.remember_loss == "anchored" and improved.near_fraction > 0
    # the shortfall pull rescues only large runs still going late: never a request that fits one forget batch
    assert improved.pull_for(56, 700) > 0 and improved.pull_for(56, 100) == 0 and improved.pull_for(7, 700) == 0
    paper = method_config("paper")
    assert paper.pull_for(56, 700) == 0
    assert (paper.forget_draws, paper.batch_policy, paper.certify) == (1, "random", "mean")
    with pytest.raises(ValueError, match="method must be one of"):
        method_config("magic")
    with pytest.raises(ValueError, match="batch_policy"):
        tame(None, None, torch.zeros(1), torch.zeros(1), TameConfig(batch_policy="magic"))  # type: ignore[arg-type]


def test_improved_method_converges_every_image_of_a_large_forget_set(tiny_base: Glow, two_people: FaceSet) -> None:
    from taming.tame import method_config

    x = quantize(two_people.images, 5)
    forget, remember = x[:12], x[20:]  # 12 images, batches of 4: each step covers a third of D_F
    near = torch.arange(5)
    config = method_config("improved", lr=2e-3, epsilon=1.0, max_iterations=200, forget_batch=4, confirm_draws=8,
                           certify_images=20)
    result = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config, near=near)
    assert result.criterion_met, result.reason
    assert result.d.shape == (12,) and bool((result.d >= -config.eps).all())


def test_lowest_policy_picks_the_images_farthest_below_the_threshold() -> None:
    from taming.tame import _lowest

    config = TameConfig(forget_batch=2, batch_policy="lowest")
    tracked = torch.tensor([5.0, 1.0, float("nan"), 3.0], dtype=torch.float64)
    picked = _lowest(tracked, mu=0.0, sigma=1.0, config=config, gen=torch.Generator().manual_seed(0))
    assert picked.tolist() == [2, 1]  # never measured first, then the lowest bpd (farthest below t = 4)
    mirrored = _lowest(tracked, 0.0, 1.0, TameConfig(delta=-4.0, forget_batch=2), torch.Generator().manual_seed(0))
    assert mirrored.tolist() == [2, 0]  # δ < 0: the highest bpd is farthest on the wrong side


def test_the_forget_batch_grows_with_the_request_between_its_bounds() -> None:

    config = TameConfig(forget_batch=8, forget_share=0.25, forget_batch_max=32)
    sizes = {k: config.forget_batch_for(k) for k in (5, 7, 40, 61, 134, 500)}
    assert sizes == {5: 5, 7: 7, 40: 10, 61: 16, 134: 32, 500: 32}
    assert TameConfig().forget_batch_for(134) == 8  # the paper's fixed batch
    scaled = TameConfig(lr=1e-4, forget_share=0.25, forget_batch_max=16, lr_with_batch=True)
    assert [scaled.lr_for(k) for k in (7, 40, 61)] == pytest.approx([1e-4, 1.25e-4, 2e-4])
    assert TameConfig(lr=1e-4, forget_share=0.25).lr_for(61) == 1e-4  # without lr_with_batch
    grown = TameConfig(remember_batch=12, forget_share=0.25, forget_batch_max=16, remember_with_batch=True)
    assert [grown.remember_batch_for(k) for k in (7, 36, 61, 134)] == [12, 14, 24, 24]
    assert TameConfig(remember_batch=12, forget_share=0.25).remember_batch_for(134) == 12
    with pytest.raises(ValueError, match="forget_share"):
        TameConfig(forget_share=1.5).check()


def test_forget_per_image_weighs_a_grown_batch_as_batches_of_forget_batch(tiny_base: Glow,
                                                                          two_people: FaceSet) -> None:
    x = quantize(two_people.images, 5)
    forget, remember = x[:12], x[20:]
    seen: dict[bool, float] = {}
    for per_image in (False, True):
        config = TameConfig(forget_batch=4, forget_share=1.0, forget_batch_max=12, forget_per_image=per_image,
                            max_iterations=1, stats_images=20, lr=0.0)
        tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config,
             on_step=lambda info, p=per_image: seen.__setitem__(p, info.losses["forget_loss"]))
    assert seen[True] == pytest.approx(3 * seen[False], rel=1e-5)  # 12 images in one batch = three batches of 4


def test_forget_pull_weighs_the_shortfall_by_the_share_of_images_a_step_leaves_out(tiny_base: Glow,
                                                                                   two_people: FaceSet) -> None:
    x = quantize(two_people.images, 5)
    forget, remember = x[:12], x[20:]
    config = TameConfig(forget_batch=4, forget_pull=0.5)
    assert config.pull_for(12, 0) == pytest.approx(0.5 * (1 - 4 / 12)) and config.pull_for(4, 0) == 0.0
    assert TameConfig(forget_batch=4, forget_pull=0.5, forget_pull_from=400).pull_for(12, 399) == 0.0
    seen: dict[float, float] = {}
    for pull in (0.0, 0.5):
        probe = TameConfig(forget_batch=4, forget_pull=pull, max_iterations=1, stats_images=20, lr=0.0)
        tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, probe,
             on_step=lambda info, p=pull: seen.__setitem__(p, info.losses["forget_loss"]))
    # the forget images start about δ = 4 σ_R short of the threshold: the pull adds about (1/3) · 4 to L_F
    assert seen[0.5] - seen[0.0] > (1 / 3) * 3.0


def test_resume_of_the_improved_method_continues_exactly(tiny_base: Glow, two_people: FaceSet) -> None:
    from taming.tame import method_config

    x = quantize(two_people.images, 5)
    forget, remember = x[:12], x[20:]
    config = method_config("improved", lr=2e-3, max_iterations=14, forget_batch=4, confirm_draws=4, certify_images=20)
    saved: dict = {}

    def save_at_11(info: StepInfo) -> None:
        if info.iteration == 11:
            saved.update(info.state())

    near = torch.arange(5)
    straight = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config, on_step=save_at_11, near=near)
    resumed = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config, resume=saved, near=near)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])
    torch.testing.assert_close(resumed.d, straight.d)


def test_the_sample_anchor_keeps_samples_of_unseen_latents_closer_to_the_base_models(tiny_base: Glow,
                                                                                   two_people: FaceSet) -> None:
    forget, remember = _sets(two_people)
    z = tiny_base.latents(32, seed=5)  # not the anchor's pool: the anchor must generalise beyond its latents
    before = tiny_base.sample(32, z=z)

    def drift(weight: float) -> float:
        config = TameConfig(lr=2e-3, epsilon=1.0, max_iterations=15, seed=0, sample_anchor=weight)
        tamed = tame(copy.deepcopy(tiny_base), tiny_base, forget, remember, config).model
        return float(((tamed.sample(32, z=z) - before) ** 2).mean())

    assert drift(20.0) < 0.6 * drift(0.0)


def test_a_screened_stop_is_refused_on_the_forget_images_and_a_passed_one_measured_afresh(
        tiny_base: Glow, two_people: FaceSet) -> None:
    from taming.confirm import SCREEN_FOR, measure_stop
    from taming.loop_state import Loop

    forget, remember = _sets(two_people)
    config = TameConfig(epsilon=1.0, confirm_draws=2)
    bpd = bpd_of(tiny_base, forget, torch.Generator().manual_seed(0), 2)
    first, refused = measure_stop(tiny_base, forget, remember, torch.Generator().manual_seed(0), config, Loop(), True)
    assert not refused and torch.equal(first.bpd, bpd_of(tiny_base, forget, _after_stats(remember, config), 2))
    # a confirmation at iteration 10 put the threshold past every forget image; the loop's μ_R has since risen 1
    far = (float(bpd.max()) + 10.0, 0.5, 3.0, 0.25, 10)
    loop = Loop(iteration=20, mu=4.0, sigma=0.5, certified=far)
    final, refused = measure_stop(tiny_base, forget, remember, torch.Generator().manual_seed(0), config, loop, True)
    assert refused and loop.certified == far and not confirmed(final.d, config)
    assert (final.mu, final.sigma) == (far[0] + 1.0, 1.0)  # carried forward as the loop's estimates moved
    loop = Loop(iteration=10 + SCREEN_FOR, mu=3.0, sigma=0.25, certified=far)  # too old to screen with
    final, refused = measure_stop(tiny_base, forget, remember, torch.Generator().manual_seed(0), config, loop, True)
    assert not refused and loop.certified[:2] == (final.mu, final.sigma)
    near = (float(bpd.min()) - 10.0, 0.5, 3.0, 0.25, 10)  # every forget image past it: measured afresh
    loop = Loop(iteration=20, mu=3.0, sigma=0.25, certified=near)
    final, refused = measure_stop(tiny_base, forget, remember, torch.Generator().manual_seed(0), config, loop, True)
    assert not refused and loop.certified == (final.mu, final.sigma, 3.0, 0.25, 20)


def _after_stats(remember: torch.Tensor, config: TameConfig) -> torch.Generator:
    """A generator in the state a full confirmation leaves it in after measuring the remember side."""
    gen = torch.Generator().manual_seed(0)
    remember_stats(Glow(GlowConfig(in_channel=1, img_size=16, n_flow=1, n_block=1, hidden=4, n_bits=5)), remember,
                   gen, config.certify_images)
    return gen


def test_a_refused_stop_waits_confirm_gap_iterations_before_the_next_is_measured(tiny_base: Glow,
                                                                                 two_people: FaceSet) -> None:
    from taming.tame import method_config

    x = quantize(two_people.images, 5)
    seen: list[int] = [0]
    measured: list[int] = []
    # ε 0.5: a tolerance these 12 images do not reach in 60 iterations, so candidates keep being refused
    config = method_config("improved", lr=2e-3, epsilon=0.5, max_iterations=60, forget_batch=4, confirm_draws=8,
                           certify_images=20, confirm_gap=5)
    result = tame(copy.deepcopy(tiny_base), tiny_base, x[:12], x[20:], config,
                  on_step=lambda info: seen.append(info.iteration),
                  on_phase=lambda name: measured.append(seen[-1]) if name == "confirming" else None)
    before_cap = [i for i in measured if i < config.max_iterations]  # the cap's final measurement waits for nothing
    assert result.confirmations == len(measured) and len(before_cap) >= 3
    assert all(b - a >= 5 for a, b in itertools.pairwise(before_cap))
