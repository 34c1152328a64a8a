"""The running kernel's side of live patching: what sysfs and procfs say, load, wait, unload.

Every path is read below a KernelPaths (default /sys and /proc), so that tests run the same code
against fake trees. Loading and unloading go through the finit_module and delete_module system
calls (ctypes), never with the flags that ignore vermagic or modversions.

finit_module returning 0 does not mean the patch is applied: the kernel then moves every task to
the new code one by one. amber waits until /sys/kernel/livepatch/<name>/transition reads 0; when
that does not happen in time it names the tasks that block, reverses the transition by writing
the opposite value to `enabled`, and fails. Writing `force` happens only when asked for.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from amber.boot import kernels
from amber.livepatch.module import ModuleInfo, read_image
from amber.log import AmberError, ExitCode, die, info, warn

# kernel/panic.c taint_flags: bit → (letter, meaning)
TAINT_FLAGS = {
    0: ("P", "proprietary module loaded"),
    1: ("F", "module force loaded"),
    2: ("S", "SMP kernel on hardware not meant for it"),
    3: ("R", "module force unloaded"),
    4: ("M", "machine check exception"),
    5: ("B", "bad page referenced"),
    6: ("U", "tainted by user request"),
    7: ("D", "kernel died recently (oops or BUG)"),
    8: ("A", "ACPI table overridden"),
    9: ("W", "kernel issued a warning"),
    10: ("C", "staging driver loaded"),
    11: ("I", "firmware bug workaround"),
    12: ("O", "out-of-tree module loaded"),
    13: ("E", "unsigned module loaded"),
    14: ("L", "soft lockup occurred"),
    15: ("K", "kernel has been live patched"),
    16: ("X", "auxiliary taint (distribution)"),
    17: ("T", "built with struct randomization"),
    18: ("N", "in-kernel test run"),
    19: ("J", "userspace used a mutating debug operation"),
}
TAINT_LIVEPATCH = 15

# (finit_module, delete_module) by machine: x86_64 from syscall_64.tbl, the rest asm-generic.
SYSCALLS = {"x86_64": (313, 176), "aarch64": (273, 106), "riscv64": (273, 106)}


@dataclass(frozen=True)
class KernelPaths:
    sys: Path = Path("/sys")
    proc: Path = Path("/proc")

    @classmethod
    def from_environment(cls) -> KernelPaths:
        """AMBER_SYSFS and AMBER_PROCFS point amber at other trees (for tests)."""
        return cls(sys=kernels.sysfs(), proc=kernels.procfs())

    @property
    def livepatch(self) -> Path:
        return self.sys / "kernel/livepatch"

    def patch(self, name: str) -> Path:
        return self.livepatch / name

    def module(self, name: str) -> Path:
        return self.sys / "module" / name


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}", code=ExitCode.ENVIRONMENT)


# ---- facts --------------------------------------------------------------------------------

def supported(paths: KernelPaths) -> bool:
    return paths.livepatch.is_dir()


def lockdown(paths: KernelPaths) -> str:
    """none, integrity or confidentiality (the bracketed word); none without the LSM."""
    text = _read(paths.sys / "kernel/security/lockdown") or ""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "none"


def signatures_enforced(paths: KernelPaths) -> bool:
    return _read(paths.module("module") / "parameters/sig_enforce") in ("Y", "1")


def tainted(paths: KernelPaths) -> int:
    text = _read(paths.proc / "sys/kernel/tainted")
    return int(text) if text and text.isdigit() else 0


def decode_taint(value: int) -> list[tuple[str, str]]:
    """[(letter, meaning)] for every set bit; unknown bits as ('?', 'bit N')."""
    flags = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            flags.append(TAINT_FLAGS.get(bit, ("?", f"bit {bit}")))
    return flags


@dataclass(frozen=True)
class Patch:
    name: str
    enabled: bool
    transition: bool
    srcversion: str
    refcnt: int | None


@dataclass(frozen=True)
class LoadedModule:
    name: str
    srcversion: str
    refcnt: int | None
    taint: str  # the module's own taint letters

    @property
    def livepatch(self) -> bool:
        return "K" in self.taint


def module_refcnt(paths: KernelPaths, name: str) -> int | None:
    text = _read(paths.module(name) / "refcnt")
    return int(text) if text and text.isdigit() else None


def patches(paths: KernelPaths) -> list[Patch]:
    if not supported(paths):
        return []
    result = []
    for entry in sorted(paths.livepatch.iterdir()):
        if not entry.is_dir():
            continue
        result.append(Patch(
            name=entry.name,
            enabled=_read(entry / "enabled") == "1",
            transition=_read(entry / "transition") == "1",
            srcversion=_read(paths.module(entry.name) / "srcversion") or "",
            refcnt=module_refcnt(paths, entry.name),
        ))
    return result


def loaded_modules(paths: KernelPaths) -> list[LoadedModule]:
    """Modules in /proc/modules (name size refcnt deps state address [(taint)])."""
    text = _read(paths.proc / "modules") or ""
    modules = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        name = fields[0]
        taint = fields[-1][1:-1] if fields[-1].startswith("(") else ""
        modules.append(LoadedModule(
            name=name,
            srcversion=_read(paths.module(name) / "srcversion") or "",
            refcnt=int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None,
            taint=_read(paths.module(name) / "taint") or taint,
        ))
    return modules


def replaced_modules(paths: KernelPaths) -> list[LoadedModule]:
    """Live patch modules still loaded whose patch is gone (replaced or disabled).

    The kernel taints a module K exactly when its modinfo says livepatch; an active patch has a
    directory in /sys/kernel/livepatch, so K without that directory is a leftover.
    """
    return [m for m in loaded_modules(paths)
            if m.livepatch and not paths.patch(m.name).is_dir()]


def state(found: Sequence[Patch]) -> str:
    if not found:
        return "no patches"
    if any(p.transition for p in found):
        return "in transition"
    return "ready"


@dataclass(frozen=True)
class KernelStatus:
    supported: bool
    lockdown: str
    signatures_enforced: bool
    taint: int
    patches: list[Patch]
    replaced: list[LoadedModule]

    @property
    def state(self) -> str:
        return state(self.patches)

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "supported": self.supported,
            "lockdown": self.lockdown,
            "sig_enforce": self.signatures_enforced,
            "taint": self.taint,
            "taint_flags": [{"letter": letter, "meaning": meaning}
                            for letter, meaning in decode_taint(self.taint)],
            "patches": [patch_json(p) for p in self.patches],
            "replaced": [replaced_json(m) for m in self.replaced],
        }


def patch_json(patch: Patch) -> dict[str, object]:
    return {"name": patch.name, "enabled": patch.enabled, "transition": patch.transition,
            "srcversion": patch.srcversion, "refcnt": patch.refcnt}


def replaced_json(module: LoadedModule) -> dict[str, object]:
    return {"name": module.name, "srcversion": module.srcversion, "refcnt": module.refcnt}


def status(paths: KernelPaths) -> KernelStatus:
    return KernelStatus(
        supported=supported(paths),
        lockdown=lockdown(paths),
        signatures_enforced=signatures_enforced(paths),
        taint=tainted(paths),
        patches=patches(paths),
        replaced=replaced_modules(paths),
    )


# ---- tasks that block a transition --------------------------------------------------------

@dataclass(frozen=True)
class Task:
    pid: int
    tid: int
    comm: str


def blocking_tasks(paths: KernelPaths, target: bool) -> list[Task]:
    """Tasks whose patch_state (-1 none, 0 unpatched, 1 patched) is not yet the target."""
    want = "1" if target else "0"
    blocking = []
    for pid_dir in paths.proc.glob("[0-9]*"):
        for task_dir in (pid_dir / "task").glob("[0-9]*"):
            value = _read_quiet(task_dir / "patch_state")
            if value is None or value == "-1" or value == want:
                continue
            blocking.append(Task(pid=int(pid_dir.name), tid=int(task_dir.name),
                                 comm=_read_quiet(task_dir / "comm") or "?"))
    return sorted(blocking, key=lambda t: (t.pid, t.tid))


def _read_quiet(path: Path) -> str | None:
    """Tasks come and go while we look: a vanished file is no error."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def describe_tasks(tasks: Sequence[Task], limit: int = 10) -> str:
    shown = ", ".join(f"{t.comm} (pid {t.pid}" + (f", tid {t.tid})" if t.tid != t.pid else ")")
                      for t in tasks[:limit])
    more = f" and {len(tasks) - limit} more" if len(tasks) > limit else ""
    return shown + more


