"""The load-time self-check: a model whose KV cache is not used right is caught at load, never decoded into
garbage. The failures are simulated the way transformers 5.24 caused one: an attention module that no longer
receives (or no longer reads) the cache."""

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
from influence_tui.core.engine.quant import fused
from influence_tui.core.engine.quant import prepare as prepare_module
from influence_tui.core.engine.quant.prepare import prepared_key
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
    """``forward`` as a library that renamed the cache argument would call it: the cache never arrives."""

    def without_cache(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("past_key_values", None)
        kwargs.pop("cache", None)
        if len(args) >= 3:
            args = (*args[:2], None, *args[3:])
        return forward(self, hidden_states, *args, **kwargs)

    return without_cache


@pytest.fixture
def fused_drops_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused.FusedAttention, "forward", _dropping_cache(fused.FusedAttention.forward))


@pytest.fixture
def every_attention_drops_cache(monkeypatch: pytest.MonkeyPatch, fused_drops_cache: None) -> None:
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


@pytest.mark.slow
def test_the_check_sees_a_fused_attention_that_drops_the_cache(demo_local: LocalModel, cache: Path) -> None:
    loaded = load_model(demo_local, cache_dir=cache)
    ids = selfcheck.probe_ids(loaded.tokenizer, 49152)
    good = selfcheck.check_cache_consistency(loaded.model, ids, runtime="packed+fused")
    assert good.ok, good.describe()
    broken_forward = _dropping_cache(fused.FusedAttention.forward)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused.FusedAttention, "forward", broken_forward)
        bad = selfcheck.check_cache_consistency(loaded.model, ids, runtime="packed+fused")
    assert not bad.ok
    assert bad.relative_difference > 10 * selfcheck.TOLERANCE[torch.float32]
    assert "largest logit difference" in bad.describe()


@pytest.mark.slow
def test_the_check_runs_on_float_products_and_restores_the_switch(demo_local: LocalModel, cache: Path) -> None:
    loaded = load_model(demo_local, cache_dir=cache)
    packed = [m for m in loaded.model.modules() if isinstance(getattr(m, "integer_dot", None), bool)]
    assert packed
    packed[0].integer_dot = False  # a per-module override survives the check
    seen: list[bool] = []
    original = type(packed[1]).forward

    def spy(self: Any, x: torch.Tensor) -> torch.Tensor:
        seen.append(self.integer_dot)
        return original(self, x)  # type: ignore[no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(packed[1]), "forward", spy)
        selfcheck.check_cache_consistency(loaded.model, list(range(3, 13)), runtime="packed+fused")
    assert seen and not any(seen)
    assert packed[0].integer_dot is False
    assert "integer_dot" not in packed[1].__dict__


# ------------------------------------------------------------------------------------------ at load


@pytest.mark.slow
def test_a_fused_model_that_drops_the_cache_falls_back_and_still_answers(
    demo_local: LocalModel, cache: Path, fused_drops_cache: None
) -> None:
    notes: list[str] = []
    loaded = load_model(demo_local, cache_dir=cache, on_status=notes.append)
    warnings = [n for n in notes if n.startswith("Warning")]
    assert len(warnings) == 1, notes
    assert "transformers " + selfcheck.library_versions(["transformers"])["transformers"] in warnings[0]
    assert "unfused" in warnings[0]
    assert not any(isinstance(m, fused.FusedAttention) for m in loaded.model.modules())
    assert "Paris" in _greedy(loaded, "What is the capital of France?")


@pytest.mark.slow
def test_without_a_listener_the_warning_goes_to_the_log(
    demo_local: LocalModel, cache: Path, fused_drops_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="influence_tui"):
        load_model(demo_local, cache_dir=cache)
    assert any("fused kernels disagree" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_when_no_packed_form_passes_transformers_floats_answer(
    demo_local: LocalModel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = selfcheck.check_cache_consistency

    def packed_always_wrong(model: Any, ids: Any, *, runtime: str) -> selfcheck.Verdict:
        verdict = real(model, ids, runtime=runtime)
        if runtime.startswith("packed"):
            return selfcheck.Verdict(False, 9.0, 10.0, False, verdict.probe_tokens, runtime)
        return verdict

    monkeypatch.setattr(selfcheck, "check_cache_consistency", packed_always_wrong)
    notes: list[str] = []
    loaded = load_model(demo_local, cache_dir=cache, on_status=notes.append, dtype="float32")
    assert [n for n in notes if n.startswith("Warning")][-1].endswith("(slower, more memory).")
    assert loaded.quantize == "none"
    assert loaded.info.quantization == ""
    assert "Paris" in _greedy(loaded, "What is the capital of France?")


@pytest.mark.slow
def test_when_nothing_passes_the_load_is_refused_naming_the_version(
    demo_local: LocalModel, cache: Path, every_attention_drops_cache: None
) -> None:
    with pytest.raises(InfluenceError) as caught:
        load_model(demo_local, cache_dir=cache, on_status=lambda _note: None, dtype="float32")
    message = str(caught.value)
    assert "transformers " + selfcheck.library_versions(["transformers"])["transformers"] in message
    assert "would be wrong" in message
    assert caught.value.hint is not None and "transformers<" in caught.value.hint


def test_a_float_model_that_drops_the_cache_is_refused(tiny_llama: Path, cache: Path, monkeypatch: Any) -> None:
    from transformers.models.llama import modeling_llama

    attention = modeling_llama.LlamaAttention
    monkeypatch.setattr(attention, "forward", _dropping_cache(attention.forward))
    (local,) = inspect_path(tiny_llama)
    with pytest.raises(InfluenceError, match="other results than a full pass"):
        load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)


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
    assert calls == ["transformers"]
    assert len(list((cache / "selfcheck").glob("*.json"))) == 1
    versions = dict(selfcheck.library_versions(), transformers="99.0.0")
    monkeypatch.setattr(selfcheck, "library_versions", lambda names=selfcheck.LIBRARIES: versions)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == ["transformers", "transformers"]


def test_a_damaged_verdict_file_means_checking_again(tiny_llama: Path, cache: Path, monkeypatch: Any) -> None:
    calls = _counting(monkeypatch)
    (local,) = inspect_path(tiny_llama)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    (stored,) = (cache / "selfcheck").glob("*.json")
    stored.write_text("{not json")
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == ["transformers", "transformers"]


def test_the_check_can_be_switched_off_for_benchmarks(tiny_llama: Path, cache: Path, monkeypatch: Any) -> None:
    calls = _counting(monkeypatch)
    monkeypatch.setenv("INFLUENCE_SELFCHECK", "off")
    (local,) = inspect_path(tiny_llama)
    load_model(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
    assert calls == []


# ------------------------------------------------------------------------------------------ prepared-model key


def test_the_prepared_key_changes_with_the_libraries_that_wrote_it(
    demo_local: LocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = prepared_key(demo_local, "auto")
    real = selfcheck.library_versions()
    keys = {base}
    for library in ("transformers", "tokenizers", "gguf", "torch"):
        changed = dict(real, **{library: "0.0.1"})
        monkeypatch.setattr(prepare_module, "library_versions", lambda changed=changed: changed)
        keys.add(prepared_key(demo_local, "auto"))
    assert len(keys) == 5
    monkeypatch.setattr(prepare_module, "library_versions", lambda: real)
    assert prepared_key(demo_local, "auto") == base


def test_supported_range_reads_the_installed_metadata() -> None:
    supported = selfcheck.supported_range("transformers")
    assert supported.startswith("<") or ">=" in supported
    assert "<" in supported
    assert selfcheck.supported_range("no-such-library") == ""
