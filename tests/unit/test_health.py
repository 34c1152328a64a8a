"""Boot health without a system: the verdict record's format, the health units as systemd reads
them, and the checks' file rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from amber.fleet import units
from amber.health import checks, verdicts
from tests.conftest import require


def test_record_round_trip_and_distrust() -> None:
    record = verdicts.Record({7: verdicts.Verdict.BAD},
                             verdicts.Trial(8, 6, 2, "2026-12-02 03:00:00"),
                             verdicts.Rollback(7, 6, verdicts.Reason.HEALTH_CHECK, "t", "x: y",
                                               "/var/log/amber/health/boot-7.log"))
    again = verdicts.parse(json.loads(json.dumps(record.as_json())))
    assert again == record
    assert again.verdict(8) == verdicts.Verdict.TRIAL and again.verdict(6) == "good"
    assert verdicts.parse({"snapshots": {"x": "bad", "3": "awful"}, "trial": {"snapshot": -1},
                           "last_rollback": {"from": 1, "to": 2, "reason": "bored"}}) == \
        verdicts.Record()
    good = record.with_verdict(8, verdicts.Verdict.GOOD)
    assert good.trial is None and 8 not in good.snapshots


def test_health_units_verify(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing")
    names = units.enable_health(tmp_path)
    folder = tmp_path / "etc/systemd/system"
    assert (folder / "boot-complete.target.requires/amber-health-check.service").is_symlink()
    result = subprocess.run(["systemd-analyze", "verify", *(f"./{n}" for n in names)],
                            cwd=folder, capture_output=True, text=True)
    # This host has no /usr/bin/amber and no man page: everything else must be clean.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line and "/usr/bin/amber is not executable" not in line
                and "man amber(8)" not in line]
    assert problems == []
    assert (folder / "sysinit.target.wants/amber-health-timeout.service").is_symlink()


def test_check_files_by_name_etc_wins(tmp_path: Path) -> None:
    for folder in checks.CHECK_DIRS:
        (tmp_path / folder).mkdir(parents=True)
    vendor, admin = tmp_path / checks.CHECK_DIRS[0], tmp_path / checks.CHECK_DIRS[1]
    for path, mode in ((vendor / "10-a", 0o755), (vendor / "20-b", 0o755),
                       (admin / "20-b", 0o755), (admin / "30-readme", 0o644)):
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(mode)
    files, warnings = checks.check_files(tmp_path)
    assert files == [vendor / "10-a", admin / "20-b"]
    assert warnings == [f"health check {admin / '30-readme'} is ignored: not an executable file"]
