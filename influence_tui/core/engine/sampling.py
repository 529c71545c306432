"""Picking the next token: small pure functions on a 1-D tensor of logits (one score per vocabulary entry).

Each filter returns a new tensor and leaves its input alone; a token a filter drops gets ``-inf``.
:func:`sample_next` chains them in the order transformers' ``generate`` does: repetition penalty, temperature,
top-k, top-p, min-p, then one draw from the softmax (:func:`draw`). A temperature of 0 is greedy decoding (the
argmax after the penalty) and skips every other step, so the common greedy path costs one ``argmax``.

Per token, none of this sorts the whole vocabulary unless top-p needs more than the 64 most likely tokens, and
the draw is a cumulative sum and a binary search (``torch.multinomial`` costs milliseconds on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from influence_tui.core.types import SamplingParams

_NEG_INF = float("-inf")
_TOP_P_FIRST_GUESS = 64
"""Top-p looks at this many of the most likely tokens first and sorts them all only when they hold less than
``p``."""


def recent_window(context_ids: Sequence[int], repeat_last_n: int) -> Sequence[int]:
    """The tokens the repetition penalty looks at: the last ``repeat_last_n`` (0 or less: the whole context)."""
    if repeat_last_n <= 0 or repeat_last_n >= len(context_ids):
        return context_ids
    return context_ids[-repeat_last_n:]


def apply_repetition_penalty(logits: torch.Tensor, token_ids: Sequence[int], penalty: float) -> torch.Tensor:
    """Make the tokens in ``token_ids`` less likely: positive logits are divided by ``penalty``, negative ones
    multiplied (the CTRL / llama.cpp rule). Each token is penalised once however often it occurs; 1.0 is off."""
    if penalty == 1.0 or not token_ids:
        return logits
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=logits.device)
    scores = logits.index_select(0, ids)
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.index_copy(0, ids, penalised)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by ``temperature`` (below 1 sharpens, above 1 flattens). Greedy (0) is :func:`sample_next`'s job."""
    if temperature <= 0:
        raise ValueError("temperature 0 means greedy decoding: take the argmax instead")
    if temperature == 1.0:
        return logits
    return logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the ``top_k`` highest logits (ties at the boundary are all kept); ``None`` or 0 is off."""
    if not top_k or top_k >= logits.numel():
        return logits
    threshold = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < threshold, _NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probabilities add up to at least
    ``top_p`` (always at least one token). ``None`` or 1.0 is off.

    A model's distribution is usually peaked, so it first looks at the 64 most likely tokens only and sorts
    the whole vocabulary just when those hold less than ``top_p`` of the mass.
    """
    if top_p is None or top_p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    top_probs, top_ids = torch.topk(probs, min(probs.numel(), _TOP_P_FIRST_GUESS))
    cumulative = top_probs.cumsum(0)
    if float(cumulative[-1]) < top_p and top_probs.numel() < probs.numel():
        top_probs, top_ids = torch.sort(probs, descending=True)
        cumulative = top_probs.cumsum(0)
    # A token stays when the tokens before it hold less than top_p: the first token always stays.
    keep = max(1, int(((cumulative - top_probs) < top_p).sum()))
    kept = top_ids[:keep]
    return torch.full_like(logits, _NEG_INF).index_copy(0, kept, logits.index_select(0, kept))


def apply_min_p(logits: torch.Tensor, min_p: float | None) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the most likely token's; ``None`` or 0 is off."""
    if not min_p or min_p <= 0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), _NEG_INF)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator for one request: seeded with ``seed`` for reproducible sampling, from the OS otherwise."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One index drawn with the given probabilities (they need not sum to 1): the inverse of the cumulative
    distribution at a uniform random point. Much cheaper than ``torch.multinomial`` on a whole vocabulary."""
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64  # mps has no float64
    cumulative = probs.to(dtype).cumsum(0)
    point = torch.rand((1,), generator=generator, device=probs.device, dtype=dtype) * cumulative[-1]
    # right=True: the first index whose cumulative mass exceeds the point, so a token of probability 0 is
    # never drawn.
    index = torch.searchsorted(cumulative, point, right=True)
    return min(int(index), probs.numel() - 1)


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    recent_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> int:
    """The next token id from one position's logits.

    ``recent_ids`` is the context so far (prompt and generated tokens); the penalty looks at its last
    ``params.repeat_last_n``. ``generator`` makes draws reproducible (see :func:`make_generator`).
    """
    logits = logits.float()  # a no-op for float32; argmax and softmax are slow on half-precision CPU tensors
    if params.repeat_penalty != 1.0 and recent_ids:
        window = recent_window(recent_ids, params.repeat_last_n)
        logits = apply_repetition_penalty(logits, window, params.repeat_penalty)
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    logits = apply_min_p(logits, params.min_p)
    return draw(torch.softmax(logits, dim=-1), generator)
