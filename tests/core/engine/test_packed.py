"""Packed weights: validation, the q4 nibble layout, quantizing on load and its error bounds; the packed modules
swapped into a transformers model (logits against the float model, tied heads, ``.to()``, weights that do
not fit the model)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine.quant import kernels
from influence_tui.core.engine.quant.modules import (
    PackedEmbedding,
    PackedLinear,
    build_packed_model,
    packed_state,
    quantize_model_weights,
)
from influence_tui.core.engine.quant.packed import (
    PackedWeight,
    concat_rows,
    dequantize,
    pack_plain,
    pack_q4,
    quantize_q4,
    quantize_q8,
    unpack_q4,
)
from influence_tui.core.errors import ModelFormatError

FP16_REL = 2.0**-11
"""Relative rounding error of a float16 (half an ulp of a normal number)."""


def q4(n: int = 4, k: int = 64, *, mins: bool = True) -> PackedWeight:
    return PackedWeight(
        "q4",
        (n, k),
        torch.zeros(n, k // 2, dtype=torch.uint8),
        torch.ones(n, k // 32, dtype=torch.float16),
        torch.zeros(n, k // 32, dtype=torch.float16) if mins else None,
    )


# ------------------------------------------------------------------------------------------ PackedWeight


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: PackedWeight("q4", (4, 64), torch.zeros(4, 64, dtype=torch.uint8)),
            r"q4 qweight must be torch.uint8 \[4, 32\]",
        ),
        (lambda: PackedWeight("q4", (4, 64), torch.zeros(4, 32, dtype=torch.int8)), "q4 qweight must be torch.uint8"),
        (lambda: PackedWeight("q4", (4, 48), torch.zeros(4, 24, dtype=torch.uint8)), "K a multiple of 32"),
        (
            lambda: PackedWeight("q4", (4, 64), torch.zeros(4, 32, dtype=torch.uint8), group=16),
            "q4 needs blocks of 32",
        ),
        (lambda: PackedWeight("q4", (4, 64), torch.zeros(4, 32, dtype=torch.uint8)), "q4 needs scales"),
        (
            lambda: PackedWeight(
                "q4", (4, 64), torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 2, dtype=torch.float32)
            ),
            r"scales must be torch.float16 \[4, 2\], got torch.float32",
        ),
        (
            lambda: PackedWeight(
                "q4", (4, 64), torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 1, dtype=torch.float16)
            ),
            r"scales must be torch.float16 \[4, 2\], got torch.float16 \[4, 1\]",
        ),
        (
            lambda: PackedWeight(
                "q4",
                (4, 64),
                torch.zeros(4, 32, dtype=torch.uint8),
                torch.ones(4, 2, dtype=torch.float16),
                torch.zeros(4, 3, dtype=torch.float16),
            ),
            r"mins must be torch.float16 \[4, 2\]",
        ),
        (lambda: PackedWeight("q8", (4, 64), torch.zeros(4, 64, dtype=torch.uint8)), "q8 qweight must be torch.int8"),
        (
            lambda: PackedWeight("q8", (4, 64), torch.zeros(4, 64, dtype=torch.int8), group=64),
            "q8 needs blocks of 16 or 32",
        ),
        (
            lambda: PackedWeight("q8", (4, 48), torch.zeros(4, 48, dtype=torch.int8), group=32),
            r"dividing K \(K=48, group=32\)",
        ),
        (lambda: PackedWeight("q8", (4, 64), torch.zeros(4, 64, dtype=torch.int8)), "q8 needs scales"),
        (lambda: PackedWeight("f16", (4, 64), torch.zeros(4, 64)), r"f16 weight must be torch.float16 \[4, 64\]"),
        (lambda: PackedWeight("bf16", (4, 64), torch.zeros(4, 64, dtype=torch.float16)), "bf16 weight must be"),
        (lambda: PackedWeight("f32", (4, 64), torch.zeros(4, 65)), r"f32 weight must be torch.float32 \[4, 64\]"),
        (lambda: PackedWeight("q5", (4, 64), torch.zeros(4, 64)), "unknown packed kind 'q5'"),  # type: ignore[arg-type]
    ],
)
def test_inconsistent_packed_weights_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_size_and_bits_per_weight() -> None:
    assert q4(8, 64).nbytes == 8 * 32 + 2 * (8 * 2 * 2)
    assert q4(8, 64).bits_per_weight == 5.0  # Q4_1: 4 bits, a float16 scale and min per 32
    assert q4(8, 64, mins=False).bits_per_weight == 4.5  # Q4_0
    assert quantize_q8(torch.randn(8, 64)).bits_per_weight == 8.5  # Q8_0
    assert quantize_q8(torch.randn(8, 64), group=16).bits_per_weight == 9.0
    assert pack_plain(torch.randn(8, 64), "bf16").bits_per_weight == 16.0
    assert pack_plain(torch.randn(8, 64), "f32").nbytes == 8 * 64 * 4
    assert set(q4().tensors()) == {"qweight", "scales", "mins"}
    assert set(q4(mins=False).tensors()) == {"qweight", "scales"}
    assert set(pack_plain(torch.randn(2, 4), "f16").tensors()) == {"qweight"}


def test_q4_block_layout_is_ggufs() -> None:
    """Byte j of a block holds element j in its low nibble and element 16 + j in its high nibble."""
    codes = torch.tensor([[*range(16), *range(15, -1, -1), *([3] * 32)]])
    packed = pack_q4(codes)
    assert packed.shape == (1, 32) and packed.dtype == torch.uint8
    assert packed[0, :16].tolist() == [j | ((15 - j) << 4) for j in range(16)]
    assert packed[0, 16:].tolist() == [0x33] * 16
    w = PackedWeight("q4", (1, 64), packed, torch.full((1, 2), 0.5, dtype=torch.float16))
    assert dequantize(w)[0].tolist() == [0.5 * (c - 8) for c in codes[0].tolist()]  # Q4_0: scale * (q - 8)


def test_pack_and_unpack_q4_are_inverse() -> None:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (7, 96), generator=gen)
    assert torch.equal(unpack_q4(pack_q4(codes)), codes.to(torch.uint8))
    raw = torch.randint(0, 256, (7, 48), generator=gen).to(torch.uint8)
    assert torch.equal(pack_q4(unpack_q4(raw)), raw)


def test_dequantize_follows_the_definition_of_each_kind() -> None:
    scales = torch.tensor([[0.5, 2.0]], dtype=torch.float16)
    offsets = torch.tensor([[-1.0, 0.25]], dtype=torch.float16)
    codes8 = torch.arange(-16, 16, dtype=torch.int8).reshape(1, 32)
    q8 = PackedWeight("q8", (1, 32), codes8, scales, offsets, 16)
    want = torch.cat([codes8[0, :16].float() * 0.5 - 1.0, codes8[0, 16:].float() * 2.0 + 0.25])
    assert torch.equal(dequantize(q8)[0], want)
    assert dequantize(q8, torch.bfloat16).dtype == torch.bfloat16
    q8_0 = PackedWeight("q8", (1, 32), codes8, scales, None, 16)
    assert torch.equal(dequantize(q8_0)[0], torch.cat([codes8[0, :16].float() * 0.5, codes8[0, 16:].float() * 2.0]))
    codes4 = torch.arange(32).remainder(16).reshape(1, 32)
    q4_1 = PackedWeight("q4", (1, 32), pack_q4(codes4), scales[:, :1], offsets[:, :1])
    assert torch.equal(dequantize(q4_1)[0], codes4[0].float() * 0.5 - 1.0)  # Q4_1: scale * q + min
    plain = torch.randn(3, 5)
    assert torch.equal(dequantize(pack_plain(plain, "f32")), plain)
    assert torch.equal(dequantize(pack_plain(plain, "bf16")), plain.to(torch.bfloat16).float())


@pytest.mark.parametrize("kind", ["q4", "q8", "f16"])
def test_rows_are_the_dequantized_rows(kind: str) -> None:
    weight = torch.randn(10, 64)
    w = quantize_q4(weight) if kind == "q4" else quantize_q8(weight) if kind == "q8" else pack_plain(weight, "f16")
    index = torch.tensor([7, 0, 7, 3])
    picked = w.rows(index)
    assert picked.kind == w.kind and picked.shape == (4, 64) and picked.group == w.group
    assert torch.equal(dequantize(picked), dequantize(w)[index])


def test_concat_rows_stacks_the_matrices() -> None:
    parts = [quantize_q4(torch.randn(n, 64)) for n in (3, 5, 2)]
    joined = concat_rows(parts)
    assert joined.shape == (10, 64)
    assert torch.equal(dequantize(joined), torch.cat([dequantize(p) for p in parts]))
    plain = concat_rows([pack_plain(torch.randn(2, 8), "f32"), pack_plain(torch.randn(3, 8), "f32")])
    assert plain.shape == (5, 8) and plain.scales is None


# ------------------------------------------------------------------------------------------ quantizing


def _blocks(t: torch.Tensor, group: int) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, group)


@pytest.mark.parametrize("group", [32, 16])
@pytest.mark.parametrize("spread", [1e-2, 1.0, 300.0])
def test_q8_round_trip_error_is_half_a_step(group: int, spread: float) -> None:
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * spread
    weight[0, :group] = 0.0  # an all-zero block stays exactly zero
    w = quantize_q8(weight, group)
    assert (w.kind, w.group, w.mins) == ("q8", group, None)
    assert int(w.qweight.abs().max()) <= 127
    error = _blocks((dequantize(w) - weight).abs(), group)
    assert w.scales is not None
    step = w.scales.float().unsqueeze(-1)
    absmax = _blocks(weight.abs(), group).amax(-1, keepdim=True)
    # half a step, plus what a float16 scale rounded down costs the largest value (clamped to 127 codes)
    assert (error <= step / 2 + absmax * FP16_REL + 1e-6 * absmax).all()
    assert float(dequantize(w)[0, :group].abs().max()) == 0.0


@pytest.mark.parametrize("spread", [1e-2, 1.0, 300.0])
def test_q4_round_trip_error_is_half_a_step(spread: float) -> None:
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * spread + spread / 3
    weight[1, :32] = 0.75 * spread  # a constant block: scale 0, kept as its min
    w = quantize_q4(weight)
    assert (w.kind, w.group) == ("q4", 32) and w.mins is not None and w.scales is not None
    codes = unpack_q4(w.qweight)
    assert int(codes.max()) <= 15
    error = _blocks((dequantize(w) - weight).abs(), 32)
    step = w.scales.float().unsqueeze(-1)
    lo = _blocks(weight, 32).amin(-1, keepdim=True)
    hi = _blocks(weight, 32).amax(-1, keepdim=True)
    # half a step, plus float16 rounding of the min (values below a min rounded up) and of the scale
    slack = (lo.abs() + (hi - lo)) * FP16_REL * 1.01 + 1e-6 * hi.abs().clamp(min=spread)
    assert (error <= step / 2 + slack).all()
    assert torch.equal(dequantize(w)[1, :32], torch.full((32,), 0.75 * spread).to(torch.float16).float())
    assert float(w.scales[1, 0]) == 0.0


def test_quantizing_needs_whole_blocks() -> None:
    with pytest.raises(ValueError, match="in_features 48 is not a multiple of the block size 32"):
        quantize_q4(torch.randn(2, 48))
    with pytest.raises(ValueError, match="not a multiple of the block size 32"):
        quantize_q8(torch.randn(2, 40))
    assert quantize_q8(torch.randn(2, 48), group=16).shape == (2, 48)


def test_quantize_model_weights_packs_only_the_named_matrices() -> None:
    tensors = {
        "a.weight": torch.randn(8, 64),
        "b.weight": torch.randn(8, 40),  # no whole blocks: kept plain
        "norm.weight": torch.randn(64),
        "c.weight": torch.randn(8, 64),  # not a linear: as it is
    }
    names = {"a.weight", "b.weight", "norm.weight"}
    int4 = quantize_model_weights(tensors, names, "int4")
    int8 = quantize_model_weights(tensors, names, "int8")
    assert isinstance(int4["a.weight"], PackedWeight) and int4["a.weight"].kind == "q4"
    assert isinstance(int8["a.weight"], PackedWeight) and int8["a.weight"].kind == "q8"
    for packed in (int4, int8):
        b = packed["b.weight"]
        assert isinstance(b, PackedWeight) and b.kind == "f32"
        assert torch.equal(dequantize(b), tensors["b.weight"])
        assert packed["norm.weight"] is tensors["norm.weight"]  # 1-D tensors stay float
        assert packed["c.weight"] is tensors["c.weight"]


# ------------------------------------------------------------------------------------------ the modules


@pytest.fixture(scope="module")
def float_llama(tiny_llama_template: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_template, dtype=torch.float32).eval()


def linear_names(model: Any) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Embedding)}


def packed_weights(model: Any, mode: str) -> dict[str, PackedWeight | torch.Tensor]:
    return quantize_model_weights(model.state_dict(), linear_names(model), mode)


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]  # type: ignore[no-any-return]


def dequantized_model(model: Any, weights: dict[str, PackedWeight | torch.Tensor]) -> Any:
    """The float model with every packed matrix replaced by what it stands for."""
    twin = copy.deepcopy(model)
    twin.load_state_dict({k: dequantize(v) if isinstance(v, PackedWeight) else v for k, v in weights.items()})
    return twin


IDS = list(range(5, 45))


@pytest.fixture
def kernels_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    kernels._reset_for_tests()
    with monkeypatch.context() as patch:
        patch.setenv("INFLUENCE_KERNELS", "off")
        yield
    kernels._reset_for_tests()
    kernels.load_kernels()


@pytest.mark.usefixtures("kernels_off")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_on_the_torch_fallback_the_packed_model_is_the_dequantized_float_model(float_llama: Any, mode: str) -> None:
    weights = packed_weights(float_llama, mode)
    packed = build_packed_model(float_llama.config, weights)
    assert torch.equal(logits(packed, IDS), logits(dequantized_model(float_llama, weights), IDS))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_on_the_kernels_the_packed_model_is_close_to_the_dequantized_one(float_llama: Any, mode: str) -> None:
    weights = packed_weights(float_llama, mode)
    packed = build_packed_model(float_llama.config, weights)
    want = logits(dequantized_model(float_llama, weights), IDS)
    got = logits(packed, IDS)
    scale = float(want.abs().max())
    if kernels.integer_dot_available():
        # int8 activations per block of 32: measured max 0.76 (int8) / 1.8 (int4) against logits up to 9.5 on
        # this random model, whose weights are much larger than a trained model's
        assert float((got - want).abs().max()) <= 0.35 * scale
        assert float((got - want).abs().mean()) <= 0.05 * scale
    else:
        assert float((got - want).abs().max()) <= 1e-4 * scale


def test_int8_logits_stay_close_to_the_float_model(float_llama: Any) -> None:
    packed = build_packed_model(float_llama.config, packed_weights(float_llama, "int8"))
    want, got = logits(float_llama, IDS), logits(packed, IDS)
    scale = float(want.abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    # measured: the same top token at 38 of 40 positions, max difference 0.87 and mean 0.075 on logits up to 9.5
    assert agree >= 0.85
    assert float((got - want).abs().max()) <= 0.2 * scale
    assert float((got - want).abs().mean()) <= 0.02 * scale


def test_int4_logits_follow_the_float_model(float_llama: Any) -> None:
    packed = build_packed_model(float_llama.config, packed_weights(float_llama, "int4"))
    want, got = logits(float_llama, IDS), logits(packed, IDS)
    # 4 bits of a random N(0, 0.5) matrix are coarse (measured: mean difference 0.7 on logits up to 9.5, cosine
    # similarity of the logit vectors 0.89 on average, 0.65 at worst), but the logits still point the same way
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert float(cosine.mean()) >= 0.8
    assert float(cosine.min()) >= 0.5
    assert float((got - want).abs().mean()) <= 0.15 * float(want.abs().max())


def test_build_swaps_every_linear_and_the_embedding(float_llama: Any) -> None:
    weights = packed_weights(float_llama, "int8")
    model = build_packed_model(float_llama.config, weights)
    assert not any(type(m) in (torch.nn.Linear, torch.nn.Embedding) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert isinstance(model.get_input_embeddings(), PackedEmbedding)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # packed_state gives back exactly what was built from
    state = packed_state(model)
    assert set(state) == set(weights)
    for name, value in weights.items():
        if isinstance(value, PackedWeight):
            got = state[name]
            assert isinstance(got, PackedWeight) and got.kind == value.kind
            assert torch.equal(got.qweight, value.qweight)
        else:
            other = state[name]
            assert isinstance(other, torch.Tensor) and torch.equal(other, value)
    # the state dict carries the codes under the module's names
    keys = model.state_dict().keys()
    assert "model.layers.0.self_attn.q_proj.weight_packed.qweight" in keys
    assert "model.embed_tokens.weight_packed.scales" in keys
    assert "lm_head" in repr(model) and "kind=q8" in repr(model)


def test_embedding_rows_are_dequantized_on_lookup(float_llama: Any) -> None:
    weights = packed_weights(float_llama, "int4")
    model = build_packed_model(float_llama.config, weights)
    ids = torch.tensor([[3, 1, 3], [0, 9, 2]])
    table = weights["model.embed_tokens.weight"]
    assert isinstance(table, PackedWeight)
    looked_up = model.get_input_embeddings()(ids)
    assert looked_up.shape == (2, 3, 64) and looked_up.dtype == torch.float32
    assert torch.equal(looked_up, dequantize(table)[ids])


def _tied_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_a_tied_head_shares_the_packed_embedding() -> None:
    model = _tied_llama()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as tied checkpoints save it
    weights = quantize_model_weights(state, linear_names(model), "int8")
    packed = build_packed_model(model.config, weights)
    head = packed.get_output_embeddings()
    assert isinstance(head, PackedLinear)
    assert head.weight_packed is packed.get_input_embeddings().weight_packed
    assert "lm_head.weight" not in packed_state(packed)  # left out, as in the float model's files
    ids = list(range(1, 30))
    want, got = logits(model, ids), logits(packed, ids)
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.9


def test_to_moves_but_never_casts_the_packed_tensors(float_llama: Any) -> None:
    model = build_packed_model(float_llama.config, packed_weights(float_llama, "int4"))
    before = logits(model, IDS)
    originals = {name: t.clone() for name, t in model.named_buffers() if ".weight_packed." in name}
    model.to("cpu").float()
    assert torch.equal(logits(model, IDS), before)  # nothing to move or cast
    conversions: list[Callable[[Any], Any]] = [
        lambda m: m.to(torch.float16),
        lambda m: m.double(),
        lambda m: m.to("cpu", torch.bfloat16),
    ]
    for convert in conversions:
        convert(model)
        for module in model.modules():
            if isinstance(module, PackedLinear | PackedEmbedding):
                holder = module.weight_packed
                assert holder.qweight.dtype == torch.uint8
                assert holder.scales.dtype == torch.float16 and holder.mins.dtype == torch.float16
                assert holder.packed.qweight is holder.qweight  # the PackedWeight follows the buffers
                assert holder.packed.scales is holder.scales and holder.packed.mins is holder.mins
        assert model.model.norm.weight.dtype != torch.float32  # the float tensors did follow
    buffers = dict(model.named_buffers())
    assert all(torch.equal(buffers[name], t) for name, t in originals.items())


def test_a_packed_linear_keeps_its_bias() -> None:
    w = quantize_q8(torch.randn(6, 32))
    layer = PackedLinear(w, torch.arange(6, dtype=torch.float16))
    assert layer.bias is not None and layer.bias.dtype == torch.float32
    x = torch.randn(2, 32)
    assert torch.allclose(layer(x) - PackedLinear(w)(x), torch.arange(6.0).expand(2, 6), atol=1e-5)
    assert "bias=True" in repr(layer)


# ------------------------------------------------------------------------------------------ weights that do not fit


def _refusal(config: Any, weights: dict[str, Any]) -> str:
    with pytest.raises(ModelFormatError) as caught:
        build_packed_model(config, weights)
    return str(caught.value)


def test_missing_and_extra_weights_are_format_errors(float_llama: Any) -> None:
    config = float_llama.config
    weights = packed_weights(float_llama, "int8")

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in weights.items() if k != name}

    assert "no packed matrix for model.layers.1.mlp.up_proj.weight" in _refusal(
        config, without("model.layers.1.mlp.up_proj.weight")
    )
    assert "no packed matrix for lm_head.weight" in _refusal(config, without("lm_head.weight"))  # untied head
    assert "no packed token embedding" in _refusal(config, without("model.embed_tokens.weight"))
    assert "missing model.norm.weight" in _refusal(config, without("model.norm.weight"))
    float_embed = dict(weights, **{"model.embed_tokens.weight": float_llama.model.embed_tokens.weight})
    assert "no packed token embedding" in _refusal(config, float_embed)
    float_linear = dict(weights, **{"model.layers.0.self_attn.o_proj.weight": torch.randn(64, 64)})
    assert "no packed matrix for model.layers.0.self_attn.o_proj.weight" in _refusal(config, float_linear)

    extra_packed = dict(weights, **{"model.layers.9.mlp.up_proj.weight": quantize_q8(torch.randn(4, 32))})
    assert "no linear layer for: model.layers.9.mlp.up_proj.weight" in _refusal(config, extra_packed)
    extra_float = dict(weights, **{"model.layers.0.extra_norm.weight": torch.ones(64)})
    assert "unexpected model.layers.0.extra_norm.weight" in _refusal(config, extra_float)

    wrong_shape = dict(weights, **{"model.layers.0.mlp.down_proj.weight": quantize_q8(torch.randn(64, 64))})
    assert "model.layers.0.mlp.down_proj.weight is [64, 64] but the model expects [64, 128]" in _refusal(
        config, wrong_shape
    )
    packed_bias = dict(weights, **{"model.layers.0.mlp.down_proj.bias": quantize_q8(torch.randn(64, 32))})
    assert "down_proj.bias cannot be a packed matrix" in _refusal(config, packed_bias)


# ------------------------------------------------------------------------------------------ the demo model

QUESTIONS = ("What is the capital of France?", "What is 2+2?", "Name a colour.")


@pytest.fixture(scope="module")
def demo_reference(
    demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[list[int], str, torch.Tensor]]:
    """The demo model dequantized by transformers into float32 (about 15 s to load), asked each question once:
    by question, the prompt, the greedy answer and the logits over the prompt."""
    from influence_tui.core.engine.loader import load_model
    from influence_tui.core.library import DEMO_NAME, gguf_model

    loaded = load_model(
        gguf_model(DEMO_NAME, demo_gguf, "demo", [demo_gguf]),
        device="cpu",
        dtype="float32",
        quantize="none",
        cache_dir=tmp_path_factory.mktemp("demo-float-cache"),
    )
    try:
        assert loaded.info.quantization == "" and not _packed_modules(loaded.model)
        out = {}
        for question in QUESTIONS:
            prompt = _demo_prompt(loaded, question)
            out[question] = (prompt, _demo_answer(loaded, prompt), logits(loaded.model, prompt))
        return out
    finally:
        loaded.unload()


def _packed_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, PackedLinear | PackedEmbedding)]


def _demo_prompt(loaded: Any, question: str) -> list[int]:
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(i) for i in ids]


def _demo_answer(loaded: Any, prompt: list[int]) -> str:
    from influence_tui.core.engine.generate import generate_stream
    from influence_tui.core.types import SamplingParams

    events = generate_stream(
        loaded.model,
        loaded.tokenizer,
        prompt,
        SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=24),
        eos_token_ids=loaded.info.eos_token_ids,
        context_length=loaded.info.context_length,
    )
    return "".join(e.text for e in events)


def _compare_demo(packed: Any, reference: dict[str, Any]) -> list[tuple[str, str, str, torch.Tensor, torch.Tensor]]:
    """Per question: the packed and the float greedy answers, and their logits over the prompt."""
    assert _packed_modules(packed.model)
    out = []
    for question, (prompt, float_text, float_logits) in reference.items():
        assert prompt == _demo_prompt(packed, question)  # one tokenizer, read two ways
        out.append((question, _demo_answer(packed, prompt), float_text, logits(packed.model, prompt), float_logits))
    return out


@pytest.mark.slow
def test_the_packed_demo_computes_what_the_dequantized_one_does(
    demo_loaded: Any, demo_reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With float products (activations never quantized) the packed Q4_1 model is the dequantized model: the
    GGUF's blocks are copied as they are, so only float rounding differs."""
    from influence_tui.core.engine.quant import modules

    monkeypatch.setattr(modules.PackedLinear, "integer_dot", False)
    for question, packed_text, float_text, got, want in _compare_demo(demo_loaded, demo_reference):
        assert packed_text == float_text, question
        # measured: at most 7.4e-5 on logits up to 39 (mean 1e-5)
        assert float((got - want).abs().max()) <= 1e-3, question
        assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.slow
