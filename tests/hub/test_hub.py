"""Search and model details against the loopback Hub, through the real huggingface_hub client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influence_tui.cli import main
from influence_tui.core.errors import HubUnreachableError
from influence_tui.core.formats import FormatError, read_gguf_prefix_metadata
from influence_tui.core.hub import HubClient, gguf_groups, gguf_quant_name
from influence_tui.core.memory import estimate_memory, kv_shape_from_config, verdict
from influence_tui.core.types import MachineMemory, RepoFile
from tests.hub.conftest import GATED, GGUF, LLAMA
from tests.hub.hubserver import HubServer

GiB = 2**30


@pytest.fixture
def search_hub(hub: HubServer, tmp_path: Path) -> HubServer:
    """A few extra repos with known downloads, likes, dates, authors and tags."""
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cards = [
        ("acme/alpha-chat-GGUF", 100, 50, "2024-05-01T00:00:00.000Z", ["gguf", "chat"]),
        ("acme/beta-chat", 300, 10, "2024-03-01T00:00:00.000Z", ["safetensors", "chat"]),
        ("other/gamma-chat-GGUF", 200, 30, "2024-06-01T00:00:00.000Z", ["gguf"]),
        ("other/delta-coder", 50, 90, "2024-01-01T00:00:00.000Z", ["safetensors"]),
    ]
    for i, (repo_id, downloads, likes, updated, tags) in enumerate(cards):
        hub.add_repo(
            repo_id,
            folder,
            downloads=downloads,
            likes=likes,
            last_modified=updated,
            trending_score=i,
            tags=tags,
            pipeline_tag="text-generation",
        )
    return hub


def ids(models: list) -> list[str]:  # type: ignore[type-arg]
    return [m.id for m in models]


def test_search_sort_limit_author_filter(search_hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    with HubClient(hub_settings) as client:
        assert ids(client.search("chat")) == ["acme/beta-chat", "other/gamma-chat-GGUF", "acme/alpha-chat-GGUF"]
        assert ids(client.search("chat", sort="likes")) == [
            "acme/alpha-chat-GGUF",
            "other/gamma-chat-GGUF",
            "acme/beta-chat",
        ]
        assert ids(client.search("chat", sort="updated", limit=2)) == ["other/gamma-chat-GGUF", "acme/alpha-chat-GGUF"]
        assert ids(client.search(author="acme", sort="downloads")) == ["acme/beta-chat", "acme/alpha-chat-GGUF"]
        assert ids(client.search(filters=["gguf"], sort="likes")) == [
            "acme/alpha-chat-GGUF",
            "other/gamma-chat-GGUF",
            GGUF,
        ]
        assert ids(client.search("chat", filters=["gguf"], author="other")) == ["other/gamma-chat-GGUF"]
        assert ids(client.search("trending-nothing")) == []
        top = client.search(sort="trending", limit=1)[0]
    assert top.id == "other/delta-coder"
    assert (top.author, top.downloads, top.likes, top.updated) == ("other", 50, 90, "2024-01-01T00:00:00Z")
    assert top.pipeline_tag == "text-generation" and top.tags == ("safetensors",)
    assert "limit=1" in search_hub.api_calls[-1]


def test_search_result_fields_and_gated(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    with HubClient(hub_settings) as client:
        (gated,) = client.search("gated")
        (llama,) = client.search("llama-sharded")
    assert gated.gated == "auto"
    assert llama.gated is None and llama.library_name == "transformers" and llama.downloads == 500


def test_cli_search_table_and_json(search_hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "chat", "--sort", "likes", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.index("acme/alpha-chat-GGUF") < out.index("other/gamma-chat-GGUF")
    assert "acme/beta-chat" not in out
    assert main(["search", "--filter", "gguf", "--author", "acme", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in data] == ["acme/alpha-chat-GGUF"]
    assert data[0]["likes"] == 50 and data[0]["tags"] == ["gguf", "chat"]


def test_details_gguf_choices_sizes_and_verdicts(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    repo = hub.repos[GGUF].revisions["main"]
    with HubClient(hub_settings) as client:
        details = client.details(GGUF)
    assert details.commit == repo.commit
    assert {f.path for f in details.files} == set(repo.files)
    assert all(f.sha256 == repo.files[f.path].sha256 for f in details.files if f.path.endswith(".gguf"))
    assert details.formats == ("gguf",)
    names = [c.name for c in details.choices]
    assert sorted(names) == ["F16", "Q4_0", "Q8_0"]
    f16 = details.choice("f16")
    assert f16 is not None and f16.files == ("tiny-F16-00001-of-00002.gguf", "tiny-F16-00002-of-00002.gguf")
    assert f16.size_bytes == sum(repo.files[p].size for p in f16.files)
    for choice in details.choices:
        mem = choice.memory
        assert mem is not None and mem.verdict == "fits" and mem.weights_bytes == choice.size_bytes
        # from the GGUF header: 2 (K, V) x 2 blocks x 2 KV heads x 16 head dim x 2048 tokens x 2 bytes
        assert mem.kv_cache_exact and mem.kv_cache_bytes == 2 * 2 * 2 * 16 * 2048 * 2
        assert mem.context == 2048  # the model's own context is below the default 4096
    assert [c.size_bytes for c in details.choices] == sorted(c.size_bytes for c in details.choices)
    assert details.parameters == 65536 and details.architecture == "llama"


def test_details_safetensors_sharded(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    repo = hub.repos[LLAMA].revisions["main"]
    with HubClient(hub_settings) as client:
        details = client.details(LLAMA, context=100)
    assert set(details.formats) == {"safetensors", "pytorch-bin", "onnx"}
    (choice,) = details.choices
    shards = sorted(p for p in repo.files if p.endswith(".safetensors"))
    assert len(shards) >= 2 and list(choice.files) == shards
    assert choice.size_bytes == sum(repo.files[p].size for p in shards)
    assert choice.memory is not None and choice.memory.kv_cache_bytes == 2 * 2 * 2 * 16 * 100 * 2
    assert details.parameters == hub.repos[LLAMA].safetensors["total"]  # type: ignore[index]
    assert details.context_length == 256


def test_cli_info(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", GGUF]) == 0
    out = capsys.readouterr().out
    for text in ("Q4_0", "Q8_0", "F16", "fits", "tiny-F16-00002-of-00002.gguf", "README.md", "--quant"):
        assert text in out
    assert main(["info", GATED, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gated"] == "auto" and data["choices"][0]["name"] == "safetensors"
    assert data["choices"][0]["memory"]["verdict"] in ("fits", "tight", "won't fit")


def test_missing_repo_and_revision_are_one_line_errors(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "tiny/nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no model repo 'tiny/nope'" in err
    assert main(["info", LLAMA, "--revision", "v9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no revision 'v9'" in err
    assert main(["info", "not-a-repo-id"]) == 1
    assert "not a repo id" in capsys.readouterr().err


def test_unreachable_endpoint(hub_settings, unused_port: int) -> None:  # type: ignore[no-untyped-def]
    with (
        HubClient(hub_settings, endpoint=f"http://127.0.0.1:{unused_port}") as client,
        pytest.raises(HubUnreachableError, match=r"cannot reach the Hub at http://127\.0\.0\.1"),
    ):
        client.search("x")


def test_offline_mode_is_a_clear_error(hub_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with HubClient(hub_settings) as client, pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        client.repo_info(LLAMA)


# ------------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-7b-instruct-q5_k_s.gguf", "Q5_K_S"),
        ("mistral-7b-v0.1.Q8_0.gguf", "Q8_0"),
        ("Phi-3-mini-4k-instruct-fp16.gguf", "F16"),
        ("model-IQ2_XXS-00001-of-00003.gguf", "IQ2_XXS"),
        ("sub/dir/gemma-2b.BF16.gguf", "BF16"),
        ("Qwen3-0.6B-Q4_0_4_4.gguf", "Q4_0_4_4"),
        ("plain-model.gguf", None),
    ],
)
def test_gguf_quant_name(name: str, quant: str | None) -> None:
    assert gguf_quant_name(name) == quant


def test_gguf_groups_split_parts_mmproj_and_duplicates() -> None:
    files = [
        RepoFile("m-Q4_K_M.gguf", 10),
        RepoFile("m-Q8_0-00002-of-00002.gguf", 20),
        RepoFile("m-Q8_0-00001-of-00002.gguf", 20),
        RepoFile("mmproj-m-f16.gguf", 5),
        RepoFile("a/x-Q2_K.gguf", 3),
        RepoFile("b/y-Q2_K.gguf", 3),
    ]
    groups = gguf_groups(files)
    assert set(groups) == {"Q4_K_M", "Q8_0", "x-Q2_K", "y-Q2_K"}
    assert [f.path for f in groups["Q8_0"]] == ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]


def test_memory_verdicts() -> None:
    machine = MachineMemory(ram_total=16 * GiB, ram_available=10 * GiB)
    shape = {"layers": 32, "kv_heads": 8, "head_dim": 128}
    assert (
        kv_shape_from_config(
            {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
        )
        == shape
    )
    small = estimate_memory(4 * GiB, shape, 4096, machine)
    assert small.kv_cache_bytes == 512 * 2**20 and small.device == "cpu" and small.verdict == "fits"
    assert estimate_memory(8 * GiB, shape, 4096, machine).verdict == "tight"
    assert estimate_memory(12 * GiB, shape, 4096, machine).verdict == "won't fit"
    gpu = MachineMemory(ram_total=64 * GiB, ram_available=60 * GiB, vram_total=24 * GiB, vram_free=20 * GiB)
    assert estimate_memory(8 * GiB, shape, 4096, gpu).device == "cuda"
    assert estimate_memory(30 * GiB, shape, 4096, gpu).device == "cpu"
    guessed = estimate_memory(2 * GiB, {}, 4096, machine, parameters=1_000_000_000)
    assert not guessed.kv_cache_exact and guessed.kv_cache_bytes == int(2.5e-5 * 1e9 * 4096)
    assert verdict(80, 100) == "fits" and verdict(81, 100) == "tight" and verdict(101, 100) == "won't fit"


def test_gguf_prefix_metadata_survives_truncation(repo_folders: dict[str, Path]) -> None:
    data = (repo_folders["gguf"] / "tiny-Q8_0.gguf").read_bytes()
    full = read_gguf_prefix_metadata(data)
    assert full["general.architecture"] == "llama" and full["llama.block_count"] == 2
    for cut in (30, 100, 300, 600):
        part = read_gguf_prefix_metadata(data[:cut])
        assert all(full[k] == v for k, v in part.items())
    with pytest.raises(FormatError):
        read_gguf_prefix_metadata(b"not a gguf file at all, no")
