"""dnf (Fedora, RHEL); dnf5 where the snapshot has it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from amber.packages import Action


class Dnf:
    name = "dnf"
    success_notes: Mapping[int, str] = {}

    def __init__(self, program: str = "dnf"):
        self.program = program

    def commands(self, action: Action, packages: Sequence[str]) -> list[list[str]]:
        dnf = self.program
        if action == Action.INSTALL:
            return [[dnf, "-y", "install", *packages]]
        if action == Action.REMOVE:
            return [[dnf, "-y", "remove", *packages]]
        if action == Action.UPDATE:
            return [[dnf, "-y", "upgrade", *packages]]
        return [[dnf, "-y", "upgrade", "--refresh"]]

    def download(self, name: str, dest: Path) -> list[str]:
        return ["dnf", "download", "--destdir", str(dest), name]
