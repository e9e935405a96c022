"""Packaging: the wheel holds every subpackage, and `platform` stays the standard library."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"platform": "dermground.platform", "ingest": "dermground.ingest", "train": "dermground.train",
             "eval": "dermground.eval"}


def _declared_packages() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["tool"]["setuptools"]["packages"])


def _packages_on_disk() -> set[str]:
    found = {"dermground"}
    for folder, dotted in TOP_LEVEL.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.parent.relative_to(REPO / folder)
            found.add(".".join([dotted, *rel.parts]))
    return found


def test_declared_packages_match_folders_on_disk() -> None:
    declared, on_disk = _declared_packages(), _packages_on_disk()
    assert on_disk - declared == set(), f"folders missing from pyproject packages: {on_disk - declared}"
    assert declared - on_disk == set(), f"declared packages with no folder: {declared - on_disk}"


def test_platform_folder_is_a_namespace_portion() -> None:
    # An __init__.py would turn platform/ into a regular package that shadows the stdlib module.
    assert not (REPO / "platform" / "__init__.py").exists()


def _stdlib_platform_file(cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import platform; platform.system(); print(platform.__file__)"],
        cwd=cwd, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def test_import_platform_is_stdlib_from_repo_root_and_elsewhere(tmp_path: Path) -> None:
    for cwd in (REPO, tmp_path):
        location = Path(_stdlib_platform_file(cwd))
        assert location.name == "platform.py"
        assert REPO not in location.parents, f"from {cwd}: {location} is not the stdlib module"


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dermground", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "attributes" in out.stdout


def test_wheel_contains_every_package_and_no_platform_init(tmp_path: Path) -> None:
    # Build from a copy so the repo gets no build/ or egg-info litter.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".dermground", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("dermground-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in _declared_packages():
        folder = package.replace(".", "/")
        assert any(n.startswith(folder + "/") and n.endswith(".py") for n in names), f"{package} not in wheel"
    assert "dermground/__init__.py" in names and "dermground/__main__.py" in names
    assert "dermground/platform/settings.py" in names
    assert "dermground/platform/__init__.py" not in names
    assert not any(n.startswith(("tests/", "dermground/tests/", "platform/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dermground = dermground.platform.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_torchvision_is_not_installed() -> None:
    # Only CUDA torchvision builds match torch 2.13 and they break transformers at import.
    out = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    assert out.returncode != 0
