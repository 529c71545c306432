"""The load-time self-check: a model whose KV-cache path disagrees with a full pass is never used in silence.

Our engine swaps its own modules (packed weights, fused attention, a growing KV cache) into models that
another library defines, and that library's calling conventions can change under us: transformers 5.24 began
passing the cache to attention modules under a new name, and the fused attention silently attended to the new
token alone (fluent garbage, green tests of the day before). So every loaded model is checked once: the logits
of the last position of a short prompt, computed in one pass, must agree with the same position reached by
prefilling half the prompt and decoding the rest token by token through the cache, as the generation loop
does. A disagreement means the cache is not being read or written, whatever the reason.

The verdict is cached under ``<cache dir>/selfcheck/`` keyed by the weights' identity, the runtime (fused,
packed, transformers), the quantization and the versions of every library the computation goes through, so
it costs one short prompt per model and install, not per load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from influence_tui import __version__
from influence_tui.core.fsutil import atomic_write_text

SELFCHECK_VERSION = 1
PROBE_TEXT = "The capital of France is Paris. 1, 2, 3: the quick brown fox jumps over the lazy dog."
PROBE_TOKENS = 16
"""Tokens of the probe prompt: enough positions for a broken cache to show, few enough to cost milliseconds."""

TOLERANCE = {torch.float32: 0.005, torch.float16: 0.1, torch.bfloat16: 0.1}
"""Allowed largest difference between the two last-position logit vectors, as a share of the logits' range,
by the dtype the model computes in.

The check runs with float products (the integer-dot kernels quantize each activation row to int8, and a
rounding that flips between the two ways spreads through the layers: up to 9% of the range on the demo, with
the same top token). With float products the two ways differ only in the order of sums: 2e-6 of the range in
float32 and about 1% in bfloat16, measured on the demo. A cache that is not read (the transformers 5.24
failure) gives 62%."""

LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "gguf", "safetensors")
"""The libraries whose code a loaded model's numbers go through: their versions key prepared models and
self-check verdicts."""


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """``{name: installed version}`` (``"absent"`` for a library that is not installed), read from metadata
    without importing anything."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def supported_range(library: str) -> str:
    """The version range of ``library`` that this Influence declares (``"<5.24,>=4.56"``), or ``""``."""
    try:
        requires = metadata.requires("influence-tui") or []
    except metadata.PackageNotFoundError:
        return ""
    for line in requires:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(\[[^]]*\])?\s*([^;]*)", line)
        if match is not None and match.group(1).lower().replace("_", "-") == library.lower().replace("_", "-"):
            return match.group(3).strip()
    return ""


def files_identity(paths: Iterable[Path]) -> list[str]:
    """``path:size:mtime_ns`` of each file, sorted: what a cache keyed on a model's weights must change with."""
    parts = []
    for path in sorted(paths):
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return parts


@dataclass(frozen=True)
class Verdict:
    """The outcome of one self-check."""

    ok: bool
    max_difference: float
    logit_range: float
    top_token_agrees: bool
    probe_tokens: int
    runtime: str

    @property
    def relative_difference(self) -> float:
        return self.max_difference / self.logit_range if self.logit_range > 0 else float("inf")

    def describe(self) -> str:
        agree = "agrees" if self.top_token_agrees else "differs"
        return (
            f"{self.runtime}: cached decoding vs one pass over {self.probe_tokens} tokens: largest logit "
            f"difference {self.max_difference:.3g} ({self.relative_difference:.2%} of the range), top token {agree}"
        )


def probe_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """The probe prompt's token ids (ids the model's vocabulary holds), padded or cut to :data:`PROBE_TOKENS`."""
    ids = [int(i) for i in tokenizer.encode(PROBE_TEXT, add_special_tokens=False) if 0 <= int(i) < vocab_size]
    if len(ids) < PROBE_TOKENS:  # a byte-level or tiny vocabulary: spread fixed ids over it
        ids += [(7919 * (k + 1)) % vocab_size for k in range(PROBE_TOKENS - len(ids))]
    return ids[:PROBE_TOKENS]