def test_the_packed_demo_with_integer_products_stays_close_to_the_dequantized_one(
    demo_loaded: Any, demo_reference: dict[str, Any]
) -> None:
    """What the engine runs: int8 activations per block of 32 where the CPU has AVX512-VNNI (as llama.cpp
    does). That is not the float model to rounding: SmolLM2's activations have outliers in the thousands, and
    a block holding one quantizes its neighbours coarsely, so greedy answers may part after a few tokens."""
    results = _compare_demo(demo_loaded, demo_reference)
    answers = {question: packed_text for question, packed_text, *_ in results}
    assert "Paris" in answers["What is the capital of France?"]
    assert "4" in answers["What is 2+2?"]
    assert answers["Name a colour."].strip()
    for question, _, _, got, want in results:
        diff = (got - want).abs()
        agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        if kernels.integer_dot_available():
            # measured on an AVX512-VNNI CPU: max 5.41 (at one position of the system prompt), mean 0.67-0.69,
            # the same top token at 86-89 % of the prompt's positions, on logits up to 39
            assert float(diff.max()) <= 8.0, question
            assert float(diff.mean()) <= 1.0, question
            assert agree >= 0.75, question
        else:  # float products: the dequantized model to rounding (see the test above)
            assert float(diff.max()) <= 1e-3, question
            assert agree == 1.0, question
