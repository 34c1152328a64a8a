"""/etc as each snapshot's own writable subvolume, the fork point and the first-boot merge, on a
real btrfs root with a real Debian (issue 11). A "boot" here is remounting the loop image as a
booted system sees its default snapshot; the merge runs as the initrd runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amber import btrfs
from testing import rootfs
from tests.root.conftest import System
from tests.root.helpers import amber, amber_json, status

pytestmark = pytest.mark.root


def reboot(system: System) -> None:
    rootfs.unmount_all(system.mounts)
    system.mounts[:] = rootfs.mount_root(system.device, system.root)


def subvolumes(system: System) -> dict[str, bool]:
    return btrfs.subvolumes_below(system.root / ".snapshots")


def add_user(etc: Path, name: str, uid: int) -> None:
    with open(etc / "passwd", "a") as f:
        f.write(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n")
    with open(etc / "group", "a") as f:
        f.write(f"{name}:x:{uid}:\n")
    with open(etc / "shadow", "a") as f:
        f.write(f"{name}:!:20000:0:99999:7:::\n")


def users(etc: Path) -> set[str]:
    return {line.split(":")[0] for line in (etc / "passwd").read_text().splitlines()}


def test_etc_is_a_writable_subvolume_of_each_snapshot(system: System) -> None:
    etc = system.snapshot(1) / "etc"
    assert btrfs.is_subvolume(etc) and not btrfs.is_read_only(etc)
    assert btrfs.is_read_only(system.snapshot(1))
    (system.root / "etc/motd.d").mkdir(exist_ok=True)
    (system.root / "etc/motd.d/admin").write_text("x\n")  # no transaction needed
    with pytest.raises(OSError):
        (system.root / "usr/amber-probe").write_text("x")
    assert (etc / "motd.d/admin").read_text() == "x\n"


def test_update_fork_merge_conflict_rollback(system: System) -> None:
    etc = system.root / "etc"
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = 3\n")
    (etc / "bar.conf").write_text("bar = old\n")
    (etc / "motd.d").mkdir(exist_ok=True)
    (etc / "motd.d/admin").write_text("before the fork\n")

    amber(system.root, "run", "--", "sh", "-c",
          "sed -i 's/^a = 1/a = package/' /etc/foo.conf && "
          "useradd -M -u 2001 alice && echo owned > /etc/owned.conf && "
          "chown 1234:5678 /etc/owned.conf")
    new_etc = system.snapshot(2) / "etc"
    syncpoint = new_etc / "etc.syncpoint"
    assert btrfs.is_subvolume(new_etc) and not btrfs.is_read_only(new_etc)
    assert btrfs.is_read_only(system.snapshot(2))
    assert btrfs.is_read_only(syncpoint)
    assert (syncpoint / "transactional-update.comparewith").read_text() == "1\n"
    assert (syncpoint / "foo.conf").read_text() == "a = 1\nb = 2\nc = 3\n"
    os.setxattr(new_etc / "owned.conf", "security.amber", b"label-from-the-update")

    # the admin goes on editing the running /etc after the fork
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = admin\n")
    (etc / "bar.conf").write_text("bar = admin\n")
    os.setxattr(etc / "bar.conf", "security.amber", b"admin-label")
    add_user(etc, "bob", 2002)
    assert amber_json(system.root, "etc", "diff")["changes"]  # bar.conf, foo.conf, passwd, ...
    changed = {c["path"] for c in amber_json(system.root, "etc", "diff")["changes"]}
    assert {"foo.conf", "bar.conf", "passwd", "motd.d/admin"} <= changed

    # not booted yet: the reference of `etc diff` is made by the first boot's merge
    early = amber(system.root, "etc", "diff", "2", check=False)
    assert early.returncode == 5 and "not been booted yet" in early.stderr, early.stderr
    assert not os.path.lexists(system.snapshot(2) / "usr/lib/amber/etc-origin/passwd")

    # the first boot of 2: the initrd's merge, then the system
    btrfs.sync(system.root / ".snapshots")
    amber(system.root, "etc", "merge-pending", "2")
    reboot(system)
    assert status(system.root)["booted"] == 2
    origin = system.snapshot(2) / "usr/lib/amber/etc-origin"
    assert btrfs.is_subvolume(origin) and btrfs.is_read_only(origin)
    assert (origin / "foo.conf").read_text() == "a = package\nb = 2\nc = 3\n"  # as T was
    assert not os.path.lexists(origin / "etc.syncpoint")
    carried = {c["path"] for c in amber_json(system.root, "etc", "diff")["changes"]}
    assert {"foo.conf", "bar.conf", "passwd"} <= carried and "owned.conf" not in carried
    assert (etc / "foo.conf").read_text() == "a = package\nb = 2\nc = admin\n"
    assert (etc / "bar.conf").read_text() == "bar = admin\n"
    assert os.getxattr(etc / "bar.conf", "security.amber") == b"admin-label"
    assert os.getxattr(etc / "owned.conf", "security.amber") == b"label-from-the-update"
    owned = os.lstat(etc / "owned.conf")
    assert (owned.st_uid, owned.st_gid) == (1234, 5678)
    assert {"alice", "bob"} <= users(etc)
    assert (etc / "motd.d/admin").read_text() == "before the fork\n"
    assert not os.path.lexists(etc / "etc.syncpoint")
    assert btrfs.is_read_only(system.snapshot(2))
    assert not os.path.lexists(system.snapshot(2) / ".etc.amber-merge")
    assert status(system.root)["etc_conflicts"] == []
    assert amber_json(system.root, "etc", "conflicts")["conflicts"] == []
    amber(system.root, "etc", "merge-pending")  # nothing pending: a no-op
    assert (etc / "foo.conf").read_text() == "a = package\nb = 2\nc = admin\n"

    # a real conflict: the update and the admin change the same line
    amber(system.root, "run", "--", "sh", "-c", "sed -i 's/^b = 2/b = package/' /etc/foo.conf")
    (etc / "foo.conf").write_text("a = package\nb = admin\nc = admin\n")
    amber(system.root, "etc", "merge-pending", "3")
    reboot(system)
    st = status(system.root)
    assert st["booted"] == 3 and st["etc_conflicts"] == ["foo.conf"]
    assert (etc / "foo.conf").read_text() == "a = package\nb = admin\nc = admin\n"
    listed = amber_json(system.root, "etc", "conflicts")["conflicts"]
    assert [c["path"] for c in listed] == ["foo.conf"]
    assert Path(listed[0]["new"]).read_text() == "a = package\nb = package\nc = admin\n"
    assert Path(listed[0]["base"]).read_text() == "a = package\nb = 2\nc = admin\n"
    assert "/etc conflicts:" in amber(system.root, "status").stdout
    assert "foo.conf" in amber(system.root, "etc", "conflicts").stdout

    # rollback boots snapshot 1's own /etc, with the edits made before the first fork
    amber(system.root, "rollback", "1")
    reboot(system)
    assert status(system.root)["booted"] == 1
    assert (etc / "motd.d/admin").read_text() == "before the fork\n"
    assert (etc / "foo.conf").read_text() == "a = 1\nb = 2\nc = admin\n"
    assert "alice" not in users(etc)

    # deleting a snapshot deletes its nested subvolumes too (/etc, its reference, a sync point)
    amber(system.root, "delete", "2")
    assert not any(name.startswith("2/") for name in subvolumes(system))
    assert not (system.root / ".snapshots/2").exists()


@pytest.mark.parametrize("edited", [True, False])
def test_status_warns_when_the_boot_did_not_merge(system: System, edited: bool) -> None:
    """A boot whose initrd lacks the hook (an initrd built before amber had it): the sync
    point is still there, and status says so when the old /etc was edited after the fork,
    instead of hiding the edits; an /etc nobody could touch (read-only, as a boot without the
    hook leaves it) loses nothing and is not reported."""
    if not edited:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(system.root / "etc")], check=True)
    amber(system.root, "run", "--", "true")
    if edited:
        (system.root / "etc/after-the-fork.conf").write_text("x\n")
    btrfs.sync(system.root / ".snapshots")
    reboot(system)  # without the merge
    st = status(system.root)
    assert st["booted"] == 2
    warned = [w for w in st["warnings"] if "was not merged at boot" in w]
    assert bool(warned) == edited, st["warnings"]
    if edited:
        assert "snapshot 1's /etc changed" in warned[0]
    unmerged = amber(system.root, "etc", "diff", check=False)
    assert unmerged.returncode == 5 and "did not run" in unmerged.stderr, unmerged.stderr
    late = amber(system.root, "etc", "merge-pending", "2", check=False)
    assert late.returncode == 6 and "mounted" in late.stderr, late.stderr  # not under the system
    assert btrfs.is_read_only(system.snapshot(2))


def test_drop_if_no_change_sees_etc(system: System) -> None:
    dropped = amber(system.root, "run", "--drop-if-no-change", "--", "true")
    assert "nothing changed" in dropped.stderr
    amber(system.root, "run", "--drop-if-no-change", "--", "sh", "-c", "echo x > /etc/only-etc")
    assert (system.snapshot(2) / "etc/only-etc").read_text() == "x\n"


def test_cleanup_deletes_nested_subvolumes(system: System) -> None:
    for _ in range(3):
        amber(system.root, "run", "--", "true")
    amber(system.root, "cleanup", "--keep", "1")
    left = {name.split("/")[0] for name in subvolumes(system)}
    assert "2" not in left and "3" not in left, left


def test_old_layout_is_converted_by_the_next_transaction(system: System) -> None:
    """A snapshot whose /etc is a plain directory in its read-only root (before issue 11)."""
    store = system.root / ".snapshots"
    (store / "5").mkdir()
    old = store / "5/snapshot"
    btrfs.create_snapshot(system.snapshot(1), old)
    (old / "etc").rmdir()
    os.system(f"cp -a --reflink=auto {system.snapshot(1)}/etc {old}/etc")
    info = (store / "1/info.xml").read_text().replace("<num>1</num>", "<num>5</num>")
    (store / "5/info.xml").write_text(info)
    btrfs.set_read_only(old, True)
    assert not btrfs.is_subvolume(old / "etc")
    amber(system.root, "run", "--continue", "5", "--", "true")
    converted = system.snapshot(6) / "etc"
    assert btrfs.is_subvolume(converted) and not btrfs.is_read_only(converted)
    assert (converted / "passwd").read_text() == (old / "etc/passwd").read_text()
    assert os.lstat(converted).st_mode == os.lstat(old / "etc").st_mode
    assert not os.path.lexists(converted / "etc.syncpoint")  # not forked from the booted one
    assert json.loads(amber(system.root, "etc", "diff", "6", "--json").stdout)["changes"] == []


HOOK = Path(__file__).parents[2] / "src/amber/data/dracut/90amber-etc/amber-etc.sh"


def test_initrd_hook_merges_and_mounts_etc_writable(system: System, tmp_path: Path) -> None:
    """The dracut hook as the initrd runs it: the default snapshot mounted read-only at a
    sysroot, nothing else mounted there; amber itself runs from this checkout (the test image
    has no Python), so AMBER_ETC_MERGE replaces the chroot."""
    etc = system.root / "etc"
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = 3\n")
    amber(system.root, "run", "--", "sh", "-c", "sed -i 's/^a = 1/a = new/' /etc/foo.conf")
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = admin\n")
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    subprocess.run(["mount", "-o", "ro", str(system.device), str(sysroot)], check=True)
    try:
        merge = " ".join([sys.executable, "-m", "amber.cli", "--root", str(sysroot), "etc",
                          "merge-pending"])
        result = subprocess.run(["sh", str(HOOK)], capture_output=True, text=True,
                                env={**os.environ, "NEWROOT": str(sysroot),
                                     "AMBER_ETC_MERGE": merge}, timeout=120)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(sysroot / "etc")
        assert not os.path.ismount(sysroot / ".snapshots")  # the hook's own mounts are gone
        assert (sysroot / "etc/foo.conf").read_text() == "a = new\nb = 2\nc = admin\n"
        (sysroot / "etc/written-at-boot").write_text("rw\n")  # /etc is writable
        with pytest.raises(OSError):
            (sysroot / "usr/not-writable").write_text("x")
        assert not os.path.lexists(sysroot / "etc/etc.syncpoint")
        again = subprocess.run(["sh", str(HOOK)], capture_output=True, text=True,
                               env={**os.environ, "NEWROOT": str(sysroot),
                                    "AMBER_ETC_MERGE": "false"}, timeout=60)
        assert again.returncode == 0 and "failed" not in again.stderr  # no merge pending
    finally:
        subprocess.run(["umount", "-R", str(sysroot)], check=False)


@pytest.mark.parametrize("root_left_writable", [False, True])
def test_merge_interrupted_after_the_swap_is_finished_by_the_next_boot(
        system: System, root_left_writable: bool) -> None:
    """A power cut between the exchange and the removal of the sync point: the next run
    removes what is left, merges nothing twice and leaves the root read-only, also when the
    cut came while the merge had the root writable."""
    from amber.etc.writer import exchange

    amber(system.root, "run", "--", "sh", "-c", "echo update > /etc/interrupted.conf")
    snapshot = system.snapshot(2)
    btrfs.set_read_only(snapshot, False)
    work = snapshot / ".etc.amber-merge"
    btrfs.create_snapshot(snapshot / "etc", work)
    exchange(snapshot / "etc", work)  # as the merge does, and then the power goes
    if not root_left_writable:
        btrfs.set_read_only(snapshot, True)
    assert not btrfs.is_subvolume(snapshot / "etc/etc.syncpoint")
    amber(system.root, "etc", "merge-pending", "2")
    assert not os.path.lexists(snapshot / "etc/etc.syncpoint")
    assert not os.path.lexists(work)
    assert btrfs.is_read_only(snapshot)
    assert (snapshot / "etc/interrupted.conf").read_text() == "update\n"
    assert not any(n.startswith("2/snapshot/.etc") for n in subvolumes(system))


def test_merge_interrupted_before_the_swap_runs_again(system: System) -> None:
    """A power cut while the merged copy was being built, the root writable: the next run
    builds it again from the start, swaps it in and leaves the root read-only."""
    etc = system.root / "etc"
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = 3\n")
    amber(system.root, "run", "--", "sed", "-i", "s/^a = 1/a = new/", "/etc/foo.conf")
    (etc / "foo.conf").write_text("a = 1\nb = 2\nc = admin\n")
    snapshot = system.snapshot(2)
    btrfs.set_read_only(snapshot, False)
    work = snapshot / ".etc.amber-merge"
    btrfs.create_snapshot(snapshot / "etc", work)
    (work / "foo.conf").write_text("half")  # the power goes
    amber(system.root, "etc", "merge-pending", "2")
    assert (snapshot / "etc/foo.conf").read_text() == "a = new\nb = 2\nc = admin\n"
    assert not os.path.lexists(snapshot / "etc/etc.syncpoint")
    assert not os.path.lexists(work)
    assert btrfs.is_read_only(snapshot)
    assert not any(n.startswith("2/snapshot/.etc") for n in subvolumes(system))


def test_merge_with_the_parent_gone_keeps_the_update_and_says_so(system: System) -> None:
    """The parent snapshot named by the sync point was deleted before the first boot: nothing
    to merge from, a warning, the sync point dropped, the reference made, the root read-only."""
    amber(system.root, "run", "--", "sh", "-c", "echo update > /etc/orphan.conf")
    syncpoint = system.snapshot(2) / "etc/etc.syncpoint"
    btrfs.set_read_only(syncpoint, False)
    (syncpoint / "transactional-update.comparewith").write_text("99\n")
    btrfs.set_read_only(syncpoint, True)
    result = amber(system.root, "etc", "merge-pending", "2")
    assert "parent snapshot 99 is gone" in result.stderr, result.stderr
    assert not os.path.lexists(syncpoint)
    assert btrfs.is_read_only(system.snapshot(2))
    assert btrfs.is_read_only(system.snapshot(2) / "usr/lib/amber/etc-origin")
    assert amber_json(system.root, "etc", "diff", "2")["changes"] == []
    assert (system.snapshot(2) / "etc/orphan.conf").read_text() == "update\n"


INITRAMFS_TOOLS = Path(__file__).parents[2] / "src/amber/data/initramfs-tools"
STANDIN_RELEASE = "6.1.0-amber-standin"


def install_initramfs_tools_hook(snapshot: Path) -> None:
    """amber's files where its package puts them (tools/package), and a stand-in kernel that
    update-initramfs can build an initrd for."""
    for path in (p for p in INITRAMFS_TOOLS.rglob("*") if p.is_file()):
        target = snapshot / "usr/share/initramfs-tools" / path.relative_to(INITRAMFS_TOOLS)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        target.chmod(0o755)
    dracut = snapshot / "usr/lib/dracut/modules.d/90amber-etc"
    dracut.mkdir(parents=True, exist_ok=True)
    (dracut / "amber-etc.sh").write_bytes(HOOK.read_bytes())
    (snapshot / f"boot/config-{STANDIN_RELEASE}").write_text("CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n")
    modules = snapshot / f"usr/lib/modules/{STANDIN_RELEASE}"
    modules.mkdir(parents=True, exist_ok=True)
    for name in ("modules.order", "modules.builtin"):
        (modules / name).write_text("")


def test_initramfs_tools_initrd_merges_and_mounts_etc_writable(
        initramfs_tools_system: System, tmp_path: Path) -> None:
    """Debian's default generator, for real: update-initramfs builds an initrd with amber's hook,
    and the initrd's own local-bottom script, run by the initrd's own shell and tools (a chroot
    into the unpacked initrd), merges a pending /etc and mounts it writable over the read-only
    root at $rootmnt."""
    system = initramfs_tools_system
    btrfs.set_read_only(system.snapshot(1), False)
    install_initramfs_tools_hook(system.snapshot(1))
    btrfs.set_read_only(system.snapshot(1), True)
    amber(system.root, "run", "--", "update-initramfs", "-c", "-k", STANDIN_RELEASE)
    reboot(system)
    amber(system.root, "run", "--", "sh", "-c", "echo update > /etc/from-update.conf")
    snapshot = system.snapshot(3)  # the default, its merge pending
    assert (snapshot / "etc/etc.syncpoint").is_dir()
    (system.root / "etc/from-admin.conf").write_text("admin\n")

    initrd = unpack_initrd(snapshot / f"boot/initrd.img-{STANDIN_RELEASE}", tmp_path / "initrd")
    assert "/scripts/local-bottom/amber-etc" in (initrd / "scripts/local-bottom/ORDER").read_text()
    for tool in ("chroot", "mount", "umount", "sync", "stat"):
        assert os.access(initrd / "usr/lib/amber/bin" / tool, os.X_OK)
    assert (initrd / "usr/lib/amber/amber-etc.sh").read_bytes() == HOOK.read_bytes()

    rootmnt = initrd / "root"
    mounts = [initrd / "proc", initrd / "dev", rootmnt]
    for point in mounts:  # the initrd's init makes them at boot
        point.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(initrd / "proc")], check=True)
    try:
        subprocess.run(["mount", "--bind", "/dev", str(initrd / "dev")], check=True)
        subprocess.run(["mount", "-o", "ro", str(system.device), str(rootmnt)], check=True)
        result = subprocess.run(
            ["chroot", str(initrd), "/bin/sh", "/scripts/local-bottom/amber-etc"],
            capture_output=True, text=True, timeout=120,
            env={"PATH": "/sbin:/usr/sbin:/bin:/usr/bin", "rootmnt": "/root",
                 "AMBER_ETC_MERGE": "mkdir /root/var/amber-merge-ran"})
        assert result.returncode == 0, result.stderr
        assert (system.root / "var/amber-merge-ran").is_dir()  # with /var mounted writable
        assert os.path.ismount(rootmnt / "etc")
        assert not os.path.ismount(rootmnt / ".snapshots") and not os.path.ismount(rootmnt / "var")
        assert (rootmnt / "etc/from-update.conf").read_text() == "update\n"
        (rootmnt / "etc/written-at-boot").write_text("rw\n")
        with pytest.raises(OSError):
            (rootmnt / "usr/not-writable").write_text("x")
    finally:
        subprocess.run(["umount", "-R", str(rootmnt)], check=False)
        for point in mounts[:2]:
            subprocess.run(["umount", str(point)], check=False)


def unpack_initrd(image: Path, out: Path) -> Path:
    """The initrd's main archive, unpacked with modes and links (the part after any early cpio)."""
    from amber.boot import initrd

    data = image.read_bytes()
    offset = initrd.main_archive_offset(data)
    command = next(c for magic, c in initrd.DECOMPRESSORS.items()
                   if data[offset:offset + len(magic)] == magic)
    out.mkdir()
    subprocess.run(["sh", "-c", f'tail -c +{offset + 1} "$1" | {command} | '
                    "cpio -idm --quiet --no-absolute-filenames", "sh", str(image)],
                   cwd=out, check=True)
    return out
