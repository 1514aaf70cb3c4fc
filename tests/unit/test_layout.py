"""The layout guards, so that pytest alone catches a breach too (CI also runs ``.ci/guards``):
no source module over 500 lines, the import contracts of ``.importlinter`` hold, and the wheel's
package list in pyproject.toml matches the package directories."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
#: Folders of the repository root that are not the package: tests, benchmarks, environments, builds.
NOT_PACKAGE = {"tests", "benchmarks", "build", "dist", "__pycache__", "node_modules", "test-artifacts"}


def _package_dirs(root: Path) -> Iterator[Path]:
    """Every folder of the package source under ``root`` (hidden ones, such as .venv, left out)."""
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and name not in NOT_PACKAGE and not name.endswith(".egg-info")
        )
        yield Path(folder)


def oversized_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Source modules over ``limit`` lines, as {path relative to root: lines}."""
    over = {}
    for folder in _package_dirs(root):
        for module in sorted(folder.glob("*.py")):
            lines = len(module.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                over[module.relative_to(root).as_posix()] = lines
    return over


def packages_on_disk(root: Path, name: str = "agentstream") -> set[str]:
    """Dotted names of the folders under ``root`` that hold an ``__init__.py`` (``root`` is ``name``)."""
    return {
        ".".join((name, *folder.relative_to(root).parts))
        for folder in _package_dirs(root)
        if (folder / "__init__.py").is_file()
    }


def packages_in_pyproject(root: Path) -> set[str]:
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return set(config["tool"]["setuptools"]["packages"])


def test_no_source_module_is_over_500_lines() -> None:
    over = oversized_modules(ROOT)
    assert not over, f"split along their seams (limit {MAX_LINES} lines): " + ", ".join(
        f"{path} ({lines})" for path, lines in sorted(over.items())
    )


def test_the_wheel_lists_every_package_and_only_packages() -> None:
    on_disk, listed = packages_on_disk(ROOT), packages_in_pyproject(ROOT)
    assert not on_disk - listed, (
        f"packages left out of the wheel ([tool.setuptools] packages): {on_disk - listed}"
    )
    assert not listed - on_disk, (
        f"listed in [tool.setuptools] packages but no such package: {listed - on_disk}"
    )


def test_the_import_contracts_hold(tmp_path: Path) -> None:
    # The repository root is the package `agentstream`: import-linter sees it through a link.
    (tmp_path / "agentstream").symlink_to(ROOT, target_is_directory=True)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "lint-imports is missing: install the dev extra"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", str(ROOT / ".importlinter")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(
            f"lint-imports exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False
        )


# ---- the guards themselves catch what they are for -----------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["agentstream", "agentstream.a"]\n'
    )
    for folder in ("a", "tests", "benchmarks", ".venv/lib", "build/lib", "x.egg-info"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("\n" * (MAX_LINES + 1))
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a" / "__init__.py").write_text("x = 1\n" * MAX_LINES)
    return tmp_path


def test_the_line_guard_sees_a_long_module_and_only_package_source(tree: Path) -> None:
    assert oversized_modules(tree) == {}
    (tree / "a" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert oversized_modules(tree) == {"a/big.py": MAX_LINES + 1}


def test_the_package_guard_sees_a_package_left_out_and_one_gone(tree: Path) -> None:
    assert packages_on_disk(tree) == packages_in_pyproject(tree) == {"agentstream", "agentstream.a"}
    (tree / "a" / "b").mkdir()
    (tree / "a" / "b" / "__init__.py").write_text("")
    (tree / "a" / "data").mkdir()  # a folder without __init__.py holds data, not a package
    assert packages_on_disk(tree) == {"agentstream", "agentstream.a", "agentstream.a.b"}
    (tree / "a" / "__init__.py").unlink()
    assert "agentstream.a" not in packages_on_disk(tree)


def _shared_test_basenames(tests: Path) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        by_name.setdefault(path.name, []).append(str(path.relative_to(tests)))
    return {name: paths for name, paths in by_name.items() if len(paths) > 1}


def test_test_modules_have_unique_basenames(tmp_path: Path) -> None:
    """pytest imports test modules by basename (no __init__.py): two of one name stop the collection
    of the whole suite, which running each folder alone does not show."""
    assert _shared_test_basenames(ROOT / "tests") == {}
    for folder in ("unit", "integration"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_same.py").write_text("")
    assert _shared_test_basenames(tmp_path) == {
        "test_same.py": ["integration/test_same.py", "unit/test_same.py"]
    }
