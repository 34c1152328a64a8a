"""A bootable disk of "Debian 12 installed on btrfs the way Debian's installer lays it out", for
the VM tests of `amber init`: the root filesystem in the subvolume `@rootfs` (the top level is
the default subvolume), /etc, /var, /home, /root, /opt, /srv and /usr/local plain directories in
it, an fstab naming `subvol=@rootfs` and the ESP at /boot/efi, and GRUB as Debian's grub-install
leaves it on a UEFI machine: EFI/debian/grubx64.efi with a three-line EFI/debian/grub.cfg that
points at /@rootfs/boot/grub/grub.cfg, whose one menu entry boots the root with
`rootflags=subvol=@rootfs`. amber's package is installed but not used: no snapshot store, no
amber.conf, no /etc/kernel/cmdline, none of the units amber image build enables.

Why derived from the cached test image (VM.build()) rather than installed by Debian's installer
or made by mmdebstrap: that image already holds everything a test VM needs and takes minutes
to make (Debian with a kernel and an initrd that carries amber's /etc hook, amber's package from
this checkout, the test agent, its network, the SSH keys); turning its amber layout back into an
installer's takes seconds, and a new test image (a change of amber) gives a new disk by itself.

The GRUB on the ESP is built on the host (grub-mkimage, with the modules of amber's own disks):
the guest gets Debian's GRUB packages for UEFI without the one whose scripts run grub-install
(grub-common and grub-efi-amd64-bin, not grub-efi-amd64 or shim), and mtools, which amber init
needs and the admin would install; the guest has no network, so apt installs them here, in the
root's chroot, from the image's own apt sources (lists and .debs cached). UEFI only, as the
installer leaves a UEFI machine: no BIOS boot partition, no boot code in sector 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from amber import btrfs, image, layout
from amber.boot import disk
from amber.fleet import units
from amber.image import BuiltImage
from amber.snapshots import ETC, ETC_ORIGIN, SHARED_SUBVOLUMES, SYNCPOINT_NAME
from testing.filelock import locked
from testing.vm import VM

# A change of what this module makes: a new cache key.
VERSION = "1"
ROOT_SUBVOLUME = "@rootfs"
TOP_LEVEL_ID = 5
MENU_TITLE = "Debian GNU/Linux"
DEBIAN_LOADER = "EFI/debian/grubx64.efi"
DEBIAN_CFG = "EFI/debian/grub.cfg"
AMBER_ESP_FOLDER = "grub"  # amber's grub.cfg and grubenv on the ESP
GRUB_CFG = "boot/grub/grub.cfg"
# What the image build wrote that a Debian system that only installed amber's package lacks.
AMBER_IMAGE_FILES = ("etc/kernel/cmdline", "etc/amber/amber.conf")
RPM_MACROS = "etc/rpm/macros"
# The boot sector's code, up to the disk signature and the protective MBR's partition table.
BOOT_CODE_BYTES = disk.MBR_TABLE.start
# Debian's GRUB for UEFI as its installer leaves it (without grub-efi-amd64, whose postinst
# would run grub-install), and mtools, which amber init asks for: the image has neither, and
# the guest has no network to install them. From the image's own apt sources, cached.
GUEST_PACKAGES = ("grub-common", "grub-efi-amd64-bin", "mtools")
# apt in the root's chroot, in a mount namespace of its own (nothing to undo): /proc, /dev and
# /sys, the host's resolver, and apt's lists and downloads from the cache ($2).
CHROOT_APT = (
    'root=$1 cache=$2 && shift 2 && '
    'mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && '
    'mount --rbind /sys "$root/sys" && '
    '{ mount --bind /etc/resolv.conf "$root/etc/resolv.conf" || true; } && '
    'mount --bind "$cache/lists" "$root/var/lib/apt/lists" && '
    'mount --bind "$cache/archives" "$root/var/cache/apt/archives" && '
    'exec chroot "$root" "$@"')
APT_OPTIONS = ("-q", "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none")


def installer_vm_disk(vm: VM) -> Path:
    """The installer-style disk derived from vm's test image: built once per test image under
    a lock, cached next to it (with an info json that amber.image.read_info reads)."""
    test_image = vm.build()
    path = vm.cache / f"installer-{test_image.stem}-v{VERSION}.raw"
    # apt's lists and downloads, kept as long as the image's Debian tree is the same.
    debian_tree = image.rootfs_key(vm.image_spec(), image.apt_sources_text())
    apt_cache = vm.cache / f"installer-apt-{debian_tree}"
    with locked(vm.cache / ".installer.lock"):
        if path.exists() and image.info_path(path).exists():
            return path
        remove_old_disks(vm.cache, apt_cache)
        build_disk(test_image, path, apt_cache)
    return path


def remove_old_disks(cache: Path, apt_cache: Path) -> None:
    for old in cache.glob("installer-test-*.raw*"):
        old.unlink()
    for old in cache.glob("installer-apt-*"):
        if old != apt_cache:
            shutil.rmtree(old)


def build_disk(test_image: Path, path: Path, apt_cache: Path) -> None:
    """A sparse copy of test_image, converted, renamed to path only when complete."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    info_partial = image.info_path(partial)
    try:
        subprocess.run(["cp", "--sparse=always", str(test_image), str(partial)], check=True)
        built = convert(partial, image.read_info(test_image), apt_cache)
        info_partial.write_text(json.dumps(dataclasses.replace(built, path=path).as_json(),
                                           indent=2) + "\n")
        os.rename(info_partial, image.info_path(path))
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        info_partial.unlink(missing_ok=True)


