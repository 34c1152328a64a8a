"""Transactions on a real btrfs root with a real Debian: packages, failures, signals, crashes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber import btrfs
from testing.packages import build_deb, build_rpm, write_apt_index
from tests.root.badstate import (
    IN_PROGRESS,
    Handmade,
    alive,
    children,
    info_xml,
    make_handmade,
    processes_inside,
    processes_mentioning,
    wait_for,
)
from tests.root.conftest import System
from tests.root.helpers import (
    AMBER,
    USE_LOCAL_APT_REPOSITORY,
    amber,
    crashing,
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
    wait_for(lambda: (system.snapshot(2) / "etc/started").exists())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert numbers(system.root) == [1]
    assert status(system.root)["default"] == 1
    assert mounts_under(system.root) == []


@pytest.mark.parametrize("phase", ["allocated", "created", "changed", "read-only", "finished"])
def test_sigkill_before_commit_leaves_old_default(system: System, phase: str) -> None:
    result = crashing(system.root, phase, "run", "--", "touch", "/etc/x")
    assert result.returncode == -signal.SIGKILL
    assert btrfs.default_subvolume(system.root) == btrfs.subvolume_id(system.snapshot(1))
    unfinished = phase in ("allocated", "created", "changed")
    st = status(system.root)  # reports the unfinished snapshot, deletes nothing
    assert st["default"] == 1 and st["in_progress"] == []
    assert st["interrupted"] == ([2] if unfinished else [])
    assert (system.root / ".snapshots/2").is_dir()
    after = amber(system.root, "run", "--", "true")  # the next write command recovers
    if unfinished:
        assert "removing snapshot 2, left unfinished" in after.stderr
        assert numbers(system.root) == [1, 2] and status(system.root)["default"] == 2
    else:  # complete and read-only, only not the default: kept
        assert "kept the snapshot: it is read-only" in after.stderr
        assert numbers(system.root) == [1, 2, 3] and btrfs.is_read_only(system.snapshot(2))
        assert (system.snapshot(2) / "etc/x").exists()
    assert status(system.root)["interrupted"] == []


@pytest.mark.parametrize("phase", ["allocated", "created", "changed"])
def test_sigterm_before_commit_leaves_nothing(system: System, phase: str) -> None:
    result = crashing(system.root, f"{phase}:SIGTERM", "run", "--", "touch", "/etc/x")
    assert result.returncode == 130, result.stderr
    assert "nothing was changed" in result.stderr
    assert sorted(os.listdir(system.root / ".snapshots")) == [".amber.lock", "1"]
    assert (system.root / ".snapshots/.amber.lock").read_text() == ""
    st = status(system.root)
    assert (st["default"], st["interrupted"], st["in_progress"]) == (1, [], [])


@pytest.mark.parametrize("phase", ["read-only", "finished"])
def test_sigterm_during_commit_completes_it(system: System, phase: str) -> None:
    result = crashing(system.root, f"{phase}:SIGTERM", "run", "--", "touch", "/etc/x")
    assert result.returncode == 0, result.stderr
    assert "interrupted while committing snapshot 2" in result.stderr
    assert status(system.root)["default"] == 2 and btrfs.is_read_only(system.snapshot(2))
    assert (system.root / ".snapshots/.amber.lock").read_text() == ""


def test_command_dies_with_a_killed_amber(system: System) -> None:
    """kill -9 of amber while its command runs with a child in the background: nothing of that
    run stays alive, and the next transaction works."""
    proc = spawn(system.root, "run", "--", "sh", "-c", "sleep 100 & sleep 100; true")
    wait_for(lambda: len(processes_inside(system.snapshot(2))) >= 3, what="sh and two sleeps")
    proc.kill()
    proc.wait()
    wait_for(lambda: not processes_inside(system.snapshot(2)), timeout=10,
             what="the command and its background child gone")
    wait_for(lambda: not processes_mentioning(str(system.root)), timeout=10,
             what="amber's supervisor gone")
    assert status(system.root)["interrupted"] == [2]
    amber(system.root, "run", "--", "true")
    assert numbers(system.root) == [1, 2] and status(system.root)["default"] == 2
    assert mounts_under(system.root) == []


def test_recovery_stops_what_outlived_amber_and_its_supervisor(system: System) -> None:
    """Should the supervisor be killed too, the command dies with it and what it left in the
    background is stopped by the recovery, before the snapshot is deleted."""
    proc = spawn(system.root, "run", "--", "sh", "-c", "sleep 100 & sleep 100; true")
    wait_for(lambda: len(processes_inside(system.snapshot(2))) >= 3, what="sh and two sleeps")
    supervisors = children(proc.pid)
    assert len(supervisors) == 1
    os.kill(supervisors[0], signal.SIGSTOP)  # so that it cannot act on amber's death
    proc.kill()
    proc.wait()
    os.kill(supervisors[0], signal.SIGKILL)
    wait_for(lambda: len(processes_inside(system.snapshot(2))) == 2, timeout=10,
             what="sh dead with the supervisor, its two sleeps orphaned")
    orphans = processes_inside(system.snapshot(2))
    assert status(system.root)["interrupted"] == [2]
    assert processes_inside(system.snapshot(2)) == orphans  # status stops nothing
    removed = json.loads(amber(system.root, "cleanup", "--keep", "100", "--json").stdout)
    assert removed == {"removed": [2]}
    assert not any(alive(pid) for pid in orphans)
    assert numbers(system.root) == [1] and not (system.root / ".snapshots/2").exists()


def test_sigkill_after_commit_keeps_new_default(system: System) -> None:
    result = crashing(system.root, "default", "run", "--", "touch", "/etc/x")
    assert result.returncode == -signal.SIGKILL
    st = status(system.root)
    assert st["default"] == 2
    assert (system.snapshot(2) / "etc/x").exists()
    assert numbers(system.root) == [1, 2]


def test_concurrent_transaction_fails_at_once_or_waits(system: System) -> None:
    first = spawn(system.root, "run", "--", "sleep", "3")
    wait_for(lambda: (system.root / ".snapshots/2/snapshot").exists())
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
    amber(system.root, "run", "--", "sh", "-c", USE_LOCAL_APT_REPOSITORY)
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


# ---- bad states on roots made without amber ---------------------------------------------------

@pytest.fixture
def handmade(tmp_path: Path) -> Iterator[Handmade]:
    yield from make_handmade(tmp_path)


def _dead_owner() -> dict[str, object]:
    """A record's owner that is gone: a live pid, but not the process that started then."""
    return {"pid": os.getpid(), "start": 1, "boot": Path(
        "/proc/sys/kernel/random/boot_id").read_text().strip()}


