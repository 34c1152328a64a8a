"""A fake kernel for unit and root tests: the host kernel cannot load modules and has no
/sys/kernel/livepatch, so a thread acting on sysfs and procfs files as the kernel does stands
in; tests/vm proves the same paths on the real kernel."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from amber.livepatch import kernel, module


class FakeKernel:
    """Files laid out as the kernel does, a thread that finishes transitions, and the two
    system calls. With stall set, transitions towards a patch never finish by themselves."""

    def __init__(self, root: Path):
        self.paths = kernel.KernelPaths(sys=root / "sys", proc=root / "proc")
        self.paths.livepatch.mkdir(parents=True)
        (self.paths.module("module") / "parameters").mkdir(parents=True)
        (self.paths.module("module") / "parameters/sig_enforce").write_text("N\n")
        (self.paths.proc / "sys/kernel").mkdir(parents=True)
        (self.paths.proc / "sys/kernel/tainted").write_text("0\n")
        (self.paths.proc / "modules").write_text("")
        self.stall = False
        self.loaded: list[str] = []
        self.targets: dict[str, str] = {}
        self._freeing: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- the tree --
    def add_task(self, pid: int, tid: int, comm: str, state: str) -> None:
        task = self.paths.proc / str(pid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "patch_state").write_text(state + "\n")
        (task / "comm").write_text(comm + "\n")

    def add_module(self, name: str, livepatch: bool, refcnt: int = 0) -> None:
        directory = self.paths.module(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "srcversion").write_text(f"SRC{name.upper()}\n")
        (directory / "refcnt").write_text(f"{refcnt}\n")
        taint = "OEK" if livepatch else "OE"
        (directory / "taint").write_text(taint + "\n")
        self.loaded.append(name)
        self._write_proc_modules()

    def add_patch(self, name: str, enabled: bool = True, transition: bool = False) -> None:
        directory = self.paths.patch(name)
        directory.mkdir(parents=True)
        (directory / "enabled").write_text("1\n" if enabled else "0\n")
        (directory / "transition").write_text("1\n" if transition else "0\n")
        self.targets[name] = "1" if enabled else "0"

    def _write_proc_modules(self) -> None:
        lines = []
        for name in self.loaded:
            taint = (self.paths.module(name) / "taint").read_text().strip()
            refcnt = (self.paths.module(name) / "refcnt").read_text().strip()
            lines.append(f"{name} 16384 {refcnt} - Live 0x0000000000000000 ({taint})")
        (self.paths.proc / "modules").write_text("".join(line + "\n" for line in lines))

    def _set_refcnt(self, name: str, value: int) -> None:
        (self.paths.module(name) / "refcnt").write_text(f"{value}\n")
        self._write_proc_modules()

    # -- the kernel at work --
    def __enter__(self) -> FakeKernel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                self._free_pending()
                for name in list(self.targets):
                    self._step(name)

    def _free_pending(self) -> None:
        # As the kernel's free work item: after the transition has ended, first the sysfs
        # directory goes (one tick later), then the module reference (another tick later).
        pending, self._freeing = self._freeing, []
        for name, stage in pending:
            if stage == 0:
                directory = self.paths.patch(name)
                for child in directory.iterdir():
                    child.unlink()
                directory.rmdir()
                self._freeing.append((name, 1))
            else:
                self._set_refcnt(name, 0)

    def _step(self, name: str) -> None:
        directory = self.paths.patch(name)
        enabled = (directory / "enabled").read_text().strip()
        if (directory / "transition").read_text().strip() != "1":
            return
        reversed_ = enabled != self.targets[name]
        if self.stall and not reversed_ and enabled == "1":
            return
        (directory / "transition").write_text("0\n")
        if enabled == "0":
            del self.targets[name]
            self._freeing.append((name, 0))
            return
        for other in list(self.targets):  # atomic replace
            if other != name:
                del self.targets[other]
                self._freeing.append((other, 0))

    # -- the system calls --
    def finit_module(self, fd: int) -> None:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        name = module.parse(data, Path("fd.ko")).name
        with self._lock:
            if name in self.loaded:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            self.add_module(name, livepatch=True, refcnt=1)
            self.add_patch(name, enabled=True, transition=True)

    def delete_module(self, name: str) -> None:
        with self._lock:
            if name not in self.loaded:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            if int((self.paths.module(name) / "refcnt").read_text()) > 0:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            for child in self.paths.module(name).iterdir():
                child.unlink()
            self.paths.module(name).rmdir()
            self.loaded.remove(name)
            self._write_proc_modules()
