"""The native causal LM every family builds: embedding, decoder blocks, final norm, LM head, and the call.

:class:`CausalLM` is called the way the generation loop calls a transformers model::

    out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)

and answers an object with ``.logits`` (float32 ``[B, T or logits_to_keep, vocab]``) and ``.past_key_values``
(the cache it was given, or a new one). The positions in a cache are the positions the tokens were written
at, from 0 on; ``position_ids`` default to them. :class:`Block` is a pre-norm decoder layer, with Gemma's
extra norms after attention and MLP where given.

:meth:`CausalLM.decode_batch` is one decode step for several sequences at once, each with its own cache and
position: the embedding, every projection, the MLPs and the LM head run once on the ``B`` rows (reading each
weight once for all of them), and attention runs per row over that row's cache (:class:`~.cache.RowCaches`).
A row's numbers are those it would get alone: the packed kernels, norms and rotary embedding compute each row
by itself, and its attention makes the calls a single sequence makes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from influence_tui.core.engine.models.cache import KVCache, RowCaches
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import FloatEmbedding
from influence_tui.core.engine.models.rope import RotaryTable
from influence_tui.core.engine.quant.modules import PackedEmbedding, PackedLinear
from influence_tui.core.engine.quant.packed import PackedWeight


@dataclass
class CausalLMOutput:
    """What one call returns."""

    logits: torch.Tensor
    past_key_values: Any = None


class Block(nn.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))``; ``post_*`` norms (Gemma) wrap each output."""

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        input_norm: nn.Module,
        post_attention_norm: nn.Module,
        *,
        post_attn_out_norm: nn.Module | None = None,
        post_mlp_out_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = attn
        self.mlp = mlp
        self.input_layernorm = input_norm
        self.post_attention_layernorm = post_attention_norm
        self.post_attn_out_norm = post_attn_out_norm
        self.post_mlp_out_norm = post_mlp_out_norm
        # The hot path calls forward directly (see attention.Attention); no hooks are put on these modules.
        self._attn = attn.forward
        self._mlp = mlp.forward
        self._norm1 = input_norm.forward
        self._norm2 = post_attention_norm.forward
        self._post1 = None if post_attn_out_norm is None else post_attn_out_norm.forward
        self._post2 = None if post_mlp_out_norm is None else post_mlp_out_norm.forward

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any, past: int) -> torch.Tensor:
        """``x`` is the block's to update: the residual additions are made in place."""
        h = self._attn(self._norm1(x), cos, sin, cache, past)
        if self._post1 is not None:
            h = self._post1(h)
        x += h
        h = self._mlp(self._norm2(x))
        if self._post2 is not None:
            h = self._post2(h)
        x += h
        return x