def _leave(h: Handmade, case: str) -> int:
    """Bring the hand-made root into a state recovery must keep; returns the recorded number."""
    owner = _dead_owner()
    if case == "read-only":  # complete, only not the default (e.g. after a rollback)
        h.make(2)
    elif case == "read-only-marked":
        h.make(2, userdata=IN_PROGRESS)
    elif case == "writable-unmarked":
        h.make(2, read_only=False)
    elif case == "pinned":
        h.make(2, read_only=False, userdata={**IN_PROGRESS, "pinned": "yes"})
    elif case == "bad-info":
        h.make(2, read_only=False, info="<snapshot><num>2</num>")
    elif case == "foreign-files":
        (h.store / "2").mkdir()
        (h.store / "2/notes.txt").write_text("the admin's\n")
    elif case == "default":
        h.make(2, read_only=False, userdata=IN_PROGRESS)
        h.set_default(2)
    elif case == "booted":  # and not the default
        h.make(2)
        h.set_default(2)
        h.write_record(snapshot=1, **owner)
        return 1
    elif case == "owner-alive":
        h.make(2, read_only=False, userdata=IN_PROGRESS)
        fields = Path("/proc/self/stat").read_bytes().rpartition(b")")[2].split()
        owner = {**owner, "start": int(fields[19])}
    h.write_record(snapshot=2, **owner)
    return 2


KEPT = ["read-only", "read-only-marked", "writable-unmarked", "pinned", "bad-info",
        "foreign-files", "default", "booted", "owner-alive"]


@pytest.mark.parametrize("case", KEPT)
def test_recovery_keeps_what_is_not_provably_unfinished(handmade: Handmade, case: str) -> None:
    """A lock record with a dead owner names a snapshot that is finished, pinned, booted, the
    default, or not amber's: the next write command clears the record and deletes nothing."""
    h = handmade
    number = _leave(h, case)
    entries = sorted(os.listdir(h.store / str(number)))
    st = status(h.root)
    assert st["interrupted"] == [] and st["in_progress"] == []
    result = amber(h.root, "unpin", "1")  # a write command: it takes the lock and recovers
    assert sorted(os.listdir(h.store / str(number))) == entries
    if case not in ("owner-alive", "default"):  # the default: it committed, nothing to say
        assert f"names snapshot {number}; kept the snapshot" in result.stderr
    assert h.record() == ""
    assert "Traceback" not in result.stderr


