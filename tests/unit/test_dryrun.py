"""The pure parts of --dry-run: apt-get -s lines, the JSON shape, the version order."""

from __future__ import annotations

import shutil

import pytest

from amber import dryrun


def test_simulated_version_is_the_new_one() -> None:
    assert dryrun._simulated_version("bash [5.2.15-2] (5.2.15-2+b7 Debian:12.8 [amd64])") == \
        "5.2.15-2+b7"
    assert dryrun._simulated_version("nginx (1.22.1-9 Debian:12.8 [amd64])") == "1.22.1-9"
    assert dryrun._simulated_version("nothing here") == ""


def test_plan_json_and_changed() -> None:
    empty = dryrun.Plan(3)
    assert empty.as_json() == {"dry_run": True, "changed": False, "base": 3,
                               "would": {"added": [], "removed": [], "changed": []}}
    plan = dryrun.Plan(3, added={"x": "1"}, changed={"y": ("1", "2")})
    assert plan.as_json()["changed"] is True
    assert plan.as_json()["would"]["changed"] == [{"name": "y", "old": "1", "new": "2"}]
    assert dryrun.Plan(3, commands=(("true",),)).as_json()["would"]["run"] == [["true"]]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_dpkg_version_order() -> None:
    assert dryrun.newer("1.10", "1.9", rpm=False)
    assert not dryrun.newer("1.0~rc1", "1.0", rpm=False)
    assert not dryrun.newer("1.0", "1.0", rpm=False)
