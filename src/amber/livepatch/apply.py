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

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber import config, initrd, log, packages, transaction
from amber.livepatch import kernel, payload
from amber.livepatch.module import ModuleInfo, module_name_from_path
from amber.livepatch.module import read as read_module
from amber.log import AmberError, ExitCode, die
from amber.run import run
from amber.snapshots import Store, number_of_name

LIVEPATCH_KEY = "livepatch"
LIVEPATCH_ONLY_KEY = "livepatch-only"
LIVEPATCH_RELEASE_KEY = "livepatch-kernel"
DRACUT_CONF = "etc/dracut.conf.d/50-amber-livepatch.conf"
INITRAMFS_MODULES = "etc/initramfs-tools/modules"
INITRAMFS_MARKER = "# live patch, loaded early (managed by amber livepatch apply)"

MODES = ("now", "next-boot", "live-only")


# ---- sources: package files, package names, bare modules ----------------------------------

@dataclass(frozen=True)
class Source:
    argument: str  # as the admin gave it
    file: Path  # the package or module file on the host
    kind: str  # "deb", "rpm" or "module"
    package: str | None  # the package's name
    modules: tuple[Path, ...]  # module files extracted on the host


def is_module_file(name: str) -> bool:
    return name.endswith(payload.MODULE_SUFFIXES)


def package_name(file: Path, kind: str) -> str:
    if kind == "deb":
        return run(["dpkg-deb", "-f", file, "Package"], capture=True).stdout.strip()
    return run(["rpm", "-qp", "--qf", "%{NAME}", file], capture=True).stdout.strip()


def download(root: Path, name: str, dest: Path) -> Path:
    """A package from the system's repositories, fetched (not installed) for the preflight."""
    dest.mkdir(parents=True)
    manager = packages.detect(root)
    if manager == "apt":
        run(["apt-get", "download", name], cwd=dest, capture=True,
            where=f"while downloading {name}")
    elif manager == "dnf":
        run(["dnf", "download", "--destdir", dest, name], capture=True,
            where=f"while downloading {name}")
    elif manager == "zypper":
        run(["zypper", "--non-interactive", "--pkg-cache-dir", dest, "download", name],
            capture=True, where=f"while downloading {name}")
    else:
        die(f"cannot fetch package {name}: plain rpm has no repositories",
            hint="pass the .rpm file instead", code=ExitCode.ENVIRONMENT)
    files = sorted(p for p in dest.rglob("*") if p.name.endswith(packages.PACKAGE_SUFFIXES))
    if not files:
        die(f"the package manager fetched no package file for {name}",
            hint="check the name with your package manager", code=ExitCode.NOT_FOUND)
    return files[0]


def resolve(root: Path, argument: str, work: Path,
            limit: int = config.DEFAULT_MAX_MODULE_SIZE) -> Source:
    """The module files of a package file, package name or module file; a package's payload
    is unpacked in memory, at most limit bytes of it ([livepatch] max_module_size)."""
    path = Path(argument)
    if is_module_file(argument):
        if not path.is_file():
            die(f"module file {argument} does not exist", hint="check the path",
                code=ExitCode.NOT_FOUND)
        return Source(argument, path, "module", None, (path,))
    if argument.endswith(packages.PACKAGE_SUFFIXES):
        if not path.is_file():
            die(f"package file {argument} does not exist",
                hint="check the path; a package name has no .rpm or .deb ending",
                code=ExitCode.NOT_FOUND)
        file = path
    elif "/" in argument:
        die(f"{argument} is neither a package (.rpm, .deb) nor a module (.ko, .ko.xz, .ko.zst)",
            hint="pass a live patch package, a package name or a module file",
            code=ExitCode.USAGE)
    else:
        file = download(root, argument, work / "download")
    kind = "deb" if file.name.endswith(".deb") else "rpm"
    found = payload.extract_modules(file, kind, work / f"unpacked-{file.name}", limit)
    if not found:
        die(f"{argument} contains no kernel module under /lib/modules/<release>/",
            hint="a live patch package carries its module in /lib/modules/<release>/livepatch/",
            code=ExitCode.INCOMPATIBLE)
    return Source(argument, file, kind, package_name(file, kind), tuple(found))


