"""Which commands each package manager gets (apt, rpm, zypper and dnf also run for real in the
root tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amber import packages
from amber.log import AmberError
from amber.packages import database


def snapshot_with(tmp_path: Path, *tools: str) -> Path:
    for tool in tools:
        path = tmp_path / tool.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return tmp_path


def test_zypper(tmp_path: Path) -> None:
    snap = snapshot_with(tmp_path, "/usr/bin/zypper", "/usr/bin/rpm")
    assert packages.commands(snap, "install", ["vim", "/run/amber/files/x.rpm"]) == [
        ["zypper", "--non-interactive", "install", "--auto-agree-with-licenses",
         "--allow-unsigned-rpm", "vim", "/run/amber/files/x.rpm"]]
    assert packages.commands(snap, "install", ["vim"]) == [
        ["zypper", "--non-interactive", "install", "--auto-agree-with-licenses", "vim"]]
    assert packages.commands(snap, "remove", ["vim"]) == [
        ["zypper", "--non-interactive", "remove", "vim"]]
    assert packages.commands(snap, "up", []) == [
        ["zypper", "--non-interactive", "refresh"],
        ["zypper", "--non-interactive", "update", "--auto-agree-with-licenses"]]
    assert set(packages.success_notes(snap)) == {102, 103, 106}


def test_dnf5_preferred(tmp_path: Path) -> None:
    snap = snapshot_with(tmp_path, "/usr/bin/dnf5", "/usr/bin/dnf")
    assert packages.commands(snap, "install", ["htop"]) == [["dnf5", "-y", "install", "htop"]]
    assert packages.commands(snap, "update", ["htop"]) == [["dnf5", "-y", "upgrade", "htop"]]


def test_apt_with_local_rpm(tmp_path: Path) -> None:
    snap = snapshot_with(tmp_path, "/usr/bin/apt-get", "/usr/bin/rpm")
    (snap / "usr/lib/sysimage/rpm").mkdir(parents=True)
    cmds = packages.commands(snap, "install", ["/run/amber/files/a.rpm", "curl"])
    assert cmds[0] == ["rpm", "--dbpath", "/usr/lib/sysimage/rpm", "-U", "--replacepkgs",
                       "/run/amber/files/a.rpm"]
    assert cmds[1][0] == "apt-get" and cmds[1][-2:] == ["install", "curl"]


def test_apt_up(tmp_path: Path) -> None:
    snap = snapshot_with(tmp_path, "/usr/bin/apt-get")
    cmds = packages.commands(snap, "up", [])
    assert cmds[0] == ["apt-get", "update"] and cmds[1][-1] == "full-upgrade"


def test_plain_rpm_refuses_names(tmp_path: Path) -> None:
    snap = snapshot_with(tmp_path, "/usr/bin/rpm")
    with pytest.raises(AmberError):
        packages.commands(snap, "install", ["vim"])


def test_no_package_manager(tmp_path: Path) -> None:
    with pytest.raises(AmberError) as e:
        packages.commands(tmp_path, "install", ["x"])
    assert "no known package manager" in e.value.message


def test_read_dpkg(tmp_path: Path) -> None:
    status = tmp_path / "usr/lib/sysimage/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: a\nStatus: install ok installed\nArchitecture: all\n"
                      "Version: 1.0\nDescription: x\n long\n\n"
                      "Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n"
                      "Package: c\nStatus: install ok installed\nArchitecture: amd64\n"
                      "Version: 3:1.2-1\n")
    installed = database.read_dpkg(tmp_path)
    assert installed["a"] == "1.0" and "b" not in installed
    assert installed.get("c", installed.get("c:amd64")) == "3:1.2-1"
