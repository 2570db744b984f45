"""Same-run comparisons with an older commit: the commit checked out in a temporary `git worktree` beside this
tree, and a benchmark child run in a given tree with that tree's code (PYTHONPATH, so the services it spawns run
that tree's code too), the JSON document that ends its output read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def baseline_tree(commit: str, prefix: str = "baseline-") -> Iterator[Path]:
    """`commit` checked out in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), commit], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def tree_env(tree: Path) -> dict[str, str]:
    """This process's environment with `tree`'s code first on the import path (before the installed package)."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def run_json(argv: Sequence[str], tree: Path, timeout: float = 1800) -> dict[str, Any]:
    """Run `argv` in `tree` with that tree's code; the JSON object that ends its stdout (one line, or indented
    with its braces at the start of a line)."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=tree_env(tree), cwd=tree
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    text = done.stdout.strip()
    for start in reversed([m.start() for m in re.finditer(r"^\{", text, re.MULTILINE)]):
        try:
            result: dict[str, Any] = json.loads(text[start:])
        except json.JSONDecodeError:
            continue
        return result
    raise SystemExit(f"{' '.join(argv)} in {tree} printed no JSON:\n{text[-2000:]}")
