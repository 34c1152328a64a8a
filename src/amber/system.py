"""The state of a system root and the snapshot commands: status, snapshots, rollback, pin,
delete, cleanup."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from amber import log
from amber.lock import assess, locked, read_lock_record
from amber.log import AmberError, ExitCode, die
from amber.snapshots import PINNED_KEY, Ref, Snapshot, Store, shown, unicode_text
from amber.transaction import read_state, set_default

if TYPE_CHECKING:
    from amber.livepatch.view import View


def store(root: Path) -> Store:
    s = Store(root)
    s.check()
    return s


# ---- status ------------------------------------------------------------------------------------

class Status(NamedTuple):
    root: str
    booted: int | None
    default: int | None
    in_progress: list[int]
    interrupted: list[int]
    livepatch: View | None  # where live patching is in play
    reboot: dict[str, Any]  # what a reboot would bring, and when (amber.fleet.reboot)
    # The live patch, active now, that is the only change from booted to default.
    covered_by_livepatch: str | None = None
    warnings: tuple[str, ...] = ()
    boot_menu: bool = False  # the system boots through amber's GRUB menu
    next_boot_once: int | None = None
    health: str | None = None  # the booted snapshot's verdict: good, bad or trial
    last_rollback: dict[str, Any] | None = None  # the last automatic rollback
    # /etc paths the booted snapshot's first-boot merge left in conflict (amber etc conflicts)
    etc_conflicts: tuple[str, ...] = ()

    @property
    def reboot_needed(self) -> bool:
        return (self.default is not None and self.default != self.booted
                and self.covered_by_livepatch is None)

    def as_json(self) -> dict[str, Any]:
        return {"root": self.root, "booted": self.booted, "default": self.default,
                "in_progress": self.in_progress, "interrupted": self.interrupted,
                "reboot_needed": self.reboot_needed,
                "reboot_avoided_by_livepatch": self.covered_by_livepatch,
                "warnings": list(self.warnings), "reboot": self.reboot,
                "boot_menu": self.boot_menu, "next_boot_once": self.next_boot_once,
                "health": self.health, "last_rollback": self.last_rollback,
                "etc_conflicts": list(self.etc_conflicts),
                **({"livepatch": {**self.livepatch.as_json(),
                                  "drift": self.livepatch.drift_json()}}
                   if self.livepatch else {})}

    def render(self) -> str:
        lines = [f"booted snapshot:   {self.booted}", f"default snapshot:  {self.default}"]
        if self.next_boot_once is not None:
            lines.append(f"next boot, once:   {self.next_boot_once} (then the default again)")
        if self.health is not None:
            lines.append(f"health:            {self.health}")
        last = self.last_rollback
        if last is not None:
            lines.append(f"last automatic rollback: snapshot {last['from']} → {last['to']} at "
                         f"{last['time']} ({last['reason']}"
                         + (f": {last['detail']}" if last["detail"] else "") + ")"
                         + (f"; output in {last['log']}" if last["log"] else ""))
        if self.booted is not None and self.default is not None and self.booted != self.default:
            lines.append(f"note: the booted snapshot {self.booted} is not the default; "
                         f"'amber rollback' makes it the default")
        if self.in_progress:
            lines.append(f"in progress:       {', '.join(map(str, self.in_progress))}")
        if self.interrupted:
            lines.append(f"interrupted:       {', '.join(map(str, self.interrupted))} "
                         "(removed by the next transaction or 'amber cleanup')")
        if self.reboot_needed:
            lines.append(f"reboot needed:     yes, to boot snapshot {self.default}")
        elif self.covered_by_livepatch:
            lines.append(f"reboot needed:     no: snapshot {self.default} only adds live patch "
                         f"{self.covered_by_livepatch}, which is active now")
        else:
            lines.append("reboot needed:     no")
        if self.etc_conflicts:
            lines.append(f"/etc conflicts:    {len(self.etc_conflicts)} from the update's merge "
                         "(the admin's version kept); see 'amber etc conflicts'")
        inactive = self.reboot.get("livepatch_inactive")
        if inactive:
            lines.append(f"live patch not active: {inactive}")
        if self.livepatch is not None:
            lines += self.livepatch.render()
            for warning, resolve in self.livepatch.warnings():
                lines += [f"warning: {warning}", f"  hint: {resolve}"]
        return "\n".join(lines)


def status(root: Path) -> Status:
    """What boots now and next, and what is in progress. Reads only: an interrupted
    transaction is reported, and removed by the next command that writes."""
    s = store(root)
    booted, default = s.booted(), s.default()
    held, record = read_lock_record(s)
    running: list[int] = []
    interrupted: list[int] = []
    warnings = _layout_warnings(s, booted, default)
    number = record.get("snapshot")
    if held and type(number) is int:
        running.append(number)
    elif record and not held:
        verdict = assess(s, record, booted, default)
        if verdict.unfinished and verdict.number is not None:
            interrupted.append(verdict.number)
        elif verdict.number is None and verdict.why:
            warnings.append(f"{verdict.why}; the next amber command clears it")
        elif verdict.why:
            warnings.append(f"the lock record of an interrupted transaction names snapshot "
                            f"{verdict.number}; the next amber command keeps that snapshot "
                            f"({verdict.why}) and clears the record")
    for warning in warnings:
        log.warn(warning)
    seen, covered = _livepatch_status(s, booted, default)
    from amber.fleet.reboot import status_json  # the "reboot" key

    reboot = status_json(root, default is not None and default != booted and covered is None,
                         booted, default, covered)
    from amber.boot import menu

    boot_menu, once, health, last = menu.managed(s), None, None, None
    if boot_menu:
        from amber import config
        from amber.boot.once import next_boot_once
        from amber.health import verdicts

        once = next_boot_once(s, config.load(root).boot)
        health_record = verdicts.load(s)
        health = str(health_record.verdict(booted)) if booted is not None else None
        last = (health_record.last_rollback.as_json() if health_record.last_rollback
                else None)
    return Status(str(root), booted, default, running, interrupted, seen, reboot, covered,
                  tuple(warnings), boot_menu, once, health, last, _etc_conflicts(root, booted))


def _layout_warnings(s: Store, booted: int | None, default: int | None) -> list[str]:
    """What makes this root not the system amber expects, though it can still be read."""
    from amber import btrfs

    warnings = []
    if not btrfs.is_subvolume(s.dir):
        warnings.append(f"{s.dir} is a plain directory: the @/.snapshots subvolume is not "
                        "mounted there, so the snapshots listed are not the system's")
    if booted is None:
        warnings.append(f"{s.root} is not mounted from a snapshot (it is subvolume "
                        f"'{btrfs.subvolume_path(s.root) or '(top level)'}')")
    if default is None:
        subvolume = btrfs.default_subvolume(s.root)
        path = btrfs.subvolume_path(s.root, subvolume) if subvolume != btrfs.TOP_LEVEL_ID else ""
        warnings.append(f"the default subvolume is not a snapshot (it is "
                        f"'{path or '(top level)'}'): the next boot does not start one; "
                        "'amber rollback N' makes a snapshot the default")
    elif not s.exists(default):
        warnings.append(f"the default subvolume is snapshot {default}, which is not in {s.dir}")
    elif not s.is_read_only(default):
        warnings.append(f"the default snapshot {default} is writable, so the next boot may "
                        "not start what it held when it became the default")
    parent = _edits_not_merged(s, booted)
    if parent is not None:
        warnings.append(f"the /etc of the booted snapshot {booted} was not merged at boot, and "
                        f"snapshot {parent}'s /etc changed after the update forked from it: "
                        "what the admin edited there since is not in this one (the initrd "
                        "lacks amber's dracut module 90amber-etc, or the merge failed: see the "
                        "boot log); 'amber etc diff' lists the booted /etc's own edits, "
                        "'amber initrd' and a reboot bring the module")
    return warnings


def _edits_not_merged(s: Store, booted: int | None) -> int | None:
    """The parent snapshot whose /etc changed after the booted snapshot forked from it, if the
    booted snapshot's merge did not run. An /etc that nothing changed since the fork (one that a
    boot without amber's hook left read-only) loses nothing, and is not reported. btrfs counts
    access times as changes too (its generation), so a writable one that was only read is
    reported as well: there the merge should have run, and did not."""
    if booted is None or not s.awaits_etc_merge(booted):
        return None  # the usual case: one lstat
    from amber import btrfs
    from amber.etc.syncpoint import pending_sync

    try:
        sync = pending_sync(s.etc_path(booted))
    except AmberError:
        return None  # a sync point amber cannot read: merge-pending says why
    if sync is None or not s.has_etc_subvolume(sync.parent):
        return None
    edited = btrfs.generation(s.etc_path(sync.parent))
    return sync.parent if edited > btrfs.created_generation(sync.syncpoint) else None


def _etc_conflicts(root: Path, booted: int | None) -> tuple[str, ...]:
    if booted is None or not (root / "var/lib/amber/etc-merge" / str(booted)).is_dir():
        return ()  # the usual case, without importing the merge
    from amber.etc.pending import stored_conflicts
    from amber.etc.tree import decode

    return tuple(decode(c.path) for c in stored_conflicts(root, booted))


def _livepatch_status(s: Store, booted: int | None, default: int | None
                      ) -> tuple[View | None, str | None]:
    """The live patch view, only where live patching is in play (a kernel that supports it, or
    a snapshot that carries a patch); its modules are imported only then."""
    from amber.boot import kernels

    sysfs = kernels.livepatch_sysfs()
    numbers = {n for n in (booted, default) if n is not None and s.exists(n)}
    carries = any("livepatch" in s.get(n).userdata for n in numbers)  # apply.LIVEPATCH_KEY
    if not sysfs.is_dir() and not carries:
        return None, None
    from amber.livepatch import apply, kernel, view

    paths = kernel.KernelPaths.from_environment()
    seen = view.view(s.root, paths, check_initrd=False)
    active = {p.name for p in seen.patches if p.active}
    covered = apply.covering_patch(s, booted, default, active)
    return seen, covered


# ---- listing -----------------------------------------------------------------------------------

class Row(NamedTuple):
    snapshot: Snapshot
    read_only: bool
    default: bool
    booted: bool
    health: str = "good"  # the boot verdict: good, bad or trial (amber.health)

    def as_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"number": s.number, "date": unicode_text(s.date),
                "description": unicode_text(s.description),
                "read_only": self.read_only, "default": self.default, "booted": self.booted,
                "pinned": s.pinned, "in_progress": s.in_progress,
                "cleanup": unicode_text(s.cleanup), "type": unicode_text(s.type),
                "userdata": {unicode_text(k): unicode_text(v) for k, v in s.userdata.items()},
                "broken": s.broken or None, "health": self.health}


def snapshot_rows(root: Path) -> list[Row]:
    s = store(root)
    booted, default = s.booted(), s.default()
    flags = s.read_only_flags()
    from amber.health import verdicts

    health = verdicts.load(s)
    rows = [Row(s.get(n), flags[n], n == default, n == booted, str(health.verdict(n)))
            for n in s.numbers() if n in flags]
    for row in rows:
        if row.snapshot.broken:
            _warn_broken(s, row.snapshot)
    return rows


def _warn_broken(s: Store, snapshot: Snapshot) -> None:
    log.warn(f"snapshot {snapshot.number}: {shown(snapshot.broken)}; amber leaves it alone",
             hint=f"repair or remove {s.info_path(snapshot.number)}")


def render_snapshot_table(rows: list[Row]) -> str:
    lines = [f"{'#':>5}  {'flags':<7} {'date':<19}  description"]
    for r in rows:
        flags = ("*" if r.booted else " ") + ("+" if r.default else " ") + \
                ("P" if r.snapshot.pinned else " ") + ("w" if not r.read_only else " ") + \
                ("!" if r.snapshot.broken else " ") + \
                {"bad": "X", "trial": "T"}.get(r.health, " ")
        text = f"({r.snapshot.broken})" if r.snapshot.broken else r.snapshot.description
        lines.append(f"{r.snapshot.number:>5}  {flags:<7} {shown(r.snapshot.date):<19}  "
                     f"{shown(text)}")
    lines.append("flags: * booted, + default (next boot), P pinned, w writable, "
                 "! metadata unreadable, T on trial, X failed its trial boot")
    return "\n".join(lines)


# ---- changing which snapshot boots ---------------------------------------------------------------

def resolve_pair(root: Path, a: Ref, b: Ref) -> tuple[int, int]:
    s = store(root)
    return s.resolve(a), s.resolve(b)


def refuse_bad(s: Store, number: int, force: bool, verb: str) -> None:
    """A snapshot that failed its trial boot is not booted again by mistake."""
    from amber.health import verdicts

    if verdicts.load(s).verdict(number) == verdicts.Verdict.BAD and not force:
        die(f"snapshot {number} failed its trial boot (health: bad)",
            hint=f"see 'amber status'; 'amber {verb} --force {number}' if you mean it",
            code=ExitCode.REFUSED)


def rollback(root: Path, target: Ref | None, *, revert_livepatches: bool = False,
             wait: bool = False, force: bool = False) -> dict[str, Any]:
    s = store(root)
    with locked(s, wait):
        booted, default = s.booted(), s.default()
        if target is None:
            if booted is None:
                die("the root is not booted from a snapshot", hint="amber rollback N",
                    code=ExitCode.USAGE)
            number = booted
        elif target.text == "last":
            previous = read_state(s).get("previous_default")
            if not isinstance(previous, int) or not s.exists(previous):
                die("no previous default snapshot is recorded", hint="amber rollback N",
                    code=ExitCode.NOT_FOUND)
            number = previous
        else:
            number = s.resolve(target)
        snap = s.get(number)
        if snap.broken:
            log.warn(f"snapshot {number}: {shown(snap.broken)}",
                     hint="rolling back anyway: amber checks below that it is read-only")
        if snap.in_progress:
            die(f"snapshot {number} is an unfinished transaction", code=ExitCode.REFUSED,
                hint="pick a finished snapshot from 'amber snapshots'")
        if not s.is_read_only(number):
            die(f"snapshot {number} is writable, so it would not boot the same system twice",
                hint="pick a read-only snapshot", code=ExitCode.REFUSED)
        refuse_bad(s, number, force, "rollback")
        if number == default:
            log.info(f"snapshot {number} is already the default")
        else:
            set_default(s, number)
            log.step(f"snapshot {number} is the default for the next boot (was {default})")
    result: dict[str, Any] = {"default": number, "previous_default": default, "booted": booted}
    result["reverted_livepatches"] = _livepatches_after_rollback(root, number,
                                                                 revert_livepatches)
    if number != booted:
        log.info(f"reboot to boot snapshot {number}")
    return result


def _livepatches_after_rollback(root: Path, target: int, revert: bool) -> list[str]:
    """A rollback does not undo the running kernel: warn about its live patches that the
    target lacks, or with --revert-livepatches make the running kernel match the target."""
    from amber.boot import kernels

    if not kernels.livepatch_sysfs().is_dir():
        return []
    from amber.livepatch import apply

    return apply.revert_for_rollback(root, target, revert)


# ---- pinning, deleting, cleanup --------------------------------------------------------------

def pin(root: Path, ref: Ref, *, pinned: bool, wait: bool = False) -> None:
    s = store(root)
    with locked(s, wait):
        number = s.resolve(ref)
        s.update(number, {PINNED_KEY: "yes" if pinned else None})
        refresh_menu(s)
    log.info(f"snapshot {number} {'pinned' if pinned else 'unpinned'}")


def refresh_menu(s: Store, exclude: Collection[int] = ()) -> None:
    """After pin, unpin, delete and cleanup: the menu of a system that boots through it, with
    every snapshot's metadata read again."""
    from amber.boot import menu

    try:
        menu.refresh(s, full=True, exclude=exclude)
    except menu.Unbootable as e:
        log.warn(f"the boot menu is unchanged: the default snapshot cannot boot: {e}",
                 hint="amber rollback N to a snapshot that boots")


