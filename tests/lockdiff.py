"""Read requirements.lock and compare it with the running environment (used by the tests and `make test-latest`).

``python -m tests.lockdiff requirements.lock`` prints each locked package whose installed version differs, so a
`make test-latest` run says which upgrades it is testing.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: exact version}`` of every ``name==version`` line of a pip-compile output."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path.name}: not an exact pin: {raw!r}")
        pins[canonicalize_name(name.strip())] = version.strip().split(";")[0].strip()
    return pins


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def differences(pins: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """``(name, locked, installed)`` for every locked package whose installed version is another (or none)."""
    return [(name, locked, now) for name, locked in sorted(pins.items()) if (now := installed(name)) != locked]


def main(argv: list[str]) -> int:
    pins = read_lock(Path(argv[0]) if argv else LOCK)
    diffs = differences(pins)
    if not diffs:
        print("every package at its locked version")
    else:
        print(f"{len(diffs)} packages differ from requirements.lock:")
        for name, locked, now in diffs:
            print(f"  {name:28} locked {locked:14} installed {now or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
