"""constraints.txt, the versions `make install` pins: it must cover what pyproject.toml asks for.

A dependency added to pyproject.toml but not pinned would resolve afresh in CI, the drift the file
exists to stop; a pin outside pyproject's range would make `make install` fail to resolve.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib; the pins are made on 3.11, as CI runs")

ROOT = Path(__file__).resolve().parents[2]
PINNED_EXTRAS = ("dev", "labeler")  # what `make install` installs (dev holds the labeler's packages)


def read_pins(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt:{number}: not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt:{number}: {req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in PINNED_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = read_pins((ROOT / "constraints.txt").read_text())
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"


def test_pins_carry_no_build_tag():
    # torch==2.13.0+cpu would refuse the CUDA build on a GPU machine; the Makefile picks the build.
    pins = read_pins((ROOT / "constraints.txt").read_text())
    assert not [name for name, version in pins.items() if version.local], "local version tags in constraints.txt"


def test_read_pins_refuses_ranges_and_repeats():
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_pins("torch>=2.4\n")
    with pytest.raises(AssertionError, match="pinned twice"):
        read_pins("Torch==2.4\ntorch==2.5\n")
    assert read_pins("# header\n\ntorch==2.13.0  # comment\n") == {"torch": Version("2.13.0")}