# ---- kernels and snapshots ----------------------------------------------------------------

def version_key(release: str) -> list[tuple[int, str]]:
    import re

    return [(int(part), "") if part.isdigit() else (-1, part)
            for part in re.split(r"[.\-+~]", release)]


def boot_kernel(snapshot: Path) -> str | None:
    """The kernel release a snapshot boots: its /vmlinuz link (as the boot loader reads it),
    else the newest installed kernel."""
    for link in ("vmlinuz", "boot/vmlinuz"):
        path = snapshot / link
        if path.is_symlink():
            name = Path(os.readlink(path)).name
            if name.startswith("vmlinuz-"):
                return name.removeprefix("vmlinuz-")
    releases = initrd.kernels(snapshot)
    return max(releases, key=version_key) if releases else None


def modules_dir(snapshot: Path) -> Path:
    merged = snapshot / "usr/lib/modules"
    return merged if merged.is_dir() else snapshot / "lib/modules"


def installed_patches(snapshot: Path, release: str) -> dict[str, Path]:
    """{module name: file} of the live patch modules in a snapshot for a kernel release."""
    directory = modules_dir(snapshot) / release / "livepatch"
    if not directory.is_dir():
        return {}
    return {module_name_from_path(p): p for p in sorted(directory.iterdir())
            if is_module_file(p.name)}


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


def owners(snapshot: Path, files: Sequence[Path]) -> set[str]:
    """The packages (dpkg or rpm) that installed these files of the snapshot."""
    wanted: set[str] = set()
    for f in files:
        relative = "/" + str(f.relative_to(snapshot))
        wanted |= {relative, relative.removeprefix("/usr")}
    names: set[str] = set()
    for info in ("usr/lib/sysimage/dpkg/info", "var/lib/dpkg/info"):
        for listing in sorted((snapshot / info).glob("*.list")):
            if wanted & set(listing.read_text(errors="replace").splitlines()):
                names.add(listing.name.removesuffix(".list").partition(":")[0])
    dbpath = snapshot / "usr/lib/sysimage/rpm"
    if dbpath.is_dir() and shutil.which("rpm"):
        for path in sorted(wanted):
            result = run(["rpm", "--dbpath", dbpath, "-qf", "--qf", "%{NAME}\n", path],
                         capture=True, check=False)
            if result.returncode == 0:
                names |= set(result.stdout.split())
    return names


# ---- preflight ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    root: Path
    mode: str
    sources: tuple[Source, ...]
    module: ModuleInfo
    module_file: Path  # on the host
    running: str
    base: str | None  # for transaction.Options
    base_number: int | None
    next_release: str | None  # the kernel of the snapshot the transaction starts from
    warnings: tuple[str, ...] = ()


def running_release() -> str:
    return os.environ.get("AMBER_KERNEL_RELEASE") or os.uname().release


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


def check_next_boot(module: ModuleInfo, running: str, next_release: str | None,
                    number: int | None, mode: str) -> None:
    if next_release is None:
        die(f"snapshot {number} has no kernel, so no initrd can load the live patch at boot",
            hint="--live-only patches the running kernel until the next reboot",
            code=ExitCode.ENVIRONMENT)
    if mode != "next-boot" and next_release != running \
            and module.kernel_release == running:
        die(f"snapshot {number}, which boots next, has kernel {next_release}: the live patch "
            f"for the running kernel {running} would do nothing after a reboot",
            hint=f"install the live patch built for {next_release}, or use --live-only to "
                 "patch the running kernel until the reboot", code=ExitCode.INCOMPATIBLE)


