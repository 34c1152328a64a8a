"""`amber image build`: a bootable immutable Debian 12 system on a GPT disk image.

The disk (amber.boot.disk) has a BIOS boot partition, an EFI system partition with GRUB for
UEFI and BIOS, and the btrfs root with amber's layout, made on a loop device over partition 3.

The slow part, the Debian root filesystem made by mmdebstrap, is cached as a tarball keyed by its
inputs (suite, packages, dracut settings, the host's apt sources). Assembling an image from it
(mkfs, extract, configure, install amber's Debian package, layout.finish) takes seconds, so a
change to amber's own code rebuilds only that part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amber
from amber import config, layout, log
from amber.boot import disk, grubenv, kernels, menu
from amber.fleet import units
from amber.log import ExitCode, die
from amber.run import run
from amber.snapshots import Store

SUITE = "bookworm"
BASE_PACKAGES = (
    "linux-image-amd64", "dracut", "systemd", "systemd-sysv", "udev", "python3",
    "python3-btrfsutil", "btrfs-progs", "rpm", "kmod", "openssl", "zstd",
    "openssh-server",  # fleets are driven over SSH (Ansible); root logs in with a key only
    "dbus",  # logind: `shutdown -r +5` (Ansible's reboot) schedules through it
)
# dracut's configuration is in place before the kernel's postinst builds the first initrd.
# A generic (not host-only) initrd: it is built in a chroot that knows nothing of the target.
DRACUT_CONF = """\
# Written by amber image build.
hostonly="no"
filesystems+=" btrfs "
add_drivers+=" virtio_blk virtio_pci virtio_scsi "
compress="zstd"
"""
DRACUT_CONF_PATH = "etc/dracut.conf.d/10-amber.conf"
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
DEFAULT_SIZE = 4 << 30  # the whole disk
# Room for btrfs metadata, a few transactions and the shared subvolumes, beyond the root itself.
HEADROOM = 768 << 20
IMAGE_INFO_PATH = "usr/share/amber/image.json"
DEFAULT_CACHE_DIR = Path("/var/cache/amber/image")
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.btrfs": "btrfs-progs",
    "losetup": "mount",
    "mount": "mount",
    "tar": "tar",
}


class ImageFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


# Every boot ends a panic by a reboot after this many seconds, instead of hanging.
PANIC_SECONDS = 5
ESP_MOUNT = "/boot/efi"
# A format number of the whole image: a change of the disk layout makes new cache keys.
IMAGE_FORMAT = 2


@dataclass(frozen=True)
class ExtraFile:
    """A file added to the image after the packages: content, or a symbolic link target."""

    path: str  # absolute, inside the root filesystem
    content: str = ""
    mode: int = 0o644
    link_to: str | None = None


@dataclass(frozen=True)
class ImageSpec:
    size: int = DEFAULT_SIZE
    include: tuple[str, ...] = ()
    kernel_cmdline: str = ""
    hostname: str = "amber"
    extra_files: tuple[ExtraFile, ...] = field(default=())
    format: ImageFormat = ImageFormat.RAW
    health: bool = True  # the image's amber.conf turns trial boots on
    authorized_keys: str = ""  # root's ~/.ssh/authorized_keys (public keys, checked)


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    kernel_release: str
    cmdline: str
    uuid: str  # of the btrfs root filesystem
    format: ImageFormat = ImageFormat.RAW
    esp_volume_id: str = ""  # the FAT volume id of the EFI system partition, "A3B1-C2D4"
    geometry: disk.DiskLayout | None = None  # the partitions

    def as_json(self) -> dict[str, Any]:
        return {"image": str(self.path), "format": str(self.format),
                "kernel_release": self.kernel_release, "cmdline": self.cmdline,
                "uuid": self.uuid, "esp_volume_id": self.esp_volume_id,
                "size": self.geometry.size if self.geometry else None,
                "partitions": self.geometry.as_json() if self.geometry else None}


# ---- pure logic ----------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G', '4096M', '2GiB', '1073741824' → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        die(f"invalid size: {text!r}", hint="give a size like 4G, 4096M or 2GiB",
            code=ExitCode.USAGE)
    number, unit = match.groups()
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit.upper()]
    return int(float(number) * (1 << shift))


def format_size(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f}{unit}"
    return f"{size}B"


def parse_packages(values: Sequence[str]) -> tuple[str, ...]:
    """--include a,b --include c → ('a', 'b', 'c'), checked to be Debian package names."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
                die(f"not a Debian package name: {name!r}",
                    hint="--include takes names like 'vim,less'", code=ExitCode.USAGE)
            names.append(name)
    return tuple(names)


