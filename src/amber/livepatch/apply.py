"""`amber livepatch apply`: a live patch that is active now, after every reboot into the new
snapshot, and absent after a rollback to an older one ("A live patch" in the design).

    preflight   every check before any snapshot exists: the module (taken out of the package
                on the host) against the running kernel and the kernel of the snapshot that
                will boot next, the signature policy, the kernel's own rules
    transaction install the package (or the bare module) into a new snapshot, drop the
                previous live patch, depmod, make the initrd load the module early, regenerate
                the initrd, close: the new snapshot is the default
    load now    finit_module and wait for the transition (the engine, kernel.py)
    withdraw    a failed load restores the previous default and deletes the new snapshot

The new snapshot's info.xml userdata names the patch it carries (`livepatch=<name>`) and says
whether the transaction changed nothing else (`livepatch-only=yes`), which lets `amber status`
know that no reboot is needed while that patch is active.

Also here: what each snapshot and the running kernel say about live patches (the status
view), and reverting the patches a rollback target does not have.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber import config, log, transaction
from amber.boot import initrd
from amber.boot.kernels import boot_kernel, modules_dir, running_release
from amber.livepatch import kernel, policy
from amber.livepatch.early import configure_initrd
from amber.livepatch.module import ModuleInfo
from amber.livepatch.module import read as read_module
from amber.livepatch.policy import Mode as Mode
from amber.livepatch.sources import Source, resolve
from amber.livepatch.view import carried, installed_patches, next_boot_patches
from amber.log import AmberError, ExitCode, die
from amber.packages import database
from amber.snapshots import Store, number_of_name

LIVEPATCH_KEY = "livepatch"
LIVEPATCH_ONLY_KEY = "livepatch-only"
LIVEPATCH_RELEASE_KEY = "livepatch-kernel"




# ---- sources: package files, package names, bare modules ----------------------------------


# ---- kernels and snapshots ----------------------------------------------------------------


# ---- preflight ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    root: Path
    mode: Mode
    sources: tuple[Source, ...]
    module: ModuleInfo
    module_file: Path  # on the host
    running: str
    base: str | None  # for transaction.Options
    base_number: int | None
    next_release: str | None  # the kernel of the snapshot the transaction starts from
    warnings: tuple[str, ...] = ()


def pick_base(store: Store, base: str | None) -> tuple[str | None, int | None]:
    """The snapshot the transaction starts from: by default the next boot's (so that a pending
    update is kept, never silently dropped), else the booted one."""
    if base == "booted":
        return None, store.booted()
    if base is not None and base != "default":
        if not base.isdigit():
            die(f"--base takes a snapshot number, 'booted' or 'default', not {base!r}",
                code=ExitCode.USAGE)
        store.require(int(base))
        return base, int(base)
    default, booted = store.default(), store.booted()
    if default is not None:
        return "default", default
    return None, booted


def make_plan(root: Path, arguments: Sequence[str], mode: Mode, base: str | None,
              work: Path, paths: kernel.KernelPaths) -> Plan:
    """The preflight: every check before any snapshot exists, and what the transaction does."""
    settings = config.load(root).livepatch
    policy.require_enabled(settings)  # before downloading or unpacking anything
    sources = tuple(resolve(root, a, work / str(i), settings.max_module_size)
                    for i, a in enumerate(arguments))
    files = [f for s in sources for f in s.modules]
    running = running_release()
    base_option, number, next_release = None, None, None
    if mode != Mode.LIVE_ONLY:
        store = Store(root)
        store.check()
        base_option, number = pick_base(store, base)
        next_release = boot_kernel(store.path(number)) if number is not None else None
    if mode == Mode.LIVE_ONLY:
        releases = [running]
    elif mode == Mode.NEXT_BOOT:
        releases = [next_release] if next_release else []
    else:
        releases = list(dict.fromkeys([running, *([next_release] if next_release else [])]))
    checked = []
    for f in files:
        info = read_module(f, settings.max_module_size)
        if mode != Mode.LIVE_ONLY:
            policy.check_next_boot(info, running, next_release, number, mode)
        checked.append(policy.check_module(f, settings, root=root, kernel_releases=releases,
                                           paths=paths))
    if len(checked) != 1:
        names = ", ".join(c.module.name for c in checked)
        die(f"{len(checked)} live patches given ({names}); amber applies one cumulative live "
            "patch at a time", hint="pass the newest one: it replaces the others",
            code=ExitCode.REFUSED)
    only = checked[0]
    return Plan(root, mode, sources, only.module, files[0], running, base_option, number,
                next_release, only.warnings)


# ---- the transaction ----------------------------------------------------------------------


def install_steps(plan: Plan, timings: dict[str, float], how: dict[str, str],
                  rebuild_initrd: bool = False) -> transaction.Steps:
    release = plan.next_release or plan.running
    name = plan.module.name

    def steps(chroot: transaction.WorkingSnapshot) -> None:
        started = time.monotonic()
        snapshot = chroot.path
        generator = initrd.generator(snapshot)  # no generator: refuse before changing anything
        previous = {n: f for n, f in installed_patches(snapshot, release).items() if n != name}
        new_packages = {s.package for s in plan.sources if s.package}
        stale = sorted(database.owners(snapshot, list(previous.values())) - new_packages)
        if stale:
            log.step(f"removing the previous live patch package(s): {', '.join(stale)}")
            chroot.run_package_manager("remove", stale, step="removing the previous live patch")
        for leftover in previous.values():
            if leftover.exists():  # a bare module installed by an earlier apply
                log.step(f"removing the previous live patch module {leftover.name}")
                leftover.unlink()
        install_sources(chroot, plan, release)
        log.step(f"depmod {release}")
        chroot.run(["depmod", "-a", release], step="depmod")
        timings["transaction"] = time.monotonic() - started
        started = time.monotonic()
        how["initrd"] = put_in_initrd(chroot, generator, release, name, list(previous),
                                      rebuild_initrd)
        timings["initrd"] = time.monotonic() - started
        chroot.store.update(chroot.number, {LIVEPATCH_KEY: name, LIVEPATCH_RELEASE_KEY: release,
                                            LIVEPATCH_ONLY_KEY: "yes"})

    return steps


def put_in_initrd(chroot: transaction.WorkingSnapshot, generator: str, release: str, name: str,
                  previous: Sequence[str], rebuild: bool = False) -> str:
    """Make the snapshot's initrd of `release` load live patch `name` early, in place of the
    `previous` ones: the generator's configuration says so (kept by every later regeneration),
    and the initrd gets the module by an appended overlay (seconds), or, with `rebuild` or
    where it cannot take one, is regenerated in full. Returns "appended" or "regenerated"."""
    from amber.boot import initrd_overlay
    from amber.livepatch.early import initrd_patches

    snapshot = chroot.path
    old = sorted({*previous, *initrd_patches(snapshot)} - {name})
    configure_initrd(snapshot, generator, name, old)
    image = initrd.initrd_path(snapshot, release)
    if not rebuild:
        module = installed_patches(snapshot, release).get(name)
        try:
            if module is None:
                raise initrd_overlay.CannotAppend(f"the snapshot has no module {name}")
            if not image.is_file():
                raise initrd_overlay.CannotAppend("there is none yet")
            size = initrd_overlay.add_livepatch(image, generator, release, module, name, old,
                                                modules_dir(snapshot) / release)
            log.step(f"appended {name} to the initrd /{image.relative_to(snapshot)} "
                     f"({size >> 10} KiB, no regeneration)")
            return "appended"
        except initrd_overlay.CannotAppend as e:
            log.warn(f"the initrd /{image.relative_to(snapshot)} cannot take the live patch "
                     f"appended: {e}", hint="it is regenerated in full instead")
    for argv in initrd.commands(snapshot, [release]):
        log.step(f"regenerating the initrd: {' '.join(argv)}")
        chroot.run(argv, step="initrd regeneration")
    return "regenerated"


def install_sources(chroot: transaction.WorkingSnapshot, plan: Plan, release: str) -> None:
    package_files = [s.file for s in plan.sources if s.kind != "module"]
    if package_files:
        with chroot.host_files(package_files) as inside:
            chroot.run_package_manager("install", inside, announce="installing",
                                       step="installing the live patch package")
    for source in plan.sources:
        if source.kind == "module":
            target = modules_dir(chroot.path) / release / "livepatch" / source.file.name
            log.step(f"installing {target.relative_to(chroot.path)}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.file, target)
    if plan.module.name not in installed_patches(chroot.path, release):
        die(f"after the installation, snapshot {chroot.number} has no {plan.module.name} "
            f"in /lib/modules/{release}/livepatch/",
            hint="a live patch package must install its module there",
            code=ExitCode.INCOMPATIBLE)


# ---- load, withdraw -----------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    name: str
    mode: Mode
    snapshot: int | None
    base: int | None
    loaded: bool
    replaced: tuple[str, ...]
    kept_after_failure: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    initrd: str | None = None  # "appended" or "regenerated"; None: no snapshot was made

    def as_json(self) -> dict[str, Any]:
        return {"livepatch": self.name, "mode": self.mode, "snapshot": self.snapshot,
                "base": self.base, "default": self.snapshot, "active": self.loaded,
                "replaced": list(self.replaced), "timings": self.timings,
                "initrd": self.initrd, "warnings": list(self.warnings)}


def waiting(timeout: float | None, settings: config.LivepatchConfig) -> kernel.Waiting:
    def progress(count: int) -> None:
        log.info(f"  {count} task(s) not yet switched")

    return kernel.Waiting(timeout=timeout if timeout is not None
                          else settings.transition_timeout, progress=progress)


@contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="amber-livepatch-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply(root: Path, arguments: Sequence[str], *, mode: Mode = Mode.NOW, keep: bool = False,
          timeout: float | None = None, base: str | None = None, wait: bool = False,
          health: bool = True, paths: kernel.KernelPaths | None = None,
          syscalls: kernel.Syscalls | None = None, rebuild_initrd: bool = False) -> Outcome:
    paths = paths or kernel.KernelPaths.from_environment()
    syscalls = syscalls or kernel.LinuxSyscalls()
    settings = config.load(root).livepatch
    timings: dict[str, float] = {}
    how: dict[str, str] = {}
    with workspace() as work:
        started = time.monotonic()
        log.step("Checking the live patch (preflight)")
        plan = make_plan(root, arguments, mode, base, work, paths)
        timings["preflight"] = time.monotonic() - started
        name = plan.module.name
        if mode == Mode.LIVE_ONLY:
            started = time.monotonic()
            log.step(f"Loading live patch {name} into the running kernel only")
            removed = kernel.load(plan.module_file, plan.module, paths,
                                  waiting(timeout, settings), syscalls)
            timings["load"] = time.monotonic() - started
            log.warn(f"live patch {name} is active in the running kernel only: the next reboot "
                     "drops it", hint="to keep it across reboots: amber livepatch apply "
                     + " ".join(arguments))
            return Outcome(name, mode, None, None, True, tuple(removed), timings=timings,
                           warnings=plan.warnings)
        store = Store(root)
        state_before = transaction.read_state(store)
        default_before = store.default()
        options = transaction.Options(root=root, base=plan.base, wait=wait)
        result = transaction.execute(options, install_steps(plan, timings, how, rebuild_initrd),
                                     f"amber livepatch apply {name}")
        assert result.number is not None
        if mode == Mode.NEXT_BOOT:
            log.info(f"live patch {name} is installed in snapshot {result.number}, the default "
                     "for the next boot; it is not loaded now")
            return Outcome(name, mode, result.number, result.base, False, (), timings=timings,
                           warnings=plan.warnings, initrd=how.get("initrd"))
        started = time.monotonic()
        log.step(f"Loading live patch {name}")
        try:
            removed = kernel.load(plan.module_file, plan.module, paths,
                                  waiting(timeout, settings), syscalls)
        except AmberError as e:
            timings["load"] = time.monotonic() - started
            if keep:
                log.warn(f"snapshot {result.number} stays the default (--keep): the next boot "
                         f"loads {name}, but the running kernel is not patched")
                raise
            transaction.withdraw(store, result.number, default_before,
                                 state_before.get("previous_default"))
            e.hint = ((e.hint + "; ") if e.hint else "") + (
                f"snapshot {result.number} was withdrawn, the default is "
                f"{default_before} again")
            raise
        timings["load"] = time.monotonic() - started
        for leftover in removed:
            log.info(f"unloaded the replaced live patch {leftover}")
        if health:
            started = time.monotonic()
            healthy(store, name, removed, paths, waiting(timeout, settings), syscalls,
                    lambda: transaction.withdraw(store, result.number or 0, default_before,
                                                 state_before.get("previous_default")),
                    (default_before, store.booted()))
            timings["health"] = time.monotonic() - started
        log.info(f"live patch {name} is active now, and snapshot {result.number} (the default) "
                 "loads it at every boot; no reboot needed")
        return Outcome(name, mode, result.number, result.base, True, tuple(removed),
                       timings=timings, warnings=plan.warnings, initrd=how.get("initrd"))


def healthy(store: Store, name: str, replaced: Sequence[str], paths: kernel.KernelPaths,
            wait: kernel.Waiting, syscalls: kernel.Syscalls, withdraw: Callable[[], None],
            sources: Sequence[int | None]) -> None:
    """The health checks on the running system with the patch active; if one fails, the
    running kernel gets back what it had (the patch out, the patches it replaced in again, from
    the `sources` snapshots: the default before, then the booted one) and the snapshot is
    withdrawn: all or nothing."""
    from amber.health import checks

    log.step("Running the health checks with the patch active")
    failed = [r for r in checks.run(store, livepatches=False) if not r.passed]
    if not failed:
        return
    what = "; ".join(f"{r.name}: {r.summary}" for r in failed)
    log.warn(f"health check failed with {name} active: {what}")
    kernel.unload(paths, name, wait, syscalls)
    for previous in replaced:
        for number in sources:
            if number is None or not store.exists(number):
                continue
            present = installed_patches(store.path(number), running_release())
            if previous in present:
                kernel.load(present[previous], read_module(present[previous]), paths, wait,
                            syscalls)
                log.info(f"loaded {previous} again, as before")
                break
        else:
            log.warn(f"{previous}, which {name} replaced, is in no snapshot to load it from",
                     hint="the running kernel stays without it until the next reboot")
    withdraw()
    die(f"live patch {name} was reverted: a health check failed with it active ({what})",
        hint="the running kernel and the default are as before; --no-health skips the checks",
        code=ExitCode.STEP_FAILED)


# ---- revert -------------------------------------------------------------------------------

def revert(root: Path, name: str, *, timeout: float | None = None,
           paths: kernel.KernelPaths | None = None,
           syscalls: kernel.Syscalls | None = None) -> list[str]:
    """Disable and unload a live patch now (and leftovers of atomic replace)."""
    paths = paths or kernel.KernelPaths.from_environment()
    syscalls = syscalls or kernel.LinuxSyscalls()
    settings = config.load(root).livepatch
    log.step(f"Reverting live patch {name} in the running kernel")
    kernel.unload(paths, name, waiting(timeout, settings), syscalls)
    removed = [name, *kernel.cleanup_replaced(paths, syscalls)]
    if name in next_boot_patches(root):
        log.warn(f"the next boot still loads {name} from its initrd",
                 hint="'amber rollback N' to a snapshot without it (see 'amber snapshots')")
    return removed


# ---- the view: running kernel, booted snapshot, next boot ---------------------------------


def revert_for_rollback(root: Path, target: int, apply_now: bool,
                        paths: kernel.KernelPaths | None = None,
                        syscalls: kernel.Syscalls | None = None) -> list[str]:
    """After a rollback to `target`: warn about patches the running kernel has and the target
    does not; with apply_now, make the running kernel match the target now (load the target's
    cumulative patch, which replaces the others, or unload them)."""
    paths = paths or kernel.KernelPaths.from_environment()
    active = [p.name for p in kernel.patches(paths) if p.enabled]
    wanted = carried(root, target)
    foreign = [n for n in active if n not in wanted]
    if not foreign:
        return []
    if not apply_now:
        for name in foreign:
            log.warn(f"the running kernel stays patched with {name} until the next reboot; "
                     f"snapshot {target} does not have it",
                     hint=f"amber livepatch revert {name} (or amber rollback "
                          "--revert-livepatches) unloads it now")
        return []
    syscalls = syscalls or kernel.LinuxSyscalls()
    settings = config.load(root).livepatch
    if wanted:
        name, file = next(iter(wanted.items()))
        log.step(f"Loading snapshot {target}'s live patch {name} (replaces {', '.join(foreign)})")
        module = read_module(file, settings.max_module_size)
        kernel.load(file, module, paths, waiting(None, settings), syscalls)
        return foreign
    for name in foreign:
        log.step(f"Reverting live patch {name} in the running kernel")
        kernel.unload(paths, name, waiting(None, settings), syscalls)
    kernel.cleanup_replaced(paths, syscalls)
    return foreign


def covering_patch(store: Store, booted: int | None, default: int | None,
                   active: set[str]) -> str | None:
    """The live patch that stands for every change between the booted and the default
    snapshot, when it is active in the running kernel: then no reboot is needed.

    Every snapshot from the default down to the booted one (through their bases) must be a
    live-patch-only transaction; the newest one's cumulative patch must be active now.
    """
    if booted is None or default is None or booted == default:
        return None
    name = store.get(default).userdata.get(LIVEPATCH_KEY)
    if not name or name not in active:
        return None
    number, visited = default, set()
    while number != booted:
        if number in visited or not store.exists(number):
            return None
        visited.add(number)
        userdata = store.get(number).userdata
        base = number_of_name(userdata.get("base", ""))
        if userdata.get(LIVEPATCH_ONLY_KEY) != "yes" or base is None:
            return None
        number = base
    return name
