"""Fixed Hub answers and download states, for pictures that never change: the snapshot tests and
`make screenshots` show the hub search, the quantization dialog and the downloads screen with these.

The memory estimates and verdicts are computed by the real core (:func:`estimate_memory`) for a fixed machine
(16 GiB of RAM free, no GPU), so the pictures show what the app would say on such a machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from textual.pilot import Pilot

from influence_tui.core.hub import HubClient
from influence_tui.core.memory import DEFAULT_CONTEXT, estimate_memory
from influence_tui.core.types import (
    DownloadProgress,
    DownloadResult,
    FileProgress,
    HubModel,
    HubModelDetails,
    LocalModel,
    MachineMemory,
    QuantChoice,
    RepoFile,
)

GiB = 2**30
MiB = 2**20
MODELS_DIR = "/home/you/.local/share/influence/models"
MACHINE = MachineMemory(ram_total=32 * GiB, ram_available=16 * GiB)


def _model(repo: str, downloads: int, likes: int, updated: str, tags: tuple[str, ...], **kw: Any) -> HubModel:
    return HubModel(
        id=repo,
        author=repo.split("/", maxsplit=1)[0],
        downloads=downloads,
        likes=likes,
        updated=updated,
        tags=tags,
        pipeline_tag="text-generation",
        **kw,
    )


SEARCH_RESULTS: list[HubModel] = [
    _model(
        "Qwen/Qwen3-0.6B-GGUF",
        412_337,
        178,
        "2025-05-21T10:00:00Z",
        ("gguf", "qwen3", "conversational", "license:apache-2.0"),
        library_name="gguf",
    ),
    _model(
        "unsloth/Qwen3-4B-GGUF",
        268_121,
        96,
        "2025-06-02T08:00:00Z",
        ("gguf", "qwen3", "unsloth", "conversational"),
        library_name="gguf",
    ),
    _model(
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        187_004,
        131,
        "2024-10-14T12:00:00Z",
        ("gguf", "llama", "facebook", "meta", "llama-3"),
        library_name="gguf",
    ),
    _model(
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        95_410,
        142,
        "2025-02-10T09:00:00Z",
        ("transformers", "safetensors", "llama", "conversational"),
        library_name="transformers",
    ),
    _model(
        "Qwen/Qwen2.5-0.5B-Instruct",
        1_480_220,
        342,
        "2024-09-25T07:00:00Z",
        ("transformers", "safetensors", "qwen2", "chat"),
        library_name="transformers",
    ),
    _model(
        "meta-llama/Llama-3.2-1B-Instruct",
        2_904_577,
        1_021,
        "2024-10-24T15:00:00Z",
        ("transformers", "safetensors", "llama", "llama-3"),
        library_name="transformers",
        gated="manual",
    ),
    _model(
        "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        48_090,
        171,
        "2023-12-31T18:00:00Z",
        ("gguf", "llama", "tinyllama"),
        library_name="gguf",
    ),
    _model(
        "microsoft/Phi-3-mini-4k-instruct-gguf",
        33_118,
        502,
        "2024-07-01T11:00:00Z",
        ("gguf", "phi3", "nlp", "code"),
        library_name="gguf",
    ),
]

# Qwen3-0.6B's shape: 28 layers, 8 KV heads of 128.
_QWEN_SHAPE = {"layers": 28, "kv_heads": 8, "head_dim": 128, "context": 40960}
_QWEN_QUANTS = {
    "Q4_K_M": 396_705_472,
    "Q5_K_M": 444_187_712,
    "Q6_K": 494_891_072,
    "Q8_0": 639_446_688,
    "F16": 1_198_182_976,
}


def _choice(name: str, size: int, files: tuple[str, ...], kind: str = "gguf") -> QuantChoice:
    memory = estimate_memory(size, _QWEN_SHAPE, DEFAULT_CONTEXT, MACHINE, 596_049_920)
    return QuantChoice(name=name, kind=kind, files=files, size_bytes=size, memory=memory)  # type: ignore[arg-type]


def qwen_details() -> HubModelDetails:
    files = [RepoFile(".gitattributes", 1_570, blob_id="a" * 40), RepoFile("README.md", 9_422, blob_id="b" * 40)]
    files += [
        RepoFile(f"Qwen3-0.6B-{q}.gguf", size, sha256=f"{i:064x}") for i, (q, size) in enumerate(_QWEN_QUANTS.items())
    ]
    files += [RepoFile("params", 142, blob_id="c" * 40)]
    choices = tuple(_choice(q, size, (f"Qwen3-0.6B-{q}.gguf",)) for q, size in _QWEN_QUANTS.items())
    return HubModelDetails(
        model=SEARCH_RESULTS[0],
        revision="main",
        commit="f2b3a1c9d0e4" + "0" * 28,
        files=tuple(sorted(files, key=lambda f: f.path)),
        formats=("gguf",),
        choices=choices,
        machine=MACHINE,
        parameters=596_049_920,
        context_length=40960,
        architecture="qwen3",
    )


def generic_details(model: HubModel) -> HubModelDetails:
    size = 724 * MiB
    choice = _choice("safetensors", size, ("model.safetensors",), kind="safetensors")
    files = (RepoFile("config.json", 861, blob_id="d" * 40), RepoFile("model.safetensors", size, sha256="e" * 64))
    return HubModelDetails(
        model=model,
        revision="main",
        commit="0" * 40,
        files=files,
        formats=("safetensors",),
        choices=(choice,),
        machine=MACHINE,
        architecture="llama",
    )


DETAILS: dict[str, HubModelDetails] = {SEARCH_RESULTS[0].id: qwen_details()}


@contextmanager
def fixed_hub() -> Iterator[None]:
    """HubClient answers with the fixed data above (no network, no clock, no machine probing)."""

    def search(self: HubClient, query: str | None = None, **kw: Any) -> list[HubModel]:
        return list(SEARCH_RESULTS)

    def details(self: HubClient, repo_id: str, revision: str | None = None, **kw: Any) -> HubModelDetails:
        known = DETAILS.get(repo_id)
        if known is not None:
            return known
        return generic_details(next(m for m in SEARCH_RESULTS if m.id == repo_id))

    with mock.patch.object(HubClient, "search", search), mock.patch.object(HubClient, "details", details):
        yield


async def settle(pilot: Pilot[Any]) -> None:
    """Let timers fire and workers answer, twice (a search answer starts a details fetch)."""
    for _ in range(2):
        await pilot.pause(0.3)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def open_hub(pilot: Pilot[Any]) -> None:
    """F2, wait for the results and the first model's details, then move from the search box to the results."""
    await pilot.press("f2")
    await settle(pilot)
    await pilot.press("escape")
    await settle(pilot)


