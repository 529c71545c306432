"""The one range of each sampling parameter, read by the config, ``/set``, the TUI's parameter panel and the server."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PARAM_RANGES", "ParamRange", "param_range"]


@dataclass(frozen=True)
class ParamRange:
    """The values a sampling parameter may take: ``low`` to ``high``, both included."""

    low: float
    high: float
    whole: bool = False
    """Whole numbers only (``top_k``, ``max_tokens``...)."""

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a finite number in the range."""
        return math.isfinite(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """``0 to 100``, as an error message or a panel's hint writes it."""
        if self.whole:
            return f"{int(self.low)} to {int(self.high)}"
        return f"{self.low:g} to {self.high:g}"


PARAM_RANGES: dict[str, ParamRange] = {
    "temperature": ParamRange(0.0, 100.0),
    "top_p": ParamRange(0.0, 1.0),
    "top_k": ParamRange(0, 1_000_000, whole=True),
    "min_p": ParamRange(0.0, 1.0),
    "repeat_penalty": ParamRange(0.01, 100.0),
    "repeat_last_n": ParamRange(0, 1_000_000, whole=True),
    "max_tokens": ParamRange(1, 10_000_000, whole=True),
    "seed": ParamRange(0, 2**63 - 1, whole=True),
}
"""Each numeric sampling parameter's range. ``top_k`` and ``min_p`` at 0, and no ``seed``, mean off."""


def param_range(name: str) -> ParamRange:
    """The range of the sampling parameter ``name``; a KeyError for a name that has none."""
    return PARAM_RANGES[name]
