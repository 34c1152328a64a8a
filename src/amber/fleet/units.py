"""The systemd units amber ships (src/amber/data/systemd, installed into /usr/lib/systemd/system
by the Debian package), and enabling them in a root as amber.conf asks: `amber image build`
calls enable() on the image's root.

    amber-update.timer               [update] enabled: daily (or [update] schedule), with a
                                     randomized delay, persistent across downtime
    amber-update.service             amber up --continue --drop-if-no-change, then
                                     amber reboot --if-needed
    amber-fleetlock-release.service  [reboot] strategy = "fleetlock": after boot-complete.target,
                                     amber reboot --steady-state gives the slot back; written
                                     into /etc/systemd/system by enable() (RELEASE_UNIT), not
                                     packaged: lintian wants an init.d script for every packaged
                                     service that a boot starts
    amber-health-*.service, system.conf.d/50-amber-watchdog.conf
                                     [health] enabled: trial boots (amber.health); written into
                                     /etc/systemd/system as the release unit is
"""

from __future__ import annotations

from pathlib import Path

from amber import config, log

UNIT_DIR = "/usr/lib/systemd/system"
TIMER = "amber-update.timer"
RELEASE = "amber-fleetlock-release.service"
RELEASE_UNIT = """\
# Written by amber ([reboot] strategy = "fleetlock"): give the FleetLock reboot slot back once
# the boot is healthy, so that a machine that does not come up keeps it and halts the rollout.
[Unit]
Description=Give the FleetLock reboot slot back after a healthy boot (amber)
Documentation=man:amber(8)
Wants=network-online.target
After=network-online.target boot-complete.target amber-health-complete.service
Requires=boot-complete.target

[Service]
Type=oneshot
ExecStart=/usr/bin/amber reboot --steady-state
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
SCHEDULE_DROP_IN = f"etc/systemd/system/{TIMER}.d/50-amber-schedule.conf"

# [health] enabled: trial boots (amber.health). The check is RequiredBy boot-complete.target, so
# a failing check (or any other unit RequiredBy it) keeps the boot from completing; the unit
# after boot-complete.target has DefaultDependencies=no, so multi-user.target, which wants it,
# does not wait for it (no ordering cycle).
HEALTH_UNITS = {
    "amber-health-check.service": """\
# Written by amber ([health] enabled): the health checks of this boot.
[Unit]
Description=Health checks of this boot (amber; a failed trial gives way to the last good snapshot)
Documentation=man:amber(8)
After=multi-user.target
Before=boot-complete.target
OnFailure=amber-health-failed.service
ConditionPathExists=/.snapshots

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/amber health boot-check

[Install]
RequiredBy=boot-complete.target
""",
    "amber-health-complete.service": """\
# Written by amber ([health] enabled): a trial boot that completed is good.
[Unit]
Description=Mark a trial boot that completed as good (amber)
Documentation=man:amber(8)
DefaultDependencies=no
Requires=boot-complete.target
After=boot-complete.target sysinit.target
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/amber health boot-complete

[Install]
WantedBy=multi-user.target
""",
    "amber-health-failed.service": """\
# Written by amber ([health] enabled): the check unit failed.
[Unit]
Description=Roll a failed trial boot back to the last good snapshot (amber)
Documentation=man:amber(8)

[Service]
Type=oneshot
ExecStart=/usr/bin/amber health boot-failed
""",
    "amber-health-timeout.service": """\
# Written by amber ([health] enabled): the deadline of a trial boot. Early and independent of
# the rest of the boot, so that a boot that hangs on its way still meets it.
[Unit]
Description=Deadline of a trial boot (amber; [health] timeout)
Documentation=man:amber(8)
DefaultDependencies=no
After=local-fs.target
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=/.snapshots

[Service]
Type=simple
ExecStart=/usr/bin/amber health boot-timeout

[Install]
WantedBy=sysinit.target
""",
}
WATCHDOG_CONF = "etc/systemd/system.conf.d/50-amber-watchdog.conf"
WATCHDOG = """\
# Written by amber ([health] enabled): a hang becomes a reset where there is a hardware
# watchdog, and GRUB counts the reset as a failed trial boot.
[Manager]
RuntimeWatchdogSec=60s
"""


def _write_unit(root: Path, name: str, text: str) -> None:
    unit = root / "etc/systemd/system" / name
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)


def enable_health(root: Path) -> list[str]:
    for name, text in HEALTH_UNITS.items():
        _write_unit(root, name, text)
    for target, kind, unit in HEALTH_LINKS:
        _wants(root, target, unit, "/etc/systemd/system", kind)
    watchdog = root / WATCHDOG_CONF
    watchdog.parent.mkdir(parents=True, exist_ok=True)
    watchdog.write_text(WATCHDOG)
    return ["amber-health-check.service", "amber-health-complete.service",
            "amber-health-timeout.service"]


HEALTH_LINKS = (("boot-complete.target", "requires", "amber-health-check.service"),
                ("multi-user.target", "wants", "amber-health-complete.service"),
                ("sysinit.target", "wants", "amber-health-timeout.service"))


def health_enabled(root: Path) -> bool:
    """Whether root's /etc has amber's health units enabled: without them nobody would judge a
    trial boot, and GRUB would fall back after the tries."""
    system = root / "etc/systemd/system"
    return all((system / f"{target}.{kind}" / unit).is_symlink()
               and (system / unit).is_file() for target, kind, unit in HEALTH_LINKS)


def disable_health(root: Path) -> list[str]:
    """Undo enable_health; returns the units removed."""
    system = root / "etc/systemd/system"
    removed = []
    for target, kind, unit in HEALTH_LINKS:
        (system / f"{target}.{kind}" / unit).unlink(missing_ok=True)
    for name in HEALTH_UNITS:
        if (system / name).exists():
            removed.append(name)
        (system / name).unlink(missing_ok=True)
    (root / WATCHDOG_CONF).unlink(missing_ok=True)
    return removed


def schedule_drop_in(schedule: str) -> str:
    return ("# Written by amber from [update] schedule in /etc/amber/amber.conf.\n"
            f"[Timer]\nOnCalendar=\nOnCalendar={schedule}\n")


def _wants(root: Path, target: str, unit: str, unit_dir: str = UNIT_DIR,
           kind: str = "wants") -> None:
    link = root / "etc/systemd/system" / f"{target}.{kind}" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"{unit_dir}/{unit}")


def enable(root: Path) -> list[str]:
    """Enable the units amber.conf of `root` asks for (as `systemctl enable` would); returns
    their names."""
    settings = config.load(root)
    enabled = []
    if settings.update.enabled:
        drop_in = root / SCHEDULE_DROP_IN
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(schedule_drop_in(settings.update.schedule))
        _wants(root, "timers.target", TIMER)
        enabled.append(TIMER)
    if settings.reboot.strategy == config.RebootStrategy.FLEETLOCK:
        unit = root / "etc/systemd/system" / RELEASE
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(RELEASE_UNIT)
        _wants(root, "multi-user.target", RELEASE, "/etc/systemd/system")
        enabled.append(RELEASE)
    if settings.health.enabled:
        enabled += enable_health(root)
    if enabled:
        log.step(f"enabling {', '.join(enabled)}")
    return enabled
