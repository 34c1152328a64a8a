"""How a snapshot's initrd loads a live patch early, before the root is mounted: the generator's
own configuration (dracut: force_drivers, which becomes rd.driver.pre=; initramfs-tools: its
modules file, which becomes the initrd's conf/modules), so that every later regeneration of the
initrd keeps the patch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DRACUT_CONF = "etc/dracut.conf.d/50-amber-livepatch.conf"


INITRAMFS_MODULES = "etc/initramfs-tools/modules"


INITRAMFS_MARKER = "# live patch, loaded early (managed by amber livepatch apply)"


def initrd_patches(snapshot: Path) -> list[str]:
    """The live patches the snapshot's initrd configuration loads early."""
    dracut = snapshot / DRACUT_CONF
    if dracut.is_file():
        names: list[str] = []
        for line in dracut.read_text().splitlines():
            if line.startswith("force_drivers+="):
                names += line.partition("=")[2].strip().strip('"').split()
        return names
    modules = snapshot / INITRAMFS_MODULES
    if modules.is_file():
        lines = modules.read_text().splitlines()
        return [lines[i + 1].strip() for i, line in enumerate(lines[:-1])
                if line == INITRAMFS_MARKER]
    return []


def configure_initrd(snapshot: Path, generator: str, name: str, old: Sequence[str]) -> None:
    """Make the initrd load exactly this live patch early (the newest replaces the rest)."""
    if generator == "dracut":
        path = snapshot / DRACUT_CONF
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Written by amber livepatch apply: the live patch is in the initrd and "
                        "is loaded early\n# (rd.driver.pre), before the root is mounted.\n"
                        f'force_drivers+=" {name} "\n')
        return
    path = snapshot / INITRAMFS_MODULES
    drop = {*old, *initrd_patches(snapshot)}
    kept: list[str] = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        if line == INITRAMFS_MARKER or line.strip() in drop:
            continue
        kept.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*kept, INITRAMFS_MARKER, name]) + "\n")
