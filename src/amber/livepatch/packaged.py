"""Live patch packages that arrive through an ordinary transaction (`up`, `pkg install`,
`pkg update`, `run`): treated as `amber livepatch apply` treats them.

The transaction's own change runs first; then the live patch modules of the running kernel in
the working snapshot (/lib/modules/<running release>/livepatch/) are compared with the ones it
started with. A new or changed module is checked against the running kernel before the snapshot
commits (the preflight of apply), the initrd is configured to load it early and regenerated,
and after the commit it is loaded; a failed load withdraws the snapshot (all or nothing).

When live patching is disabled, or the snapshot boots another kernel than the running one, the
package stays installed and nothing is loaded: the snapshot's info.xml says why
(`livepatch-inactive`), and `amber status` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from amber import config, log, transaction
from amber.log import AmberError, ExitCode, die

if TYPE_CHECKING:
    from amber.livepatch import kernel
    from amber.livepatch.module import ModuleInfo

INACTIVE_KEY = "livepatch-inactive"


def livepatch_dir(snapshot: Path, release: str) -> Path:
    from amber.boot.kernels import modules_dir

    return modules_dir(snapshot) / release / "livepatch"


def identities(directory: Path, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """{file name: (inode, size, mtime)} by stat alone: reading would update access times and
    so change the snapshot (--drop-if-no-change compares its generation)."""
    found = {}
    for name in names:
        try:
            st = (directory / name).lstat()
        except FileNotFoundError:
            continue
        found[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def names(directory: Path) -> list[str]:
    """The entries of a folder, listed without updating its access time."""
    import os

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME | os.O_CLOEXEC)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def arrived(base: Path, work: Path, release: str) -> list[str]:
    """The live patch modules for `release` that the transaction added or changed (by module
    name), by stat and listing alone, so that a transaction that changes nothing stays
    unchanged: following a symbolic link in the working snapshot would update its access time
    (and --drop-if-no-change compares the snapshot's generation)."""
    from amber.livepatch.module import module_name_from_path
    from amber.livepatch.sources import is_module_file

    old_dir = livepatch_dir(base, release).resolve()
    try:  # the same folder in the working snapshot, without following its links (lib -> usr/lib)
        new_dir = work / old_dir.relative_to(base.resolve())
    except ValueError:
        new_dir = livepatch_dir(work, release)
    if not new_dir.is_dir():
        return []
    old_names = names(old_dir) if old_dir.is_dir() else []
    new_names = names(new_dir)
    before, after = identities(old_dir, old_names), identities(new_dir, new_names)
    return sorted({module_name_from_path(new_dir / n) for n, ident in after.items()
                   if is_module_file(n) and before.get(n) != ident})


def other_kernels(base: Path, work: Path, running: str) -> dict[str, list[str]]:
    """{release: live patches the transaction added} for the kernels other than `running`."""
    from amber.boot.kernels import modules_dir

    folder = modules_dir(base).resolve()
    try:
        folder = work / folder.relative_to(base.resolve())
    except ValueError:
        folder = modules_dir(work)
    if not folder.is_dir():
        return {}
    found = {}
    for release in names(folder):
        if release != running and (folder / release / "livepatch").is_dir():
            added = arrived(base, work, release)
            if added:
                found[release] = added
    return found


@dataclass
class Pending:
    """What the steps found, for the load after the commit."""
    name: str | None = None
    file: Path | None = None
    module: ModuleInfo | None = None
    notes: list[str] = field(default_factory=list)


def prepare(chroot: transaction.WorkingSnapshot, running: str, name: str, file: Path,
            paths: kernel.KernelPaths) -> ModuleInfo:
    """Inside the transaction, before the commit: the preflight, depmod and the initrd."""
    from amber.boot import initrd
    from amber.livepatch import policy
    from amber.livepatch.apply import (
        LIVEPATCH_KEY,
        LIVEPATCH_ONLY_KEY,
        LIVEPATCH_RELEASE_KEY,
        put_in_initrd,
    )

    settings = config.load(chroot.root).livepatch
    log.step(f"the transaction installs live patch {name}: checking it (preflight)")
    checked = policy.check_module(file, settings, root=chroot.root, kernel_releases=[running],
                                  paths=paths)
    snapshot = chroot.path
    generator = initrd.generator(snapshot)
    log.step(f"depmod {running}")
    chroot.run(["depmod", "-a", running], step="depmod")
    put_in_initrd(chroot, generator, running, name, ())
    userdata = {LIVEPATCH_KEY: name, LIVEPATCH_RELEASE_KEY: running}
    if only_livepatch_packages(chroot, file):
        userdata[LIVEPATCH_ONLY_KEY] = "yes"
    chroot.store.update(chroot.number, userdata)
    return checked.module


def only_livepatch_packages(chroot: transaction.WorkingSnapshot, file: Path) -> bool:
    """Whether the only package changes since the base are the live patch's own packages: then
    `amber status` needs no reboot while the patch is active (the rule of apply)."""
    from amber.packages import database

    changes = database.diff(chroot.store.path(chroot.base), chroot.path)
    touched = {*changes.added, *changes.removed, *changes.changed}
    return bool(touched) and touched <= database.owners(chroot.path, [file])


def watching(steps: transaction.Steps, pending: Pending, running: str,
             paths: kernel.KernelPaths) -> transaction.Steps:
    """The transaction's steps, followed by the handling of the live patches they brought."""
    from amber.boot.kernels import boot_kernel

    def watched(chroot: transaction.WorkingSnapshot) -> None:
        steps(chroot)
        base = chroot.store.path(chroot.base)
        new = arrived(base, chroot.path, running)
        if not new:
            for release, names_ in other_kernels(base, chroot.path, running).items():
                why = f"it is for kernel {release}, not the running kernel {running}"
                log.warn(f"live patch {', '.join(names_)} is installed but not active: {why}")
                chroot.store.update(chroot.number, {INACTIVE_KEY: f"{names_[0]}: {why}"})
            return
        from amber.livepatch.view import installed_patches

        settings = config.load(chroot.root).livepatch
        booting = boot_kernel(chroot.path)
        if len(new) > 1:
            die(f"the transaction installs {len(new)} live patches for the running kernel "
                f"({', '.join(new)}); amber loads one cumulative live patch at a time",
                hint="install only the newest live patch package", code=ExitCode.REFUSED)
        name = new[0]
        reason: str | None = None
        if not settings.enabled:
            reason = "live patching is disabled (amber livepatch enable)"
        elif booting != running:
            reason = (f"snapshot {chroot.number} boots kernel {booting}, the live patch is for "
                      f"the running kernel {running}")
        if reason:
            log.warn(f"live patch {name} is installed but not active: {reason}")
            chroot.store.update(chroot.number, {INACTIVE_KEY: f"{name}: {reason}"})
            pending.notes.append(f"{name}: {reason}")
            return
        file = installed_patches(chroot.path, running)[name]
        pending.module = prepare(chroot, running, name, file, paths)
        pending.name, pending.file = name, file

    return watched


def execute(options: transaction.Options, steps: transaction.Steps, description: str, *,
            paths: kernel.KernelPaths | None = None,
            syscalls: kernel.Syscalls | None = None) -> transaction.Result:
    """transaction.execute, with the live patches the steps install loaded after the commit."""
    from amber.boot.kernels import running_release
    from amber.livepatch import kernel
    from amber.livepatch.apply import waiting
    from amber.snapshots import Store

    paths = paths or kernel.KernelPaths.from_environment()
    store = Store(options.root)
    store.check()
    state_before = transaction.read_state(store)
    default_before = store.default()
    pending = Pending()
    result = transaction.execute(options, watching(steps, pending, running_release(), paths),
                                 description)
    if result.number is None or pending.name is None:
        return result
    assert pending.file is not None and pending.module is not None
    settings = config.load(options.root).livepatch
    log.step(f"Loading live patch {pending.name}")
    try:
        removed = kernel.load(pending.file, pending.module, paths, waiting(None, settings),
                              syscalls or kernel.LinuxSyscalls())
    except AmberError as e:
        transaction.withdraw(store, result.number, default_before,
                             state_before.get("previous_default"))
        e.hint = ((e.hint + "; ") if e.hint else "") + (
            f"snapshot {result.number} was withdrawn, the default is {default_before} again")
        raise
    for leftover in removed:
        log.info(f"unloaded the replaced live patch {leftover}")
    log.info(f"live patch {pending.name} is active now, and snapshot {result.number} loads it "
             "at every boot")
    return result
