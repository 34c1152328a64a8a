"""The image builder's pure logic: sizes, package lists, fstab and command line, cache keys."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from amber import image, layout
from amber.image import ExtraFile, ImageSpec
from amber.log import AmberError, ExitCode

UUID = "0f3b1c2e-8d4a-4c55-9a0e-5b7c1d2e3f40"
ESP_ID = "A3B1-C2D4"


@pytest.mark.parametrize(("text", "size"), [
    ("4G", 4 << 30), ("4096M", 4 << 30), ("2GiB", 2 << 30), ("1.5G", 3 << 29),
    ("512m", 512 << 20), ("1073741824", 1 << 30), ("8K", 8192),
])
def test_parse_size(text: str, size: int) -> None:
    assert image.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "four"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(AmberError) as e:
        image.parse_size(text)
    assert e.value.code == ExitCode.USAGE and text in e.value.message


def test_parse_packages() -> None:
    assert image.parse_packages(["vim,less", " curl ", ""]) == ("vim", "less", "curl")
    with pytest.raises(AmberError) as e:
        image.parse_packages(["vim;rm -rf /"])
    assert e.value.code == ExitCode.USAGE


def test_packages_include_base_and_extras_once() -> None:
    names = image.packages(ImageSpec(include=("vim", "dracut")))
    assert "vim" in names and names.count("dracut") == 1
    assert set(image.BASE_PACKAGES) <= set(names)


def test_fstab_mounts_root_read_only_without_subvol() -> None:
    lines = [line.split() for line in image.render_fstab(UUID, ESP_ID).splitlines()
             if not line.startswith("#")]
    by_place = {fields[1]: fields for fields in lines}
    assert by_place["/"] == [f"UUID={UUID}", "/", "btrfs", "ro", "0", "0"]
    assert by_place["/.snapshots"][3] == "subvol=@/.snapshots"
    for name in layout.SHARED_SUBVOLUMES:
        assert by_place[f"/{name}"][0] == f"UUID={UUID}"
        assert by_place[f"/{name}"][3].split(",") == [
            f"subvol=@/{name}", "x-systemd.requires-mounts-for=/.snapshots"]
    assert by_place["/tmp"][2] == "tmpfs"
    assert by_place["/boot/efi"] == [f"UUID={ESP_ID}", "/boot/efi", "vfat", "umask=0077,nofail",
                                     "0", "2"]


def test_kernel_cmdline_boots_the_default_subvolume() -> None:
    cmdline = image.kernel_cmdline(UUID, "quiet")
    assert cmdline.split() == [f"root=UUID={UUID}", "rootfstype=btrfs", "ro", "console=ttyS0",
                               "panic=5", "quiet"]
    assert "subvol" not in image.kernel_cmdline(UUID)


def test_rootfs_key_follows_its_inputs_only() -> None:
    spec = ImageSpec()
    key = image.rootfs_key(spec, "sources A")
    assert key == image.rootfs_key(spec, "sources A")
    assert key != image.rootfs_key(spec, "sources B")
    assert key != image.rootfs_key(ImageSpec(include=("vim",)), "sources A")
    # Size, command line and added files are assembly, not the cached root filesystem.
    other = ImageSpec(size=8 << 30, kernel_cmdline="quiet", extra_files=(ExtraFile("/x", "y"),))
    assert key == image.rootfs_key(other, "sources A")


def test_image_key_follows_amber_package(tmp_path: Path) -> None:
    deb = tmp_path / "amber_0.1.0_all.deb"
    deb.write_bytes(b"package 1")
    spec = ImageSpec()
    key = image.image_key(spec, "s", deb)
    assert image.image_key(spec, "s", deb) == key
    deb.write_bytes(b"package 2")
    changed = image.image_key(spec, "s", deb)
    assert changed != key
    extra = dataclasses.replace(spec, extra_files=(ExtraFile("/etc/x", "1"),))
    assert image.image_key(extra, "s", deb) != changed
    assert image.image_key(dataclasses.replace(spec, size=1 << 30), "s", deb) != changed
    qcow2 = dataclasses.replace(spec, format=image.ImageFormat.QCOW2)
    assert image.image_key(qcow2, "s", deb) != changed
    assert image.image_key(dataclasses.replace(spec, health=False), "s", deb) != changed
    keys = dataclasses.replace(spec, authorized_keys=f"{PUBLIC_KEY}\n")
    assert image.image_key(keys, "s", deb) != changed


@pytest.mark.parametrize("health", [True, False])
def test_image_config_turns_health_on_unless_told(tmp_path: Path, health: bool) -> None:
    from amber import config

    image.write_image_config(tmp_path, ImageSpec(health=health))
    assert config.load(tmp_path).health.enabled is health
    assert config.load(tmp_path).health.tries == config.HealthConfig().tries


def test_package_is_found_in_the_checkout_and_must_be_fresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "checkout"
    (top / "packaging" / "debian").mkdir(parents=True)
    (top / "src" / "amber").mkdir(parents=True)
    source = top / "src" / "amber" / "cli.py"
    source.write_text("")
    monkeypatch.setattr(image, "source_checkout", lambda: top)
    with pytest.raises(AmberError) as e:
        image.find_package()
    assert e.value.code == ExitCode.NOT_FOUND and "tools/package" in (e.value.hint or "")
    deb = top / "dist" / image.package_name()
    deb.parent.mkdir()
    deb.write_bytes(b"deb")
    os.utime(source, (deb.stat().st_mtime + 10, deb.stat().st_mtime + 10))
    with pytest.raises(AmberError) as e:
        image.find_package()
    assert "older than src/amber/cli.py" in e.value.message
    os.utime(deb, (source.stat().st_mtime + 1, source.stat().st_mtime + 1))
    assert image.find_package() == deb
    other = tmp_path / "other.deb"
    with pytest.raises(AmberError) as e:
        image.find_package(other)
    assert e.value.code == ExitCode.NOT_FOUND
    other.write_bytes(b"deb")
    assert image.find_package(other) == other


def test_kernel_release_is_the_newest(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for release in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"):
        (tmp_path / "boot" / f"vmlinuz-{release}").write_text("")
    assert image.find_kernel_release(tmp_path) == "6.1.0-10-amd64"
    with pytest.raises(AmberError):
        image.find_kernel_release(tmp_path / "nothing")


def test_size_check_names_the_minimum() -> None:
    with pytest.raises(AmberError) as e:
        image.check_size(ImageSpec(size=1 << 30), 900 << 20)
    assert e.value.code == ExitCode.NO_SPACE and "--size 2G" in (e.value.hint or "")
    assert "root partition" in e.value.message
    image.check_size(ImageSpec(size=4 << 30), 900 << 20)
    # The boot partitions count: a root that fits the whole disk but not its partition.
    with pytest.raises(AmberError):
        image.check_size(ImageSpec(size=1700 << 20), 900 << 20)


def test_built_image_json_round_trips(tmp_path: Path) -> None:
    from amber.boot.disk import DiskLayout

    path = tmp_path / "x.img"
    built = image.BuiltImage(path, "6.1.0-9-amd64", "root=UUID=x", UUID,
                             image.ImageFormat.QCOW2, ESP_ID, DiskLayout.for_size(4 << 30))
    data = built.as_json()
    assert data["format"] == "qcow2" and data["esp_volume_id"] == ESP_ID
    root = DiskLayout.for_size(4 << 30).root
    assert data["partitions"]["root"] == {"number": 3, "offset": 266240 * 512, "size": root.size}
    image.info_path(path).write_text(json.dumps(data))
    assert image.read_info(path) == built


def test_btrfs_supported(tmp_path: Path) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tsysfs\n\text4\n\tbtrfs\n")
    assert image.btrfs_supported(filesystems)
    filesystems.write_text("nodev\tsysfs\n\text4\n")
    assert not image.btrfs_supported(filesystems)
    assert not image.btrfs_supported(tmp_path / "missing")


def test_build_refuses_non_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(AmberError) as e:
        image.build(tmp_path / "x.img", ImageSpec(), cache_dir=tmp_path)
    assert e.value.code == ExitCode.ENVIRONMENT and "root" in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_cli_parses_image_build() -> None:
    from amber.cli import build_parser

    args = build_parser().parse_args(["image", "build", "/tmp/x.img", "--size", "8G",
                                      "--include", "vim,less", "--kernel-cmdline", "quiet"])
    assert (args.image, args.size, args.include, args.kernel_cmdline, args.format) == (
        Path("/tmp/x.img"), "8G", ["vim,less"], "quiet", "raw")
    args = build_parser().parse_args(["image", "build", "x.qcow2", "--format", "qcow2"])
    assert image.ImageFormat(args.format) is image.ImageFormat.QCOW2


PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1Lt3OK+yrk2SjbkQ9wbpzpkaIgbOdeOXLwvqZ4xKp "
              "admin@example")


def test_authorized_keys_keep_public_keys_only(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# the admins\n\n{PUBLIC_KEY}\n"
                    f'from="10.0.0.0/8",no-pty {PUBLIC_KEY.replace("admin", "ops")}\n')
    keys = image.parse_authorized_keys(path)
    assert keys.splitlines() == [PUBLIC_KEY, f'from="10.0.0.0/8",no-pty '
                                             f'{PUBLIC_KEY.replace("admin", "ops")}']


@pytest.mark.parametrize(("content", "says"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
     "-----END OPENSSH PRIVATE KEY-----\n", "private key"),
    ("# only a comment\n\n", "no public key"),
    (f"{PUBLIC_KEY}\nhello world\n", ":2 is not an SSH public key"),
])
def test_authorized_keys_refuse_what_is_no_public_key(tmp_path: Path, content: str,
                                                      says: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(AmberError) as refused:
        image.parse_authorized_keys(path)
    assert refused.value.code == ExitCode.USAGE and says in refused.value.message


def test_authorized_keys_file_missing(tmp_path: Path) -> None:
    with pytest.raises(AmberError) as refused:
        image.parse_authorized_keys(tmp_path / "nothing")
    assert refused.value.code == ExitCode.USAGE


def test_ssh_ships_no_host_keys_and_root_logs_in_with_keys_only(tmp_path: Path) -> None:
    (tmp_path / "etc/ssh").mkdir(parents=True)
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (tmp_path / "etc/ssh" / name).write_text("from the cached root filesystem\n")
    (tmp_path / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    image.configure_ssh(tmp_path, f"{PUBLIC_KEY}\n")
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == [
        "sshd_config", "sshd_config.d"]
    assert "PasswordAuthentication no" in (tmp_path / image.SSHD_CONFIG_PATH).read_text()
    unit = tmp_path / "etc/systemd/system/ssh.service.wants" / image.SSH_HOST_KEYS_UNIT
    assert os.readlink(unit) == f"/etc/systemd/system/{image.SSH_HOST_KEYS_UNIT}"
    assert "ssh-keygen -A" in (tmp_path / "etc/systemd/system" /
                               image.SSH_HOST_KEYS_UNIT).read_text()
    keys = tmp_path / "root/.ssh/authorized_keys"
    assert keys.read_text() == f"{PUBLIC_KEY}\n"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700


def test_cli_takes_authorized_keys() -> None:
    from amber.cli import build_parser

    args = build_parser().parse_args(["image", "build", "x.img", "--authorized-keys", "k.pub"])
    assert args.authorized_keys == Path("k.pub")