def _vocab_size(model: Any) -> int:
    config = getattr(model, "config", None)
    for scope in (config, getattr(config, "text_config", None)):
        size = getattr(scope, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            return size
    embeddings = model.get_input_embeddings()
    return int(getattr(embeddings, "num_embeddings", 0) or embeddings.weight.shape[0])


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device  # type: ignore[no-any-return]


@contextlib.contextmanager
def _float_products(model: Any) -> Iterator[None]:
    """Switch every packed module of ``model`` to float products for the duration (see :data:`TOLERANCE`)."""
    switched = [m for m in model.modules() if isinstance(getattr(m, "integer_dot", None), bool)]
    saved = [m.__dict__.get("integer_dot") for m in switched]
    for m in switched:
        m.integer_dot = False
    try:
        yield
    finally:
        for m, value in zip(switched, saved, strict=True):
            if value is None:
                del m.integer_dot
            else:
                m.integer_dot = value


def _dtype(model: Any) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def check_cache_consistency(model: Any, ids: Sequence[int], *, runtime: str) -> Verdict:
    """Compare the last position's logits of ``ids`` in one pass with prefill-half-then-decode (see the module
    docstring). Uses the same call and cache as :func:`~influence_tui.core.engine.generate.generate_stream`."""
    from influence_tui.core.engine.kvcache import new_cache

    if len(ids) < 2:
        raise ValueError("the self-check needs at least two tokens")
    device = _device(model)
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=device)
    positions = torch.arange(len(ids), dtype=torch.long, device=device).unsqueeze(0)
    half = len(ids) // 2
    with torch.inference_mode(), _float_products(model):
        whole = model(input_ids=tokens, past_key_values=new_cache(model), position_ids=positions, use_cache=True)
        expected = whole.logits[0, -1].float()
        cache = new_cache(model)
        out = model(input_ids=tokens[:, :half], past_key_values=cache, position_ids=positions[:, :half], use_cache=True)
        cache = out.past_key_values if out.past_key_values is not None else cache
        for i in range(half, len(ids)):
            out = model(
                input_ids=tokens[:, i : i + 1],
                past_key_values=cache,
                position_ids=positions[:, i : i + 1],
                use_cache=True,
            )
            cache = out.past_key_values if out.past_key_values is not None else cache
        stepped = out.logits[0, -1].float()
    finite = bool(torch.isfinite(expected).all() and torch.isfinite(stepped).all())
    difference = float((expected - stepped).abs().max()) if finite else float("inf")
    logit_range = float(expected.max() - expected.min()) if finite else 0.0
    agrees = bool(int(expected.argmax()) == int(stepped.argmax()))
    tolerance = TOLERANCE.get(_dtype(model), 0.1)
    ok = finite and difference <= tolerance * logit_range + 1e-4
    return Verdict(ok, difference, logit_range, agrees, len(ids), runtime)


# ------------------------------------------------------------------------------------------ cached verdicts


def verdict_key(identity: Sequence[str], runtime: str, extra: Sequence[str] = ()) -> str:
    """The cache key of a verdict: the weights' identity, the runtime, anything else that changes the numbers
    (``extra``), this module's version, Influence's version and the libraries' versions."""
    versions = [f"{k}={v}" for k, v in sorted(library_versions().items())]
    parts = [f"selfcheck-v{SELFCHECK_VERSION}", f"influence={__version__}", runtime, *extra, *versions, *identity]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _verdict_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "selfcheck" / f"{key}.json"


def cached_verdict(cache_dir: Path, key: str) -> Verdict | None:
    try:
        data = json.loads(_verdict_path(cache_dir, key).read_text(encoding="utf-8"))
        return Verdict(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None  # none yet, or a damaged file: check again


def store_verdict(cache_dir: Path, key: str, verdict: Verdict) -> None:
    path = _verdict_path(cache_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(verdict)))
    except OSError:
        pass  # a read-only cache dir: the check runs again next time, which is only slower


def verify(
    model: Any,
    tokenizer: Any,
    *,
    runtime: str,
    identity: Sequence[str],
    cache_dir: Path | None,
    extra: Sequence[str] = (),
) -> Verdict:
    """The verdict for ``model`` in this runtime: from the cache when this exact combination was checked
    before, else checked now (and stored). ``INFLUENCE_SELFCHECK=off`` skips the check (for benchmarks that
    time bare loads); it is never off by default."""
    if os.environ.get("INFLUENCE_SELFCHECK", "").strip().lower() in ("0", "off", "false", "no"):
        return Verdict(True, 0.0, 0.0, True, 0, runtime)
    key = verdict_key(identity, runtime, extra)
    if cache_dir is not None and (known := cached_verdict(cache_dir, key)) is not None:
        return known
    verdict = check_cache_consistency(model, probe_ids(tokenizer, _vocab_size(model)), runtime=runtime)
    if cache_dir is not None:
        store_verdict(cache_dir, key, verdict)
    return verdict
