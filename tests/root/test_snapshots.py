"""Snapshot commands on a real btrfs root: status, listing, rollback, pin, delete, cleanup, diff,
bad roots, and interoperation with snapper itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amber import btrfs
from testing import rootfs
from testing.packages import build_deb
from tests.conftest import require
from tests.root.conftest import System
from tests.root.helpers import amber, amber_json, numbers, status

pytestmark = pytest.mark.root

SNAPPER_CONFIG = ('mkdir -p /etc/snapper/configs /etc/default && '
                  'printf "SUBVOLUME=\\"/\\"\\nFSTYPE=\\"btrfs\\"\\n" > /etc/snapper/configs/root'
                  ' && echo "SNAPPER_CONFIGS=\\"root\\"" > /etc/default/snapper')


def test_status_and_snapshots_json(system: System) -> None:
    st = status(system.root)
    assert st == {"root": str(system.root), "booted": 1, "default": 1, "in_progress": [],
                  "interrupted": [], "reboot_needed": False} | {
        k: v for k, v in st.items() if k not in
        ("root", "booted", "default", "in_progress", "interrupted", "reboot_needed")}
    amber(system.root, "run", "-m", "second <one> & more", "--", "true")
    rows = amber_json(system.root, "snapshots")
    assert [r["number"] for r in rows] == [1, 2]
    first, second = rows
    for key in ("number", "date", "description", "read_only", "default", "booted", "pinned",
                "userdata"):
        assert key in first
    assert first["booted"] and not first["default"] and first["read_only"]
    assert second["default"] and not second["booted"] and second["read_only"]
    assert second["description"] == "second <one> & more"
    assert second["userdata"] == {"base": "1"}
    assert not second["pinned"]
    text = amber(system.root, "snapshots").stdout
    assert "second <one> & more" in text


def test_rollback(system: System) -> None:
    amber(system.root, "run", "--", "touch", "/etc/a")
    amber(system.root, "run", "--continue", "--", "touch", "/etc/b")
    assert status(system.root)["default"] == 3
    amber(system.root, "rollback", "2")
    assert status(system.root)["default"] == 2
    amber(system.root, "rollback", "last")
    assert status(system.root)["default"] == 3
    amber(system.root, "rollback")  # without N: the booted snapshot again
    st = status(system.root)
    assert st["default"] == 1 and st["reboot_needed"] is False
    missing = amber(system.root, "rollback", "42", check=False)
    assert missing.returncode == 5 and "snapshot 42 does not exist" in missing.stderr


def test_rollback_refuses_writable_snapshot(system: System) -> None:
    (system.root / ".snapshots/7").mkdir()
    btrfs.create_snapshot(system.snapshot(1), system.snapshot(7))
    (system.root / ".snapshots/7/info.xml").write_text(
        "<?xml version=\"1.0\"?>\n<snapshot><type>single</type><num>7</num>"
        "<date>2020-01-01 00:00:00</date></snapshot>\n")
    result = amber(system.root, "rollback", "7", check=False)
    assert result.returncode == 6 and "writable" in result.stderr
    assert status(system.root)["default"] == 1


def test_delete_refuses_booted_and_default(system: System) -> None:
    amber(system.root, "run", "--", "true")
    booted = amber(system.root, "delete", "1", check=False)
    assert booted.returncode == 6 and "booted" in booted.stderr
    default = amber(system.root, "delete", "2", check=False)
    assert default.returncode == 6 and "default" in default.stderr
    amber(system.root, "run", "--", "true")
    amber(system.root, "delete", "2")
    assert numbers(system.root) == [1, 3]
    assert not (system.root / ".snapshots/2").exists()


def test_pin_and_cleanup(system: System) -> None:
    for _ in range(6):
        amber(system.root, "run", "--continue", "--", "true")
    amber(system.root, "pin", "3")
    assert amber_json(system.root, "snapshots")[2]["pinned"] is True
    # an unfinished transaction left by a crash: a directory with a snapshot marked in progress
    (system.root / ".snapshots/9").mkdir()
    btrfs.create_snapshot(system.snapshot(7), system.snapshot(9))
    (system.root / ".snapshots/9/info.xml").write_text(
        "<?xml version=\"1.0\"?>\n<snapshot><type>single</type><num>9</num><date>2020-01-01 "
        "00:00:00</date><userdata><key>transactional-update-in-progress</key><value>yes"
        "</value></userdata></snapshot>\n")
    (system.root / ".snapshots/10").mkdir()  # a number reserved before a crash
    removed = amber_json(system.root, "cleanup", "--keep", "2")
    # kept: 1 (booted), 3 (pinned), 6 and 7 (newest two, 7 the default)
    assert removed == {"removed": [2, 4, 5, 9]}
    assert numbers(system.root) == [1, 3, 6, 7]
    assert not (system.root / ".snapshots/10").exists()
    amber(system.root, "unpin", "3")
    amber(system.root, "cleanup", "--keep", "1")
    assert numbers(system.root) == [1, 7]


def test_diff(system: System, tmp_path: Path) -> None:
    v1 = build_deb(tmp_path, "amber-diff", "1.0", {"/usr/share/amber-diff/a": "1\n"})
    v2 = build_deb(tmp_path, "amber-diff", "2.0", {"/usr/share/amber-diff/a": "2\n"})
    amber(system.root, "pkg", "install", str(v1))
    amber(system.root, "pkg", "--continue", "install", str(v2))
    amber(system.root, "pkg", "--continue", "remove", "amber-diff")
    assert amber_json(system.root, "diff", "1", "2")["added"] == [
        {"name": "amber-diff", "version": "1.0"}]
    assert amber_json(system.root, "diff", "2", "3")["changed"] == [
        {"name": "amber-diff", "old": "1.0", "new": "2.0"}]
    assert amber_json(system.root, "diff", "3", "4")["removed"] == [
        {"name": "amber-diff", "version": "2.0"}]
    assert "no package changes" in amber(system.root, "diff", "booted", "1").stdout


def _assert_environment_error(root: Path) -> None:
    for verb in (["status"], ["snapshots"], ["run", "--", "true"], ["cleanup"]):
        result = amber(root, *verb, check=False)
        assert result.returncode == 8, (verb, result.stderr)
        assert result.stderr.startswith("error: ") and "hint: " in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["missing", "not-btrfs", "file"])
def test_garbage_root(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    if kind == "not-btrfs":
        root.mkdir()
        require(not btrfs.is_btrfs(root), "tmp_path must not be on btrfs for this test")
    if kind == "file":
        root.write_text("x")
    _assert_environment_error(root)


def test_btrfs_root_without_snapshot_store(system: System) -> None:
    _assert_environment_error(system.root / "var")


def test_snapper_reads_amber_and_amber_reads_snapper(system: System, tmp_path: Path) -> None:
    require(shutil.which("snapper") is not None, "needs snapper (tools/setup installs it)")
    amber(system.root, "run", "-m", "snapper config", "--", "sh", "-c", SNAPPER_CONFIG)
    # Mount the filesystem a second time as it would boot next (default = snapshot 2).
    second = tmp_path / "next-boot"
    second.mkdir()
    mounts = rootfs.mount_root(system.device, second)
    try:
        listing = subprocess.run(["snapper", "--no-dbus", "--root", str(second), "-c", "root",
                                  "--csvout", "list", "--columns", "number,description,cleanup"],
                                 check=True, capture_output=True, text=True).stdout
        assert "1,first root filesystem," in listing
        assert "2,snapper config,number" in listing
        subprocess.run(["snapper", "--no-dbus", "--root", str(second), "-c", "root", "create",
                        "-d", "made by snapper", "--userdata", "important=yes"], check=True)
        rows = amber_json(second, "snapshots")
        made = [r for r in rows if r["description"] == "made by snapper"]
        assert len(made) == 1 and made[0]["read_only"] and made[0]["userdata"] == {
            "important": "yes"}
        assert status(second)["booted"] == 2
    finally:
        rootfs.unmount_all(mounts)


def test_foreign_layout_made_with_btrfs_progs(pristine: Path, tmp_path: Path) -> None:
    """A root laid out the way SUSE's installer or kiwi does it, with btrfs-progs and a
    hand-written info.xml, no shared subvolumes but /var: amber manages it as it is."""
    from testing.images import debian_tarball
    from tests.root.conftest import attach

    image = tmp_path / "foreign.img"
    subprocess.run(["truncate", "-s", "2G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True)
    device = attach(image)
    top, root = tmp_path / "top", tmp_path / "root"
    top.mkdir()
    root.mkdir()
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", str(device), str(top)], check=True)
        mounted.append(top)
        for sub in ("@", "@/.snapshots", "@/var"):
            subprocess.run(["btrfs", "-q", "subvolume", "create", str(top / sub)], check=True)
        (top / "@/.snapshots/1").mkdir()
        first = top / "@/.snapshots/1/snapshot"
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(first)], check=True)
        subprocess.run(["tar", "-xf", str(debian_tarball()), "-C", str(first)], check=True)
        (first / ".snapshots").mkdir()
        (top / "@/.snapshots/1/info.xml").write_text(
            '<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n  <num>1</num>\n'
            "  <date>2024-02-02 10:00:00</date>\n  <description>first root filesystem"
            "</description>\n</snapshot>\n")
        subprocess.run(["btrfs", "property", "set", str(first), "ro", "true"], check=True)
        subprocess.run(["btrfs", "subvolume", "set-default", str(first)], check=True)
        subprocess.run(["umount", str(top)], check=True)
        mounted.remove(top)
        subprocess.run(["mount", "-o", "ro", str(device), str(root)], check=True)
        mounted.append(root)
        for sub in (".snapshots", "var"):
            subprocess.run(["mount", "-o", f"subvol=@/{sub}", str(device), str(root / sub)],
                           check=True)
            mounted.append(root / sub)
        assert status(root)["booted"] == 1
        amber(root, "run", "--", "touch", "/etc/made-by-amber")
        rows = amber_json(root, "snapshots")
        assert [(r["number"], r["booted"], r["default"]) for r in rows] == [
            (1, True, False), (2, False, True)]
        assert (root / ".snapshots/2/snapshot/etc/made-by-amber").exists()
        default = subprocess.run(["btrfs", "subvolume", "get-default", str(root)], check=True,
                                 capture_output=True, text=True).stdout
        assert default.strip().endswith("path @/.snapshots/2/snapshot")
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False)
        subprocess.run(["losetup", "-d", str(device)], check=False)
