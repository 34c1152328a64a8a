"""SUSE's package manager for real: zypper (as Debian packages it) in the snapshot, against a
plain directory of .rpm files in the shared /srv, with the rpm database in the snapshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testing.packages import build_rpm
from tests.root.conftest import System
from tests.root.helpers import amber, hello_version, rpm_installed, rpm_manager_story

pytestmark = pytest.mark.root


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
    assert hello_version(system, 3) == "1.0\n"

    # amber up: zypper update in a new snapshot; the older one keeps 1.0; and the rest.
    shutil.copy(build_rpm(tmp_path, "amber-hello", "2.0",
                          {"/usr/share/amber-hello/version": "2.0\n"}), repository)
    # zypper sees a plain directory change by its time stamp, to the second: publish later.
    later = repository.stat().st_mtime + 2
    os.utime(repository, (later, later))
    rpm_manager_story(system, tmp_path)