def convert(disk_file: Path, info: BuiltImage, apt_cache: Path) -> BuiltImage:
    """amber's layout on disk_file made an installer's; returns its description."""
    geometry = info.geometry
    assert geometry is not None, "a raw image has its partitions in its info json"
    cmdline = installer_cmdline(info)
    with image.attached(disk_file, part=geometry.root) as device, \
            image.mounted(device, f"subvolid={TOP_LEVEL_ID}") as top:
        rootfs = make_rootfs(top)
        make_plain_debian(rootfs, info, cmdline)
        install_packages(rootfs, apt_cache)
        btrfs.set_default_subvolume(top, TOP_LEVEL_ID)  # btrfs keeps a default undeleted
        remove_amber_layout(top)
        btrfs.sync(top)
    write_debian_esp(disk_file, geometry.esp, info.uuid)
    remove_bios_boot(disk_file, geometry.bios_boot)
    return dataclasses.replace(info, cmdline=cmdline)


# ---- the btrfs ------------------------------------------------------------------------------

def make_rootfs(top: Path) -> Path:
    """@rootfs: a writable snapshot of snapshot 1 with its /etc and the shared subvolumes'
    contents copied in as plain directories (reflinks: no data is written again)."""
    container = top / layout.CONTAINER
    snapshot = layout.first_snapshot_path(top)
    rootfs = top / ROOT_SUBVOLUME
    btrfs.create_snapshot(snapshot, rootfs)
    copy_subvolume(snapshot / ETC, rootfs / ETC)
    for name in SHARED_SUBVOLUMES:
        copy_contents(container / name, rootfs / name)
    remove_empty_dir(rootfs / ETC / SYNCPOINT_NAME)
    remove_empty_dir(rootfs / ".snapshots")
    remove_empty_dir(rootfs / ETC_ORIGIN, parents=True)  # and usr/lib/amber, left empty
    return rootfs


def copy_subvolume(source: Path, dest: Path) -> None:
    """A nested subvolume (its snapshot shows an empty stand-in at dest) as a directory: owner,
    mode, xattrs and times of its files and of itself kept."""
    dest.rmdir()
    subprocess.run(["cp", "-a", "--reflink=always", str(source), str(dest)], check=True)


def copy_contents(source: Path, dest: Path) -> None:
    """What a shared subvolume holds, into the snapshot's directory of that name in place of
    what it holds (at most the links to the package databases); the directory itself keeps its
    own owner and mode (a shared subvolume's top is 0755, /root is 0700)."""
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    entries = [str(entry) for entry in source.iterdir()]
    if entries:
        subprocess.run(["cp", "-a", "--reflink=always", *entries, f"{dest}/"], check=True)


def remove_empty_dir(path: Path, parents: bool = False) -> None:
    """Remove path if it is an empty directory (and with parents, its parent if that is left
    empty)."""
    for folder in (path, path.parent) if parents else (path,):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def remove_amber_layout(top: Path) -> None:
    """Delete @ with every subvolume below it (snapshot 1 made writable first: a read-only
    subvolume's nested ones cannot be unlinked from it)."""
    btrfs.set_read_only(layout.first_snapshot_path(top), False)
    btrfs.delete_subvolume(top / layout.CONTAINER)


