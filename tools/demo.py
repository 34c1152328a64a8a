#!/usr/bin/env python3
"""The tour: build an immutable Debian image, boot it in qemu, and show a transactional package
install, a reboot into it, a rollback and a reboot back; then the live patch story: enable live
patching, apply a patch (active at once, no reboot), reboot (still active, loaded from the
initrd), roll back and reboot (the old, unpatched system). Run as root on Debian 12.

Each step prints the command it runs in the VM ("vm#") and the command's own output."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from amber import log  # noqa: E402
from amber.log import AmberError  # noqa: E402
from testing.vm import VM, default_state  # noqa: E402

HELLO = "#!/bin/sh\necho 'hello from a package installed in a transaction'\n"


def banner(text: str) -> None:
    print(f"\n\033[1m=== {text}\033[0m" if sys.stdout.isatty() else f"\n=== {text}", flush=True)


def in_vm(vm: VM, *argv: str) -> int:
    print(f"vm# {' '.join(argv)}", flush=True)
    return vm.exec(list(argv), check=False, timeout=900, relay=True).code


def build_hello_deb(directory: Path) -> Path:
    from testing.packages import build_deb

    deb = build_deb(directory, "amber-hello", "1.0", {"/usr/bin/amber-hello": HELLO})
    # build_deb writes plain files; the demo's command must be executable.
    tree = directory / "amber-hello_1.0.tree"
    (tree / "usr/bin/amber-hello").chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def tour(vm: VM, work: Path) -> None:
    banner("Build the test image (cached after the first time)")
    vm.build()
    banner("Boot it through firmware (OVMF) and the image's own GRUB, as a machine boots")
    vm.start()

    banner("A fresh immutable system: snapshot 1 is booted and is the default; / is read-only")
    in_vm(vm, "amber", "status")
    in_vm(vm, "amber", "snapshots")
    in_vm(vm, "touch", "/usr/bin/nope")

    banner("Install a local package in a transaction: a new snapshot, the running system "
           "untouched")
    vm.put(build_hello_deb(work), "/root/amber-hello_1.0_all.deb")
    in_vm(vm, "amber", "pkg", "install", "/root/amber-hello_1.0_all.deb")
    in_vm(vm, "amber", "status")
    in_vm(vm, "amber-hello")

    banner("Reboot into the new default snapshot: the package is there")
    vm.reboot()
    in_vm(vm, "amber", "status")
    in_vm(vm, "amber-hello")
    in_vm(vm, "amber", "snapshots")

    banner("Roll back to snapshot 1")
    in_vm(vm, "amber", "rollback", "1")
    in_vm(vm, "amber", "status")

    banner("Reboot into snapshot 1: the package is gone, the system is as before")
    vm.reboot()
    in_vm(vm, "amber", "status")
    in_vm(vm, "amber-hello")
    in_vm(vm, "amber", "snapshots")


def build_livepatch_rpm(vm: VM, directory: Path) -> Path:
    """amber's own test live patch, built for the VM's kernel and packaged as SUSE does."""
    from testing.livepatch_packages import build_livepatch_rpm as package
    from testing.modules.build import build_modules

    release = vm.kernel_release()
    module = build_modules(release, REPO / ".cache" / "modules")["amber_lp_v1"]
    return package(directory, release, module, "1")


def livepatch_tour(vm: VM, work: Path) -> None:
    banner("Live patching is off until the admin enables it")
    rpm = build_livepatch_rpm(vm, work)
    remote = f"/root/{rpm.name}"
    vm.put(rpm, remote)
    in_vm(vm, "amber", "livepatch", "apply", remote)
    in_vm(vm, "amber", "livepatch", "enable")

    banner("Apply a live patch: installed in a new snapshot with a new initrd, and loaded now")
    in_vm(vm, "cat", "/proc/cmdline")
    in_vm(vm, "amber", "livepatch", "apply", remote)
    in_vm(vm, "cat", "/proc/cmdline")
    in_vm(vm, "amber", "livepatch", "status")
    in_vm(vm, "amber", "status")

    banner("Reboot: the patch is active again, loaded from the initrd before userspace")
    vm.reboot()
    in_vm(vm, "cat", "/proc/cmdline")
    in_vm(vm, "sh", "-c", "dmesg | grep -E 'Running in initrd|livepatch: enabling|running in "
                          "system mode'")
    in_vm(vm, "amber", "livepatch", "status")

    banner("Roll back to the snapshot from before the patch, and reboot")
    in_vm(vm, "amber", "rollback", "last")
    vm.reboot()
    banner("The old system, exactly: no patch package, no patch in the initrd or the kernel")
    in_vm(vm, "cat", "/proc/cmdline")
    in_vm(vm, "amber", "livepatch", "status")
    in_vm(vm, "amber", "snapshots")


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/demo", description=__doc__)
    parser.add_argument("--no-setup", action="store_true", help="do not run tools/setup first")
    parser.add_argument("--keep", action="store_true", help="leave the VM running at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("tools/demo: run as root (it builds a btrfs image on a loop device)",
              file=sys.stderr)
        return 8
    if not args.no_setup:
        banner("Install what the demo needs (tools/setup)")
        subprocess.run([str(REPO / "tools/setup")], check=True)
    vm = VM(default_state() / "demo", cache=default_state() / "cache")
    try:
        with tempfile.TemporaryDirectory(prefix="amber-demo-") as work:
            tour(vm, Path(work))
            livepatch_tour(vm, Path(work))
    except AmberError as e:
        log.error(e)
        return int(e.code)
    finally:
        if not args.keep:
            vm.stop()
    banner("Done. The VM's console log: " + str(vm.console))
    return 0


if __name__ == "__main__":
    sys.exit(main())
