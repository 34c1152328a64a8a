"""The state of a system root and the snapshot commands: status, snapshots, rollback, pin,
delete, cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from amber import log
from amber.log import ExitCode, die
from amber.snapshots import PINNED_KEY, Ref, Snapshot, Store, shown, unicode_text
from amber.transaction import locked, read_lock_record, read_state, set_default


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
    extra: dict[str, Any]
    # The live patch, active now, that is the only change from booted to default.
    covered_by_livepatch: str | None = None
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
                "etc_conflicts": list(self.etc_conflicts), **self.extra}

    def render(self) -> str:
        lines = [f"booted snapshot:   {self.booted}", f"default snapshot:  {self.default}"]
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
        livepatch = self.extra.get("livepatch")
        if livepatch:
            lines += livepatch["lines"]
            for drift in livepatch["drift"]:
                lines += [f"warning: {drift['warning']}", f"  hint: {drift['resolve']}"]
        return "\n".join(lines)


def status(root: Path) -> Status:
    s = store(root)
    held, record = read_lock_record(s)
    number = record.get("snapshot")
    running = [number] if held and isinstance(number, int) else []
    interrupted = [number] if not held and isinstance(number, int) else []
    if interrupted and _recover_if_possible(s) is not None:
        interrupted = []
    booted, default = s.booted(), s.default()
    extra, covered = _livepatch_status(s, booted, default)
    return Status(str(root), booted, default, running, interrupted, extra, covered,
                  _etc_conflicts(root, booted))


def _etc_conflicts(root: Path, booted: int | None) -> tuple[str, ...]:
    if booted is None or not (root / "var/lib/amber/etc-merge" / str(booted)).is_dir():
        return ()  # the usual case, without importing the merge
    from amber.etc.pending import stored_conflicts
    from amber.etc.tree import decode

    return tuple(decode(c.path) for c in stored_conflicts(root, booted))


def _livepatch_status(s: Store, booted: int | None, default: int | None
                      ) -> tuple[dict[str, Any], str | None]:
    """The live patch view, only where live patching is in play (a kernel that supports it, or
    a snapshot that carries a patch); its modules are imported only then."""
    from amber.boot import kernels

    sysfs = kernels.livepatch_sysfs()
    numbers = {n for n in (booted, default) if n is not None and s.exists(n)}
    carries = any("livepatch" in s.get(n).userdata for n in numbers)  # apply.LIVEPATCH_KEY
    if not sysfs.is_dir() and not carries:
        return {}, None
    from amber.livepatch import apply, kernel, view

    paths = kernel.KernelPaths.from_environment()
    seen = view.view(s.root, paths, check_initrd=False)
    active = {p.name for p in seen.patches if p.active}
    covered = apply.covering_patch(s, booted, default, active)
    return {"livepatch": {**seen.as_json(), "lines": seen.render(),
                          "drift": [{"warning": w, "resolve": r}
                                    for w, r in seen.warnings()]}}, covered


def _recover_if_possible(s: Store) -> list[int] | None:
    """A crashed transaction is cleaned up by the next amber command, status included, when it
    can take the lock (root on a writable /.snapshots); otherwise it is only reported."""
    try:
        with locked(s, wait=False):
            return []
    except (log.AmberError, OSError):
        return None


# ---- listing -----------------------------------------------------------------------------------

class Row(NamedTuple):
    snapshot: Snapshot
    read_only: bool
    default: bool
    booted: bool

    def as_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"number": s.number, "date": unicode_text(s.date),
                "description": unicode_text(s.description),
                "read_only": self.read_only, "default": self.default, "booted": self.booted,
                "pinned": s.pinned, "in_progress": s.in_progress,
                "cleanup": unicode_text(s.cleanup), "type": unicode_text(s.type),
                "userdata": {unicode_text(k): unicode_text(v) for k, v in s.userdata.items()},
                "broken": s.broken or None}


def snapshot_rows(root: Path) -> list[Row]:
    s = store(root)
    booted, default = s.booted(), s.default()
    flags = s.read_only_flags()
    rows = [Row(s.get(n), flags[n], n == default, n == booted) for n in s.numbers() if n in flags]
    for row in rows:
        if row.snapshot.broken:
            _warn_broken(s, row.snapshot)
    return rows


def _warn_broken(s: Store, snapshot: Snapshot) -> None:
    log.warn(f"snapshot {snapshot.number}: {shown(snapshot.broken)}; amber leaves it alone",
             hint=f"repair or remove {s.info_path(snapshot.number)}")


def render_snapshot_table(rows: list[Row]) -> str:
    lines = [f"{'#':>5}  {'flags':<6} {'date':<19}  description"]
    for r in rows:
        flags = ("*" if r.booted else " ") + ("+" if r.default else " ") + \
                ("P" if r.snapshot.pinned else " ") + ("w" if not r.read_only else " ") + \
                ("!" if r.snapshot.broken else " ")
        text = f"({r.snapshot.broken})" if r.snapshot.broken else r.snapshot.description
        lines.append(f"{r.snapshot.number:>5}  {flags:<6} {shown(r.snapshot.date):<19}  "
                     f"{shown(text)}")
    lines.append("flags: * booted, + default (next boot), P pinned, w writable, "
                 "! metadata unreadable")
    return "\n".join(lines)


# ---- changing which snapshot boots ---------------------------------------------------------------

def resolve_pair(root: Path, a: Ref, b: Ref) -> tuple[int, int]:
    s = store(root)
    return s.resolve(a), s.resolve(b)


def rollback(root: Path, target: Ref | None, *, revert_livepatches: bool = False,
             wait: bool = False) -> dict[str, Any]:
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
    log.info(f"snapshot {number} {'pinned' if pinned else 'unpinned'}")


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
        for n in numbers:
            s.delete(n)
            log.info(f"deleted snapshot {n}")


def cleanup_candidates(snapshots: list[Snapshot], keep: int, protected: set[int]) -> list[int]:
    """Unfinished transactions, then everything beyond the newest `keep` that is not pinned
    or protected (booted, default). A snapshot whose metadata is broken is never a candidate:
    nothing proves it unfinished or unpinned."""
    snapshots = [s for s in snapshots if not s.broken]
    doomed = [s.number for s in snapshots if s.in_progress and s.number not in protected]
    finished = [s for s in snapshots if not s.in_progress]
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
    with locked(s, wait):
        protected = {n for n in (s.booted(), s.default()) if n is not None}
        snapshots = s.list()
        for snapshot in snapshots:
            if snapshot.broken:
                _warn_broken(s, snapshot)
        doomed = cleanup_candidates(snapshots, keep, protected)
        for n in doomed:
            s.delete(n)
        # Directories without a snapshot are leftovers of a crash before the snapshot existed.
        for n in s.numbers():
            if n not in protected and _is_leftover(s, n):
                s.delete(n)
    log.info(f"removed {len(doomed)} snapshot(s)" + (f": {', '.join(map(str, doomed))}"
                                                     if doomed else ""))
    return doomed
