"""The checks before a live patch touches the system (pure: they read facts, change nothing):
the module against the kernels it must fit, the signature policy, the kernel's own rules
(sig_enforce, lockdown), and the kernel of the snapshot that boots next."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amber.boot.kernels import running_release
from amber.config import LivepatchConfig
from amber.livepatch import signature
from amber.livepatch.kernel import (
    KernelPaths,
    lockdown,
    patches,
    signatures_enforced,
    supported,
)
from amber.livepatch.module import ModuleInfo, incompatibility, read
from amber.log import ExitCode, die, warn


class Mode(enum.StrEnum):
    """What `amber livepatch apply` does with a patch."""

    NOW = "now"  # install in a new snapshot and load into the running kernel
    NEXT_BOOT = "next-boot"  # install only; the next boot loads it
    LIVE_ONLY = "live-only"  # load only; the next reboot drops it


def require_enabled(config: LivepatchConfig) -> None:
    if not config.enabled:
        die("live patching is disabled on this system",
            hint="amber livepatch enable", code=ExitCode.LIVEPATCH_DISABLED)


@dataclass(frozen=True)
class Preflight:
    module: ModuleInfo
    verdict: signature.Verdict
    warnings: tuple[str, ...]


def trusted_keys_folder(root: Path, config: LivepatchConfig) -> Path:
    return root / config.trusted_keys.lstrip("/")


def check_module(path: Path, config: LivepatchConfig, *, root: Path = Path("/"),
                 kernel_releases: Sequence[str] | None = None,
                 paths: KernelPaths | None = None) -> Preflight:
    """Every check of a module file before it touches the system; dies with the first
    problem. Whether live patching is enabled is the caller's first check (require_enabled),
    made before anything is downloaded or unpacked.

    kernel_releases: the kernels the module must fit, by default the running one; `apply`
    passes the running kernel and the kernel of the snapshot that boots next.
    Warnings (signature policy 'warn') are printed and returned.
    """
    paths = paths or KernelPaths.from_environment()
    releases = list(kernel_releases) if kernel_releases else [running_release()]
    module = read(path, config.max_module_size)
    if not module.livepatch:
        die(f"{path}: {module.name} is not a live patch (its modinfo has no livepatch=Y)",
            hint="load ordinary modules with modprobe", code=ExitCode.INCOMPATIBLE)
    for release in releases:
        reason = incompatibility(module, release)
        if reason:
            die(f"{path}: {reason}", hint="use the live patch built for this kernel",
                code=ExitCode.INCOMPATIBLE)
    if not supported(paths):
        die("the running kernel does not support live patching "
            f"({paths.livepatch} does not exist)",
            hint="boot a kernel built with CONFIG_LIVEPATCH=y", code=ExitCode.ENVIRONMENT)
    keys = trusted_keys_folder(root, config)
    verdict = signature.verdict(module, signature.load_trusted(keys))
    warnings = []
    problem = signature.check_policy(module, verdict, config.signature_policy)
    if problem and config.signature_policy == "enforce":
        raise signature.policy_error(problem, keys)
    if problem:
        warnings.append(problem)
    if verdict == signature.Verdict.UNSIGNED and signatures_enforced(paths):
        die(f"{path}: the module is unsigned and the kernel enforces module signatures "
            "(sig_enforce); it would be refused (signature rejected)",
            hint="sign the module with a key in the kernel's keyring", code=ExitCode.SIGNATURE)
    mode = lockdown(paths)
    if verdict == signature.Verdict.UNSIGNED and mode != "none":
        die(f"{path}: the module is unsigned and the kernel is locked down ({mode})",
            hint="sign the module with a key in the kernel's keyring", code=ExitCode.SIGNATURE)
    for patch in patches(paths):
        if patch.transition:
            die(f"live patch {patch.name} is still in transition",
                hint="wait for it to finish; see 'amber livepatch status'",
                code=ExitCode.KERNEL_REFUSED)
        if patch.name == module.name:
            die(f"live patch {module.name} is already active",
                hint=f"unload it first: amber livepatch unload {module.name}",
                code=ExitCode.REFUSED)
    for text in warnings:
        warn(text, hint=f"trusted certificates live in {keys}")
    return Preflight(module=module, verdict=verdict, warnings=tuple(warnings))


def check_next_boot(module: ModuleInfo, running: str, next_release: str | None,
                    number: int | None, mode: Mode) -> None:
    if next_release is None:
        die(f"snapshot {number} has no kernel, so no initrd can load the live patch at boot",
            hint="--live-only patches the running kernel until the next reboot",
            code=ExitCode.ENVIRONMENT)
    if mode != Mode.NEXT_BOOT and next_release != running \
            and module.kernel_release == running:
        die(f"snapshot {number}, which boots next, has kernel {next_release}: the live patch "
            f"for the running kernel {running} would do nothing after a reboot",
            hint=f"install the live patch built for {next_release}, or use --live-only to "
                 "patch the running kernel until the reboot", code=ExitCode.INCOMPATIBLE)
