"""Decode speed of the native demo model beside the current packed path, measured in one run.

Both load the demo GGUF (SmolLM2-135M-Instruct Q4_1), prefill the same 20-token prompt (``--prompt-tokens``) and decode 128 greedy
tokens under ``torch.inference_mode()``, the way the generation loop calls a model (one token and position
tensor filled in place per step, ``logits_to_keep=1``). Each path runs ``--rounds`` times, interleaved; the
best round is reported (the machine is shared: the best is the least disturbed).

    python bench/native_decode.py [--rounds 3] [--steps 128] [--prompt-tokens 20] [--native-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch


def decode(model: Any, cache: Any, prompt: list[int], steps: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tokens per second, the greedy tokens)."""
    with torch.inference_mode():
        start = time.perf_counter()
        ids = torch.tensor([prompt])
        positions = torch.arange(len(prompt)).unsqueeze(0)
        out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = int(out.logits[0, -1].argmax())
        prefill = time.perf_counter() - start
        tokens = [token]
        step_ids = torch.empty((1, 1), dtype=torch.long)
        step_pos = torch.empty((1, 1), dtype=torch.long)
        start = time.perf_counter()
        for i in range(steps):
            step_ids.fill_(token)
            step_pos.fill_(len(prompt) + i)
            out = model(
                input_ids=step_ids, past_key_values=cache, position_ids=step_pos, use_cache=True, logits_to_keep=1
            )
            cache = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
        rate = steps / (time.perf_counter() - start)
    return prefill, rate, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=20, help="prompt length (the cache decode starts from)")
    parser.add_argument("--native-only", action="store_true", help="skip the current (transformers-based) path")
    args = parser.parse_args(argv)

    from influence_tui.core.engine.weights.gguf import load_gguf_model
    from influence_tui.core.library import demo_model_file

    demo = demo_model_file()
    if demo is None:
        print("the demo model is not installed", file=sys.stderr)
        return 1
    start = time.perf_counter()
    native, _config, _meta = load_gguf_model(demo)
    native_load = time.perf_counter() - start
    print(f"native: loaded in {native_load:.2f} s (transformers imported: {'transformers' in sys.modules})")
    runs: dict[str, tuple[Any, Any]] = {"native": (native, native.new_cache)}
    if not args.native_only:
        import tempfile
        from pathlib import Path

        from influence_tui.core.engine.kvcache import new_cache
        from influence_tui.core.engine.loader import load_model
        from influence_tui.core.library import DEMO_NAME, gguf_model

        cache_dir = Path(tempfile.mkdtemp(prefix="bench-native-"))
        local = gguf_model(DEMO_NAME, demo, "demo", [demo])
        load_model(local, device="cpu", cache_dir=cache_dir)  # prepares the packed weights once
        start = time.perf_counter()
        current = load_model(local, device="cpu", cache_dir=cache_dir)
        print(f"current: loaded in {time.perf_counter() - start:.2f} s (prepared, second load)")
        runs["current"] = (current.model, lambda: new_cache(current.model))
        prompt = current.tokenizer.encode(
            "The capital of France is Paris. The capital of Italy is", add_special_tokens=False
        )
    else:
        prompt = [504, 3458, 282, 4649, 314, 7042, 30, 378, 3458, 282, 10675, 314]
    prompt = (prompt * (args.prompt_tokens // max(1, len(prompt)) + 1))[: args.prompt_tokens]
    results: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, (model, fresh) in runs.items():
            prefill, rate, toks = decode(model, fresh(), prompt, args.steps)
            results[name].append(rate)
            tokens[name] = toks
            print(f"  {name}: prefill {prefill * 1000:.0f} ms, decode {rate:.1f} tok/s")
    for name, rates in results.items():
        print(
            f"{name}: best {max(rates):.1f} tok/s, median {statistics.median(rates):.1f} tok/s over {len(rates)} rounds"
        )
    if "current" in tokens:
        same = sum(a == b for a, b in zip(tokens["native"], tokens["current"], strict=True))
        print(f"greedy tokens equal: {same}/{len(tokens['native'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
