"""amber's --dry-run on a real system root: it reports what would change and creates nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from testing.packages import build_deb, write_apt_index
from tests.root.conftest import System
from tests.root.helpers import USE_LOCAL_APT_REPOSITORY, amber, amber_json, numbers


def test_dry_run_of_a_local_deb_says_what_and_creates_nothing(system: System,
                                                               tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "amber-dry", "1.0", {"/usr/share/amber-dry/x": "x\n"})
    before = numbers(system.root)
    plan = amber_json(system.root, "pkg", "install", str(deb), "--dry-run")
    assert plan["dry_run"] is True and plan["changed"] is True
    assert plan["would"]["added"] == [{"name": "amber-dry", "version": "1.0"}]
    assert numbers(system.root) == before

    done = amber_json(system.root, "pkg", "install", str(deb))
    assert done["changed"] is True
    again = amber_json(system.root, "pkg", "install", str(deb), "--dry-run", "--continue")
    assert again["changed"] is False and again["base"] == done["snapshot"]
    newer = build_deb(tmp_path, "amber-dry", "2.0", {"/usr/share/amber-dry/x": "y\n"})
    upgrade = amber_json(system.root, "pkg", "install", str(newer), "--dry-run", "--continue")
    assert upgrade["would"]["changed"] == [{"name": "amber-dry", "old": "1.0", "new": "2.0"}]
    removal = amber_json(system.root, "pkg", "remove", "amber-dry", "--dry-run", "--continue")
    assert removal["would"]["removed"] == [{"name": "amber-dry", "version": "1.0"}]
    absent = amber_json(system.root, "pkg", "remove", "amber-dry", "--dry-run")
    assert absent["changed"] is False  # the booted snapshot never had it


def test_dry_run_of_up_uses_apt_simulation_and_writes_nothing(system: System) -> None:
    before = numbers(system.root)
    plan = amber_json(system.root, "up", "--dry-run")
    assert plan["dry_run"] is True and isinstance(plan["changed"], bool)
    assert numbers(system.root) == before


def test_json_error_object_on_stdout(system: System) -> None:
    result = amber(system.root, "pkg", "install", "/nonexistent/x.deb", "--json", check=False)
    assert result.returncode == 5
    error = json.loads(result.stdout)["error"]
    assert "does not exist" in error["message"] and error["code"] == 5
    assert "error: " in result.stderr


def test_dry_run_of_a_package_from_a_repository(system: System, tmp_path: Path) -> None:
    """apt's lists are in the shared /var, not in the snapshot: the simulation must read them
    there, or a package only the repository has is 'unable to locate'."""
    repository = system.root / "srv/repository"
    repository.mkdir(parents=True)
    build_deb(repository, "amber-dry-repo", "3.1", {"/usr/share/amber-dry-repo/x": "x\n"})
    write_apt_index(repository)
    # Compressed: apt links an uncompressed file: index into its lists by its path in the
    # snapshot, which the host (reading the lists under --root) would not find.
    subprocess.run(["gzip", "-f", str(repository / "Packages")], check=True)
    amber(system.root, "run", "--", "sh", "-c", USE_LOCAL_APT_REPOSITORY)
    before = numbers(system.root)
    plan = amber_json(system.root, "pkg", "install", "amber-dry-repo", "--dry-run", "--continue")
    assert plan["would"]["added"] == [{"name": "amber-dry-repo", "version": "3.1"}]
    assert numbers(system.root) == before
