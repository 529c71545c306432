"""The compiled CPU kernels against :mod:`.packed`'s pure-torch definitions: every kind, every row-count path,
leading shapes, bias, the portable path; the fallback when they are switched off or cannot be built; bad
inputs are errors, never crashes."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine.quant import kernels
from influence_tui.core.engine.quant.kernels import load_kernels, packed_dequantize, packed_linear
from influence_tui.core.engine.quant.packed import (
    PLAIN_DTYPES,
    PackedWeight,
    dequantize,
    linear_reference,
    linear_reference_int8x,
    pack_q4,
)

EXT = load_kernels()
needs_kernels = pytest.mark.skipif(
    EXT is None, reason=f"the CPU kernels cannot be built here: {kernels.unavailable_reason()}"
)

# (kind, group, with mins): Q4_0 and Q4_1, Q8_0 and the 8-bit kinds with mins, Q6_K's blocks of 16, plain.
CASES = [
    ("q4", 32, False),
    ("q4", 32, True),
    ("q8", 32, False),
    ("q8", 32, True),
    ("q8", 16, False),
    ("q8", 16, True),
    ("f16", 0, False),
    ("bf16", 0, False),
    ("f32", 0, False),
]
CASE_IDS = [f"{k}-g{g}{'-mins' if m else ''}" if g else k for k, g, m in CASES]
ROWS = [1, 2, 3, 4, 5, 17, 40]  # one kernel path per row count up to 4, chunks of 4, torch's GEMM above 16 rows


def random_weight(kind: str, n: int, k: int, *, group: int = 32, mins: bool = False, seed: int = 0) -> PackedWeight:
    """A packed matrix with random codes, scales and mins (any code pattern, not only what quantizing makes)."""
    gen = torch.Generator().manual_seed(seed)
    if kind in PLAIN_DTYPES:
        return PackedWeight(kind, (n, k), torch.randn(n, k, generator=gen).to(PLAIN_DTYPES[kind]))  # type: ignore[arg-type]
    scales = (torch.rand(n, k // group, generator=gen) * 0.1 + 0.001).to(torch.float16)
    offsets = (torch.randn(n, k // group, generator=gen) * 0.2).to(torch.float16) if mins else None
    if kind == "q4":
        codes = torch.randint(0, 16, (n, k), generator=gen)
        return PackedWeight("q4", (n, k), pack_q4(codes), scales, offsets, 32)
    codes8 = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    return PackedWeight("q8", (n, k), codes8, scales, offsets, group)


def close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal to float rounding: the largest difference within ``rel`` of the largest value (at least 1)."""
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0)
    assert diff <= rel * scale, f"max difference {diff:.3g} against a scale of {scale:.3g}"


