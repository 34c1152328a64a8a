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
After=network-online.target boot-complete.target
Requires=boot-complete.target

[Service]
Type=oneshot
ExecStart=/usr/bin/amber reboot --steady-state
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
SCHEDULE_DROP_IN = f"etc/systemd/system/{TIMER}.d/50-amber-schedule.conf"


def schedule_drop_in(schedule: str) -> str:
    return ("# Written by amber from [update] schedule in /etc/amber/amber.conf.\n"
            f"[Timer]\nOnCalendar=\nOnCalendar={schedule}\n")


def _wants(root: Path, target: str, unit: str, unit_dir: str = UNIT_DIR) -> None:
    link = root / "etc/systemd/system" / f"{target}.wants" / unit
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
    if enabled:
        log.step(f"enabling {', '.join(enabled)}")
    return enabled
