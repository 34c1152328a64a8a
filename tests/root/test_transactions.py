"""Transactions on a real btrfs root with a real Debian: packages, failures, signals, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from amber import btrfs
from testing.packages import build_deb, build_rpm, write_apt_index
from tests.root.conftest import System
from tests.root.helpers import (
    AMBER,
    amber,
    dpkg_installed,
    mounts_under,
    numbers,
    rpm_installed,
    spawn,
    status,
)

pytestmark = pytest.mark.root


def test_install_local_deb_lands_in_new_default_snapshot(system: System, tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "amber-hello", "1.0", {"/usr/share/amber-hello/hello": "hi\n"},
                    postinst="echo postinst ran in $TRANSACTIONAL_UPDATE > /var/log/amber-hello")
    result = amber(system.root, "pkg", "install", str(deb))
    assert "snapshot 2 is the default" in result.stderr
    st = status(system.root)
    assert st["booted"] == 1 and st["default"] == 2 and st["reboot_needed"] is True
    assert st["in_progress"] == []
    assert dpkg_installed(system.snapshot(2), "amber-hello")
    assert not dpkg_installed(system.snapshot(1), "amber-hello")
    assert (system.snapshot(2) / "usr/share/amber-hello/hello").read_text() == "hi\n"
    assert not (system.snapshot(1) / "usr/share/amber-hello").exists()
    assert btrfs.is_read_only(system.snapshot(2))
    # /var is shared: the package script wrote to the live /var
    assert (system.root / "var/log/amber-hello").read_text().strip() == "postinst ran in true"
    assert mounts_under(system.root) == []
    diff = amber(system.root, "diff", "1", "2", "--json").stdout
    assert '"name": "amber-hello"' in diff and '"version": "1.0"' in diff


def test_install_local_rpm(system: System, tmp_path: Path) -> None:
    rpm = build_rpm(tmp_path, "amber-rhello", "2.0", {"/usr/share/amber-rhello/hello": "hi\n"})
    amber(system.root, "pkg", "install", str(rpm))
    assert rpm_installed(system.snapshot(2), "amber-rhello")
    assert not rpm_installed(system.snapshot(1), "amber-rhello")
    assert status(system.root)["default"] == 2
    removed = amber(system.root, "pkg", "--continue", "remove", "amber-rhello")
    assert removed.returncode == 0
    assert not rpm_installed(system.snapshot(3), "amber-rhello")
    assert rpm_installed(system.snapshot(2), "amber-rhello")


def test_failing_package_script_leaves_nothing(system: System, tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "amber-broken", "1.0", {"/usr/share/amber-broken/x": "x\n"},
                    postinst="echo failing on purpose >&2; exit 3")
    result = amber(system.root, "pkg", "install", str(deb), check=False)
    assert result.returncode == 3, result.stderr
    assert "package install failed" in result.stderr
    assert "apt-get" in result.stderr
    assert numbers(system.root) == [1]
    assert status(system.root)["default"] == 1
    assert mounts_under(system.root) == []


def test_failing_command_discards_snapshot(system: System) -> None:
    result = amber(system.root, "run", "--", "sh", "-c", "touch /etc/x; exit 7", check=False)
    assert result.returncode == 3
    assert "the command failed: 'sh -c 'touch /etc/x; exit 7'' exited with status 7" in \
        result.stderr
    assert "default is unchanged" in result.stderr
    assert numbers(system.root) == [1]
    assert not (system.root / ".snapshots/2").exists()


def test_missing_command(system: System) -> None:
    result = amber(system.root, "run", "--", "no-such-command", check=False)
    assert result.returncode == 3
    assert "command not found in the snapshot" in result.stderr
    assert numbers(system.root) == [1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_rolls_back(system: System, sig: signal.Signals) -> None:
    proc = spawn(system.root, "run", "--", "sh", "-c", "touch /etc/started; sleep 60")
    _wait_for(lambda: (system.snapshot(2) / "etc/started").exists())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert numbers(system.root) == [1]
    assert status(system.root)["default"] == 1
    assert mounts_under(system.root) == []


@pytest.mark.parametrize("phase", ["allocated", "created", "changed", "finished", "read-only"])
def test_sigkill_before_commit_leaves_old_default(system: System, phase: str) -> None:
    result = amber(system.root, "run", "--", "touch", "/etc/x", check=False,
                   env={"AMBER_TEST_CRASH_AT": phase})
    assert result.returncode == -signal.SIGKILL
    assert btrfs.default_subvolume(system.root) == btrfs.subvolume_id(system.snapshot(1))
    st = status(system.root)  # the next amber command removes the unfinished snapshot
    assert st["default"] == 1 and st["interrupted"] == [] and st["in_progress"] == []
    assert not (system.root / ".snapshots/2").exists()
    assert numbers(system.root) == [1]
    amber(system.root, "run", "--", "true")
    assert numbers(system.root) == [1, 2]


def test_sigkill_after_commit_keeps_new_default(system: System) -> None:
    result = amber(system.root, "run", "--", "touch", "/etc/x", check=False,
                   env={"AMBER_TEST_CRASH_AT": "default"})
    assert result.returncode == -signal.SIGKILL
    st = status(system.root)
    assert st["default"] == 2
    assert (system.snapshot(2) / "etc/x").exists()
    assert numbers(system.root) == [1, 2]


def test_concurrent_transaction_fails_at_once_or_waits(system: System) -> None:
    first = spawn(system.root, "run", "--", "sleep", "3")
    _wait_for(lambda: (system.root / ".snapshots/2/snapshot").exists())
    started = time.monotonic()
    second = amber(system.root, "run", "--", "true", check=False)
    assert time.monotonic() - started < 5
    assert second.returncode == 4
    assert "another amber transaction" in second.stderr and "--wait" in second.stderr
    assert status(system.root)["in_progress"] == [2]
    waited = amber(system.root, "run", "--wait", "--continue", "--", "true")
    assert waited.returncode == 0
    assert first.wait(timeout=30) == 0
    assert numbers(system.root) == [1, 2, 3]
    assert status(system.root)["default"] == 3


def test_full_filesystem_fails_cleanly(system: System) -> None:
    # Fill the filesystem through the shared /var, leaving ~16 MiB, then write more than that.
    filler = system.root / "var/filler"
    free = os.statvfs(system.root).f_bavail * os.statvfs(system.root).f_frsize
    subprocess.run(["fallocate", "-l", str(max(free - (16 << 20), 0)), str(filler)], check=True)
    result = amber(system.root, "run", "--", "sh", "-c",
                   "head -c 64M /dev/urandom > /usr/share/filler", check=False)
    assert result.returncode == 3, result.stderr
    assert "No space left on device" in result.stderr
    assert numbers(system.root) == [1]
    assert status(system.root)["default"] == 1
    assert mounts_under(system.root) == []
    filler.unlink()
    subprocess.run(["btrfs", "subvolume", "sync", str(system.root)], check=True)
    amber(system.root, "run", "--", "touch", "/etc/after-full")
    assert numbers(system.root) == [1, 2]


def test_second_transaction_before_reboot_warns(system: System) -> None:
    amber(system.root, "run", "--", "touch", "/etc/first")
    second = amber(system.root, "run", "--", "touch", "/etc/second")
    assert "--continue" in second.stderr and "snapshot 2" in second.stderr
    assert not (system.snapshot(3) / "etc/first").exists()
    third = amber(system.root, "run", "--continue", "--", "touch", "/etc/third")
    assert "warning" not in third.stderr
    assert (system.snapshot(4) / "etc/second").exists()
    assert (system.snapshot(4) / "etc/third").exists()
    amber(system.root, "run", "--continue", "2", "--", "touch", "/etc/fourth")
    assert (system.snapshot(5) / "etc/first").exists()
    assert not (system.snapshot(5) / "etc/second").exists()


def test_drop_if_no_change(system: System) -> None:
    dropped = amber(system.root, "run", "--drop-if-no-change", "--json", "--", "true")
    assert '"dropped": true' in dropped.stdout
    assert numbers(system.root) == [1]
    kept = amber(system.root, "run", "--drop-if-no-change", "--", "touch", "/etc/changed")
    assert kept.returncode == 0
    assert numbers(system.root) == [1, 2]


def _wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_shell_keeps_changes_on_success_and_discards_on_failure(system: System) -> None:
    kept = subprocess.run([*AMBER, "--root", str(system.root), "shell"], input=(
        "echo $TRANSACTIONAL_UPDATE > /etc/from-shell\nexit 0\n"), capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    assert (system.snapshot(2) / "etc/from-shell").read_text() == "true\n"
    discarded = subprocess.run([*AMBER, "--root", str(system.root), "shell", "--continue"],
                               input="touch /etc/discard-me\nexit 1\n", capture_output=True,
                               text=True)
    assert discarded.returncode == 3
    assert numbers(system.root) == [1, 2]


def test_initrd_without_generator_is_a_clear_error(system: System) -> None:
    result = amber(system.root, "initrd", check=False)
    assert result.returncode == 8
    assert "no initrd generator" in result.stderr and "hint:" in result.stderr
    assert numbers(system.root) == [1]


def test_install_by_name_and_up_from_an_apt_repository(system: System) -> None:
    """Real apt against a local repository: `pkg install NAME` and `up` (apt-get update +
    full-upgrade) in the snapshot, the repository in the shared /srv."""
    repository = system.root / "srv/repository"
    repository.mkdir()
    build_deb(repository, "amber-hello", "1.0", {"/usr/share/amber-hello/version": "1.0\n"})
    write_apt_index(repository)
    amber(system.root, "run", "--", "sh", "-c",
          "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] "
          "file:/srv/repository ./' > /etc/apt/sources.list.d/amber-test.list; apt-get update")
    amber(system.root, "pkg", "install", "--continue", "amber-hello")
    assert (system.snapshot(3) / "usr/share/amber-hello/version").read_text() == "1.0\n"

    build_deb(repository, "amber-hello", "2.0", {"/usr/share/amber-hello/version": "2.0\n"})
    write_apt_index(repository)
    result = amber(system.root, "up", "--continue", "--json")
    assert json.loads(result.stdout)["snapshot"] == 4
    assert (system.snapshot(4) / "usr/share/amber-hello/version").read_text() == "2.0\n"
    assert (system.snapshot(3) / "usr/share/amber-hello/version").read_text() == "1.0\n"
    diff = amber(system.root, "diff", "3", "4", "--json").stdout
    assert '"amber-hello"' in diff and '"1.0"' in diff and '"2.0"' in diff

    # Nothing left to upgrade: with --drop-if-no-change no snapshot is kept.
    amber(system.root, "up", "--continue", "--drop-if-no-change")
    assert numbers(system.root) == [1, 2, 3, 4] and status(system.root)["default"] == 4


def test_json_output_is_only_json(system: System) -> None:
    """What the command in the chroot prints goes to stderr with --json: stdout parses."""
    result = amber(system.root, "run", "--json", "--", "sh", "-c",
                   "echo from-the-chroot; echo on-stderr >&2; touch /etc/amber-json-test")
    assert json.loads(result.stdout)["snapshot"] == 2
    assert "from-the-chroot" in result.stderr and "on-stderr" in result.stderr
    result = amber(system.root, "run", "--", "echo", "from-the-chroot")
    assert result.stdout == "from-the-chroot\n"