# ---- system calls -------------------------------------------------------------------------

class Syscalls(Protocol):
    def finit_module(self, fd: int) -> None: ...

    def delete_module(self, name: str) -> None: ...


class LinuxSyscalls:
    """finit_module(fd, "", 0) and delete_module(name, O_NONBLOCK); raise OSError."""

    def _numbers(self) -> tuple[int, int]:
        machine = platform.machine()
        if machine not in SYSCALLS:
            die(f"live patching is not supported on {machine} by amber",
                code=ExitCode.ENVIRONMENT)
        return SYSCALLS[machine]

    def _call(self, number: int, *args: object) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        if libc.syscall(ctypes.c_long(number), *args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def finit_module(self, fd: int) -> None:
        self._call(self._numbers()[0], ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(0))

    def delete_module(self, name: str) -> None:
        self._call(self._numbers()[1], ctypes.c_char_p(name.encode()),
                   ctypes.c_uint(os.O_NONBLOCK))


LOAD_ERRORS = {
    errno.EEXIST: ("a module named {name} is already loaded",
                   "see 'amber livepatch list'; unload it first with 'amber livepatch unload "
                   "{name}'"),
    errno.EKEYREJECTED: ("the kernel rejected the module's signature (signature rejected: "
                         "unsigned, unknown key or not verifying)",
                         "sign the module with a key in the kernel's keyring"),
    errno.ENOKEY: ("the kernel rejected the module's signature (signature rejected: the "
                   "signing key is not in the kernel's keyring)",
                   "sign the module with a key in the kernel's keyring"),
    errno.EBADMSG: ("the kernel rejected the module's signature (signature rejected: "
                    "malformed signature)", "rebuild and sign the module again"),
    errno.ENOPKG: ("the kernel rejected the module's signature (signature rejected: "
                   "unsupported signature type)", "sign the module with PKCS#7"),
    errno.EPERM: ("the kernel refused to load modules (no permission, module loading disabled, "
                  "or lockdown requires a signature the kernel accepts)",
                  "run as root; check 'amber livepatch status' for lockdown"),
    errno.ENOEXEC: ("the kernel says the module has the wrong format or version magic "
                    "(built for another kernel or configuration)",
                    "use the live patch built for this exact kernel"),
    errno.EBUSY: ("the kernel is busy: another live patch is in transition, or a module with "
                  "this name is being loaded", "wait and retry; see 'amber livepatch status'"),
    errno.EINVAL: ("the kernel refused the live patch as invalid (not marked livepatch, an "
                   "incompatible system state, or a symbol it cannot resolve)",
                   "check the kernel log (dmesg) for the livepatch message"),
    errno.ENODEV: ("the live patch's pre-patch callback failed",
                   "check the kernel log (dmesg) for the livepatch message"),
    errno.ENOMEM: ("the kernel ran out of memory while loading the module", None),
}


def load_error(path: Path, name: str, error: OSError) -> AmberError:
    code = error.errno or 0
    sentence, hint = LOAD_ERRORS.get(
        code, (f"the kernel refused the module: {os.strerror(code)}", None))
    return AmberError(f"{path}: {sentence.format(name=name)}",
                      hint=hint.format(name=name) if hint else None,
                      code=ExitCode.KERNEL_REFUSED)


def finit_module(path: Path, info_: ModuleInfo, syscalls: Syscalls) -> None:
    """Hand the file to the kernel; a compressed one is decompressed into a memfd first."""
    if info_.compression:
        image = read_image(path, info_.limit)  # before the memfd: a bad file leaks no fd
        fd = os.memfd_create(f"amber-{info_.name}", os.MFD_CLOEXEC)
        os.write(fd, image)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.finit_module(fd)
    except OSError as e:
        raise load_error(path, info_.name, e) from None
    finally:
        os.close(fd)


def delete_module(name: str, syscalls: Syscalls) -> None:
    try:
        syscalls.delete_module(name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            die(f"module {name} is not loaded", hint="see 'amber livepatch list'",
                code=ExitCode.NOT_FOUND)
        if e.errno in (errno.EBUSY, errno.EWOULDBLOCK):
            die(f"module {name} is still in use and cannot be unloaded",
                hint="another module or the live patch core still holds it",
                code=ExitCode.KERNEL_REFUSED)
        die(f"the kernel refused to unload {name}: {e.strerror}", code=ExitCode.KERNEL_REFUSED)


# ---- transitions --------------------------------------------------------------------------

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Waiting:
    timeout: float = 60.0
    poll: float = 0.1
    progress: Progress | None = None  # called with the number of blocking tasks
    force: bool = False  # on timeout write `force` instead of reversing (unsafe, explicit)
    clock: Callable[[], float] = field(default=time.monotonic)


def write_enabled(paths: KernelPaths, name: str, value: bool) -> None:
    path = paths.patch(name) / "enabled"
    try:
        path.write_text("1" if value else "0")
    except FileNotFoundError:
        die(f"live patch {name} is not active", hint="see 'amber livepatch list'",
            code=ExitCode.NOT_FOUND)
    except OSError as e:
        if e.errno == errno.EBUSY:
            die(f"cannot change live patch {name}: another patch is in transition",
                hint="wait for it; see 'amber livepatch status'", code=ExitCode.KERNEL_REFUSED)
        die(f"cannot write {path}: {e.strerror}", code=ExitCode.KERNEL_REFUSED)


def _transition_done(paths: KernelPaths, name: str) -> bool:
    directory = paths.patch(name)
    # A disabled patch's directory goes away when its transition ends.
    return not directory.is_dir() or _read(directory / "transition") == "0"


def _poll(paths: KernelPaths, name: str, target: bool, waiting: Waiting, deadline: float) -> bool:
    last = -1
    while not _transition_done(paths, name):
        if waiting.clock() >= deadline:
            return False
        if waiting.progress is not None:
            count = len(blocking_tasks(paths, target))
            if count != last:
                waiting.progress(count)
                last = count
        time.sleep(waiting.poll)
    return True


def wait_transition(paths: KernelPaths, name: str, target: bool, waiting: Waiting) -> None:
    """Wait until patch name's transition towards target (True: patched) ends.

    On timeout: with waiting.force, write `force` (the module then stays for good); otherwise
    reverse the transition, wait for the reversal, and fail with TRANSITION_TIMEOUT.
    """
    if _poll(paths, name, target, waiting, waiting.clock() + waiting.timeout):
        return
    blockers = blocking_tasks(paths, target)
    who = describe_tasks(blockers) if blockers else "no task reported (kernel threads?)"
    if waiting.force:
        warn(f"forcing the transition of {name}; blocking tasks: {who}",
             hint="the module can never be unloaded now; plan a reboot")
        try:
            (paths.patch(name) / "force").write_text("1")
        except OSError as e:
            die(f"cannot force live patch {name}: {e.strerror}", code=ExitCode.KERNEL_REFUSED)
        if _poll(paths, name, target, waiting, waiting.clock() + waiting.timeout):
            return
        die(f"live patch {name} is still in transition after forcing it",
            code=ExitCode.TRANSITION_TIMEOUT)
    info(f"transition of {name} did not finish in {waiting.timeout:g} s; reversing it")
    write_enabled(paths, name, not target)
    reversed_in_time = _poll(paths, name, not target, waiting,
                             waiting.clock() + waiting.timeout)
    action = "patching" if target else "unpatching"
    if not reversed_in_time:
        die(f"{action} with {name} did not finish in {waiting.timeout:g} s, blocked by: {who}; "
            "the reversal is still in transition too",
            hint="see 'amber livepatch status'; a reboot ends every transition",
            code=ExitCode.TRANSITION_TIMEOUT)
    die(f"{action} with {name} did not finish in {waiting.timeout:g} s and was reversed; "
        f"blocked by: {who}",
        hint="retry when those tasks are idle, or raise the time limit with --timeout",
        code=ExitCode.TRANSITION_TIMEOUT)


def wait_refcnt_zero(paths: KernelPaths, name: str, waiting: Waiting) -> None:
    deadline = waiting.clock() + waiting.timeout
    while (module_refcnt(paths, name) or 0) > 0:
        if waiting.clock() >= deadline:
            die(f"module {name} is still in use after {waiting.timeout:g} s",
                code=ExitCode.KERNEL_REFUSED)
        time.sleep(waiting.poll)


# ---- load and unload ----------------------------------------------------------------------

def unload(paths: KernelPaths, name: str, waiting: Waiting, syscalls: Syscalls) -> None:
    """Disable patch name, wait for its transition and sysfs directory to go, rmmod it."""
    directory = paths.patch(name)
    if not directory.is_dir() and not paths.module(name).is_dir():
        die(f"live patch {name} is not loaded", hint="see 'amber livepatch list'",
            code=ExitCode.NOT_FOUND)
    if directory.is_dir():
        if _read(directory / "enabled") == "1":
            write_enabled(paths, name, False)
        wait_transition(paths, name, False, waiting)
        deadline = waiting.clock() + waiting.timeout
        while directory.is_dir():
            if waiting.clock() >= deadline:
                die(f"live patch {name} stays in sysfs after it was disabled",
                    code=ExitCode.KERNEL_REFUSED)
            time.sleep(waiting.poll)
    wait_refcnt_zero(paths, name, waiting)
    delete_module(name, syscalls)


# The kernel frees replaced patches in a work item after the transition ends: for a moment
# their sysfs directories remain and their modules are still referenced.
REPLACE_GRACE = 2.0


def settle_replaced(paths: KernelPaths, new: str, previous: Sequence[str],
                    waiting: Waiting) -> None:
    """After new's transition ended, wait (briefly) until the patches it replaced are gone.

    Kernels before 6.11 do not say whether a patch replaces the others; a patch that stays past
    the grace period was stacked, not replaced.
    """
    if _read(paths.patch(new) / "replace") == "0":
        return
    deadline = waiting.clock() + min(REPLACE_GRACE, waiting.timeout)
    while any(paths.patch(name).is_dir() for name in previous if name != new):
        if waiting.clock() >= deadline:
            return
        time.sleep(min(waiting.poll, 0.01))


def cleanup_replaced(paths: KernelPaths, syscalls: Syscalls,
                     keep: Sequence[str] = ()) -> list[str]:
    """Unload live patch modules that atomic replace left loaded; returns their names."""
    removed = []
    for module in replaced_modules(paths):
        if module.name in keep:
            continue
        deadline = time.monotonic() + REPLACE_GRACE
        while (module_refcnt(paths, module.name) or 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        delete_module(module.name, syscalls)
        removed.append(module.name)
    return removed


def load(path: Path, module: ModuleInfo, paths: KernelPaths, waiting: Waiting,
         syscalls: Syscalls) -> list[str]:
    """Load a live patch and wait until it is applied; returns the replaced modules removed.

    A leftover module of the same name (replaced earlier) is unloaded first, or the kernel
    would answer EEXIST. If the transition does not finish, it is reversed and the module
    unloaded again, so that a failure leaves the kernel as it was.
    """
    if module.name in {m.name for m in replaced_modules(paths)}:
        delete_module(module.name, syscalls)
    previous = [p.name for p in patches(paths)]
    finit_module(path, module, syscalls)
    if not paths.patch(module.name).is_dir():
        die(f"{path}: loaded, but no live patch {module.name} appeared in sysfs",
            hint="check the kernel log (dmesg)", code=ExitCode.KERNEL_REFUSED)
    try:
        wait_transition(paths, module.name, True, waiting)
    except AmberError:
        if _freed_after_reversal(paths, module.name):
            _remove_quietly(module.name, syscalls)
        raise
    settle_replaced(paths, module.name, previous, waiting)
    return cleanup_replaced(paths, syscalls, keep=(module.name,))


def _freed_after_reversal(paths: KernelPaths, name: str) -> bool:
    """Whether a reversed patch's directory went and its module is no longer referenced
    (the kernel frees both shortly after the reversal ends)."""
    deadline = time.monotonic() + REPLACE_GRACE
    directory = paths.patch(name)
    while directory.is_dir() or (module_refcnt(paths, name) or 0) > 0:
        still_reversing = _read(directory / "enabled") == "1" or _read(
            directory / "transition") == "1"
        if still_reversing or time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _remove_quietly(name: str, syscalls: Syscalls) -> None:
    try:
        syscalls.delete_module(name)
    except OSError as e:
        warn(f"could not unload {name} after reversing it: {e.strerror}",
             hint=f"amber livepatch unload {name}")
