"""The `koala` command imports only what the command being run needs: `koala --help` none of the heavy libraries,
and no command prints third-party warnings. The static command table matches what the modules register."""

from __future__ import annotations

import subprocess
import sys

from cli.main import COMMANDS, build_parser

HEAVY = ("aiohttp", "boto3", "botocore", "asyncssh", "cryptography", "pydantic", "libvirt", "common.rpc")


def _loaded_after(argv: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    script = (
        "import sys\nfrom cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    return set(run.stderr.strip().splitlines()[-1].split()), run


def test_help_imports_no_heavy_library() -> None:
    loaded, run = _loaded_after(["--help"])
    assert all(name in run.stdout for name in COMMANDS), run.stdout  # every command is listed
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY]


def test_a_command_imports_its_module_only_and_warns_nothing() -> None:
    loaded, _ = _loaded_after(["status", "--state-dir", "/nonexistent/koala"])
    assert "cli.allinone" in loaded and "cli.admin_hosts" not in loaded and "cli.bundle_cmd" not in loaded
    admin = subprocess.run([sys.executable, "-m", "cli", "admin", "--help"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert admin.returncode == 0 and "Warning" not in admin.stderr, admin.stderr  # asyncssh's DSA deprecation


def test_table_matches_the_modules() -> None:
    registered = set(build_parser(["--help"], full=True)._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert registered == set(COMMANDS)
