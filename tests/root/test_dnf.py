"""dnf for real (as Debian packages it) in the snapshot, against a local rpm-md repository that
createrepo_c publishes in the shared /srv, with the rpm database in the snapshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testing.packages import build_rpm
from tests.root.conftest import System
from tests.root.helpers import amber, hello_version, rpm_installed, rpm_manager_story

pytestmark = pytest.mark.root

REPO_FILE = "[amber-test]\\nname=amber test\\nbaseurl=file:///srv/rpms\\ngpgcheck=0\\nenabled=1\\n"


def publish(system: System, rpm: Path) -> None:
    """Add rpm to the repository and regenerate its metadata with the system's createrepo_c
    (run in the booted, read-only root: it writes only to the shared /srv)."""
    shutil.copy(rpm, system.root / "srv/rpms")
    subprocess.run(["chroot", str(system.root), "createrepo_c", "--quiet", "--update",
                    "/srv/rpms"], check=True, capture_output=True)


def test_dnf_install_up_remove(dnf_system: System, tmp_path: Path) -> None:
    system = dnf_system
    (system.root / "srv/rpms").mkdir()
    publish(system, build_rpm(tmp_path, "amber-hello", "1.0",
                              {"/usr/share/amber-hello/version": "1.0\n"}))
    amber(system.root, "run", "--", "sh", "-c",
          f"mkdir -p /etc/yum.repos.d && printf '{REPO_FILE}' > /etc/yum.repos.d/amber-test.repo")

    result = amber(system.root, "pkg", "install", "--continue", "amber-hello")
    assert "dnf -y install amber-hello" in result.stderr
    assert rpm_installed(system.snapshot(3), "amber-hello")
    assert not rpm_installed(system.snapshot(2), "amber-hello")
    assert hello_version(system, 3) == "1.0\n"

    # amber up: dnf upgrade --refresh in a new snapshot; the older one keeps 1.0; and the rest.
    publish(system, build_rpm(tmp_path, "amber-hello", "2.0",
                              {"/usr/share/amber-hello/version": "2.0\n"}))
    rpm_manager_story(system, tmp_path)
