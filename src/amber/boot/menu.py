"""amber's GRUB boot menu: the default snapshot first, then a submenu of complete snapshots, each
booting its own kernel and initrd with `rootflags=subvol=` of that snapshot.

Where it lives, and why there: the grub.cfg on the EFI system partition is static (written once
when the disk is made) and sources `/@/.snapshots/.amber/menu.cfg` from the btrfs filesystem.
amber rewrites only that file, by rename, in the same btrfs transaction that moves the default
(transaction.set_default), so GRUB — which reads only committed btrfs trees — sees either the old
menu and the old default or both new: a power cut never leaves a menu naming a snapshot that is
not there. Keeping the changing file off the ESP also keeps FAT, which has no atomic rename,
out of every transaction. A system whose store has no `.amber/menu.cfg` does not boot through
amber's menu, and amber leaves it alone.

GRUB ignores the btrfs default subvolume, so every path in the menu is absolute from the top
level, and the default entry names the default snapshot explicitly.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, NamedTuple

from amber.errors import AmberError, ExitCode, die

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

    from amber.config import BootConfig
    from amber.snapshots import Snapshot, Store

MENU_DIR = ".amber"
MENU_NAME = "menu.cfg"
DEFAULT_ID = "amber-default"
SUBMENU_ID = "amber-snapshots"
GRUBENV = "grub/grubenv"  # on the EFI system partition
_HEADER = "# amber-menu 1:"
_SAFE_WORD = re.compile(r"[A-Za-z0-9=._,:/@+%^-]+")


# amber init: the entry that boots the system as it was before amber adopted it (its old root
# subvolume, kernel and command line), as .amber/before-amber.json describes it.
BEFORE_ID = "amber-before"
BEFORE_NAME = "before-amber.json"


class Before(NamedTuple):
    title: str
    kernel: str  # absolute from the btrfs top level
    initrd: str
    arguments: str


def before_entry(store: Store) -> Before | None:
    """The "system before amber" entry of an adopted system, if it has one."""
    import json

    try:
        data = json.loads((store.dir / MENU_DIR / BEFORE_NAME).read_text())
        return Before(str(data["title"]), str(data["kernel"]), str(data["initrd"]),
                      str(data["arguments"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _before_text(before: Before) -> list[str]:
    arguments = " ".join(_quote(word) for word in before.arguments.split())
    return [f"menuentry '{_title(before.title)}' --id {BEFORE_ID} {{",
            "  echo 'amber: booting the system from before amber'",
            f"  linux {_quote(before.kernel)} {arguments}",
            f"  initrd {_quote(before.initrd)}",
            "}"]


def entry_id(number: int) -> str:
    return f"amber-snapshot-{number}"


def boot_once_target(number: int) -> str:
    """What GRUB's next_entry holds to boot snapshot `number` once: submenu>entry."""
    return f"{SUBMENU_ID}>{entry_id(number)}"


def boot_once_number(next_entry: str) -> int | None:
    match = re.fullmatch(rf"{SUBMENU_ID}>amber-snapshot-([1-9][0-9]*)", next_entry)
    return int(match.group(1)) if match else None


def menu_path(store: Store) -> Path:
    return store.dir / MENU_DIR / MENU_NAME


def managed(store: Store) -> bool:
    """Whether this system boots through amber's menu (the disk amber made, or adopted)."""
    return os.path.isfile(menu_path(store))


def grubenv_path(store: Store, settings: BootConfig) -> Path:
    return store.root / settings.esp.lstrip("/") / GRUBENV


class Unbootable(Exception):
    """A snapshot that cannot be in the menu; the message says why."""


class Entry(NamedTuple):  # NamedTuple, not a dataclass: `amber status` imports this module
    number: int
    release: str
    kernel: str  # absolute from the btrfs top level
    initrd: str
    arguments: str
    title: str
    pinned: bool


def kernel_arguments(cmdline: str, subvolume: str) -> str:
    """The snapshot's own kernel command line (/etc/kernel/cmdline), made to mount it: any
    subvol=/subvolid= is replaced by the snapshot's subvolume."""
    words, flags = [], [f"subvol={subvolume}"]
    for word in cmdline.split():
        if word.startswith("BOOT_IMAGE="):
            continue
        if word.startswith("rootflags="):
            flags += [flag for flag in word.removeprefix("rootflags=").split(",")
                      if flag and not flag.startswith(("subvol=", "subvolid="))]
            continue
        words.append(word)
    words.append("rootflags=" + ",".join(flags))
    return " ".join(words)


