"""Running the real `amber` command against a test system root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

AMBER = [sys.executable, "-m", "amber.cli"]
REPO = Path(__file__).resolve().parents[2]
# A shell command for `amber run`: apt uses only the flat repository in the system root's
# /srv/repository (testing.packages.write_apt_index), and reads its index.
USE_LOCAL_APT_REPOSITORY = (
    "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] "
    "file:/srv/repository ./' > /etc/apt/sources.list.d/amber-test.list; apt-get update")


def amber(root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
          timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*AMBER, "--root", str(root), *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"amber {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def crashing(root: Path, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    """amber stopped at a point of its transaction by a signal (testing/crash.py)."""
    return subprocess.run([sys.executable, "-m", "testing.crash", point, "--root", str(root),
                           *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def amber_json(root: Path, *args: str) -> Any:
    return json.loads(amber(root, *args, "--json").stdout)


def spawn(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*AMBER, "--root", str(root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def status(root: Path) -> dict[str, Any]:
    value = amber_json(root, "status")
    assert isinstance(value, dict)
    return value


def numbers(root: Path) -> list[int]:
    return [row["number"] for row in amber_json(root, "snapshots")]


def dpkg_installed(snapshot: Path, package: str) -> bool:
    status_file = snapshot / "usr/lib/sysimage/dpkg/status"
    return f"Package: {package}\nStatus: install ok installed" in status_file.read_text()


def rpm_installed(snapshot: Path, package: str) -> bool:
    result = subprocess.run(["rpm", "--dbpath", str(snapshot / "usr/lib/sysimage/rpm"), "-q",
                             package], capture_output=True, text=True)
    return result.returncode == 0


def mounts_under(path: Path) -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                         text=True).stdout.split()
    return [m for m in out if m.startswith(str(path) + "/.snapshots/")]


def hello_version(system: Any, number: int) -> str:
    """What /usr/share/amber-hello/version says in snapshot `number` ("" when absent)."""
    path = system.snapshot(number) / "usr/share/amber-hello/version"
    return str(path.read_text()) if path.exists() else ""


def rpm_manager_story(system: Any, tmp_path: Path) -> None:
    """The rest of a package manager's story, once snapshot 3 has amber-hello 1.0 and 2.0 is
    published: amber up, diff, a local unsigned .rpm, a removal, a failure that changes nothing."""
    from amber.log import ExitCode
    from testing.packages import build_rpm

    outcome = json.loads(amber(system.root, "up", "--continue", "--json").stdout)
    assert (outcome["snapshot"], outcome["default"]) == (4, 4)
    assert (hello_version(system, 3), hello_version(system, 4)) == ("1.0\n", "2.0\n")
    diff = json.loads(amber(system.root, "diff", "3", "4", "--json").stdout)
    assert diff["changed"] == [{"name": "rpm:amber-hello", "old": "1.0-1", "new": "2.0-1"}]

    other = build_rpm(tmp_path / "other", "amber-other", "1.0", {"/usr/share/amber-other": "x"})
    amber(system.root, "pkg", "install", "--continue", str(other))
    assert rpm_installed(system.snapshot(5), "amber-other")
    amber(system.root, "pkg", "remove", "--continue", "amber-hello")
    assert not rpm_installed(system.snapshot(6), "amber-hello")
    assert rpm_installed(system.snapshot(5), "amber-hello")

    result = amber(system.root, "pkg", "install", "--continue", "amber-no-such-package",
                   check=False)
    assert result.returncode == ExitCode.STEP_FAILED
    assert "package install failed" in result.stderr
    assert numbers(system.root) == [1, 2, 3, 4, 5, 6] and status(system.root)["default"] == 6
