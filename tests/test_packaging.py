"""Release metadata: one version source, valid classifiers, floors that CI installs exactly."""

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import lightning_mixup

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]


def floors(requirements: list[str]) -> dict[str, Version]:
    """``{name: version}`` of each ``name>=version`` requirement (other packages are left out)."""
    found = {}
    for text in requirements:
        requirement = Requirement(text)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        if requirement.name != "lightning-mixup":
            assert len(lower) == 1, f"{text}: one `>=` floor expected"
            found[requirement.name.lower()] = Version(lower[0])
    return found


def oldest_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "oldest.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version)
    return pins


def test_the_version_has_one_source():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "lightning_mixup.__version__"}
    # The installed metadata (editable install of this checkout) carries that very version.
    assert metadata.version("lightning-mixup") == lightning_mixup.__version__


def test_every_required_floor_is_pinned_in_the_oldest_versions_stage():
    pins = oldest_pins()
    required = floors(PROJECT["dependencies"])
    assert {name: pins.get(name) for name in required} == required


def test_every_oldest_pin_is_a_declared_floor():
    declared = floors(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        for name, version in floors(extra).items():
            assert declared.setdefault(name, version) == version, f"{name}: two floors"
    pins = oldest_pins()
    assert {name: declared.get(name) for name in pins} == pins
    # The extras a user installs for the examples and the tuner are tested at their floors too.
    for extra in ("digits", "plots", "tune"):
        assert set(floors(PROJECT["optional-dependencies"][extra])) <= set(pins), extra


def test_classifiers_are_known_to_pypi_and_match_the_python_floor():
    trove = pytest.importorskip("trove_classifiers")
    classifiers = PROJECT["classifiers"]
    unknown = [c for c in classifiers if c not in trove.classifiers]
    assert unknown == []
    assert [c for c in classifiers if c in trove.deprecated_classifiers] == []
    floor = PROJECT["requires-python"].removeprefix(">=")
    versions = [c.rsplit(" :: ", 1)[1] for c in classifiers if c.count(" :: ") == 2]
    versions = [v for v in versions if v.startswith("3.")]
    assert versions and min(versions, key=lambda v: tuple(map(int, v.split(".")))) == floor
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: `license` says it
    assert PROJECT["license"] == "Apache-2.0"
