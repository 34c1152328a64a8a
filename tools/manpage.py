"""amber(8), generated from amber's argument parser, its exit codes and its configuration
dataclasses, so that the man page cannot drift from the program: `python3 -m tools.manpage`."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable

from tools import config_doc
from tools.cli_model import Command, Option, Positional, amber_parser, model

SUMMARY = "immutable btrfs root with transactional updates, rollback and kernel live patches"

DESCRIPTION = (
    "amber turns a btrfs-rooted Linux system into an immutable one, in the layout of snapper "
    "and SUSE's transactional-update: every snapshot is a whole root filesystem under "
    "/.snapshots/N/snapshot with snapper's info.xml next to it. Every change lands in a new "
    "snapshot: amber snapshots the booted system read-write, runs the change in a chroot in a "
    "private mount namespace, sets the snapshot read-only and makes it the default subvolume, "
    "which boots next. Setting the default is the single step that commits; any failure, "
    "Ctrl-C or SIGTERM deletes the new snapshot and leaves the default untouched.",
    "The booted snapshot is what / is mounted from; the default snapshot is what boots next. "
    "They differ after a transaction until the reboot. /var, /home, /root, /opt, /srv and "
    "/usr/local are shared writable subvolumes; package databases live inside the snapshot, so "
    "a rollback also rolls back what the package manager believes is installed.",
    "Kernel live patches are checked (module format, kernel release, signature policy, "
    "lockdown) before they are loaded, and installed through a transaction together with an "
    "initrd that loads them early, so that a rollback stays honest.",
)

# Every exit code, as the README documents it. A member without a line here stops the build.
EXIT_STATUS: dict[str, str] = {
    "OK": "success",
    "ERROR": "an unexpected error",
    "USAGE": "a usage error: wrong command-line arguments",
    "STEP_FAILED": "a step of the transaction failed (a command, a package script, a full disk); "
                   "the new snapshot was discarded",
    "LOCKED": "another amber transaction holds the lock of this system root (use --wait)",
    "NOT_FOUND": "no such snapshot, file or live patch",
    "REFUSED": "refused as unsafe: deleting the booted or the default snapshot, rolling back to "
               "a writable one, a live patch that is already active",
    "NO_SPACE": "no space left on the filesystem",
    "ENVIRONMENT": "the environment does not fit: not root, not btrfs, no snapshot store, a tool "
                   "missing, a kernel without live patching",
    "CONFIG": "invalid /etc/amber/amber.conf",
    "BAD_MODULE": "a module file that cannot be parsed (not ELF, truncated, no .modinfo, bad "
                  "signature trailer, bad compression)",
    "INCOMPATIBLE": "not a live patch, or built for another kernel",
    "SIGNATURE": "the signature policy, sig_enforce or lockdown refuses the module",
    "LIVEPATCH_DISABLED": "live patching is disabled (amber livepatch enable)",
    "KERNEL_REFUSED": "the running kernel refused to load or unload the module (already loaded, "
                      "signature rejected, lockdown, wrong format, busy)",
    "TRANSITION_TIMEOUT": "a live patch transition did not finish in time and was reversed",
    "INTERRUPTED": "interrupted by SIGINT or SIGTERM; the transaction was rolled back",
}

ENVIRONMENT = (
    ("AMBER_ROOT", "the system root when --root is not given (default: /)"),
    ("AMBER_DEBUG", "when set, print every command amber runs, as --verbose does"),
    ("NO_COLOR", "when set, messages are not coloured"),
    ("AMBER_SYSFS", "the sysfs tree the live patch verbs read instead of /sys (for tests)"),
    ("AMBER_PROCFS", "the procfs tree the live patch verbs read instead of /proc (for tests)"),
    ("AMBER_KERNEL_RELEASE", "the running kernel release instead of uname -r (for tests)"),
    ("TRANSACTIONAL_UPDATE", "set to true for every command amber runs in a transaction's "
                             "chroot, as transactional-update does"),
)

FILES = (
    ("/etc/amber/amber.conf", "the configuration (TOML), part of the snapshot; see "
                              "CONFIGURATION"),
    ("/var/lib/amber/state.toml", "run-time switches (amber livepatch enable|disable); they "
                                  "override amber.conf and survive rollbacks"),
    ("/etc/amber/keys", "certificates (PEM or DER) trusted for live patch module signatures"),
    ("/.snapshots/N/snapshot", "snapshot N: a whole root filesystem, read-only once its "
                               "transaction closed"),
    ("/.snapshots/N/info.xml", "snapper's metadata of snapshot N: type, date, description, "
                               "cleanup, userdata"),
    ("/.snapshots/.amber.lock", "the lock of the system root; it names a transaction in "
                                "progress, so that a crashed one is recognized and removed"),
    ("/usr/lib/sysimage/dpkg", "the database of dpkg, inside the snapshot (/var/lib/dpkg links "
                               "here)"),
    ("/usr/lib/sysimage/rpm", "the database of rpm, inside the snapshot (/var/lib/rpm links here)"),
    ("/etc/dracut.conf.d/50-amber-livepatch.conf", "makes a dracut initrd load the live patch "
                                                   "early"),
    ("/etc/initramfs-tools/modules", "the same for initramfs-tools"),
    ("/usr/share/doc/amber/examples/amber.conf", "every configuration key with its default"),
)

# Each is checked against the parser by the tests.
EXAMPLES = (
    ("Install a local package and a package from the repositories in a new snapshot:",
     "amber pkg install ./tool_1.0_all.deb htop"),
    ("Update every package; a second transaction before the reboot continues the first:",
     "amber up --continue"),
    ("Change a configuration file in a new snapshot:",
     "amber run -- sh -c 'echo hello > /etc/motd'"),
    ("See what the next boot brings, and the snapshots:", "amber status"),
    ("Packages added, removed and changed between the booted and the default snapshot:",
     "amber diff booted default"),
    ("Make the previous default boot next again:", "amber rollback last"),
    ("Keep snapshot 5 from cleanup, then remove old snapshots:", "amber pin 5"),
    (None, "amber cleanup --keep 5"),
    ("Check a live patch, then install it in a new snapshot and load it now:",
     "amber livepatch inspect kernel-livepatch-6_1_0-10-amd64.rpm"),
    (None, "amber livepatch apply kernel-livepatch-6_1_0-10-amd64.rpm"),
    ("Work on another system root, for example a mounted image:",
     "amber --root /mnt status --json"),
    ("Build a Debian 12 image to try amber in, with amber's package from a checkout:",
     "amber image build --size 8G amber.img"),
)

SEE_ALSO = ("snapper(8)", "btrfs-subvolume(8)", "dracut(8)", "update-initramfs(8)",
            "apt-get(8)", "zypper(8)", "dnf(8)", "transactional-update(8)")


# ---- roff ----------------------------------------------------------------------------------

def code(text: str) -> str:
    """Literal text (commands, options, paths): every dash a minus, so that it copies right."""
    return _line_safe(text.replace("\\", "\\e").replace("-", "\\-"))


def prose(text: str) -> str:
    """Running text: dashes that begin an option become minus signs, hyphens stay."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]+)`", lambda m: bold(m.group(1)), text)
    return _line_safe(re.sub(r"(?<![\w.])-+(?=\w)", lambda m: m.group().replace("-", "\\-"),
                             text))


