"""Shared test setup. Root and VM tests need root, btrfs, loop devices and qemu; where those are
missing they are skipped on a developer machine, but under CI (CI or AMBER_REQUIRE_ALL set) a
missing prerequisite is a failure: a skipped real test is not a passing one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The tests test this checkout, whichever copy of amber pip installed last: in-process imports
# and the `python -m amber.cli` the tests spawn both look in its src first.
SRC = str(Path(__file__).resolve().parents[1] / "src")
if sys.path[0] != SRC:
    sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SRC, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") or os.environ.get("AMBER_REQUIRE_ALL"):
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


# A full run copies multi-GiB sparse images (root tests) and boots VMs from their own disks:
# with less than this free they fail in confusing ways, so say so once, up front.
FREE_SPACE_NEEDED = 10 << 30


def pytest_sessionstart(session: pytest.Session) -> None:
    import tempfile
    base = Path(tempfile.gettempdir())
    stats = os.statvfs(base)
    free = stats.f_bavail * stats.f_frsize
    if os.geteuid() == 0 and free < FREE_SPACE_NEEDED:
        raise pytest.UsageError(
            f"only {free >> 20} MiB free under {base}; the suite needs "
            f"{FREE_SPACE_NEEDED >> 30} GiB (hint: remove old pytest-of-* directories there)")


# `AMBER_TEST_LANES=2 tools/test` runs the suite in two lanes (pytest-xdist, --dist loadgroup).
# Each VM module stays whole in one lane, so its tests share one booted VM; these go to lane "a",
# every other test (unit, root, the other VM modules) to lane "b", so that the lanes take about
# as long. The caches of testing/images and testing/vm are built under file locks.
# Measured one after the other (2 vCPUs): test_health ~15 min, test_livepatch_apply ~6 (the
# initrd appended to, not regenerated), test_menu ~7, test_adopt ~4.5, the other VM modules ~28
# together, unit and root tests ~9.
LANE_A = frozenset({"test_health", "test_livepatch_apply", "test_menu", "test_adopt"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        vm_module = item.path.parent.name == "vm" and item.path.stem in LANE_A
        item.add_marker(pytest.mark.xdist_group("a" if vm_module else "b"))