_PUBLIC_KEY = re.compile(r"(?:^|\s)(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|"
                         r"sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
                         r"(?:-cert-v01@openssh\.com)? AAAA[A-Za-z0-9+/=]+")


def parse_authorized_keys(path: Path) -> str:
    """The public keys of an authorized_keys file, for root's login over SSH. A private key, or
    a line that is no key, is refused: the file goes onto every machine made from the image."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        die(f"cannot read the authorized keys {path}: {e}",
            hint="give a file of public keys, such as ~/.ssh/id_ed25519.pub",
            code=ExitCode.USAGE)
    if "PRIVATE KEY" in text:
        die(f"{path} holds a private key", hint="give the public key (the .pub file) instead",
            code=ExitCode.USAGE)
    lines = [line.strip() for line in text.splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#") and not _PUBLIC_KEY.search(line):
            die(f"{path}:{number} is not an SSH public key: {line[:40]!r}",
                hint="each line: [options] type base64 [comment], as ssh-keygen writes it",
                code=ExitCode.USAGE)
    if not keys:
        die(f"{path} holds no public key", hint="give a file such as ~/.ssh/id_ed25519.pub",
            code=ExitCode.USAGE)
    return "".join(f"{key}\n" for key in keys)


def packages(spec: ImageSpec) -> tuple[str, ...]:
    return tuple(sorted(set(BASE_PACKAGES) | set(spec.include)))


def kernel_cmdline(fs_uuid: str, extra: str = "") -> str:
    # No subvol=: the boot menu adds each snapshot's own rootflags=subvol=; without it (another
    # bootloader) the kernel mounts the default subvolume, the snapshot that is to boot.
    base = f"root=UUID={fs_uuid} rootfstype=btrfs ro console=ttyS0 panic={PANIC_SECONDS}"
    return f"{base} {extra}".strip()


def render_fstab(fs_uuid: str, esp_volume_id: str) -> str:
    source = f"UUID={fs_uuid}"
    lines = ["# Written by amber image build. / is the booted snapshot, mounted read-only.",
             f"{source} / btrfs ro 0 0",
             f"{source} /.snapshots btrfs subvol={layout.CONTAINER}/.snapshots 0 0"]
    # With / read-only, the first writable mount switches the filesystem to read-write; two
    # such mounts at once can fail (seen as a failed home.mount), so /.snapshots goes first.
    after = "x-systemd.requires-mounts-for=/.snapshots"
    for name in layout.SHARED_SUBVOLUMES:
        lines.append(f"{source} /{name} btrfs subvol={layout.CONTAINER}/{name},{after} 0 0")
    lines.append("tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0")
    # nofail: a system whose ESP is damaged still boots (GRUB has already run by then).
    lines.append(f"UUID={esp_volume_id} {ESP_MOUNT} vfat umask=0077,nofail 0 2")
    return "\n".join(lines) + "\n"


def apt_sources_text(root: Path = Path("/")) -> str:
    """The host's apt sources: mmdebstrap uses them, so they are an input of the cache."""
    texts = []
    for path in [root / "etc/apt/sources.list",
                 *sorted((root / "etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(f"{path.name}\n{path.read_text(errors='replace')}")
    return "\n".join(texts)


def rootfs_key(spec: ImageSpec, sources: str) -> str:
    """The cache key of the mmdebstrap tarball: everything that changes its content."""
    inputs = {"suite": SUITE, "packages": packages(spec), "dracut": DRACUT_CONF,
              "dracut_modules": _dracut_modules_digest(),
              "dpkg": DPKG_OPTIONS, "sources": sources, "format": 1}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# amber's own dracut modules (90amber-etc: /etc at boot), in place before the kernel's postinst
# builds the first initrd; amber's package installs the same files.
DRACUT_MODULES = Path(__file__).parent / "data/dracut"
DRACUT_MODULES_PATH = "usr/lib/dracut/modules.d"


def _dracut_modules_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(DRACUT_MODULES.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(DRACUT_MODULES)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def image_key(spec: ImageSpec, sources: str, amber_deb: Path) -> str:
    """The cache key of a whole image: its root filesystem, amber's package and the rest of spec."""
    extras = [(f.path, f.content, f.mode, f.link_to) for f in spec.extra_files]
    inputs = {"rootfs": rootfs_key(spec, sources), "amber": file_hash(amber_deb),
              "size": spec.size, "cmdline": spec.kernel_cmdline, "hostname": spec.hostname,
              "extras": extras, "format": str(spec.format), "image_format": IMAGE_FORMAT,
              "health": spec.health, "authorized_keys": spec.authorized_keys}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def find_kernel_release(rootfs: Path) -> str:
    releases = sorted((p.name.removeprefix("vmlinuz-") for p in (rootfs / "boot").glob(
        "vmlinuz-*")), key=kernels.version_key)
    if not releases:
        die(f"no kernel in {rootfs}/boot", hint="the image must include linux-image-amd64")
    return releases[-1]


# ---- checks --------------------------------------------------------------------------------

def check_host(image_format: ImageFormat = ImageFormat.RAW) -> None:
    if os.geteuid() != 0:
        die("amber image build must run as root",
            hint="it creates a filesystem and mounts it: run it as root",
            code=ExitCode.ENVIRONMENT)
    disk.check_host(qcow2=image_format is ImageFormat.QCOW2)
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            die(f"{tool} is not installed", hint=f"install the package {package}",
                code=ExitCode.ENVIRONMENT)
    if not btrfs_supported():
        die("this kernel does not support btrfs (not in /proc/filesystems)",
            hint="load it with 'modprobe btrfs', or build on a kernel with btrfs",
            code=ExitCode.ENVIRONMENT)
    if not Path("/dev/loop-control").exists():
        die("no loop devices: /dev/loop-control is missing",
            hint="load the loop module ('modprobe loop'); in a container, pass loop devices in",
            code=ExitCode.ENVIRONMENT)


def btrfs_supported(filesystems: Path = Path("/proc/filesystems")) -> bool:
    try:
        text = filesystems.read_text()
    except OSError:
        return False
    return any(line.split()[-1:] == ["btrfs"] for line in text.splitlines())


def check_size(spec: ImageSpec, rootfs_bytes: int) -> None:
    needed = rootfs_bytes + HEADROOM
    root = disk.DiskLayout.for_size(spec.size).root.size
    if root < needed:
        boot = spec.size - root
        die(f"an image of {format_size(spec.size)} is too small for this system: its root "
            f"partition needs at least {format_size(needed)} (and the boot partitions "
            f"{format_size(boot)})",
            hint=f"pass --size {((needed + boot) >> 30) + 1}G or more", code=ExitCode.NO_SPACE)


def check_free_space(directory: Path, needed: int) -> None:
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        die(f"not enough free space in {directory}: {format_size(free)} free, "
            f"{format_size(needed)} needed", hint="free some space or build the image elsewhere",
            code=ExitCode.NO_SPACE)


# ---- the root filesystem (cached) ----------------------------------------------------------

def rootfs_tarball(spec: ImageSpec, cache_dir: Path) -> Path:
    """The mmdebstrap tarball for spec, from the cache or built now."""
    key = rootfs_key(spec, apt_sources_text())
    tarball = cache_dir / f"rootfs-{key}.tar"
    if tarball.exists():
        log.step(f"Using the cached Debian root filesystem {tarball}")
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_free_space(cache_dir, 2 << 30)
    log.step(f"Building the Debian {SUITE} root filesystem with mmdebstrap (takes minutes; "
             "cached afterwards)")
    partial = cache_dir / f".rootfs-{key}.{os.getpid()}.tar"
    with tempfile.TemporaryDirectory(prefix="amber-image-") as tmp:
        conf = Path(tmp) / "dracut.conf"
        conf.write_text(DRACUT_CONF)
        target = f'"$1/{DRACUT_CONF_PATH}"'
        hook = (f'mkdir -p "$1/{os.path.dirname(DRACUT_CONF_PATH)}" && '
                f"cp {shlex.quote(str(conf))} {target} && "
                f'mkdir -p "$1/{DRACUT_MODULES_PATH}" && '
                f'cp -r {shlex.quote(str(DRACUT_MODULES))}/. "$1/{DRACUT_MODULES_PATH}/"')
        argv = ["mmdebstrap", "--mode=root", "--variant=minbase",
                f"--include={','.join(packages(spec))}",
                *[f"--dpkgopt={option}" for option in DPKG_OPTIONS],
                f"--essential-hook={hook}", SUITE, str(partial)]
        try:
            run(argv, where="while building the root filesystem")
            os.rename(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
    return tarball


# ---- assembly ------------------------------------------------------------------------------

@contextlib.contextmanager
def attached(image: Path, read_only: bool = False,
             part: disk.Partition | None = None) -> Iterator[Path]:
    """The image file, or one partition of it, on a loop device, detached again on every path.
    (A partition by its offset: loop devices of this kind make no partition nodes everywhere.)"""
    options = ["--read-only"] if read_only else []
    if part is not None:
        options += ["--offset", str(part.offset), "--sizelimit", str(part.size)]
    device = run(["losetup", "--find", "--show", *options, str(image)],
                 capture=True, code=ExitCode.ENVIRONMENT).stdout.strip()
    try:
        yield Path(device)
    finally:
        run(["losetup", "--detach", device], check=False)


@contextlib.contextmanager
def mounted(device: Path, options: str = "") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="amber-mnt-") as tmp:
        where = Path(tmp)
        run(["mount", "-t", "btrfs", *(["-o", options] if options else []), str(device),
             str(where)], code=ExitCode.ENVIRONMENT)
        try:
            yield where
        finally:
            run(["umount", str(where)], check=False)


# ---- amber's own package -------------------------------------------------------------------
# The image gets amber as a user does, from its Debian package (tools/package builds it from a
# checkout), so that dpkg knows its files and the image carries no test code.

def package_name() -> str:
    return f"amber_{amber.__version__}_all.deb"


def source_checkout() -> Path | None:
    """The checkout this amber runs from, if it runs from one (and not from its package)."""
    top = Path(amber.__file__).resolve().parents[2]
    return top if (top / "packaging" / "debian").is_dir() else None


def _newest_source(top: Path) -> Path | None:
    files = [path for folder in ("src/amber", "packaging", "tools")
             for path in (top / folder).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts]
    return max(files, key=lambda path: path.stat().st_mtime, default=None)


def find_package(explicit: Path | None = None) -> Path:
    """The .deb to install: the one named; else the checkout's dist/ one, if not older than the
    sources; else the one apt kept after installing amber from a repository."""
    if explicit is not None:
        if not explicit.is_file():
            die(f"no such package: {explicit}", hint="pass the .deb that tools/package built",
                code=ExitCode.NOT_FOUND)
        return explicit.absolute()
    top = source_checkout()
    if top is not None:
        deb = top / "dist" / package_name()
        if not deb.is_file():
            die(f"amber's package {deb} does not exist",
                hint="build it with tools/package, or pass --amber-deb FILE",
                code=ExitCode.NOT_FOUND)
        newest = _newest_source(top)
        if newest is not None and newest.stat().st_mtime > deb.stat().st_mtime:
            die(f"{deb} is older than {newest.relative_to(top)}",
                hint="rebuild it with tools/package, or pass --amber-deb FILE",
                code=ExitCode.NOT_FOUND)
        return deb
    kept = Path("/var/cache/apt/archives") / package_name()
    if kept.is_file():
        return kept
    die("no amber package to install in the image",
        hint="pass --amber-deb FILE (tools/package builds it from a checkout of amber)",
        code=ExitCode.NOT_FOUND)


# dpkg in a chroot with /dev, /proc and /sys, in a mount namespace of its own (nothing to undo):
# amber's package activates the initrd generator's trigger, and dracut needs all three.
CHROOT_WITH_KERNEL_FILESYSTEMS = (
    'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && '
    'mount --rbind /sys "$1/sys" && root=$1 && shift && exec chroot "$root" "$@"')


def install_amber(rootfs: Path, deb: Path) -> None:
    """dpkg in the image's chroot installs the package; its postinst byte-compiles the modules
    now, while / is still writable, and its trigger rebuilds the initrd (with the same
    configuration as the first one)."""
    inside = rootfs / "tmp" / deb.name
    shutil.copyfile(deb, inside)
    try:
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
             CHROOT_WITH_KERNEL_FILESYSTEMS, "sh", str(rootfs), "dpkg", "--install",
             f"/tmp/{deb.name}"], capture=True,
            where="while installing amber's package in the image")
    finally:
        inside.unlink(missing_ok=True)


def write_extra_file(rootfs: Path, extra: ExtraFile) -> None:
    target = rootfs / extra.path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if extra.link_to is not None:
        target.unlink(missing_ok=True)
        target.symlink_to(extra.link_to)
        return
    target.write_text(extra.content)
    target.chmod(extra.mode)


# The first initrd is generic: it was built before the image knew its machine. Later ones are
# regenerated on the booted system (amber initrd, live patches), which dracut can then inspect:
# host-only and uncompressed, they take about a quarter of the time (54 s against ~230 s under
# qemu's TCG).
REGENERATE_CONF = """\
# Written by amber image build: initrds regenerated on the running machine are host-only.
hostonly="yes"
compress="cat"
"""
REGENERATE_CONF_PATH = "etc/dracut.conf.d/20-amber-regenerate.conf"

IMAGE_CONFIG = """\
# Written by amber image build. Every key with its default and what it does:
# /usr/share/doc/amber/examples/amber.conf
[health]
enabled = {enabled}  # trial boots: a new default that does not come up healthy gives way
"""


# SSH: the root filesystem is cached and shared by every image built from it, and an image is
# copied to many machines: it ships no host keys, and each machine makes its own at its first
# boot (ssh-keygen -A makes only the missing ones), before sshd starts.
SSH_HOST_KEYS_UNIT = "amber-ssh-host-keys.service"
SSH_HOST_KEYS = """\
# Written by amber image build: the image ships no SSH host keys; each machine makes its own.
[Unit]
Description=Make this machine's missing SSH host keys (amber images ship none)
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""
SSHD_CONFIG_PATH = "etc/ssh/sshd_config.d/50-amber.conf"
SSHD_CONFIG = """\
# Written by amber image build: root logs in with a key only (amber image build
# --authorized-keys), never with a password.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
"""


def configure_ssh(rootfs: Path, authorized_keys: str) -> None:
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = rootfs / "etc/systemd/system" / SSH_HOST_KEYS_UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(SSH_HOST_KEYS)
    wants = rootfs / "etc/systemd/system/ssh.service.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / SSH_HOST_KEYS_UNIT).symlink_to(f"/etc/systemd/system/{SSH_HOST_KEYS_UNIT}")
    config_file = rootfs / SSHD_CONFIG_PATH
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(SSHD_CONFIG)
    if authorized_keys:
        ssh = rootfs / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.write_text(authorized_keys)
        keys.chmod(0o600)


def write_image_config(rootfs: Path, spec: ImageSpec) -> None:
    path = rootfs / config.CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(IMAGE_CONFIG.format(enabled=str(spec.health).lower()))


def configure(rootfs: Path, spec: ImageSpec, fs_uuid: str, esp_volume_id: str,
              info: dict[str, str]) -> None:
    (rootfs / "etc/fstab").write_text(render_fstab(fs_uuid, esp_volume_id))
    (rootfs / ESP_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / REGENERATE_CONF_PATH).write_text(REGENERATE_CONF)
    (rootfs / "etc/hostname").write_text(f"{spec.hostname}\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {spec.hostname}\n")
    # A fixed machine id: with an empty one, systemd's first-boot logic wants a writable /etc.
    (rootfs / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (rootfs / "etc/kernel").mkdir(exist_ok=True)
    (rootfs / "etc/kernel/cmdline").write_text(info["cmdline"] + "\n")
    shadow = rootfs / "etc/shadow"
    # An image to try amber in: root logs in on the console without a password.
    shadow.write_text(re.sub(r"^root:[^:]*:", "root::", shadow.read_text(), flags=re.M))
    info_file = rootfs / IMAGE_INFO_PATH
    info_file.parent.mkdir(parents=True, exist_ok=True)
    info_file.write_text(json.dumps(info, indent=2) + "\n")


def assemble(image: Path, spec: ImageSpec, tarball: Path, amber_deb: Path) -> BuiltImage:
    fs_uuid = str(uuid.uuid4())
    esp_volume_id = disk.new_volume_id()
    geometry = disk.DiskLayout.for_size(spec.size)
    with open(image, "wb") as f:
        f.truncate(geometry.size)
    log.step("Partitioning the disk, installing GRUB for UEFI and BIOS")
    disk.write(image, geometry, fs_uuid, esp_volume_id, grubenv.render({}))
    with attached(image, part=geometry.root) as device:
        run(["mkfs.btrfs", "--quiet", "--force", "--label", "amber", "--uuid", fs_uuid,
             str(device)], capture=True, code=ExitCode.ENVIRONMENT)
        with mounted(device, "compress=zstd:1") as top:
            release, cmdline = fill_root(top, spec, tarball, amber_deb, fs_uuid, esp_volume_id)
    return BuiltImage(image, release, cmdline, fs_uuid, spec.format, esp_volume_id, geometry)


def fill_root(top: Path, spec: ImageSpec, tarball: Path, amber_deb: Path, fs_uuid: str,
              esp_volume_id: str) -> tuple[str, str]:
    """Snapshot 1 from the tarball, configured, closed, and the first boot menu; returns the
    kernel release and the command line."""
    rootfs = layout.create_skeleton(top)
    log.step("Extracting the root filesystem into snapshot 1")
    result = run(["tar", "--extract", "--file", str(tarball), "--directory", str(rootfs),
                  "--numeric-owner", "--preserve-permissions", "--xattrs",
                  "--xattrs-include=*"], check=False, capture=True)
    if result.returncode != 0:
        if "No space left" in result.stderr:
            die("the image is too small: the root filesystem does not fit",
                hint="pass a larger --size", code=ExitCode.NO_SPACE)
        die(f"extracting {tarball} failed: {result.stderr.strip()[-300:]}",
            hint="delete the cached tarball and build again")
    release = find_kernel_release(rootfs)
    cmdline = kernel_cmdline(fs_uuid, spec.kernel_cmdline)
    info = {"kernel_release": release, "cmdline": cmdline, "uuid": fs_uuid,
            "esp_volume_id": esp_volume_id, "suite": SUITE,
            "amber_version": amber.__version__,
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    log.step(f"Configuring the system (kernel {release}) and installing amber")
    configure(rootfs, spec, fs_uuid, esp_volume_id, info)
    configure_ssh(rootfs, spec.authorized_keys)
    install_amber(rootfs, amber_deb)
    write_image_config(rootfs, spec)
    for extra in spec.extra_files:
        write_extra_file(rootfs, extra)
    units.enable(rootfs)  # the update timer and the health units, as amber.conf asks
    log.step("Splitting off the shared subvolumes and closing snapshot 1")
    layout.finish(top)
    menu.install(Store(top / layout.CONTAINER))
    return release, cmdline


def info_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def build(image: Path, spec: ImageSpec, cache_dir: Path = DEFAULT_CACHE_DIR,
          amber_deb: Path | None = None) -> BuiltImage:
    """Build image; on failure nothing is left behind but the cache."""
    check_host(spec.format)
    image = image.absolute()
    if not image.parent.is_dir():
        die(f"cannot create {image}: {image.parent} is not a directory",
            hint="create the directory first", code=ExitCode.NOT_FOUND)
    deb = find_package(amber_deb)
    tarball = rootfs_tarball(spec, cache_dir)
    check_size(spec, tarball.stat().st_size)
    # A qcow2 image is converted from a raw disk next to it: room for both.
    copies = 2 if spec.format is ImageFormat.QCOW2 else 1
    check_free_space(image.parent, copies * (tarball.stat().st_size + HEADROOM))
    partial = image.with_name(f".{image.name}.{os.getpid()}.partial")
    raw = partial.with_suffix(".raw") if spec.format is ImageFormat.QCOW2 else partial
    try:
        built = assemble(raw, spec, tarball, deb)
        if spec.format is ImageFormat.QCOW2:
            log.step("Converting the disk to qcow2")
            run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)], capture=True,
                where="while converting the disk to qcow2", code=ExitCode.ENVIRONMENT)
            raw.unlink()
        os.rename(partial, image)
    finally:
        raw.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    built = dataclasses.replace(built, path=image)
    info_path(image).write_text(json.dumps(built.as_json(), indent=2) + "\n")
    log.step(f"Built {image} ({spec.format}, {format_size(spec.size)}, "
             f"kernel {built.kernel_release})")
    return built


def read_info(image: Path) -> BuiltImage:
    path = info_path(image)
    try:
        data = json.loads(path.read_text())
        geometry = disk.DiskLayout.for_size(int(data["size"]))
        return BuiltImage(image, data["kernel_release"], data["cmdline"], data["uuid"],
                          ImageFormat(data["format"]), data["esp_volume_id"], geometry)
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"cannot read {path}: {e}", hint="build the image with 'amber image build'",
            code=ExitCode.NOT_FOUND)


@contextlib.contextmanager
def attached_root(image: Path, read_only: bool = False) -> Iterator[Path]:
    """The btrfs root partition of a raw image built by amber, on a loop device."""
    built = read_info(image)
    if built.format is not ImageFormat.RAW or built.geometry is None:
        die(f"{image} is a {built.format} image", hint="attach a raw image",
            code=ExitCode.USAGE)
    with attached(image, read_only=read_only, part=built.geometry.root) as device:
        yield device
