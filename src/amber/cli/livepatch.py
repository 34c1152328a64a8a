"""`amber livepatch ...`: inspect module files, show the kernel's live patch state, load, unload.

Nothing heavy is imported at module level: the CLI must start fast. The kernel side reads
/sys and /proc, or the trees named by AMBER_SYSFS and AMBER_PROCFS (for tests); the running
kernel's release is os.uname().release unless AMBER_KERNEL_RELEASE says otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amber import log
from amber.boot.kernels import running_release

# ---- inspect ------------------------------------------------------------------------------

def inspect_json(info: Any, verdict: str, release: str) -> dict[str, Any]:
    from amber.livepatch.module import incompatibility

    reason = incompatibility(info, release)
    sig = info.signature
    return {
        "path": str(info.path),
        "name": info.name,
        "vermagic": info.vermagic,
        "kernel_release": info.kernel_release,
        "livepatch": info.livepatch,
        "srcversion": info.srcversion,
        "license": info.license,
        "description": info.description,
        "depends": list(info.depends),
        "extra": info.extra(),
        "compression": info.compression or None,
        "signature": {
            "present": sig is not None,
            "signer": sig.signer if sig else None,
            "key_id": sig.key_id if sig else None,
            "hash": sig.hash if sig else None,
            "verdict": verdict,
        },
        "compatible": reason is None,
        "checked_release": release,
        "reason": reason,
    }


def render_inspect(data: dict[str, Any]) -> str:
    sig = data["signature"]
    lines = [
        f"{data['path']}",
        f"  name:           {data['name']}",
        f"  live patch:     {'yes' if data['livepatch'] else 'no'}",
        f"  vermagic:       {data['vermagic']}",
        f"  srcversion:     {data['srcversion'] or '-'}",
        f"  license:        {data['license'] or '-'}",
        f"  description:    {data['description'] or '-'}",
        f"  depends:        {', '.join(data['depends']) or '-'}",
    ]
    for key, values in data["extra"].items():
        lines.append(f"  {key + ':':<15} {', '.join(values)}")
    if sig["present"]:
        lines.append(f"  signature:      {sig['verdict']} (signer '{sig['signer']}', "
                     f"key {sig['key_id']}, {sig['hash']})")
    else:
        lines.append("  signature:      unsigned")
    compat = "yes" if data["compatible"] else f"no: {data['reason']}"
    lines.append(f"  fits {data['checked_release']}: {compat}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from amber import config
    from amber.livepatch import module, policy, signature

    settings = config.load(args.root).livepatch
    trusted = signature.load_trusted(policy.trusted_keys_folder(args.root, settings))
    release = args.kernel_release or running_release()
    results = []
    for path in args.files:
        info = module.read(path, settings.max_module_size)
        results.append(inspect_json(info, str(signature.verdict(info, trusted)), release))
    if args.json:
        log.print_json(results)
    else:
        print("\n\n".join(render_inspect(r) for r in results))
    return 0


# ---- status and list ----------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from amber import config
    from amber.livepatch import kernel

    paths = kernel.KernelPaths.from_environment()
    facts = kernel.status(paths)
    enabled = config.load(args.root).livepatch.enabled
    seen = _view(args.root, paths)
    if args.json:
        log.print_json({**facts.as_json(), "amber_enabled": enabled, **_view_json(seen)})
        return 0
    taint = kernel.decode_taint(facts.taint)
    print(f"state:                 {facts.state}")
    print(f"live patching:         {'supported' if facts.supported else 'not supported'} "
          f"by the kernel, {'enabled' if enabled else 'disabled'} in amber")
    print(f"lockdown:              {facts.lockdown}")
    print(f"signature enforcement: {'on' if facts.signatures_enforced else 'off'}")
    letters = "".join(letter for letter, _ in taint)
    print(f"taint:                 {facts.taint}" + (f" ({letters})" if letters else ""))
    for letter, meaning in taint:
        print(f"  {letter}  {meaning}")
    for patch in facts.patches:
        print(f"patch {patch.name}: {'enabled' if patch.enabled else 'disabled'}"
              + (", in transition" if patch.transition else ""))
    for leftover in facts.replaced:
        print(f"replaced, still loaded: {leftover.name}")
    _print_view(seen)
    return 0


def _view(root: Path, paths: Any) -> Any:
    """Running kernel, booted snapshot and next boot side by side (None off an amber root)."""
    from amber.livepatch import view
    from amber.log import AmberError

    try:
        return view.view(root, paths)
    except AmberError:
        return None


def _view_json(seen: Any) -> dict[str, Any]:
    if seen is None:
        return {}
    return {"view": seen.as_json(), "drift": seen.drift_json()}


def _print_view(seen: Any) -> None:
    if seen is None:
        return
    for line in seen.render():
        print(line)
    for warning, resolve in seen.warnings():
        log.warn(warning, hint=resolve)


def cmd_list(args: argparse.Namespace) -> int:
    from amber.livepatch import kernel

    paths = kernel.KernelPaths.from_environment()
    found, replaced = kernel.patches(paths), kernel.replaced_modules(paths)
    seen = _view(args.root, paths)
    if args.json:
        # The view only when some snapshot or the kernel has a patch: scripts that compare
        # the output of an unpatched system keep seeing the two lists alone.
        log.print_json({"patches": [kernel.patch_json(p) for p in found],
                        "replaced": [kernel.replaced_json(m) for m in replaced],
                        **(_view_json(seen) if seen is not None and seen.patches else {})})
        return 0
    if not found and not replaced:
        print("no live patches loaded")
        _print_view(seen)
        return 0
    print(f"{'NAME':<24} {'ENABLED':<8} {'TRANSITION':<11} SRCVERSION")
    for p in found:
        print(f"{p.name:<24} {'yes' if p.enabled else 'no':<8} "
              f"{'yes' if p.transition else 'no':<11} {p.srcversion or '-'}")
    for m in replaced:
        print(f"{m.name:<24} {'replaced, still loaded':<20} {m.srcversion or '-'}")
    _print_view(seen)
    return 0


# ---- load and unload ----------------------------------------------------------------------

def _waiting(args: argparse.Namespace, default_timeout: float) -> Any:
    from amber.livepatch import kernel

    def progress(count: int) -> None:
        log.info(f"  {count} task(s) not yet switched")

    timeout = args.timeout if args.timeout is not None else default_timeout
    return kernel.Waiting(timeout=timeout, progress=progress,
                          force=getattr(args, "force_transition", False))


def cmd_load(args: argparse.Namespace) -> int:
    from amber import config
    from amber.livepatch import kernel, policy

    settings = config.load(args.root).livepatch
    paths = kernel.KernelPaths.from_environment()
    policy.require_enabled(settings)
    checked = policy.check_module(args.file, settings, root=args.root,
                                  kernel_releases=[running_release()], paths=paths)
    if args.force_transition:
        log.warn("--force-transition: a stalled transition will be forced, not reversed",
                 hint="a forced patch can never be unloaded; plan a reboot")
    name = checked.module.name
    log.step(f"Loading live patch {name}")
    removed = kernel.load(args.file, checked.module, paths,
                          _waiting(args, settings.transition_timeout), kernel.LinuxSyscalls())
    for leftover in removed:
        log.info(f"unloaded replaced live patch {leftover}")
    if args.json:
        log.print_json({"loaded": name, "verdict": str(checked.verdict), "removed": removed,
                        "warnings": list(checked.warnings)})
    else:
        log.info(f"live patch {name} is applied")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from amber import config
    from amber.livepatch import kernel

    paths = kernel.KernelPaths.from_environment()
    syscalls = kernel.LinuxSyscalls()
    if args.name is None and not args.replaced:
        log.die("no live patch named", hint="amber livepatch unload NAME, or --replaced",
                code=log.ExitCode.USAGE)
    unloaded = []
    if args.name is not None:
        log.step(f"Unloading live patch {args.name}")
        settings = config.load(args.root).livepatch
        kernel.unload(paths, args.name, _waiting(args, settings.transition_timeout), syscalls)
        unloaded.append(args.name)
    if args.replaced:
        unloaded += kernel.cleanup_replaced(paths, syscalls)
    if args.json:
        log.print_json({"unloaded": unloaded})
    else:
        for name in unloaded:
            log.info(f"unloaded {name}")
    return 0


# ---- apply and revert ---------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    from amber.livepatch import apply
    from amber.snapshots import Ref

    mode = (apply.Mode.NEXT_BOOT if args.next_boot else apply.Mode.LIVE_ONLY if args.live_only
            else apply.Mode.NOW)
    base = None if args.base is None else Ref.parse(args.base, ("booted", "default"),
                                                    "a snapshot for --base").text
    outcome = apply.apply(args.root, args.sources, mode=mode, keep=args.keep,
                          timeout=args.timeout, base=base, wait=args.wait,
                          health=not args.no_health, rebuild_initrd=args.rebuild_initrd)
    if args.json:
        log.print_json(outcome.as_json())
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from amber.livepatch import apply

    removed = apply.revert(args.root, args.name, timeout=args.timeout)
    if args.json:
        log.print_json({"unloaded": removed})
    else:
        log.info(f"live patch {args.name} is reverted in the running kernel")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from amber.livepatch import update

    outcome = update.update(args.root, wait=args.wait)
    if args.json:
        log.print_json(outcome.as_json())
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    from amber import config

    enable = args.livepatch_verb == "enable"
    config.save_state(args.root, "livepatch_enabled", enable)
    if enable:
        log.info("live patching is enabled")
    else:
        log.info("live patching is disabled; patches already loaded stay until unloaded "
                 "or the next reboot")
    if args.json:
        log.print_json({"enabled": enable})
    return 0


# ---- parser -------------------------------------------------------------------------------

def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the time limit must be positive")
    return value


def _timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_timeout, default=None, metavar="S",
                        help="seconds to wait for the transition (default: transition_timeout)")


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("livepatch", help="inspect, load and apply kernel live patches")
    common(p)
    verbs = p.add_subparsers(dest="livepatch_verb", metavar="VERB")

    v = verbs.add_parser("inspect", help="modinfo, signature verdict and kernel fit of modules")
    common(v)
    v.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help=".ko, .ko.xz or .ko.zst files")
    v.add_argument("--kernel-release", default=None, metavar="R",
                   help="check the fit with kernel release R (default: the running kernel)")
    v.set_defaults(handler=cmd_inspect)

    v = verbs.add_parser("status", help="the kernel's live patch state, lockdown, taint")
    common(v)
    v.set_defaults(handler=cmd_status)

    v = verbs.add_parser("list", help="loaded live patches and replaced leftovers")
    common(v)
    v.set_defaults(handler=cmd_list)

    v = verbs.add_parser("load", help="check and load a live patch into the running kernel")
    common(v)
    v.add_argument("file", type=Path, metavar="FILE")
    _timeout_option(v)
    v.add_argument("--force-transition", action="store_true",
                   help="on a stalled transition write 'force' instead of reversing (unsafe: "
                        "the module can never be unloaded)")
    v.set_defaults(handler=cmd_load)

    v = verbs.add_parser("unload", help="disable a live patch and remove its module")
    common(v)
    v.add_argument("name", nargs="?", default=None, metavar="NAME")
    v.add_argument("--replaced", action="store_true",
                   help="also remove every module that atomic replace left loaded")
    _timeout_option(v)
    v.set_defaults(handler=cmd_unload)

    v = verbs.add_parser("apply", help="install a live patch in a new snapshot (initrd "
                                       "included) and load it now: patched now and at every boot")
    common(v)
    v.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a live patch package (.rpm, .deb), a package name, or a module file "
                        "(.ko, .ko.xz, .ko.zst)")
    when = v.add_mutually_exclusive_group()
    when.add_argument("--next-boot", action="store_true",
                      help="install for the next boot only; do not load it now")
    when.add_argument("--live-only", action="store_true",
                      help="load it into the running kernel only, without a snapshot "
                           "(a reboot drops it)")
    v.add_argument("--keep", action="store_true",
                   help="if loading fails, keep the new snapshot as the default anyway")
    v.add_argument("--no-health", action="store_true",
                   help="do not run the health checks once the patch is active (by default a "
                        "failing check reverts the patch and withdraws the snapshot)")
    v.add_argument("--base", default=None, metavar="N|booted|default",
                   help="the snapshot to start from (default: the next boot's, so that a "
                        "pending update is kept)")
    v.add_argument("--rebuild-initrd", action="store_true",
                   help="regenerate the snapshot's initrd in full instead of appending the "
                        "patch to it (done anyway where the initrd cannot take it)")
    _timeout_option(v)
    v.set_defaults(handler=cmd_apply)

    v = verbs.add_parser("revert", help="disable and unload a live patch now (the snapshots "
                                        "stay as they are)")
    common(v)
    v.add_argument("name", metavar="NAME")
    _timeout_option(v)
    v.set_defaults(handler=cmd_revert)

    v = verbs.add_parser("update", help="install the newest live patch package for the "
                                        "running kernel from the repositories, and load it")
    common(v)
    v.set_defaults(handler=cmd_update)

    for verb, text in (("enable", "allow live patches to be loaded on this system"),
                       ("disable", "refuse to load live patches on this system")):
        v = verbs.add_parser(verb, help=text)
        common(v)
        v.set_defaults(handler=cmd_enable)
