"""Giving the memory freed by finished requests back to the system once the engine goes idle (glibc's heap).

Each request's KV cache is a few hundred buffers of some hundred KiB. glibc serves the first ones with their
own mappings, but after one is freed it raises its mapping threshold, and later ones come from the heap: freed,
they stay in the process (RSS) until ``malloc_trim`` hands the free pages back. :func:`trim` does that; the
engine calls it when its last running request has ended, so a server's RSS returns to its idle level after a
burst of requests. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


@cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Return the heap's free pages to the system; whether any were returned (False where there is no glibc)."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False
