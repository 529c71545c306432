"""The compiled CPU kernels (``csrc/kernels.cpp``): built on first use, cached, with a pure-torch fallback.

The extension is compiled once per source version and torch version with ``torch.utils.cpp_extension`` (g++
and ninja, ``-O3 -march=native``) into ``<cache dir>/kernels/`` (``INFLUENCE_KERNELS_DIR`` overrides it).
The first build takes about a minute and says so once through :func:`set_status_callback`'s callback and the
``influence_tui.kernels`` logger; later processes load the built library in milliseconds.

Where the build cannot happen (no compiler, no ninja, ``INFLUENCE_KERNELS=off``) every operation falls back to
:mod:`.packed`'s pure-torch definitions, which the tests compare the kernels against. The reason is kept in
:func:`unavailable_reason` for ``influence show``-style diagnostics.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from influence_tui.core.engine.quant.packed import PackedWeight, dequantize, linear_reference

log = logging.getLogger("influence_tui.kernels")

_SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"


class _State:
    """The process's one extension (built or loaded once) and where build notes go."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.module: ModuleType | None = None
        self.failed: str | None = None
        self.status: Callable[[str], None] | None = None


_state = _State()


def set_status_callback(callback: Callable[[str], None] | None) -> None:
    """Where the one-time "building kernels" message goes (besides the log): a CLI prints it, a TUI shows it."""
    _state.status = callback


def kernels_dir() -> Path:
    override = os.environ.get("INFLUENCE_KERNELS_DIR")
    if override:
        return Path(override).expanduser()
    from influence_tui.core.paths import default_cache_dir

    return default_cache_dir() / "kernels"


def _build_name() -> str:
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    return f"influence_kernels_{digest.hexdigest()[:12]}"


def _say(message: str) -> None:
    log.info(message)
    if _state.status is not None:
        _state.status(message)


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` wheel installs it next to this Python, which is not on
    PATH when the venv is not activated (``make test`` calls ``.venv/bin/pytest`` directly)."""
    if shutil.which("ninja") is None:
        here = str(Path(sys.executable).parent)
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def _import_built(name: str, path: Path) -> ModuleType:
    """The extension already built at ``path``, imported as it is: no ninja run, no setuptools import (about
    0.1 s of every process start). The name carries a digest of the source and torch's version, so a file
    found under it was built from this source for this torch."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> ModuleType:
    name = _build_name()
    folder = kernels_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob(f"{name}*.so")):
        try:
            return _import_built(name, path)
        except ImportError as exc:  # a half-written or foreign file: build it again
            log.info("rebuilding the CPU kernels: %s", exc)
    from torch.utils import cpp_extension

    _ninja_on_path()
    built = any(folder.glob(f"{name}*.so"))
    if not built:
        _say("Building Influence's CPU kernels (one time, about a minute)...")
    start = time.perf_counter()
    module: ModuleType = cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )
    if not built:
        _say(f"Built Influence's CPU kernels in {time.perf_counter() - start:.0f} s ({folder})")
    return module


def load_kernels() -> ModuleType | None:
    """The compiled extension, building it if needed; None (with :func:`unavailable_reason`) if it cannot be."""
    state = _state
    if state.module is not None or state.failed is not None:
        return state.module
    with state.lock:
        if state.module is not None or state.failed is not None:
            return state.module
        if os.environ.get("INFLUENCE_KERNELS", "").strip().lower() in ("0", "off", "false", "no"):
            state.failed = "switched off by INFLUENCE_KERNELS"
            return None
        try:
            state.module = _build()
        except Exception as exc:  # no compiler, no ninja, a build error: run on the torch fallback
            first = str(exc).strip().splitlines()
            state.failed = f"{type(exc).__name__}: {first[0] if first else ''}"
            log.warning("CPU kernels unavailable, using the pure-torch fallback: %s", state.failed)
        return state.module


def unavailable_reason() -> str | None:
    """Why the kernels are not in use (after :func:`load_kernels` was tried), or None."""
    return _state.failed


def _reset_for_tests() -> None:
    _state.module = None
    _state.failed = None


def packed_linear(
    x: torch.Tensor,
    w: PackedWeight,
    bias: torch.Tensor | None = None,
    *,
    integer_dot: bool = True,
    module: Any = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` in float32 on the kernels (or the fallback where they are unavailable).

    With ``integer_dot``, products with q4/q8 weights are computed as llama.cpp does, with each row of ``x``
    quantized to int8 per block of 32 (:func:`~.packed.linear_reference_int8x` defines it), where the CPU has
    AVX512-VNNI: about twice as fast, at the cost of a small error (on the demo model, prompt logits within
    5.4 of the dequantized model's, the same top token at about 88% of positions). Without it, every weight is
    expanded to float32 and the result matches :func:`~.packed.linear_reference` to float rounding."""
    ext = module if module is not None else load_kernels()
    if ext is None or x.device.type != "cpu":
        return linear_reference(x, w, bias)
    return ext.packed_linear(  # type: ignore[no-any-return]
        x if x.dtype == torch.float32 else x.to(torch.float32),
        w.kind,
        w.qweight,
        w.scales,
        w.mins,
        w.group,
        bias,
        integer_dot,
    )


def integer_dot_available() -> bool:
    """Whether single-row q4/q8 products use int8 activations (AVX512-VNNI kernels are in use)."""
    ext = load_kernels()
    return ext is not None and bool(ext.has_vnni())


def packed_dequantize(w: PackedWeight, *, module: Any = None) -> torch.Tensor:
    """``W`` as float32 ``[N, K]`` on the kernels (or the fallback)."""
    ext = module if module is not None else load_kernels()
    if ext is None or w.qweight.device.type != "cpu":
        return dequantize(w)
    return ext.packed_dequantize(w.kind, w.qweight, w.scales, w.mins, w.shape[1], w.group)  # type: ignore[no-any-return]


if __name__ == "__main__":  # `python -m influence_tui.core.engine.quant.kernels`: build now (make install does)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ext = load_kernels()
    print(f"kernels: {'ready' if ext is not None else 'unavailable: ' + str(unavailable_reason())}")