async def open_quant_dialog(pilot: Pilot[Any]) -> None:
    await open_hub(pilot)
    await pilot.press("down", "down")  # Qwen/Qwen3-0.6B-GGUF: five quantizations
    await settle(pilot)
    await pilot.press("d")
    await settle(pilot)


async def open_downloads(pilot: Pilot[Any]) -> None:
    feed_downloads(pilot.app.downloads)  # type: ignore[attr-defined]
    await pilot.press("f3")
    await settle(pilot)


# ------------------------------------------------------------------------------------------ downloads


def _progress(repo: str, files: list[tuple[str, int, int, str]], speed: float, eta: float | None) -> DownloadProgress:
    fps = tuple(FileProgress(path=p, size=size, done=done, state=state) for p, size, done, state in files)  # type: ignore[arg-type]
    done = sum(f.done for f in fps)
    total = sum(f.size for f in fps)
    return DownloadProgress(
        repo_id=repo,
        files=fps,
        state="downloading",
        done_bytes=done,
        total_bytes=total,
        fetched_bytes=done,
        speed=speed,
        eta_s=eta,
        elapsed_s=0.0,
    )


SPEEDS = [0.0, 3.1, 6.8, 7.9, 8.4, 8.1, 7.2, 8.8, 9.4, 9.0, 8.6, 8.2, 8.9, 9.3, 8.5, 7.7, 8.0, 8.4]


def feed_downloads(service: Any) -> None:
    """Put six downloads in every state into a :class:`DownloadService` (the real ``apply`` path, no network)."""
    from influence_tui.tui.download_service import DownloadRequest, DownloadUpdated

    service.remember = False

    def add(request: DownloadRequest, state: Any, **kw: Any) -> None:
        entry = service.track(request)
        service.apply(DownloadUpdated(entry.id, 0, state, **kw))

    smol = "HuggingFaceTB/SmolLM2-135M-Instruct"
    folder = Path(MODELS_DIR) / "HuggingFaceTB__SmolLM2-135M-Instruct"
    done_files = [("model.safetensors", 269_060_552, 269_060_552, "done"), ("config.json", 861, 861, "done")]
    model = LocalModel(name=smol, path=folder, source="models-dir", format="safetensors", quantization="BF16")
    result = DownloadResult(
        smol, "main", "0" * 40, folder, ("config.json", "model.safetensors"), 269_061_413, 0, 31.6, smol
    )
    add(DownloadRequest(smol), "done", progress=_progress(smol, done_files, 0.0, None), result=result, model=model)

    add(
        DownloadRequest("microsoft/Phi-3-mini-4k-instruct-gguf", "Q4_K_M"),
        "cancelled",
        progress=_progress(
            "microsoft/Phi-3-mini-4k-instruct-gguf",
            [("Phi-3-mini-4k-instruct-q4.gguf", 2_393_231_072, 1_002_438_656, "cancelled")],
            0,
            None,
        ),
        message="cancelled; r resumes from the bytes on disk",
    )
    add(
        DownloadRequest("meta-llama/Llama-3.2-1B-Instruct"),
        "failed",
        message="meta-llama/Llama-3.2-1B-Instruct is gated: accept its license at https://huggingface.co/meta-llama/"
        "Llama-3.2-1B-Instruct, then set HF_TOKEN (or pass --token) to a token of that account",
    )
    add(
        DownloadRequest("bartowski/Llama-3.2-1B-Instruct-GGUF", "Q8_0"),
        "queued",
        message="waiting for another download to finish",
    )
    smol360 = "HuggingFaceTB/SmolLM2-360M-Instruct"
    entry = service.track(DownloadRequest(smol360))
    service.apply(
        DownloadUpdated(
            entry.id,
            0,
            None,
            progress=_progress(
                smol360,
                [
                    ("model.safetensors", 723_674_912, 723_674_912, "verifying"),
                    ("tokenizer.json", 3_764_000, 3_764_000, "done"),
                ],
                0.0,
                None,
            ),
        )
    )
    qwen = "Qwen/Qwen3-0.6B-GGUF"
    entry = service.track(DownloadRequest(qwen, "Q4_K_M"))
    for i, speed in enumerate(SPEEDS):
        progress = _progress(
            qwen, [("Qwen3-0.6B-Q4_K_M.gguf", 396_705_472, 163_577_856, "downloading")], speed * MiB, 27.4
        )
        progress = DownloadProgress(**{**progress.__dict__, "elapsed_s": i * 0.5})
        service.apply(DownloadUpdated(entry.id, 0, None, progress=progress))
