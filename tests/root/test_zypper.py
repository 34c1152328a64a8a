"""SUSE's package manager for real: zypper (as Debian packages it) in the snapshot, against a
plain directory of .rpm files in the shared /srv, with the rpm database in the snapshot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from amber.log import ExitCode
from tests.packages import build_rpm
from tests.root.conftest import System
from tests.root.helpers import amber, numbers, rpm_installed, status

pytestmark = pytest.mark.root


def version_file(system: System, number: int) -> str:
    path = system.snapshot(number) / "usr/share/amber-hello/version"
    return path.read_text() if path.exists() else ""


def test_zypper_install_up_remove(zypper_system: System, tmp_path: Path) -> None:
    system = zypper_system
    repository = system.root / "srv/rpms"
    repository.mkdir()
    shutil.copy(build_rpm(tmp_path, "amber-hello", "1.0",
                          {"/usr/share/amber-hello/version": "1.0\n"}), repository)
    amber(system.root, "run", "--", "zypper", "--non-interactive", "addrepo", "--no-gpgcheck",
          "--refresh", "--type", "plaindir", "/srv/rpms", "amber-test")

    # By name from the repository: zypper writes the snapshot's own rpm database.
    result = amber(system.root, "pkg", "install", "--continue", "amber-hello")
    assert "zypper --non-interactive install" in result.stderr
    assert rpm_installed(system.snapshot(3), "amber-hello")
    assert not rpm_installed(system.snapshot(2), "amber-hello")
    assert version_file(system, 3) == "1.0\n"

    # amber up: zypper update in a new snapshot; the older one keeps 1.0.
    shutil.copy(build_rpm(tmp_path, "amber-hello", "2.0",
                          {"/usr/share/amber-hello/version": "2.0\n"}), repository)
    # zypper sees a plain directory change by its time stamp, to the second: publish later.
    later = repository.stat().st_mtime + 2
    os.utime(repository, (later, later))
    outcome = json.loads(amber(system.root, "up", "--continue", "--json").stdout)
    assert (outcome["snapshot"], outcome["default"]) == (4, 4)
    assert (version_file(system, 3), version_file(system, 4)) == ("1.0\n", "2.0\n")
    diff = json.loads(amber(system.root, "diff", "3", "4", "--json").stdout)
    assert diff["changed"] == [{"name": "rpm:amber-hello", "old": "1.0-1", "new": "2.0-1"}]

    # A local, unsigned .rpm named by the admin; then a removal.
    other = build_rpm(tmp_path / "other", "amber-other", "1.0", {"/usr/share/amber-other": "x"})
    amber(system.root, "pkg", "install", "--continue", str(other))
    assert rpm_installed(system.snapshot(5), "amber-other")
    amber(system.root, "pkg", "remove", "--continue", "amber-hello")
    assert not rpm_installed(system.snapshot(6), "amber-hello")
    assert rpm_installed(system.snapshot(5), "amber-hello")

    # zypper's failure leaves everything as it was.
    result = amber(system.root, "pkg", "install", "--continue", "amber-no-such-package",
                   check=False)
    assert result.returncode == ExitCode.STEP_FAILED
    assert "package install failed" in result.stderr
    assert numbers(system.root) == [1, 2, 3, 4, 5, 6] and status(system.root)["default"] == 6
