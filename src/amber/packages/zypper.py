"""zypper (SUSE)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from amber.packages import Action

ZYPPER = ["zypper", "--non-interactive"]

# zypper's informational exit codes that still mean the packages were installed (as
# transactional-update counts them), with what the admin should know.
SUCCESS_NOTES = {
    102: "zypper says a reboot is needed for the update to take effect",
    103: "zypper updated itself first; run 'amber up --continue' again for the remaining updates",
    106: "zypper skipped repositories it could not refresh; their updates were not considered",
}


def _local_files(packages: Sequence[str]) -> list[str]:
    # A local .rpm named on the command line is the admin's own choice, as a local .deb is to
    # apt: zypper would refuse an unsigned one. Repository packages stay verified.
    return ["--allow-unsigned-rpm"] if any(p.endswith(".rpm") for p in packages) else []


class Zypper:
    name = "zypper"
    success_notes: Mapping[int, str] = SUCCESS_NOTES

    def commands(self, action: Action, packages: Sequence[str]) -> list[list[str]]:
        if action == Action.INSTALL:
            return [[*ZYPPER, "install", "--auto-agree-with-licenses", *_local_files(packages),
                     *packages]]
        if action == Action.REMOVE:
            return [[*ZYPPER, "remove", *packages]]
        if action == Action.UPDATE:
            return [[*ZYPPER, "update", "--auto-agree-with-licenses", *_local_files(packages),
                     *packages]]
        # Refresh first, as apt-get update does for apt: zypper's own auto-refresh is skipped
        # for a while after the last one.
        return [[*ZYPPER, "refresh"], [*ZYPPER, "update", "--auto-agree-with-licenses"]]

    def download(self, name: str, dest: Path) -> list[str]:
        return [*ZYPPER, "--pkg-cache-dir", str(dest), "download", name]