def _line_safe(text: str) -> str:
    return "\\&" + text if text.startswith((".", "'")) else text


def bold(text: str) -> str:
    return f"\\fB{code(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{code(text)}\\fR"


def sentence(text: str) -> str:
    """A help text as a sentence: capitalized (unless it begins with a name like dpkg's or
    .ko), with a full stop."""
    text = text.strip()
    if not text:
        return ""
    if re.match(r"[a-z]+\b(?!['.])", text):
        text = text[0].upper() + text[1:]
    return prose(text if text.endswith(".") else text + ".")


def usage_like(text: str) -> bool:
    """A help text that only repeats the usage ("-- COMMAND [ARG...]") says nothing more."""
    return re.search("[a-z]{3}", text) is None


# ---- the parts -----------------------------------------------------------------------------

def option_term(option: Option) -> str:
    flags = ", ".join(bold(flag) for flag in option.flags)
    if option.metavar is None:
        return flags
    value = italic(option.metavar)
    return f"{flags} [{value}]" if option.optional_value else f"{flags} {value}"


def positional_term(arg: Positional) -> str:
    if arg.choices:
        text = "|".join(bold(choice) for choice in arg.choices)
    elif arg.nargs == argparse.REMAINDER:
        return f"{bold('--')} {italic(arg.metavar.upper())} [{italic('ARG')}...]"
    else:
        text = italic(arg.metavar)
    if arg.repeats:
        text += "..."
    return f"[{text}]" if arg.optional else text


