"""zypper (SUSE)."""

from __future__ import annotations

from collections.abc import Sequence

ZYPPER = ["zypper", "--non-interactive"]


def commands(action: str, packages: Sequence[str]) -> list[list[str]]:
    if action == "install":
        return [[*ZYPPER, "install", "--auto-agree-with-licenses", *packages]]
    if action == "remove":
        return [[*ZYPPER, "remove", *packages]]
    if action == "update":
        return [[*ZYPPER, "update", "--auto-agree-with-licenses", *packages]]
    if action == "up":
        return [[*ZYPPER, "update", "--auto-agree-with-licenses"]]
    raise ValueError(action)
