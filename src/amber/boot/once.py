"""`amber boot-once N`: only the next boot starts snapshot N; the boot after it is the default's
again. GRUB's `next_entry` in its environment block on the ESP, as grub-reboot sets it: the menu
clears it before it boots anything, so a snapshot that fails to come up is not booted twice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from amber.boot import grubenv, menu
from amber.errors import AmberError, ExitCode, die

if TYPE_CHECKING:
    from pathlib import Path

    from amber.config import BootConfig
    from amber.snapshots import Store


def _grubenv(store: Store, settings: BootConfig) -> Path:
    if not menu.managed(store):
        die(f"{store.root} does not boot through amber's boot menu "
            f"({menu.menu_path(store)} is missing)",
            hint="boot-once needs a disk made by 'amber image build'", code=ExitCode.ENVIRONMENT)
    path = menu.grubenv_path(store, settings)
    if not path.parent.is_dir():
        die(f"no EFI system partition with GRUB's files at {store.root / settings.esp.lstrip('/')}"
            f" ({path.parent} is missing)",
            hint="mount it there (see /etc/fstab), or set [boot] esp in amber.conf",
            code=ExitCode.ENVIRONMENT)
    return path


def next_boot_once(store: Store, settings: BootConfig) -> int | None:
    """The snapshot the next boot starts once, if one is set (None where there is no menu)."""
    if not menu.managed(store):
        return None
    try:
        values = grubenv.read(menu.grubenv_path(store, settings))
    except AmberError:
        return None  # status reports what it can
    return menu.boot_once_number(values.get("next_entry", ""))


def set_boot_once(store: Store, settings: BootConfig, number: int) -> int:
    """Boot snapshot `number` (resolved by the caller) at the next boot only."""
    snapshot = store.get(number)
    if snapshot.in_progress:
        die(f"snapshot {number} is an unfinished transaction", hint="pick one from 'amber "
            "snapshots'", code=ExitCode.REFUSED)
    if not store.is_read_only(number):
        die(f"snapshot {number} is writable, so it would not boot the same system twice",
            hint="pick a read-only snapshot", code=ExitCode.REFUSED)
    try:
        menu.entry(store, snapshot)
    except menu.Unbootable as e:
        die(f"snapshot {number} cannot boot: {e}", hint="pick another snapshot",
            code=ExitCode.REFUSED)
    path = _grubenv(store, settings)
    # The entry first (a snapshot beyond the newest menu_entries is added), then the variable:
    # a crash in between leaves the menu one entry longer and the next boot the default's.
    menu.refresh(store, settings=settings, include=(number,))
    grubenv.update(path, {"next_entry": menu.boot_once_target(number)})
    return number


def clear_boot_once(store: Store, settings: BootConfig) -> None:
    grubenv.update(_grubenv(store, settings), {"next_entry": None})


BEFORE_AMBER = "before-amber"  # what `amber boot-once` takes for the menu's menu.BEFORE_ID


def set_boot_once_before(store: Store, settings: BootConfig) -> None:
    """Boot the system from before `amber init` at the next boot only."""
    if menu.before_entry(store) is None:
        die("this system has no boot entry for the system before amber",
            hint="only a system that 'amber init' adopted has one", code=ExitCode.NOT_FOUND)
    path = _grubenv(store, settings)
    grubenv.update(path, {"next_entry": menu.BEFORE_ID})