def int8x_reference(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What ``packed_linear(..., integer_dot=True)`` computes: int8 activations where the kernels have VNNI."""
    if EXT is not None and EXT.has_vnni() and w.kind in ("q4", "q8") and w.shape[1] % 32 == 0:
        return linear_reference_int8x(x, w, bias)
    return linear_reference(x, w, bias)


# ------------------------------------------------------------------------------------------ products


@needs_kernels
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_float_product_matches_the_reference(kind: str, group: int, mins: bool, m: int) -> None:
    w = random_weight(kind, 37, 160, group=group or 32, mins=mins, seed=m)
    x = torch.randn(1, m, 160)
    bias = torch.randn(37)
    close(packed_linear(x, w, integer_dot=False), linear_reference(x, w))
    close(packed_linear(x, w, bias, integer_dot=False), linear_reference(x, w, bias))


@needs_kernels
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_integer_dot_product_matches_its_definition(kind: str, group: int, mins: bool, m: int) -> None:
    w = random_weight(kind, 37, 160, group=group or 32, mins=mins, seed=100 + m)
    x = torch.randn(1, m, 160)
    bias = torch.randn(37)
    got = packed_linear(x, w, bias)  # integer_dot is the default: what PackedLinear runs
    close(got, int8x_reference(x, w, bias))
    # int8 activations per block of 32 stay near the float product: a few tenths of a percent of the scale
    # per element, about 1 % of the largest output here (measured 0.44 against outputs up to 37)
    close(got, linear_reference(x, w, bias), rel=3e-2)


@needs_kernels
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_a_row_gets_the_same_bits_alone_and_among_others(kind: str, group: int, mins: bool) -> None:
    """A batched decode step's rows share each weight pass (up to 8 at once); a row's result never depends on
    which rows share it, or how many."""
    w = random_weight(kind, 53, 192, group=group or 32, mins=mins, seed=7)
    # Float products of more than 16 rows are one GEMM (a prefill); integer ones stay row by row.
    for integer, rows in ((True, 19 if kind in ("q4", "q8") else 16), (False, 16)):
        x = torch.randn(rows, 192)
        together = packed_linear(x, w, integer_dot=integer)
        for m in (1, 2, 3, 5, 8, 9, 16):
            assert torch.equal(packed_linear(x[:m], w, integer_dot=integer), together[:m]), (integer, m)
        for row in (0, 7, rows - 1):
            assert torch.equal(packed_linear(x[row : row + 1], w, integer_dot=integer), together[row : row + 1])


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 10), (3,), (2, 2, 5)], ids=str)
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_any_leading_shape(kind: str, group: int, mins: bool, shape: tuple[int, ...]) -> None:
    w = random_weight(kind, 24, 64, group=group or 32, mins=mins, seed=7)
    x = torch.randn(*shape, 64)
    bias = torch.randn(24)
    got = packed_linear(x, w, bias, integer_dot=False)
    assert got.shape == (*shape, 24)
    close(got, linear_reference(x, w, bias))
    close(packed_linear(x, w, bias), int8x_reference(x, w, bias))


@needs_kernels
@pytest.mark.parametrize("k", [7, 40, 48, 100])  # 7, 40 and 100 are no multiple of 16: the portable path
@pytest.mark.parametrize("m", [1, 3, 5, 17])
@pytest.mark.parametrize("kind", ["f16", "bf16", "f32"])
def test_plain_kinds_with_any_width(kind: str, m: int, k: int) -> None:
    w = random_weight(kind, 19, k, seed=k)
    x = torch.randn(m, k)
    bias = torch.randn(19)
    close(packed_linear(x, w, bias), linear_reference(x, w, bias))
    close(packed_linear(x, w), linear_reference(x, w))


@needs_kernels
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_large_widths_and_many_output_rows(kind: str, group: int, mins: bool) -> None:
    """Output rows split over threads and blocks of rows, a width of a real model's hidden size."""
    w = random_weight(kind, 300, 576, group=group or 32, mins=mins, seed=3)
    for m in (1, 4, 9, 33):
        x = torch.randn(m, 576)
        close(packed_linear(x, w, integer_dot=False), linear_reference(x, w))
        close(packed_linear(x, w), int8x_reference(x, w))


@needs_kernels
def test_other_activation_dtypes_and_strides_are_accepted() -> None:
    w = random_weight("q8", 16, 64, seed=1)
    x = torch.randn(3, 128)[:, ::2]  # not contiguous
    close(packed_linear(x, w, integer_dot=False), linear_reference(x, w))
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        xd = torch.randn(2, 64).to(dtype)
        close(packed_linear(xd, w, integer_dot=False), linear_reference(xd, w))


@needs_kernels
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_no_rows_give_an_empty_result(kind: str, group: int, mins: bool) -> None:
    w = random_weight(kind, 8, 64, group=group or 32, mins=mins)
    assert packed_linear(torch.empty(0, 64), w).shape == (0, 8)
    assert packed_linear(torch.empty(1, 0, 64), w, torch.zeros(8)).shape == (1, 0, 8)


@needs_kernels
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_kernel_dequantize_equals_the_reference_exactly(kind: str, group: int, mins: bool) -> None:
    w = random_weight(kind, 33, 96, group=group or 32, mins=mins, seed=5)
    got = packed_dequantize(w)
    assert got.dtype == torch.float32
    assert torch.equal(got, dequantize(w))


@needs_kernels
def test_the_extension_reports_its_cpu_paths() -> None:
    assert EXT is not None
    assert isinstance(EXT.has_avx512(), bool) and isinstance(EXT.has_vnni(), bool)
    assert kernels.integer_dot_available() == bool(EXT.has_vnni())
    assert kernels.unavailable_reason() is None


# ------------------------------------------------------------------------------------------ bad inputs


def _with(w: PackedWeight, **changes: Any) -> PackedWeight:
    """A copy of ``w`` with fields changed after construction (what validation would have refused)."""
    bad = copy.copy(w)
    for name, value in changes.items():
        setattr(bad, name, value)
    return bad


@needs_kernels
@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda w: _with(w, scales=w.scales.float()), "float16 scales"),
        (lambda w: _with(w, qweight=w.qweight[:, :-16].contiguous()), "wrong size"),
        (lambda w: _with(w, qweight=torch.zeros(w.shape[0] + 1, w.shape[1] // 2, dtype=torch.uint8)), "must be"),
        (lambda w: _with(w, qweight=w.qweight.t().contiguous().t()), "contiguous"),
        (lambda w: _with(w, scales=None), "scales"),
        (lambda w: _with(w, mins=w.mins[:, :1].contiguous()), "mins must match"),
        (lambda w: _with(w, group=64), "block size"),
        (lambda w: _with(w, kind="q5"), "unknown packed kind"),
    ],
    ids=[
        "float32-scales",
        "short-qweight",
        "extra-row",
        "strided-qweight",
        "no-scales",
        "short-mins",
        "group-64",
        "kind",
    ],
)
def test_inconsistent_packed_weights_are_errors_not_crashes(make_bad: Any, message: str) -> None:
    w = random_weight("q4", 16, 64, mins=True)
    bad = make_bad(w)
    for integer_dot in (True, False):
        with pytest.raises(RuntimeError, match=message):
            packed_linear(torch.randn(2, 64), bad, integer_dot=integer_dot)
    with pytest.raises(RuntimeError, match=message):
        packed_dequantize(bad)


@needs_kernels
@pytest.mark.parametrize("kind", ["q4", "q8", "f16", "f32"])
def test_activations_of_the_wrong_width_are_errors(kind: str) -> None:
    w = random_weight(kind, 16, 64)
    for rows in (1, 40):
        with pytest.raises(RuntimeError):
            packed_linear(torch.randn(rows, 32), w)
        with pytest.raises(RuntimeError):
            packed_linear(torch.randn(rows, 96), w, integer_dot=False)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_a_bias_of_the_wrong_size_is_an_error(rows: int) -> None:
    w = random_weight("q8", 16, 64)
    for integer_dot in (True, False):
        with pytest.raises(RuntimeError):
            packed_linear(torch.randn(rows, 64), w, torch.randn(5), integer_dot=integer_dot)
    f32 = random_weight("f32", 16, 64)
    with pytest.raises(RuntimeError):
        packed_linear(torch.randn(rows, 64), f32, torch.randn(17))


# ------------------------------------------------------------------------------------------ the fallback


@pytest.fixture
def kernels_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``INFLUENCE_KERNELS=off`` for one test; the process's kernels load again afterwards."""
    kernels._reset_for_tests()
    with monkeypatch.context() as patch:
        patch.setenv("INFLUENCE_KERNELS", "off")
        yield
    kernels._reset_for_tests()
    load_kernels()


@pytest.mark.usefixtures("kernels_off")
@pytest.mark.parametrize(("kind", "group", "mins"), CASES, ids=CASE_IDS)
def test_switched_off_kernels_fall_back_to_the_reference(kind: str, group: int, mins: bool) -> None:
    assert load_kernels() is None
    assert kernels.unavailable_reason() == "switched off by INFLUENCE_KERNELS"
    assert not kernels.integer_dot_available()
    w = random_weight(kind, 21, 64, group=group or 32, mins=mins)
    bias = torch.randn(21)
    for m in (1, 5, 40):
        x = torch.randn(1, m, 64)
        assert torch.equal(packed_linear(x, w, bias), linear_reference(x, w, bias))
    assert torch.equal(packed_dequantize(w), dequantize(w))


@pytest.mark.usefixtures("kernels_off")
def test_a_packed_model_runs_on_the_fallback() -> None:
    from influence_tui.core.engine.quant.modules import PackedLinear

    w = random_weight("q4", 8, 32, mins=True)
    layer = PackedLinear(w, torch.zeros(8))
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), linear_reference(x, w, torch.zeros(8)))


