"""Modules that keep packed weights: :class:`PackedLinear` and :class:`PackedEmbedding`.

The native models (:mod:`~influence_tui.core.engine.models`) are built from them directly. For the transformers
runtime's ``--quantize int8|int4`` (an architecture with no native model), :func:`build_packed_model` builds the
architecture from its config with empty weights, replaces every ``nn.Linear`` (and the token embedding) whose
weight is a :class:`PackedWeight` by a :class:`PackedLinear` (:class:`PackedEmbedding`), and assigns the other
tensors (norms, biases) as they are: a module swap through public API only. A tied LM head shares the
embedding's packed matrix, as it shares the weight in the float model. The rest of the model computes in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from influence_tui.core.engine.quant.kernels import packed_linear
from influence_tui.core.engine.quant.packed import PLAIN_DTYPES, PackedWeight, dequantize
from influence_tui.core.errors import ModelFormatError

_PARTS = ("qweight", "scales", "mins")


class _Packed(nn.Module):
    """Holds one :class:`PackedWeight` as buffers (``qweight``, ``scales``, ``mins``) so state dicts work."""

    def __init__(self, weight: PackedWeight) -> None:
        super().__init__()
        self.kind = weight.kind
        self.shape = weight.shape
        self.group = weight.group
        for part, tensor in weight.tensors().items():
            self.register_buffer(part, tensor, persistent=True)
        self._packed = weight

    @property
    def packed(self) -> PackedWeight:
        return self._packed

    def _part(self, name: str) -> Any:
        return self._buffers.get(name)

    def _apply(self, fn: Any, recurse: bool = True) -> _Packed:
        """``.to()`` and friends move the codes but never cast them: the packed dtypes are part of the format."""
        for part in _PARTS:
            tensor = getattr(self, part, None)
            if tensor is not None:
                moved = fn(tensor)
                if moved.dtype != tensor.dtype:
                    moved = tensor.to(device=moved.device)
                setattr(self, part, moved)
        self._packed = PackedWeight(
            self.kind, self.shape, self._part("qweight"), self._part("scales"), self._part("mins"), self.group
        )
        return self


class PackedLinear(nn.Module):
    """``nn.Linear`` with a packed weight: float32 out, on the compiled kernels."""

    def __init__(
        self, weight: PackedWeight, bias: torch.Tensor | None = None, *, shared: _Packed | None = None
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_packed = shared if shared is not None else _Packed(weight)
        self.bias = nn.Parameter(bias.to(torch.float32), requires_grad=False) if bias is not None else None

    integer_dot = True
    """Whether q4/q8 products may use int8 activations (see :func:`~.kernels.packed_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.weight_packed.packed, self.bias, integer_dot=self.integer_dot)

    def extra_repr(self) -> str:
        w = self.weight_packed
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={w.kind}, group={w.group}, bias={self.bias is not None}"


class PackedEmbedding(nn.Module):
    """``nn.Embedding`` with a packed table: the rows looked up are dequantized, the table never is."""

    def __init__(self, weight: PackedWeight, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self.weight_packed = _Packed(weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        packed = self.weight_packed.packed
        rows = packed.rows(ids.reshape(-1))
        out = rows.qweight.to(torch.float32) if packed.kind in PLAIN_DTYPES else dequantize(rows)
        return out.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kind={self.weight_packed.kind}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def build_packed_model(config: Any, weights: Mapping[str, PackedWeight | torch.Tensor]) -> Any:
    """A transformers causal LM for ``config`` whose linears and embedding hold ``weights``' packed matrices.

    ``weights`` are by state-dict name; every parameter of the model must be given (a tied LM head may be
    missing: it then shares the embedding). Raises :class:`ModelFormatError` naming what is missing or extra.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    embeddings = model.get_input_embeddings()
    embed_name = next(name for name, module in model.named_modules() if module is embeddings)
    head = model.get_output_embeddings()
    head_name = next((name for name, module in model.named_modules() if module is head), None)
    used: set[str] = set()

    embed_weight = weights.get(f"{embed_name}.weight")
    if not isinstance(embed_weight, PackedWeight):
        raise ModelFormatError(f"the prepared weights have no packed token embedding ({embed_name}.weight)")
    packed_embed = PackedEmbedding(embed_weight, getattr(embeddings, "padding_idx", None))
    _set_module(model, embed_name, packed_embed)
    used.add(f"{embed_name}.weight")

    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        key = f"{name}.weight"
        weight = weights.get(key)
        bias = weights.get(f"{name}.bias")
        if isinstance(bias, PackedWeight):
            raise ModelFormatError(f"{name}.bias cannot be a packed matrix")
        if weight is None and name == head_name and getattr(config, "tie_word_embeddings", False):
            replacement = PackedLinear(embed_weight, bias, shared=packed_embed.weight_packed)
        elif isinstance(weight, PackedWeight):
            if weight.shape != (module.out_features, module.in_features):
                raise ModelFormatError(
                    f"{key} is {list(weight.shape)} but the model expects {[module.out_features, module.in_features]}"
                )
            replacement = PackedLinear(weight, bias)
            used.add(key)
        else:
            raise ModelFormatError(f"the prepared weights have no packed matrix for {key}")
        if bias is not None:
            used.add(f"{name}.bias")
        _set_module(model, name, replacement)

    rest = {k: v for k, v in weights.items() if k not in used}
    packed_left = [k for k, v in rest.items() if isinstance(v, PackedWeight)]
    if packed_left:
        raise ModelFormatError(
            f"packed weights the model has no linear layer for: {', '.join(sorted(packed_left)[:5])}"
        )
    float_rest = {k: v.to(torch.float32) for k, v in rest.items() if isinstance(v, torch.Tensor)}
    missing, unexpected = model.load_state_dict(float_rest, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(_PARTS)]
    if missing or unexpected:
        raise ModelFormatError(
            "the prepared weights do not fit the model: "
            + "; ".join(
                p
                for p in (
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                )
                if p
            )
        )
    meta = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if meta:
        raise ModelFormatError(f"the prepared weights leave parts of the model empty: {', '.join(meta[:5])}")
    model.eval()
    model.requires_grad_(False)
    return model


def packed_state(model: nn.Module) -> dict[str, PackedWeight | torch.Tensor]:
    """The inverse of :func:`build_packed_model`: packed matrices and float tensors by state-dict name (a
    shared, tied head is left out, as it is in the float model's files)."""
    out: dict[str, PackedWeight | torch.Tensor] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, PackedLinear | PackedEmbedding):
            holder = module.weight_packed
            if id(holder) not in seen:
                seen.add(id(holder))
                out[f"{name}.weight"] = holder.packed
            if isinstance(module, PackedLinear) and module.bias is not None:
                out[f"{name}.bias"] = module.bias.detach()
    for name, param in model.named_parameters():
        out[name] = param.detach()
    return out


def quantize_model_weights(
    tensors: Mapping[str, torch.Tensor], linear_names: set[str], mode: str
) -> dict[str, PackedWeight | torch.Tensor]:
    """Float state-dict tensors -> packed: the ``linear_names`` weights (and the embedding among them) as
    ``int8`` (q8) or ``int4`` (q4) blocks of 32; 1-D tensors stay float."""
    from influence_tui.core.engine.quant.packed import pack_plain, quantize_q4, quantize_q8

    out: dict[str, PackedWeight | torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in linear_names and tensor.dim() == 2:
            k = tensor.shape[1]
            if mode == "int4" and k % 32 == 0:
                out[name] = quantize_q4(tensor)
            elif mode in ("int4", "int8") and k % 32 == 0:
                out[name] = quantize_q8(tensor)
            else:
                out[name] = pack_plain(tensor, "bf16" if mode == "bf16" else "f32")
        else:
            out[name] = tensor
    return out
