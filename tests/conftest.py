"""Shared test setup. Root and VM tests need root, btrfs, loop devices and qemu; where those are
missing they are skipped on a developer machine, but under CI (CI or AMBER_REQUIRE_ALL set) a
missing prerequisite is a failure: a skipped real test is not a passing one."""

from __future__ import annotations

import os

import pytest


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") or os.environ.get("AMBER_REQUIRE_ALL"):
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)