def preflight(root: Path, arguments: Sequence[str], mode: str, base: str | None,
              work: Path, paths: kernel.KernelPaths) -> Plan:
    settings = config.load(root).livepatch
    if not settings.enabled:  # before downloading or unpacking anything
        die("live patching is disabled on this system", hint="amber livepatch enable",
            code=ExitCode.LIVEPATCH_DISABLED)
    sources = tuple(resolve(root, a, work / str(i), settings.max_module_size)
                    for i, a in enumerate(arguments))
    files = [f for s in sources for f in s.modules]
    running = running_release()
    base_option, number, next_release = None, None, None
    if mode != "live-only":
        store = Store(root)
        store.check()
        base_option, number = pick_base(store, base)
        next_release = boot_kernel(store.path(number)) if number is not None else None
    if mode == "live-only":
        releases = [running]
    elif mode == "next-boot":
        releases = [next_release] if next_release else []
    else:
        releases = list(dict.fromkeys([running, *([next_release] if next_release else [])]))
    checked = []
    for f in files:
        info = read_module(f, settings.max_module_size)
        if mode != "live-only":
            check_next_boot(info, running, next_release, number, mode)
        checked.append(kernel.preflight(f, settings, root=root, kernel_releases=releases,
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


def install_steps(plan: Plan, timings: dict[str, float]) -> transaction.Steps:
    release = plan.next_release or plan.running
    name = plan.module.name

    def steps(chroot: transaction.Chroot) -> None:
        started = time.monotonic()
        snapshot = chroot.path
        generator = initrd.generator(snapshot)  # no generator: refuse before changing anything
        previous = {n: f for n, f in installed_patches(snapshot, release).items() if n != name}
        new_packages = {s.package for s in plan.sources if s.package}
        stale = sorted(owners(snapshot, list(previous.values())) - new_packages)
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
        configure_initrd(snapshot, generator, name, list(previous))
        timings["transaction"] = time.monotonic() - started
        started = time.monotonic()
        for argv in initrd.commands(snapshot, [release]):
            log.step(f"regenerating the initrd: {' '.join(argv)}")
            chroot.run(argv, step="initrd regeneration")
        timings["initrd"] = time.monotonic() - started
        chroot.store.update(chroot.number, {LIVEPATCH_KEY: name, LIVEPATCH_RELEASE_KEY: release,
                                            LIVEPATCH_ONLY_KEY: "yes"})

    return steps


def install_sources(chroot: transaction.Chroot, plan: Plan, release: str) -> None:
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
    mode: str
    snapshot: int | None
    base: int | None
    loaded: bool
    replaced: tuple[str, ...]
    kept_after_failure: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"livepatch": self.name, "mode": self.mode, "snapshot": self.snapshot,
                "base": self.base, "default": self.snapshot, "active": self.loaded,
                "replaced": list(self.replaced), "timings": self.timings,
                "warnings": list(self.warnings)}


def withdraw(root: Path, number: int, state_before: dict[str, Any], default_before: int | None
             ) -> None:
    """Undo a committed apply: the previous default back, the new snapshot gone."""
    store = Store(root)
    with transaction.locked(store, wait=True):
        if default_before is not None and store.exists(default_before):
            from amber import btrfs

            store.set_default(default_before)
            btrfs.sync(root)
        transaction.write_state(store, previous_default=state_before.get("previous_default"))
        store.delete(number)


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


def apply(root: Path, arguments: Sequence[str], *, mode: str = "now", keep: bool = False,
          timeout: float | None = None, base: str | None = None, wait: bool = False,
          paths: kernel.KernelPaths | None = None,
          syscalls: kernel.Syscalls | None = None) -> Outcome:
    if mode not in MODES:
        die(f"unknown mode {mode!r}", code=ExitCode.USAGE)
    paths = paths or kernel.KernelPaths.from_environment()
    syscalls = syscalls or kernel.LinuxSyscalls()
    settings = config.load(root).livepatch
    timings: dict[str, float] = {}
    with workspace() as work:
        started = time.monotonic()
        log.step("Checking the live patch (preflight)")
        plan = preflight(root, arguments, mode, base, work, paths)
        timings["preflight"] = time.monotonic() - started
        name = plan.module.name
        if mode == "live-only":
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
        result = transaction.execute(options, install_steps(plan, timings),
                                     f"amber livepatch apply {name}")
        assert result.number is not None
        if mode == "next-boot":
            log.info(f"live patch {name} is installed in snapshot {result.number}, the default "
                     "for the next boot; it is not loaded now")
            return Outcome(name, mode, result.number, result.base, False, (), timings=timings,
                           warnings=plan.warnings)
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
            withdraw(root, result.number, state_before, default_before)
            e.hint = ((e.hint + "; ") if e.hint else "") + (
                f"snapshot {result.number} was withdrawn, the default is "
                f"{default_before} again")
            raise
        timings["load"] = time.monotonic() - started
        for leftover in removed:
            log.info(f"unloaded the replaced live patch {leftover}")
        log.info(f"live patch {name} is active now, and snapshot {result.number} (the default) "
                 "loads it at every boot; no reboot needed")
        return Outcome(name, mode, result.number, result.base, True, tuple(removed),
                       timings=timings, warnings=plan.warnings)


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
    carried = next_boot_patches(root)
    if name in carried:
        log.warn(f"the next boot still loads {name} from its initrd",
                 hint="'amber rollback N' to a snapshot without it (see 'amber snapshots')")
    return removed


# ---- the view: running kernel, booted snapshot, next boot ---------------------------------

def next_boot_patches(root: Path) -> list[str]:
    try:
        store = Store(root)
        default = store.default() if store.dir.is_dir() else None
    except AmberError:
        return []
    if default is None:
        return []
    snapshot = store.path(default)
    release = boot_kernel(snapshot)
    present = installed_patches(snapshot, release) if release else {}
    return [n for n in initrd_patches(snapshot) if n in present]


DECOMPRESSORS = {b"\x28\xb5\x2f\xfd": "zstd -dc", b"\x1f\x8b": "gzip -dc",
                 b"\xfd7zXZ": "xz -dc", b"\x02\x21\x4c\x18": "lz4 -dc", b"070701": "cat"}


def main_archive_offset(data: bytes) -> int:
    """Where the main archive starts: after the uncompressed early cpio (microcode) that
    dracut puts in front, and its zero padding. An uncompressed initrd is all cpio: then the
    main archive is the last one."""
    offset = start = 0
    while data[offset:offset + 6] == b"070701":
        name_size = int(data[offset + 94:offset + 102], 16)
        file_size = int(data[offset + 54:offset + 62], 16)
        name = data[offset + 110:offset + 110 + name_size - 1]
        offset += (110 + name_size + 3) // 4 * 4
        offset += (file_size + 3) // 4 * 4
        if name == b"TRAILER!!!":
            while offset < len(data) and data[offset] == 0:
                offset += 1
            if offset >= len(data):
                return start
            if data[offset:offset + 6] != b"070701":
                break
            start = offset
    return offset


CACHE_DIR = Path("/run/amber")


def initrd_listing(snapshot: Path, release: str) -> str | None:
    """The kernel modules in the initrd, or None when it cannot be read here.

    The initrd of a closed snapshot never changes, so the answer is cached in /run by the
    file's identity: listing a compressed initrd takes seconds on a slow machine."""
    import json

    image = initrd.initrd_path(snapshot, release)
    if not image.is_file():
        return None
    st = image.stat()
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cache = CACHE_DIR / "initrd-modules.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return str(known[key])
    listing = list_initrd(image)
    if listing is None:
        return None
    modules = "\n".join(line for line in listing.splitlines() if ".ko" in line)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({key: modules}))
    except OSError:
        pass
    return modules