def usage(cmd: Command) -> str:
    parts = [bold(cmd.name)]
    if cmd.options:
        parts.append(f"[{italic('options')}]")
    if cmd.subcommands:
        parts.append(italic("VERB"))
    parts += [positional_term(arg) for arg in cmd.positionals]
    return " ".join(parts)


def common_options(root: Command) -> set[tuple[str, ...]]:
    """Options every verb takes: documented once, not under each verb."""
    leaves = [cmd for cmd in root.walk()[1:] if not cmd.subcommands]
    common = {option.flags for option in leaves[0].options}
    for cmd in leaves[1:]:
        common &= {option.flags for option in cmd.options}
    return common


def describe_options(options: Iterable[Option]) -> list[str]:
    out = []
    for option in options:
        out += [".TP", option_term(option), sentence(option.help)]
    return out


def describe_command(cmd: Command, common: set[tuple[str, ...]]) -> list[str]:
    names = f" (alias: {', '.join(cmd.aliases)})" if cmd.aliases else ""
    out = [f".SS {usage(cmd)}", sentence(cmd.help + names)]
    if cmd.description:
        out += [".PP", sentence(cmd.description)]
    for arg in cmd.positionals:
        if arg.help and not usage_like(arg.help):
            out += [".TP", positional_term(arg), sentence(arg.help)]
    out += describe_options(o for o in cmd.options if o.flags not in common)
    return out


def exit_status() -> list[str]:
    amber_parser()
    from amber.log import ExitCode

    missing = [code.name for code in ExitCode if code.name not in EXIT_STATUS]
    if missing:
        raise SystemExit(f"tools/manpage.py: no description of exit code(s) {', '.join(missing)}"
                         ": add them to EXIT_STATUS")
    out = []
    for member in ExitCode:
        out += [".TP", f"\\fB{int(member)}\\fR", sentence(EXIT_STATUS[member.name])]
    return out


def configuration() -> list[str]:
    out = [prose("/etc/amber/amber.conf of the system root is TOML. /etc is part of the "
                 "read-only snapshot, so the file changes through a transaction (amber shell, "
                 "amber run) and rolls back with the system. Every key, with its default:")]
    for section in config_doc.sections():
        out.append(f".SS [{section.name}]")
        for key in section.keys:
            out += [".TP", f"{bold(key.name)} = {code(key.default)}", prose(key.meaning)]
    return out


def render(version: str, date: str) -> str:
    root = model()
    common = common_options(root)
    lines = [
        ".\\\" Generated by tools/manpage.py from amber's argument parser: do not edit.",
        f'.TH AMBER 8 "{date}" "amber {code(version)}" "System Administration"',
        ".SH NAME", f"amber \\- {prose(SUMMARY)}",
        ".SH SYNOPSIS",
        f"{bold('amber')} [{italic('global options')}] {italic('VERB')} [{italic('options')}] "
        f"[{italic('arguments')}]",
    ]
    for cmd in root.walk()[1:]:
        if not cmd.subcommands:
            lines += [".br", usage(cmd)]
    lines.append(".SH DESCRIPTION")
    for paragraph in DESCRIPTION:
        lines += [prose(paragraph), ".PP"]
    lines[-1:] = []
    lines += [".SH GLOBAL OPTIONS", prose("Given before the verb.")]
    lines += describe_options(o for o in root.options if o.flags not in common)
    lines += [".SH COMMON OPTIONS", prose("Every verb takes these, before or after the verb.")]
    lines += describe_options(o for o in root.walk()[-1].options if o.flags in common)
    lines.append(".SH COMMANDS")
    for cmd in root.walk()[1:]:
        lines += describe_command(cmd, common)
    lines += [".SH EXIT STATUS", *exit_status()]
    lines += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        lines += [".TP", bold(name), sentence(meaning)]
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", italic(path), sentence(meaning)]
    lines += [".SH CONFIGURATION", *configuration()]
    lines += [".SH EXAMPLES"]
    for text, command in EXAMPLES:
        if text is not None:
            lines += [".PP", prose(text)]
        lines += [".RS", ".nf", code(command), ".fi", ".RE"]
    lines += [".SH SEE ALSO", ",\n".join(bold_ref(ref) for ref in SEE_ALSO)]
    return "\n".join(line for line in lines if line) + "\n"


def bold_ref(ref: str) -> str:
    name, section = ref.rstrip(")").split("(")
    return f".BR {code(name)} ({section})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/manpage.py", description=__doc__)
    parser.add_argument("--date", required=True, help="the date in the page's header")
    args = parser.parse_args()
    amber_parser()
    import amber

    sys.stdout.write(render(amber.__version__, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