UNFINISHED = ["marked", "no-info", "reserved", "reserved-with-info", "other-boot", "old-record"]


@pytest.mark.parametrize("case", UNFINISHED)
def test_read_only_commands_report_and_cleanup_removes_the_unfinished(
        handmade: Handmade, case: str) -> None:
    h = handmade
    owner = _dead_owner()
    if case in ("marked", "other-boot", "old-record"):
        h.make(2, read_only=False, userdata=IN_PROGRESS)
    elif case == "no-info":
        h.make(2, read_only=False, info="")
    else:
        (h.store / "2").mkdir()
        if case == "reserved-with-info":
            (h.store / "2/info.xml").write_text(info_xml(2, userdata=IN_PROGRESS))
    if case == "other-boot":  # a live pid, but the record is from before a reboot
        fields = Path("/proc/self/stat").read_bytes().rpartition(b")")[2].split()
        owner = {"pid": os.getpid(), "start": int(fields[19]), "boot": "an-earlier-boot"}
    elif case == "old-record":  # as amber wrote it before: pid (gone) and snapshot only
        gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
        owner = {"pid": int(gone.stdout)}
    h.write_record(snapshot=2, base=1, **owner)
    for verb in (["status"], ["snapshots"], ["diff", "1", "1"]):
        amber(h.root, *verb)
        assert (h.store / "2").is_dir(), f"amber {verb[0]} deleted snapshot 2"
    assert status(h.root)["interrupted"] == [2]
    result = amber(h.root, "cleanup", "--keep", "100", "--json")
    assert json.loads(result.stdout) == {"removed": [2]}
    assert "removing snapshot 2, left unfinished" in result.stderr
    assert not (h.store / "2").exists() and h.record() == ""
    assert status(h.root)["interrupted"] == []


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "directory", "fifo"])
def test_a_lock_that_is_not_a_plain_file_is_refused(handmade: Handmade, tmp_path: Path,
                                                    kind: str) -> None:
    h = handmade
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if kind == "symlink":
        h.lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        h.lock.symlink_to(tmp_path / "nowhere")
    elif kind == "directory":
        h.lock.mkdir()
    else:
        os.mkfifo(h.lock)
    for verb in (["run", "--", "true"], ["cleanup"], ["pin", "1"], ["rollback", "1"],
                 ["status"]):
        result = amber(h.root, *verb, check=False, timeout=30)
        assert result.returncode == 8, (verb, result.stderr)
        assert result.stderr.startswith("error: the lock ") and "hint: remove" in result.stderr
        assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(h.store)) == [".amber.lock", "1"]


def test_status_warns_when_the_default_is_not_a_snapshot(handmade: Handmade) -> None:
    h = handmade
    for target in (["5", str(h.store)], [str(h.root / "var")]):  # top level, shared subvolume
        subprocess.run(["btrfs", "subvolume", "set-default", *target], check=True)
        result = amber(h.root, "status", "--json")
        st = json.loads(result.stdout)
        assert st["default"] is None and st["booted"] == 1
        assert any("the default subvolume is not a snapshot" in w for w in st["warnings"])
        assert "warning: the default subvolume is not a snapshot" in result.stderr
    h.make(2, read_only=False)
    h.set_default(2)
    st = status(h.root)
    assert st["default"] == 2 and any("writable" in w for w in st["warnings"])


def test_status_warns_and_writes_refuse_when_snapshots_is_not_mounted(
        handmade: Handmade) -> None:
    h = handmade
    subprocess.run(["umount", str(h.store)], check=True)
    h.mounts.remove(h.store)
    result = amber(h.root, "status", "--json")
    st = json.loads(result.stdout)
    assert any("plain directory" in w and "not mounted" in w for w in st["warnings"])
    assert "warning: " in result.stderr
    for verb in (["cleanup"], ["run", "--", "true"], ["pin", "1"]):
        refused = amber(h.root, *verb, check=False)
        assert refused.returncode == 8, (verb, refused.stderr)
        assert "not mounted" in refused.stderr and "hint: mount the @/.snapshots" in \
            refused.stderr


def test_status_of_a_healthy_root_has_no_warning(handmade: Handmade) -> None:
    result = amber(handmade.root, "status", "--json")
    assert json.loads(result.stdout)["warnings"] == [] and "warning" not in result.stderr


