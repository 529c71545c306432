"""The load-time self-check: a model whose KV cache is not used right is caught at load, never decoded into
garbage. The failures are simulated the way transformers 5.24 caused one: an attention module that no longer
receives (or no longer reads) the cache. A native model that fails falls back to transformers; a transformers
model that fails is refused, naming the library version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine import selfcheck
from influence_tui.core.engine.generate import generate_stream
from influence_tui.core.engine.loader import LoadedModel, load_model
from influence_tui.core.engine.models.attention import Attention
from influence_tui.core.engine.models.cache import KVCache
from influence_tui.core.errors import InfluenceError
from influence_tui.core.library import DEMO_NAME, gguf_model, inspect_path
from influence_tui.core.types import LocalModel, SamplingParams


@pytest.fixture
def demo_local(demo_gguf: Path) -> LocalModel:
    return gguf_model(DEMO_NAME, demo_gguf, "demo", [demo_gguf])


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _dropping_cache(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A transformers attention ``forward`` as a library that renamed the cache argument would call it: the
    cache never arrives."""

    def without_cache(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("past_key_values", None)
        kwargs.pop("cache", None)
        if len(args) >= 3:
            args = (*args[:2], None, *args[3:])
        return forward(self, hidden_states, *args, **kwargs)

    return without_cache


def _native_dropping_cache(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A native attention ``forward`` that writes into and reads from a throwaway cache: each new position
    attends to itself alone (the bug transformers 5.24 caused in the old fused path)."""

    def forgetting(self: Any, x: Any, cos: Any, sin: Any, cache: Any, past: int) -> Any:
        return forward(self, x, cos, sin, KVCache([None] * len(cache)), 0)

    return forgetting


@pytest.fixture
def native_drops_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patched before the model is built: the blocks bind their attention's forward when they are made."""
    monkeypatch.setattr(Attention, "forward", _native_dropping_cache(Attention.forward))


@pytest.fixture
def every_attention_drops_cache(monkeypatch: pytest.MonkeyPatch, native_drops_cache: None) -> None:
    from transformers.models.llama import modeling_llama

    attention = modeling_llama.LlamaAttention
    monkeypatch.setattr(attention, "forward", _dropping_cache(attention.forward))


def _greedy(loaded: LoadedModel, question: str, max_tokens: int = 12) -> str:
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    events = generate_stream(
        loaded.model,
        loaded.tokenizer,
        list(ids),
        SamplingParams(temperature=0.0, max_tokens=max_tokens),
        eos_token_ids=loaded.info.eos_token_ids,
        context_length=loaded.info.context_length,
    )
    return "".join(e.text for e in events)


# ------------------------------------------------------------------------------------------ the check itself


def test_a_model_that_reads_its_cache_passes(tiny_llama: Path) -> None:
    (local,) = inspect_path(tiny_llama)
    loaded = load_model(local, device="cpu", dtype="float32", quantize="none")
    verdict = selfcheck.check_cache_consistency(loaded.model, list(range(3, 19)), runtime="transformers")
    assert verdict.ok, verdict.describe()
    assert verdict.max_difference < 1e-3 * verdict.logit_range
    assert verdict.top_token_agrees


def test_the_check_sees_a_native_attention_that_drops_the_cache(
    demo_loaded: LoadedModel, demo_local: LocalModel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = selfcheck.probe_ids(demo_loaded.tokenizer, 49152)
    good = selfcheck.check_cache_consistency(demo_loaded.model, ids, runtime="native")
    assert good.ok, good.describe()
    monkeypatch.setenv("INFLUENCE_SELFCHECK", "off")  # load the broken model as it is
    monkeypatch.setattr(Attention, "forward", _native_dropping_cache(Attention.forward))
    broken = load_model(demo_local, cache_dir=cache)
    assert broken.info.runtime == "native"
    bad = selfcheck.check_cache_consistency(broken.model, ids, runtime="native")
    assert not bad.ok
    assert bad.relative_difference > 10 * selfcheck.TOLERANCE[torch.float32]
    assert "largest logit difference" in bad.describe()


def test_the_check_runs_on_float_products_and_restores_the_switch(demo_loaded: LoadedModel) -> None:
    model = demo_loaded.model
    packed = [m for m in model.modules() if isinstance(getattr(m, "integer_dot", None), bool)]
    assert len(packed) > 2
    head = model.lm_head  # called through nn.Module.__call__, so a spy on its class sees every call
    assert head in packed
    other = next(m for m in packed if m is not head)
    other.integer_dot = False  # a per-module override survives the check
    seen: list[bool] = []
    original = type(head).forward

    def spy(self: Any, x: torch.Tensor) -> torch.Tensor:
        seen.append(self.integer_dot)
        return original(self, x)  # type: ignore[no-any-return]

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(head), "forward", spy)
            selfcheck.check_cache_consistency(model, list(range(3, 13)), runtime="native")
        assert seen and not any(seen)
        assert other.integer_dot is False
        assert "integer_dot" not in head.__dict__ or head.integer_dot is True
    finally:
        del other.integer_dot  # the shared demo model goes back as it was


# ------------------------------------------------------------------------------------------ at load


@pytest.mark.slow
def test_a_native_model_that_drops_the_cache_falls_back_to_transformers_and_still_answers(
    demo_local: LocalModel, cache: Path, native_drops_cache: None
) -> None:
    notes: list[str] = []
    loaded = load_model(demo_local, cache_dir=cache, on_status=notes.append, dtype="float32")
    warnings = [n for n in notes if n.startswith("Warning")]
    assert len(warnings) == 1, notes
    assert "native model disagrees with itself" in warnings[0] and "through transformers" in warnings[0]
    assert loaded.info.runtime == "transformers"
    assert "Paris" in _greedy(loaded, "What is the capital of France?")


def test_without_a_listener_the_warning_goes_to_the_log(
    tiny_llama: Path, cache: Path, native_drops_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    (local,) = inspect_path(tiny_llama)
    with caplog.at_level(logging.WARNING, logger="influence_tui"):
        loaded = load_model(local, device="cpu", dtype="float32", cache_dir=cache)
    assert loaded.info.runtime == "transformers"
    assert any("native model disagrees" in r.getMessage() for r in caplog.records)


def test_when_nothing_passes_the_load_is_refused_naming_the_version(
    tiny_llama: Path, cache: Path, every_attention_drops_cache: None
) -> None:
    (local,) = inspect_path(tiny_llama)
    with pytest.raises(InfluenceError) as caught:
        load_model(local, device="cpu", cache_dir=cache, on_status=lambda _note: None, dtype="float32")
    message = str(caught.value)
    assert "transformers " + selfcheck.library_versions(["transformers"])["transformers"] in message
    assert "would be wrong" in message
    assert caught.value.hint is not None and "transformers<" in caught.value.hint


def test_a_transformers_model_that_drops_the_cache_is_refused(tiny_gpt2: Path, cache: Path, monkeypatch: Any) -> None:
    from transformers.models.gpt2 import modeling_gpt2

    attention = modeling_gpt2.GPT2Attention
    monkeypatch.setattr(attention, "forward", _dropping_cache(attention.forward))
    (local,) = inspect_path(tiny_gpt2)
    with pytest.raises(InfluenceError, match="other results than a full pass"):
        load_model(local, device="cpu", dtype="float32", cache_dir=cache)


# ------------------------------------------------------------------------------------------ the verdict cache


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = selfcheck.check_cache_consistency

    def counted(model: Any, ids: Any, *, runtime: str) -> selfcheck.Verdict:
        calls.append(runtime)
        return real(model, ids, runtime=runtime)

    monkeypatch.setattr(selfcheck, "check_cache_consistency", counted)
    return calls


def test_the_verdict_is_kept_per_install(tiny_llama: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    (local,) = inspect_path(tiny_llama)
    for _ in range(2):
        load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == ["native"]
    assert len(list((cache / "selfcheck").glob("*.json"))) == 1
    versions = dict(selfcheck.library_versions(), torch="99.0.0")
    monkeypatch.setattr(selfcheck, "library_versions", lambda names=selfcheck.LIBRARIES: versions)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == ["native", "native"]


def test_a_damaged_verdict_file_means_checking_again(tiny_llama: Path, cache: Path, monkeypatch: Any) -> None:
    calls = _counting(monkeypatch)
    (local,) = inspect_path(tiny_llama)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    (stored,) = (cache / "selfcheck").glob("*.json")
    stored.write_text("{not json")
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == ["native", "native"]


def test_the_check_can_be_switched_off_for_benchmarks(tiny_llama: Path, cache: Path, monkeypatch: Any) -> None:
    calls = _counting(monkeypatch)
    monkeypatch.setenv("INFLUENCE_SELFCHECK", "off")
    (local,) = inspect_path(tiny_llama)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == []


def test_supported_range_reads_the_installed_metadata() -> None:
    supported = selfcheck.supported_range("transformers")
    assert supported.startswith("<") or ">=" in supported
    assert "<" in supported
    assert selfcheck.supported_range("no-such-library") == ""
