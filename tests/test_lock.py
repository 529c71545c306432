"""requirements.lock is what `make install` installs: exact, CPU-only torch, inside pyproject's ranges, and the
environment the tests run in is the locked one (so a green run means the lock was tested)."""

from __future__ import annotations

import os
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.lockdiff import LOCK, ROOT, differences, installed, read_lock


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_the_lock_has_no_cuda_packages_and_the_cpu_torch() -> None:
    pins = read_lock()
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert pins["torch"] == "2.13.0+cpu"


def test_the_lock_pins_every_dependency_inside_its_range() -> None:
    pins = read_lock()
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}: run make lock"
        )


def test_the_lock_reader_refuses_a_range(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.lock"
    bad.write_text("torch==2.13.0+cpu\n    # via x\ntransformers>=4\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        read_lock(bad)


def test_installed_versions_satisfy_pyproject() -> None:
    for req in pyproject_requirements():
        version = installed(req.name)
        assert version is not None, f"{req.name} is not installed"
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} is outside {req.specifier}"


@pytest.mark.skipif(bool(os.environ.get("INFLUENCE_TEST_LATEST")), reason="make test-latest installs newer versions")
def test_the_environment_is_the_locked_one() -> None:
    diffs = differences(read_lock(LOCK))
    assert not diffs, "this environment is not requirements.lock (run make install): " + ", ".join(
        f"{name} {now} (locked {locked})" for name, locked, now in diffs
    )