def test_status_as_non_root_is_one_line(tmp_path: Path) -> None:
    public = Path(tempfile.mkdtemp(prefix="amber-nonroot-", dir="/tmp"))
    try:
        public.chmod(0o755)
        made = make_handmade(public)
        h = next(made)
        try:
            amber(h.root, "cleanup")  # creates the lock (mode 0600)
            as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            for verb in (["status"], ["status", "--json"], ["snapshots"]):
                result = subprocess.run([*as_nobody, *AMBER, "--root", str(h.root), *verb],
                                        capture_output=True, text=True)
                assert result.returncode == 8, (verb, result.stderr)
                assert result.stderr.startswith("error: ") and "hint: run amber as root" in \
                    result.stderr and "Traceback" not in result.stderr
        finally:
            next(made, None)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _fill(where: Path) -> None:
    """Use up every byte: large preallocated files, then small inline ones for the metadata."""
    size, n = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize, 0
    while size >= 4096:
        if subprocess.run(["fallocate", "-l", str(size), str(where / f"fill{n}")],
                          capture_output=True).returncode == 0:
            n += 1
        else:
            (where / f"fill{n}").unlink(missing_ok=True)
            size //= 2
    with contextlib.suppress(OSError):
        for i in itertools.count():
            (where / f"small{i}").write_bytes(b"x" * 1500)


def test_full_disk_is_exit_7_and_leaves_nothing(tmp_path: Path) -> None:
    made = make_handmade(tmp_path, "128M", mixed=True)
    h = next(made)
    try:
        h.make(2)
        h.set_default(2)
        amber(h.root, "cleanup")  # the lock file exists
        _fill(h.root / "var")
        before = sorted(os.listdir(h.store))
        for verb in (["run", "--", "true"], ["rollback", "1"], ["pin", "2"]):
            result = amber(h.root, *verb, check=False)
            assert result.returncode == 7, (verb, result.stderr)
            assert "no space left" in result.stderr and "hint: free space" in result.stderr
            assert "Traceback" not in result.stderr
            assert sorted(os.listdir(h.store)) == before and h.record() == ""
        st = status(h.root)
        assert (st["default"], st["interrupted"], st["in_progress"]) == (2, [], [])
        h.lock.unlink()
        result = amber(h.root, "run", "--", "true", check=False)
        assert result.returncode == 7 and "Traceback" not in result.stderr, result.stderr
        assert sorted(os.listdir(h.store)) in (before, sorted([*before, ".amber.lock"]))
    finally:
        next(made, None)


def test_an_unreadable_lock_record_is_reported_and_cleared(handmade: Handmade) -> None:
    h = handmade
    h.make(2, read_only=False, userdata=IN_PROGRESS)
    h.lock.write_bytes(b"\xff{not json")
    st = json.loads(amber(h.root, "status", "--json").stdout)
    assert st["interrupted"] == [] and any("unreadable" in w for w in st["warnings"])
    result = amber(h.root, "unpin", "1")
    assert "unreadable" in result.stderr and h.record() == ""
    assert h.snapshot(2).is_dir()  # named by no record: left to cleanup's own rules


def run_at_a_terminal(argv: list[str], timeout: float = 120) -> tuple[int, bytes]:
    """argv as a shell runs it at a terminal: a session of its own with a pty as its controlling
    terminal, in the foreground. Returns its exit code and what it wrote there."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not data:
                    break
                output += data
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"{argv} did not finish within {timeout:.0f} s at a terminal: "
                                 f"{output.decode(errors='replace')}")
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output
    finally:
        os.close(fd)


def test_a_command_at_a_terminal_is_not_stopped_by_it(system: System) -> None:
    """amber run at a terminal, as an admin types it (or Ansible runs it, over a pty): the
    command runs in a process group of its own, the terminal's background. Reading a terminal
    there stops it (SIGTTIN), and so does changing its modes (SIGTTOU; apt does that for dpkg's
    pty), with nothing to continue it: amber waited forever. A terminal is no input for it
    (/dev/null; a pipe or a file still is), and it may set the modes."""
    from tests.root.helpers import AMBER

    script = "read line || echo read-nothing; stty -F /dev/tty sane && echo stty-done"
    code, output = run_at_a_terminal([*AMBER, "--root", str(system.root), "run", "--",
                                      "sh", "-c", script])
    assert code == 0, output
    assert b"read-nothing" in output and b"stty-done" in output
    piped = amber(system.root, "run", "--", "sh", "-c", "cat > /etc/from-stdin",
                  input="piped in\n")
    assert piped.returncode == 0
    assert (system.snapshot(3) / "etc/from-stdin").read_text() == "piped in\n"
