"""The pieces of `amber livepatch apply` that need no btrfs: sources, the initrd configuration
of dracut and initramfs-tools, the next boot's kernel, the initrd listing, drift sentences."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from amber.boot import initrd, kernels
from amber.livepatch import early, sources, view
from amber.log import AmberError, ExitCode
from testing.livepatch_packages import build_livepatch_deb, build_livepatch_rpm, rpm_name
from tests.support.modules import Modules


def test_package_files_are_unpacked_on_the_host(modules: Modules, tmp_path: Path) -> None:
    rpm = build_livepatch_rpm(tmp_path, modules.release, modules.v1, "1")
    deb = build_livepatch_deb(tmp_path, modules.release, modules.v2, "2")
    for i, (package, module, name) in enumerate(
            ((rpm, modules.v1, rpm_name(modules.release)),
             (deb, modules.v2, f"amber-livepatch-{modules.release}"))):
        source = sources.resolve(Path("/"), str(package), tmp_path / f"work{i}")
        assert source.package == name
        assert [m.name for m in source.modules] == [module.name]
        assert source.modules[0].read_bytes() == module.read_bytes()
        assert f"lib/modules/{modules.release}/livepatch/" in str(source.modules[0])


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    empty = build_livepatch_deb(tmp_path, "6.1.0-1-amd64", Path(__file__), "1")
    with pytest.raises(AmberError) as caught:
        sources.resolve(Path("/"), str(empty), tmp_path / "work")
    assert caught.value.code == ExitCode.INCOMPATIBLE
    assert "contains no kernel module" in caught.value.message
    with pytest.raises(AmberError) as caught:
        sources.resolve(Path("/"), str(tmp_path / "nothing.ko"), tmp_path / "work2")
    assert caught.value.code == ExitCode.NOT_FOUND
    with pytest.raises(AmberError) as caught:
        sources.resolve(Path("/"), "some/dir/file.txt", tmp_path / "work3")
    assert caught.value.code == ExitCode.USAGE


@pytest.mark.parametrize("suffix", [".deb", ".rpm"])
def test_a_broken_package_is_a_bad_module_not_a_failed_transaction(tmp_path: Path,
                                                                   suffix: str) -> None:
    """No snapshot exists in the preflight, so a failing host command there is not exit 3."""
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"not a package at all\n" * 10)
    with pytest.raises(AmberError) as caught:
        sources.resolve(Path("/"), str(broken), tmp_path / "work")
    assert caught.value.code == ExitCode.BAD_MODULE
    assert str(broken) in caught.value.message


def test_dracut_config_lists_only_the_newest(tmp_path: Path) -> None:
    early.configure_initrd(tmp_path, "dracut", "amber_lp_v1", [])
    assert early.initrd_patches(tmp_path) == ["amber_lp_v1"]
    early.configure_initrd(tmp_path, "dracut", "amber_lp_v2", ["amber_lp_v1"])
    assert early.initrd_patches(tmp_path) == ["amber_lp_v2"]
    assert 'force_drivers+=" amber_lp_v2 "' in (tmp_path / early.DRACUT_CONF).read_text()


def test_initramfs_tools_modules_keep_the_admins_lines(tmp_path: Path) -> None:
    modules = tmp_path / early.INITRAMFS_MODULES
    modules.parent.mkdir(parents=True)
    modules.write_text("# the admin's modules\nvirtio_blk\n")
    early.configure_initrd(tmp_path, "update-initramfs", "amber_lp_v1", [])
    early.configure_initrd(tmp_path, "update-initramfs", "amber_lp_v2", ["amber_lp_v1"])
    assert modules.read_text() == ("# the admin's modules\nvirtio_blk\n"
                                   f"{early.INITRAMFS_MARKER}\namber_lp_v2\n")
    assert early.initrd_patches(tmp_path) == ["amber_lp_v2"]


def test_boot_kernel_follows_the_vmlinuz_link(tmp_path: Path) -> None:
    for release in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (tmp_path / "boot").mkdir(exist_ok=True)
        (tmp_path / f"boot/vmlinuz-{release}").write_text("")
        (tmp_path / f"usr/lib/modules/{release}").mkdir(parents=True)
    assert kernels.boot_kernel(tmp_path) == "6.1.0-10-amd64"  # the newest, by version
    (tmp_path / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-9-amd64")
    assert kernels.boot_kernel(tmp_path) == "6.1.0-9-amd64"
    assert kernels.boot_kernel(tmp_path / "nothing") is None


def cpio(folder: Path) -> bytes:
    names = subprocess.run(["find", "."], cwd=folder, capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=folder, input=names,
                          capture_output=True, check=True).stdout


def test_initrd_listing_skips_the_early_cpio(tmp_path: Path) -> None:
    """An early (uncompressed) cpio, then a zstd-compressed one, as dracut writes them."""
    early, main = tmp_path / "early", tmp_path / "main"
    (early / "kernel/x86/microcode").mkdir(parents=True)
    (early / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(b"\x01" * 1001)
    (main / "usr/lib/modules/6.1/livepatch").mkdir(parents=True)
    (main / "usr/lib/modules/6.1/livepatch/amber_lp_v2.ko").write_bytes(b"x")

    compressed = subprocess.run(["zstd", "-q", "-c"], input=cpio(main), capture_output=True,
                                check=True).stdout
    head = cpio(early)
    image = tmp_path / "initrd.img"
    image.write_bytes(head + b"\0" * 512 + compressed)
    assert initrd.main_archive_offset(image.read_bytes()) == len(head) + 512
    listing = initrd.list_initrd(image)
    assert listing is not None
    assert "usr/lib/modules/6.1/livepatch/amber_lp_v2.ko" in listing.splitlines()


def test_initrd_listing_of_an_uncompressed_initrd(tmp_path: Path) -> None:
    """compress="cat": the early cpio, then the main archive, both plain cpio."""
    early, main = tmp_path / "early", tmp_path / "main"
    (early / "early_cpio").parent.mkdir(parents=True, exist_ok=True)
    (early / "early_cpio").write_text("1\n")
    (main / "usr/lib/modules/6.1/livepatch").mkdir(parents=True)
    (main / "usr/lib/modules/6.1/livepatch/amber_lp_v1.ko").write_bytes(b"x")

    head = cpio(early)
    for data in (head + cpio(main), cpio(main)):
        image = tmp_path / "initrd.img"
        image.write_bytes(data)
        listing = initrd.list_initrd(image)
        assert listing is not None
        assert "usr/lib/modules/6.1/livepatch/amber_lp_v1.ko" in listing.splitlines()


def test_initrd_listing_covers_every_uncompressed_archive(tmp_path: Path) -> None:
    """The kernel unpacks every archive of a concatenated initrd: a module in any of them is
    in the initrd, not only one in the last (an archive appended to an uncompressed initrd)."""
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "usr/lib/modules/6.1/kernel").mkdir(parents=True)
    (first / "usr/lib/modules/6.1/kernel/ext4.ko").write_bytes(b"x" * 5)
    (second / "usr/lib/modules/6.1/livepatch").mkdir(parents=True)
    (second / "usr/lib/modules/6.1/livepatch/amber_lp_v3.ko").write_bytes(b"y" * 3)
    image = tmp_path / "initrd.img"
    image.write_bytes(cpio(first) + b"\0" * 8 + cpio(second))
    listing = initrd.list_initrd(image)
    assert listing is not None
    lines = listing.splitlines()
    assert "usr/lib/modules/6.1/kernel/ext4.ko" in lines
    assert "usr/lib/modules/6.1/livepatch/amber_lp_v3.ko" in lines
    assert "TRAILER!!!" not in lines
    whole = cpio(first)
    image.write_bytes(whole[:whole.index(b"TRAILER!!!") - 50])  # cut short: not half-listed
    assert initrd.list_initrd(image) is None


def test_drift_sentences_name_the_command() -> None:
    active_only = view.PatchView("amber_lp_v2", active=True, booted=True, next_boot=False,
                                  in_initrd=None)
    warning, resolve = active_only.drift(1) or ("", "")
    assert "active now, but the next boot (snapshot 1) does not load it" in warning
    assert resolve.startswith("amber livepatch revert amber_lp_v2")
    next_only = view.PatchView("amber_lp_v2", active=False, booted=False, next_boot=True,
                                in_initrd=True, next_file="/.snapshots/3/snapshot/x.ko")
    warning, resolve = next_only.drift(3) or ("", "")
    assert "does not have it" in warning
    assert resolve == "amber livepatch load /.snapshots/3/snapshot/x.ko, or reboot"
    assert view.PatchView("a", True, True, True, True).drift(2) is None
