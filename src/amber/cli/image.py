"""`amber image ...` verbs: build a bootable immutable Debian image to try amber in."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cmd_image_build(args: argparse.Namespace) -> int:
    from amber import image
    from amber.log import print_json

    spec = image.ImageSpec(size=image.parse_size(args.size),
                           include=image.parse_packages(args.include),
                           kernel_cmdline=args.kernel_cmdline,
                           format=image.ImageFormat(args.format),
                           health=not args.no_health,
                           authorized_keys=(image.parse_authorized_keys(args.authorized_keys)
                                            if args.authorized_keys else ""))
    built = image.build(args.image, spec, cache_dir=args.cache_dir, amber_deb=args.amber_deb)
    if args.json:
        print_json(built.as_json())
    return 0


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("image", help="build a bootable immutable Debian image")
    image_sub = p.add_subparsers(dest="image_verb", metavar="VERB", required=True)
    b = image_sub.add_parser(
        "build", help="build a bootable immutable Debian 12 system on a disk image",
        description="Build IMAGE: a GPT disk with GRUB for UEFI and BIOS on its EFI system "
                    "partition and a btrfs root with Debian 12 in snapshot 1 (the default "
                    "subvolume, read-only), shared writable subvolumes and amber installed. "
                    "The Debian root filesystem is cached by its inputs.")
    common(b)
    b.add_argument("image", type=Path, metavar="IMAGE", help="the image file to create")
    b.add_argument("--size", default="4G",
                   help="size of the disk, boot partitions included (default: 4G)")
    b.add_argument("--format", choices=["raw", "qcow2"], default="raw",
                   help="raw: a disk to write to a drive as it is; qcow2: for qemu and libvirt "
                        "(needs qemu-img) (default: raw)")
    b.add_argument("--include", action="append", default=[], metavar="PKG,...",
                   help="extra Debian packages to install (repeatable)")
    b.add_argument("--kernel-cmdline", default="", metavar="ARGS",
                   help="extra kernel command-line arguments recorded with the image")
    b.add_argument("--authorized-keys", type=Path, default=None, metavar="FILE",
                   help="SSH public keys that may log in as root (root's authorized_keys); "
                        "without it, root logs in on the console only")
    b.add_argument("--no-health", action="store_true",
                   help="leave trial boots off in the image's amber.conf ([health] enabled)")
    b.add_argument("--cache-dir", type=Path, default=Path("/var/cache/amber/image"),
                   help="where the Debian root filesystem tarball is cached "
                        "(default: /var/cache/amber/image)")
    b.add_argument("--amber-deb", type=Path, default=None, metavar="FILE",
                   help="amber's Debian package to install in the image (default: dist/ of the "
                        "checkout amber runs from, as tools/package builds it)")
    b.set_defaults(handler=cmd_image_build)