class CausalLM(nn.Module):
    """A native decoder-only model (see the module docstring)."""

    def __init__(
        self,
        config: ModelConfig,
        embed: nn.Module,
        layers: Sequence[Block],
        norm: nn.Module,
        lm_head: nn.Module,
        *,
        ropes: Sequence[RotaryTable],
        rope_of_layer: Sequence[int],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = embed
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.ropes = list(ropes)
        """The rotary tables (Gemma 3 has one for its local layers and one for its global ones)."""
        self.rope_of_layer = list(rope_of_layer)
        self.compute_dtype = dtype
        """The dtype activations flow in: float32 for packed weights, else the weights'."""
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]
        self.embedding_multiplier = config.embedding_multiplier
        self.softcap = config.final_logit_softcapping
        self.trim_sliding = False
        """Whether :meth:`new_cache` gives sliding layers bounded buffers (see :mod:`.cache`)."""
        self.integer_dot = True
        """Whether q4/q8 products may quantize activations to int8 (see :func:`~.kernels.packed_linear`)."""
        self._blocks = [(block.forward, which) for block, which in zip(layers, self.rope_of_layer, strict=True)]
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------------------------------ the call

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        attention_mask: torch.Tensor | None = None,
        **_kwargs: Any,
    ) -> CausalLMOutput:
        """Logits for ``input_ids`` ``[B, T]`` after what ``past_key_values`` holds (see the module docstring).
        ``attention_mask`` may only be all ones: padded batches are not supported."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise NotImplementedError("native models do not take padded batches (an attention_mask with zeros)")
        cache = past_key_values if past_key_values is not None else self.new_cache()
        x = self._decode(input_ids, cache, position_ids)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return CausalLMOutput(self._logits(x), cache if use_cache else None)

    def decode_batch(self, tokens: torch.Tensor, caches: Sequence[KVCache], positions: torch.Tensor) -> torch.Tensor:
        """One decode step for ``B`` sequences: ``tokens[i]`` at ``positions[i]`` after what ``caches[i]`` holds
        (each cache gets its token's keys and values). Returns float32 logits ``[B, vocab]``; row ``i`` equals
        what ``forward`` gives sequence ``i`` alone (see the module docstring)."""
        b = tokens.shape[0]
        if len(caches) != b or positions.shape[0] != b:
            raise ValueError(f"{b} tokens need {b} caches and positions, got {len(caches)} and {positions.shape[0]}")
        rows = RowCaches(caches)
        position_ids = positions.reshape(b, 1)
        x = self._residual(tokens.reshape(b, 1), rows, position_ids, past=0, bound=int(position_ids.max()) + 1)
        return self._logits(x)[:, -1]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(x)).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits  # type: ignore[no-any-return]

    def last_hidden_state(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final norm's output ``[B, T, hidden]`` for ``input_ids`` (no cache kept): what embeddings from a
        chat model pool."""
        hidden: torch.Tensor = self.norm(self._decode(input_ids, self.new_cache(), None))
        return hidden

    def _decode(self, input_ids: torch.Tensor, cache: Any, position_ids: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after the last block."""
        past = cache.get_seq_length()
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0).expand(b, t)
        return self._residual(input_ids, cache, position_ids, past=past, bound=past + t)

    def _residual(
        self, input_ids: torch.Tensor, cache: Any, position_ids: torch.Tensor, *, past: int, bound: int
    ) -> torch.Tensor:
        """Embedding and every block: the residual stream ``[B, T, hidden]`` (positions all below ``bound``)."""
        tables = [rope.lookup(position_ids, bound) for rope in self.ropes]
        x = self.embed_tokens(input_ids)
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        if self.embedding_multiplier != 1.0:
            x = x * torch.tensor(self.embedding_multiplier, dtype=x.dtype)
        elif isinstance(self.embed_tokens, FloatEmbedding):
            x = x.clone()  # the blocks add into x in place; an embedding lookup may be a view of the table
        for block, which in self._blocks:
            cos, sin = tables[which]
            x = block(x, cos, sin, cache, past)
        return x  # type: ignore[no-any-return]

    def new_cache(self) -> KVCache:
        """An empty cache for this model's layers."""
        return KVCache(self.windows, trim_sliding=self.trim_sliding)

    # ------------------------------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        for tensor in self._tensors():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def _tensors(self) -> Iterator[torch.Tensor]:
        yield from self.parameters()
        yield from self.buffers()

    def _apply(self, fn: Any, recurse: bool = True) -> CausalLM:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        device = self.device
        for rope in self.ropes:
            rope.to(device)
        return self

    def set_integer_dot(self, enabled: bool) -> None:
        """Let q4/q8 products use int8 activations (faster, llama.cpp's numerics) or not (float products that
        match the dequantized weights to rounding)."""
        self.integer_dot = enabled
        for module in self.modules():
            if isinstance(module, PackedLinear):
                module.integer_dot = enabled

    def parameter_count(self) -> int:
        """Weights in the model, a packed matrix counted by its shape and a shared (tied) one once."""
        total, seen = 0, set()
        for module in self.modules():
            if isinstance(module, PackedLinear | PackedEmbedding):
                holder = module.weight_packed
                if id(holder) not in seen:
                    seen.add(id(holder))
                    total += holder.shape[0] * holder.shape[1]
        return total + sum(p.numel() for p in self.parameters())

    def weights_nbytes(self) -> int:
        """Bytes of every weight in memory (packed codes, scales and mins; float tensors)."""
        packed = {id(b): b for b in self.buffers()}
        return sum(t.numel() * t.element_size() for t in packed.values()) + sum(
            p.numel() * p.element_size() for p in self.parameters()
        )

    def packed_kinds(self) -> dict[str, int]:
        """Bytes of packed matrices by kind (``q4``...): how the weights sit in memory."""
        out: dict[str, int] = {}
        seen: set[int] = set()
        for module in self.modules():
            if isinstance(module, PackedLinear | PackedEmbedding) and id(module.weight_packed) not in seen:
                seen.add(id(module.weight_packed))
                packed: PackedWeight = module.weight_packed.packed
                out[packed.kind] = out.get(packed.kind, 0) + packed.nbytes
        return out