def list_initrd(image: Path) -> str | None:
    """The initrd's file list. Not lsinitrd: that is ten times slower, as it also reads every
    file's metadata."""
    if not shutil.which("cpio"):
        return None
    data = image.read_bytes()
    offset = main_archive_offset(data)
    command = next((c for magic, c in DECOMPRESSORS.items()
                    if data[offset:offset + len(magic)] == magic), None)
    if command is None or not shutil.which(command.split()[0]):
        return None
    result = run(["sh", "-c", f'tail -c +{offset + 1} "$1" | {command} | cpio -t --quiet',
                  "sh", image], capture=True, check=False)
    return result.stdout if result.returncode == 0 else None


@dataclass(frozen=True)
class PatchView:
    name: str
    active: bool  # enabled in the running kernel
    booted: bool  # the booted snapshot has the module for the running kernel
    next_boot: bool  # the default snapshot's initrd configuration loads it
    in_initrd: bool | None  # the default snapshot's initrd holds the module (None: unknown)
    next_file: str = ""  # the module in the default snapshot, as seen on the running system

    def drift(self, default: int | None) -> tuple[str, str] | None:
        if self.active and not self.next_boot:
            return (f"live patch {self.name} is active now, but the next boot "
                    f"(snapshot {default}) does not load it",
                    f"amber livepatch revert {self.name} (unload it now), or apply it again "
                    "to keep it")
        if self.next_boot and not self.active:
            return (f"the next boot (snapshot {default}) loads live patch {self.name}, but the "
                    "running kernel does not have it",
                    f"amber livepatch load {self.next_file}, or reboot")
        if self.next_boot and self.in_initrd is False:
            return (f"snapshot {default} is configured to load {self.name} but its initrd "
                    "does not contain it", "amber initrd --continue")
        return None

    def as_json(self, default: int | None) -> dict[str, Any]:
        drift = self.drift(default)
        return {"name": self.name, "active": self.active, "booted_snapshot": self.booted,
                "next_boot": self.next_boot, "in_initrd": self.in_initrd,
                "drift": ({"warning": drift[0], "resolve": drift[1]} if drift else None)}


