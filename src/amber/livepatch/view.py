"""What the running kernel, the booted snapshot and the next boot say about live patches (the
view behind `amber livepatch status` and `amber status`), with the drift between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.boot import initrd
from amber.boot.kernels import boot_kernel, modules_dir, running_release
from amber.livepatch import kernel
from amber.livepatch.early import initrd_patches
from amber.livepatch.module import module_name_from_path
from amber.livepatch.sources import is_module_file
from amber.log import AmberError
from amber.snapshots import Store


def installed_patches(snapshot: Path, release: str) -> dict[str, Path]:
    """{module name: file} of the live patch modules in a snapshot for a kernel release."""
    directory = modules_dir(snapshot) / release / "livepatch"
    if not directory.is_dir():
        return {}
    return {module_name_from_path(p): p for p in sorted(directory.iterdir())
            if is_module_file(p.name)}


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
    listing = initrd.list_initrd(image)
    if listing is None:
        return None
    modules = "\n".join(line for line in listing.splitlines() if ".ko" in line)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({key: modules}))
    except OSError:
        pass
    return modules




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

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "active": self.active, "booted_snapshot": self.booted,
                "next_boot": self.next_boot, "in_initrd": self.in_initrd}


@dataclass(frozen=True)
class View:
    booted: int | None
    default: int | None
    patches: tuple[PatchView, ...]

    def as_json(self) -> dict[str, Any]:
        return {"booted": self.booted, "default": self.default,
                "patches": [p.as_json() for p in self.patches]}

    def drift_json(self) -> list[dict[str, str]]:
        """The drift between the running kernel and the next boot: each a warning and the
        command that resolves it."""
        return [{"warning": w, "resolve": r} for w, r in self.warnings()]

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
