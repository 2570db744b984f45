"""The tree stays lint-, format- and type-clean: `ruff check`, `ruff format --check` and mypy (configured in
pyproject.toml) over the whole project, as CI runs them (README, "Checks"); and its layers hold: a service imports
no other service's package, and common/ imports no service nor the CLI. A finding fails the suite, so nobody has
to remember to run them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, str(ROOT)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, f"ruff {' '.join(command)} found:\n{result.stdout}{result.stderr}"


def test_mypy_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"mypy found:\n{result.stdout}{result.stderr}"


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a file imports (anywhere in it, lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layers_hold() -> None:
    """Shared code lives in common/: a service reaches another one only through its API, never its package."""
    found: list[str] = []
    for path in sorted((ROOT / "common").rglob("*.py")):
        found += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(imported_modules(path))
                  if name.split(".")[0] in ("services", "cli")]  # fmt: skip
    for package in sorted(p for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()):
        for path in sorted(package.rglob("*.py")):
            found += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(imported_modules(path))
                      if name.startswith("services.") and name.split(".")[1] != package.name]  # fmt: skip
    assert not found, "imports across the layers:\n" + "\n".join(found)