def make_plain_debian(rootfs: Path, info: BuiltImage, cmdline: str) -> None:
    """What amber image build added beyond amber's package, taken out again; what Debian's
    installer writes, put in."""
    restore_package_databases(rootfs)
    remove_rpm_dbpath(rootfs)
    for name in AMBER_IMAGE_FILES:
        (rootfs / name).unlink(missing_ok=True)
    remove_empty_dir(rootfs / "etc/amber")
    disable_amber_units(rootfs)
    (rootfs / "etc/fstab").write_text(render_fstab(info.uuid, info.esp_volume_id))
    (rootfs / "etc/default").mkdir(exist_ok=True)
    (rootfs / "etc/default/grub").write_text(render_default_grub(extra_words(info.cmdline)))
    grub_cfg = rootfs / GRUB_CFG
    grub_cfg.parent.mkdir(parents=True, exist_ok=True)
    grub_cfg.write_text(render_grub_cfg(info.uuid, info.kernel_release, cmdline))


def restore_package_databases(rootfs: Path) -> None:
    """/var/lib/dpkg and /var/lib/rpm real directories again, as on any Debian (amber's layout
    keeps them in /usr/lib/sysimage with links in /var)."""
    for in_var, in_snapshot in layout.PACKAGE_DATABASES:
        link, database = rootfs / in_var, rootfs / in_snapshot
        if link.is_symlink() and database.is_dir():
            link.unlink()
            os.rename(database, link)
    remove_empty_dir(rootfs / "usr/lib/sysimage")


def remove_rpm_dbpath(rootfs: Path) -> None:
    """The %_dbpath line amber's layout adds to /etc/rpm/macros (Debian ships no such file)."""
    macros = rootfs / RPM_MACROS
    if not macros.is_file():
        return
    kept = [line for line in macros.read_text().splitlines(keepends=True)
            if not line.startswith("%_dbpath /usr/lib/sysimage/rpm")]
    if kept:
        macros.write_text("".join(kept))
    else:
        macros.unlink()
        remove_empty_dir(macros.parent)


def disable_amber_units(rootfs: Path) -> None:
    """Undo amber.fleet.units.enable(): the health units, the update timer and the FleetLock
    release unit, with their links and drop-ins."""
    units.disable_health(rootfs)
    system = rootfs / "etc/systemd/system"
    (system / "timers.target.wants" / units.TIMER).unlink(missing_ok=True)
    schedule = rootfs / units.SCHEDULE_DROP_IN
    schedule.unlink(missing_ok=True)
    remove_empty_dir(schedule.parent)
    (system / "multi-user.target.wants" / units.RELEASE).unlink(missing_ok=True)
    (system / units.RELEASE).unlink(missing_ok=True)
    remove_empty_dir(system / "boot-complete.target.requires")
    remove_empty_dir((rootfs / units.WATCHDOG_CONF).parent)


def install_packages(rootfs: Path, apt_cache: Path) -> None:
    """GUEST_PACKAGES with apt in the root's chroot; the lists and .debs stay in apt_cache, so
    that only the first disk of a Debian tree needs the network (or a stale cache: again)."""
    lists, archives = apt_cache / "lists", apt_cache / "archives"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    if not any(lists.glob("*_Packages*")):
        apt(rootfs, apt_cache, "update")
    install = ("install", "-y", "--no-install-recommends", *GUEST_PACKAGES)
    try:
        apt(rootfs, apt_cache, *install)
    except subprocess.CalledProcessError:
        apt(rootfs, apt_cache, "update")  # the mirror moved on since the lists were fetched
        apt(rootfs, apt_cache, *install)


def apt(rootfs: Path, apt_cache: Path, *argv: str) -> None:
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT_APT,
                    "sh", str(rootfs), str(apt_cache), "apt-get", *APT_OPTIONS, *argv],
                   check=True, stdin=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# ---- what Debian's installer writes ---------------------------------------------------------

def extra_words(cmdline: str) -> list[str]:
    """The test image's kernel arguments beyond those that name the root (console=, panic=)."""
    return [word for word in cmdline.split()
            if not word.startswith(("root=", "rootflags=", "rootfstype="))
            and word not in ("ro", "rw")]


def installer_cmdline(info: BuiltImage) -> str:
    return " ".join([f"root=UUID={info.uuid}", "ro", f"rootflags=subvol={ROOT_SUBVOLUME}",
                     *extra_words(info.cmdline)])


def render_fstab(fs_uuid: str, esp_volume_id: str) -> str:
    return f"""\
# /etc/fstab: static file system information.
#
# Use 'blkid' to print the universally unique identifier for a
# device; this may be used with UUID= as a more robust way to name devices
# that works even if disks are added and removed. See fstab(5).
#
# systemd generates mount units based on this file, see systemd.mount(5).
# Please run 'systemctl daemon-reload' after you make changes to this file.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/vda3 during installation
UUID={fs_uuid} /               btrfs   defaults,subvol={ROOT_SUBVOLUME} 0       0
# /boot/efi was on /dev/vda2 during installation
UUID={esp_volume_id}  /boot/efi       vfat    umask=0077      0       1
"""


