"""Running the real `amber` command against a test system root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

AMBER = [sys.executable, "-m", "amber.cli"]


def amber(root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*AMBER, "--root", str(root), *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"amber {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


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