def _quote(word: str) -> str:
    """A word for GRUB's script parser, which expands $ and splits on ; | & and spaces."""
    if _SAFE_WORD.fullmatch(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _title(text: str) -> str:
    return text.replace("\n", " ").replace("'", "'\\''")


def store_subvolume(store: Store) -> str | None:
    """The store's path from the top level ('@/.snapshots'), if it is a subvolume of its own
    (as in snapper's layout): then a snapshot's path needs no ioctl of its own."""
    from amber import btrfs

    return btrfs.subvolume_path(store.dir) if btrfs.is_subvolume(store.dir) else None


def entry(store: Store, snapshot: Snapshot, *, closing: bool = False,
          container: str | None = None, note: str = "") -> Entry:
    """The menu entry of a snapshot; Unbootable if it cannot boot on its own. `closing`: the
    snapshot of the transaction being closed, which is still marked unfinished. `container`:
    store_subvolume(store), where the caller has it."""
    from amber import btrfs
    from amber.boot import kernels

    number, root = snapshot.number, store.path(snapshot.number)
    if snapshot.broken:
        raise Unbootable(f"its metadata cannot be trusted ({snapshot.broken})")
    if snapshot.in_progress and not closing:
        raise Unbootable("its transaction is unfinished")
    release = kernels.boot_kernel(root)
    if release is None:
        raise Unbootable("it has no kernel")
    for name in (f"boot/vmlinuz-{release}", f"boot/initrd.img-{release}"):
        if not os.path.isfile(root / name):
            raise Unbootable(f"it has no /{name}")
    try:
        cmdline = (root / "etc/kernel/cmdline").read_text()
    except OSError:
        raise Unbootable("it has no /etc/kernel/cmdline (the kernel command line)") from None
    if "root=" not in cmdline:
        raise Unbootable("its /etc/kernel/cmdline names no root=")
    subvolume = (f"{container}/{number}/snapshot" if container is not None
                 else btrfs.subvolume_path(root))
    date = snapshot.date[:16]
    pinned = (", pinned" if snapshot.pinned else "") + (f", {note}" if note else "")
    description = f" {snapshot.description}" if snapshot.description else ""
    return Entry(number, release, f"/{subvolume}/boot/vmlinuz-{release}",
                 f"/{subvolume}/boot/initrd.img-{release}",
                 kernel_arguments(cmdline, subvolume),
                 f"snapshot {number} ({date}{pinned}){description} - kernel {release}",
                 snapshot.pinned)


def _entry_text(item: Entry, title: str, entry_id: str, indent: str,
                first: tuple[str, ...] = ()) -> list[str]:
    arguments = " ".join(_quote(word) for word in item.arguments.split())
    return [f"{indent}menuentry '{_title(title)}' --id {entry_id} {{",
            *(f"{indent}  {line}" for line in first),
            f"{indent}  echo 'amber: booting snapshot {item.number}'",
            f"{indent}  linux {_quote(item.kernel)} {arguments}",
            f"{indent}  initrd {_quote(item.initrd)}",
            f"{indent}}}"]


class TrialMenu(NamedTuple):
    """The default snapshot is on trial: GRUB counts its boots, then falls back."""

    number: int
    fallback: Entry
    tries: int


FALLBACK_ID = "amber-fallback"
MAX_TRIES = 9


def _trial_selection(trial: TrialMenu) -> list[str]:
    """Before the menu shows: with no tries left, the fallback is the default; if the fallback
    was tried already and the trial is still not resolved, nothing boots on its own."""
    n, g = trial.number, trial.fallback.number
    return [
        f'if [ "${{amber_trial}}" = "{n}" ]; then',
        '  if [ "${amber_tries}" = "0" ]; then',
        f'    if [ "${{amber_fell_back}}" = "{n}" ]; then',
        "      set timeout=-1",
        f"      echo 'amber: snapshot {n} failed its trial boot and snapshot {g}, the last good "
        "one, did not come up either: choose a snapshot'",
        "    else",
        f"      set default={FALLBACK_ID}",
        f"      echo 'amber: snapshot {n} used up its trial boots: booting snapshot {g}'",
        "    fi",
        "  fi",
        "fi",
    ]


def _trial_count(trial: TrialMenu) -> tuple[str, ...]:
    """In the default entry, so that only a boot of the trial snapshot counts (not a manual
    boot of another one): one try less, saved before the kernel gets control."""
    n = trial.number
    steps = [f'{"if" if k == MAX_TRIES else "elif"} [ "${{amber_tries}}" = "{k}" ]; then '
             f"set amber_tries={k - 1}" for k in range(MAX_TRIES, 0, -1)]
    return (f'if [ "${{amber_trial}}" = "{n}" ]; then',
            *(f"  {step}" for step in steps),
            "  else set amber_tries=0",
            "  fi",
            '  save_env --file "${amber_env}" amber_tries',
            f"  echo \"amber: trial boot of snapshot {n}, ${{amber_tries}} more after this\"",
            "fi")


def render(default: Entry, entries: list[Entry], timeout: int,
           trial: TrialMenu | None = None, before: Before | None = None) -> str:
    """menu.cfg: sourced by the static grub.cfg on the ESP, which sets amber_env (the
    environment block) and loads it first."""
    pinned = " ".join(str(e.number) for e in entries if e.pinned)
    lines = [
        "# Written by amber after every change of the default or of the snapshots: do not edit.",
        f"{_HEADER} default {default.number}; pinned {pinned}",
        f"set timeout={timeout}",
        "set timeout_style=menu",
        f"set default={DEFAULT_ID}",
        *(_trial_selection(trial) if trial else ()),
        # boot-once (amber boot-once N): consumed before anything boots, as grub-reboot's is.
        'if [ -n "${next_entry}" ]; then',
        '  set default="${next_entry}"',
        "  set next_entry=",
        '  save_env --file "${amber_env}" next_entry',
        '  echo "amber: booting ${default} once"',
        "fi",
        *_entry_text(default, f"amber: snapshot {default.number} (default"
                     f"{', on trial' if trial else ''}) - kernel {default.release}",
                     DEFAULT_ID, "", _trial_count(trial) if trial else ()),
    ]
    if trial:
        g, n = trial.fallback, trial.number
        lines += _entry_text(g, f"amber: snapshot {g.number} (last good, if {n} fails) - "
                             f"kernel {g.release}", FALLBACK_ID, "",
                             (f"set amber_fell_back={n}",
                              'save_env --file "${amber_env}" amber_fell_back'))
    lines.append(f"submenu 'amber: snapshots' --id {SUBMENU_ID} {{")
    for item in entries:
        lines += _entry_text(item, item.title, entry_id(item.number), "  ")
    lines.append("}")
    if before is not None:
        lines += _before_text(before)
    return "\n".join(lines) + "\n"


def listed(store: Store) -> tuple[int | None, set[int]]:
    """The default and the pinned snapshots the current menu names (from its header line), so
    that a transaction need not read every snapshot's metadata to find the pinned ones: pin,
    unpin, delete and cleanup refresh in full."""
    try:
        with open(menu_path(store), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(_HEADER):
                    match = re.match(r" default (\d+); pinned([\d ]*)$",
                                     line.removeprefix(_HEADER).rstrip("\n"))
                    if match:
                        return int(match[1]), {int(p) for p in match[2].split()}
                    break
    except OSError:
        pass
    return None, set()


class Menu(NamedTuple):
    default: Entry
    entries: list[Entry]
    warnings: list[str]
    trial: TrialMenu | None = None


def choose(store: Store, settings: BootConfig, default: int, *, full: bool,
           exclude: Collection[int] = (), include: Collection[int] = ()) -> Menu:
    """The menu for `default`: Unbootable if the default snapshot cannot boot."""
    from amber import btrfs

    flags = store.read_only_flags() if full else {}

    def read_only(number: int) -> bool:
        if number not in flags:
            flags[number] = store.exists(number) and btrfs.is_read_only(store.path(number))
        return flags[number]

    numbers = [n for n in store.numbers() if n not in exclude]
    wanted: list[int] = []
    for number in reversed(numbers):
        if len(wanted) >= settings.menu_entries:
            break
        if read_only(number):
            wanted.append(number)
    chosen = set(wanted) | {n for n in include if n not in exclude}
    if full:
        pinned = {s.number for s in store.list() if s.pinned and flags.get(s.number)}
    else:
        pinned = {n for n in listed(store)[1] if n in numbers}
    from amber.health import verdicts

    health = verdicts.load(store)
    container = store_subvolume(store)

    def note(number: int) -> str:
        verdict = health.verdict(number)
        return "" if verdict == verdicts.Verdict.GOOD else str(verdict)

    default_entry = entry(store, store.get(default), container=container, note=note(default))
    entries, warnings = [default_entry], []
    for number in sorted((chosen | pinned) - {default}, reverse=True):
        if not read_only(number):
            continue
        snapshot = store.get(number)
        if number not in chosen and not snapshot.pinned:
            continue  # unpinned since the last full refresh, by another tool
        try:
            entries.append(entry(store, snapshot, container=container, note=note(number)))
        except Unbootable as e:
            warnings.append(f"snapshot {number} is left out of the boot menu: {e}")
    entries.sort(key=lambda e: e.number, reverse=True)
    trial = None
    if health.trial is not None and health.trial.snapshot == default and \
            health.trial.fallback is not None and read_only(health.trial.fallback):
        try:
            fallback = entry(store, store.get(health.trial.fallback), container=container)
            trial = TrialMenu(default, fallback, min(health.trial.tries, MAX_TRIES))
        except Unbootable as e:
            warnings.append(f"snapshot {default} boots without a trial: its fallback "
                            f"{health.trial.fallback} cannot boot: {e}")
    return Menu(default_entry, entries, warnings, trial)


def write(store: Store, text: str) -> None:
    """Replace menu.cfg by rename. No fsync: the caller's btrfs commit makes it durable
    together with the default (GRUB does not read the log tree an fsync would write)."""
    directory = store.dir / MENU_DIR
    tmp = directory / f".{MENU_NAME}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, directory / MENU_NAME)
    except OSError as e:
        from amber.state import write_error

        tmp.unlink(missing_ok=True)
        raise write_error(directory / MENU_NAME, e) from None


def settings_of(store: Store) -> BootConfig:
    from amber import config

    return config.load(store.root).boot


def _boot_once(store: Store, settings: BootConfig) -> set[int]:
    from amber.boot import grubenv

    path = grubenv_path(store, settings)
    try:
        number = boot_once_number(grubenv.read(path).get("next_entry", ""))
    except AmberError:
        return set()  # a broken ESP must not stop a menu update; boot-once reports it
    return {number} if number is not None else set()


def refresh(store: Store, *, default: int | None = None, full: bool = False,
            exclude: Collection[int] = (), include: Collection[int] = (),
            settings: BootConfig | None = None, commit: bool = True) -> list[str]:
    """Rewrite the menu of a system that boots through it, for `default` (the current default
    if None), leaving out `exclude` (about to be deleted). Returns warnings, which are also
    logged. Raises Unbootable if the default cannot boot."""
    if not managed(store):
        return []
    from amber import btrfs, log

    settings = settings or settings_of(store)
    number = default if default is not None else store.default()
    if number is None:
        return []
    menu = choose(store, settings, number, full=full, exclude=exclude,
                  include={*include, *_boot_once(store, settings)})
    write(store, render(menu.default, menu.entries, settings.timeout, menu.trial,
                        before_entry(store)))
    if commit:
        btrfs.sync(store.dir)
    for warning in menu.warnings:
        log.warn(warning)
    return menu.warnings


def repair(store: Store) -> None:
    """At the start of every write command: a menu that names another default than the real
    one (a crash between the two, or a default set by another tool) is written again."""
    if not managed(store):
        return
    default = store.default()
    if default is None or listed(store)[0] == default:
        return
    from amber import log

    log.warn(f"the boot menu did not name the default snapshot {default}: writing it again")
    try:
        refresh(store, full=True)
    except Unbootable as e:
        log.warn(f"the default snapshot {default} cannot boot: {e}",
                 hint="amber rollback N to a snapshot that boots")


def install(store: Store) -> None:
    """Start managing the menu of this store (the disk amber made, or adopted)."""
    (store.dir / MENU_DIR).mkdir(exist_ok=True)
    number = store.default()
    if number is None:
        die(f"{store.root} has no default snapshot to boot",
            hint="make a snapshot the default first (amber rollback N)", code=ExitCode.REFUSED)
    settings = settings_of(store)
    try:
        menu = choose(store, settings, number, full=True)
    except Unbootable as e:
        die(f"snapshot {number} cannot boot: {e}", hint="install a kernel in it first",
            code=ExitCode.REFUSED)
    write(store, render(menu.default, menu.entries, settings.timeout, menu.trial,
                        before_entry(store)))
    from amber import btrfs

    btrfs.sync(store.dir)


def require_bootable(store: Store, number: int, code: ExitCode, *, closing: bool = False
                     ) -> None:
    """Refuse to make `number` the default of a menu-booted system it could not boot."""
    if not managed(store):
        return
    try:
        entry(store, store.get(number), closing=closing)
    except Unbootable as e:
        die(f"snapshot {number} cannot boot: {e}",
            hint="the default is unchanged; install a kernel (and its initrd) in the snapshot",
            code=code)
