"""amber's initrd overlay without a kernel: the newc format both ways, finding the overlay at
the end of an initrd (and nothing that only looks like one), the generators' load files, and
the listing `amber livepatch status` reads, with the overlay after a compressed archive.
Indexing real modules with depmod is in tests/root/test_livepatch_apply.py."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from amber.boot import initrd
from amber.boot.initrd_overlay import (
    MARKER,
    CannotAppend,
    Member,
    _plain_module,
    all_members,
    load_config,
    modules_prefix,
    overlay_archive,
    read_archive,
    split_overlay,
    write_archive,
)
from tests.conftest import require
from tests.support.modules import Modules

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
RELEASE = "6.1.0-99-amd64"


def base_members() -> list[Member]:
    return [Member("usr", DIR), Member("usr/lib", DIR),
            Member(f"usr/lib/modules/{RELEASE}/modules.dep", FILE, b"kernel/x.ko:\n"),
            Member("etc/cmdline.d/20-force_drivers.conf", FILE,
                   b"rd.driver.pre=virtio_blk\nrd.driver.pre=amber_lp_v1\n"),
            Member("conf/modules", FILE, b"# from /etc/initramfs-tools/modules\nbtrfs\n"
                                         b"amber_lp_v1\n")]


def overlay(base: int, *members: Member) -> bytes:
    return overlay_archive(base, members)


def test_newc_round_trip_with_odd_sizes() -> None:
    members = [Member("a", DIR), Member("a/b", FILE, b"x" * 5),
               Member("a/long-name-" + "n" * 37, FILE, b""), Member("c", FILE, b"yz")]
    data = write_archive(members)
    assert len(data) % 4 == 0
    assert read_archive(data, 0) == (members, len(data))
    # cpio itself reads it as the same archive.
    if shutil.which("cpio"):
        listed = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True,
                                check=True).stdout.decode().split()
        assert listed == [m.name for m in members]


def test_the_overlay_is_found_only_at_the_end_and_says_where_the_base_ends() -> None:
    base = write_archive(base_members()) + b"\x1f\x8b compressed, odd length"
    padded = len(base) + (-len(base)) % 4
    image = base + bytes(padded - len(base)) + overlay(len(base), Member("f", FILE, b"1"))
    end, members = split_overlay(image)
    assert end == len(base) and members is not None and [m.name for m in members] == [MARKER, "f"]
    assert split_overlay(base) == (len(base), None)
    # Something after the overlay, a base that is not zeros up to it, a base past it: not ours.
    assert split_overlay(image + b"\x1f\x8b more")[1] is None
    assert split_overlay(base + b"\x01" * (padded - len(base)) + overlay(len(base)))[1] is None
    # The end marker names where the overlay starts: a start elsewhere is not ours.
    assert split_overlay(base + bytes(padded - len(base) + 4) + overlay(len(base)))[1] is None
    # Only ever an archive of ours: a made-up end marker over other data is not trusted.
    fake = base + bytes(padded - len(base)) + write_archive([Member("f", FILE, b"1"),
                                                            Member(MARKER + "-end", FILE,
                                                                   b"start=%020d\n" % 0)])
    assert split_overlay(fake)[1] is None


def test_a_damaged_archive_cannot_take_an_overlay() -> None:
    data = write_archive(base_members())
    with pytest.raises(CannotAppend, match="cut short or damaged"):
        read_archive(data[:-200] + b"junk" * 50, 0)
    with pytest.raises(CannotAppend, match="runs past the end"):
        read_archive(write_archive([Member("big", FILE, b"x" * 1000)])[:300], 0)


def test_dracut_loads_the_new_patch_in_place_of_the_old() -> None:
    config = load_config(base_members(), "dracut", "amber_lp_v2", {"amber_lp_v1"})
    assert config.name == "etc/cmdline.d/20-force_drivers.conf"
    assert config.data == b"rd.driver.pre=virtio_blk\nrd.driver.pre=amber_lp_v2\n"
    # Twice the same patch: one line.
    again = load_config([*base_members(), config], "dracut", "amber_lp_v2", set())
    assert bytes(again.data).count(b"amber_lp_v2") == 1


def test_initramfs_tools_loads_the_new_patch_in_place_of_the_old() -> None:
    config = load_config(base_members(), "update-initramfs", "amber_lp_v2", {"amber_lp_v1"})
    assert config.name == "conf/modules"
    assert config.data == b"# from /etc/initramfs-tools/modules\nbtrfs\namber_lp_v2\n"
    fresh = load_config([], "update-initramfs", "amber_lp_v2", set())
    assert fresh.data == b"amber_lp_v2\n"


def test_the_modules_folder_is_where_the_index_is() -> None:
    assert modules_prefix(base_members(), RELEASE) == f"usr/lib/modules/{RELEASE}/"
    with pytest.raises(CannotAppend, match=r"no module index of kernel 6\.1\.0-1-amd64"):
        modules_prefix(base_members(), "6.1.0-1-amd64")


def test_listing_and_unpacking_include_the_overlay_after_a_compressed_archive(
        tmp_path: Path) -> None:
    require(shutil.which("zstd") is not None and shutil.which("cpio") is not None,
            "zstd and cpio are missing")
    early = write_archive([Member("kernel/x86/microcode/AuthenticAMD.bin", FILE, b"ucode")])
    main = subprocess.run(["zstd", "-q", "-c"], input=write_archive(base_members()),
                          capture_output=True, check=True).stdout
    base = early + main
    module = Member(f"usr/lib/modules/{RELEASE}/livepatch/amber_lp_v2.ko", FILE, b"\x7fELF")
    image = tmp_path / "initrd.img"
    image.write_bytes(base + bytes((-len(base)) % 4) + overlay(len(base), module))
    listing = initrd.list_initrd(image)
    assert listing is not None
    assert listing.splitlines()[0] == "kernel/x86/microcode/AuthenticAMD.bin"
    assert listing.splitlines()[-1] == module.name and "conf/modules" in listing
    names = [m.name for m in all_members(image)]
    assert names[0] == "kernel/x86/microcode/AuthenticAMD.bin" and names[-1] == module.name


def test_an_unknown_format_is_said(tmp_path: Path) -> None:
    image = tmp_path / "initrd.img"
    image.write_bytes(write_archive(base_members()) + b"\x00\x00\x00\x00QQQQ not an archive")
    with pytest.raises(CannotAppend, match="in a format amber does not know"):
        all_members(image)


def test_the_generator_is_the_installed_package_not_a_leftover_command(tmp_path: Path) -> None:
    """Debian: installing initramfs-tools removes the dracut package, but dracut-core (which
    has the dracut command) stays."""
    for command in ("usr/bin/dracut", "usr/sbin/update-initramfs"):
        (tmp_path / command).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / command).touch()
    assert initrd.generator(tmp_path) == "dracut"  # no package database: the first command
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: dracut\nStatus: deinstall ok config-files\nVersion: 059-4\n\n"
                      "Package: dracut-core\nStatus: install ok installed\nVersion: 059-4\n\n"
                      "Package: initramfs-tools\nStatus: install ok installed\nVersion: 0.142\n")
    assert initrd.generator(tmp_path) == "update-initramfs"
    status.write_text("Package: dracut\nStatus: install ok installed\nVersion: 059-4\n")
    assert initrd.generator(tmp_path) == "dracut"


@pytest.mark.parametrize("compress", [None, "xz", "gzip"])
def test_a_plain_module_is_one_modules_dep_alone_can_name(modules: Modules, debian_modules: Path,
                                                          tmp_path: Path,
                                                          compress: str | None) -> None:
    """Compressed or not: a live patch is plain; a driver with aliases (depmod writes
    modules.alias for it) and one that exports symbols are not."""
    def copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copy(source, target)
        if compress is None:
            return target
        subprocess.run([compress, "-k", str(target)], check=True)
        return target.with_name(target.name + (".xz" if compress == "xz" else ".gz"))

    patch = copy(modules.v1)
    assert _plain_module(patch.read_bytes(), patch)
    with_alias = next(iter(sorted(debian_modules.rglob("virtio_net.ko*"))))
    exporting = next(iter(sorted(debian_modules.rglob("virtio_ring.ko*"))))
    for source in (with_alias, exporting):
        driver = copy(source)
        assert not _plain_module(driver.read_bytes(), driver)