def render_default_grub(words: list[str]) -> str:
    """/etc/default/grub as an installer on a serial console leaves it; amber init takes the
    kernel arguments for snapshot 1 from here. No "quiet": the tests read the console log."""
    return f"""\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{' '.join(words)}"
"""


def render_grub_cfg(fs_uuid: str, release: str, cmdline: str) -> str:
    """The root's /boot/grub/grub.cfg in the shape update-grub gives it, with one entry."""
    base = f"/{ROOT_SUBVOLUME}/boot"
    return f"""\
#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#
set default="0"
set timeout=1
search --no-floppy --fs-uuid --set=root {fs_uuid}
menuentry '{MENU_TITLE}' --class debian --class gnu-linux --class gnu --class os {{
\techo\t'Loading Linux {release} ...'
\tlinux\t{base}/vmlinuz-{release} {cmdline}
\techo\t'Loading initial ramdisk ...'
\tinitrd\t{base}/initrd.img-{release}
}}
"""


def render_esp_cfg(fs_uuid: str) -> str:
    """EFI/debian/grub.cfg exactly as Debian's grub-install writes it for a btrfs subvolume."""
    return (f"search.fs_uuid {fs_uuid} root \n"
            f"set prefix=($root)'/{ROOT_SUBVOLUME}/boot/grub'\n"
            "configfile $prefix/grub.cfg\n")


# ---- the ESP and the BIOS boot code ---------------------------------------------------------

def make_debian_grub(out: Path) -> None:
    """GRUB for UEFI with Debian's prefix (the ESP it was loaded from, /EFI/debian) and every
    module amber's menu and takeover need built in."""
    subprocess.run(["grub-mkimage", "--directory", str(disk.GRUB_LIB / "x86_64-efi"),
                    "--format", "x86_64-efi", "--prefix", "/EFI/debian", "--output", str(out),
                    *disk.GRUB_MODULES, *disk.EFI_MODULES], check=True, capture_output=True)


def mtools(disk_file: Path, esp: disk.Partition, *argv: str) -> None:
    subprocess.run([argv[0], "-i", f"{disk_file}@@{esp.offset}", *argv[1:]], check=True,
                   capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


@contextlib.contextmanager
def staged(files: dict[str, bytes]) -> Iterator[dict[str, Path]]:
    """files (name on the ESP -> content) written to a temporary folder, for mcopy."""
    with tempfile.TemporaryDirectory(prefix="amber-installer-esp-") as tmp:
        paths = {}
        for name, content in files.items():
            paths[name] = Path(tmp) / name.replace("/", "_")
            paths[name].write_bytes(content)
        yield paths


def write_debian_esp(disk_file: Path, esp: disk.Partition, fs_uuid: str) -> None:
    """amber's files off the ESP; Debian's GRUB, its grub.cfg and the removable fallback
    (a fresh NVRAM has no "debian" entry: the firmware starts EFI/BOOT/BOOTX64.EFI) on."""
    with tempfile.TemporaryDirectory(prefix="amber-installer-grub-") as tmp:
        loader = Path(tmp) / "grubx64.efi"
        make_debian_grub(loader)
        files = {DEBIAN_LOADER: loader.read_bytes(), disk.EFI_LOADER: loader.read_bytes(),
                 DEBIAN_CFG: render_esp_cfg(fs_uuid).encode()}
    mtools(disk_file, esp, "mdel", f"::/{disk.EFI_LOADER}")
    mtools(disk_file, esp, "mdeltree", f"::/{AMBER_ESP_FOLDER}")
    mtools(disk_file, esp, "mmd", "::/EFI/debian")
    with staged(files) as paths:
        for name, local in paths.items():
            mtools(disk_file, esp, "mcopy", "-o", "-n", str(local), f"::/{name}")


def remove_bios_boot(disk_file: Path, bios_boot: disk.Partition) -> None:
    """No BIOS boot partition and no boot code for BIOS, as Debian's installer leaves a UEFI
    machine: amber's boot.img off sector 0 (its partition table kept), its core.img zeroed,
    the partition deleted from the GPT (the ESP and the root keep their numbers)."""
    with open(disk_file, "r+b") as f:
        f.write(bytes(BOOT_CODE_BYTES))
        f.seek(bios_boot.offset)
        f.write(bytes(bios_boot.size))
    # On a file, sgdisk warns that the kernel still uses the old table: harmless.
    subprocess.run(["sgdisk", f"--delete={bios_boot.number}", str(disk_file)], check=True,
                   capture_output=True)
