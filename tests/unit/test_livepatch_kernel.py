"""The kernel side against fake sysfs and procfs trees. The host kernel cannot load modules and
has no /sys/kernel/livepatch, so a small fake kernel (a thread that acts on the files as the
kernel would) stands in here; tests/vm/test_livepatch_engine.py proves the real path."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.config import LivepatchConfig
from amber.livepatch import kernel, module, policy
from amber.log import AmberError, ExitCode
from testing.modules import build
from tests.support.fake_kernel import FakeKernel
from tests.support.modules import Modules, SigningKey


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    write_enabled = kernel.write_enabled
    fake_kernel = FakeKernel(tmp_path / "kernel")

    def kernel_starts_transition(paths: kernel.KernelPaths, name: str, value: bool) -> None:
        # The kernel starts (or reverses) the transition within the write itself, atomically
        # as far as the fake kernel's thread is concerned.
        with fake_kernel._lock:
            write_enabled(paths, name, value)
            (paths.patch(name) / "transition").write_text("1\n")

    monkeypatch.setattr(kernel, "write_enabled", kernel_starts_transition)
    with fake_kernel:
        yield fake_kernel


def waiting(timeout: float = 5.0, progress: list[int] | None = None) -> kernel.Waiting:
    return kernel.Waiting(timeout=timeout, poll=0.02,
                          progress=progress.append if progress is not None else None)


# ---- facts --------------------------------------------------------------------------------

def test_status_facts(fake: FakeKernel) -> None:
    (fake.paths.proc / "sys/kernel/tainted").write_text(f"{(1 << 15) | (1 << 13) | (1 << 12)}\n")
    security = fake.paths.sys / "kernel/security"
    security.mkdir(parents=True)
    (security / "lockdown").write_text("none [integrity] confidentiality\n")
    (fake.paths.module("module") / "parameters/sig_enforce").write_text("Y\n")
    fake.add_module("amber_lp_v1", livepatch=True)
    fake.add_module("amber_lp_v2", livepatch=True, refcnt=1)
    fake.add_module("ext4", livepatch=False)
    fake.add_patch("amber_lp_v2")
    facts = kernel.status(fake.paths)
    assert facts.supported
    assert facts.lockdown == "integrity"
    assert facts.signatures_enforced
    assert [letter for letter, _ in kernel.decode_taint(facts.taint)] == ["O", "E", "K"]
    assert [p.name for p in facts.patches] == ["amber_lp_v2"]
    assert facts.patches[0].srcversion == "SRCAMBER_LP_V2"
    assert facts.patches[0].refcnt == 1
    assert [m.name for m in facts.replaced] == ["amber_lp_v1"]
    assert facts.state == "ready"
    data = facts.as_json()
    assert data["replaced"] == [{"name": "amber_lp_v1", "srcversion": "SRCAMBER_LP_V1",
                                 "refcnt": 0}]


def test_status_without_livepatch_support(tmp_path: Path) -> None:
    paths = kernel.KernelPaths(sys=tmp_path / "sys", proc=tmp_path / "proc")
    facts = kernel.status(paths)
    assert not facts.supported
    assert facts.state == "no patches"
    assert facts.lockdown == "none"
    assert not facts.signatures_enforced


def test_blocking_tasks(fake: FakeKernel) -> None:
    fake.add_task(1, 1, "systemd", "1")
    fake.add_task(42, 42, "sleepy", "0")
    fake.add_task(42, 43, "sleepy-thread", "0")
    fake.add_task(7, 7, "idle", "-1")
    blockers = kernel.blocking_tasks(fake.paths, target=True)
    assert [(t.pid, t.tid, t.comm) for t in blockers] == [(42, 42, "sleepy"),
                                                          (42, 43, "sleepy-thread")]
    assert [t.comm for t in kernel.blocking_tasks(fake.paths, target=False)] == ["systemd"]
    assert "sleepy (pid 42)" in kernel.describe_tasks(blockers)


# ---- transitions --------------------------------------------------------------------------

def test_transition_that_completes(fake: FakeKernel) -> None:
    fake.add_task(42, 42, "sleepy", "0")
    fake.stall = True
    fake.add_module("amber_lp_v1", livepatch=True, refcnt=1)
    fake.add_patch("amber_lp_v1", transition=True)
    seen: list[int] = []

    def finish_later() -> None:
        time.sleep(0.3)
        fake.add_task(42, 42, "sleepy", "1")
        fake.stall = False

    threading.Thread(target=finish_later).start()
    kernel.wait_transition(fake.paths, "amber_lp_v1", True, waiting(progress=seen))
    assert seen[0] == 1
    assert (fake.paths.patch("amber_lp_v1") / "transition").read_text().strip() == "0"


def test_stalled_load_is_reversed_and_unloaded(fake: FakeKernel, modules: Modules) -> None:
    fake.stall = True
    fake.add_task(42, 42, "sleepy", "0")
    with pytest.raises(AmberError) as caught:
        kernel.load(modules.v1, module.read(modules.v1), fake.paths, waiting(timeout=0.5), fake)
    assert caught.value.code == ExitCode.TRANSITION_TIMEOUT
    assert "sleepy (pid 42)" in caught.value.message
    assert "reversed" in caught.value.message
    assert not fake.paths.patch("amber_lp_v1").exists()
    assert "amber_lp_v1" not in fake.loaded


def test_forced_transition_only_when_asked(fake: FakeKernel,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake.stall = True
    fake.add_module("amber_lp_v1", livepatch=True, refcnt=1)
    fake.add_patch("amber_lp_v1", transition=True)

    def kernel_obeys_force() -> None:
        force = fake.paths.patch("amber_lp_v1") / "force"
        while not force.exists():
            time.sleep(0.02)
        fake.stall = False

    threading.Thread(target=kernel_obeys_force, daemon=True).start()
    forced = kernel.Waiting(timeout=0.3, poll=0.02, force=True)
    kernel.wait_transition(fake.paths, "amber_lp_v1", True, forced)
    assert (fake.paths.patch("amber_lp_v1") / "force").read_text() == "1"
    assert "never be unloaded" in capsys.readouterr().err


# ---- load and unload ----------------------------------------------------------------------

def test_load_v1_then_v2_replaces_and_cleans_up(fake: FakeKernel, modules: Modules) -> None:
    removed = kernel.load(modules.v1, module.read(modules.v1), fake.paths, waiting(), fake)
    assert removed == []
    assert [p.name for p in kernel.patches(fake.paths)] == ["amber_lp_v1"]
    xz = build.compress_xz(modules.v2, fake.paths.sys.parent / "v2.ko.xz")
    removed = kernel.load(xz, module.read(xz), fake.paths, waiting(), fake)
    assert removed == ["amber_lp_v1"]
    assert [p.name for p in kernel.patches(fake.paths)] == ["amber_lp_v2"]
    assert fake.loaded == ["amber_lp_v2"]
    assert kernel.replaced_modules(fake.paths) == []


def test_load_removes_a_replaced_module_of_the_same_name_first(fake: FakeKernel,
                                                               modules: Modules) -> None:
    fake.add_module("amber_lp_v1", livepatch=True)  # left behind by an earlier replace
    kernel.load(modules.v1, module.read(modules.v1), fake.paths, waiting(), fake)
    assert [p.name for p in kernel.patches(fake.paths)] == ["amber_lp_v1"]


def test_unload(fake: FakeKernel, modules: Modules) -> None:
    kernel.load(modules.v1, module.read(modules.v1), fake.paths, waiting(), fake)
    kernel.unload(fake.paths, "amber_lp_v1", waiting(), fake)
    assert not fake.paths.patch("amber_lp_v1").exists()
    assert fake.loaded == []
    with pytest.raises(AmberError) as caught:
        kernel.unload(fake.paths, "amber_lp_v1", waiting(), fake)
    assert caught.value.code == ExitCode.NOT_FOUND


def test_stalled_unload_is_reversed(fake: FakeKernel) -> None:
    fake.add_module("amber_lp_v1", livepatch=True, refcnt=1)
    fake.add_patch("amber_lp_v1")
    fake.add_task(42, 42, "busy", "1")

    # Unpatching stalls: the fake kernel finishes only reversals of a disable.
    original = fake._step

    def stalled_step(name: str) -> None:
        directory = fake.paths.patch(name)
        if (directory / "enabled").read_text().strip() == "0":
            (directory / "transition").write_text("1\n")
            return
        original(name)

    fake._step = stalled_step  # type: ignore[method-assign]
    with pytest.raises(AmberError) as caught:
        kernel.unload(fake.paths, "amber_lp_v1", waiting(timeout=0.4), fake)
    assert caught.value.code == ExitCode.TRANSITION_TIMEOUT
    assert "busy (pid 42)" in caught.value.message
    assert (fake.paths.patch("amber_lp_v1") / "enabled").read_text().strip() == "1"
    assert "amber_lp_v1" in fake.loaded


def test_cleanup_replaced(fake: FakeKernel) -> None:
    fake.add_module("amber_lp_v1", livepatch=True)
    fake.add_module("amber_lp_v2", livepatch=True, refcnt=1)
    fake.add_patch("amber_lp_v2")
    fake.add_module("ext4", livepatch=False)
    assert kernel.cleanup_replaced(fake.paths, fake) == ["amber_lp_v1"]
    assert fake.loaded == ["amber_lp_v2", "ext4"]


@pytest.mark.parametrize(("code", "words"), [
    (errno.EEXIST, "already loaded"),
    (errno.EKEYREJECTED, "signature rejected"),
    (errno.ENOKEY, "signature rejected"),
    (errno.EPERM, "lockdown"),
    (errno.ENOEXEC, "version magic"),
    (errno.EBUSY, "another live patch is in transition"),
    (errno.EINVAL, "invalid"),
    (errno.E2BIG, "Argument list too long"),
])
def test_errno_sentences(code: int, words: str) -> None:
    error = kernel.load_error(Path("/x/m.ko"), "m", OSError(code, os.strerror(code)))
    assert error.code == ExitCode.KERNEL_REFUSED
    assert error.message.startswith("/x/m.ko: ")
    assert words in error.message


# ---- preflight ----------------------------------------------------------------------------

def config(policy: str = "warn", enabled: bool = True) -> LivepatchConfig:
    return LivepatchConfig(enabled=enabled, signature_policy=policy, trusted_keys="/keys")


def system_root(tmp_path: Path, key: SigningKey) -> Path:
    root = tmp_path / "root"
    (root / "keys").mkdir(parents=True)
    (root / "keys/signing.pem").write_bytes(key.cert.read_bytes())
    return root


def preflight_error(path: Path, cfg: LivepatchConfig, root: Path, paths: kernel.KernelPaths,
                    releases: list[str]) -> AmberError:
    with pytest.raises(AmberError) as caught:
        policy.check_module(path, cfg, root=root, kernel_releases=releases, paths=paths)
    return caught.value


def test_preflight(fake: FakeKernel, modules: Modules, signing_key: SigningKey,
                   other_key: SigningKey, tmp_path: Path) -> None:
    root = system_root(tmp_path, signing_key)
    release = [modules.release]
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "s.ko")
    stranger = build.sign(modules.v1, other_key.key, other_key.cert, tmp_path / "o.ko")

    ok = policy.check_module(signed, config("enforce"), root=root, kernel_releases=release,
                             paths=fake.paths)
    assert ok.verdict == "trusted" and ok.warnings == ()
    warned = policy.check_module(stranger, config("warn"), root=root,
                                 kernel_releases=release, paths=fake.paths)
    assert warned.verdict == "untrusted" and "unknown key" in warned.warnings[0]

    def code(path: Path, cfg: LivepatchConfig, releases: list[str] = release) -> ExitCode:
        return preflight_error(path, cfg, root, fake.paths, releases).code

    with pytest.raises(AmberError) as caught:
        policy.require_enabled(config(enabled=False))
    assert caught.value.code == ExitCode.LIVEPATCH_DISABLED
    assert code(modules.plain, config()) == ExitCode.INCOMPATIBLE
    other = build.other_release(modules.release)
    assert code(signed, config(), [modules.release, other]) == ExitCode.INCOMPATIBLE
    assert code(stranger, config("enforce")) == ExitCode.SIGNATURE
    assert code(modules.v1, config("enforce")) == ExitCode.SIGNATURE
    (fake.paths.module("module") / "parameters/sig_enforce").write_text("Y\n")
    error = preflight_error(modules.v1, config("off"), root, fake.paths, release)
    assert error.code == ExitCode.SIGNATURE and "signature rejected" in error.message
    (fake.paths.module("module") / "parameters/sig_enforce").write_text("N\n")
    fake.add_module("amber_lp_v2", livepatch=True, refcnt=1)
    fake.add_patch("amber_lp_v2", transition=True)
    fake.stall = True
    assert code(signed, config()) == ExitCode.KERNEL_REFUSED


def test_preflight_needs_livepatch_support(tmp_path: Path, modules: Modules) -> None:
    paths = kernel.KernelPaths(sys=tmp_path / "sys", proc=tmp_path / "proc")
    error = preflight_error(modules.v1, config("off"), tmp_path, paths, [modules.release])
    assert error.code == ExitCode.ENVIRONMENT