def _refuse_delete(s: Store, number: int, booted: int | None, default: int | None) -> None:
    broken = s.get(number).broken
    if broken:
        die(f"snapshot {number} is left alone: {shown(broken)}",
            hint=f"repair {s.info_path(number)} first, or remove the snapshot yourself "
                 f"('btrfs subvolume delete {s.path(number)}')", code=ExitCode.REFUSED)
    if number == booted:
        die(f"snapshot {number} is the booted system and cannot be deleted",
            hint="boot another snapshot first", code=ExitCode.REFUSED)
    if number == default:
        die(f"snapshot {number} is the default for the next boot and cannot be deleted",
            hint="make another snapshot the default with 'amber rollback N' first",
            code=ExitCode.REFUSED)


def delete(root: Path, refs: list[Ref], *, wait: bool = False) -> None:
    s = store(root)
    with locked(s, wait):
        booted, default = s.booted(), s.default()
        numbers = list(dict.fromkeys(s.resolve(ref) for ref in refs))
        for n in numbers:
            _refuse_delete(s, n, booted, default)
        refresh_menu(s, exclude=numbers)  # out of the menu before they are gone
        for n in numbers:
            s.delete(n)
            log.info(f"deleted snapshot {n}")


def cleanup_candidates(snapshots: list[Snapshot], keep: int, protected: set[int],
                       read_only: Collection[int] = ()) -> list[int]:
    """Unfinished transactions (marked in progress and writable), then everything beyond the
    newest `keep` that is not pinned or protected (booted, default). A snapshot whose metadata
    is broken is never a candidate: nothing proves it unfinished or unpinned."""
    snapshots = [s for s in snapshots if not s.broken]

    def unfinished(s: Snapshot) -> bool:
        return s.in_progress and s.number not in read_only and not s.pinned

    doomed = [s.number for s in snapshots if unfinished(s) and s.number not in protected]
    finished = [s for s in snapshots if not unfinished(s)]
    newest = {s.number for s in sorted(finished, key=lambda s: s.number)[-keep:]}
    doomed += [s.number for s in finished
               if s.number not in newest and s.number not in protected and not s.pinned]
    return sorted(doomed)