@pytest.mark.parametrize("value", ["0", "OFF", "false", " no "])
def test_every_off_spelling_switches_the_kernels_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    kernels._reset_for_tests()
    try:
        with monkeypatch.context() as patch:
            patch.setenv("INFLUENCE_KERNELS", value)
            assert load_kernels() is None
            assert "INFLUENCE_KERNELS" in (kernels.unavailable_reason() or "")
    finally:
        kernels._reset_for_tests()
        load_kernels()


def test_a_failed_build_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'influence_kernels'\nlong compiler output")

    kernels._reset_for_tests()
    try:
        with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="influence_tui.kernels"):
            patch.setattr(kernels, "_build", no_compiler)
            assert load_kernels() is None
            assert load_kernels() is None  # tried once per process, not at every call
        reason = kernels.unavailable_reason()
        assert reason == "RuntimeError: Error building extension 'influence_kernels'"
        assert [r.getMessage() for r in caplog.records] == [
            f"CPU kernels unavailable, using the pure-torch fallback: {reason}"
        ]
        w = random_weight("q8", 4, 32, mins=True)
        x = torch.randn(3, 32)
        assert torch.equal(packed_linear(x, w), linear_reference(x, w))
    finally:
        kernels._reset_for_tests()
        load_kernels()
    assert kernels.unavailable_reason() is None or EXT is None


def test_kernels_dir_follows_the_override_and_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFLUENCE_KERNELS_DIR", str(tmp_path / "k"))
    assert kernels.kernels_dir() == tmp_path / "k"
    monkeypatch.delenv("INFLUENCE_KERNELS_DIR")
    assert kernels.kernels_dir() == tmp_path / "cache" / "kernels"  # isolated_env's INFLUENCE_CACHE_DIR
