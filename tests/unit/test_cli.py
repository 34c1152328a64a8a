"""Command-line parsing and start-up: help, usage errors, --continue, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from amber import cli


def test_continue_optional_value() -> None:
    assert cli._normalize_continue(["pkg", "--continue", "install", "x"]) == [
        "pkg", "--continue=default", "install", "x"]
    assert cli._normalize_continue(["run", "--continue", "7", "--", "true"]) == [
        "run", "--continue", "7", "--", "true"]
    assert cli._normalize_continue(["run", "--", "x", "--continue"]) == [
        "run", "--", "x", "--continue"]
    args = cli.build_parser().parse_args(
        cli._normalize_continue(["pkg", "--continue", "install", "x"]))
    assert args.continue_from == "default" and args.action == "install"


@pytest.mark.parametrize("verb", ["run", "shell", "pkg", "up", "initrd", "status", "snapshots",
                                  "rollback", "pin", "unpin", "delete", "cleanup", "diff",
                                  "livepatch", "image"])
def test_every_verb_has_help(verb: str) -> None:
    result = subprocess.run([sys.executable, "-m", "amber.cli", verb, "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "usage: amber" in result.stdout


def test_usage_error_exit_code() -> None:
    result = subprocess.run([sys.executable, "-m", "amber.cli", "rollback", "1", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2


def test_status_imports_no_heavy_modules() -> None:
    code = ("import sys, amber.cli as c; p = c.build_parser(); "
            "heavy = [m for m in ('amber.transaction', 'amber.chroot', 'ctypes', "
            "'xml.etree.ElementTree', 'amber.livepatch.kernel', 'amber.image', "
            "'subprocess') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


# What `amber status` and `amber snapshots` import once their verb is parsed and its modules
# loaded: start-up time (issue 9). Each of these was on the path once and cost milliseconds.
STATUS_PATH_FREE_OF = ("shutil", "lzma", "bz2", "zlib", "json", "tempfile", "dataclasses",
                       "subprocess", "ctypes", "xml.etree.ElementTree", "amber.chroot",
                       "amber.state", "amber.livepatch", "amber.packages")


@pytest.mark.parametrize("verb", ["status", "snapshots"])
def test_status_path_imports_stay_out(verb: str) -> None:
    # The boot menu's modules too: on a system that boots through it, status reads them.
    code = ("import sys, amber.cli as c; a = c.build_parser(only=sys.argv[1])"
            ".parse_args([sys.argv[1]]); import amber.system, amber.boot.kernels; "
            "import amber.boot.menu, amber.boot.once, amber.health.verdicts; "
            "print([m for m in sys.argv[2:] if m in sys.modules])")
    result = subprocess.run([sys.executable, "-I", "-S", "-c",
                             f"import sys; sys.path[:0] = {sys.path!r}; {code}",
                             verb, *STATUS_PATH_FREE_OF],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_regex_compiled_at_import() -> None:
    """The snapshot store's patterns are compiled on first use, not by importing it (the
    standard library's own, pathlib's urllib.parse, are not amber's to change)."""
    code = ("import re; compiled = []; real = re.compile; "
            "re.compile = lambda p, f=0: (sys._getframe(1).f_globals['__name__']"
            ".startswith('amber') and compiled.append(p)) or real(p, f); "
            "import amber.system, amber.transaction, amber.snapshots, amber.log; "
            "print(compiled)")
    result = subprocess.run([sys.executable, "-I", "-S", "-c",
                             f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["rollback", "²"], ["rollback", "٣"], ["rollback", "007"], ["rollback", "0"],
    ["rollback", "-1"], ["diff", "²", "1"], ["diff", "1", "x"], ["run", "--continue", "²", "--",
                                                                    "true"],
    ["run", "--continue", "٣", "--", "true"], ["pin", "٣"], ["unpin", "²"], ["pin", "last"],
    ["delete", "1", "²"], ["delete", "booted"],
    ["livepatch", "apply", "--base", "²", "patch.ko"],
    ["livepatch", "apply", "--base", "last", "patch.ko"],
])
def test_malformed_snapshot_is_a_usage_error(argv: list[str], tmp_path: Path) -> None:
    """Finding 6 and 9: only ASCII digits name a snapshot ('²' passes str.isdigit(), '٣' even
    int()); the reference is checked before the root is looked at, by one parser."""
    result = subprocess.run([sys.executable, "-m", "amber.cli", "--root", str(tmp_path / "none"),
                             *argv], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: not a snapshot") and lines[1].startswith("  hint: ")
    assert "Traceback" not in result.stderr

