"""dnf for real (as Debian packages it) in the snapshot, against a local rpm-md repository that
createrepo_c publishes in the shared /srv, with the rpm database in the snapshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from amber.log import ExitCode
from tests.packages import build_rpm
from tests.root.conftest import System
from tests.root.helpers import amber, numbers, rpm_installed, status

pytestmark = pytest.mark.root

REPO_FILE = "[amber-test]\\nname=amber test\\nbaseurl=file:///srv/rpms\\ngpgcheck=0\\nenabled=1\\n"


def publish(system: System, rpm: Path) -> None:
    """Add rpm to the repository and regenerate its metadata with the system's createrepo_c
    (run in the booted, read-only root: it writes only to the shared /srv)."""
    shutil.copy(rpm, system.root / "srv/rpms")
    subprocess.run(["chroot", str(system.root), "createrepo_c", "--quiet", "--update",
                    "/srv/rpms"], check=True, capture_output=True)


def version_file(system: System, number: int) -> str:
    path = system.snapshot(number) / "usr/share/amber-hello/version"
    return path.read_text() if path.exists() else ""


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
    assert version_file(system, 3) == "1.0\n"

    # amber up: dnf upgrade --refresh in a new snapshot; the older one keeps 1.0.
    publish(system, build_rpm(tmp_path, "amber-hello", "2.0",
                              {"/usr/share/amber-hello/version": "2.0\n"}))
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

    # dnf's failure leaves everything as it was.
    result = amber(system.root, "pkg", "install", "--continue", "amber-no-such-package",
                   check=False)
    assert result.returncode == ExitCode.STEP_FAILED
    assert "package install failed" in result.stderr
    assert numbers(system.root) == [1, 2, 3, 4, 5, 6] and status(system.root)["default"] == 6
