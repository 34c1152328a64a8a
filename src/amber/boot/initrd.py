"""initrd generation inside a snapshot, with the system's own generator: dracut or
initramfs-tools. Only kernels that are installed in the snapshot are considered."""

from __future__ import annotations

from pathlib import Path

from amber.boot import kernels
from amber.log import ExitCode, die


def generator(snapshot: Path) -> str:
    for name in ("dracut", "update-initramfs"):
        for where in ("usr/bin", "usr/sbin", "bin", "sbin"):
            if (snapshot / where / name).exists():
                return name
    die(f"no initrd generator (dracut or initramfs-tools) in {snapshot}",
        hint="install dracut in a transaction: amber pkg install dracut",
        code=ExitCode.ENVIRONMENT)


def commands(snapshot: Path, releases: list[str] | None = None) -> list[list[str]]:
    """The commands that regenerate the initrds of `releases` (default: every kernel)."""
    tool = generator(snapshot)
    wanted = releases if releases is not None else kernels.installed(snapshot)
    if not wanted:
        die(f"no kernel installed in {snapshot}", hint="install a kernel package first",
            code=ExitCode.ENVIRONMENT)
    if tool == "dracut":
        return [["dracut", "--quiet", "--force", f"/boot/initrd.img-{r}", r] for r in wanted]
    return [["update-initramfs", "-u", "-k", r] for r in wanted]


def initrd_path(snapshot: Path, release: str) -> Path:
    """Where the snapshot's initrd of `release` is (Debian's naming, then dracut's)."""
    for name in (f"boot/initrd.img-{release}", f"boot/initramfs-{release}.img",
                 f"boot/initrd-{release}"):
        if (snapshot / name).exists():
            return snapshot / name
    return snapshot / f"boot/initrd.img-{release}"