@dataclass(frozen=True)
class View:
    booted: int | None
    default: int | None
    patches: tuple[PatchView, ...]

    def as_json(self) -> dict[str, Any]:
        return {"booted": self.booted, "default": self.default,
                "patches": [p.as_json(self.default) for p in self.patches]}

    def warnings(self) -> list[tuple[str, str]]:
        return [d for p in self.patches if (d := p.drift(self.default)) is not None]

    def render(self) -> list[str]:
        lines = []
        for p in self.patches:
            where = [w for w, yes in (("active now", p.active),
                                      (f"in booted snapshot {self.booted}", p.booted),
                                      (f"loaded by the next boot ({self.default})", p.next_boot))
                     if yes]
            lines.append(f"live patch {p.name}: {', '.join(where) or 'nowhere'}")
        return lines


def view(root: Path, paths: kernel.KernelPaths, check_initrd: bool = True) -> View:
    store = Store(root)
    booted, default = (store.booted(), store.default()) if store.dir.is_dir() else (None, None)
    running = running_release()
    active = {p.name for p in kernel.patches(paths) if p.enabled}
    in_booted = installed_patches(root, running) if booted is not None else {}
    in_next: list[str] = []
    present: dict[str, Path] = {}
    listing = None
    if default is not None:
        snapshot = store.path(default)
        release = boot_kernel(snapshot)
        if release:
            present = installed_patches(snapshot, release)
            in_next = [n for n in initrd_patches(snapshot) if n in present]
            if check_initrd and in_next:
                listing = initrd_listing(snapshot, release)
    names = sorted({*active, *in_booted, *in_next})
    return View(booted, default, tuple(PatchView(
        name=n, active=n in active, booted=n in in_booted, next_boot=n in in_next,
        in_initrd=None if listing is None else _listed(listing, n),
        next_file="/" + str(present[n].relative_to(root)) if n in present else "")
        for n in names))


def _listed(listing: str, name: str) -> bool:
    forms = {name, name.replace("_", "-")}
    return any(f"/{form}.ko" in listing for form in forms)


def carried(root: Path, number: int) -> dict[str, Path]:
    """The live patches snapshot `number` has for the running kernel."""
    return installed_patches(Store(root).path(number), running_release())


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