def _is_leftover(s: Store, number: int) -> bool:
    """A directory that holds no snapshot and nothing but metadata (a crash between reserving
    the number and making the snapshot); anything else in it is not amber's to remove."""
    import os

    directory = s.dir / str(number)
    try:
        return not directory.is_symlink() and set(os.listdir(directory)) <= {"info.xml",
                                                                               "info.xml.tmp"}
    except OSError:
        return False


def cleanup(root: Path, *, keep: int | None = None, wait: bool = False) -> list[int]:
    from amber import config

    s = store(root)
    if keep is None:
        keep = config.load(root).snapshots.keep
    if keep < 1:
        die("--keep must be at least 1", code=ExitCode.USAGE)
    with locked(s, wait) as lock:
        protected = {n for n in (s.booted(), s.default()) if n is not None}
        snapshots = s.list()
        for snapshot in snapshots:
            if snapshot.broken:
                _warn_broken(s, snapshot)
        read_only = {n for n, flag in s.read_only_flags().items() if flag}
        doomed = cleanup_candidates(snapshots, keep, protected, read_only)
        if doomed:
            refresh_menu(s, exclude=doomed)  # out of the menu before they are gone
        for n in doomed:
            s.delete(n)
        doomed = sorted([*lock.recovered, *doomed])
        # Directories without a snapshot are leftovers of a crash before the snapshot existed.
        for n in s.numbers():
            if n not in protected and _is_leftover(s, n):
                s.delete(n)
    log.info(f"removed {len(doomed)} snapshot(s)" + (f": {', '.join(map(str, doomed))}"
                                                     if doomed else ""))
    return doomed
