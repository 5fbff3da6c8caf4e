"""pyproject.toml admits only dependency versions the test suite has passed on: every dependency has a lower bound,
and that bound is the exact pin in requirements.txt (what CI installs and the suite runs on)."""

from pathlib import Path
import pytest

from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt: {line} is not an exact pin"
            out[req.name.lower()] = Version(spec.version)
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_dependency_lower_bound_is_the_tested_pin():
    tested = pins()
    for req in declared():
        name = req.name.lower()
        assert name in tested, f"pyproject.toml: {name} has no tested pin in requirements.txt"
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower == [tested[name]], f"pyproject.toml: {req} (tested: {name}=={tested[name]})"
        assert tested[name] in req.specifier, f"pyproject.toml: {req} excludes the tested {tested[name]}"


def test_known_bad_releases_are_excluded():
    by_name = {r.name.lower(): r.specifier for r in declared()}
    assert Version("0.18.9") not in by_name["deepspeed"]  # ZeRO-3 + non-reentrant checkpointing recompute bug
    assert Version("0.16.0") not in by_name["deepspeed"]
    assert Version("2.51.0") not in by_name["ray"]  # no token authentication before 2.52
