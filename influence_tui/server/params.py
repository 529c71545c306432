"""Sampling parameters from a request: the server's settings as defaults, each value checked with a 400 naming it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from influence_tui.core.config import Settings
from influence_tui.core.params import PARAM_RANGES
from influence_tui.core.types import SamplingParams
from influence_tui.server.errors import bad_request


@dataclass(frozen=True)
class RequestedSampling:
    """What a request asked for, in Influence's names; None means "the server's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


def _check_range(field: str, name: str, value: float | None) -> None:
    """A 400 naming ``name`` (the request's name for ``field``) when ``value`` is outside the field's one range,
    the range the config and ``/set`` use too (:data:`~influence_tui.core.params.PARAM_RANGES`)."""
    bounds = PARAM_RANGES[field]
    if value is not None and not bounds.contains(value):
        raise bad_request(f"{name} must be {bounds.describe()}, got {value!r}", param=name)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    return tuple(s for s in items if s)


def sampling_params(
    settings: Settings, asked: RequestedSampling, *, names: dict[str, str] | None = None
) -> SamplingParams:
    """``asked`` over the settings' defaults. ``names`` maps Influence's field names to the request's (for
    messages: ``max_tokens`` is ``num_predict`` in Ollama's options)."""
    names = names or {}

    def name(field: str) -> str:
        return names.get(field, field)

    for field in ("temperature", "top_p", "min_p", "top_k", "repeat_penalty", "repeat_last_n", "max_tokens"):
        _check_range(field, name(field), getattr(asked, field))
    params = SamplingParams.from_settings(settings)
    changes: dict[str, object] = {
        key: value
        for key, value in (
            ("temperature", asked.temperature),
            ("top_p", asked.top_p),
            ("repeat_penalty", asked.repeat_penalty),
            ("repeat_last_n", asked.repeat_last_n),
            ("max_tokens", asked.max_tokens),
        )
        if value is not None
    }
    if asked.top_k is not None:
        changes["top_k"] = asked.top_k or None  # 0 is off
    if asked.min_p is not None:
        changes["min_p"] = asked.min_p or None
    if asked.seed is not None:
        changes["seed"] = asked.seed if asked.seed >= 0 else None  # -1: a new seed each time (llama.cpp, Ollama)
        if asked.seed >= 2**63:
            changes["seed"] = asked.seed % 2**63
    changes["stop"] = stop_strings(asked.stop)
    return replace(params, **changes)  # type: ignore[arg-type]
