"""The sampling math: each filter on small hand-made distributions, then sample_next as a whole."""

from __future__ import annotations

import math

import pytest
import torch

from influence_tui.core.engine.sampling import (
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    draw,
    make_generator,
    recent_window,
    sample_next,
)
from influence_tui.core.types import SamplingParams

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, repeat_penalty=1.0)
PLAIN = SamplingParams(temperature=1.0, top_p=1.0, top_k=None, min_p=None, repeat_penalty=1.0)


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def kept(logits: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(logits)).flatten().tolist()


def reference_top_p(logits: torch.Tensor, p: float) -> set[int]:
    """The textbook nucleus: sort everything, keep while the mass before a token is below p."""
    probs = torch.softmax(logits, -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep: set[int] = set()
    mass = 0.0
    for i in order:
        if mass >= p:
            break
        keep.add(i)
        mass += probs[i]
    return keep


# ------------------------------------------------------------------------------------------ top-p


@pytest.mark.parametrize(("p", "expected"), [(0.4, [0]), (0.75, [0, 1]), (0.9, [0, 1, 2]), (0.97, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p: float, expected: list[int]) -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(apply_top_p(logits, p)) == expected


def test_top_p_keeps_at_least_one_token_and_the_kept_logits_unchanged() -> None:
    logits = logits_of([0.9, 0.05, 0.05])
    out = apply_top_p(logits, 0.01)
    assert kept(out) == [0]
    assert out[0] == logits[0]


def test_top_p_off_returns_the_logits() -> None:
    logits = logits_of([0.5, 0.5])
    assert apply_top_p(logits, None) is logits
    assert apply_top_p(logits, 1.0) is logits


def test_top_p_widens_past_its_first_guess_when_the_nucleus_is_large() -> None:
    flat = torch.zeros(1000)
    assert len(kept(apply_top_p(flat, 0.5))) == 500  # 500 tokens of 0.001 each


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 0.95, 0.999])
def test_top_p_matches_a_full_sort(p: float) -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(5000, generator=gen) * 3
    assert set(kept(apply_top_p(logits, p))) == reference_top_p(logits, p)


# ------------------------------------------------------------------------------------------ top-k, min-p


def test_top_k_keeps_the_k_highest() -> None:
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    out = apply_top_k(logits, 2)
    assert kept(out) == [1, 3]
    assert out[1] == 5.0 and out[3] == 4.0


def test_top_k_off_or_larger_than_the_vocabulary() -> None:
    logits = torch.tensor([1.0, 2.0])
    assert apply_top_k(logits, None) is logits
    assert apply_top_k(logits, 0) is logits
    assert apply_top_k(logits, 5) is logits


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability() -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(apply_min_p(logits, 0.2)) == [0, 1, 2]  # threshold 0.1
    assert kept(apply_min_p(logits, 0.5)) == [0, 1]  # threshold 0.25
    assert kept(apply_min_p(logits, 1.0)) == [0]
    assert apply_min_p(logits, None) is logits


# ------------------------------------------------------------------------------------------ penalty, temperature


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 3.0])
    out = apply_repetition_penalty(logits, [0, 1, 0, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 3.0]  # each token once, however often it occurs
    assert logits.tolist() == [2.0, -2.0, 1.0, 3.0]  # the input is left alone


def test_repetition_penalty_of_one_or_no_context_is_off() -> None:
    logits = torch.tensor([2.0, -2.0])
    assert apply_repetition_penalty(logits, [0, 1], 1.0) is logits
    assert apply_repetition_penalty(logits, [], 1.3) is logits


def test_recent_window_is_the_last_n_tokens_or_the_whole_context() -> None:
    context = [1, 2, 3, 4, 5]
    assert list(recent_window(context, 2)) == [4, 5]
    assert list(recent_window(context, 0)) == context
    assert list(recent_window(context, 99)) == context


def test_temperature_scales_the_logits() -> None:
    logits = torch.tensor([2.0, -1.0])
    assert apply_temperature(logits, 0.5).tolist() == [4.0, -2.0]
    assert apply_temperature(logits, 1.0) is logits
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


# ------------------------------------------------------------------------------------------ sample_next


def test_temperature_zero_is_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_next(logits, GREEDY) == 1
    # no generator needed, and other filters do not matter
    assert sample_next(logits, SamplingParams(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9)) == 1


def test_greedy_applies_the_repetition_penalty_within_the_window() -> None:
    logits = torch.tensor([0.1, 3.0, 2.0, -1.0])
    penalised = SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=1)
    assert sample_next(logits, penalised, recent_ids=[2, 1]) == 2  # 3.0 / 2 < 2.0
    assert sample_next(logits, penalised, recent_ids=[1, 2]) == 1  # token 1 fell out of the window


def test_sampling_follows_the_filters() -> None:
    logits = logits_of([0.4, 0.35, 0.2, 0.05])
    gen = make_generator(0)
    top1 = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, repeat_penalty=1.0)
    assert {sample_next(logits, top1, generator=gen) for _ in range(50)} == {0}
    nucleus = SamplingParams(temperature=1.0, top_p=0.7, repeat_penalty=1.0)
    assert {sample_next(logits, nucleus, generator=gen) for _ in range(200)} == {0, 1}
    minp = SamplingParams(temperature=1.0, top_p=1.0, min_p=0.4, repeat_penalty=1.0)
    assert {sample_next(logits, minp, generator=gen) for _ in range(200)} == {0, 1, 2}


def test_sampling_draws_in_proportion_to_the_probabilities() -> None:
    logits = logits_of([0.7, 0.2, 0.1])
    gen = make_generator(1)
    draws = [sample_next(logits, PLAIN, generator=gen) for _ in range(3000)]
    assert abs(draws.count(0) / 3000 - 0.7) < 0.04
    assert abs(draws.count(2) / 3000 - 0.1) < 0.03


def test_draw_never_picks_a_token_of_probability_zero() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5, 0.0])
    gen = make_generator(3)
    assert {draw(probs, gen) for _ in range(500)} == {1, 4}
    assert {draw(torch.tensor([0.0, 0.0, 2.0]), gen) for _ in range(50)} == {2}  # unnormalised is fine


def draws(seed: int | None, n: int = 30) -> list[int]:
    logits = torch.zeros(1000)
    gen = make_generator(seed)
    return [sample_next(logits, PLAIN, generator=gen) for _ in range(n)]


def test_the_same_seed_gives_the_same_tokens_and_different_seeds_differ() -> None:
    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    assert draws(None) != draws(None)


def test_half_precision_logits_are_sampled_like_float32() -> None:
    logits = torch.tensor([0.5, 2.0, 1.0, -3.0]).to(torch.bfloat16)
    assert sample_next(logits, GREEDY) == 1
    params = SamplingParams(temperature=0.8, top_p=0.9, repeat_penalty=1.3)
    assert sample_next(logits, params, [1], make_generator(0)) in {0, 1, 2}
